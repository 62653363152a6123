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
- The degree is at most `MAX_DEGREE` (100): above it float32 evaluates
  neither the polynomial nor its gradients accurately.
- Arguments are checked on entry, with a `ValueError` naming them: the
  tables' shapes always, the values of `bounds` (finite, `l < u`, usable in
  float32) where they are concrete (NumPy and Python values, eager tensors
  in host memory). Inside a traced function (`jax.jit`, `tf.function`,
  `torch.compile`), on an accelerator, and for Keras variables (the layers
  check their weights where they are set) the values are not read, and an
  empty or inverted interval gives NaN or inf instead of an error.

Evaluation never calls `pow`: `_bernstein_sum` runs a Horner-like recurrence in
`t` and `1 - t` (about four multiply-adds per degree), whose terms are all
nonnegative products, so its float32 error stays within a few `n * eps` of the
condition scale `sum_k |c_k| b_k(t)` even at degree 24.
"""

import functools
import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_bernstein import _arguments

EXTRAPOLATION_MODES = ("linear", "clip", "polynomial")


def binomial_coefficients(degree):
    """`C(degree, k)` for `k = 0 ... degree` as a float64 NumPy array.

    `degree` is an integer from 0 to `MAX_DEGREE` (100).
    """
    degree = _arguments.check_degree(degree, minimum=0)
    return np.array([math.comb(degree, k) for k in range(degree + 1)], "float64")


def bernstein_nodes(degree):
    """The Greville abscissae `k / degree` of the basis, as a NumPy array.

    Setting `c_k = f(l + (u - l) * k / degree)` gives the Bernstein
    approximant of `f` on `[l, u]`; for linear `f` it is exact. `degree` is
    an integer from 1 to `MAX_DEGREE` (100).
    """
    degree = _arguments.check_degree(degree)
    return np.arange(degree + 1, dtype="float64") / degree


# The highest degree the functions here take (`_arguments.MAX_DEGREE`): above
# it float32 evaluates neither the polynomial nor its gradients accurately.
MAX_DEGREE = _arguments.MAX_DEGREE


def _degree_of(coefficients):
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


def _broadcast_shapes(*shapes):
    """The broadcast of static shapes (None: unknown, matches any size), or
    None where two known sizes other than 1 differ."""
    rank = max(len(shape) for shape in shapes)
    result = []
    for axis in range(rank):
        sizes = {
            shape[axis - rank + len(shape)]
            for shape in shapes
            if axis - rank + len(shape) >= 0
        } - {1}
        known = sizes - {None}
        if len(known) > 1:
            return None
        result.append(known.pop() if known else (None if None in sizes else 1))
    return tuple(result)


def _check_tables(coefficients, bounds, x=None, given_bounds=None):
    """Checks the shapes of the `coefficients` and `bounds` tensors (and of
    `x`) before anything reads them, and the values of `given_bounds` (the
    argument `bounds` was converted from) where they are concrete
    (`_concrete_values`). Returns the degree."""
    shapes = (
        tuple(coefficients.shape),
        tuple(bounds.shape),
        None if x is None else tuple(x.shape),
    )
    degree = _checked_shapes.get(shapes)
    if degree is None:
        degree = _check_shapes(*shapes)
        if len(_checked_shapes) < 1024:
            _checked_shapes[shapes] = degree
    check_bounds_values(bounds if given_bounds is None else given_bounds)
    return degree


# Shapes `_check_shapes` accepted -> degree: PyTorch runs the checks in Python
# at every call. (A dict, not `lru_cache`, which torch.compile warns about.)
_checked_shapes = {}


def _check_shapes(coefficients_shape, bounds_shape, x_shape):
    """`_check_tables`' shape checks; returns the degree."""
    degree = _degree_of_shape(coefficients_shape)
    coefficients_shape, bounds_shape = _plain_shape(coefficients_shape), _plain_shape(bounds_shape)
    if not bounds_shape or bounds_shape[-1] != 2:
        raise ValueError(
            "The last axis of `bounds` must hold the two values (l, u). "
            f"Received: bounds.shape={bounds_shape}"
        )
    shapes = [coefficients_shape[:-1], bounds_shape[:-1]]
    received = f"coefficients.shape={coefficients_shape}, bounds.shape={bounds_shape}"
    names = "`coefficients` and `bounds`"
    if x_shape is not None:
        shapes.append(_plain_shape(x_shape))
        received += f", x.shape={_plain_shape(x_shape)}"
        names = "`coefficients`, `bounds` and `x`"
    if _broadcast_shapes(*shapes) is None:
        raise ValueError(
            f"The neuron axes of {names} must broadcast together (the last "
            f"axis of each table holds its values). Received: {received}"
        )
    return degree


