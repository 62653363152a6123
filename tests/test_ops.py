"""Value tests of `keras_bernstein.ops` against an independent float64 reference.

The reference evaluates Bernstein polynomials with de Casteljau's algorithm
(repeated linear interpolation of the control points) in NumPy float64; it
shares no code with the package, which uses a Horner-like recurrence.
"""

import math

import keras
import numpy as np
import pytest
from conftest import float64_context
from keras import ops

from keras_bernstein import Bernstein
from keras_bernstein import ops as bernstein_ops

MODES = ("linear", "clip", "polynomial")
DEGREES = tuple(range(1, 25))
FLOAT32_TOLERANCE = 2e-5
# Most float32 tests use inputs of one shape, (GRID, NEURONS): JAX compiles
# each eager op once per shape, so this keeps the suite fast.
GRID, NEURONS = 513, 16


# ---------------------------------------------------------------------------
# Float64 reference.
# ---------------------------------------------------------------------------


def reference_polynomial(t, coefficients):
    """de Casteljau: `t` of shape `(..., N)`, `coefficients` `(N, n + 1)`."""
    t = np.asarray(t, "float64")[..., None]
    points = np.broadcast_to(
        np.asarray(coefficients, "float64"), t.shape[:-1] + coefficients.shape[-1:]
    )
    for size in range(coefficients.shape[-1] - 1, 0, -1):
        points = (1.0 - t) * points[..., :size] + t * points[..., 1 : size + 1]
    return points[..., 0]


def reference_derivative_in_t(t, coefficients):
    """`dp/dt = n * sum_k (c_{k+1} - c_k) b_{n-1,k}(t)` by de Casteljau."""
    coefficients = np.asarray(coefficients, "float64")
    degree = coefficients.shape[-1] - 1
    return degree * reference_polynomial(t, np.diff(coefficients, axis=-1))


def reference_basis(t, degree):
    """`C(n, k) t^k (1 - t)^(n - k)` for `k = 0 .. n`, on a last axis."""
    t = np.asarray(t, "float64")[..., None]
    k = np.arange(degree + 1)
    binomials = np.array([math.comb(degree, j) for j in k], "float64")
    return binomials * t**k * (1.0 - t) ** (degree - k)


def condition_scale(t, coefficients):
    """`sum_k |c_k| |b_k(t)|`: the size of the terms that are summed."""
    basis = reference_basis(t, coefficients.shape[-1] - 1)
    return np.sum(np.abs(np.asarray(coefficients, "float64")) * np.abs(basis), -1)


def reference_with_extrapolation(t, coefficients, extrapolation):
    """The reference value for each extrapolation mode, in `t` units."""
    if extrapolation == "polynomial":
        return reference_polynomial(t, coefficients)
    inside = np.clip(t, 0.0, 1.0)
    values = reference_polynomial(inside, coefficients)
    if extrapolation == "clip":
        return values
    slope = reference_derivative_in_t(inside, coefficients)
    return values + slope * (t - inside)


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def _random_coefficients(rng, neurons, degree, dtype="float32"):
    return rng.standard_normal((neurons, degree + 1)).astype(dtype)


def _dyadic_grid(lower, width, t_values, neurons):
    """Points `x = lower + width * t` that are exact in float32, as is `t`.

    With `width` a power of two and `t` a multiple of a power of two, both
    `x` and the package's `t = (x - l) / (u - l)` are exact, so the comparison
    measures the evaluation error alone (the rounding of `t` near `t = 1` is
    amplified by `|p'|`, which the condition scale does not account for).
    """
    t = np.asarray(t_values, "float64")
    x = lower + width * t
    assert np.all(x.astype("float32") == x)
    x = np.broadcast_to(x[:, None], (len(t), neurons)).astype("float32")
    bounds = np.tile(np.array([lower, lower + width], "float32"), (neurons, 1))
    return x, np.broadcast_to(t[:, None], x.shape), bounds


# ---------------------------------------------------------------------------
# Values inside the bounds.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("degree", DEGREES)
def test_values_inside_bounds_match_float64_reference(degree):
    rng = np.random.default_rng(degree)
    neurons = NEURONS
    coefficients = _random_coefficients(rng, neurons, degree)
    lower = rng.uniform(-3.0, 1.0, neurons).astype("float32")
    upper = (lower + rng.uniform(0.25, 6.0, neurons)).astype("float32")
    bounds = np.stack([lower, upper], axis=-1)
    x = lower + (upper - lower) * np.linspace(0.0, 1.0, GRID)[:, None]
    x = np.clip(x.astype("float32"), lower, upper)
    # The reference sees exactly the float32 inputs, in float64.
    t = (x.astype("float64") - lower.astype("float64")) / (
        upper.astype("float64") - lower.astype("float64")
    )
    reference = reference_polynomial(t, coefficients)
    peak = np.max(np.abs(reference), axis=0)
    for extrapolation in MODES:
        y = bernstein_ops.bernstein_polynomial(x, coefficients, bounds, extrapolation)
        assert keras.backend.standardize_dtype(y.dtype) == "float32"
        y = _numpy(y)
        assert y.shape == x.shape
        relative = np.max(np.abs(y - reference), axis=0) / peak
        assert np.max(relative) <= FLOAT32_TOLERANCE, (extrapolation, relative)


