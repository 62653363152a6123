"""The portable formulas of the Bernstein polynomial, which every fast path mirrors.

A leaf: it imports only Keras, NumPy and the standard library. `ops` checks
the arguments and picks an implementation; the fast paths of `_fast` (C++
kernels, XLA functions, TorchInductor, PyTorch's in-place kernels) compute
what these functions compute, and are tested against them.

The conventions are `ops`': `coefficients` `(..., degree + 1)`, `bounds`
`(..., 2)` of `(l, u)`, `t = (x - l) / (u - l)`, the polynomial
`sum_k c_k C(n, k) t^k (1 - t)^(n - k)`.

Evaluation never calls `pow`: `_bernstein_sum` runs a Horner-like recurrence
in `t` and `1 - t` (about four multiply-adds per degree), whose terms are all
nonnegative products, so its float32 error stays within a few `n * eps` of
the condition scale `sum_k |c_k| b_k(t)` even at degree 24.

A few steps have a backend's own form with the same values and derivatives
(`Primitives`): `ops` installs them once at import (`use_primitives`), so the
formulas stay portable and cost no dispatch per call.
"""

import collections
import functools
import math

import numpy as np
from keras import ops

# The extrapolation modes, in the order whose index the C++ kernels take as
# their `mode` (`_fast/bernstein_cpu.h`).
EXTRAPOLATION_MODES = ("linear", "clip", "polynomial")

# The highest degree evaluated to the documented float32 accuracy. Above about
# 110 the basis products `t^k (1 - t)^(n - k)` of the backward pass fall below
# float32's smallest normal number (`2^-126` at `k = n / 2`) and XLA flushes
# them to zero, and from 126 on the binomials times the end slopes overflow.
MAX_DEGREE = 100


def binomials(degree):
    """`C(degree, k)` for `k = 0 ... degree` as a float64 NumPy array."""
    return np.array([math.comb(degree, k) for k in range(degree + 1)], "float64")


def _degree_of(coefficients):
    """The degree `n` of a `(..., n + 1)` coefficient table; a `ValueError`
    where its last axis is unknown or the degree is not from 0 to
    `MAX_DEGREE`."""
    size = coefficients.shape[-1] if len(coefficients.shape) else None
    if size is not None and 1 <= size <= MAX_DEGREE + 1:
        return size - 1
    return _degree_of_shape(tuple(coefficients.shape))


def _degree_of_shape(shape):
    degree = shape[-1] - 1 if shape and shape[-1] is not None else None
    if degree is None or not 0 <= degree <= MAX_DEGREE:
        raise ValueError(
            "The last axis of `coefficients` must be static and hold degree + 1 "
            f"values, a degree from 0 to {MAX_DEGREE} (above it float32 cannot "
            "evaluate the polynomial and its gradients accurately). "
            f"Received: coefficients.shape={_plain_shape(shape)}"
        )
    return degree


def _plain_shape(shape):
    """`shape` as a tuple of ints and None, as every backend prints it; a
    symbolic size (JAX's shape polymorphism: `model.export`) kept as it is,
    which has no integer value."""
    return tuple(
        int(size) if hasattr(size, "__index__") else size for size in shape
    )


def _bernstein_sum(t, coefficients):
    """`sum_k c_k C(n, k) t^k (1 - t)^(n - k)`; see `_sum_of_scaled_columns`."""
    return _sum_of_scaled_columns(t, _scaled_columns(coefficients))


def _scaled_columns(coefficients):
    """`[c_k C(n, k) for k in 0..n]`, one tensor per degree. The binomials
    scale each coefficient column separately, as Python floats, so a
    `(units, n + 1)` table stored degree axis first is read contiguously
    (`_fast/torch_compilation`)."""
    degree = _degree_of(coefficients)
    return [
        ops.multiply(coefficients[..., k], float(math.comb(degree, k)))
        for k in range(degree + 1)
    ]


def _sum_of_scaled_columns(t, terms):
    """`sum_k terms[k] t^k (1 - t)^(n - k)`, `terms` from `_scaled_columns`.

    Horner in `1 - t` with a running power of `t`: after step `k` the
    accumulator holds `sum_{j <= k} c_j C(n, j) t^j (1 - t)^(k - j)`.
    """
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


def to_unit_interval(x, bounds):
    """`t = (x - l) / (u - l)`, the argument of the basis functions."""
    lower = bounds[..., 0]
    upper = bounds[..., 1]
    return ops.divide(ops.subtract(x, lower), ops.subtract(upper, lower))


