"""Tests for `keras_bernstein.sos` (Moment-SOS recovery of activation coefficients)."""

import json
import os

import numpy as np
import pytest
import keras
from keras import ops

from keras_bernstein import ops as bernstein_ops
from keras_bernstein import sos

EXAMPLE = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "sos", "example_3_4.json"
)


def _load_example():
    if not os.path.exists(EXAMPLE):
        pytest.skip(f"golden example not found at {EXAMPLE} (../shared/data is absent)")
    with open(EXAMPLE) as f:
        example = json.load(f)
    weights = [np.array(example[k], "float64") for k in ("W1", "W2", "W3")]
    true = example["true_coefficients"]
    activations = [
        np.array([1.0, true["c11"], true["c12"]]),
        np.array([true["c20"], true["c21"]]),
    ]
    return weights, np.array(example["x"], "float64"), np.array(example["y"], "float64"), (
        activations
    ), example["relaxation"]


def _random_instance(seed, noise=0.0, degrees=(2, 1), weight_scale=1.0, input_range=2):
    """A 4-wide network like the golden example, with nonzero integer coefficients.

    Weights are `weight_scale` times integers in [-2, 2], the two samples
    integers in [-input_range, input_range].
    """
    rng = np.random.default_rng(seed)
    weights = [
        weight_scale * rng.integers(-2, 3, size=(4, 4)).astype("float64") for _ in range(3)
    ]
    nonzero = np.array([-2.0, -1.0, 1.0, 2.0])
    activations = [
        np.concatenate([[1.0], rng.choice(nonzero, degrees[0])]),
        rng.choice(nonzero, degrees[1] + 1),
    ]
    x = rng.integers(-input_range, input_range + 1, size=(2, 4)).astype("float64")
    y = sos.network_output(weights, activations, x)
    return weights, x, y + noise * rng.standard_normal(y.shape), activations


# `‖r(c)‖_∞` at given activations, as the relaxation bounds it.
_loss = sos._loss


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-3.0, 2.0)])
@pytest.mark.parametrize("elevation", [0, 3])
def test_power_to_bernstein_evaluates_to_the_polynomial(bounds, elevation):
    power = np.array([0.5, -1.0, 2.0, 0.25])
    degree = 3 + elevation
    coefficients = sos.power_to_bernstein(power, bounds, degree=degree)
    assert coefficients.shape == (degree + 1,) and coefficients.dtype == np.float64
    x = np.linspace(bounds[0], bounds[1], 11)
    values = bernstein_ops.bernstein_polynomial(
        ops.convert_to_tensor(x, "float32"),
        ops.convert_to_tensor(coefficients, "float32"),
        ops.convert_to_tensor(np.array(bounds), "float32"),
    )
    expected = np.polynomial.polynomial.polyval(x, power)
    np.testing.assert_allclose(ops.convert_to_numpy(values), expected, rtol=1e-5, atol=1e-4)


def test_power_to_bernstein_initialises_a_bernstein_layer():
    import keras

    from keras_bernstein import Bernstein

    power = np.array([1.0, 1.0, -2.0])  # p_1 of the golden example
    coefficients = sos.power_to_bernstein(power, (-3.0, 3.0), degree=6)
    layer = Bernstein(
        degree=6,
        bounds=(-3.0, 3.0),
        extrapolation="polynomial",
        coefficient_initializer=keras.initializers.Constant(coefficients),
    )
    x = np.linspace(-4.0, 4.0, 17, dtype="float32").reshape(-1, 1).repeat(3, axis=1)
    expected = np.polynomial.polynomial.polyval(x.astype("float64"), power)
    np.testing.assert_allclose(
        ops.convert_to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-4
    )


def test_power_to_bernstein_known_values():
    np.testing.assert_allclose(sos.power_to_bernstein([0.0, 0.0, 1.0], (0, 1)), [0, 0, 1])
    # Linear precision: x on [l, u] has the nodes as coefficients.
    np.testing.assert_allclose(
        sos.power_to_bernstein([0.0, 1.0], (-2, 4), degree=3), [-2, 0, 2, 4], atol=1e-12
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"power_coefficients": [], "bounds": (0, 1)}, "power_coefficients"),
        ({"power_coefficients": [1.0], "bounds": (1, 1)}, "bounds"),
        ({"power_coefficients": [1.0, 2.0, 3.0], "bounds": (0, 1), "degree": 1}, "degree"),
    ],
)
def test_power_to_bernstein_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"Received: {message}="):
        sos.power_to_bernstein(**kwargs)


def test_golden_example_outputs():
    weights, x, y, activations, _ = _load_example()
    np.testing.assert_array_equal(sos.network_output(weights, activations, x), y)