@pytest.mark.parametrize("degree", DEGREES)
def test_values_inside_bounds_within_condition_scale(degree):
    rng = np.random.default_rng(100 + degree)
    neurons = NEURONS
    coefficients = _random_coefficients(rng, neurons, degree)
    x, t, bounds = _dyadic_grid(-2.0, 4.0, np.arange(GRID) / (GRID - 1), neurons)
    reference = reference_polynomial(t, coefficients)
    scale = condition_scale(t, coefficients)
    for extrapolation in MODES:
        y = _numpy(
            bernstein_ops.bernstein_polynomial(x, coefficients, bounds, extrapolation)
        )
        relative = np.abs(y - reference) / scale
        assert np.max(relative) <= FLOAT32_TOLERANCE, (extrapolation, relative.max())


def test_values_broadcast_a_lower_rank_input_against_the_neurons():
    rng = np.random.default_rng(5)
    coefficients = _random_coefficients(rng, 3, 4)
    bounds = np.array([[-1.0, 1.0], [0.0, 2.0], [-4.0, 4.0]], "float32")
    x = np.float32(0.5)
    t = (0.5 - bounds[:, 0].astype("float64")) / (bounds[:, 1] - bounds[:, 0])
    y = _numpy(bernstein_ops.bernstein_polynomial(x, coefficients, bounds, "clip"))
    assert y.shape == (3,)
    np.testing.assert_allclose(y, reference_polynomial(t, coefficients), atol=1e-6)
    # And a batch with extra leading axes.
    x = np.full((2, 5, 3), 0.5, "float32")
    y = _numpy(bernstein_ops.bernstein_polynomial(x, coefficients, bounds, "clip"))
    assert y.shape == (2, 5, 3)
    np.testing.assert_allclose(
        y, np.broadcast_to(reference_polynomial(t, coefficients), (2, 5, 3)), atol=1e-6
    )


# ---------------------------------------------------------------------------
# Values outside the bounds.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("degree", (1, 2, 5, 8, 12, 24))
@pytest.mark.parametrize("extrapolation", MODES)
def test_values_outside_bounds(extrapolation, degree):
    rng = np.random.default_rng(200 + degree)
    neurons = NEURONS
    coefficients = _random_coefficients(rng, neurons, degree)
    # 257 points below l, 256 above u.
    if extrapolation == "polynomial":
        # Far out the polynomial is dominated by t^n; stay within half a width.
        steps = np.arange(1, 258) / 512
    else:
        steps = np.arange(1, 258) / 64  # up to four widths beyond each end
    t_values = np.concatenate([-steps[::-1], 1.0 + steps[:-1]])
    x, t, bounds = _dyadic_grid(-1.0, 2.0, t_values, neurons)
    y = _numpy(bernstein_ops.bernstein_polynomial(x, coefficients, bounds, extrapolation))
    c = coefficients.astype("float64")
    end = np.where(t < 0.0, 0.0, 1.0)
    end_value = reference_polynomial(end, c)
    end_slope = reference_derivative_in_t(end, c)
    if extrapolation == "linear":
        expected = end_value + end_slope * (t - end)
        scale = np.max(np.abs(c)) + np.abs(end_slope * (t - end))
    elif extrapolation == "clip":
        expected = end_value
        scale = np.max(np.abs(c))
    else:
        expected = reference_polynomial(t, c)
        scale = condition_scale(t, c)
    # The reference for "linear"/"clip" is built from the end value and end
    # slope only; it must agree with the generic helper as well.
    np.testing.assert_allclose(
        reference_with_extrapolation(t, c, extrapolation), expected, rtol=1e-12, atol=1e-12
    )
    assert np.max(np.abs(y - expected) / scale) <= FLOAT32_TOLERANCE


def test_clip_holds_the_exact_end_coefficients():
    coefficients = np.array([[0.3, -1.0, 2.0, 0.7]], "float32")
    bounds = np.array([[-1.0, 2.0]], "float32")
    x = np.array([[-7.0], [-1.0], [2.0], [9.0]], "float32")
    y = _numpy(bernstein_ops.bernstein_polynomial(x, coefficients, bounds, "clip"))
    np.testing.assert_array_equal(y[:, 0], np.float32([0.3, 0.3, 0.7, 0.7]))


# ---------------------------------------------------------------------------
# Derivatives.
# ---------------------------------------------------------------------------


def _derivative_grid(lower, upper):
    """Points inside and outside `[l, u]`, at least 1e-3 away from the ends."""
    width = upper - lower
    inside = np.linspace(lower + 1e-3, upper - 1e-3, 101)
    below = np.linspace(lower - 2.0 * width, lower - 1e-3, 25)
    above = np.linspace(upper + 1e-3, upper + 2.0 * width, 25)
    return np.concatenate([below, inside, above])


