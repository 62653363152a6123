"""Tests for `keras_bernstein.callbacks`: dead units, bounds coverage, probing."""

import csv
import math
import os
import re

import keras
import numpy as np
import pytest

from keras_bernstein import Bernstein
from keras_bernstein import BernsteinDense
from keras_bernstein import callbacks


def _half_dead_relu_model(functional=False):
    """`Dense(4, relu)` dead on units 2, 3 for positive inputs, then tanh.

    The kernel maps a positive input to `+sum(x)` on units 0, 1 and to
    `-sum(x)` on units 2, 3 (bias 0), so for inputs in `[1, 2]` exactly half
    the ReLU units are negative on every sample; the tanh layer behind has
    no dead unit. Overall: 2 dead of 8.
    """
    kernel = np.array([[1.0, 1.0, -1.0, -1.0]] * 3, "float32")
    relu = keras.layers.Dense(4, activation="relu", name="relu_dense")
    tanh = keras.layers.Dense(4, activation="tanh", name="tanh_dense")
    head = keras.layers.Dense(1, activation="sigmoid", name="head")
    if functional:
        inputs = keras.Input((3,))
        outputs = head(tanh(relu(inputs)))
        model = keras.Model(inputs, outputs)
    else:
        model = keras.Sequential([keras.Input((3,)), relu, tanh, head])
    relu.set_weights([kernel, np.zeros(4, "float32")])
    tanh.set_weights([0.1 * np.eye(4, dtype="float32"), np.zeros(4, "float32")])
    return model


def _positive_inputs(count=64):
    return np.random.default_rng(0).uniform(1.0, 2.0, (count, 3)).astype("float32")


@pytest.mark.parametrize("functional", [False, True])
def test_known_half_dead_relu_layer(functional):
    model = _half_dead_relu_model(functional)
    assert [layer.name for layer in callbacks.monitored_layers(model)] == [
        "relu_dense",
        "tanh_dense",
    ]
    ratios = callbacks.dead_neuron_ratio(model, _positive_inputs(), batch_size=16)
    assert ratios == {
        "dead_neuron_ratio": 0.25,
        "dead_neuron_ratio/relu_dense": 0.5,
        "dead_neuron_ratio/tanh_dense": 0.0,
    }
    assert all(type(value) is float for value in ratios.values())
    dead = callbacks.dead_units(model, _positive_inputs(), layers=["relu_dense"])
    np.testing.assert_array_equal(dead["relu_dense"], [False, False, True, True])


def test_relu_derivative_at_zero_counts_as_dead():
    # Unit 1 sees exactly 0 on every sample: ReLU'(0) = 0 by convention.
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.ReLU(name="relu"), keras.layers.Dense(1)]
    )
    x = np.stack([np.linspace(0.5, 1.0, 8), np.zeros(8)], axis=1).astype("float32")
    dead = callbacks.dead_units(model, x)
    np.testing.assert_array_equal(dead["relu"], [False, True])


def test_tolerance_allows_a_fraction_of_alive_samples():
    model = keras.Sequential(
        [keras.Input((1,)), keras.layers.ReLU(name="relu"), keras.layers.Dense(1)]
    )
    x = np.array([[-1.0]] * 9 + [[1.0]], "float32")  # alive on 10% of samples
    strict = callbacks.dead_neuron_ratio(model, x)
    tolerant = callbacks.dead_neuron_ratio(model, x, tolerance=0.1)
    assert strict["dead_neuron_ratio"] == 0.0
    assert tolerant["dead_neuron_ratio"] == 1.0


def _bernstein_model(extrapolation):
    return keras.Sequential(
        [
            keras.Input((4,)),
            Bernstein(degree=6, bounds=(-1.0, 1.0), extrapolation=extrapolation,
                      name="bernstein"),
            keras.layers.Dense(1),
        ]
    )


def _above_upper_bound_on_two_units(count=32):
    """Units 0, 1 in `[2, 3]` (above `u = 1`), units 2, 3 inside `[-1, 1]`."""
    rng = np.random.default_rng(1)
    outside = rng.uniform(2.0, 3.0, (count, 2))
    inside = rng.uniform(-0.5, 0.5, (count, 2))
    return np.concatenate([outside, inside], axis=1).astype("float32")


