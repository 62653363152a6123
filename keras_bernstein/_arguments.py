"""Argument checks shared by layers, initializers, constraints and `ops`."""

import math
import numbers

import keras
import numpy as np

from keras_bernstein._formula import EXTRAPOLATION_MODES
from keras_bernstein._formula import MAX_DEGREE
from keras_bernstein._formula import _degree_of_shape
from keras_bernstein._formula import _plain_shape

_FLOAT32 = np.finfo("float32")


def describe(values):
    """A NumPy array as one line of text, elided past 20 values, the same on
    every backend."""
    text = np.array2string(np.asarray(values), threshold=20, separator=", ")
    return " ".join(text.split())


def check_positive_integer(value, name):
    """`value` as an `int >= 1`, or a `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_degree(value, name="degree", minimum=1):
    """`value` as an `int` from `minimum` to `MAX_DEGREE`, or a `ValueError`
    naming `name`."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Integral)
        or not minimum <= value <= MAX_DEGREE
    ):
        raise ValueError(
            f"`{name}` must be an integer from {minimum} to {MAX_DEGREE} (above "
            f"{MAX_DEGREE} float32 cannot evaluate the polynomial and its "
            f"gradients accurately). Received: {name}={value!r}"
        )
    return int(value)


def check_boolean(value, name):
    """`value` as a `bool` if it is a Python or NumPy bool, else a `ValueError`."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"`{name}` must be a boolean. Received: {name}={value!r}")
    return bool(value)


def is_finite_real(value):
    """True for a finite real number: no bool, no string, no NaN or inf."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(float(value))
    )


def bounds_problem(lower, upper):
    """Why `(lower, upper)` arrays are no usable intervals in float32, or None.

    Usable: finite in float32, `lower < upper` after rounding to float32, and
    a width `upper - lower` whose float32 value and reciprocal are finite.
    """
    lower = np.asarray(lower, "float64")
    upper = np.asarray(upper, "float64")
    with np.errstate(all="ignore"):
        if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
            return "finite"
        if np.any(np.abs(lower) > _FLOAT32.max) or np.any(np.abs(upper) > _FLOAT32.max):
            return "finite in float32"
        if not np.all(lower.astype("float32") < upper.astype("float32")):
            return "ordered, l < u (also in float32)"
        width = upper.astype("float32") - lower.astype("float32")
        if not (np.all(np.isfinite(width)) and np.all(width >= _FLOAT32.tiny)):
            return f"of a width u - l from {_FLOAT32.tiny:.3g} to {_FLOAT32.max:.3g}"
    return None


def _pair(value):
    """`value` as a list of two finite real numbers `[l, u]` with `l < u`, or None."""
    try:
        values = list(value) if not isinstance(value, str) else None
    except TypeError:
        return None
    if (
        values is None
        or len(values) != 2
        or not all(is_finite_real(item) for item in values)
        or not values[0] < values[1]
    ):
        return None
    return values


def check_interval(value, name):
    """`value` as a pair of finite floats `(low, high)` with `low < high`, or
    a `ValueError` naming `name`."""
    values = _pair(value)
    if values is None:
        raise ValueError(
            f"`{name}` must be a pair (low, high) of finite numbers with "
            f"low < high. Received: {name}={value!r}"
        )
    return float(values[0]), float(values[1])


def check_bounds(bounds, name="bounds"):
    """Returns `bounds` as a tuple of two floats `(l, u)`, an interval usable
    in float32 (`bounds_problem`), or raises a `ValueError` naming `name`."""
    values = _pair(bounds)
    if values is None or bounds_problem(values[0], values[1]) is not None:
        raise ValueError(
            f"`{name}` must be two numbers (l, u) with l < u, finite in float32, "
            f"with a finite width u - l. Received: {name}={bounds!r}"
        )
    return (float(values[0]), float(values[1]))


def _bounds_array(bounds):
    """`bounds` as a NumPy array where it is an array-like of rank >= 2 (one
    row `(l, u)` per neuron), else None (a pair, or nothing usable)."""
    if isinstance(bounds, str):
        return None
    if isinstance(bounds, keras.Variable) or keras.ops.is_tensor(bounds):
        bounds = keras.ops.convert_to_numpy(bounds)
    if isinstance(bounds, np.ndarray):
        return bounds if bounds.ndim >= 2 else None
    if isinstance(bounds, (list, tuple)):
        try:
            array = np.asarray(bounds, dtype=object)
        except ValueError:
            return None
        return array if array.ndim >= 2 else None
    return None


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_layer_bounds(bounds, name="bounds"):
    """`bounds` of a layer: a pair `(l, u)` as `check_bounds` returns it, or
    an array-like of rank >= 2 whose last axis holds the rows `(l, u)` of
    the neurons, as a float64 NumPy array, every row an interval usable in
    float32 (`bounds_problem`). Raises a `ValueError` naming `name`."""
    array = _bounds_array(bounds)
    if array is None:
        return check_bounds(bounds, name)
    if array.dtype == object:
        numeric = all(_is_real(value) for value in array.flat)
    else:
        numeric = array.dtype.kind in "iuf"
    if not numeric:
        raise ValueError(
            f"`{name}` must be a pair (l, u) or an array of rows (l, u) of real "
            f"numbers. Received: {name}={describe(array)}"
        )
    array = np.array(array, dtype="float64")
    if array.shape[-1] != 2 or array.size == 0:
        raise ValueError(
            f"`{name}` given as an array must have a last axis of size 2, one row "
            f"(l, u) per neuron, and at least one row; its shape is {array.shape}. "
            f"Received: {name}={describe(array)}"
        )
    problem = bounds_problem(array[..., 0], array[..., 1])
    if problem is not None:
        raise ValueError(
            f"Every row (l, u) of `{name}` must be {problem}. "
            f"Received: {name}={describe(array)}"
        )
    return array


def bounds_config(bounds):
    """Bounds as `check_layer_bounds` returns them, for a config: a pair as a
    list `[l, u]`, an array as nested lists."""
    if isinstance(bounds, tuple):
        return list(bounds)
    return np.asarray(bounds).tolist()


def check_nonnegative_number(value, name, positive=False):
    """`value` as a finite `float >= 0` (`> 0` if `positive`), or a
    `ValueError` naming `name`."""
    if not is_finite_real(value) or value < 0 or (positive and value == 0):
        relation = "> 0" if positive else ">= 0"
        raise ValueError(
            f"`{name}` must be a finite number {relation}. Received: {name}={value!r}"
        )
    return float(value)


def check_extrapolation(extrapolation):
    """Returns `extrapolation` if it is a known mode, else raises `ValueError`."""
    if extrapolation not in EXTRAPOLATION_MODES:
        raise ValueError(
            f"`extrapolation` must be one of {EXTRAPOLATION_MODES}. "
            f"Received: extrapolation={extrapolation!r}"
        )
    return extrapolation


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


def check_tables(coefficients, bounds, x=None, given_bounds=None):
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
    """`check_tables`' shape checks; returns the degree."""
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


def check_vectors(x, **vectors):
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
    float32 (`bounds_problem`)."""
    values = _concrete_values(bounds)
    if values is None or values.size == 0:
        return
    problem = bounds_problem(values[..., 0], values[..., 1])
    if problem is not None:
        raise ValueError(
            f"Every row (l, u) of `{name}` must be {problem}. "
            f"Received: {name}={describe(values)}"
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
