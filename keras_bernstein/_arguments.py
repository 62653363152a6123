"""Argument checks shared by layers, initializers, constraints and `ops`."""

import math
import numbers

import numpy as np

# The highest degree evaluated to the documented float32 accuracy. Above about
# 110 the basis products `t^k (1 - t)^(n - k)` of the backward pass fall below
# float32's smallest normal number (`2^-126` at `k = n / 2`) and XLA flushes
# them to zero, and from 126 on the binomials times the end slopes overflow.
MAX_DEGREE = 100

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


def check_nonnegative_number(value, name, positive=False):
    """`value` as a finite `float >= 0` (`> 0` if `positive`), or a
    `ValueError` naming `name`."""
    if not is_finite_real(value) or value < 0 or (positive and value == 0):
        relation = "> 0" if positive else ">= 0"
        raise ValueError(
            f"`{name}` must be a finite number {relation}. Received: {name}={value!r}"
        )
    return float(value)