def _reference_derivative(x, coefficients, lower, upper, extrapolation):
    t = (x - lower) / (upper - lower)
    inside = (t >= 0.0) & (t <= 1.0)
    if extrapolation == "polynomial":
        slope = reference_derivative_in_t(t, coefficients)
    else:
        slope = reference_derivative_in_t(np.clip(t, 0.0, 1.0), coefficients)
        if extrapolation == "clip":
            slope = np.where(inside, slope, 0.0)
    return slope / (upper - lower)


def _derivative_scale(x, coefficients, lower, upper, extrapolation):
    """`n max|c| / (u - l)`, times the growth of the basis for "polynomial"."""
    degree = coefficients.shape[-1] - 1
    scale = degree * np.max(np.abs(coefficients)) / (upper - lower)
    if extrapolation == "polynomial":
        t = (x - lower) / (upper - lower)
        scale = scale * (np.abs(t) + np.abs(1.0 - t)) ** (degree - 1)
    return scale


@pytest.mark.parametrize("degree", (1, 2, 5, 12, 24))
@pytest.mark.parametrize("extrapolation", MODES)
def test_derivative_in_float64_matches_formula_and_finite_differences(
    extrapolation, degree, float64
):
    rng = np.random.default_rng(300 + degree)
    neurons = 4
    coefficients = _random_coefficients(rng, neurons, degree, "float64")
    lower, upper = -1.25, 2.0
    bounds = np.tile([lower, upper], (neurons, 1)).astype("float64")
    grid = _derivative_grid(lower, upper)
    if extrapolation == "polynomial" and degree > 5:
        grid = grid[np.abs(grid - 0.375) <= 2.5]  # where t^n stays moderate
    x = np.broadcast_to(grid[:, None], (len(grid), neurons)).astype("float64")

    def tensor(value):
        return ops.convert_to_tensor(value, dtype="float64")

    derivative = bernstein_ops.bernstein_derivative(
        tensor(x), tensor(coefficients), tensor(bounds), extrapolation
    )
    assert keras.backend.standardize_dtype(derivative.dtype) == "float64"
    derivative = _numpy(derivative)
    expected = _reference_derivative(x, coefficients, lower, upper, extrapolation)
    scale = _derivative_scale(x, coefficients, lower, upper, extrapolation)
    np.testing.assert_array_less(np.abs(derivative - expected), 1e-12 * scale)

    # Central differences of the package's own float64 values.
    step = 1e-6

    def value(points):
        y = bernstein_ops.bernstein_polynomial(
            tensor(points), tensor(coefficients), tensor(bounds), extrapolation
        )
        assert keras.backend.standardize_dtype(y.dtype) == "float64"
        return _numpy(y)

    differences = (value(x + step) - value(x - step)) / (2.0 * step)
    np.testing.assert_array_less(np.abs(derivative - differences), 1e-6 * scale)


@pytest.mark.parametrize("extrapolation", MODES)
def test_layer_derivative_in_float64(extrapolation, float64):
    layer = Bernstein(
        degree=7,
        bounds=(-2.0, 1.5),
        extrapolation=extrapolation,
        coefficient_initializer=keras.initializers.RandomNormal(seed=3),
        dtype="float64",
    )
    grid = _derivative_grid(-2.0, 1.5)
    x = np.stack([grid, grid[::-1], 0.5 * grid], axis=-1)
    layer.build(x.shape)
    assert layer.coefficients.dtype == "float64"
    derivative = layer.derivative(x)
    assert keras.backend.standardize_dtype(derivative.dtype) == "float64"
    derivative = _numpy(derivative)
    coefficients = _numpy(layer.coefficients)
    expected = _reference_derivative(x, coefficients, -2.0, 1.5, extrapolation)
    scale = _derivative_scale(x, coefficients, -2.0, 1.5, extrapolation)
    np.testing.assert_array_less(np.abs(derivative - expected), 1e-12 * scale)
    step = 1e-6
    differences = (_numpy(layer(x + step)) - _numpy(layer(x - step))) / (2 * step)
    np.testing.assert_array_less(np.abs(derivative - differences), 1e-6 * scale)


@pytest.mark.parametrize("degree", (1, 3, 8, 24))
@pytest.mark.parametrize("extrapolation", MODES)
def test_derivative_in_float32_matches_formula(extrapolation, degree):
    rng = np.random.default_rng(400 + degree)
    neurons = NEURONS
    coefficients = _random_coefficients(rng, neurons, degree)
    if extrapolation == "polynomial":
        t_values = np.arange(GRID) / (GRID - 1)  # inside: t^n swamps the scale outside
    else:
        t_values = np.arange(-128, GRID - 128) / 256  # half a width beyond each end
    x, t, bounds = _dyadic_grid(-4.0, 8.0, t_values, neurons)
    derivative = _numpy(
        bernstein_ops.bernstein_derivative(x, coefficients, bounds, extrapolation)
    )
    expected = _reference_derivative(
        x.astype("float64"), coefficients.astype("float64"), -4.0, 4.0, extrapolation
    )
    scale = degree * np.max(np.abs(coefficients)) / 8.0
    assert np.max(np.abs(derivative - expected)) <= FLOAT32_TOLERANCE * scale


