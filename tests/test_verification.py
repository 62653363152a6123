"""Tests of `keras_bernstein.verification`: soundness first, then tightness."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_bernstein import Bernstein
from keras_bernstein import BernsteinDense
from keras_bernstein import ops as bernstein_ops
from keras_bernstein import verification

MODES = bernstein_ops.EXTRAPOLATION_MODES
ACTIVATIONS = ("linear", "relu", "leaky_relu", "sigmoid", "tanh")
# The bounds are float64 and exact up to ~1e-15; the model runs in float32.
# Containment allows this slack relative to the output's scale.
RELATIVE_SLACK = 1e-5


def _randomize(model, rng):
    """Random weights everywhere; nonmonotone coefficients, odd BN statistics."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, Bernstein):
            layer.coefficients.assign(
                rng.normal(size=layer.coefficients.shape).astype("float32")
            )
            centre = rng.uniform(-0.5, 0.5, size=layer.bounds.shape[:-1])
            half = rng.uniform(0.3, 1.5, size=layer.bounds.shape[:-1])
            layer.bounds.assign(
                np.stack([centre - half, centre + half], -1).astype("float32")
            )
        elif isinstance(layer, keras.layers.BatchNormalization):
            size = layer.gamma.shape
            layer.gamma.assign(rng.uniform(-1.5, 1.5, size=size).astype("float32"))
            layer.beta.assign(rng.normal(size=size).astype("float32"))
            layer.moving_mean.assign(rng.normal(size=size).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 2.0, size=size).astype("float32"))
    return model


def _dense_model(rng):
    return keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(6, activation=str(rng.choice(ACTIVATIONS))),
            BernsteinDense(
                5,
                degree=int(rng.integers(1, 7)),
                normalization=("batch", None)[int(rng.integers(2))],
                extrapolation=str(rng.choice(MODES)),
            ),
            Bernstein(degree=int(rng.integers(1, 7)), extrapolation=str(rng.choice(MODES))),
            keras.layers.Dense(3),
        ]
    )


def _functional_add_model(rng):
    inputs = keras.Input((4,))
    normalized = keras.layers.Normalization(
        mean=rng.normal(size=4).tolist(), variance=rng.uniform(0.5, 2, 4).tolist()
    )(inputs)
    left = keras.layers.Dense(5, activation=str(rng.choice(ACTIVATIONS)))(normalized)
    right = BernsteinDense(5, degree=4, extrapolation=str(rng.choice(MODES)))(normalized)
    merged = keras.layers.Add()([left, right])
    hidden = Bernstein(degree=5, extrapolation=str(rng.choice(MODES)))(merged)
    hidden = keras.layers.Activation("tanh")(hidden)
    outputs = keras.layers.Dense(3, activation="softmax")(hidden)
    return keras.Model(inputs, outputs)


