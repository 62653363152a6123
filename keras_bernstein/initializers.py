"""Coefficient initializers that start a Bernstein activation as a known function."""

import keras
import numpy as np
from keras import ops

from keras_bernstein import ops as bernstein_ops
from keras_bernstein._arguments import check_bounds
from keras_bernstein._arguments import check_degree

_FLOAT32_MAX = float(np.finfo("float32").max)


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
        self._checked_degrees = set()
        # The ends are nodes of every degree: an activation that overflows
        # there is refused before any degree is known.
        self._values(np.array(self.bounds), "the ends of")

    def coefficients(self, degree):
        """The `degree + 1` coefficients, float64 NumPy; a `ValueError` where
        they, or they times their binomials (the terms the polynomial sums),
        are not finite in float32."""
        degree = check_degree(degree)
        values = self._values(self._nodes(degree), "the nodes of")
        with np.errstate(over="ignore", invalid="ignore"):
            terms = values * bernstein_ops.binomial_coefficients(degree)
        if not np.all(np.abs(terms) <= _FLOAT32_MAX):
            raise ValueError(
                f"`bounds` is too wide for degree {degree}: the coefficients times "
                "their binomials C(n, k) exceed float32's range. Received: "
                f"bounds={self.bounds}"
            )
        self._checked_degrees.add(degree)
        return values

    def _nodes(self, degree):
        lower, upper = self.bounds
        return lower + (upper - lower) * bernstein_ops.bernstein_nodes(degree)

    def _values(self, points, where):
        values = ops.convert_to_numpy(
            self._function(ops.convert_to_tensor(points, dtype="float32"))
        ).astype("float64")
        if not np.all(np.isfinite(values)):
            raise ValueError(
                f"`activation` must be finite in float32 at {where} `bounds` "
                f"{self.bounds}. Received: activation={self.activation!r}"
            )
        return values

    def __call__(self, shape, dtype=None):
        degree = shape[-1] - 1
        if degree < 1:
            raise ValueError(
                "`ActivationCoefficients` needs a last axis of degree + 1 >= 2. "
                f"Received: shape={shape}"
            )
        # Checked in NumPy once per degree (a layer does it when constructed),
        # then computed with tensor ops: Keras may build a layer inside a trace
        # (a subclassed model's first `fit`, or its reload), where values are
        # symbolic.
        if degree not in self._checked_degrees:
            self.coefficients(degree)
        dtype = dtype or "float32"
        values = self._function(ops.convert_to_tensor(self._nodes(degree), dtype="float32"))
        # A product, not `broadcast_to`: PyTorch's broadcast is a view that the
        # variable's in-place assignment refuses.
        return ops.ones(shape, dtype=dtype) * ops.cast(values, dtype)

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
