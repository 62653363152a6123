"""Tests of `keras_bernstein.transforms`: exactness, saving, and the widening
that `keras_bernstein.callbacks.BoundsUpdate` applies."""

import math
import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_bernstein import Bernstein
from keras_bernstein import BernsteinDense
from keras_bernstein import callbacks
from keras_bernstein import ops as bernstein_ops
from keras_bernstein import transforms

MODES = bernstein_ops.EXTRAPOLATION_MODES


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def _random_coefficients(layer, seed):
    rng = np.random.default_rng(seed)
    layer.coefficients.assign(rng.normal(size=layer.coefficients.shape).astype("float32"))


def _relative_error(actual, expected):
    return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


@pytest.mark.parametrize("extrapolation", MODES)
def test_polynomial_transforms_are_exact_in_float64(extrapolation):
    rng = np.random.default_rng(0)
    coefficients = rng.normal(size=(3, 7))
    elevated = bernstein_ops.elevate_coefficients(coefficients, 11)
    assert elevated.shape == (3, 12)
    # Same end values and end slopes, hence the same extrapolation.
    np.testing.assert_allclose(elevated[:, [0, -1]], coefficients[:, [0, -1]])
    np.testing.assert_allclose(
        np.stack(bernstein_ops.end_slopes(elevated)),
        np.stack(bernstein_ops.end_slopes(coefficients)),
        rtol=1e-12,
    )
    t = np.linspace(0.0, 1.0, 50)[:, None]
    a, b = -0.4, 1.7
    sub = bernstein_ops.subdivide_coefficients(coefficients, a, b)

    def evaluate(c, points):
        """The Bernstein sum in plain float64 powers (independent of `ops`)."""
        n = c.shape[-1] - 1
        return sum(
            c[:, k] * math.comb(n, k) * points**k * (1 - points) ** (n - k)
            for k in range(n + 1)
        )

    np.testing.assert_allclose(evaluate(sub, t), evaluate(coefficients, a + (b - a) * t), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(evaluate(elevated, t), evaluate(coefficients, t), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("extrapolation", MODES)
def test_elevate_degree_layer_preserves_outputs(extrapolation):
    layer = Bernstein(degree=5, bounds=(-2.0, 2.0), extrapolation=extrapolation)
    x = np.random.default_rng(1).uniform(-3, 3, size=(500, 4)).astype("float32")
    expected = _numpy(layer(x))
    _random_coefficients(layer, 2)
    expected = _numpy(layer(x))
    elevated = transforms.elevate_degree(layer, 9)
    assert elevated.degree == 9 and tuple(elevated.coefficients.shape) == (4, 10)
    assert elevated.extrapolation == extrapolation
    inside = np.abs(x) <= 2.0
    actual = _numpy(elevated(x))
    assert _relative_error(actual[inside], expected[inside]) <= 1e-6
    assert _relative_error(actual, expected) <= 1e-5


@pytest.mark.slow
def test_elevate_degree_model_and_reload(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((6,)),
            BernsteinDense(5, degree=4, name="first"),
            BernsteinDense(5, degree=8, normalization=None, extrapolation="clip"),
            keras.layers.Dense(3),
        ]
    )
    _random_coefficients(model.layers[0].bernstein, 3)
    x = np.random.default_rng(4).normal(size=(64, 6)).astype("float32")
    model.compile("adam", "mse")
    model.fit(x, x[:, :3], epochs=1, verbose=0)  # move the BN statistics
    expected = _numpy(model(x))
    elevated = transforms.elevate_degree(model, 8)
    assert [layer.degree for layer in elevated.layers[:2]] == [8, 8]
    assert elevated.layers[0].name == "first"
    assert _relative_error(_numpy(elevated(x)), expected) <= 1e-5
    path = os.path.join(tmp_path, "elevated.keras")
    elevated.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_numpy(reloaded(x)), _numpy(elevated(x)), rtol=1e-6, atol=1e-6)
    # The elevated model trains.
    elevated.compile("adam", "mse")
    elevated.fit(x, x[:, :3], epochs=1, verbose=0)