def _conv2d_model(rng):
    return keras.Sequential(
        [
            keras.Input((7, 7, 2)),
            keras.layers.Rescaling(0.5, offset=0.1),
            keras.layers.Conv2D(3, 3, strides=2, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.MaxPooling2D(2, strides=1, padding="same"),
            Bernstein(degree=4, shared_axes=[1, 2], extrapolation=str(rng.choice(MODES))),
            keras.layers.Conv2D(2, 2, padding="valid", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Reshape((2, -1)),
            BernsteinDense(3, degree=3, extrapolation=str(rng.choice(MODES))),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )


def _conv1d_model(rng):
    return keras.Sequential(
        [
            keras.Input((9, 2)),
            keras.layers.Conv1D(3, 3, padding="causal", dilation_rate=2),
            Bernstein(degree=3, extrapolation=str(rng.choice(MODES))),
            keras.layers.AveragePooling1D(2, strides=1),
            keras.layers.MaxPooling1D(2),
            keras.layers.Conv1D(2, 2, strides=2, padding="same", activation="sigmoid"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )


BUILDERS = (_dense_model, _functional_add_model, _conv2d_model, _conv1d_model)


def _sample_box(rng, lower, upper, count):
    """Uniform points plus box corners (where extremes of monotone maps sit)."""
    shape = lower.shape
    points = rng.uniform(size=(count,) + shape)
    corners = rng.integers(0, 2, size=(count // 4,) + shape).astype("float64")
    points = np.concatenate([points, corners])
    return lower + (upper - lower) * points


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__.strip("_"))
def test_bounds_contain_sampled_outputs(builder):
    rng = np.random.default_rng(0)
    for trial in range(3):
        model = _randomize(builder(rng), rng)
        input_shape = model.inputs[0].shape[1:]
        centre = rng.normal(size=(2,) + tuple(input_shape))
        radius = rng.uniform(0.01, 1.0, size=(2,) + tuple(input_shape))
        lower, upper = centre - radius, centre + radius
        low, high = verification.output_bounds(model, lower, upper)
        naive_low, naive_high = verification.output_bounds(
            model, lower, upper, method="coefficient_range"
        )
        assert low.dtype == np.float64 and low.shape == (2,) + model.outputs[0].shape[1:]
        points = np.stack([_sample_box(rng, lower[i], upper[i], 2000) for i in (0, 1)])
        outputs = ops.convert_to_numpy(
            model(points.reshape((-1,) + points.shape[2:]).astype("float32"))
        ).reshape(points.shape[:2] + low.shape[1:])
        for sample in range(2):
            scale = RELATIVE_SLACK * (1.0 + np.abs(outputs[sample]).max())
            assert np.all(outputs[sample] >= low[sample] - scale), (trial, sample)
            assert np.all(outputs[sample] <= high[sample] + scale), (trial, sample)
        # Interval arithmetic is inclusion-monotone and subdivision stays in the
        # convex hull of the coefficients, so the tight bounds nest in the naive.
        assert np.all(low >= naive_low - 1e-9) and np.all(high <= naive_high + 1e-9)


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__.strip("_"))
def test_point_box_gives_the_output(builder):
    rng = np.random.default_rng(1)
    model = _randomize(builder(rng), rng)
    x = rng.normal(size=(3,) + tuple(model.inputs[0].shape[1:]))
    low, high = verification.output_bounds(model, x, x)
    outputs = ops.convert_to_numpy(model(x.astype("float32")))
    np.testing.assert_allclose(low, high, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(low, outputs, rtol=1e-4, atol=1e-5)


def test_subdivision_is_tight_for_a_single_activation():
    """On a small box the tight enclosure approaches the true range."""
    layer = Bernstein(degree=6, bounds=(-2.0, 2.0))
    model = keras.Sequential([keras.Input((1,)), layer])
    rng = np.random.default_rng(2)
    layer.coefficients.assign(rng.normal(size=(1, 7)).astype("float32"))
    lower = np.array([[0.2]])
    upper = np.array([[0.3]])
    low, high = verification.output_bounds(model, lower, upper)
    naive_low, naive_high = verification.output_bounds(
        model, lower, upper, method="coefficient_range"
    )
    values = ops.convert_to_numpy(model(np.linspace(0.2, 0.3, 1001)[:, None]))
    true_width = values.max() - values.min()
    assert (high - low).item() <= 1.2 * true_width + 1e-6
    assert (naive_high - naive_low).item() > 3 * (high - low).item()


def test_unsupported_layer_is_named():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.LayerNormalization(name="my_norm")]
    )
    with pytest.raises(ValueError, match="my_norm"):
        verification.output_bounds(model, np.zeros((1, 3)), np.ones((1, 3)))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="silu", name="d")])
    with pytest.raises(ValueError, match="'d'.*silu"):
        verification.output_bounds(model, np.zeros((1, 3)), np.ones((1, 3)))


def test_argument_validation():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="must not exceed"):
        verification.output_bounds(model, np.ones((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="same shape"):
        verification.output_bounds(model, np.zeros((1, 3)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="method="):
        verification.output_bounds(model, np.zeros((1, 3)), np.ones((1, 3)), method="x")
    with pytest.raises(ValueError, match="epsilon="):
        verification.certified_accuracy(model, np.zeros((1, 3)), [0], epsilon=-1.0)


def _trained_classifier():
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(256, 4)).astype("float32")
    y = (x[:, 0] + x[:, 1] > x[:, 2] + x[:, 3]).astype("int64")
    model = keras.Sequential(
        [
            keras.Input((4,)),
            BernsteinDense(8, degree=4, normalization=None, bounds=(-2.0, 2.0)),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=10, batch_size=128, verbose=0)
    return model, x, y


@pytest.mark.slow
def test_certified_accuracy():
    model, x, y = _trained_classifier()
    predictions = ops.convert_to_numpy(model(x)).argmax(-1)
    clean = np.mean(predictions == y)
    assert clean > 0.8
    # At epsilon 0 the margin bound is the margin itself.
    assert verification.certified_accuracy(model, x, y, 0.0) == pytest.approx(clean)
    fractions = [verification.certified_accuracy(model, x, y, e) for e in (0.01, 0.05, 0.3)]
    assert clean >= fractions[0] >= fractions[1] >= fractions[2]
    assert fractions[0] > 0.5 and fractions[2] < fractions[0]
    # The margin through the last layer's weight differences is at least as
    # tight as subtracting two output intervals (of the pre-softmax logits).
    logits = keras.Sequential([keras.Input((4,))] + model.layers[:-1] + [keras.layers.Dense(2)])
    logits.layers[-1].set_weights(model.layers[-1].get_weights())
    low, high = verification.output_bounds(logits, np.clip(x - 0.05, 0, 1), np.clip(x + 0.05, 0, 1))
    rows = np.arange(len(y))
    interval_margin = low[rows, y] - high[rows, 1 - y]
    margins = verification.certified_margins(model, x, y, 0.05)
    assert np.all(margins >= interval_margin - 1e-9)
    # ... and sound: sampled inputs never have a smaller margin.
    rng = np.random.default_rng(4)
    for i in range(0, 256, 64):
        points = np.clip(x[i] + rng.uniform(-0.05, 0.05, size=(500, 4)), 0, 1)
        z = ops.convert_to_numpy(logits(points.astype("float32")))
        sampled = z[:, y[i]] - z[:, 1 - y[i]]
        assert sampled.min() >= margins[i] - 1e-4


def test_derivative_certificate():
    model = keras.Sequential(
        [
            keras.Input((3,)),
            BernsteinDense(4, degree=5, coefficient_initializer="identity", name="up"),
            BernsteinDense(4, degree=5, coefficient_initializer="relu", name="relu_like",
                           extrapolation="clip"),
            keras.layers.Dense(1),
        ]
    )
    identity, relu_like = verification.derivative_certificate(model)
    assert identity.layer_name == "up" and identity.monotone
    assert identity.min_slope == pytest.approx(1.0, rel=1e-5)
    assert identity.lower_bounds.shape == (4,) and identity.domain == "all real inputs"
    assert not relu_like.monotone and relu_like.domain == "[l, u]"
    assert relu_like.min_slope <= 1e-6
    # The bound is a true lower bound of the slope on [l, u].
    layer = model.layers[1].bernstein
    layer.coefficients.assign(
        np.sort(np.random.default_rng(5).normal(size=(4, 6)), axis=-1).astype("float32")
    )
    certificate = verification.derivative_certificate(model)[1]
    x = np.linspace(-3, 3, 601, dtype="float32")[:, None] * np.ones((1, 4), "float32")
    slopes = ops.convert_to_numpy(layer.derivative(x))
    assert np.all(slopes >= certificate.lower_bounds - 1e-5)
    assert certificate.monotone_fraction == pytest.approx(np.mean(certificate.lower_bounds > 0))


def _small_classifier(classes=3):
    """An untrained Bernstein classifier: certificates are checked against
    its own predictions, so it need not be accurate."""
    model = keras.Sequential(
        [
            keras.Input((4,)),
            BernsteinDense(6, degree=4, normalization=None, bounds=(-2.0, 2.0)),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    _randomize(model, np.random.default_rng(11))
    return model


@pytest.mark.parametrize(
    "input_range", [(1.0, 0.0), (0.5, 0.5), (float("nan"), 1.0), (0.0, float("inf")),
                    (0.0,), "ab", (0.0, 1.0, 2.0), (False, True)]
)
def test_certified_accuracy_rejects_bad_input_ranges(input_range):
    model = _small_classifier()
    x = np.full((2, 4), 0.5, "float32")
    with pytest.raises(ValueError, match="input_range"):
        verification.certified_accuracy(model, x, [0, 1], 0.01, input_range=input_range)


def test_certified_accuracy_rejects_inputs_outside_input_range():
    model = _small_classifier()
    x = np.random.default_rng(12).uniform(0.0, 255.0, (8, 4)).astype("float32")
    y = np.zeros(8, "int64")
    for function in (verification.certified_accuracy, verification.certified_margins):
        with pytest.raises(ValueError, match=r"`x` must lie inside `input_range`"):
            function(model, x, y, 0.01)
    assert 0.0 <= verification.certified_accuracy(model, x, y, 1.0, input_range=(0, 255)) <= 1.0
    assert 0.0 <= verification.certified_accuracy(model, x, y, 1.0, input_range=None) <= 1.0
    with pytest.raises(ValueError, match="`x` must be finite"):
        verification.certified_accuracy(model, np.full((1, 4), np.nan), [0], 0.01)


@pytest.mark.parametrize(
    "labels", [[0, 3], [-1, 0], [0.5, 1.0], [0, 1, 2], [[0, 1], [1, 0]], ["a", "b"],
               [True, False]]
)
def test_certified_accuracy_rejects_bad_labels(labels):
    model = _small_classifier(classes=3)
    x = np.full((2, 4), 0.5, "float32")
    with pytest.raises(ValueError, match="`y` must"):
        verification.certified_accuracy(model, x, labels, 0.01)


def test_certified_accuracy_accepts_label_layouts():
    model = _small_classifier(classes=3)
    x = np.random.default_rng(13).uniform(size=(16, 4)).astype("float32")
    y = np.random.default_rng(14).integers(0, 3, 16)
    expected = verification.certified_accuracy(model, x, y, 0.01)
    one_hot = np.eye(3)[y]
    for layout in (y[:, None], one_hot, y.astype("float32"), keras.ops.convert_to_tensor(y)):
        assert verification.certified_accuracy(model, x, layout, 0.01) == expected
    with pytest.raises(ValueError, match="epsilon"):
        verification.certified_accuracy(model, x, y, "0.1")
    with pytest.raises(ValueError, match="epsilon"):
        verification.certified_accuracy(model, x, y, float("nan"))


@pytest.mark.parametrize("input_range", [(0.0, 1.0), (-1.0, 2.0), None])
def test_certified_accuracy_never_exceeds_clean_accuracy(input_range):
    model = _small_classifier(classes=3)
    rng = np.random.default_rng(15)
    x = rng.uniform(size=(128, 4)).astype("float32")
    predictions = ops.convert_to_numpy(model(x)).argmax(-1)
    # Labels the model mostly gets wrong: a certificate may never count them.
    y = np.where(rng.uniform(size=128) < 0.7, (predictions + 1) % 3, predictions)
    clean = np.mean(predictions == y)
    previous = 1.0
    for epsilon in (0.0, 1e-3, 0.05, 0.5):
        certified = verification.certified_accuracy(model, x, y, epsilon, input_range)
        assert certified <= clean + 1e-12
        assert certified <= previous
        previous = certified
    assert verification.certified_accuracy(model, x, y, 0.0, input_range) == pytest.approx(clean)


def test_certified_accuracy_needs_two_classes():
    # One output unit has no margin to bound: it would certify every input.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    with pytest.raises(ValueError, match="at least 2 classes"):
        verification.certified_accuracy(model, np.full((2, 4), 0.5), [0, 0], 0.01)


def test_a_users_function_is_not_trusted_by_its_name():
    def relu(x):  # named like a Keras activation, but decreasing
        return -keras.ops.relu(x)

    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, activation=relu, name="d")]
    )
    with pytest.raises(ValueError, match="'d'.*relu.*no certified bound"):
        verification.output_bounds(model, np.zeros((1, 3)), np.ones((1, 3)))
    # Keras' own functions are known by their names.
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, activation=keras.ops.relu)]
    )
    low, _ = verification.output_bounds(model, np.zeros((1, 3)), np.ones((1, 3)))
    assert np.all(low >= 0.0)


