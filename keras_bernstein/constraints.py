"""Constraints for Bernstein bounds and coefficients."""

import keras
from keras import ops

from keras_bernstein._arguments import check_nonnegative_number


@keras.saving.register_keras_serializable(package="keras_bernstein")
class OrderedBounds(keras.constraints.Constraint):
    """Keeps each interval `(l, u)` ordered with `u - l >= min_width`.

    For a weight of shape `(..., 2)` holding `(l, u)` on the last axis, rows
    with `u - l < min_width` (including inverted ones) are widened
    symmetrically about their midpoint to width `min_width`; other rows are
    returned unchanged, bit for bit.

    Args:
        min_width: Smallest allowed `u - l`, a positive float (a zero width
            would make `t = (x - l) / (u - l)` undefined).

    Examples:
        >>> layer = Bernstein(trainable_bounds=True,
        ...                   bounds_constraint=OrderedBounds(min_width=0.1))
    """

    def __init__(self, min_width=1e-3):
        self.min_width = check_nonnegative_number(min_width, "min_width", positive=True)

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        lower, upper = w[..., 0], w[..., 1]
        too_narrow = ops.less(upper - lower, self.min_width)
        middle = 0.5 * (lower + upper)
        half = 0.5 * self.min_width
        return ops.stack(
            [
                ops.where(too_narrow, middle - half, lower),
                ops.where(too_narrow, middle + half, upper),
            ],
            axis=-1,
        )

    def get_config(self):
        return {"min_width": self.min_width}


@keras.saving.register_keras_serializable(package="keras_bernstein")
class MonotonicCoefficients(keras.constraints.Constraint):
    """Makes coefficients nondecreasing along the last axis, gaps `>= min_gap`.

    With it, a Bernstein activation of degree `n` on `[l, u]` has
    `σ'(x) >= n * min_gap / (u - l)` on `[l, u]`, and everywhere with
    `"linear"` extrapolation: the gradient cannot vanish.

    Rows that already satisfy the condition are returned unchanged, bit for
    bit. Other rows are replaced by the midpoint of their running maximum
    from the left and running minimum from the right (after removing the
    ramp `k * min_gap`): both envelopes are monotone, so their mean is, and it
    neither drifts up (as a running maximum alone would) nor down.

    Reference:
        Deep Bernstein Networks, arXiv:2602.04264 (the non-vanishing
        gradient theorem).

    Args:
        min_gap: Smallest allowed `c_{k+1} - c_k`, a nonnegative float.

    Examples:
        >>> layer = Bernstein(coefficient_constraint=MonotonicCoefficients(0.01))
    """

    def __init__(self, min_gap=0.0):
        self.min_gap = check_nonnegative_number(min_gap, "min_gap")

    def __call__(self, w):
        w = ops.convert_to_tensor(w)
        size = w.shape[-1]
        ramp = ops.cast(ops.arange(size), w.dtype) * self.min_gap
        shifted = ops.unstack(w - ramp, axis=-1)
        running_max = [shifted[0]]
        for value in shifted[1:]:
            running_max.append(ops.maximum(running_max[-1], value))
        running_min = [shifted[-1]]
        for value in reversed(shifted[:-1]):
            running_min.append(ops.minimum(running_min[-1], value))
        running_min.reverse()
        repaired = 0.5 * (ops.stack(running_max, -1) + ops.stack(running_min, -1))
        repaired = repaired + ramp
        gaps = w[..., 1:] - w[..., :-1]
        row_ok = ops.all(ops.greater_equal(gaps, self.min_gap), axis=-1)
        return ops.where(ops.expand_dims(row_ok, -1), w, repaired)

    def get_config(self):
        return {"min_gap": self.min_gap}


_BY_NAME = {
    "ordered_bounds": OrderedBounds,
    "monotonic_coefficients": MonotonicCoefficients,
}


def get(identifier):
    """Like `keras.constraints.get`, also taking `"ordered_bounds"` and
    `"monotonic_coefficients"`."""
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    return keras.constraints.get(identifier)