@pytest.mark.parametrize(
    "extrapolation, expected_dead", [("clip", [1, 1, 0, 0]), ("linear", [0, 0, 0, 0])]
)
def test_derivative_criterion_on_bernstein_extrapolation(extrapolation, expected_dead):
    # "relu" coefficients: slope 1 at the upper end, 0 at the lower end.
    model = _bernstein_model(extrapolation)
    x = _above_upper_bound_on_two_units()
    dead = callbacks.dead_units(model, x)
    np.testing.assert_array_equal(dead["bernstein"], np.array(expected_dead, bool))
    # Below the lower end the "relu" coefficients are flat: dead in both modes.
    dead_below = callbacks.dead_units(model, -x - 1.0, layers="bernstein")
    np.testing.assert_array_equal(dead_below["bernstein"][:2], [True, True])


def test_out_of_bounds_ratio():
    model = _bernstein_model("linear")
    ratios = callbacks.out_of_bounds_ratio(model, _above_upper_bound_on_two_units())
    assert ratios == {
        "out_of_bounds_ratio": 0.5,
        "out_of_bounds_ratio/bernstein": 0.5,
    }
    with pytest.raises(ValueError, match="layers"):
        callbacks.out_of_bounds_ratio(
            _half_dead_relu_model(), _positive_inputs(), layers=["relu_dense"]
        )


def _sigmoid_network(depth):
    return keras.Sequential(
        [keras.Input((8,))]
        + [keras.layers.Dense(16, activation="sigmoid") for _ in range(depth)]
        + [keras.layers.Dense(2, activation="softmax")]
    )


def test_gradient_criterion_deep_vs_shallow_sigmoid():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    figures = {}
    for depth in (2, 20):
        model = _sigmoid_network(depth)
        model.compile("sgd", "sparse_categorical_crossentropy")
        first = model.layers[0].name
        gradient = callbacks.dead_neuron_ratio(model, x, y, criterion="gradient")
        derivative = callbacks.dead_neuron_ratio(model, x)
        figures[depth] = (gradient[f"dead_neuron_ratio/{first}"], derivative)
    # Vanishing gradients: the first layers of the deep network get
    # per-sample gradients below 1e-6; the shallow one has none dead. The
    # sigmoid itself is not saturated, so the derivative criterion sees no
    # dead unit in either.
    assert figures[2][0] == 0.0
    assert figures[20][0] == 1.0
    assert figures[2][1]["dead_neuron_ratio"] == 0.0
    assert figures[20][1]["dead_neuron_ratio"] == 0.0


def test_collect_pre_activations_matches_layer_math():
    model = keras.Sequential(
        [
            keras.Input((5,)),
            BernsteinDense(6, name="bernstein_dense"),
            keras.layers.Dense(4, activation="relu", name="relu_dense"),
            keras.layers.Dense(1),
        ]
    )
    x = np.random.default_rng(2).normal(size=(40, 5)).astype("float32")
    batch_norm = model.layers[0].batch_normalization
    moving_mean = keras.ops.convert_to_numpy(batch_norm.moving_mean).copy()
    collected = callbacks.collect_pre_activations(model, x, batch_size=16)
    assert set(collected) == {"bernstein_dense", "relu_dense"}
    expected = keras.ops.convert_to_numpy(model.layers[0].pre_activation(x))
    np.testing.assert_allclose(collected["bernstein_dense"], expected, atol=1e-5)
    hidden = keras.ops.convert_to_numpy(model.layers[0](x))
    kernel, bias = model.layers[1].get_weights()
    np.testing.assert_allclose(collected["relu_dense"], hidden @ kernel + bias, atol=1e-5)
    assert (collected["relu_dense"] < 0).any()  # really before the ReLU
    # Inference mode: the moving statistics are untouched.
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(batch_norm.moving_mean), moving_mean
    )


def test_conv_units_are_channels_and_batches_equal_arrays():
    model = keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    x = np.random.default_rng(3).normal(size=(20, 6, 6, 2)).astype("float32")
    dead = callbacks.dead_units(model, x)
    assert dead["conv"].shape == (3,)
    pairs = [(x[i : i + 7], None) for i in range(0, 20, 7)]
    assert callbacks.dead_neuron_ratio(model, pairs) == callbacks.dead_neuron_ratio(
        model, x
    )


