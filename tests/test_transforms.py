"""Tests of `keras_bernstein.transforms`: exactness, saving, the bounds update."""

import math
import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_bernstein import Bernstein
from keras_bernstein import BernsteinDense
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
    update = transforms.BoundsUpdate(x, quantiles=(0.0, 1.0), margin=0.05)
    update.set_model(model)
    _, accuracy_before = model.evaluate(x, y, verbose=0)
    layer = model.layers[0]
    z_before = _numpy(layer.pre_activation(x))
    activations_before = _numpy(layer(x))
    record = update.update(epoch=4)
    assert record["epoch"] == 4 and record[layer.name] > 0
    _, accuracy_after = model.evaluate(x, y, verbose=0)
    assert accuracy_after == pytest.approx(accuracy_before, abs=0.02)
    # Every pre-activation is now inside its neuron's interval.
    z = _numpy(layer.pre_activation(x))
    bounds = _numpy(layer.bounds)
    assert np.all(z >= bounds[:, 0]) and np.all(z <= bounds[:, 1])
    # Where the old interval covered the pre-activation the activation is
    # unchanged (outside it the old layer extrapolated linearly; see `rebound`).
    covered = np.abs(z_before) <= 1.5
    assert 0.5 < covered.mean() < 0.99
    after = _numpy(layer(x))
    assert _relative_error(after[covered], activations_before[covered]) <= 1e-5
    # A second update finds nothing to widen.
    assert update.update(epoch=5)[model.layers[0].name] == 0
    # As a callback inside `fit`, and the model still saves and reloads.
    model.fit(x, y, epochs=2, batch_size=100, verbose=0,
              callbacks=[transforms.BoundsUpdate(x, frequency=2)])
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
    update = transforms.BoundsUpdate(x, quantiles=(0.0, 1.0))
    update.set_model(model)
    update.update()
    assert _relative_error(_numpy(model(x)), before) <= 1e-5


def test_bounds_update_validation():
    with pytest.raises(ValueError, match="frequency=0"):
        transforms.BoundsUpdate(np.zeros((2, 2)), frequency=0)
    with pytest.raises(ValueError, match="quantiles="):
        transforms.BoundsUpdate(np.zeros((2, 2)), quantiles=(0.9, 0.1))
    with pytest.raises(ValueError, match="margin="):
        transforms.BoundsUpdate(np.zeros((2, 2)), margin=-1.0)
