"""Coefficient initializers that start a Bernstein activation as a known function."""

import keras
import numpy as np
from keras import ops

from keras_bernstein import ops as bernstein_ops
from keras_bernstein._arguments import is_finite_real


def check_bounds(bounds, name="bounds"):
    """Returns `bounds` as a tuple of two finite floats `(l, u)` with `l < u`.

    Raises:
        ValueError: naming `name` when `bounds` is anything else.
    """
    try:
        values = list(bounds) if not isinstance(bounds, str) else None
    except TypeError:
        values = None
    if (
        values is None
        or len(values) != 2
        or not all(is_finite_real(value) for value in values)
        or values[0] >= values[1]
    ):
        raise ValueError(
            f"`{name}` must be two finite numbers (l, u) with l < u. "
            f"Received: {name}={bounds!r}"
        )
    return (float(values[0]), float(values[1]))


@keras.saving.register_keras_serializable(package="keras_bernstein")
class ActivationCoefficients(keras.initializers.Initializer):
    """Coefficients that make a Bernstein activation approximate `activation`.

    Sets `c_k = f(l + (u - l) k / n)`, the values of `f` at the Bernstein
    nodes, which gives the Bernstein approximant of `f` on `[l, u]`. For a
    linear `f` (`"linear"`, the string `"identity"`) the result is exact
    (linear precision), so the layer starts as `σ(x) = x`. For `"relu"` it is
    a smooth, convex, monotone ReLU-like curve that never has zero slope
    inside `(l, u)`.

    Reference:
        Lorentz, *Bernstein Polynomials* (1953), chapter 1.

    Args:
        activation: Name of a Keras activation (`"linear"`, `"relu"`,
            `"tanh"`, ...) or `"identity"` (the same as `"linear"`).
        bounds: The interval `(l, u)` of the layer the coefficients are for.

    Examples:
        >>> init = ActivationCoefficients("relu", bounds=(-1.0, 1.0))
        >>> init(shape=(1, 3))  # c = relu([-1, 0, 1])
    """

    def __init__(self, activation="linear", bounds=(-3.0, 3.0)):
        self.activation = "linear" if activation == "identity" else activation
        self._function = keras.activations.get(self.activation)
        self.bounds = check_bounds(bounds)

    def __call__(self, shape, dtype=None):
        degree = shape[-1] - 1
        if degree < 1:
            raise ValueError(
                "`ActivationCoefficients` needs a last axis of degree + 1 >= 2. "
                f"Received: shape={shape}"
            )
        lower, upper = self.bounds
        nodes = lower + (upper - lower) * bernstein_ops.bernstein_nodes(degree)
        values = ops.convert_to_numpy(
            self._function(ops.convert_to_tensor(nodes, dtype="float32"))
        )
        values = np.broadcast_to(values.astype("float64"), shape)
        return ops.convert_to_tensor(values, dtype=dtype or "float32")

    def get_config(self):
        return {"activation": self.activation, "bounds": list(self.bounds)}


_ACTIVATION_ALIASES = ("identity", "relu")


def get(identifier, bounds):
    """Resolves a coefficient initializer.

    `"identity"` and `"relu"` become `ActivationCoefficients` on `bounds`;
    anything else goes to `keras.initializers.get`.
    """
    if isinstance(identifier, str) and identifier in _ACTIVATION_ALIASES:
        return ActivationCoefficients(identifier, bounds=bounds)
    return keras.initializers.get(identifier)