def test_callback_keys_in_history_and_csv_logger(tmp_path):
    model = _half_dead_relu_model()
    model.compile(keras.optimizers.SGD(0.0), "binary_crossentropy")
    x = _positive_inputs(32)
    y = np.ones((32, 1), "float32")
    path = str(tmp_path / "log.csv")
    history = model.fit(
        x,
        y,
        epochs=3,
        batch_size=16,
        verbose=0,
        callbacks=[
            callbacks.DeadNeuronRatio(x, frequency=2),
            keras.callbacks.CSVLogger(path),
        ],
    )
    ratios = history.history["dead_neuron_ratio/relu_dense"]
    assert len(ratios) == 3 and math.isnan(ratios[0]) and ratios[1] == 0.5
    assert math.isnan(history.history["dead_neuron_ratio"][2])
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[1]["dead_neuron_ratio"]) == 0.25
    assert "dead_neuron_ratio/tanh_dense" in rows[0]


def test_early_stopping_monitors_dead_neuron_ratio():
    model = _half_dead_relu_model()
    model.compile(keras.optimizers.SGD(0.0), "binary_crossentropy")
    x = _positive_inputs(32)
    history = model.fit(
        x,
        np.ones((32, 1), "float32"),
        epochs=6,
        verbose=0,
        callbacks=[
            callbacks.DeadNeuronRatio(x),
            keras.callbacks.EarlyStopping(
                monitor="dead_neuron_ratio", mode="min", patience=1
            ),
        ],
    )
    # The ratio never improves (lr 0): stopped after 1 + patience epochs.
    assert history.history["dead_neuron_ratio"] == [0.25, 0.25]


MONITORING_DOCS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "monitoring.md"
)


def _monitoring_snippet():
    """The `fit` example of docs/monitoring.md."""
    with open(MONITORING_DOCS, encoding="utf-8") as handle:
        blocks = re.findall(r"```python\n(.*?)```", handle.read(), re.S)
    return next(block for block in blocks if "stop_if_units_die" in block)