def test_elevate_degree_validation():
    layer = Bernstein(degree=5)
    with pytest.raises(ValueError, match="built"):
        transforms.elevate_degree(layer, 6)
    layer.build((None, 3))
    with pytest.raises(ValueError, match="new_degree=4"):
        transforms.elevate_degree(layer, 4)
    with pytest.raises(ValueError, match="degree"):
        transforms.elevate_degree(layer, 2.5)
    with pytest.raises(ValueError, match="Bernstein"):
        transforms.elevate_degree(keras.layers.Dense(3), 6)


@pytest.mark.parametrize("extrapolation", MODES)
def test_rebound_is_exact_on_the_overlap(extrapolation):
    layer = Bernstein(degree=6, bounds=(-2.0, 2.0), extrapolation=extrapolation)
    layer.build((None, 3))
    _random_coefficients(layer, 5)
    x = np.random.default_rng(6).uniform(-4, 4, size=(2000, 3)).astype("float32")
    before = _numpy(layer(x))
    new_bounds = np.array([[-3.0, 2.5], [-1.0, 1.5], [-2.5, 1.0]])  # wider, narrower, mixed
    transforms.rebound(layer, new_bounds)
    np.testing.assert_allclose(_numpy(layer.bounds), new_bounds)
    after = _numpy(layer(x))
    overlap = (x >= np.maximum(-2.0, new_bounds[:, 0])) & (x <= np.minimum(2.0, new_bounds[:, 1]))
    assert _relative_error(after[overlap], before[overlap]) <= 1e-5
    if extrapolation == "polynomial":
        # The polynomial itself is unchanged everywhere.
        assert _relative_error(after, before) <= 1e-4
    # Round trip back to the old interval.
    transforms.rebound(layer, (-2.0, 2.0))
    inside = np.abs(x) <= 1.0
    assert _relative_error(_numpy(layer(x))[inside], before[inside]) <= 1e-5


def test_rebound_validation():
    layer = BernsteinDense(3)
    layer.build((None, 2))
    with pytest.raises(ValueError, match="lower < upper"):
        transforms.rebound(layer, (1.0, -1.0))
    with pytest.raises(ValueError, match="broadcast"):
        transforms.rebound(layer, np.zeros((4, 2)))
    assert transforms.rebound(layer, (-4.0, 4.0)) is layer


def _blobs():
    rng = np.random.default_rng(7)
    centres = rng.normal(scale=2.0, size=(3, 4))
    y = rng.integers(0, 3, size=300)
    x = (centres[y] + rng.normal(scale=0.7, size=(300, 4))).astype("float32")
    return x, y