def test_end_slopes_and_derivative_coefficients():
    coefficients = np.array([[1.0, 3.0, 2.0, 6.0], [0.0, 0.0, 1.0, 1.0]], "float32")
    lower, upper = bernstein_ops.end_slopes(coefficients)
    np.testing.assert_array_equal(_numpy(lower), [6.0, 0.0])
    np.testing.assert_array_equal(_numpy(upper), [12.0, 0.0])
    np.testing.assert_array_equal(
        _numpy(bernstein_ops.derivative_coefficients(coefficients)),
        [[6.0, -3.0, 12.0], [0.0, 3.0, 0.0]],
    )


# ---------------------------------------------------------------------------
# The basis.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("degree", (0, 1, 2, 5, 8, 13, 24))
def test_basis_matches_binomial_formula_and_sums_to_one(degree):
    t = np.linspace(0.0, 1.0, 401).reshape(401, 1).astype("float32")
    basis = bernstein_ops.bernstein_basis(t, degree)
    assert tuple(basis.shape) == (401, 1, degree + 1)
    basis = _numpy(basis)
    expected = reference_basis(t.astype("float64"), degree)
    np.testing.assert_allclose(basis, expected, rtol=0, atol=2e-6)
    assert np.all(basis >= 0.0)
    np.testing.assert_allclose(basis.sum(axis=-1), 1.0, rtol=0, atol=4e-6)


def test_basis_partition_of_unity_in_float64(float64):
    t = ops.convert_to_tensor(np.linspace(0.0, 1.0, 257), dtype="float64")
    for degree in (1, 7, 24):
        basis = bernstein_ops.bernstein_basis(t, degree)
        assert keras.backend.standardize_dtype(basis.dtype) == "float64"
        basis = _numpy(basis)
        np.testing.assert_allclose(basis.sum(axis=-1), 1.0, rtol=0, atol=1e-13)
        np.testing.assert_allclose(
            basis, reference_basis(np.linspace(0.0, 1.0, 257), degree), atol=1e-14
        )


def test_nodes_and_binomials():
    np.testing.assert_array_equal(bernstein_ops.bernstein_nodes(4), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(
        bernstein_ops.binomial_coefficients(5), [1, 5, 10, 10, 5, 1]
    )
    assert bernstein_ops.binomial_coefficients(24)[12] == math.comb(24, 12)


# ---------------------------------------------------------------------------
# Shape-preserving properties.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("degree", (1, 2, 7, 16, 24))
def test_linear_precision(degree):
    # c_k on the line a + b * (l + (u - l) k / n) give exactly that line.
    slopes = np.array([1.0, -0.5, 2.0, 0.0])
    intercepts = np.array([0.0, 1.0, -3.0, 0.25])
    lower, upper = -1.5, 2.5
    nodes = lower + (upper - lower) * np.arange(degree + 1) / degree
    coefficients = intercepts[:, None] + slopes[:, None] * nodes
    bounds = np.tile([lower, upper], (4, 1))
    x = np.linspace(lower - 4.0, upper + 4.0, 161)[:, None] * np.ones((1, 4))
    line = intercepts + slopes * x
    inside = (x >= lower) & (x <= upper)
    # Outside [l, u] the Bernstein form of the polynomial is ill-conditioned
    # (|b_k(t)| grows like (|t| + |1 - t|)^n); allow for that there.
    t = (x - lower) / (upper - lower)
    growth = (np.abs(t) + np.abs(1.0 - t)) ** degree
    with float64_context():
        for extrapolation in MODES:
            y = bernstein_ops.bernstein_polynomial(
                ops.convert_to_tensor(x, "float64"),
                ops.convert_to_tensor(coefficients, "float64"),
                ops.convert_to_tensor(bounds, "float64"),
                extrapolation,
            )
            y = _numpy(y)
            if extrapolation == "clip":
                expected = intercepts + slopes * np.clip(x, lower, upper)
                np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)
            elif extrapolation == "linear":
                np.testing.assert_allclose(y, line, rtol=0, atol=1e-12)
            else:
                assert np.all(np.abs(y - line) <= 1e-13 * growth * 14.0)
    # In float32, "exactly" up to rounding: Horner's bound of about 2 n eps of
    # the terms' size (t + (1 - t) itself rounds to 1 + eps/2).
    size = np.max(np.abs(coefficients), axis=-1) + np.abs(slopes * (x - np.clip(x, lower, upper)))
    tolerance = max(1e-6, 2 * degree * np.finfo("float32").eps) * size
    for extrapolation in MODES:
        y = _numpy(
            bernstein_ops.bernstein_polynomial(
                x.astype("float32"),
                coefficients.astype("float32"),
                bounds.astype("float32"),
                extrapolation,
            )
        )
        if extrapolation == "clip":
            expected = intercepts + slopes * np.clip(x, lower, upper)
            assert np.all(np.abs(y - expected) <= tolerance)
        elif extrapolation == "linear":
            assert np.all(np.abs(y - line) <= tolerance)
        else:
            assert np.all(np.abs(y - line)[inside] <= tolerance[inside])