def _basis_terms(t, degree, weight=None):
    """`[weight * t^k (1 - t)^(n - k) for k in 0..n]`, unstacked and without
    the binomials `C(n, k)`, which the caller applies (to the per-neuron sums
    in the backward pass, where they cost nothing per element).

    A list, so that a sum of each term over the batch can fuse with the
    products that make it (`_sums_to_shape`). Two multiplies per term plus
    the powers of `1 - t`: XLA-CPU runs those sums as a scalar loop.
    """
    s = ops.subtract(1.0, t)
    s_powers = [None, s]
    for _ in range(degree - 1):
        s_powers.append(ops.multiply(s_powers[-1], s))
    weighted_power = ops.ones_like(t) if weight is None else weight
    terms = []
    for k in range(degree + 1):
        if k:
            weighted_power = ops.multiply(weighted_power, t)
        terms.append(
            ops.multiply(weighted_power, s_powers[degree - k]) if degree - k else weighted_power
        )
    return terms


def end_slopes(coefficients):
    """Slopes `dσ/dt` at `t = 0` and `t = 1`: `n (c_1 - c_0)`, `n (c_n - c_{n-1})`."""
    degree = _degree_of(coefficients)
    if degree == 0:
        zero = ops.zeros_like(coefficients[..., 0])
        return zero, zero
    slope_lower = degree * (coefficients[..., 1] - coefficients[..., 0])
    slope_upper = degree * (coefficients[..., -1] - coefficients[..., -2])
    return slope_lower, slope_upper


def derivative_coefficients(coefficients):
    """Coefficients of `dσ/dt`: `n (c_{k+1} - c_k)`, a polynomial of degree n-1."""
    degree = _degree_of(coefficients)
    if degree == 0:
        return ops.zeros_like(coefficients)
    return degree * (coefficients[..., 1:] - coefficients[..., :-1])


# |t| beyond which linear extrapolation saturates: t = (x - l) / (u - l)
# overflows float32 for huge x on narrow bounds, and inf * slope is not finite.
_T_LIMIT = 1e30


def _unit_and_overshoot(x, bounds):
    """`(t, overshoot)`: `t = (x - l) / (u - l)` and `t - clip(t, 0, 1)`.

    The overshoot is computed from `t` limited to `±1e30`, so finite inputs
    of any size give finite linear extrapolations.
    """
    t = to_unit_interval(x, bounds)
    return t, _overshoot(t)


def _unit_clip(t):
    """`clip(t, 0, 1)`, whose derivative is NaN at NaN (as in the hand-written
    gradients): the backend's `Primitives.unit_clip` (on PyTorch, whose
    compiled path differentiates this formula, an autograd function)."""
    return _primitives.unit_clip(t)


def _portable_unit_clip(t):
    return ops.clip(t, 0.0, 1.0)


def _overshoot(t):
    """`t - clip(t, 0, 1)`, from `t` limited to `±1e30` (`_unit_and_overshoot`).

    Its derivative is 1 outside `[0, 1]` also beyond the limit, as in the
    hand-written gradients: the backend's `Primitives.overshoot` (on PyTorch,
    whose compiled path differentiates this formula, an autograd function).
    """
    return _primitives.overshoot(t)


def _portable_overshoot(t):
    limited = ops.clip(t, -_T_LIMIT, _T_LIMIT)
    return ops.subtract(limited, ops.clip(t, 0.0, 1.0))


def _evaluate(x, coefficients, bounds, extrapolation):
    """Value of the polynomial (with extrapolation) at `x`; plain autodiff-able."""
    t, overshoot = _unit_and_overshoot(x, bounds)
    slopes = _linear_slopes(coefficients) if extrapolation == "linear" else None
    return _evaluate_at(t, overshoot, _scaled_columns(coefficients), slopes, extrapolation)


def _linear_slopes(coefficients):
    """`(slope_lower, slope_upper - slope_lower)` of `end_slopes`, the two
    per-neuron factors of linear extrapolation in `_evaluate_at`."""
    slope_lower, slope_upper = end_slopes(coefficients)
    return slope_lower, slope_upper - slope_lower