def test_golden_example_order_two_is_flat_and_exact():
    pytest.importorskip("cvxpy", reason="the Moment-SOS relaxation needs cvxpy")
    weights, x, y, activations, expected = _load_example()
    result = sos.fit_polynomial_activations(weights, x, y, degrees=[2, 1])
    assert [entry["order"] for entry in result.history] == [1, 2]
    assert result.history[0]["flat"] is expected["order_1_flat"] is False
    assert result.history[1]["flat"] is expected["order_2_flat"] is True
    assert result.certified and result.order == 2 and result.rank == 1
    assert abs(result.objective - expected["optimal_value"]) < 1e-6
    for recovered, true in zip(result.coefficients, activations):
        np.testing.assert_allclose(recovered, true, atol=1e-4)


def test_golden_example_per_sample_loss():
    pytest.importorskip("cvxpy", reason="the Moment-SOS relaxation needs cvxpy")
    weights, x, y, activations, _ = _load_example()
    result = sos.fit_polynomial_activations(weights, x, y, [2, 1], loss="per_sample")
    assert result.certified and result.rank == 1
    for recovered, true in zip(result.coefficients, activations):
        np.testing.assert_allclose(recovered, true, atol=1e-4)


@pytest.mark.parametrize("seed", [1, 2])
def test_noise_free_random_instances_are_recovered(seed):
    pytest.importorskip("cvxpy", reason="the Moment-SOS relaxation needs cvxpy")
    weights, x, y, activations = _random_instance(seed)
    result = sos.fit_polynomial_activations(weights, x, y, [2, 1])
    assert result.certified and result.rank == 1
    assert abs(result.objective) < 1e-6
    for recovered, true in zip(result.coefficients, activations):
        np.testing.assert_allclose(recovered, true, atol=1e-4)


@pytest.mark.parametrize("seed", [1, 2])
def test_noisy_random_instances_are_certified(seed):
    pytest.importorskip("cvxpy", reason="the Moment-SOS relaxation needs cvxpy")
    weights, x, y, activations = _random_instance(seed, noise=0.5)
    # Per sample: 8 residuals for 4 unknowns, so the noise cannot be fitted
    # exactly (the 4 averaged residuals of the mean loss could be).
    result = sos.fit_polynomial_activations(weights, x, y, [2, 1], loss="per_sample")
    assert result.certified and result.rank == 1
    # The certified value is the global minimum: the recovered coefficients
    # attain it, and the true ones cannot do better.
    attained = _loss(weights, result.coefficients, x, y, "per_sample")
    assert attained == pytest.approx(result.objective, rel=1e-3, abs=1e-6)
    assert result.objective <= _loss(weights, activations, x, y, "per_sample") + 1e-6
    assert result.objective > 1e-3


@pytest.mark.slow
def test_six_coefficients_at_order_three():
    """The largest size solved without `force`."""
    pytest.importorskip("cvxpy", reason="the Moment-SOS relaxation needs cvxpy")
    if keras.backend.backend() != "jax":
        pytest.skip("NumPy and cvxpy only, the same on every backend: run once (JAX)")
    # Cubic then quadratic activation: 3 + 3 unknowns. Per sample, so that the
    # 8 residuals determine them (the mean loss has only 4). Half-integer
    # weights and inputs in [-1, 1] keep the outputs below 1e3.
    degrees = (3, 2)
    weights, x, y, activations = _random_instance(
        1, degrees=degrees, weight_scale=0.5, input_range=1
    )
    result = sos.fit_polynomial_activations(weights, x, y, degrees, loss="per_sample")
    assert [entry["order"] for entry in result.history] == [2, 3]
    assert result.certified and result.order == 3
    assert abs(result.objective) < 1e-6
    for recovered, true in zip(result.coefficients, activations):
        np.testing.assert_allclose(recovered, true, atol=1e-4)


def test_refuses_large_problems_unless_forced():
    pytest.importorskip("cvxpy", reason="the Moment-SOS relaxation needs cvxpy")
    weights, x, y, _ = _random_instance(1)
    with pytest.raises(ValueError, match="force=True"):
        sos.fit_polynomial_activations(weights, x, y, [4, 4])
    with pytest.raises(ValueError, match="Received: max_order=2"):
        sos.fit_polynomial_activations(weights, x, y, [4, 4], max_order=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"degrees": [2]}, "degrees"),
        ({"degrees": [2, 0]}, "degrees"),
        ({"degrees": [2, 1], "loss": "l2"}, "loss"),
        ({"degrees": [2, 1], "solver": "NO_SUCH_SOLVER"}, "solver"),
        ({"degrees": [2, 1], "max_order": 1.5}, "max_order"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    pytest.importorskip("cvxpy", reason="the Moment-SOS relaxation needs cvxpy")
    weights, x, y, _ = _random_instance(1)
    with pytest.raises(ValueError, match=f"Received: {message}="):
        sos.fit_polynomial_activations(weights, x, y, **kwargs)


def test_rejects_inconsistent_shapes():
    pytest.importorskip("cvxpy", reason="the Moment-SOS relaxation needs cvxpy")
    weights, x, y, _ = _random_instance(1)
    with pytest.raises(ValueError, match="Received: x.shape="):
        sos.fit_polynomial_activations(weights, x[:, :3], y, [2, 1])