@pytest.mark.parametrize("degree", (1, 2, 3, 6, 10, 17, 24))
def test_range_enclosure(degree):
    rng = np.random.default_rng(500 + degree)
    neurons = NEURONS
    coefficients = (3.0 * _random_coefficients(rng, neurons, degree)).astype("float32")
    bounds = np.tile(np.array([-0.75, 4.0], "float32"), (neurons, 1))
    x = np.linspace(-0.75, 4.0, GRID, dtype="float32")[:, None] * np.ones(
        (1, neurons), "float32"
    )
    ranges = _numpy(bernstein_ops.coefficient_range(coefficients))
    assert ranges.shape == (neurons, 2)
    np.testing.assert_array_equal(ranges[:, 0], coefficients.min(axis=-1))
    np.testing.assert_array_equal(ranges[:, 1], coefficients.max(axis=-1))
    tolerance = 1e-6 * np.max(np.abs(coefficients))
    for extrapolation in MODES:
        y = _numpy(bernstein_ops.bernstein_polynomial(x, coefficients, bounds, extrapolation))
        assert np.all(y >= ranges[:, 0] - tolerance)
        assert np.all(y <= ranges[:, 1] + tolerance)
    # The enclosure is tight at the ends: p(l) = c_0, p(u) = c_n.
    ends = _numpy(
        bernstein_ops.bernstein_polynomial(
            np.array([[-0.75], [4.0]], "float32"), coefficients, bounds, "clip"
        )
    )
    np.testing.assert_allclose(ends, coefficients[:, [0, -1]].T, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("degree", (1, 2, 4, 8, 16, 24))
@pytest.mark.parametrize("increasing", [True, False])
def test_derivative_lower_bound_holds_on_a_dense_grid(degree, increasing):
    rng = np.random.default_rng(600 + degree)
    neurons = NEURONS
    if increasing:
        gaps = rng.uniform(0.0, 0.5, (neurons, degree))
        gaps[:, rng.integers(degree)] = rng.uniform(0.001, 0.05, neurons)
        start = rng.standard_normal((neurons, 1))
        coefficients = np.concatenate([start, start + np.cumsum(gaps, axis=-1)], -1)
    else:
        coefficients = rng.standard_normal((neurons, degree + 1))
    coefficients = coefficients.astype("float32")
    lower = rng.uniform(-3.0, 0.0, neurons).astype("float32")
    upper = (lower + rng.uniform(0.5, 4.0, neurons)).astype("float32")
    bounds = np.stack([lower, upper], -1)
    c = coefficients.astype("float64")
    width = upper.astype("float64") - lower.astype("float64")

    bound = _numpy(bernstein_ops.derivative_lower_bound(coefficients, bounds))
    assert bound.shape == (neurons,)
    np.testing.assert_allclose(
        bound, degree * np.min(np.diff(c, axis=-1), axis=-1) / width, rtol=1e-5, atol=1e-7
    )
    if increasing:
        assert np.all(bound > 0.0)

    # Float64 reference derivative on [l, u] ...
    s = np.linspace(0.0, 1.0, 4001)[:, None]
    # (`bound` itself is float32: allow its rounding.)
    scale = degree * np.max(np.abs(c), axis=-1) / width
    reference = reference_derivative_in_t(np.broadcast_to(s, (4001, neurons)), c) / width
    assert np.all(reference >= bound - 1e-6 * scale)
    # The bound is attained when the smallest gap is at an end (t = 0 or 1).
    ends = reference_derivative_in_t(np.zeros((1, neurons)), c) / width
    gaps = np.diff(c, axis=-1)
    at_start = np.argmin(gaps, axis=-1) == 0
    np.testing.assert_allclose(ends[0, at_start], bound[at_start], rtol=1e-5, atol=1e-6)
    # ... and the package's float32 derivative, with "linear" extrapolation on
    # the whole line (here four widths beyond each end).
    s = np.linspace(-4.0, 5.0, 4 * GRID - 3)[:, None]  # four widths beyond each end
    x = (lower + width * s).astype("float32")
    derivative = _numpy(bernstein_ops.bernstein_derivative(x, coefficients, bounds))
    assert np.all(derivative >= bound - FLOAT32_TOLERANCE * scale)
    # Secant slopes (mean value theorem) of the float32 values agree.
    y = _numpy(bernstein_ops.bernstein_polynomial(x, coefficients, bounds)).astype("float64")
    x = x.astype("float64")
    secants = np.diff(y, axis=0) / np.diff(x, axis=0)
    rounding = 4 * np.finfo("float32").eps * np.max(np.abs(y), axis=0) / np.min(
        np.diff(x, axis=0), axis=0
    )
    assert np.all(secants >= bound - rounding - 1e-6)


# ---------------------------------------------------------------------------
# Gradients, through Keras training only.
# ---------------------------------------------------------------------------


class _Shift(keras.layers.Layer):
    """`x + b` with a trainable `b`: its gradient is the sum of `dL/dx`."""

    def build(self, input_shape):
        self.shift = self.add_weight(
            shape=input_shape[-1:], initializer="zeros", name="shift"
        )

    def call(self, inputs):
        return inputs + self.shift


@pytest.mark.parametrize(
    "degree, shared", [(1, False), (2, False), (6, False), (3, True)]
)
@pytest.mark.parametrize("extrapolation", MODES)
def test_training_gradients_match_finite_differences(
    extrapolation, degree, shared, float64
):
    """One SGD step reveals the gradient: `g = (w_before - w_after) / lr`.

    It is compared with central differences of the float64 loss for every
    weight: the shift (the gradient with respect to the input), the
    coefficients and the bounds. With `shared`, the input is 3-D and the
    activation is shared along axis 1, so gradients are reduced over it.
    """
    rng = np.random.default_rng(700 + degree)
    features = 3
    feature_shape = (2, features) if shared else (features,)
    x = np.concatenate(
        [
            rng.uniform(-1.9, 2.9, (10,) + feature_shape),  # inside [-2, 3]
            rng.uniform(-5.0, -2.1, (3,) + feature_shape),  # below
            rng.uniform(3.1, 6.0, (3,) + feature_shape),  # above
        ]
    ).astype("float64")
    y = rng.standard_normal(x.shape).astype("float64")
    layer = Bernstein(
        degree=degree,
        bounds=(-2.0, 3.0),
        extrapolation=extrapolation,
        shared_axes=[1] if shared else None,
        trainable_bounds=True,
        coefficient_initializer=keras.initializers.RandomNormal(seed=degree),
        dtype="float64",
    )
    inputs = keras.Input(feature_shape, dtype="float64")
    shift = _Shift(dtype="float64")
    model = keras.Model(inputs, layer(shift(inputs)))
    assert len(model.trainable_weights) == 3
    assert tuple(layer.coefficients.shape) == (1,) * shared + (features, degree + 1)
    learning_rate = 2.0**-12
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=keras.losses.MeanSquaredError(dtype="float64"),
    )
    before = [_numpy(v).copy() for v in model.trainable_weights]
    model.train_on_batch(x, y)
    after = [_numpy(v) for v in model.trainable_weights]
    gradients = [(b - a) / learning_rate for b, a in zip(before, after)]

    def loss(values):
        for variable, value in zip(model.trainable_weights, values):
            variable.assign(value)
        prediction = model(ops.convert_to_tensor(x, "float64"))
        assert keras.backend.standardize_dtype(prediction.dtype) == "float64"
        # Not `ops.mean`: on JAX and torch Keras accumulates it in float32.
        return float(_numpy(ops.sum(ops.square(ops.subtract(prediction, y))))) / y.size

    step = 1e-6
    for index, (gradient, start) in enumerate(zip(gradients, before)):
        numeric = np.zeros_like(start)
        for position in np.ndindex(start.shape):
            values = [b.copy() for b in before]
            values[index][position] += step
            up = loss(values)
            values[index][position] -= 2 * step
            down = loss(values)
            numeric[position] = (up - down) / (2 * step)
        name = model.trainable_weights[index].path
        np.testing.assert_allclose(
            gradient, numeric, rtol=1e-5, atol=1e-7, err_msg=name
        )
        assert np.any(gradient != 0.0), name