@pytest.mark.slow
def test_bounds_update_keeps_accuracy_and_covers_the_data(tmp_path):
    x, y = _blobs()
    model = keras.Sequential(
        [
            keras.Input((4,)),
            # Batch norm keeps most pre-activations near [-1.5, 1.5]; about
            # 10% fall outside, where the layer extrapolates linearly.
            BernsteinDense(8, degree=5, bounds=(-1.5, 1.5)),
            keras.layers.Dense(3),
        ]
    )
    model.compile(
        keras.optimizers.Adam(0.02),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=5, batch_size=100, verbose=0)
    # A generous `max_change`: one update covers all the data.
    update = callbacks.BoundsUpdate(x, quantiles=(0.0, 1.0), margin=0.05, max_change=1.0)
    update.set_model(model)
    _, accuracy_before = model.evaluate(x, y, verbose=0)
    layer = model.layers[0]
    z_before = _numpy(layer.pre_activation(x))
    activations_before = _numpy(layer(x))
    with pytest.warns(UserWarning, match=layer.name):
        record = update.update(epoch=4)
    assert record["epoch"] == 4 and record[layer.name] > 0
    _, accuracy_after = model.evaluate(x, y, verbose=0)
    assert accuracy_after == pytest.approx(accuracy_before, abs=0.02)
    # Every pre-activation is now inside its neuron's interval, but for the
    # neurons whose widening was capped: those with strictly increasing
    # coefficients that the continuation below `l` would make decrease.
    z = _numpy(layer.pre_activation(x))
    bounds = _numpy(layer.bounds)
    covered_now = np.all((z >= bounds[:, 0]) & (z <= bounds[:, 1]), axis=0)
    assert 0 < np.sum(~covered_now) <= record["capped"][layer.name] < 8
    inside = (z >= bounds[:, 0]) & (z <= bounds[:, 1])
    assert inside.mean() > np.mean(np.abs(z_before) <= 1.5) + 0.03
    # Where the old interval covered the pre-activation the activation is
    # unchanged (outside it the old layer extrapolated linearly; see `rebound`).
    covered = np.abs(z_before) <= 1.5
    assert 0.5 < covered.mean() < 0.99
    after = _numpy(layer(x))
    assert _relative_error(after[covered], activations_before[covered]) <= 1e-5
    # A second update widens on where the first was capped, never narrows.
    update.update(epoch=5)
    widened = _numpy(layer.bounds)
    assert np.all(widened[:, 0] <= bounds[:, 0]) and np.all(widened[:, 1] >= bounds[:, 1])
    assert model.evaluate(x, y, verbose=0)[1] == pytest.approx(accuracy_before, abs=0.02)
    # As a callback inside `fit`, and the model still saves and reloads.
    model.fit(x, y, epochs=2, batch_size=100, verbose=0,
              callbacks=[callbacks.BoundsUpdate(x, frequency=2)])
    path = os.path.join(tmp_path, "updated.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_numpy(reloaded(x)), _numpy(model(x)), rtol=1e-5, atol=1e-5)


def test_bounds_update_is_exact_with_polynomial_extrapolation():
    x, _ = _blobs()
    model = keras.Sequential(
        [keras.Input((4,)), BernsteinDense(6, degree=4, normalization=None,
                                           bounds=(-1.0, 1.0), extrapolation="polynomial")]
    )
    _random_coefficients(model.layers[0].bernstein, 8)
    before = _numpy(model(x))
    update = callbacks.BoundsUpdate(x, quantiles=(0.0, 1.0))
    update.set_model(model)
    update.update()
    assert _relative_error(_numpy(model(x)), before) <= 1e-5


def test_bounds_update_validation():
    with pytest.raises(ValueError, match="frequency=0"):
        callbacks.BoundsUpdate(np.zeros((2, 2)), frequency=0)
    with pytest.raises(ValueError, match="quantiles="):
        callbacks.BoundsUpdate(np.zeros((2, 2)), quantiles=(0.9, 0.1))
    with pytest.raises(ValueError, match="margin="):
        callbacks.BoundsUpdate(np.zeros((2, 2)), margin=-1.0)


def _guarantee(coefficients, degree):
    """`rebound`'s bound on the change on the old interval, per neuron."""
    epsilon = np.finfo("float32").eps
    return (
        transforms.REBOUND_TOLERANCE * np.ptp(coefficients, axis=-1)
        + epsilon * 2 * (degree + 1) * np.abs(coefficients).max(axis=-1)
        + epsilon * 2 * degree * np.abs(np.diff(coefficients, axis=-1)).max(axis=-1)
    )


@pytest.mark.parametrize("extrapolation", MODES)
@pytest.mark.parametrize("degree", [5, 16])
def test_rebound_keeps_its_guarantee_or_refuses(extrapolation, degree):
    layer = Bernstein(degree=degree, bounds=(-1.0, 1.0), extrapolation=extrapolation)
    layer.build((None, 16))
    coefficients = np.tanh(np.random.default_rng(degree).normal(size=(16, degree + 1)))
    layer.coefficients.assign(coefficients.astype("float32"))
    coefficients = _numpy(layer.coefficients).astype("float64")
    x = np.linspace(-1.0, 1.0, 801, dtype="float32")[:, None] * np.ones((1, 16), "float32")
    before = _numpy(layer(x))
    refused = 0
    widenings = (1.1, 1.5, 3.0, 10.0, 1e3, 1e6)
    # Upward and downward: below, t is near 1 where float32 rounds it coarsely.
    for new_bounds in [(-1.0, 2.0 * w - 1.0) for w in widenings] + [
        (1.0 - 2.0 * w, 1.0) for w in widenings
    ]:
        try:
            transforms.rebound(layer, new_bounds)
        except ValueError as error:
            assert layer.name in str(error) and "new_bounds" in str(error)
            refused += 1
            continue
        change = np.abs(_numpy(layer(x)) - before).max(axis=0)
        assert np.all(change <= _guarantee(coefficients, degree))
        transforms.rebound(layer, (-1.0, 1.0))  # back: narrowing never refuses
    assert refused >= 2  # 1e6 times wider cannot keep the function in float32
    np.testing.assert_allclose(_numpy(layer.bounds), np.tile([[-1.0, 1.0]], (16, 1)))


@pytest.mark.parametrize("new_bounds", [(-1e30, 1e30), (-1e6, 1e6), (0.0, 1e20)])
def test_rebound_refuses_widening_float32_cannot_keep(new_bounds):
    layer = BernsteinDense(3, degree=6, normalization=None, name="wide")
    layer.build((None, 2))
    _random_coefficients(layer.bernstein, 9)
    coefficients = _numpy(layer.bernstein.coefficients)
    with pytest.raises(ValueError, match="'wide'.*Received: new_bounds="):
        transforms.rebound(layer, new_bounds)
    # Refused: nothing changed.
    np.testing.assert_array_equal(_numpy(layer.bernstein.coefficients), coefficients)
    for bad in ((-np.inf, 1.0), (np.nan, 1.0), (2.0, 2.0), (-1e39, 1e39), (1.0, 1.0 + 1e-9)):
        with pytest.raises(ValueError, match="new_bounds"):
            transforms.rebound(layer, bad)


def _outlier_model(degree=16, extrapolation="linear", constraint=None, trainable_bounds=False):
    """A Bernstein activation with outputs in [-1, 1] on [-1, 1], and a head."""
    model = keras.Sequential(
        [
            keras.Input((8,)),
            Bernstein(degree=degree, bounds=(-1.0, 1.0), extrapolation=extrapolation,
                      coefficient_constraint=constraint, trainable_bounds=trainable_bounds,
                      name="activation"),
            keras.layers.Dense(3, name="head"),
        ]
    )
    rng = np.random.default_rng(degree)
    coefficients = np.tanh(rng.normal(size=(8, degree + 1)))
    if constraint is not None:
        coefficients = np.sort(coefficients, axis=-1) * 0.8 + 0.01 * np.arange(degree + 1)
    model.layers[0].coefficients.assign(coefficients.astype("float32"))
    return model


def _outlier_probe(outlier):
    rng = np.random.default_rng(10)
    x = rng.uniform(-1.3, 1.3, (256, 8)).astype("float32")
    x[0] = outlier
    return x, rng.integers(0, 3, 256)


@pytest.mark.parametrize(
    "outlier, extrapolation",
    [(100.0, "linear"), (1000.0, "linear"), (1e20, "linear"), (100.0, "clip")],
)
def test_bounds_update_with_an_outlier_keeps_its_promises(outlier, extrapolation):
    model = _outlier_model(extrapolation=extrapolation)
    layer = model.layers[0]
    x, y = _outlier_probe(outlier)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    coefficients = _numpy(layer.coefficients).astype("float64")
    grid = np.linspace(-1.0, 1.0, 801, dtype="float32")[:, None] * np.ones((1, 8), "float32")
    on_grid, on_probe = _numpy(layer(grid)), _numpy(layer(x))
    loss = model.evaluate(x, y, verbose=0)
    update = callbacks.BoundsUpdate(x, quantiles=(0.0, 1.0))
    update.set_model(model)
    with pytest.warns(UserWarning, match="'activation'"):
        record = update.update()
    assert record["capped"]["activation"] > 0
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    # On the old interval: `rebound`'s guarantee.
    change = np.abs(_numpy(layer(grid)) - on_grid).max(axis=0)
    assert np.all(change <= _guarantee(coefficients, 16))
    # On the probe (the outlier included): at most `max_change` of the range,
    # up to float32 rounding of the values there.
    change = np.abs(_numpy(layer(x)) - on_probe)
    allowed = update.max_change * np.ptp(coefficients, axis=-1) + _guarantee(coefficients, 16)
    assert np.all(change <= allowed + 1e-6 * np.abs(on_probe))
    # So each logit moves by at most sum_j |W_jk| * allowed_j, and the
    # cross-entropy (2-Lipschitz in the logits' max norm) by twice that.
    kernel = _numpy(model.layers[1].kernel)
    logit_bound = np.max(np.abs(kernel).T @ (allowed + 1e-6 * np.abs(on_probe).max(axis=0)))
    assert np.isfinite(model.evaluate(x, y, verbose=0))
    assert abs(model.evaluate(x, y, verbose=0) - loss) <= 2 * logit_bound + 1e-5 * abs(loss)


def test_bounds_update_keeps_constraint_and_certificate_while_training():
    from keras_bernstein import constraints
    from keras_bernstein import verification

    constraint = constraints.MonotonicCoefficients(0.01)
    model = _outlier_model(degree=8, constraint=constraint, trainable_bounds=True)
    x, y = _outlier_probe(100.0)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert verification.derivative_certificate(model)[0].min_slope > 0
    def probe_loss():
        logits = model(x)
        return float(keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
            y, logits, from_logits=True)))

    losses = [probe_loss()]
    with pytest.warns(UserWarning, match="'activation'"):
        model.fit(x, y, epochs=2, batch_size=128, verbose=0,
                  callbacks=[callbacks.BoundsUpdate(x, quantiles=(0.0, 1.0)),
                             keras.callbacks.LambdaCallback(
                                 on_epoch_end=lambda e, logs: losses.append(probe_loss()))])
    coefficients = _numpy(model.layers[0].coefficients)
    assert np.all(np.diff(coefficients, axis=-1) >= 0.01 - 1e-6)
    assert verification.derivative_certificate(model)[0].min_slope > 0
    assert np.all(np.isfinite(_numpy(model(x))))
    assert max(losses) < 2 * min(losses)


