"""Coefficient algebra in NumPy float64: degree elevation, subdivision (de
Casteljau), and sound range enclosures of a Bernstein polynomial.

These act on weights (`keras.ops.convert_to_numpy` of a layer's variables)
and on the interval bounds of `keras_bernstein.verification`, and float64
keeps them exact to ~1e-16 where JAX's default float32 would not. Their
public names are `keras_bernstein.ops`'. The range enclosure is written once
for an array namespace (`_enclosure`), so the differentiable bounds used in
certified training run the same formula on backend tensors.
"""

import functools
import math

import keras
import numpy as np

from keras_bernstein import _arguments
from keras_bernstein._formula import MAX_DEGREE
from keras_bernstein._formula import _degree_of
from keras_bernstein._formula import end_slopes


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
    degree = _degree_of(coefficients)
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


def _blossom_values(coefficients, start, stop):
    """The `n + 1` blossom values `B(start^(n-k), stop^k)`, `k = 0..n`: de
    Casteljau steps at `stop`, then at `start`. Works on NumPy arrays and
    backend tensors alike; each value has the broadcast shape of its inputs."""
    degree = _degree_of(coefficients)
    # One array per coefficient: elementwise steps on whole arrays, where
    # slices of a short last axis vectorize (and differentiate) poorly.
    at_stop = [coefficients[..., i] for i in range(degree + 1)]
    stop_weights = (1.0 - stop, stop)
    start_weights = (1.0 - start, start)
    values_by_k = []
    for k in range(degree + 1):
        if k:
            at_stop = _de_casteljau_columns(at_stop, *stop_weights)
        values = at_stop
        for _ in range(degree - k):
            values = _de_casteljau_columns(values, *start_weights)
        values_by_k.append(values[0])
    return values_by_k


def _de_casteljau_columns(columns, one_minus_t, t):
    return [one_minus_t * a + t * b for a, b in zip(columns[:-1], columns[1:])]


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
    start = _as_float64(start)
    stop = _as_float64(stop)
    shape = np.broadcast_shapes(coefficients.shape[:-1], start.shape, stop.shape)
    values = _blossom_values(coefficients, start, stop)
    return np.stack([np.broadcast_to(v, shape) for v in values], axis=-1)


def _range_of_piece(xp, coefficients, start, stop, method):
    if method == "coefficient_range":
        return xp.min(coefficients, axis=-1), xp.max(coefficients, axis=-1)
    values = _blossom_values(coefficients, start, stop)
    return functools.reduce(xp.minimum, values), functools.reduce(xp.maximum, values)


def _enclosure(xp, coefficients, bounds, lower, upper, extrapolation, method):
    """`bernstein_range` without argument checks, in the array namespace `xp`:
    `numpy` (float64, for certificates) or `keras.ops` (backend tensors with
    gradients, for training). One formula serves both."""
    width = bounds[..., 1] - bounds[..., 0]
    start = (lower - bounds[..., 0]) / width
    stop = (upper - bounds[..., 0]) / width
    low, high = _range_of_piece(
        xp, coefficients, xp.clip(start, 0.0, 1.0), xp.clip(stop, 0.0, 1.0), method
    )
    # Every input interval meets [0, 1], lies below it or above it (or more).
    meets = (start <= 1.0) & (stop >= 0.0)
    low = xp.where(meets, low, math.inf)
    high = xp.where(meets, high, -math.inf)
    first = coefficients[..., 0]
    last = coefficients[..., -1]
    below_stop = xp.minimum(stop, 0.0)
    above_start = xp.maximum(start, 1.0)
    if extrapolation == "polynomial":
        below = _range_of_piece(xp, coefficients, start, below_stop, "subdivision")
        above = _range_of_piece(xp, coefficients, above_start, stop, "subdivision")
    elif extrapolation == "clip":
        below = (first, first)
        above = (last, last)
    else:
        if coefficients.shape[-1] > 1:
            slope_lower, slope_upper = end_slopes(coefficients)
        else:
            slope_lower = slope_upper = 0.0 * first
        ends = (first + slope_lower * start, first + slope_lower * below_stop)
        below = (xp.minimum(*ends), xp.maximum(*ends))
        ends = (last + slope_upper * (above_start - 1.0), last + slope_upper * (stop - 1.0))
        above = (xp.minimum(*ends), xp.maximum(*ends))
    for mask, (piece_low, piece_high) in ((start < 0.0, below), (stop > 1.0, above)):
        low = xp.where(mask, xp.minimum(low, piece_low), low)
        high = xp.where(mask, xp.maximum(high, piece_high), high)
    return low, high


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
    _arguments.check_extrapolation(extrapolation)
    if method not in RANGE_METHODS:
        raise ValueError(
            f"`method` must be one of {RANGE_METHODS}. Received: method={method!r}"
        )
    coefficients = _as_float64(coefficients)
    bounds = _as_float64(bounds)
    _arguments.check_tables(coefficients, bounds)
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
    shape = np.broadcast_shapes(coefficients.shape[:-1], lower.shape, upper.shape)
    low, high = _enclosure(
        np, coefficients, bounds, lower, upper, extrapolation, method
    )
    return np.broadcast_to(low, shape).copy(), np.broadcast_to(high, shape).copy()
