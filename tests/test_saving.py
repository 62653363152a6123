"""Saving and loading, including models saved under the other backends."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_bernstein import Bernstein
from keras_bernstein import BernsteinDense
from keras_bernstein import constraints
from keras_bernstein import initializers

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
BACKENDS = ("jax", "tensorflow", "torch")


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_golden_files_exist():
    """All six files are there (regenerate with tests/data/make_golden.py)."""
    for backend in BACKENDS:
        for extension in ("keras", "npz"):
            path = os.path.join(DATA, f"golden_{backend}.{extension}")
            assert os.path.isfile(path), path


@pytest.mark.parametrize("saved_under", BACKENDS)
def test_golden_model_loads_and_predicts_the_same(saved_under):
    """A model saved under `saved_under` predicts the stored values here."""
    stored = np.load(os.path.join(DATA, f"golden_{saved_under}.npz"))
    assert str(stored["backend"]) == saved_under
    # compile=False: the compile config saved under JAX/TensorFlow holds
    # `jit_compile=True` (their "auto"), which on torch means torch.compile.
    model = keras.saving.load_model(
        os.path.join(DATA, f"golden_{saved_under}.keras"), compile=False
    )
    dense, bernstein = model.get_layer("bernstein_dense"), model.get_layer("bernstein")
    assert type(dense) is BernsteinDense and dense.units == 8 and dense.degree == 4
    assert type(bernstein) is Bernstein
    assert bernstein.degree == 5 and bernstein.extrapolation == "clip"
    predictions = model.predict(stored["inputs"], verbose=0)
    assert predictions.shape == stored["predictions"].shape == (50, 3)
    np.testing.assert_allclose(predictions, stored["predictions"], rtol=1e-5, atol=1e-5)
    # The clip layer sees inputs outside its bounds, so all its modes of
    # evaluation are covered by the comparison.
    hidden = keras.Model(model.inputs, model.get_layer("dense").output)
    pre_activation = hidden.predict(stored["inputs"], verbose=0)
    assert np.any(np.abs(pre_activation) > 3.0)
    assert np.any(np.abs(pre_activation) < 3.0)


def test_golden_model_keeps_training_after_loading():
    backend = keras.backend.backend()
    stored = np.load(os.path.join(DATA, f"golden_{backend}.npz"))
    model = keras.saving.load_model(os.path.join(DATA, f"golden_{backend}.keras"))
    assert model.optimizer is not None
    assert int(_numpy(model.optimizer.iterations)) == 2  # restored state
    labels = np.arange(len(stored["inputs"])) % 3
    before = _numpy(model.get_layer("bernstein").coefficients).copy()
    loss = model.train_on_batch(stored["inputs"], labels)
    assert np.isfinite(loss)
    assert np.any(_numpy(model.get_layer("bernstein").coefficients) != before)


def _custom_model():
    inputs = keras.Input((5,))
    hidden = BernsteinDense(
        6,
        degree=7,
        bounds=(-2.0, 2.5),
        extrapolation="polynomial",
        coefficient_initializer=initializers.ActivationCoefficients(
            "tanh", bounds=(-2.0, 2.5)
        ),
        coefficient_regularizer=keras.regularizers.L2(1e-3),
        coefficient_constraint=constraints.MonotonicCoefficients(min_gap=0.02),
        trainable_bounds=True,
        bounds_constraint=constraints.OrderedBounds(min_width=0.5),
        kernel_regularizer="l1",
    )(inputs)
    hidden = keras.layers.Reshape((2, 3))(hidden)
    hidden = Bernstein(
        degree=3, shared_axes=[1], extrapolation="clip", coefficient_initializer="identity"
    )(hidden)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(hidden))
    return keras.Model(inputs, outputs)


def test_save_and_load_with_non_default_arguments(tmp_path):
    model = _custom_model()
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 5)).astype("float32")
    model.fit(x, rng.standard_normal((16, 2)).astype("float32"), epochs=1, verbose=0)
    path = os.path.join(tmp_path, "custom.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for original, revived in zip(model.layers, loaded.layers):
        assert type(original) is type(revived)
        assert original.get_config() == revived.get_config()
    dense = loaded.layers[1]
    assert isinstance(dense.bernstein.coefficient_constraint, constraints.MonotonicCoefficients)
    assert dense.bernstein.coefficient_constraint.min_gap == 0.02
    assert dense.bernstein.bounds_constraint.min_width == 0.5
    assert isinstance(dense.bernstein.coefficient_initializer, initializers.ActivationCoefficients)
    assert dense.bounds.trainable
    assert len(loaded.losses) == len(model.losses) == 2  # L1 kernel, L2 coefficients
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0)
    )


def test_per_neuron_bounds_save_and_load(tmp_path):
    dense_rows = [[-1.0, 1.0], [0.0, 2.0], [-4.0, -2.5]]
    channel_rows = np.array([[-2.0, 0.5], [1.0, 3.0]])
    inputs = keras.Input((4, 5, 2))
    hidden = Bernstein(
        degree=4, bounds=channel_rows, shared_axes=[1, 2], coefficient_initializer="identity"
    )(inputs)
    hidden = keras.layers.Flatten()(hidden)
    outputs = BernsteinDense(3, degree=5, bounds=dense_rows, normalization=None)(hidden)
    model = keras.Model(inputs, outputs)
    path = os.path.join(tmp_path, "per_neuron.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    bernstein, dense = loaded.layers[1], loaded.layers[3]
    assert bernstein.get_config()["bounds"] == channel_rows.tolist()
    assert dense.get_config()["bounds"] == dense_rows
    init = dense.bernstein.coefficient_initializer
    assert isinstance(init, initializers.ActivationCoefficients)
    assert init.get_config()["bounds"] == dense_rows
    np.testing.assert_array_equal(_numpy(bernstein.bounds), channel_rows[None, None])
    np.testing.assert_array_equal(_numpy(dense.bounds), dense_rows)
    x = np.random.default_rng(2).uniform(-3, 3, (6, 4, 5, 2)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # A fresh layer from the saved config starts with the same weights.
    fresh = BernsteinDense.from_config(dense.get_config())
    fresh.build((None, 40))
    np.testing.assert_array_equal(_numpy(fresh.bounds), dense_rows)
    np.testing.assert_array_equal(_numpy(fresh.coefficients), _numpy(dense.coefficients))


def test_weights_only_round_trip(tmp_path):
    model = _custom_model()
    path = os.path.join(tmp_path, "custom.weights.h5")
    model.save_weights(path)
    other = _custom_model()
    x = np.random.default_rng(1).standard_normal((4, 5)).astype("float32")
    other.load_weights(path)
    for a, b in zip(model.weights, other.weights):
        np.testing.assert_array_equal(_numpy(a), _numpy(b))
    np.testing.assert_array_equal(other.predict(x, verbose=0), model.predict(x, verbose=0))


def test_mixed_precision_layer_saves_its_policy(tmp_path):
    model = keras.Sequential(
        [keras.Input((4,)), Bernstein(degree=3, dtype="mixed_bfloat16")]
    )
    path = os.path.join(tmp_path, "mixed.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.layers[-1]
    assert layer.dtype_policy.name == "mixed_bfloat16"
    assert layer.coefficients.dtype == "float32"
    y = layer(np.ones((2, 4), "float32"))
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"


@pytest.mark.parametrize("normalization", [None, "batch"])
def test_tensorflow_export_holds_no_kernel_ops(normalization, kernel_targets, tmp_path):
    """`model.export` traces while `tf.saved_model.save` runs, where the C++
    kernels stand aside: the SavedModel holds only TensorFlow's own ops, so
    it loads (TF Serving, a process without keras_bernstein) and predicts
    what the model predicts with its kernels."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's SavedModel")
    import tensorflow as tf

    model = keras.Sequential(
        [
            keras.Input((8,)),
            BernsteinDense(16, degree=5, normalization=normalization),
            keras.layers.Dense(1),
        ]
    )
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32") * 2.0
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.ones((4, 1), "float32"), epochs=1, verbose=0)
    expected = model.predict(x, verbose=0)
    assert "Values" in {kind for *_, kind in kernel_targets}  # predict ran them
    path = str(tmp_path / "exported")
    model.export(path, verbose=False)
    with open(os.path.join(path, "saved_model.pb"), "rb") as graph:
        assert b"KerasBernstein" not in graph.read()
    loaded = tf.saved_model.load(path)  # kept: its variables die with it
    served = loaded.serve(tf.constant(x))
    np.testing.assert_allclose(served.numpy(), expected, rtol=1e-5, atol=1e-5)


