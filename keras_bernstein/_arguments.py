"""Argument checks shared by layers, initializers and constraints."""

import math
import numbers


def check_positive_integer(value, name):
    """`value` as an `int >= 1`, or a `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def is_finite_real(value):
    """True for a finite real number: no bool, no string, no NaN or inf."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def check_nonnegative_number(value, name):
    """`value` as a finite `float >= 0`, or a `ValueError` naming `name`."""
    if not is_finite_real(value) or value < 0:
        raise ValueError(
            f"`{name}` must be a finite number >= 0. Received: {name}={value!r}"
        )
    return float(value)


def check_interval(value, name):
    """`value` as a pair of finite floats `(low, high)` with `low < high`."""
    try:
        low, high = value
    except (TypeError, ValueError):
        low = high = None
    if not (is_finite_real(low) and is_finite_real(high) and low < high):
        raise ValueError(
            f"`{name}` must be a pair (low, high) of finite numbers with "
            f"low < high. Received: {name}={value!r}"
        )
    return float(low), float(high)