def test_fit_of_bernstein_coefficients_reduces_the_loss(autompg):
    """Only the activation trains (Dense layers frozen): gradients must reach it."""
    x, mpg, _ = autompg
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, trainable=False)(inputs)
    activation = Bernstein(degree=6, trainable_bounds=True)
    outputs = keras.layers.Dense(1, trainable=False)(activation(hidden))
    model = keras.Model(inputs, outputs)
    assert len(model.trainable_weights) == 2
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    initial = model.evaluate(x, mpg, verbose=0)
    coefficients = _numpy(activation.coefficients).copy()
    model.fit(x, mpg, batch_size=64, epochs=8, verbose=0)
    final = model.evaluate(x, mpg, verbose=0)
    assert np.isfinite(final)
    assert final < 0.5 * initial, (initial, final)
    assert np.any(_numpy(activation.coefficients) != coefficients)


# ---------------------------------------------------------------------------
# Non-finite and huge inputs.
# ---------------------------------------------------------------------------

SPECIAL = np.array([np.nan, 1e30, -1e30, 3e37, -3e37, 0.5, -2.5, 2.9], "float32")


def _check_special_outputs(y, extrapolation):
    y = np.asarray(y)
    assert np.all(np.isnan(y[..., 0])), (extrapolation, y[..., 0])
    if extrapolation in ("linear", "clip"):
        assert np.all(np.isfinite(y[..., 1:])), (extrapolation, y)
    else:
        assert np.all(np.isfinite(y[..., 5:])), (extrapolation, y)