def test_bounds_update_refuses_non_finite_probe_data():
    model = _outlier_model(degree=4)
    x, _ = _outlier_probe(0.5)
    x[3, 2] = np.nan
    update = callbacks.BoundsUpdate(x)
    update.set_model(model)
    with pytest.raises(ValueError, match="'activation'.*NaN or infinite"):
        update.update()


def test_rebound_applies_the_coefficient_constraint():
    from keras_bernstein import constraints

    layer = Bernstein(degree=6, bounds=(-1.0, 1.0), name="monotone",
                      coefficient_constraint=constraints.MonotonicCoefficients(0.05))
    layer.build((None, 4))
    layer.coefficients.assign(np.tile(np.linspace(-1.0, 1.0, 7), (4, 1)).astype("float32"))
    transforms.rebound(layer, (-0.5, 0.5))  # sigma(x) = x: gaps halve to 1/6
    assert np.all(np.diff(_numpy(layer.coefficients), axis=-1) >= 0.05)
    # Gaps of 1/60 would break the constraint, and repairing them the function.
    with pytest.raises(ValueError, match="'monotone'.*coefficient constraint"):
        transforms.rebound(layer, (-0.05, 0.05))
    assert np.all(np.diff(_numpy(layer.coefficients), axis=-1) >= 0.05)
    np.testing.assert_allclose(_numpy(layer.bounds), np.tile([[-0.5, 0.5]], (4, 1)))


