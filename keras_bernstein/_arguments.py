"""Argument checks shared by layers, initializers and constraints."""

import math
import numbers


def is_finite_real(value):
    """True for a finite real number: no bool, no string, no NaN or inf."""
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
