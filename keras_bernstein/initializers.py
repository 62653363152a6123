"""Coefficient initializers that start a Bernstein activation as a known function."""

import keras
import numpy as np
from keras import ops

from keras_bernstein import ops as bernstein_ops
from keras_bernstein._arguments import bounds_config
from keras_bernstein._arguments import check_degree
from keras_bernstein._arguments import check_layer_bounds
from keras_bernstein._arguments import describe

_FLOAT32_MAX = float(np.finfo("float32").max)


@keras.saving.register_keras_serializable(package="keras_bernstein")
class ActivationCoefficients(keras.initializers.Initializer):
    """Coefficients that make a Bernstein activation approximate `activation`.

    Sets `c_k = f(l + (u - l) k / n)`, the values of `f` at the Bernstein
    nodes, which gives the Bernstein approximant of `f` on `[l, u]`; with
    per-neuron bounds, `c_jk = f(l_j + (u_j - l_j) k / n)` on each neuron's
    own interval. For a
    linear `f` (`"linear"`, the string `"identity"`) the result is exact
    (linear precision), so the layer starts as `σ(x) = x`. For `"relu"` it is
    a smooth, convex, monotone ReLU-like curve that never has zero slope
    inside `(l, u)`.

    Reference:
        Lorentz, *Bernstein Polynomials* (1953), chapter 1.

    Args:
        activation: Name of a Keras activation (`"linear"`, `"relu"`,
            `"tanh"`, ...) or `"identity"` (the same as `"linear"`).
        bounds: The interval `(l, u)` of the layer the coefficients are for,
            or one interval per neuron: an array of rows `(l, u)` (last axis
            2) that broadcasts to `shape[:-1] + (2,)` of the weight.

    Returns:
        Called with `shape` `param_shape + (degree + 1,)`, a tensor of that
        shape.

    Examples:
        >>> init = ActivationCoefficients("relu", bounds=(-1.0, 1.0))
        >>> init(shape=(1, 3))  # c = relu([-1, 0, 1])
        >>> per_neuron = ActivationCoefficients("relu", bounds=[[-1, 1], [0, 2]])
        >>> per_neuron(shape=(2, 3))  # rows relu([-1, 0, 1]), relu([0, 1, 2])
    """

    def __init__(self, activation="linear", bounds=(-3.0, 3.0)):
        self.activation = "linear" if activation == "identity" else activation
        self._function = keras.activations.get(self.activation)
        self.bounds = check_layer_bounds(bounds)
        self._checked_degrees = set()
        # The ends are nodes of every degree: an activation that overflows
        # there is refused before any degree is known.
        self._values(np.array(self.bounds), "the ends of")

    def _bounds_text(self):
        if isinstance(self.bounds, tuple):
            return str(self.bounds)
        return describe(self.bounds)

    def coefficients(self, degree):
        """The `degree + 1` coefficients, float64 NumPy (shape `(degree + 1,)`
        for a pair of bounds, `bounds.shape[:-1] + (degree + 1,)` for
        per-neuron bounds); a `ValueError` where
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
                f"bounds={self._bounds_text()}"
            )
        self._checked_degrees.add(degree)
        return values

    def _nodes(self, degree):
        bounds = np.asarray(self.bounds, "float64")
        lower, upper = bounds[..., :1], bounds[..., 1:]
        return lower + (upper - lower) * bernstein_ops.bernstein_nodes(degree)

    def _values(self, points, where):
        values = ops.convert_to_numpy(
            self._function(ops.convert_to_tensor(points, dtype="float32"))
        ).astype("float64")
        if not np.all(np.isfinite(values)):
            raise ValueError(
                f"`activation` must be finite in float32 at {where} `bounds` "
                f"{self._bounds_text()}. Received: activation={self.activation!r}"
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
        if not isinstance(self.bounds, tuple):
            neurons = tuple(shape[:-1])
            try:
                fits = np.broadcast_shapes(self.bounds.shape[:-1], neurons) == neurons
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(
                    "`bounds` of `ActivationCoefficients` must broadcast to the "
                    f"weight's neurons, shape {neurons + (2,)}. Received: "
                    f"bounds.shape={self.bounds.shape}"
                )
        dtype = dtype or "float32"
        values = self._function(ops.convert_to_tensor(self._nodes(degree), dtype="float32"))
        # A product, not `broadcast_to`: PyTorch's broadcast is a view that the
        # variable's in-place assignment refuses.
        return ops.ones(shape, dtype=dtype) * ops.cast(values, dtype)

    def get_config(self):
        return {"activation": self.activation, "bounds": bounds_config(self.bounds)}



_ACTIVATION_ALIASES = ("identity", "relu")


def get(identifier, bounds):
    """Resolves a coefficient initializer.

    `"identity"` and `"relu"` become `ActivationCoefficients` on `bounds`
    (a pair `(l, u)` or per-neuron rows, see `ActivationCoefficients`);
    anything else goes to `keras.initializers.get`.

    Args:
        identifier: `"identity"`, `"relu"`, or anything
            `keras.initializers.get` accepts.
        bounds: The layer's bounds.

    Returns:
        An initializer.
    """
    if isinstance(identifier, str) and identifier in _ACTIVATION_ALIASES:
        return ActivationCoefficients(identifier, bounds=bounds)
    return keras.initializers.get(identifier)