@pytest.mark.parametrize("extrapolation", MODES)
def test_nan_and_huge_inputs_eager(extrapolation):
    x = np.tile(SPECIAL, (2, 1))
    coefficients = np.random.default_rng(0).standard_normal((8, 6)).astype("float32")
    bounds = np.tile(np.array([-3.0, 3.0], "float32"), (8, 1))
    y = _numpy(bernstein_ops.bernstein_polynomial(x, coefficients, bounds, extrapolation))
    _check_special_outputs(y, extrapolation)
    derivative = _numpy(
        bernstein_ops.bernstein_derivative(x, coefficients, bounds, extrapolation)
    )
    assert np.all(np.isnan(derivative[:, 0]))
    layer = Bernstein(degree=5, extrapolation=extrapolation)
    _check_special_outputs(_numpy(layer(x)), extrapolation)
    if extrapolation == "clip":
        # Huge inputs give the end values exactly.
        np.testing.assert_array_equal(y[:, 1], coefficients[1, -1])
        np.testing.assert_array_equal(y[:, 2], coefficients[2, 0])


def test_nan_and_huge_inputs_in_jit_compiled_predict():
    inputs = keras.Input((len(SPECIAL),))
    layers = {mode: Bernstein(degree=5, extrapolation=mode) for mode in MODES}
    model = keras.Model(inputs, [layers[mode](inputs) for mode in MODES])
    model.compile(jit_compile=True)
    x = np.tile(SPECIAL, (4, 1))
    predictions = model.predict(x, batch_size=4, verbose=0)
    for mode, y in zip(MODES, predictions):
        _check_special_outputs(y, mode)
        eager = _numpy(layers[mode](x))
        np.testing.assert_allclose(y[:, 1:5], eager[:, 1:5], rtol=1e-6)
        np.testing.assert_allclose(y[:, 5:], eager[:, 5:], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# Which implementation runs (`ops.implementation`).
# ---------------------------------------------------------------------------


def _chooser_case(dtype="float32", degree=8, rows=32, units=5):
    rng = np.random.default_rng(21)
    x = (rng.normal(size=(rows, units)) * 2.0).astype(dtype)
    coefficients = rng.normal(size=(units, degree + 1)).astype(dtype)
    bounds = np.tile([-2.0, 2.0], (units, 1)).astype(dtype)
    return x, coefficients, bounds


def _kernels_looked_up(monkeypatch):
    """The C++ kernels looked up from now on (`_fast/cpu_kernels._target`)."""
    from keras_bernstein._fast import cpu_kernels

    looked_up = []
    target = cpu_kernels._target
    monkeypatch.setattr(
        cpu_kernels, "_target", lambda *args: looked_up.append(args) or target(*args)
    )
    return looked_up


def test_implementation_checks_its_arguments():
    x, coefficients, bounds = _chooser_case()
    with pytest.raises(ValueError, match="normalization"):
        bernstein_ops.implementation(x, coefficients, bounds, normalization="batch")
    with pytest.raises(ValueError, match="fused"):
        bernstein_ops.implementation(x, coefficients, bounds, fused=True)
    with pytest.raises(ValueError, match="extrapolation"):
        bernstein_ops.implementation(x, coefficients, bounds, "cubic")
    with pytest.raises(ValueError, match="bounds"):
        bernstein_ops.implementation(x, coefficients, bounds[:, :1])


@pytest.mark.parametrize("normalization", [None, "inference", "training"])
def test_implementation_answers_with_a_known_name(normalization):
    x, coefficients, bounds = _chooser_case()
    for fused in (None, True) if normalization else (None,):
        choice = bernstein_ops.implementation(
            x, coefficients, bounds, normalization=normalization, fused=fused
        )
        assert isinstance(choice, bernstein_ops.Implementation)
        assert choice.name in bernstein_ops.IMPLEMENTATIONS
        assert choice.reason
        assert choice.fused == bool(fused) or fused is None


def test_implementation_of_degree_zero_is_portable():
    x, coefficients, bounds = _chooser_case(degree=0)
    assert bernstein_ops.implementation(x, coefficients, bounds).name == "portable"


@pytest.mark.parametrize("extrapolation", MODES)
def test_implementation_is_the_cpu_kernel_on_cpu_float32(extrapolation, kernel_targets):
    """JAX- and TensorFlow-CPU, float32: the C++ kernels, and they run."""
    x, coefficients, bounds = _chooser_case()
    choice = bernstein_ops.implementation(x, coefficients, bounds, extrapolation)
    assert choice.name == "cpu_kernel", choice
    bernstein_ops.bernstein_polynomial(x, coefficients, bounds, extrapolation)
    assert {(8, extrapolation, "Values")} <= set(kernel_targets)
    training = bernstein_ops.implementation(
        x, coefficients, bounds, extrapolation, normalization="training"
    )
    assert training == ("cpu_kernel", True, choice.reason)
    inference = bernstein_ops.implementation(
        x, coefficients, bounds, extrapolation, normalization="inference"
    )
    assert inference.name == "cpu_kernel" and not inference.fused


def test_implementation_without_the_cpu_kernels(monkeypatch):
    """Turned off, or for float64: the portable formula with its recomputing
    backward (on TensorFlow inside a traced function XLA functions); no
    kernel is looked up."""
    if keras.backend.backend() not in ("jax", "tensorflow"):
        pytest.skip("the C++ kernels are JAX's and TensorFlow's")
    looked_up = _kernels_looked_up(monkeypatch)
    x, coefficients, bounds = _chooser_case()
    monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", "0")
    choice = bernstein_ops.implementation(x, coefficients, bounds)
    assert choice.name == "recomputed_gradient", choice
    assert "KERAS_BERNSTEIN_CPU_KERNEL=0" in choice.reason
    monkeypatch.delenv("KERAS_BERNSTEIN_CPU_KERNEL")
    with float64_context():
        x, coefficients, bounds = _chooser_case("float64")
        choice = bernstein_ops.implementation(x, coefficients, bounds)
        assert choice == ("recomputed_gradient", False, "the portable formula: not float32")
        bernstein_ops.bernstein_polynomial(x, coefficients, bounds)
    assert not looked_up
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        @tf.function
        def traced(x):
            return bernstein_ops.implementation(x, coefficients, bounds).name

        assert traced(tf.constant(x)) == "xla_compiled"


def test_implementation_on_torch_eager():
    """PyTorch with compiling off (the tests' default): the in-place
    autograd nodes; in training one node with the batch normalization."""
    if keras.backend.backend() != "torch":
        pytest.skip("PyTorch's eager kernels")
    x, coefficients, bounds = _chooser_case()
    choice = bernstein_ops.implementation(x, coefficients, bounds)
    assert choice.name == "torch_eager" and "KERAS_BERNSTEIN_TORCH_COMPILE=0" in choice.reason
    training = bernstein_ops.implementation(x, coefficients, bounds, normalization="training")
    assert training.name == "torch_eager" and training.fused
    inference = bernstein_ops.implementation(x, coefficients, bounds, normalization="inference")
    assert inference.name == "torch_eager" and not inference.fused
    direct = bernstein_ops.implementation(
        x, coefficients, bounds, normalization="training", fused=True
    )
    assert direct.name == "recomputed_gradient" and direct.fused
    single_row = bernstein_ops.implementation(
        x[:1], coefficients, bounds, normalization="training"
    )
    assert single_row.name == "torch_eager" and not single_row.fused


def test_implementation_on_torch_compiled(torch_compiled):
    """PyTorch-CPU with compiling on: TorchInductor, fused with the batch
    normalization, and the compiled function runs."""
    x, coefficients, bounds = _chooser_case()
    assert bernstein_ops.implementation(x, coefficients, bounds).name == "torch_compiled"
    for normalization in ("inference", "training"):
        choice = bernstein_ops.implementation(
            x, coefficients, bounds, normalization=normalization
        )
        assert choice.name == "torch_compiled" and choice.fused
    bernstein_ops.bernstein_polynomial(x, coefficients, bounds)
    assert torch_compiled


def test_dispatch_follows_the_implementation(monkeypatch):
    """`bernstein_polynomial` runs what the chooser answers: told
    `"portable"`, no fast path runs, and the values are the formula's."""
    from keras_bernstein import _formula

    x, coefficients, bounds = _chooser_case()
    answers = []
    choose = bernstein_ops._polynomial_choice

    def portable(*args):
        answers.append(choose(*args))
        return bernstein_ops._PORTABLE_FEW_AXES

    monkeypatch.setattr(bernstein_ops, "_polynomial_choice", portable)
    fast_paths = []
    for name in ("_with_lean_gradient", "_torch_polynomial"):
        monkeypatch.setattr(bernstein_ops, name, fast_paths)  # not callable: would raise
    values = bernstein_ops.bernstein_polynomial(x, coefficients, bounds)
    assert answers and not fast_paths
    np.testing.assert_array_equal(
        ops.convert_to_numpy(values),
        ops.convert_to_numpy(_formula._evaluate(x, coefficients, bounds, "linear")),
    )


def test_implementation_is_logged_at_debug_level_once(caplog, monkeypatch):
    import logging

    monkeypatch.setattr(bernstein_ops, "_logged", set())

    x, coefficients, bounds = _chooser_case(rows=7)
    with caplog.at_level(logging.INFO, logger="keras_bernstein"):
        bernstein_ops.bernstein_polynomial(x, coefficients, bounds)
    assert not caplog.records
    with caplog.at_level(logging.DEBUG, logger="keras_bernstein"):
        for _ in range(3):
            bernstein_ops.bernstein_polynomial(x, coefficients, bounds)
    messages = [r.getMessage() for r in caplog.records if r.name == "keras_bernstein"]
    assert len(messages) == 1, messages
    choice = bernstein_ops.implementation(x, coefficients, bounds)
    assert f"runs {choice.name}" in messages[0] and choice.reason in messages[0]