def test_bounds_update_on_shared_axes_widens_per_channel():
    model = keras.Sequential(
        [
            keras.Input((5, 5, 3)),
            Bernstein(degree=4, bounds=(-1.0, 1.0), shared_axes=[1, 2], name="act"),
            keras.layers.Flatten(),
            keras.layers.Dense(2),
        ]
    )
    x = np.random.default_rng(12).uniform(-1.0, 1.0, (16, 5, 5, 3)).astype("float32")
    x[..., 1] *= 1.2  # only channel 1 leaves [-1, 1]
    update = callbacks.BoundsUpdate(x, quantiles=(0.0, 1.0))
    update.set_model(model)
    assert update.update()["act"] == 1
    bounds = _numpy(model.layers[0].bounds).reshape(3, 2)
    np.testing.assert_array_equal(bounds[[0, 2]], [[-1.0, 1.0], [-1.0, 1.0]])
    assert bounds[1, 0] < -1.0 and bounds[1, 1] > 1.0


def test_rebound_counts_the_rounding_of_t_far_from_zero():
    # sigma(x) = x on [-1, 1] rebound to [-1e5, 1]: the old interval sits at
    # t ~ 1, where float32 rounds t by ~1e-7, i.e. x by ~1e-7 * 1e5.
    layer = Bernstein(degree=1, bounds=(-1.0, 1.0), coefficient_initializer="identity")
    layer.build((None, 2))
    with pytest.raises(ValueError, match="new_bounds"):
        transforms.rebound(layer, (-1e5, 1.0))
    transforms.rebound(layer, (-1.0, 1e5))  # there t ~ 0: exact enough
    x = np.linspace(-1.0, 1.0, 101, dtype="float32")[:, None] * np.ones((1, 2), "float32")
    np.testing.assert_allclose(_numpy(layer(x)), x, atol=1e-6)