def _evaluate_at(t, overshoot, columns, slopes, extrapolation):
    """`_evaluate` from `t` and the overshoot (`_unit_and_overshoot`), the
    scaled coefficient columns (`_scaled_columns`) and, for `"linear"`,
    `_linear_slopes`."""
    if extrapolation == "polynomial":
        return _sum_of_scaled_columns(t, columns)
    # A huge t clips to the end exactly; NaN stays NaN.
    values = _sum_of_scaled_columns(_unit_clip(t), columns)
    if extrapolation == "clip":
        return values
    # Linear: the end value plus the end slope times the overshoot, which is
    # 0 inside. (Written with the overshoot in x units, XLA-CPU fuses it
    # worse.) The overshoot's sign picks the end by a relu, not by a boolean
    # mask, which TorchInductor's autodiff would store for the backward pass,
    # slowly.
    slope_lower, bend = slopes
    bend = ops.multiply(bend, ops.relu(overshoot))
    return ops.add(values, ops.add(ops.multiply(slope_lower, overshoot), bend))


def _polynomial_tables(coefficients, bounds):
    """`(lower, scale, shift, columns, slope_lower, bend)`: what `_evaluate`
    derives from the coefficient and bound tables alone, once per neuron:
    `t = (x - lower) * scale + shift` (here `scale = 1 / (u - l)`, `shift =
    0`), the coefficients scaled by their binomials (`_scaled_columns`,
    stacked degree axis first) and `_linear_slopes`.
    `_evaluate_from_tables` with them computes `_evaluate`'s values, `t`
    by a multiplication instead of a division (as XLA computes it; a width
    below `1 / max float` would overflow the reciprocal).

    For inference on PyTorch-CPU (`_fast/torch_compilation`): TorchInductor
    computes such constants again for every element of its loop.
    """
    lower = bounds[..., 0]
    scale = ops.divide(1.0, ops.subtract(bounds[..., 1], lower))
    columns = ops.stack(_scaled_columns(coefficients), axis=0)
    return (lower, scale, ops.zeros_like(lower), columns, *_linear_slopes(coefficients))


def _evaluate_from_tables(x, center, scale, shift, columns, slope_lower, bend, extrapolation):
    """`_evaluate` from `_polynomial_tables` (or `_normalized_tables`)."""
    t = ops.add(ops.multiply(ops.subtract(x, center), scale), shift)
    return _evaluate_at(
        t,
        _overshoot(t),
        [columns[k] for k in range(columns.shape[0])],
        (slope_lower, bend),
        extrapolation,
    )


def _slope_in_t(t, coefficients, extrapolation):
    """`dσ/dt` at `t` for the given extrapolation (0 outside for `"clip"`)."""
    difference = derivative_coefficients(coefficients)
    if extrapolation == "polynomial":
        return _bernstein_sum(t, difference)
    # At a clamped t the derivative polynomial equals the end slope, which is
    # exactly the linear extrapolation's slope.
    slope = _bernstein_sum(ops.clip(t, 0.0, 1.0), difference)
    if extrapolation == "linear":
        return slope
    outside = ops.logical_or(ops.less(t, 0.0), ops.greater(t, 1.0))  # NaN: False
    return ops.where(outside, ops.zeros_like(slope), slope)


def _evaluate_normalized(
    x, mean, inverse_deviation, scale, offset, coefficients, bounds, extrapolation
):
    """`_evaluate` of the batch-normalized `x`; plain autodiff-able."""
    normalized = (x - mean) * (inverse_deviation * scale) + offset
    return _evaluate(normalized, coefficients, bounds, extrapolation)


def _normalized_tables(mean, inverse_deviation, scale, offset, coefficients, bounds):
    """`_polynomial_tables` for `_evaluate_normalized`: the normalization
    and `t = (x - l) / (u - l)` folded into `t = (x - mean) * factor +
    shift`."""
    lower, reciprocal_width, _, *rest = _polynomial_tables(coefficients, bounds)
    factor = inverse_deviation * scale * reciprocal_width
    return (mean, factor, (offset - lower) * reciprocal_width, *rest)


def _evaluate_batch_normalized(x, scale, offset, coefficients, bounds, epsilon, extrapolation):
    """`(_evaluate_normalized with x's batch statistics, mean, variance)`."""
    mean, variance, inverse_deviation = _batch_statistics(x, epsilon)
    values = _evaluate_normalized(
        x, mean, inverse_deviation, scale, offset, coefficients, bounds, extrapolation
    )
    return values, mean, variance