def _check_vectors(x, **vectors):
    """Checks that each of `vectors` (the normalization's statistics, scale
    and offset) broadcasts against `x`, before anything reads them."""
    x_shape = _plain_shape(x.shape)
    for name, vector in vectors.items():
        if _broadcast_shapes(x_shape, _plain_shape(vector.shape)) is None:
            raise ValueError(
                f"`{name}` must broadcast against `x` (one value per unit of its "
                f"last axis). Received: {name}.shape={_plain_shape(vector.shape)}, "
                f"x.shape={x_shape}"
            )


def check_bounds_values(bounds, name="bounds"):
    """Raises a `ValueError` naming `name` if `bounds` holds concrete values
    (`_concrete_values`) with a row `(l, u)` that is no interval usable in
    float32 (`_arguments.bounds_problem`)."""
    values = _concrete_values(bounds)
    if values is None or values.size == 0:
        return
    problem = _arguments.bounds_problem(values[..., 0], values[..., 1])
    if problem is not None:
        raise ValueError(
            f"Every row (l, u) of `{name}` must be {problem}. "
            f"Received: {name}={_arguments.describe(values)}"
        )


def _concrete_values(value):
    """`value` as a NumPy array where reading it costs neither a trace nor a
    device synchronization (NumPy and Python values, eager tensors in host
    memory), else None.

    Tensors inside a traced function (`jax.jit`, `tf.function`,
    `torch.compile`) and on an accelerator are checked by shape only, and so
    are Keras variables: the layers check their weights where they are set,
    not at every step.
    """
    if isinstance(value, keras.Variable):
        return None
    if isinstance(value, (np.ndarray, np.generic, numbers.Number, list, tuple)):
        try:
            return np.asarray(value, "float64")
        except (TypeError, ValueError):
            return None
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if isinstance(value, jax.core.Tracer) or not isinstance(value, jax.Array):
            return None
        if not all(device.platform == "cpu" for device in value.devices()):
            return None
    elif backend == "tensorflow":
        import tensorflow as tf

        if not (isinstance(value, tf.Tensor) and hasattr(value, "numpy")):
            return None
        if not tf.executing_eagerly() or "GPU" in value.device or "TPU" in value.device:
            return None
    elif backend == "torch":
        import torch

        if not isinstance(value, torch.Tensor) or value.device.type != "cpu":
            return None
        if torch.compiler.is_compiling():
            return None
        value = value.detach()
    else:
        return None
    return np.asarray(keras.ops.convert_to_numpy(value), "float64")


def check_extrapolation(extrapolation):
    """Returns `extrapolation` if it is a known mode, else raises `ValueError`."""
    if extrapolation not in EXTRAPOLATION_MODES:
        raise ValueError(
            f"`extrapolation` must be one of {EXTRAPOLATION_MODES}. "
            f"Received: extrapolation={extrapolation!r}"
        )
    return extrapolation


def _bernstein_sum(t, coefficients):
    """`sum_k c_k C(n, k) t^k (1 - t)^(n - k)`; see `_sum_of_scaled_columns`."""
    return _sum_of_scaled_columns(t, _scaled_columns(coefficients))


def _scaled_columns(coefficients):
    """`[c_k C(n, k) for k in 0..n]`, one tensor per degree. The binomials
    scale each coefficient column separately, as Python floats, so a
    `(units, n + 1)` table stored degree axis first is read contiguously
    (`_fast/torch_compilation`)."""
    degree = coefficients.shape[-1] - 1
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