def test_derivative_certificate_of_nested_layers_in_order():
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.inner = Bernstein(degree=3, name="in_block")

        def call(self, x):
            return self.inner(x)

    nested = keras.Sequential([Bernstein(degree=3, name="b1"), Bernstein(degree=3, name="b2")])
    model = keras.Sequential(
        [keras.Input((3,)), BernsteinDense(3, name="bd"), nested, Block(),
         Bernstein(degree=3, name="b3")]
    )
    names = [c.layer_name for c in verification.derivative_certificate(model)]
    assert names == ["bd", "b1", "b2", "in_block", "b3"]


# The differentiable twin: float32 tensors, the same rules as the float64 path.


def _random_box(rng, model, batch=2, radius=(0.01, 1.0)):
    input_shape = tuple(model.inputs[0].shape[1:])
    centre = rng.normal(size=(batch,) + input_shape)
    half = rng.uniform(*radius, size=(batch,) + input_shape)
    return (centre - half).astype("float32"), (centre + half).astype("float32")


def _float32_slack(*arrays):
    return 1e-5 * (1.0 + max(np.abs(a).max() for a in arrays))


@pytest.mark.parametrize("builder", BUILDERS, ids=lambda b: b.__name__.strip("_"))
def test_interval_bounds_agree_with_float64_and_contain_outputs(builder):
    rng = np.random.default_rng(1)
    model = _randomize(builder(rng), rng)
    lower, upper = _random_box(rng, model)
    low, high = verification.output_bounds(model, lower, upper)
    tensor_low, tensor_high = verification.interval_bounds(
        model, ops.convert_to_tensor(lower), ops.convert_to_tensor(upper)
    )
    tensor_low = ops.convert_to_numpy(tensor_low)
    tensor_high = ops.convert_to_numpy(tensor_high)
    assert tensor_low.dtype == np.float32 and tensor_low.shape == low.shape
    slack = _float32_slack(low, high)
    np.testing.assert_allclose(tensor_low, low, rtol=0, atol=slack)
    np.testing.assert_allclose(tensor_high, high, rtol=0, atol=slack)
    points = np.stack([_sample_box(rng, lower[i], upper[i], 500) for i in (0, 1)])
    outputs = ops.convert_to_numpy(
        model(points.reshape((-1,) + points.shape[2:]).astype("float32"))
    ).reshape(points.shape[:2] + low.shape[1:])
    assert np.all(outputs >= tensor_low[:, None] - slack)
    assert np.all(outputs <= tensor_high[:, None] + slack)