# --- Bounds from an input domain -------------------------------------------


def _domain_model(extrapolation, seed=0):
    """Dense/BernsteinDense/Bernstein layers, with shared axes and random
    coefficients."""
    inputs = keras.Input((2, 3))
    hidden = BernsteinDense(5, degree=4, extrapolation=extrapolation, name="first")(inputs)
    hidden = keras.layers.Dense(4, name="dense")(hidden)
    hidden = Bernstein(
        degree=5, shared_axes=[1], extrapolation=extrapolation, name="middle"
    )(hidden)
    hidden = keras.layers.Flatten()(hidden)
    outputs = BernsteinDense(
        3, degree=3, normalization=None, extrapolation=extrapolation, name="last"
    )(hidden)
    model = keras.Model(inputs, outputs)
    for index, name in enumerate(("first", "middle", "last")):
        layer = model.get_layer(name)
        _random_coefficients(getattr(layer, "bernstein", layer), seed + index)
    return model


def _in_domain(lower, upper, count, seed=0):
    """Uniform points of the box `[lower, upper]` (one box), and its corners."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(lower[0], upper[0], (count,) + lower.shape[1:])
    corners = np.where(rng.integers(0, 2, (count,) + lower.shape[1:]), lower[0], upper[0])
    return np.concatenate([points, corners]).astype("float32")


def _covers(model, x, tolerance=1e-5):
    """Whether every pre-activation of every Bernstein layer on `x` lies in
    its neuron's interval, up to `tolerance` relative float32 rounding."""
    names = ["first", "middle", "last"]
    z = callbacks.collect_pre_activations(model, x, layers=names)
    for name in names:
        bounds = _numpy(model.get_layer(name).bounds).astype("float64")
        bounds = bounds.reshape((1,) * (z[name].ndim - bounds.ndim + 1) + bounds.shape)
        slack = tolerance * (1.0 + np.abs(z[name]))
        if np.any(z[name] < bounds[..., 0] - slack) or np.any(z[name] > bounds[..., 1] + slack):
            return False
    return True


@pytest.mark.parametrize("extrapolation", MODES)
def test_bounds_from_domain_covers_in_domain_pre_activations(extrapolation):
    model = _domain_model(extrapolation)
    lower, upper = np.full((1, 2, 3), -2.0), np.full((1, 2, 3), 2.0)
    x = _in_domain(lower, upper, 256)
    assert not _covers(model, x)  # the default (-3, 3) intervals do not
    assert transforms.bounds_from_domain(model, lower, upper, margin=0.1) is model
    assert _covers(model, x)
    assert _numpy(model.get_layer("middle").bounds).shape == (1, 4, 2)
    # Several boxes: the intervals cover their union.
    boxes = np.stack([lower[0], 0.5 * upper[0]]), np.stack([0.5 * lower[0], upper[0]])
    transforms.bounds_from_domain(model, *boxes)
    inside = [
        _in_domain(low[None], high[None], 64, seed)
        for seed, (low, high) in enumerate(zip(*boxes))
    ]
    assert _covers(model, np.concatenate(inside))


@pytest.mark.parametrize("extrapolation", MODES)
def test_bounds_from_domain_keeps_outputs_where_the_old_intervals_were_used(extrapolation):
    model = _domain_model(extrapolation)
    # A domain small enough that every pre-activation lies inside the old
    # (-3, 3): shrinking to it keeps the function on it.
    lower, upper = np.full((1, 2, 3), -0.3), np.full((1, 2, 3), 0.3)
    x = _in_domain(lower, upper, 256)
    assert _covers(model, x)
    before = _numpy(model(x))
    old = {name: _numpy(model.get_layer(name).bounds) for name in ("first", "middle", "last")}
    transforms.bounds_from_domain(model, lower, upper, margin=0.05)
    for name, bounds in old.items():  # every interval shrank
        new = _numpy(model.get_layer(name).bounds)
        assert np.all(new[..., 1] - new[..., 0] < bounds[..., 1] - bounds[..., 0])
    after = _numpy(model(x))
    assert _covers(model, x)
    assert _relative_error(after, before) < 1e-5