def bernstein_basis(t, degree):
    """All `degree + 1` Bernstein basis functions at `t`.

    Args:
        t: Tensor of points, usually in `[0, 1]`.
        degree: Integer `n` from 0 to `MAX_DEGREE` (100).

    Returns:
        Tensor of shape `t.shape + (degree + 1,)` holding
        `C(n, k) t^k (1 - t)^(n - k)`, computed by products of powers
        built by repeated multiplication (no `pow`).
    """
    degree = _arguments.check_degree(degree, minimum=0)
    basis = ops.stack(_basis_terms(ops.convert_to_tensor(t), degree), axis=-1)
    return ops.multiply(basis, ops.cast(binomial_coefficients(degree), basis.dtype))


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
    gradients): on PyTorch, whose compiled path differentiates this formula,
    by an autograd function (`_fast/torch_polynomial`)."""
    if keras.backend.backend() == "torch":
        from keras_bernstein._fast import torch_polynomial

        return torch_polynomial.unit_clamp(t)
    return ops.clip(t, 0.0, 1.0)


def _overshoot(t):
    """`t - clip(t, 0, 1)`, from `t` limited to `±1e30` (`_unit_and_overshoot`).

    Its derivative is 1 outside `[0, 1]` also beyond the limit, as in the
    hand-written gradients: on PyTorch, whose compiled path differentiates
    this formula, by an autograd function (`_fast/torch_polynomial`).
    """
    if keras.backend.backend() == "torch":
        from keras_bernstein._fast import torch_polynomial

        return torch_polynomial.limited_overshoot(t)
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
    # 0 inside. (Written with the overshoot in x units, XLA-CPU fused it worse:
    # 2.4x instead of 1.6x of ReLU's step at degree 8 with batch norm.) The
    # overshoot's sign picks the end by a relu, not by a boolean mask, which
    # TorchInductor's autodiff would store for the backward pass: storing a
    # (256, 512) mask took it 1.6 ms on one CPU thread, the rest 0.3 ms.
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


def _sums_to_shape(tensors, shape):
    """`[_sum_to_shape(t, shape) for t in tensors]`.

    On JAX-CPU and in TensorFlow's XLA functions they are fused variadic
    reductions (`_fast/jax_reductions`, `_fast/tensorflow_compilation`): as
    separate sums, XLA-CPU materialises the products they share.
    """
    backend = keras.backend.backend()
    reductions = None
    if backend == "jax":
        from keras_bernstein._fast import jax_reductions as reductions
    elif backend == "tensorflow":
        from keras_bernstein._fast import tensorflow_compilation as reductions
    if reductions is not None and reductions.fuses_many_sums():
        return reductions.sum_many_to_shape(tensors, shape)
    return [_sum_to_shape(tensor, shape) for tensor in tensors]


@functools.lru_cache(maxsize=None)
def _gradient_table(degree):
    """The constants of `_parameter_gradients` for degree `n >= 1`, as one
    `(7, n + 1)` float64 array (one conversion per call: on PyTorch each
    `convert_to_tensor` costs about as much as the arithmetic here).

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
    # (lower, -upper) / width; `ops.stack` measured 0.1 ms on PyTorch.
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
    # the backend's own, and `keras.ops` dispatch cost more than the work
    # on PyTorch (this function ran 0.5 ms per call for a (512, 9) table).
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