def _batch_statistics(x, epsilon):
    """Mean, biased variance and `1 / sqrt(variance + epsilon)` of `x` over
    every axis but the last.

    A first mean, then the mean deviation from it and the mean squared
    deviation, which correct the mean and give the variance without
    cancellation. Not `ops.moments`: on PyTorch it takes `E[x^2] - E[x]^2`,
    which cancels for rows of a large mean.
    """
    axes = tuple(range(len(x.shape) - 1))
    rows = tuple(x.shape[:-1])
    if None in rows:  # a graph's unknown batch size
        count = ops.cast(ops.size(x) // ops.shape(x)[-1], x.dtype)
    else:  # a Python number, which TorchInductor traces (not `ops.size`)
        count = math.prod(rows)

    # Not `ops.mean`: on JAX and PyTorch it averages float64 in float32.
    def mean(tensor):
        return ops.sum(tensor, axis=axes) / count

    # Any shift gives the same values and gradients; the closer, the exacter.
    # A float32 mean of many rows can be off by many deviations (XLA-CPU sums
    # in one loop); one correction brings it within a small part of one.
    shift = ops.stop_gradient(mean(x))
    shift = ops.stop_gradient(shift + mean(x - shift))
    deviations = x - shift
    correction = mean(deviations)
    variance = mean(ops.square(deviations)) - ops.square(correction)
    variance = ops.relu(variance)  # Not `ops.maximum`: on PyTorch it returns float32.
    return shift + correction, variance, _inverse_deviation(variance, epsilon)


def _inverse_deviation(variance, epsilon):
    """`1 / sqrt(variance + epsilon)`, the batch normalization's factor."""
    return ops.rsqrt(variance + epsilon)


def _summed_axes(full_shape, shape):
    """`(leading, kept)`: the axes that summing a `full_shape` tensor down to
    `shape` (a shape that broadcasts to it) reduces: the leading axes `shape`
    lacks, and those of `shape` that it holds as 1 (numbered in `shape`)."""
    leading = len(full_shape) - len(shape)
    kept = tuple(
        i for i, size in enumerate(shape) if size == 1 and full_shape[leading + i] != 1
    )
    return tuple(range(leading)), kept


def reduced_axes(full_shape, shape):
    """`_summed_axes` as one tuple of `full_shape`'s axes, for one reduction."""
    leading, kept = _summed_axes(full_shape, shape)
    return leading + tuple(len(leading) + i for i in kept)


def _sum_to_shape(tensor, shape):
    """Sums `tensor` over the axes that broadcasting added to `shape`."""
    leading, kept = _summed_axes(tensor.shape, shape)
    if leading:
        tensor = ops.sum(tensor, axis=leading)
    if kept:
        tensor = ops.sum(tensor, axis=kept, keepdims=True)
    return tensor


def _sums_to_shape(tensors, shape):
    """`[_sum_to_shape(t, shape) for t in tensors]`, by the backend's
    `Primitives.sums_to_shape`: on JAX-CPU and in TensorFlow's XLA functions
    fused variadic reductions, since as separate sums XLA-CPU materialises
    the products they share."""
    return _primitives.sums_to_shape(tensors, shape)


def _batch_sums(function, tensors, neuron_rank, whole_batch):
    """`whole_batch()`, a list of per-neuron sums over the batch axes (the
    axes before the last `neuron_rank`), which `function(*tensors)` also
    computes from the batch-shaped `tensors` alone.

    The backend's `Primitives.batch_sums`: on JAX-GPU a large batch is
    summed in row chunks by `function`, since XLA-GPU stores every product
    it sums, `n + 3` tensors of the batch's size.
    """
    return _primitives.batch_sums(function, tensors, neuron_rank, whole_batch)


def _recomputation_barrier(tensors):
    """`tensors`, hidden from the compiler's common-subexpression elimination
    (the backend's `Primitives.recomputation_barrier`).

    The backward pass builds the same powers of `t` as the forward pass's
    Horner loop; merged, XLA-CPU keeps all of them from the forward pass and
    its reductions then read `n` stored tensors instead of one. Acts on
    JAX-CPU only.
    """
    return _primitives.recomputation_barrier(tensors)


@functools.lru_cache(maxsize=None)
def _gradient_table(degree):
    """The constants of `_parameter_gradients` for degree `n >= 1`, as one
    `(7, n + 1)` float64 array (one conversion per call: on PyTorch each
    `convert_to_tensor` costs as much as the arithmetic here).

    Rows: `n - k` and `k` (the weights of `S_k` in `dL/dl` and `dL/du`),
    `n (e_1 - e_0)` and `n (e_n - e_{n-1})` (the end slopes as combinations
    of the coefficients), `e_0` and `e_n`, and `-e_1`, which with `e_0` puts
    the two bounds' gradients side by side without a `stack`.
    """
    k = np.arange(degree + 1, dtype="float64")
    unit = np.eye(degree + 1)
    return np.stack(
        [
            degree - k,
            k,
            degree * (unit[1] - unit[0]),
            degree * (unit[-1] - unit[-2]),
            unit[0],
            unit[-1],
            -unit[1],
        ]
    )


def _bounds_gradients(basis_sums, coefficients, bounds, table, outside=None):
    """Gradients of a loss with respect to `(l, u)`, from its coefficient sums.

    With `S_m = sum over the batch of g * b_{n,m}(t)` (the coefficient
    gradient of the polynomial part), `t (dσ/dt)` and `dσ/dt` are themselves
    combinations of the basis, `t b_{n-1,k} = (k+1)/n b_{n,k+1}` and
    `b_{n-1,k} = (n-k)/n b_{n,k} + (k+1)/n b_{n,k+1}`, so
    `dL/dl = -sum_k (n-k) (c_{k+1}-c_k) S_k / (u-l)` and
    `dL/du = -sum_k (k+1) (c_{k+1}-c_k) S_{k+1} / (u-l)`: no pass over the
    batch beyond the coefficient gradient's.

    Args:
        basis_sums: `S`, shape `(..., n + 1)`, taken at the points where the
            polynomial itself is evaluated (excluding points whose `dσ/dt` is 0).
        coefficients: `(..., n + 1)`, `n >= 1`.
        bounds: `(..., 2)`.
        table: `_gradient_table(n)` as a tensor of the sums' dtype.
        outside: Optional `sum g (dσ/dt) (t - clip(t, 0, 1))`, the linear
            extrapolation's share, added to `sum g t dσ/dt`.

    Returns:
        Tensor `(..., 2)`.
    """
    width = bounds[..., 1] - bounds[..., 0]
    steps = coefficients[..., 1:] - coefficients[..., :-1]
    # sum g (t - 1) dσ/dt and sum g t dσ/dt, in t units.
    lower = -ops.sum(steps * table[0, :-1] * basis_sums[..., :-1], axis=-1)
    upper = ops.sum(steps * table[1, 1:] * basis_sums[..., 1:], axis=-1)
    if outside is not None:
        lower = lower + outside
        upper = upper + outside
    # (lower, -upper) / width, without an `ops.stack` (slow on PyTorch).
    sides = (lower / width)[..., None] * table[4, :2]
    return sides + (upper / width)[..., None] * table[6, :2]


def _parameter_gradients(basis_sums, coefficients, bounds, extrapolation, below=None, above=None):
    """`(dL/dc, dL/d bounds)` from the basis sums `S` and two sums outside `[l, u]`.

    Args:
        basis_sums: `S_k = sum over the batch of g * b_{n,k}(t)`, `t` clamped
            to `[0, 1]` unless `extrapolation="polynomial"`.
        coefficients: `(..., n + 1)`, `n >= 1`.
        bounds: `(..., 2)`.
        extrapolation: The mode the sums were taken for.
        below, above: `"linear"`: sums of `g` times the overshoot in `t`
            units below and above the interval; `"clip"`: sums of `g` over
            the points below and above (`S_0`, `S_n` count them, but they
            have no slope); unused for `"polynomial"`.
    """
    degree = _degree_of(coefficients)
    # Python operators, not `keras.ops`, for the small arithmetic: they are
    # the backend's own, and `keras.ops` dispatch costs more than the work
    # on PyTorch.
    table = ops.convert_to_tensor(_gradient_table(degree), dtype=basis_sums.dtype)
    if extrapolation == "polynomial":
        return basis_sums, _bounds_gradients(basis_sums, coefficients, bounds, table)
    if extrapolation == "clip":
        inside_sums = basis_sums - (below[..., None] * table[4] + above[..., None] * table[5])
        return basis_sums, _bounds_gradients(inside_sums, coefficients, bounds, table)
    slope_lower, slope_upper = end_slopes(coefficients)
    grad_bounds = _bounds_gradients(
        basis_sums, coefficients, bounds, table, slope_lower * below + slope_upper * above
    )
    # The end values and slopes that linear extrapolation continues with.
    grad_c = basis_sums + (below[..., None] * table[2] + above[..., None] * table[3])
    return grad_c, grad_bounds


def _recomputed_gradients(
    unit_parts, x, coefficients, bounds, upstream, extrapolation, kernel=None
):
    """Gradients of `sum(upstream * σ(x))` with respect to `x`, `c` and `bounds`.

    The hand-written backward of `bernstein_polynomial`. It keeps only the
    input `x` of the forward pass and recomputes the rest from
    `unit_parts(x, bounds) = (t, overshoot, normalized)` (`t` and the
    overshoot as `_unit_and_overshoot` returns them): `dσ/dx = σ_t / (u - l)`
    (one Horner pass of degree n - 1), `dσ/dc_k = b_{n,k}(t)` reduced over
    the batch (plus the end-slope terms of linear extrapolation), and the
    bounds' gradients from those sums (`_parameter_gradients`). Every
    per-neuron sum is taken in one `_batch_sums`. Plain autodiff of the
    Horner loop instead keeps about `2 n` tensors of the input's size.

    `unit_parts=None` stands for the polynomial of `x` itself
    (`_plain_unit_parts`), whose input gradient and sums `kernel(upstream, x,
    coefficients, bounds, extrapolation, reference)` computes where given
    (`_fast/cpu_kernels.gradient_and_sums`, which calls `reference` where it
    does not apply). With `normalized` not
    None (the batch-normalized input before its scale and offset,
    `normalized_bernstein_polynomial`) the same pass also sums the input
    gradient and the input gradient times `normalized`, and returns them as
    a fourth item: the gradients of the normalization's offset and scale.
    """
    reference = functools.partial(
        _gradient_and_sums, unit_parts or _plain_unit_parts, extrapolation=extrapolation
    )
    if kernel is None:
        grad_x, sums = reference(upstream, x, coefficients, bounds)
    else:
        grad_x, sums = kernel(upstream, x, coefficients, bounds, extrapolation, reference)
    grad_c, grad_bounds, normalization_sums = _gradients_from_sums(
        sums, coefficients, bounds, extrapolation
    )
    gradients = (_sum_to_shape(grad_x, x.shape), grad_c, grad_bounds)
    if not normalization_sums:
        return gradients
    return gradients + (normalization_sums,)


def _gradients_from_sums(sums, coefficients, bounds, extrapolation):
    """`(dL/dc, dL/dbounds, rest)` from the per-neuron sums of
    `_gradient_and_sums`; `rest` the sums after the polynomial's (the
    normalization's, where it has them)."""
    degree = _degree_of(coefficients)
    polynomial_terms = _polynomial_sum_count(degree, extrapolation)
    basis_sums = ops.stack(sums[: degree + 1], axis=-1)
    grad_c, grad_bounds = _parameter_gradients(
        basis_sums * ops.cast(binomials(degree), basis_sums.dtype),
        coefficients,
        bounds,
        extrapolation,
        *sums[degree + 1 : polynomial_terms],
    )
    return grad_c, grad_bounds, sums[polynomial_terms:]


def _polynomial_sum_count(degree, extrapolation):
    """How many per-neuron sums the polynomial's backward takes
    (`_gradient_and_sums`): the `degree + 1` basis sums, then the two for
    the ends of `"linear"` and `"clip"`."""
    return degree + 1 + (0 if extrapolation == "polynomial" else 2)


def _plain_unit_parts(x, bounds):
    """`unit_parts` of `_recomputed_gradients` for the polynomial of `x`."""
    return (*_unit_and_overshoot(x, bounds), None)


def _gradient_and_sums(unit_parts, upstream, x, coefficients, bounds, extrapolation):
    """`(dL/dx, sums)` of `_recomputed_gradients`: the input gradient and the
    list of per-neuron sums its other gradients come from (the basis sums,
    then the extrapolation's two, then the normalization's two)."""
    degree = _degree_of(coefficients)
    width = bounds[..., 1] - bounds[..., 0]

    def input_gradient(t, upstream):
        return ops.divide(
            ops.multiply(upstream, _slope_in_t(t, coefficients, extrapolation)), width
        )

    def sums_at(t, overshoot, normalized, upstream, grad_x):
        basis_at = t if extrapolation == "polynomial" else ops.clip(t, 0.0, 1.0)
        terms = _basis_terms(basis_at, degree, weight=upstream)
        if extrapolation == "linear":
            # relu, not minimum/maximum: Keras' torch backend returns float32
            # from those for float64 tensors.
            above = ops.relu(overshoot)
            terms += [upstream * (overshoot - above), upstream * above]
        elif extrapolation == "clip":
            # Points outside count in S_0 or S_n, but have no slope.
            zero = ops.zeros_like(upstream)
            terms += [
                ops.where(ops.less(t, 0.0), upstream, zero),
                ops.where(ops.greater(t, 1.0), upstream, zero),
            ]
        if normalized is not None:
            terms += [grad_x, grad_x * normalized]
        return _sums_to_shape(terms, coefficients.shape[:-1])

    def sums_from_input(x, upstream):
        t, overshoot, normalized = unit_parts(x, bounds)
        grad_x = None if normalized is None else input_gradient(t, upstream)
        return sums_at(t, overshoot, normalized, upstream, grad_x)

    t, overshoot, normalized = unit_parts(x, bounds)
    grad_x = input_gradient(t, upstream)
    sums = _batch_sums(
        sums_from_input,
        (x, upstream),
        len(bounds.shape) - 1,
        lambda: sums_at(t, overshoot, normalized, upstream, grad_x),
    )
    return grad_x, sums


def _normalized_gradients(
    upstream, x, mean, inverse_deviation, scale, offset, coefficients, bounds, extrapolation
):
    """The backward of `σ((x - mean) * inverse_deviation * scale + offset)`
    for fixed statistics, recomputed from `x` in one pass
    (`_recomputed_gradients`): `(g, dL/dscale, dL/doffset, dL/dc,
    dL/dbounds, normalized)`, where `g` is the gradient for the polynomial's
    input and `normalized` is `(x - mean) * inverse_deviation`."""

    def normalize(x):
        return (x - mean) * inverse_deviation

    def unit_parts(x, bounds):
        normalized = normalize(x)
        return (*_unit_and_overshoot(normalized * scale + offset, bounds), normalized)

    grad_input, grad_c, grad_bounds, (grad_offset, grad_scale) = _recomputed_gradients(
        unit_parts, x, coefficients, bounds, upstream, extrapolation
    )
    grad_offset = ops.reshape(grad_offset, ops.shape(offset))
    grad_scale = ops.reshape(grad_scale, ops.shape(scale))
    return grad_input, grad_scale, grad_offset, grad_c, grad_bounds, normalize(x)


def _moving_average(moving, batch, momentum):
    """Keras' BatchNormalization update of a moving statistic."""
    return moving * momentum + batch * (1.0 - momentum)


def _portable_sums_to_shape(tensors, shape):
    return [_sum_to_shape(tensor, shape) for tensor in tensors]


def _whole_batch(function, tensors, neuron_rank, whole_batch):
    return whole_batch()


def _unchanged(tensors):
    return tensors


Primitives = collections.namedtuple(
    "Primitives",
    ["unit_clip", "overshoot", "sums_to_shape", "batch_sums", "recomputation_barrier"],
)
Primitives.__doc__ = """The steps of the formulas that a backend may compute in a form of its own,
with the same values and derivatives:

- `unit_clip(t)`: `clip(t, 0, 1)`, derivative NaN at NaN;
- `overshoot(t)`: `t - clip(t, 0, 1)` from `t` limited to `±_T_LIMIT`,
  derivative 1 outside `[0, 1]` (beyond the limit too), NaN at NaN;
- `sums_to_shape(tensors, shape)`: `[_sum_to_shape(t, shape) for t in tensors]`;
- `batch_sums(function, tensors, neuron_rank, whole_batch)`: `whole_batch()`,
  the backward's per-neuron sums, which `function(*tensors)` also computes
  from the batch-shaped `tensors` alone (in row chunks, say);
- `recomputation_barrier(tensors)`: `tensors`, hidden from a compiler's
  common-subexpression elimination, so that the backward recomputes them.
"""

PORTABLE = Primitives(
    unit_clip=_portable_unit_clip,
    overshoot=_portable_overshoot,
    sums_to_shape=_portable_sums_to_shape,
    batch_sums=_whole_batch,
    recomputation_barrier=_unchanged,
)
_primitives = PORTABLE


def use_primitives(primitives):
    """Makes the formulas use the backend's `primitives` (`Primitives`)."""
    global _primitives
    _primitives = primitives
