"""Bernstein-polynomial mathematics on tensors, built on `keras.ops` only.

Everything that evaluates, differentiates or bounds a Bernstein polynomial lives
here; layers own the weights and call these functions, and the rest of the
package reads layers through them.

Conventions shared by every function:

- `coefficients` has shape `(..., degree + 1)`: the last axis holds
  `c_0 ... c_n`, the leading axes broadcast against the trailing axes of `x`
  (one polynomial per neuron).
- `bounds` has shape `(..., 2)` holding `(l, u)` per polynomial, broadcast the
  same way.
- `x` is mapped to `t = (x - l) / (u - l)`; the polynomial is
  `sum_k c_k * C(n, k) * t**k * (1 - t)**(n - k)`.

Evaluation never calls `pow`: `_bernstein_sum` runs a Horner-like recurrence in
`t` and `1 - t` (about four multiply-adds per degree), whose terms are all
nonnegative products, so its float32 error stays within a few `n * eps` of the
condition scale `sum_k |c_k| b_k(t)` even at degree 24.
"""

import math

import keras
import numpy as np
from keras import ops

EXTRAPOLATION_MODES = ("linear", "clip", "polynomial")


def binomial_coefficients(degree):
    """`C(degree, k)` for `k = 0 ... degree` as a float64 NumPy array."""
    return np.array([math.comb(degree, k) for k in range(degree + 1)], "float64")


def bernstein_nodes(degree):
    """The Greville abscissae `k / degree` of the basis, as a NumPy array.

    Setting `c_k = f(l + (u - l) * k / degree)` gives the Bernstein
    approximant of `f` on `[l, u]`; for linear `f` it is exact.
    """
    return np.arange(degree + 1, dtype="float64") / degree


def _degree_of(coefficients):
    degree = coefficients.shape[-1] - 1
    if degree is None or degree < 0:
        raise ValueError(
            "The last axis of `coefficients` must be static and hold "
            f"degree + 1 >= 1 values. Received: shape={coefficients.shape}"
        )
    return degree


def check_extrapolation(extrapolation):
    """Returns `extrapolation` if it is a known mode, else raises `ValueError`."""
    if extrapolation not in EXTRAPOLATION_MODES:
        raise ValueError(
            f"`extrapolation` must be one of {EXTRAPOLATION_MODES}. "
            f"Received: extrapolation={extrapolation!r}"
        )
    return extrapolation


def _bernstein_sum(t, scaled_coefficients):
    """`sum_k a_k t^k (1 - t)^(n - k)` for `a_k = c_k * C(n, k)`.

    Horner in `1 - t` with a running power of `t`: after step `k` the
    accumulator holds `sum_{j <= k} a_j t^j (1 - t)^(k - j)`.
    """
    terms = ops.unstack(scaled_coefficients, axis=-1)
    if len(terms) == 1:
        return ops.add(ops.zeros_like(t), terms[0])
    s = ops.subtract(1.0, t)
    acc = terms[0]
    power = t
    for k in range(1, len(terms)):
        if k > 1:
            power = ops.multiply(power, t)
        acc = ops.add(ops.multiply(acc, s), ops.multiply(terms[k], power))
    return acc


def _scaled(coefficients, degree):
    binomials = ops.convert_to_tensor(
        binomial_coefficients(degree), dtype=coefficients.dtype
    )
    return ops.multiply(coefficients, binomials)


def to_unit_interval(x, bounds):
    """`t = (x - l) / (u - l)`, the argument of the basis functions."""
    lower = bounds[..., 0]
    upper = bounds[..., 1]
    return ops.divide(ops.subtract(x, lower), ops.subtract(upper, lower))


def bernstein_basis(t, degree):
    """All `degree + 1` Bernstein basis functions at `t`.

    Args:
        t: Tensor of points, usually in `[0, 1]`.
        degree: Nonnegative integer `n`.

    Returns:
        Tensor of shape `t.shape + (degree + 1,)` holding
        `C(n, k) t^k (1 - t)^(n - k)`, computed by products of powers
        built by repeated multiplication (no `pow`).
    """
    t = ops.convert_to_tensor(t)
    s = ops.subtract(1.0, t)
    t_powers = [ops.ones_like(t)]
    s_powers = [ops.ones_like(t)]
    for _ in range(degree):
        t_powers.append(ops.multiply(t_powers[-1], t))
        s_powers.append(ops.multiply(s_powers[-1], s))
    binomials = binomial_coefficients(degree)
    basis = [
        ops.multiply(
            float(binomials[k]), ops.multiply(t_powers[k], s_powers[degree - k])
        )
        for k in range(degree + 1)
    ]
    return ops.stack(basis, axis=-1)