@keras.saving.register_keras_serializable(package="keras_bernstein_tests")
class SubclassedBernsteinNetwork(keras.Model):
    """Creates its layers in `__init__` and builds them lazily, on first call."""

    def __init__(self, activation="bernstein", coefficient_initializer="relu", **kwargs):
        super().__init__(**kwargs)
        self.activation = activation
        self.coefficient_initializer = coefficient_initializer
        initializer = keras.initializers.deserialize(coefficient_initializer) if isinstance(
            coefficient_initializer, dict
        ) else coefficient_initializer
        if activation == "bernstein":
            self.hidden = [keras.layers.Dense(6), keras.layers.Dense(6)]
            self.activations = [
                Bernstein(degree=4, coefficient_initializer=initializer),
                Bernstein(degree=5, extrapolation="clip", coefficient_initializer=initializer),
            ]
        else:
            self.hidden = [
                BernsteinDense(6, degree=4, coefficient_initializer=initializer),
                BernsteinDense(6, degree=5, normalization=None, coefficient_initializer=initializer),
            ]
            self.activations = [keras.layers.Identity(), keras.layers.Identity()]
        self.head = keras.layers.Dense(1)

    def call(self, inputs):
        x = inputs
        for hidden, activation in zip(self.hidden, self.activations):
            x = activation(hidden(x))
        return self.head(x)

    def get_config(self):
        config = super().get_config()
        initializer = self.coefficient_initializer
        if not isinstance(initializer, (str, dict)):
            initializer = keras.initializers.serialize(initializer)
        config.update(activation=self.activation, coefficient_initializer=initializer)
        return config