def test_bounds_from_domain_with_polynomial_extrapolation_keeps_the_function_anywhere():
    model = _domain_model("polynomial")
    lower, upper = np.full((1, 2, 3), -2.0), np.full((1, 2, 3), 2.0)
    x = _in_domain(lower, upper, 256)
    before = _numpy(model(x))
    transforms.bounds_from_domain(model, lower, upper)
    assert _relative_error(_numpy(model(x)), before) < 1e-5


def test_bounds_from_domain_in_nested_models_and_narrow_domains():
    inner = keras.Sequential(
        [keras.Input((3,)), BernsteinDense(4, degree=3, normalization=None, name="inner")]
    )
    inputs = keras.Input((3,))
    outputs = Bernstein(degree=3, name="outer")(inner(inputs))
    model = keras.Model(inputs, outputs)
    inner.get_layer("inner").dense.kernel.assign(np.zeros((3, 4), "float32"))
    inner.get_layer("inner").dense.bias.assign(np.array([0.0, 1.0, -2.0, 1e5], "float32"))
    point = np.full((1, 3), 0.5)
    transforms.bounds_from_domain(model, point, point, min_width=0.25)
    bounds = _numpy(inner.get_layer("inner").bounds).astype("float64")
    # A constant input gets an interval of `min_width` around it, in float32.
    np.testing.assert_allclose(bounds[:3, 1] - bounds[:3, 0], 0.25, rtol=1e-6)
    constants = np.array([0.0, 1.0, -2.0, 1e5])
    assert np.all((bounds[:, 0] <= constants) & (constants <= bounds[:, 1]))
    assert bounds[3, 1] - bounds[3, 0] >= 0.25
    outer = _numpy(model.get_layer("outer").bounds)
    assert np.all(outer[:, 1] - outer[:, 0] >= 0.25)


def test_bounds_from_domain_keeps_the_bounds_constraints_min_width():
    from keras_bernstein.constraints import OrderedBounds

    model = keras.Sequential(
        [
            keras.Input((2,)),
            Bernstein(degree=3, trainable_bounds=True, bounds_constraint=OrderedBounds(0.5)),
        ]
    )
    transforms.bounds_from_domain(model, np.full((1, 2), 0.25), np.full((1, 2), 0.5))
    bounds = _numpy(model.layers[0].bounds)
    np.testing.assert_allclose(bounds[:, 1] - bounds[:, 0], 0.5, rtol=1e-6)
    np.testing.assert_allclose(bounds.mean(axis=-1), 0.375, rtol=1e-6)


def test_bounds_from_domain_refusal_names_the_layer_and_changes_nothing():
    model = _domain_model("linear")
    weights = [_numpy(w).copy() for w in model.weights]
    lower, upper = np.full((1, 2, 3), -1e4), np.full((1, 2, 3), 1e4)
    with pytest.raises(ValueError, match="cannot set the intervals of layer 'first'"):
        transforms.bounds_from_domain(model, lower, upper)
    for weight, value in zip(model.weights, weights):
        np.testing.assert_array_equal(_numpy(weight), value)


@pytest.mark.parametrize(
    "argument, value",
    [("margin", -0.1), ("margin", math.inf), ("min_width", 0.0), ("min_width", "1")],
)
def test_bounds_from_domain_validation(argument, value):
    model = _domain_model("linear")
    lower, upper = np.zeros((1, 2, 3)), np.ones((1, 2, 3))
    with pytest.raises(ValueError, match=f"Received: {argument}="):
        transforms.bounds_from_domain(model, lower, upper, **{argument: value})
    with pytest.raises(ValueError, match="must be a built Keras `Model`"):
        transforms.bounds_from_domain(model.get_layer("first"), lower, upper)
