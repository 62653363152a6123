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