def _float64_objective(model, lower, upper, weights):
    low, high = verification.output_bounds(model, lower, upper)
    return float(np.sum(weights * high) - np.sum(weights * low) + np.sum(low))


def _tensor_objective(model, weights):
    def objective(lower, upper):
        low, high = verification.interval_bounds(model, lower, upper)
        return ops.sum(weights * high) - ops.sum(weights * low) + ops.sum(low)

    return objective


@pytest.mark.parametrize(
    "builder", [_functional_add_model, _conv1d_model], ids=lambda b: b.__name__.strip("_")
)
def test_interval_bounds_gradients_match_finite_differences(builder):
    from keras_bernstein._autodiff import gradients

    rng = np.random.default_rng(2)
    model = _randomize(builder(rng), rng)
    lower, upper = _random_box(rng, model, batch=1, radius=(0.05, 0.5))
    weights = rng.uniform(0.5, 1.5, size=model.outputs[0].shape[1:]).astype("float32")
    grads = gradients(
        _tensor_objective(model, ops.convert_to_tensor(weights)),
        [ops.convert_to_tensor(lower), ops.convert_to_tensor(upper)],
    )
    grads = [ops.convert_to_numpy(g).astype("float64") for g in grads]
    # Central differences in float64 on a few coordinates of each end; the
    # bounds are piecewise smooth, so a kink inside the step is skipped.
    lower64, upper64 = lower.astype("float64"), upper.astype("float64")
    step = 1e-6
    checked = 0
    for which, grad in ((0, grads[0]), (1, grads[1])):
        for flat in rng.choice(lower.size, size=min(6, lower.size), replace=False):
            index = np.unravel_index(flat, lower.shape)
            values = []
            for sign in (1.0, -1.0):
                ends = [lower64.copy(), upper64.copy()]
                ends[which][index] += sign * step
                if np.any(ends[0] > ends[1]):
                    break
                values.append(_float64_objective(model, *ends, weights))
            if len(values) < 2:
                continue
            numeric = (values[0] - values[1]) / (2 * step)
            one_sided = (values[0] - _float64_objective(model, lower64, upper64, weights)) / step
            if abs(numeric - one_sided) > 1e-3 * (1.0 + abs(numeric)):
                continue  # a kink (max, clip, piece boundary) within the step
            assert abs(grad[index] - numeric) <= 2e-3 * (1.0 + abs(numeric)), (
                which, index, grad[index], numeric,
            )
            checked += 1
    assert checked >= 4