def end_slopes(coefficients):
    """Slopes `dσ/dt` at `t = 0` and `t = 1`: `n (c_1 - c_0)`, `n (c_n - c_{n-1})`."""
    degree = _degree_of(coefficients)
    if degree == 0:
        zero = ops.zeros_like(coefficients[..., 0])
        return zero, zero
    slope_lower = degree * (coefficients[..., 1] - coefficients[..., 0])
    slope_upper = degree * (coefficients[..., -1] - coefficients[..., -2])
    return slope_lower, slope_upper


def _evaluate(t, coefficients, degree, extrapolation):
    """Value of the polynomial (with extrapolation) at `t`; plain autodiff-able."""
    scaled = _scaled(coefficients, degree)
    if extrapolation == "polynomial":
        return _bernstein_sum(t, scaled)
    inside = ops.clip(t, 0.0, 1.0)
    values = _bernstein_sum(inside, scaled)
    if extrapolation == "clip":
        return values
    # Linear: add the end slope times the distance past the end. `t - inside`
    # is 0 inside, so the branch costs a select and a multiply-add.
    slope_lower, slope_upper = end_slopes(coefficients)
    slope = ops.where(ops.less(t, 0.0), slope_lower, slope_upper)
    return ops.add(values, ops.multiply(slope, ops.subtract(t, inside)))


def _slope_in_t(t, coefficients, degree, extrapolation):
    """`dσ/dt` at `t` for the given extrapolation (0 outside for `"clip"`)."""
    derivative = derivative_coefficients(coefficients)
    scaled = _scaled(derivative, degree - 1)
    if extrapolation == "polynomial":
        return _bernstein_sum(t, scaled)
    # At a clamped t the derivative polynomial equals the end slope, which is
    # exactly the linear extrapolation's slope.
    slope = _bernstein_sum(ops.clip(t, 0.0, 1.0), scaled)
    if extrapolation == "linear":
        return slope
    outside = ops.logical_or(ops.less(t, 0.0), ops.greater(t, 1.0))
    return ops.where(outside, ops.zeros_like(slope), slope)


def _sum_to_shape(tensor, shape):
    """Sums `tensor` over the axes that broadcasting added to `shape`."""
    leading = len(tensor.shape) - len(shape)
    if leading:
        tensor = ops.sum(tensor, axis=tuple(range(leading)))
    axes = tuple(
        i for i, size in enumerate(shape) if size == 1 and tensor.shape[i] != 1
    )
    if axes:
        tensor = ops.sum(tensor, axis=axes, keepdims=True)
    return tensor


def _with_lean_gradient(extrapolation):
    """The polynomial as a function with a hand-written, recomputing backward.

    Plain autodiff of the Horner loop keeps about `2 n` tensors of the input's
    size for the backward pass. This backward keeps only the inputs and
    recomputes: `dσ/dx = σ_t / (u - l)` (one Horner pass of degree n - 1),
    `dσ/dc_k = b_{n,k}(t)` reduced over the batch, and the bounds' gradients
    from `dt/dl = (t - 1)/(u - l)`, `dt/du = -t/(u - l)`.
    """

    @ops.custom_gradient
    def polynomial(x, coefficients, bounds):
        degree = coefficients.shape[-1] - 1
        t = to_unit_interval(x, bounds)
        values = _evaluate(t, coefficients, degree, extrapolation)

        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            width = bounds[..., 1] - bounds[..., 0]
            t_slope = _slope_in_t(t, coefficients, degree, extrapolation)
            weighted = ops.multiply(upstream, t_slope)
            grad_x = _sum_to_shape(ops.divide(weighted, width), x.shape)
            basis_at = t if extrapolation == "polynomial" else ops.clip(t, 0.0, 1.0)
            basis = bernstein_basis(basis_at, degree)
            grad_c = _sum_to_shape(
                ops.multiply(ops.expand_dims(upstream, -1), basis), coefficients.shape
            )
            if extrapolation == "linear" and degree >= 1:
                # relu, not minimum(x, 0.0): Keras' torch backend casts a
                # float64 tensor paired with a Python float to float32.
                overshoot = ops.subtract(t, basis_at)
                below = _sum_to_shape(
                    -upstream * ops.relu(-overshoot), coefficients.shape[:-1]
                )
                above = _sum_to_shape(
                    upstream * ops.relu(overshoot), coefficients.shape[:-1]
                )
                unit = np.eye(degree + 1, dtype="float64")
                lower_pattern = ops.convert_to_tensor(
                    degree * (unit[1] - unit[0]), dtype=coefficients.dtype
                )
                upper_pattern = ops.convert_to_tensor(
                    degree * (unit[-1] - unit[-2]), dtype=coefficients.dtype
                )
                grad_c = grad_c + (
                    ops.expand_dims(below, -1) * lower_pattern
                    + ops.expand_dims(above, -1) * upper_pattern
                )
            grad_lower = _sum_to_shape(weighted * (t - 1.0), width.shape) / width
            grad_upper = -_sum_to_shape(weighted * t, width.shape) / width
            grad_bounds = ops.stack([grad_lower, grad_upper], axis=-1)
            return grad_x, grad_c, grad_bounds

        return values, gradient

    return polynomial