def _recomputed_gradients(unit_parts, x, coefficients, bounds, upstream, extrapolation):
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
    (`_plain_unit_parts`), whose input gradient and sums a kernel of our own
    computes on JAX- and TensorFlow-CPU (`_cpu_kernels`). With `normalized` not
    None (the batch-normalized input before its scale and offset,
    `normalized_bernstein_polynomial`) the same pass also sums the input
    gradient and the input gradient times `normalized`, and returns them as
    a fourth item: the gradients of the normalization's offset and scale.
    """
    reference = functools.partial(
        _gradient_and_sums, unit_parts or _plain_unit_parts, extrapolation=extrapolation
    )
    kernel = _cpu_kernels() if unit_parts is None else None
    if kernel is None:
        grad_x, sums = reference(upstream, x, coefficients, bounds)
    else:
        grad_x, sums = kernel.gradient_and_sums(
            upstream, x, coefficients, bounds, extrapolation, reference
        )
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
    degree = coefficients.shape[-1] - 1
    polynomial_terms = _polynomial_sum_count(degree, extrapolation)
    basis_sums = ops.stack(sums[: degree + 1], axis=-1)
    grad_c, grad_bounds = _parameter_gradients(
        basis_sums * ops.cast(binomial_coefficients(degree), basis_sums.dtype),
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
    degree = coefficients.shape[-1] - 1
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


def _normalization_kernel_applies(x, coefficients, bounds):
    """Whether `batch_normalized_bernstein_polynomial` of `x` with these
    tables runs as C++ kernels (JAX- or TensorFlow-CPU, float32;
    `_fast/cpu_kernels`)."""
    kernel = _cpu_kernels()
    return kernel is not None and kernel.batch_normalized_applies(
        x, ops.convert_to_tensor(coefficients), ops.convert_to_tensor(bounds)
    )


def _cpu_kernels():
    """`_fast/cpu_kernels` on JAX and TensorFlow, else None: the polynomial
    and its backward as C++ kernels on CPU, where they apply (each of its
    functions otherwise calls the portable `reference` it is given)."""
    if keras.backend.backend() not in ("jax", "tensorflow"):
        return None
    from keras_bernstein._fast import cpu_kernels

    return cpu_kernels


def _batch_sums(function, tensors, neuron_rank, whole_batch):
    """`whole_batch()`, a list of per-neuron sums over the batch axes (the
    axes before the last `neuron_rank`), which `function(*tensors)` also
    computes from the batch-shaped `tensors` alone.

    On JAX-GPU a large batch is summed in row chunks by `function`
    (`_fast/jax_reductions.sums_in_row_chunks`): XLA-GPU stores every
    product it sums, `n + 3` tensors of the batch's size.
    """
    if keras.backend.backend() == "jax":
        from keras_bernstein._fast import jax_reductions

        return jax_reductions.sums_in_row_chunks(function, tensors, neuron_rank, whole_batch)
    return whole_batch()


def _recomputation_barrier(tensors):
    """`tensors`, hidden from the compiler's common-subexpression elimination.

    The backward pass builds the same powers of `t` as the forward pass's
    Horner loop; merged, XLA-CPU keeps all of them from the forward pass and
    its reductions then read `n` stored tensors instead of one (degree 8:
    1.9x -> 1.45x of ReLU's training step). Acts on JAX-CPU only
    (`_fast/jax_reductions.recomputation_barrier`).
    """
    if keras.backend.backend() == "jax":
        from keras_bernstein._fast import jax_reductions

        return jax_reductions.recomputation_barrier(tensors)
    return tensors


def _with_gradient(forward, backward, runs_kernels=None):
    """`forward` as a function whose gradient is `backward(upstream, *inputs,
    *statistics)`.

    `backward` returns one gradient per input and recomputes what it needs
    from the inputs, so a training step keeps nothing of the forward pass but
    its inputs. Where `forward` returns a tuple, only its first item carries
    a gradient (`upstream` is that item's); the others are per-neuron
    statistics, which callers return through `ops.stop_gradient` and which
    `backward` receives after the inputs (small, and so kept rather than
    recomputed). The inputs are `(x, ..., bounds)`, `x` the batch-shaped one.
    On TensorFlow forward and backward are each compiled by XLA
    (`_fast/tensorflow_compilation`), unless `runs_kernels(*inputs)`: they
    then call C++ kernels, which XLA cannot compile.
    """
    if keras.backend.backend() == "tensorflow":
        from keras_bernstein._fast import tensorflow_compilation

        return tensorflow_compilation.with_gradient(forward, backward, runs_kernels)
    from keras_bernstein._fast import statistics_of

    @ops.custom_gradient
    def function(*inputs):
        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            if isinstance(upstream, (tuple, list)):
                upstream = upstream[0]
            return backward(upstream, *inputs, *statistics)

        outputs = forward(*inputs)
        statistics = statistics_of(outputs)
        return outputs, gradient

    return function


@functools.lru_cache(maxsize=None)
def _with_lean_gradient(extrapolation):
    """The polynomial as a function whose backward is `_recomputed_gradients`,
    recomputing `t` and the overshoot from `x`."""

    def evaluate(x, coefficients, bounds):
        return _evaluate(x, coefficients, bounds, extrapolation)

    def forward(x, coefficients, bounds):
        kernel = _cpu_kernels()
        if kernel is None:
            return evaluate(x, coefficients, bounds)
        return kernel.values(x, coefficients, bounds, extrapolation, evaluate)

    def backward(upstream, x, coefficients, bounds):
        (x,) = _recomputation_barrier((x,))
        return _recomputed_gradients(None, x, coefficients, bounds, upstream, extrapolation)

    def runs_kernels(x, coefficients, bounds):
        return _cpu_kernels().polynomial_applies(x, coefficients, bounds)

    return _with_gradient(forward, backward, runs_kernels)


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
        give NaN outputs; finite inputs of any size give finite outputs with
        `"linear"` and `"clip"` (the overshoot is taken in the units of `x`).
        The gradient (with respect to all three inputs) recomputes instead of
        storing the basis: a custom gradient on JAX and TensorFlow (on
        their CPUs C++ kernels of our own, on TensorFlow otherwise compiled
        by XLA), the formula compiled by TorchInductor on PyTorch-CPU, one
        in-place autograd node on PyTorch otherwise
        (`keras_bernstein/_fast`). All are tested against autodiff of the
        same formula.
    """
    check_extrapolation(extrapolation)
    given_bounds = bounds
    x = ops.convert_to_tensor(x)
    coefficients = ops.convert_to_tensor(coefficients)
    bounds = ops.convert_to_tensor(bounds)
    degree = _check_tables(coefficients, bounds, x, given_bounds)
    if degree == 0 or len(x.shape) < len(coefficients.shape) - 1:
        return _evaluate(x, coefficients, bounds, extrapolation)
    if keras.backend.backend() == "torch":
        from keras_bernstein._fast import torch_compilation
        from keras_bernstein._fast import torch_polynomial

        if _torch_compiles(x, degree):
            return torch_compilation.call(
                _evaluate,
                x,
                coefficients,
                bounds,
                tabulated=(_evaluate_from_tables, _polynomial_tables),
                extrapolation=extrapolation,
            )
        return torch_polynomial.bernstein_polynomial(
            x, coefficients, bounds, extrapolation
        )
    return _with_lean_gradient(extrapolation)(x, coefficients, bounds)


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


@functools.lru_cache(maxsize=None)
def _with_lean_normalized_gradient(extrapolation):
    """`normalized_bernstein_polynomial`'s function, whose backward keeps only
    the unnormalized input: the normalization and `t` are recomputed from it,
    and the normalization's own sums join the polynomial's in one pass
    (`_recomputed_gradients`). The gradients for `mean` and
    `inverse_deviation` reach `x` through autodiff of the batch statistics.
    """

    def forward(x, mean, inverse_deviation, scale, offset, coefficients, bounds):
        return _evaluate_normalized(
            x, mean, inverse_deviation, scale, offset, coefficients, bounds, extrapolation
        )

    def backward(upstream, x, mean, inverse_deviation, scale, offset, coefficients, bounds):
        (x,) = _recomputation_barrier((x,))
        grad_input, grad_scale, grad_offset, grad_c, grad_bounds, _ = _normalized_gradients(
            upstream, x, mean, inverse_deviation, scale, offset, coefficients, bounds,
            extrapolation,
        )
        factor = inverse_deviation * scale
        return (
            grad_input * factor,
            -factor * grad_offset,
            scale * grad_scale / inverse_deviation,
            grad_scale,
            grad_offset,
            grad_c,
            grad_bounds,
        )

    return _with_gradient(forward, backward)


def normalized_bernstein_polynomial(
    x, mean, inverse_deviation, scale, offset, coefficients, bounds, extrapolation="linear"
):
    """`bernstein_polynomial` of a batch-normalized `x`, as one function.

    Computes `bernstein_polynomial((x - mean) * inverse_deviation * scale +
    offset, coefficients, bounds, extrapolation)`: `BernsteinDense`'s
    BatchNormalization -> Bernstein. Its backward keeps only `x` (not the
    normalized tensor and `t`) and takes the normalization's two per-neuron
    sums in the polynomial's pass; the gradients for `mean` and
    `inverse_deviation` flow on to `x` by autodiff where they are batch
    statistics of it.

    Args:
        x: Input tensor; normalized along its last axis.
        mean, inverse_deviation, scale, offset: Tensors of shape `(units,)`:
            the statistics (`1 / sqrt(variance + epsilon)`) and the
            normalization's learned scale and offset.
        coefficients: Tensor `(..., degree + 1)`, as in `bernstein_polynomial`.
        bounds: Tensor `(..., 2)`.
        extrapolation: As in `bernstein_polynomial`.

    Returns:
        Tensor of the shape of `x`.
    """
    check_extrapolation(extrapolation)
    tensors = [
        ops.convert_to_tensor(value)
        for value in (x, mean, inverse_deviation, scale, offset, coefficients, bounds)
    ]
    degree = _check_tables(tensors[5], tensors[6], tensors[0], bounds)
    _check_vectors(
        tensors[0],
        **dict(zip(("mean", "inverse_deviation", "scale", "offset"), tensors[1:5])),
    )
    if _torch_compiles(tensors[0], degree):
        from keras_bernstein._fast import torch_compilation

        return torch_compilation.call(
            _evaluate_normalized,
            *tensors,
            tabulated=(_evaluate_from_tables, _normalized_tables),
            extrapolation=extrapolation,
        )
    if degree == 0:
        return _evaluate_normalized(*tensors, extrapolation)
    return _with_lean_normalized_gradient(extrapolation)(*tensors)


def _evaluate_batch_normalized(x, scale, offset, coefficients, bounds, epsilon, extrapolation):
    """`(_evaluate_normalized with x's batch statistics, mean, variance)`."""
    mean, variance, inverse_deviation = _batch_statistics(x, epsilon)
    values = _evaluate_normalized(
        x, mean, inverse_deviation, scale, offset, coefficients, bounds, extrapolation
    )
    return values, mean, variance


@functools.lru_cache(maxsize=None)
def _with_lean_batch_normalized_gradient(extrapolation, epsilon):
    """`batch_normalized_bernstein_polynomial` as one function: the batch
    statistics, the normalization and the polynomial in the forward pass;
    in the backward, the batch normalization's whole input gradient,
    `scale * inverse_deviation * (g - (sum g + normalized * sum g *
    normalized) / count)` with `g` the polynomial's input gradient, from the
    sums that `_recomputed_gradients` takes in its one pass. It keeps `x`
    and the forward pass's per-neuron mean and variance: recomputing them
    cost the backward two more passes over `x` and, on TensorFlow, a stored
    tensor of squared deviations. On JAX- and TensorFlow-CPU both passes run
    as C++ kernels where they apply (`_cpu_kernels`).
    """

    def evaluate(x, scale, offset, coefficients, bounds):
        return _evaluate_batch_normalized(
            x, scale, offset, coefficients, bounds, epsilon, extrapolation
        )

    def forward(x, scale, offset, coefficients, bounds):
        kernel = _cpu_kernels()
        if kernel is None:
            return evaluate(x, scale, offset, coefficients, bounds)
        return kernel.batch_normalized_values(
            x, scale, offset, coefficients, bounds, epsilon, extrapolation, evaluate
        )

    def gradients(upstream, x, scale, offset, coefficients, bounds, mean, variance):
        (x,) = _recomputation_barrier((x,))
        inverse_deviation = _inverse_deviation(variance, epsilon)
        grad_input, grad_scale, grad_offset, grad_c, grad_bounds, normalized = (
            _normalized_gradients(
                upstream, x, mean, inverse_deviation, scale, offset, coefficients, bounds,
                extrapolation,
            )
        )
        count = ops.cast(ops.size(x) // ops.shape(x)[-1], x.dtype)
        centered = grad_input - (grad_offset + normalized * grad_scale) / count
        return (
            (scale * inverse_deviation) * centered,
            grad_scale,
            grad_offset,
            grad_c,
            grad_bounds,
        )

    def from_kernel_sums(grad_x, sums, coefficients, bounds):
        grad_c, grad_bounds, (grad_offset, grad_scale) = _gradients_from_sums(
            sums, coefficients, bounds, extrapolation
        )
        return grad_x, grad_scale, grad_offset, grad_c, grad_bounds

    def backward(upstream, x, scale, offset, coefficients, bounds, mean, variance):
        tensors = (upstream, x, scale, offset, coefficients, bounds, mean, variance)
        kernel = _cpu_kernels()
        if kernel is None:
            return gradients(*tensors)
        return kernel.batch_normalized_gradient(
            *tensors, epsilon, extrapolation, gradients, from_kernel_sums
        )

    def runs_kernels(x, scale, offset, coefficients, bounds):
        return _cpu_kernels().batch_normalized_applies(x, coefficients, bounds, (scale, offset))

    return _with_gradient(forward, backward, runs_kernels)


def batch_normalized_bernstein_polynomial(
    x, scale, offset, coefficients, bounds, epsilon=1e-3, extrapolation="linear"
):
    """`normalized_bernstein_polynomial` with the batch statistics of `x`.

    What `BernsteinDense` computes in training: the mean and the (biased)
    variance over every axis of `x` but the last, then
    `normalized_bernstein_polynomial(x, mean, 1 / sqrt(variance + epsilon),
    scale, offset, coefficients, bounds, extrapolation)`. The statistics are
    part of one function with the polynomial: compiled by TorchInductor on
    PyTorch-CPU (`_fast/torch_compilation`); on JAX and TensorFlow a custom
    gradient that keeps only `x` and takes the whole batch normalization's
    input gradient from the sums of the polynomial's backward pass
    (`_with_lean_batch_normalized_gradient`; on TensorFlow, where Keras runs
    the rest of a CPU step without XLA, this moved the statistics and their
    gradient into the XLA functions).

    Args:
        x: Input tensor; normalized along its last axis.
        scale, offset: Tensors of shape `(units,)`.
        coefficients, bounds, extrapolation: As in `bernstein_polynomial`.
        epsilon: Small float added to the variance.

    Returns:
        `(values, mean, variance)`: values of the shape of `x`; the batch
        mean and variance of shape `(units,)`, for the moving averages (on
        JAX and TensorFlow without a gradient: `values` carries the
        statistics' share of the input gradient).
    """
    check_extrapolation(extrapolation)
    epsilon = _arguments.check_nonnegative_number(epsilon, "epsilon")
    x = ops.convert_to_tensor(x)
    _check_tables(
        ops.convert_to_tensor(coefficients), ops.convert_to_tensor(bounds), x, bounds
    )
    _check_vectors(x, scale=ops.convert_to_tensor(scale), offset=ops.convert_to_tensor(offset))
    if _torch_compiles(x, _degree_of(coefficients)):
        from keras_bernstein._fast import torch_compilation

        return torch_compilation.call(
            _evaluate_batch_normalized,
            x,
            *(ops.convert_to_tensor(v) for v in (scale, offset, coefficients, bounds)),
            epsilon=float(epsilon),
            extrapolation=extrapolation,
        )
    tensors = [ops.convert_to_tensor(v) for v in (scale, offset, coefficients, bounds)]
    degree = _degree_of(tensors[2])
    if degree == 0 or keras.backend.backend() == "torch":
        mean, variance, inverse_deviation = _batch_statistics(x, epsilon)
        values = normalized_bernstein_polynomial(
            x, mean, inverse_deviation, *tensors, extrapolation
        )
        return values, mean, variance
    function = _with_lean_batch_normalized_gradient(extrapolation, float(epsilon))
    values, mean, variance = function(x, *tensors)
    return values, ops.stop_gradient(mean), ops.stop_gradient(variance)


def _batch_statistics(x, epsilon):
    """Mean, biased variance and `1 / sqrt(variance + epsilon)` of `x` over
    every axis but the last.

    A first mean, then the mean deviation from it and the mean squared
    deviation, which correct the mean and give the variance without
    cancellation. Not `ops.moments`: on PyTorch it takes `E[x^2] - E[x]^2`,
    whose variance of 2^19 rows of mean 2000 is off by a factor of 3.
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


def _torch_compiles(x, degree):
    """Whether the polynomial at `x` runs compiled (`_fast/torch_compilation`)."""
    if keras.backend.backend() != "torch":
        return False
    from keras_bernstein._fast import torch_compilation

    return torch_compilation.supports(x, degree)


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
    given_bounds = bounds
    x, coefficients, bounds = (ops.convert_to_tensor(v) for v in (x, coefficients, bounds))
    degree = _check_tables(coefficients, bounds, x, given_bounds)
    t = to_unit_interval(x, bounds)
    if degree == 0:
        return ops.zeros_like(t)
    width = bounds[..., 1] - bounds[..., 0]
    return ops.divide(_slope_in_t(t, coefficients, extrapolation), width)


def derivative_lower_bound(coefficients, bounds):
    """Guaranteed minimum of `dσ/dx` on `[l, u]`: `n min_k (c_{k+1} - c_k) / (u - l)`.

    With `"linear"` extrapolation the bound holds on the whole real line. It
    is positive exactly when the coefficients increase strictly, and may be
    negative otherwise (then it is still a valid, if useless, lower bound).
    """
    given_bounds = bounds
    coefficients, bounds = (ops.convert_to_tensor(v) for v in (coefficients, bounds))
    _check_tables(coefficients, bounds, given_bounds=given_bounds)
    derivative = derivative_coefficients(coefficients)
    width = bounds[..., 1] - bounds[..., 0]
    return ops.divide(ops.min(derivative, axis=-1), width)


def coefficient_range(coefficients):
    """Range enclosure on `[l, u]`: `(min_k c_k, max_k c_k)` stacked on a last axis of 2."""
    return ops.stack(
        [ops.min(coefficients, axis=-1), ops.max(coefficients, axis=-1)], axis=-1
    )


# --- Coefficient transforms: subdivision, degree elevation, range on an interval ---
#
# NumPy float64 helpers: they act on weights (`keras.ops.convert_to_numpy` of a
# layer's variables) and on the interval bounds of `keras_bernstein.verification`,
# never inside a model's graph, and float64 keeps them exact to ~1e-16 where
# JAX's default float32 would not.

RANGE_METHODS = ("subdivision", "coefficient_range")


def _as_float64(values):
    if not isinstance(values, (np.ndarray, np.generic, float, int, list, tuple)):
        values = keras.ops.convert_to_numpy(values)  # a backend tensor or variable
    return np.asarray(values, dtype="float64")


def elevate_coefficients(coefficients, new_degree):
    """Coefficients of the same polynomial in the basis of degree `new_degree`.

    Degree elevation: `c'_j = sum_i C(n, i) C(m - n, j - i) / C(m, j) c_i`
    for `m = new_degree >= n`. The polynomial is unchanged everywhere, and so
    are its end values and end slopes (so every extrapolation mode too).
    NumPy float64.

    Args:
        coefficients: Array `(..., n + 1)`.
        new_degree: Integer `m` from `n` to `MAX_DEGREE` (100).

    Returns:
        Float64 array `(..., m + 1)`.
    """
    coefficients = _as_float64(coefficients)
    degree = coefficients.shape[-1] - 1
    if (
        isinstance(new_degree, bool)
        or not isinstance(new_degree, (int, np.integer))
        or not degree <= new_degree <= MAX_DEGREE
    ):
        raise ValueError(
            f"`new_degree` must be an integer from the current degree {degree} "
            f"to {MAX_DEGREE}. Received: new_degree={new_degree!r}"
        )
    elevation = np.zeros((degree + 1, new_degree + 1))
    for i in range(degree + 1):
        for j in range(i, i + new_degree - degree + 1):
            elevation[i, j] = (
                math.comb(degree, i)
                * math.comb(new_degree - degree, j - i)
                / math.comb(new_degree, j)
            )
    return coefficients @ elevation


def _de_casteljau_step(coefficients, t):
    return (1.0 - t) * coefficients[..., :-1] + t * coefficients[..., 1:]


def subdivide_coefficients(coefficients, start, stop):
    """Re-expresses `p(t)` on `t in [start, stop]`: coefficients of `p(start + (stop - start) s)`.

    The new coefficients are the blossom values `B(start^(n-k), stop^k)`,
    computed by de Casteljau steps at `stop` then at `start`. Blossoming is
    exact for any real `start`, `stop` (also outside `[0, 1]`, which
    re-expresses the polynomial's continuation), so on `[start, stop]` the
    polynomial lies between the smallest and largest new coefficient.
    NumPy float64.

    Args:
        coefficients: Array `(..., n + 1)` on the unit interval.
        start: Array broadcastable to `coefficients.shape[:-1]`.
        stop: Same.

    Returns:
        Float64 array of the broadcast shape `+ (n + 1,)`.
    """
    coefficients = _as_float64(coefficients)
    start = _as_float64(start)[..., None]
    stop = _as_float64(stop)[..., None]
    shape = np.broadcast_shapes(
        coefficients.shape[:-1], start.shape[:-1], stop.shape[:-1]
    )
    degree = coefficients.shape[-1] - 1
    result = np.empty(shape + (degree + 1,))
    at_stop = coefficients
    for k in range(degree + 1):
        if k:
            at_stop = _de_casteljau_step(at_stop, stop)
        values = at_stop
        for _ in range(degree - k):
            values = _de_casteljau_step(values, start)
        result[..., k] = np.broadcast_to(values[..., 0], shape)
    return result


def _range_of_piece(coefficients, start, stop, method):
    if method == "coefficient_range":
        return coefficients.min(axis=-1), coefficients.max(axis=-1)
    pieces = subdivide_coefficients(coefficients, start, stop)
    return pieces.min(axis=-1), pieces.max(axis=-1)


def bernstein_range(
    coefficients, bounds, lower, upper, extrapolation="linear", method="subdivision"
):
    """Sound enclosure of `bernstein_polynomial` over inputs `x in [lower, upper]`.

    The input interval is split into the parts below, inside and above the
    polynomial's interval `[l, u]`. Inside, `method="subdivision"` re-expresses
    the coefficients on the part (`subdivide_coefficients`) and takes their
    min/max; `method="coefficient_range"` uses `[min_k c_k, max_k c_k]` (the
    naive Bern-IBP enclosure, looser on small parts). Outside, the
    extrapolation is bounded exactly: `"linear"` by its end points, `"clip"`
    by the end value, `"polynomial"` by subdivision of the continuation.
    NumPy float64.

    Args:
        coefficients: Array `(..., n + 1)`.
        bounds: Array `(..., 2)` of `(l, u)`.
        lower: Array of interval lower ends, broadcastable against
            `coefficients.shape[:-1]`.
        upper: Array of interval upper ends, `upper >= lower`.
        extrapolation: `"linear"`, `"clip"` or `"polynomial"`.
        method: `"subdivision"` (default) or `"coefficient_range"`.

    Returns:
        `(low, high)` float64 arrays of the broadcast shape.
    """
    check_extrapolation(extrapolation)
    if method not in RANGE_METHODS:
        raise ValueError(
            f"`method` must be one of {RANGE_METHODS}. Received: method={method!r}"
        )
    coefficients = _as_float64(coefficients)
    bounds = _as_float64(bounds)
    _check_tables(coefficients, bounds)
    lower = _as_float64(lower)
    upper = _as_float64(upper)
    for name, value in (("lower", lower), ("upper", upper)):
        if np.any(np.isnan(value)):
            raise ValueError(
                f"`{name}` must not be NaN. Received: "
                f"{name}={_arguments.describe(value)}"
            )
    if np.any(upper < lower):
        raise ValueError(
            "`upper` must be >= `lower` everywhere. Received: "
            f"lower={_arguments.describe(lower)}, "
            f"upper={_arguments.describe(upper)}"
        )
    width = bounds[..., 1] - bounds[..., 0]
    start = (lower - bounds[..., 0]) / width
    stop = (upper - bounds[..., 0]) / width
    shape = np.broadcast_shapes(coefficients.shape[:-1], start.shape, stop.shape)
    start = np.broadcast_to(start, shape)
    stop = np.broadcast_to(stop, shape)
    low = np.full(shape, np.inf)
    high = np.full(shape, -np.inf)

    def include(mask, piece_low, piece_high):
        np.copyto(low, np.minimum(low, piece_low), where=mask)
        np.copyto(high, np.maximum(high, piece_high), where=mask)

    inner_start = np.clip(start, 0.0, 1.0)
    inner_stop = np.clip(stop, 0.0, 1.0)
    include(
        (start <= 1.0) & (stop >= 0.0),
        *_range_of_piece(coefficients, inner_start, inner_stop, method),
    )
    first = coefficients[..., 0]
    last = coefficients[..., -1]
    below_stop = np.minimum(stop, 0.0)
    above_start = np.maximum(start, 1.0)
    if extrapolation == "polynomial":
        below = _range_of_piece(coefficients, start, below_stop, "subdivision")
        above = _range_of_piece(coefficients, above_start, stop, "subdivision")
    elif extrapolation == "clip":
        below = (first, first)
        above = (last, last)
    else:
        degree = coefficients.shape[-1] - 1
        if degree:
            slope_lower, slope_upper = end_slopes(coefficients)
        else:
            slope_lower = slope_upper = np.zeros_like(first)
        ends = (first + slope_lower * start, first + slope_lower * below_stop)
        below = (np.minimum(*ends), np.maximum(*ends))
        ends = (last + slope_upper * (above_start - 1.0), last + slope_upper * (stop - 1.0))
        above = (np.minimum(*ends), np.maximum(*ends))
    include(start < 0.0, *below)
    include(stop > 1.0, *above)
    return low, high