def test_interval_bounds_gradients_reach_the_weights():
    """Gradients with respect to the layer variables (what training uses)
    match float64 finite differences of `output_bounds`."""
    from keras_bernstein._autodiff import gradients

    rng = np.random.default_rng(4)
    model = _randomize(_dense_model(rng), rng)
    lower, upper = _random_box(rng, model, batch=2, radius=(0.05, 0.3))
    bernstein = model.layers[2]
    variables = [model.layers[0].kernel, bernstein.coefficients]
    weights = rng.uniform(0.5, 1.5, size=model.outputs[0].shape[1:]).astype("float32")
    objective = _tensor_objective(model, ops.convert_to_tensor(weights))

    def of_variables(*values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return objective(ops.convert_to_tensor(lower), ops.convert_to_tensor(upper))

    grads = gradients(of_variables, [ops.convert_to_tensor(v) for v in variables])
    checked = 0
    for variable, grad in zip(variables, grads):
        grad = ops.convert_to_numpy(grad)
        original = ops.convert_to_numpy(variable).copy()
        for flat in rng.choice(original.size, size=4, replace=False):
            index = np.unravel_index(flat, original.shape)
            values = []
            for step in (1e-3, -1e-3):
                changed = original.copy()
                changed[index] += step
                variable.assign(changed)
                values.append(_float64_objective(model, lower, upper, weights))
            variable.assign(original)
            numeric = (values[0] - values[1]) / 2e-3
            assert abs(grad[index] - numeric) <= 1e-2 * (1.0 + abs(numeric)), (
                variable.path, index, grad[index], numeric,
            )
            checked += 1
    assert checked == 8


@pytest.mark.parametrize("softmax", [True, False])
def test_margin_bounds_match_certified_margins(softmax):
    model = _small_classifier(classes=4)
    if not softmax:
        model = keras.Sequential([*model.layers[:-1], keras.layers.Dense(4)])
        model.build((None, 4))
        _randomize(model, np.random.default_rng(5))
    rng = np.random.default_rng(6)
    x = rng.uniform(size=(16, 4)).astype("float32")
    y = rng.integers(0, 4, size=16)
    bounds = ops.convert_to_numpy(
        verification.margin_bounds(model, x - 0.05, x + 0.05, ops.convert_to_tensor(y))
    )
    assert bounds.shape == (16, 4) and bounds.dtype == np.float32
    assert np.all(bounds[np.arange(16), y] == 0.0)
    others = np.where(np.eye(4, dtype=bool)[y], np.inf, bounds).min(axis=-1)
    expected = verification.certified_margins(model, x, y, 0.05, input_range=None)
    np.testing.assert_allclose(others, expected, rtol=0, atol=_float32_slack(expected))


def test_margin_bounds_need_a_classifier():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="classes"):
        verification.margin_bounds(model, np.zeros((1, 3)), np.ones((1, 3)), [0])


