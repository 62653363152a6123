"""Tests of `OrderedBounds` and `MonotonicCoefficients`."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_bernstein import Bernstein
from keras_bernstein import BernsteinDense
from keras_bernstein import constraints
from keras_bernstein.constraints import MonotonicCoefficients
from keras_bernstein.constraints import OrderedBounds


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


# ---------------------------------------------------------------------------
# OrderedBounds.
# ---------------------------------------------------------------------------


def test_ordered_bounds_widens_narrow_and_inverted_rows_about_the_midpoint():
    min_width = 0.5
    w = np.array(
        [
            [-3.0, 3.0],  # valid
            [0.0, 0.5],  # exactly min_width: valid
            [0.1, 0.2],  # narrow
            [2.0, 1.0],  # inverted
            [0.7, 0.7],  # empty
            [-1.25, 7.5],  # valid
            [1e-3, -4.0],  # inverted, far
        ],
        "float32",
    )
    out = _numpy(OrderedBounds(min_width=min_width)(w))
    assert out.shape == w.shape and out.dtype == np.float32
    valid = (w[:, 1] - w[:, 0]) >= min_width
    np.testing.assert_array_equal(valid, [1, 1, 0, 0, 0, 1, 0])
    # Valid rows are untouched, bit for bit.
    np.testing.assert_array_equal(out[valid].view("uint32"), w[valid].view("uint32"))
    # The others: same midpoint, width min_width, ordered.
    fixed = ~valid
    np.testing.assert_allclose(
        out[fixed].mean(axis=-1), w[fixed].mean(axis=-1), rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        out[fixed, 1] - out[fixed, 0], min_width, rtol=0, atol=1e-6
    )
    assert np.all(out[:, 1] > out[:, 0])


def test_ordered_bounds_on_higher_rank_weights():
    rng = np.random.default_rng(0)
    w = rng.uniform(-2.0, 2.0, (3, 4, 5, 2)).astype("float32")
    out = _numpy(OrderedBounds(min_width=0.3)(w))
    assert out.shape == w.shape
    width = w[..., 1] - w[..., 0]
    valid = width >= 0.3
    assert valid.any() and (~valid).any()
    np.testing.assert_array_equal(out[valid], w[valid])
    np.testing.assert_allclose(out[~valid][:, 1] - out[~valid][:, 0], 0.3, atol=1e-6)
    np.testing.assert_allclose(out[~valid].mean(-1), w[~valid].mean(-1), atol=1e-6)


def test_ordered_bounds_default_keeps_layer_bounds():
    assert OrderedBounds().min_width == 1e-3
    w = np.array([[-3.0, 3.0]], "float32")
    np.testing.assert_array_equal(_numpy(OrderedBounds()(w)), w)


# ---------------------------------------------------------------------------
# MonotonicCoefficients.
# ---------------------------------------------------------------------------


def test_monotonic_coefficients_hand_computed_repair():
    # Running max from the left [0, 1, 1, 2], running min from the right
    # [0, 0.5, 0.5, 2]: their mean.
    w = np.array([[0.0, 1.0, 0.5, 2.0]], "float32")
    np.testing.assert_allclose(
        _numpy(MonotonicCoefficients()(w)), [[0.0, 0.75, 0.75, 2.0]], atol=1e-7
    )
    # With a gap, the same in the frame with the ramp k * gap removed:
    # w - ramp = [0, 0.9, 0.3, 1.7] -> max [0, .9, .9, 1.7], min [0, .3, .3, 1.7]
    # -> mean [0, .6, .6, 1.7] -> + ramp = [0, .7, .8, 2.0].
    np.testing.assert_allclose(
        _numpy(MonotonicCoefficients(min_gap=0.1)(w)),
        [[0.0, 0.7, 0.8, 2.0]],
        atol=1e-6,
    )
    # A decreasing row becomes constant (gap 0) at its mean level ...
    np.testing.assert_allclose(
        _numpy(MonotonicCoefficients()(np.array([[3.0, 2.0, 1.0]], "float32"))),
        [[2.0, 2.0, 2.0]],
        atol=1e-7,
    )


@pytest.mark.parametrize("min_gap", [0.0, 0.01, 0.25])
def test_monotonic_coefficients_property(min_gap):
    rng = np.random.default_rng(1)
    random_rows = rng.standard_normal((40, 9))
    valid_rows = np.cumsum(
        np.concatenate(
            [rng.standard_normal((10, 1)), min_gap + rng.uniform(0, 0.5, (10, 8))], -1
        ),
        axis=-1,
    )
    w = np.concatenate([random_rows, valid_rows]).astype("float32").reshape(5, 10, 9)
    out = _numpy(MonotonicCoefficients(min_gap=min_gap)(w))
    assert out.shape == w.shape and out.dtype == np.float32
    gaps = np.diff(out, axis=-1)
    assert np.all(gaps >= min_gap - 1e-6), gaps.min()
    valid = np.all(np.diff(w, axis=-1) >= min_gap, axis=-1)
    assert valid.sum() >= 10 and (~valid).sum() >= 30
    np.testing.assert_array_equal(out[valid].view("uint32"), w[valid].view("uint32"))
    # The repair stays within the row's range widened by the ramp.
    span = min_gap * 8
    assert np.all(out.min(-1) >= w.min(-1) - span - 1e-6)
    assert np.all(out.max(-1) <= w.max(-1) + span + 1e-6)
    # Applying it again changes the repaired rows by rounding only.
    again = _numpy(MonotonicCoefficients(min_gap=min_gap)(out))
    np.testing.assert_allclose(again, out, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------
# Serialization and validation.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "constraint",
    [
        OrderedBounds(),
        OrderedBounds(min_width=0.25),
        MonotonicCoefficients(),
        MonotonicCoefficients(min_gap=0.05),
    ],
)
def test_serialization(constraint):
    cls = type(constraint)
    config = constraint.get_config()
    assert cls.from_config(config).get_config() == config
    serialized = keras.constraints.serialize(constraint)
    revived = keras.constraints.deserialize(serialized)
    assert type(revived) is cls
    assert revived.get_config() == config
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(constraint)
    )
    assert type(revived) is cls and revived.get_config() == config
    w = np.array([[1.0, 0.5, 0.9]] * 2, "float32")
    if cls is OrderedBounds:
        w = w[:, :2]
    np.testing.assert_array_equal(_numpy(revived(w)), _numpy(constraint(w)))


def test_config_values():
    assert OrderedBounds(min_width=0.25).get_config() == {"min_width": 0.25}
    assert MonotonicCoefficients(min_gap=2).get_config() == {"min_gap": 2.0}
    assert MonotonicCoefficients(0.5).min_gap == 0.5


@pytest.mark.parametrize("value", [-1e-3, -2, "abc", None, [0.1], float("nan")])
def test_bad_arguments(value):
    with pytest.raises(ValueError, match=r"Received: min_width="):
        OrderedBounds(min_width=value)
    with pytest.raises(ValueError, match=r"Received: min_gap="):
        MonotonicCoefficients(min_gap=value)


def test_get_resolves_names_and_falls_back_to_keras():
    assert isinstance(constraints.get("ordered_bounds"), OrderedBounds)
    assert isinstance(constraints.get("monotonic_coefficients"), MonotonicCoefficients)
    assert isinstance(constraints.get("non_neg"), keras.constraints.NonNeg)
    assert constraints.get(None) is None
    instance = MonotonicCoefficients(0.2)
    assert constraints.get(instance) is instance


def test_string_names_in_the_bernstein_layer():
    layer = Bernstein(
        degree=4,
        coefficient_initializer=keras.initializers.RandomNormal(seed=0),
        coefficient_constraint="monotonic_coefficients",
        trainable_bounds=True,
        bounds_constraint="ordered_bounds",
    )
    assert isinstance(layer.coefficient_constraint, MonotonicCoefficients)
    assert isinstance(layer.bounds_constraint, OrderedBounds)
    layer.build((None, 6))
    assert layer.coefficients.constraint is layer.coefficient_constraint
    assert layer.bounds.constraint is layer.bounds_constraint
    # The random start is not monotone; one optimizer step applies the
    # constraint.
    assert np.any(np.diff(_numpy(layer.coefficients), axis=-1) < 0)
    model = keras.Sequential([keras.Input((6,)), layer])
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="mse")
    x = np.random.default_rng(0).uniform(-2.0, 2.0, (8, 6)).astype("float32")
    model.train_on_batch(x, np.zeros((8, 6), "float32"))
    assert np.all(np.diff(_numpy(layer.coefficients), axis=-1) >= 0.0)
    config = layer.get_config()
    revived = Bernstein.from_config(config)
    assert isinstance(revived.coefficient_constraint, MonotonicCoefficients)
    assert isinstance(revived.bounds_constraint, OrderedBounds)


def _train_bounds_one_step(bounds_constraint):
    layer = Bernstein(
        degree=3,
        trainable_bounds=True,
        bounds_constraint=bounds_constraint,
        coefficient_initializer="identity",
    )
    model = keras.Sequential([keras.Input((4,)), layer])
    # Targets steeper than the identity: the step narrows [l, u] (the slope
    # of the activation is 6 / (u - l)).
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    x = np.tile(np.linspace(-2.9, 2.9, 16, dtype="float32")[:, None], (1, 4))
    model.train_on_batch(x, 3.0 * x)
    bounds = _numpy(layer.bounds)
    return bounds[:, 1] - bounds[:, 0]


def test_bounds_constraint_is_applied_during_training():
    unconstrained = _train_bounds_one_step(None)
    assert np.all(unconstrained < 5.5)  # the premise: the step narrows them
    widths = _train_bounds_one_step(OrderedBounds(min_width=5.5))
    np.testing.assert_allclose(widths, 5.5, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------
# The non-vanishing gradient after training.
# ---------------------------------------------------------------------------


def test_monotonic_training_gives_a_derivative_bounded_below(autompg):
    """BernsteinDense with MonotonicCoefficients(min_gap) on Auto MPG.

    After training, every activation's slope is at least
    `degree * min_gap / (u - l)` everywhere (linear extrapolation), by the
    layer's own bound, its derivative, and the secants of its values.
    """
    x, mpg, _ = autompg
    degree, min_gap = 6, 0.05
    hidden = BernsteinDense(
        8,
        degree=degree,
        coefficient_constraint=MonotonicCoefficients(min_gap=min_gap),
    )
    model = keras.Sequential([keras.Input((6,)), hidden, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    history = model.fit(x, mpg, batch_size=64, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]

    activation = hidden.bernstein
    coefficients = _numpy(activation.coefficients).astype("float64")
    bounds = _numpy(activation.bounds).astype("float64")
    lower, upper = bounds[:, 0], bounds[:, 1]
    width = upper - lower
    guaranteed = degree * min_gap / width
    tolerance = 1e-5 * guaranteed + 1e-7
    # Training moved the coefficients, and the constraint held.
    assert np.all(np.diff(coefficients, axis=-1) >= min_gap - 1e-6)
    assert np.all(_numpy(activation.derivative_lower_bound()) >= guaranteed - tolerance)
    assert np.all(_numpy(hidden.derivative_lower_bound()) >= guaranteed - tolerance)

    # A grid from ten widths below l to ten widths above u.
    s = np.linspace(-10.0, 11.0, 2101)[:, None]
    grid = (lower + width * s).astype("float32")
    derivative = _numpy(activation.derivative(grid))
    assert np.all(derivative >= guaranteed - tolerance)
    # Independent check: secant slopes of the activation's values (by the
    # mean value theorem they are averages of the derivative), allowing for
    # float32 rounding of the values.
    values = _numpy(activation(grid)).astype("float64")
    grid = grid.astype("float64")
    secants = np.diff(values, axis=0) / np.diff(grid, axis=0)
    rounding = 4 * np.finfo("float32").eps * np.max(np.abs(values), axis=0) / np.min(
        np.diff(grid, axis=0), axis=0
    )
    assert np.all(secants >= guaranteed - rounding - tolerance), (
        (secants - guaranteed).min(),
        rounding,
    )
    # Outside [l, u] the slope is the end slope, at least the guarantee.
    outside = (s[:, 0] < 0) | (s[:, 0] > 1)
    end = np.where(s[outside] < 0, coefficients[:, 1] - coefficients[:, 0],
                   coefficients[:, -1] - coefficients[:, -2]) * degree / width
    np.testing.assert_allclose(derivative[outside], end, rtol=1e-5, atol=1e-6)
