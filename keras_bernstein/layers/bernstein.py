"""The Bernstein activation layer."""

import numbers

import keras
import numpy as np
from keras import ops
from keras.layers import InputSpec

from keras_bernstein import constraints
from keras_bernstein import initializers
from keras_bernstein import ops as bernstein_ops
from keras_bernstein._arguments import bounds_config
from keras_bernstein._arguments import bounds_problem
from keras_bernstein._arguments import check_boolean
from keras_bernstein._arguments import check_degree
from keras_bernstein._arguments import check_layer_bounds
from keras_bernstein._arguments import describe


@keras.saving.register_keras_serializable(package="keras_bernstein")
class Bernstein(keras.layers.Layer):
    """Learnable per-neuron Bernstein-polynomial activation.

    Neuron `j` computes

    `σ_j(x) = Σ_k c_jk · C(n, k) · t^k · (1 − t)^(n − k)`,
    `t = (x − l_j) / (u_j − l_j)`,

    with learnable coefficients `c_j0 ... c_jn` and an interval `[l_j, u_j]`.
    On that interval `min_k c_jk <= σ_j <= max_k c_jk` (`output_bounds()`),
    and `σ_j' >= n · min_k (c_j,k+1 − c_jk) / (u_j − l_j)`
    (`derivative_lower_bound()`), so increasing coefficients guarantee a
    gradient that cannot vanish.

    The default coefficients, `"relu"` (the Bernstein approximant of ReLU on
    `[l, u]`), were chosen by measurement (`benchmarks/defaults.py`, table in
    the guide's "Choosing the defaults"): behind BatchNorm they trained a
    16-layer MNIST MLP to 92-93% where `"identity"` reached 86-87%, and tied it
    on a 16-unit 1-D regression. `"identity"` makes a deep stack start as a
    linear network.

    Reference:
        Deep Bernstein Networks, arXiv:2602.04264; Khedr and Shoukry,
        DeepBern-Nets, AAAI 2024.

    Args:
        degree: Integer `n` from 1 to `MAX_DEGREE` (100), the polynomial
            degree (`n + 1` coefficients per neuron). Above 100 float32
            evaluates neither the polynomial nor its gradients accurately.
        bounds: The initial intervals: two floats `(l, u)` with `l < u`,
            finite in float32, for every neuron, or one interval per neuron,
            an array of rows `(l_j, u_j)` whose shape broadcasts to the
            bounds weight's `param_shape + (2,)` (e.g. `(units, 2)`, or
            `(channels, 2)` with `shared_axes`). `"relu"` and `"identity"`
            coefficients are set on each neuron's own interval.
        extrapolation: Behaviour outside `[l, u]`: `"linear"` (default;
            value and slope of the nearest end, so the derivative bound holds
            on the whole real line), `"clip"` (constant, zero gradient
            outside; the paper's clamp) or `"polynomial"` (the polynomial
            itself, as the upstream DeepBern-Nets code).
        shared_axes: Axes along which neurons share one activation, as in
            `keras.layers.PReLU`; e.g. `[1, 2]` on `(batch, h, w, channels)`
            gives one activation per channel.
        coefficient_initializer: `"relu"`, `"identity"`, a
            `keras_bernstein.initializers.ActivationCoefficients`, or any
            Keras initializer, for a weight of shape
            `param_shape + (degree + 1,)`.
        coefficient_regularizer: Regularizer for the coefficients.
        coefficient_constraint: Constraint for the coefficients, e.g.
            `"monotonic_coefficients"`.
        trainable_bounds: Bool, whether `[l, u]` is learned.
        bounds_constraint: Constraint for the bounds weight (used when
            `trainable_bounds=True`); default `OrderedBounds()`.
        bounds_regularizer: Regularizer for the bounds weight.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        Arbitrary, at least 2-D: `(batch_size, ..., features)`. Axes not in
        `shared_axes` must be known.

    Output shape:
        Same as the input.

    Examples:
        >>> layer = Bernstein(degree=8, bounds=(-3.0, 3.0))
        >>> y = layer(keras.ops.ones((4, 16)))       # coefficients: (16, 9)
        >>> layer.derivative_lower_bound().shape      # (16,)
        >>> per_neuron = Bernstein(bounds=[[-1.0, 1.0], [0.0, 2.0]])
        >>> y = per_neuron(keras.ops.ones((4, 2)))    # bounds weight: (2, 2)
    """

    def __init__(
        self,
        degree=8,
        bounds=(-3.0, 3.0),
        extrapolation="linear",
        shared_axes=None,
        coefficient_initializer="relu",
        coefficient_regularizer=None,
        coefficient_constraint=None,
        trainable_bounds=False,
        bounds_constraint="ordered_bounds",
        bounds_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.degree = check_degree(degree)
        # A pair `(l, u)`, or a float64 array of rows (l, u).
        self.initial_bounds = check_layer_bounds(bounds)
        self.extrapolation = bernstein_ops.check_extrapolation(extrapolation)
        if shared_axes is None:
            self.shared_axes = None
        else:
            axes = shared_axes if isinstance(shared_axes, (list, tuple)) else [
                shared_axes
            ]
            if not all(
                isinstance(a, numbers.Integral) and not isinstance(a, bool)
                for a in axes
            ) or 0 in axes:
                raise ValueError(
                    "`shared_axes` must be nonzero integer axes (axis 0 is "
                    f"the batch). Received: shared_axes={shared_axes!r}"
                )
            self.shared_axes = [int(a) for a in axes]
        self.coefficient_initializer = initializers.get(
            coefficient_initializer, bounds=self.initial_bounds
        )
        if isinstance(self.coefficient_initializer, initializers.ActivationCoefficients):
            self.coefficient_initializer.coefficients(self.degree)  # raises if they overflow
        self.coefficient_regularizer = keras.regularizers.get(
            coefficient_regularizer
        )
        self.coefficient_constraint = constraints.get(coefficient_constraint)
        self.trainable_bounds = check_boolean(trainable_bounds, "trainable_bounds")
        self.bounds_constraint = constraints.get(bounds_constraint)
        self.bounds_regularizer = keras.regularizers.get(bounds_regularizer)
        self.supports_masking = True

    def _resolve_shared_axes(self, ndim):
        if not self.shared_axes:
            return set()
        resolved = set()
        for axis in self.shared_axes:
            positive = axis + ndim if axis < 0 else axis
            if not 1 <= positive < ndim:
                raise ValueError(
                    f"`shared_axes` must name axes 1..{ndim - 1} (or negative "
                    f"equivalents) of the {ndim}-D input. "
                    f"Received: shared_axes={self.shared_axes}"
                )
            resolved.add(positive)
        return resolved

    def build(self, input_shape):
        ndim = len(input_shape)
        if ndim < 2:
            raise ValueError(
                "`Bernstein` needs an input of rank >= 2 (batch, features). "
                f"Received: input_shape={input_shape}"
            )
        shared = self._resolve_shared_axes(ndim)
        param_shape = tuple(
            1 if axis in shared else input_shape[axis] for axis in range(1, ndim)
        )
        if None in param_shape:
            raise ValueError(
                "Every input axis that is not in `shared_axes` must have a known "
                f"size. Received: input_shape={input_shape}"
            )
        initial_bounds = np.asarray(self.initial_bounds, "float64")
        bounds_shape = param_shape + (2,)
        try:
            fits = np.broadcast_shapes(initial_bounds.shape, bounds_shape) == bounds_shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                "`bounds` must broadcast to the layer's bounds shape "
                f"{bounds_shape} (param_shape + (2,), one row (l, u) per neuron). "
                f"Received: bounds.shape={initial_bounds.shape}"
            )

        def bounds_initializer(shape, dtype=None):
            values = np.broadcast_to(initial_bounds, shape)
            return ops.convert_to_tensor(values, dtype=dtype)

        # autocast=False: under mixed precision the polynomial runs in the
        # variable dtype (float32); float16 loses the coefficients' precision.
        self.coefficients = self.add_weight(
            name="coefficients",
            shape=param_shape + (self.degree + 1,),
            initializer=self.coefficient_initializer,
            regularizer=self.coefficient_regularizer,
            constraint=self.coefficient_constraint,
            autocast=False,
        )
        self.bounds = self.add_weight(
            name="bounds",
            shape=param_shape + (2,),
            initializer=bounds_initializer,
            regularizer=self.bounds_regularizer,
            constraint=self.bounds_constraint,
            trainable=self.trainable_bounds,
            autocast=False,
        )
        self.input_spec = InputSpec(
            ndim=ndim,
            axes={axis: input_shape[axis] for axis in range(1, ndim) if axis not in shared},
        )

    def call(self, inputs):
        x = ops.cast(inputs, self.variable_dtype)
        outputs = bernstein_ops.bernstein_polynomial(
            x, self.coefficients, self.bounds, self.extrapolation
        )
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def load_own_variables(self, store):
        self._assign_checked(lambda: super(Bernstein, self).load_own_variables(store))

    def set_weights(self, weights):
        self._assign_checked(lambda: super(Bernstein, self).set_weights(weights))

    def _assign_checked(self, assign, owner=None):
        """Runs `assign`, which sets the variables of `owner` (this layer or
        one holding it), then checks this layer's bounds and coefficients;
        where they are unusable, restores the old values and raises a
        `ValueError` naming the layer. The calls on every step read no
        weights: this is where weights come from outside."""
        owner = owner or self
        if not self.built:
            return assign()
        old = [ops.convert_to_numpy(variable) for variable in owner.variables]
        assign()
        problem = self._weights_problem()
        if problem is not None:
            for variable, value in zip(owner.variables, old):
                variable.assign(value)
            path = self.bounds.path.rsplit("/", 1)[0]
            raise ValueError(f"Layer '{path}' was given {problem}")

    def _weights_problem(self):
        bounds = np.asarray(ops.convert_to_numpy(self.bounds), "float64")
        reason = bounds_problem(bounds[..., 0], bounds[..., 1])
        if reason is not None:
            return (
                f"bounds whose every row (l, u) must be {reason}. Received: "
                f"bounds={describe(bounds)}"
            )
        coefficients = np.asarray(ops.convert_to_numpy(self.coefficients), "float64")
        if not np.all(np.isfinite(coefficients)):
            return (
                "coefficients that must be finite. Received: "
                f"coefficients={describe(coefficients)}"
            )
        return None

    def derivative(self, inputs):
        """`dσ/dx` at `inputs` (same shape as `inputs`), in the variable dtype."""
        x = ops.cast(inputs, self.variable_dtype)
        return bernstein_ops.bernstein_derivative(
            x, self.coefficients, self.bounds, self.extrapolation
        )

    def derivative_lower_bound(self):
        """Per-neuron guaranteed `min σ'`: `n · min_k (c_k+1 − c_k) / (u − l)`.

        Holds on `[l, u]` for every extrapolation mode and on the whole real
        line for `"linear"`. It is `<= 0` when the coefficients are not
        strictly increasing. Shape: `param_shape`.
        """
        return bernstein_ops.derivative_lower_bound(self.coefficients, self.bounds)

    def output_bounds(self):
        """Per-neuron range enclosure `[min_k c_k, max_k c_k]` for inputs in `[l, u]`.

        Shape: `param_shape + (2,)`, last axis `(lower, upper)`.
        """
        return bernstein_ops.coefficient_range(self.coefficients)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "degree": self.degree,
                "bounds": bounds_config(self.initial_bounds),
                "extrapolation": self.extrapolation,
                "shared_axes": self.shared_axes,
                "coefficient_initializer": keras.initializers.serialize(
                    self.coefficient_initializer
                ),
                "coefficient_regularizer": keras.regularizers.serialize(
                    self.coefficient_regularizer
                ),
                "coefficient_constraint": keras.constraints.serialize(
                    self.coefficient_constraint
                ),
                "trainable_bounds": self.trainable_bounds,
                "bounds_constraint": keras.constraints.serialize(
                    self.bounds_constraint
                ),
                "bounds_regularizer": keras.regularizers.serialize(
                    self.bounds_regularizer
                ),
            }
        )
        return config