@pytest.mark.parametrize("dying", [False, True])
def test_monitoring_docs_example_stops_on_dead_units_only(dying, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # The example writes log.csv and two PNGs.
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).uniform(-1.0, 1.0, (160, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    if dying:
        # Half of the ReLU units are dead on positive inputs (as in
        # `_half_dead_relu_model`), and stay dead at learning rate 0.
        x = np.abs(x) + 1.0
        relu = keras.layers.Dense(4, activation="relu")
        model = keras.Sequential(
            [keras.Input((3,)), relu, Bernstein(), keras.layers.Dense(1)]
        )
        relu.set_weights(
            [np.array([[1.0, 1.0, -1.0, -1.0]] * 3, "float32"), np.zeros(4, "float32")]
        )
        model.compile(keras.optimizers.SGD(0.0), "mse")
    else:
        model = keras.Sequential(
            [
                keras.Input((3,)),
                BernsteinDense(8, normalization=None),
                keras.layers.Dense(1),
            ]
        )
        model.compile(keras.optimizers.SGD(0.01), "mse")
    namespace = {"model": model, "x_train": x, "y_train": y}
    exec(_monitoring_snippet(), namespace)
    ratios = namespace["history"].history["dead_neuron_ratio"]
    if dying:
        # Stopped by the dead-unit limit, before EarlyStopping's patience.
        assert ratios == [0.25]
    else:
        # No dead unit and a falling validation loss: all 10 epochs.
        assert ratios == [0.0] * 10
    for name in ("log.csv", "dead.png", "activations.png"):
        assert os.path.getsize(tmp_path / name) > 0


def test_verbose_prints_a_summary(capsys):
    model = _half_dead_relu_model()
    model.compile("sgd", "binary_crossentropy")
    x = _positive_inputs(16)
    model.fit(
        x,
        np.ones((16, 1), "float32"),
        epochs=1,
        verbose=0,
        callbacks=[callbacks.DeadNeuronRatio(x, verbose=1)],
    )
    out = capsys.readouterr().out
    assert "dead_neuron_ratio 0.250 (relu_dense 0.500, tanh_dense 0.000)" in out


def _regularized_model(jit_compile):
    model = keras.Sequential(
        [
            keras.Input((6,)),
            BernsteinDense(4, degree=3),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(
        "adam", "sparse_categorical_crossentropy", jit_compile=jit_compile
    )
    return model


@pytest.mark.parametrize(
    "jit_compile",
    [pytest.param(False, marks=pytest.mark.slow), True],
)
def test_callbacks_do_not_change_training(jit_compile):
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("torch.compile on CPU takes minutes; the eager run covers torch")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    weights = []
    for probes in (False, True):
        keras.utils.set_random_seed(7)
        model = _regularized_model(jit_compile)
        extra = []
        if probes:
            # Same batch size as training: eager JAX compiles each shape once.
            extra = [
                callbacks.DeadNeuronRatio(x[:32], batch_size=32),
                callbacks.DeadNeuronRatio(x[:32], y[:32], criterion="gradient"),
                callbacks.BoundsCoverage(x[:32]),
            ]
        history = model.fit(
            x, y, epochs=2, batch_size=32, verbose=0, shuffle=True, callbacks=extra
        )
        weights.append(model.get_weights())
    assert "out_of_bounds_ratio" in history.history
    assert "dead_neuron_ratio" in history.history
    for with_probe, without in zip(weights[1], weights[0]):
        np.testing.assert_array_equal(with_probe, without)


def test_bad_arguments_raise_value_error_naming_them():
    model = _half_dead_relu_model()
    x = _positive_inputs(8)
    with pytest.raises(ValueError, match="criterion"):
        callbacks.DeadNeuronRatio(x, criterion="magnitude")
    with pytest.raises(ValueError, match="criterion"):
        callbacks.dead_neuron_ratio(model, x, criterion="magnitude")
    with pytest.raises(ValueError, match="y"):
        callbacks.DeadNeuronRatio(x, criterion="gradient")
    model.compile("sgd", "binary_crossentropy")
    with pytest.raises(ValueError, match="y"):
        callbacks.dead_neuron_ratio(model, x, criterion="gradient")
    with pytest.raises(ValueError, match="`x`"):
        callbacks.DeadNeuronRatio(np.zeros((0, 3), "float32"))
    with pytest.raises(ValueError, match="`x`"):
        callbacks.dead_neuron_ratio(model, [])
    with pytest.raises(ValueError, match="layers"):
        callbacks.dead_neuron_ratio(model, x, layers=["no_such_layer"])
    with pytest.raises(ValueError, match="layers"):
        callbacks.dead_neuron_ratio(model, x, layers=[keras.layers.ReLU()])
    with pytest.raises(ValueError, match="threshold"):
        callbacks.DeadNeuronRatio(x, threshold=-1.0)
    with pytest.raises(ValueError, match="tolerance"):
        callbacks.DeadNeuronRatio(x, tolerance=1.0)
    with pytest.raises(ValueError, match="frequency"):
        callbacks.DeadNeuronRatio(x, frequency=0)
    with pytest.raises(ValueError, match="batch_size"):
        callbacks.DeadNeuronRatio(x, batch_size=0)
    with pytest.raises(ValueError, match="`y`"):
        callbacks.DeadNeuronRatio(x, y=np.zeros(3))


def _bernstein_classifier():
    model = keras.Sequential(
        [keras.Input((3,)), BernsteinDense(4, degree=3, name="hidden"), keras.layers.Dense(2)]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_probes_read_a_bounded_number_of_batches_from_endless_iterables():
    import itertools

    model = _half_dead_relu_model()
    x = _positive_inputs(8)
    endless = itertools.repeat(x)  # e.g. a repeated tf.data.Dataset
    assert len(callbacks.probe_batches(endless, max_batches=3)) == 3
    assert len(callbacks.DeadNeuronRatio(endless).batches) == callbacks.DEFAULT_MAX_BATCHES
    assert len(callbacks.BoundsCoverage(endless, max_batches=2).batches) == 2
    assert len(callbacks.BoundsUpdate(endless, max_batches=2).batches) == 2
    assert callbacks.dead_neuron_ratio(model, endless, max_batches=2)["dead_neuron_ratio"] == 0.25
    assert callbacks.collect_pre_activations(model, endless, max_batches=2)["relu_dense"].shape == (16, 4)
    assert "out_of_bounds_ratio" in callbacks.out_of_bounds_ratio(
        _bernstein_classifier(), itertools.repeat(x), max_batches=2
    )
    # Endless empty batches end too.
    with pytest.raises(ValueError, match="`x` must hold at least one probe sample"):
        callbacks.probe_batches(itertools.repeat(x[:0]))
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        repeated = tf.data.Dataset.from_tensor_slices(x).batch(4).repeat()
        assert len(callbacks.BoundsCoverage(repeated, max_batches=5).batches) == 5


def test_bounds_update_reads_a_one_shot_generator_once():
    model = _bernstein_classifier()
    x = np.random.default_rng(5).normal(size=(32, 3)).astype("float32")
    update = callbacks.BoundsUpdate((x[i : i + 8] for i in range(0, 32, 8)))
    model.fit(x, np.zeros(32, "int32"), epochs=2, verbose=0, callbacks=[update])
    assert [record["epoch"] for record in update.updates] == [0, 1]


def test_bounds_callbacks_on_a_model_without_bernstein_layers():
    model = _half_dead_relu_model()
    model.compile("sgd", "binary_crossentropy")
    x = _positive_inputs(8)
    for callback in (callbacks.BoundsUpdate(x), callbacks.BoundsCoverage(x)):
        name = type(callback).__name__
        with pytest.raises(ValueError, match=f"`{name}` needs a model with Bernstein"):
            callback.set_model(model)
        with pytest.raises(ValueError, match=f"`{name}` needs a model with Bernstein"):
            model.fit(x, np.ones((8, 1)), epochs=1, verbose=0, callbacks=[callback])
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="`DeadNeuronRatio` needs a model with hidden"):
        callbacks.DeadNeuronRatio(x).set_model(plain)


@pytest.mark.parametrize(
    "factory, argument, value",
    [
        (callbacks.BoundsUpdate, "batch_size", 0),
        (callbacks.BoundsUpdate, "batch_size", -5),
        (callbacks.BoundsUpdate, "batch_size", 2.5),
        (callbacks.BoundsUpdate, "margin", "x"),
        (callbacks.BoundsUpdate, "margin", -1.0),
        (callbacks.BoundsUpdate, "margin", float("nan")),
        (callbacks.BoundsUpdate, "margin", float("inf")),
        (callbacks.BoundsUpdate, "margin", True),
        (callbacks.BoundsUpdate, "max_change", -0.1),
        (callbacks.BoundsUpdate, "quantiles", "ab"),
        (callbacks.BoundsUpdate, "quantiles", None),
        (callbacks.BoundsUpdate, "quantiles", (0.5, 1.5)),
        (callbacks.BoundsUpdate, "frequency", 1.5),
        (callbacks.BoundsUpdate, "verbose", 2),
        (callbacks.BoundsUpdate, "layers", []),
        (callbacks.BoundsUpdate, "max_batches", 0),
        (callbacks.BoundsCoverage, "layers", []),
        (callbacks.BoundsCoverage, "layers", [3]),
        (callbacks.BoundsCoverage, "batch_size", True),
        (callbacks.BoundsCoverage, "frequency", 0),
        (callbacks.BoundsCoverage, "verbose", "yes"),
        (callbacks.BoundsCoverage, "max_batches", 2.0),
        (callbacks.DeadNeuronRatio, "threshold", float("inf")),
        (callbacks.DeadNeuronRatio, "threshold", "0"),
        (callbacks.DeadNeuronRatio, "tolerance", float("nan")),
        (callbacks.DeadNeuronRatio, "frequency", True),
        (callbacks.DeadNeuronRatio, "verbose", 0.5),
        (callbacks.DeadNeuronRatio, "layers", ()),
        (callbacks.DeadNeuronRatio, "max_batches", -1),
    ],
)
def test_callback_arguments_are_checked_at_construction(factory, argument, value):
    with pytest.raises(ValueError, match=f"`{argument}`.*Received: {argument}="):
        factory(_positive_inputs(8), **{argument: value})


def test_a_users_activation_is_monitored_only_when_named():
    def relu(x):  # not Keras' relu: not monitored by default
        return keras.ops.relu(x)

    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation=relu, name="own"),
            keras.layers.Dense(4, activation=keras.ops.relu, name="keras_relu"),
            keras.layers.Dense(1),
        ]
    )
    assert [layer.name for layer in callbacks.monitored_layers(model)] == ["keras_relu"]
    dead = callbacks.dead_units(model, _positive_inputs(), layers=["own"])
    assert dead["own"].shape == (4,)


def test_bounds_update_is_a_callback_of_this_module():
    from keras_bernstein import transforms

    assert callbacks.BoundsUpdate.__module__ == "keras_bernstein.callbacks"
    assert issubclass(callbacks.BoundsUpdate, keras.callbacks.Callback)
    assert not hasattr(transforms, "BoundsUpdate")


# --- DomainBounds -------------------------------------------------------------


def _domain_classifier(extrapolation="linear"):
    model = keras.Sequential(
        [
            keras.Input((3,)),
            BernsteinDense(6, degree=4, extrapolation=extrapolation, name="hidden"),
            Bernstein(degree=3, extrapolation=extrapolation, name="activation"),
            keras.layers.Dense(2),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _RecordingDomainBounds(callbacks.DomainBounds):
    """Keeps the hidden layer's bounds after each update."""

    def update(self, epoch=None, batch=None):
        record = super().update(epoch, batch)
        self.snapshots = getattr(self, "snapshots", [])
        self.snapshots.append(np.array(keras.ops.convert_to_numpy(self.model.layers[0].bounds)))
        return record


def _covered(model, x):
    z = callbacks.collect_pre_activations(model, x, layers=["hidden", "activation"])
    for name, values in z.items():
        bounds = np.asarray(keras.ops.convert_to_numpy(model.get_layer(name).bounds), "float64")
        slack = 1e-5 * (1.0 + np.abs(values))
        if np.any(values < bounds[..., 0] - slack) or np.any(values > bounds[..., 1] + slack):
            return False
    return True


@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
def test_domain_bounds_keeps_the_intervals_covering_the_domain_during_fit(extrapolation):
    model = _domain_classifier(extrapolation)
    rng = np.random.default_rng(0)
    x = rng.uniform(-2.0, 2.0, (32, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    domain = callbacks.DomainBounds(np.full((1, 3), -2.0), np.full((1, 3), 2.0), margin=0.05)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[domain])
    changes = history.history["domain_bounds_change"]
    assert len(changes) == 2 and all(np.isfinite(change) and change > 0 for change in changes)
    assert [(record["epoch"], record["batch"]) for record in domain.updates] == [
        (None, None), (0, None), (1, None)
    ]
    assert set(domain.updates[-1]["change"]) == {"hidden", "activation"}
    assert _covered(model, x)


def test_domain_bounds_every_few_batches_updates_mid_epoch():
    model = _domain_classifier()
    rng = np.random.default_rng(1)
    x = rng.uniform(-1.0, 1.0, (32, 3)).astype("float32")
    y = (x[:, 1] > 0).astype("int32")
    domain = _RecordingDomainBounds(-np.ones((1, 3)), np.ones((1, 3)), frequency=3)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[domain])
    # 4 batches an epoch: after the 3rd (epoch 0) and the 6th (epoch 1).
    assert [(record["epoch"], record["batch"]) for record in domain.updates] == [
        (None, None), (0, 2), (1, 1)
    ]
    assert np.all(np.isfinite(history.history["domain_bounds_change"]))
    # The last update, mid-epoch, is what the model holds after `fit`.
    assert np.any(domain.snapshots[-1] != domain.snapshots[0])
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(model.layers[0].bounds), domain.snapshots[-1]
    )


@pytest.mark.parametrize(
    "argument, value",
    [
        ("frequency", 0),
        ("frequency", 1.5),
        ("frequency", "batch"),
        ("margin", -1.0),
        ("min_width", 0.0),
        ("verbose", 2),
    ],
)
def test_domain_bounds_validation(argument, value):
    with pytest.raises(ValueError, match=re.escape(f"Received: {argument}={value!r}")):
        callbacks.DomainBounds(np.zeros((1, 3)), np.ones((1, 3)), **{argument: value})
    with pytest.raises(ValueError, match="`lower` and `upper` must be arrays of the same shape"):
        callbacks.DomainBounds(np.zeros((1, 3)), np.ones((1, 4)))
    with pytest.raises(ValueError, match="`lower <= upper`"):
        callbacks.DomainBounds(np.ones((1, 3)), np.zeros((1, 3)))