def test_activation_input_bounds_contain_the_activation_inputs():
    rng = np.random.default_rng(7)
    model = _randomize(_functional_add_model(rng), rng)
    lower = rng.normal(size=(1, 4)) - 0.5
    upper = lower + 1.0
    result = verification.activation_input_bounds(model, lower, upper)
    names = [layer.path for layer, _, _ in result]
    activations = [layer for layer in model.layers if isinstance(layer, (Bernstein, BernsteinDense))]
    assert len(result) == 2 and result[0][0] is activations[0].bernstein
    assert result[1][0] is activations[1], names
    # The values entering the activations at sampled in-box points.
    points = _sample_box(rng, lower[0], upper[0], 400).astype("float32")
    entering = keras.Model(model.inputs[0], [activations[0].input, activations[1].input])
    normalized, merged = entering(points)
    dense = activations[0]
    dense_out = ops.convert_to_numpy(
        dense.batch_normalization(dense.dense(normalized), training=False)
    )
    merged = ops.convert_to_numpy(merged)
    slack = 1e-5 * (1.0 + np.abs(merged).max())
    for (_, low, high), values in zip(result, (dense_out, merged)):
        assert low.shape == (1,) + values.shape[1:]
        assert np.all(values >= low - slack) and np.all(values <= high + slack)