_COEFFICIENT_INITIALIZERS = (
    "relu",
    "identity",
    "random_normal",
    initializers.ActivationCoefficients("tanh", bounds=(-2.0, 2.0)),
)


@pytest.mark.parametrize("activation", ["bernstein", "bernstein_dense"])
@pytest.mark.parametrize(
    "coefficient_initializer", _COEFFICIENT_INITIALIZERS, ids=lambda i: getattr(i, "activation", i)
)
def test_subclassed_model_builds_in_fit_and_reloads_its_weights(
    activation, coefficient_initializer, tmp_path
):
    # `fit` builds the model itself (nothing calls it first), as with ReLU.
    model = SubclassedBernsteinNetwork(activation, coefficient_initializer)
    model, loaded, x = _trained_and_reloaded(model, tmp_path)
    assert loaded.built
    for original, revived in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(_numpy(revived), _numpy(original))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def _trained_and_reloaded(model, folder):
    """`(model, loaded, x)`: `model` fitted for an epoch on `x`, saved as
    `.keras` and loaded again."""
    model.compile(optimizer="adam", loss="mse")
    x = np.random.default_rng(0).standard_normal((32, 5)).astype("float32")
    model.fit(x, x[:, :1], epochs=1, batch_size=8, verbose=0)
    path = os.path.join(folder, "model.keras")
    model.save(path)
    return model, keras.saving.load_model(path), x


def _sequential_network():
    return keras.Sequential(
        [keras.Input((5,)), BernsteinDense(6, degree=4), Bernstein(degree=3), keras.layers.Dense(1)]
    )


def _functional_network():
    inputs = keras.Input((5,))
    hidden = Bernstein(degree=3)(BernsteinDense(6, degree=4)(inputs))
    return keras.Model(inputs, keras.layers.Dense(1)(hidden))


@pytest.mark.parametrize(
    "build", [_sequential_network, _functional_network], ids=["sequential", "functional"]
)
def test_trained_model_reloads_with_identical_predictions(build, tmp_path):
    model, loaded, x = _trained_and_reloaded(build(), tmp_path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