_LEAN = {}


def bernstein_polynomial(x, coefficients, bounds, extrapolation="linear"):
    """Evaluates one Bernstein polynomial per neuron at `x`.

    Args:
        x: Input tensor; its trailing axes broadcast against
            `coefficients.shape[:-1]`.
        coefficients: Tensor `(..., degree + 1)`.
        bounds: Tensor `(..., 2)` holding `(l, u)` with `l < u`.
        extrapolation: Behaviour outside `[l, u]`:
            `"linear"` continues with the value and slope at the nearest end
            (C^1, unbounded slope guarantee), `"clip"` holds the end value
            (zero slope outside), `"polynomial"` evaluates the polynomial
            itself.

    Returns:
        Tensor of the broadcast shape of `x` and the neuron axes. NaN inputs
        give NaN outputs. On JAX its gradient (with respect to all three
        inputs) is hand-written and recomputes instead of storing the basis;
        elsewhere it is plain autodiff. Both are tested to agree.
    """
    check_extrapolation(extrapolation)
    degree = _degree_of(coefficients)
    x = ops.convert_to_tensor(x)
    coefficients = ops.convert_to_tensor(coefficients)
    bounds = ops.convert_to_tensor(bounds)
    if (
        keras.backend.backend() != "jax"
        or degree == 0
        or len(x.shape) < len(coefficients.shape) - 1
    ):
        # The recomputing backward pays only where XLA fuses it (JAX's `fit`
        # default): measured 2.75x -> 1.23x of ReLU's step there, but slower
        # than autodiff on op-by-op TensorFlow-CPU graphs and eager PyTorch,
        # whose cost is the number of kernels (benchmarks/step_time.py).
        t = to_unit_interval(x, bounds)
        return _evaluate(t, coefficients, degree, extrapolation)
    if extrapolation not in _LEAN:
        _LEAN[extrapolation] = _with_lean_gradient(extrapolation)
    return _LEAN[extrapolation](x, coefficients, bounds)


def derivative_coefficients(coefficients):
    """Coefficients of `dσ/dt`: `n (c_{k+1} - c_k)`, a polynomial of degree n-1."""
    degree = _degree_of(coefficients)
    if degree == 0:
        return ops.zeros_like(coefficients)
    return degree * (coefficients[..., 1:] - coefficients[..., :-1])


def bernstein_derivative(x, coefficients, bounds, extrapolation="linear"):
    """`dσ/dx` of `bernstein_polynomial` with the same arguments.

    Inside `[l, u]` this is `n / (u - l) * sum_k (c_{k+1} - c_k) b_{n-1,k}(t)`;
    outside it is the end slope (`"linear"`), zero (`"clip"`) or the
    polynomial's own derivative (`"polynomial"`).
    """
    check_extrapolation(extrapolation)
    degree = _degree_of(coefficients)
    if degree == 0:
        return ops.zeros_like(to_unit_interval(x, bounds))
    t = to_unit_interval(x, bounds)
    width = bounds[..., 1] - bounds[..., 0]
    return ops.divide(_slope_in_t(t, coefficients, degree, extrapolation), width)


def derivative_lower_bound(coefficients, bounds):
    """Guaranteed minimum of `dσ/dx` on `[l, u]`: `n min_k (c_{k+1} - c_k) / (u - l)`.

    With `"linear"` extrapolation the bound holds on the whole real line. It
    is positive exactly when the coefficients increase strictly, and may be
    negative otherwise (then it is still a valid, if useless, lower bound).
    """
    derivative = derivative_coefficients(coefficients)
    width = bounds[..., 1] - bounds[..., 0]
    return ops.divide(ops.min(derivative, axis=-1), width)


def coefficient_range(coefficients):
    """Range enclosure on `[l, u]`: `(min_k c_k, max_k c_k)` stacked on a last axis of 2."""
    return ops.stack(
        [ops.min(coefficients, axis=-1), ops.max(coefficients, axis=-1)], axis=-1
    )
