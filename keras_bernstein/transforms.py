"""Exact re-parameterisations of Bernstein layers: degree elevation and rebounding.

A Bernstein polynomial can be written in the basis of any higher degree
(`elevate_degree`) and on any other interval (`rebound`, by de Casteljau
subdivision / blossoming) without changing the polynomial. These transforms
let a model grow capacity or move its activation intervals mid-training at
the function it has learned (to float32 rounding, which bounds how far one
rebound may widen); `keras_bernstein.callbacks.BoundsUpdate` uses `rebound`
to widen the intervals toward the observed pre-activation range, the
Bernstein counterpart of KAN's grid update. `bounds_from_domain` sets the
intervals from an input domain instead, by certified interval propagation
(`keras_bernstein.callbacks.DomainBounds` repeats it during training).

After a transform, compile the model again before training further: the
optimizer's slots belong to the old variables (`elevate_degree`) or to the
old basis (`rebound`).
"""

import warnings

import keras
import numpy as np

from keras_bernstein import ops as bernstein_ops
from keras_bernstein import verification
from keras_bernstein._arguments import bounds_problem
from keras_bernstein._arguments import check_nonnegative_number
from keras_bernstein._coefficient_algebra import _de_casteljau_step
from keras_bernstein._model_layers import as_float64
from keras_bernstein._model_layers import bernstein_activation
from keras_bernstein._model_layers import bernstein_activations
from keras_bernstein._model_layers import check_model
from keras_bernstein._model_layers import is_bernstein
from keras_bernstein.layers.bernstein import check_degree


def _activation_of(layer):
    """The `Bernstein` layer that holds `layer`'s coefficients and bounds."""
    bernstein = bernstein_activation(layer)
    if bernstein is None:
        raise ValueError(
            "Expected a `Bernstein` or `BernsteinDense` layer. "
            f"Received: layer={layer!r}"
        )
    return bernstein


def _check_built(layer):
    if not layer.built:
        raise ValueError(
            f"Layer {layer.name!r} must be built before it is transformed "
            "(call it on data or build the model)."
        )


def _with_degree(layer, new_degree):
    """A fresh, unbuilt copy of `layer` whose activation has `new_degree`."""
    config = layer.get_config()
    config["degree"] = new_degree
    return type(layer).from_config(config)


def _copy_weights(source, target, replacements):
    """Copies every variable of `source` into `target`, by position.

    `replacements` maps `id(source variable)` to the value to write instead.
    """
    source_weights = source.weights
    target_weights = target.weights
    if len(source_weights) != len(target_weights):
        raise ValueError(
            "Internal error: the transformed copy has a different number of "
            f"weights ({len(target_weights)} vs {len(source_weights)})."
        )
    for old, new in zip(source_weights, target_weights):
        value = replacements.get(id(old))
        if value is None:
            value = keras.ops.convert_to_numpy(old)
        if tuple(new.shape) != tuple(np.shape(value)):
            raise ValueError(
                f"Internal error: weight {old.path} has shape {old.shape}, its "
                f"copy {new.path} {new.shape}."
            )
        new.assign(np.asarray(value).astype(new.dtype))


def _elevated(bernstein, new_degree):
    return bernstein_ops.elevate_coefficients(
        as_float64(bernstein.coefficients), new_degree
    )


def elevate_degree(target, new_degree):
    """The same function with Bernstein activations of a higher degree.

    Degree elevation (`keras_bernstein.ops.elevate_coefficients`) rewrites
    each polynomial exactly in the basis of degree `new_degree`; end values
    and end slopes are unchanged, so every extrapolation mode gives the same
    function on the whole real line. Use it to grow capacity mid-training.
    The degree is part of the variables' shapes, so the result is a new
    layer or model; recompile a model before training it further.

    Args:
        target: A built `Bernstein` or `BernsteinDense` layer, or a built
            Sequential/functional `keras.Model` (every Bernstein layer in it
            whose degree is below `new_degree` is elevated, nested models
            included).
        new_degree: Integer at least the current degree.

    Returns:
        A new built layer or model with copied weights. Outputs agree with
        the original to float32 rounding (tested: <= 1e-6 relative).

    Example:
        >>> bigger = elevate_degree(model, 12)
        >>> bigger.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    """
    new_degree = check_degree(new_degree)
    if isinstance(target, keras.Model):
        return _elevate_model(target, new_degree)
    bernstein = _activation_of(target)
    _check_built(target)
    if new_degree < bernstein.degree:
        raise ValueError(
            f"`new_degree` must be >= the layer's degree {bernstein.degree}. "
            f"Received: new_degree={new_degree}"
        )
    layer = _with_degree(target, new_degree)
    layer.build_from_config(target.get_build_config())
    _copy_weights(
        target,
        layer,
        {id(bernstein.coefficients): _elevated(bernstein, new_degree)},
    )
    return layer


def _elevate_model(model, new_degree):
    if not model.built:
        raise ValueError("`target` must be a built model.")
    replacements = {}

    def clone(layer):
        if is_bernstein(layer):
            bernstein = _activation_of(layer)
            if bernstein.degree < new_degree:
                replacements[id(bernstein.coefficients)] = _elevated(
                    bernstein, new_degree
                )
                return _with_degree(layer, new_degree)
        return type(layer).from_config(layer.get_config())

    clone_model = keras.models.clone_model(model, clone_function=clone, recursive=True)
    _copy_weights(model, clone_model, replacements)
    return clone_model


# Largest change of a neuron's function on its old interval that a rebound
# may cause, relative to the neuron's coefficient range `max c - min c`, on
# top of the float rounding of evaluating the polynomial.
REBOUND_TOLERANCE = 1e-4

# Points per neuron at which re-expressions are compared (float64).
_GRID_SIZE = 257


def _check_new_bounds(new_bounds, shape):
    new_bounds = np.asarray(keras.ops.convert_to_numpy(new_bounds), "float64")
    try:
        new_bounds = np.broadcast_to(new_bounds, shape)
    except ValueError:
        raise ValueError(
            f"`new_bounds` must broadcast to the layer's bounds shape {shape}, "
            f"e.g. a pair (l, u). Received: new_bounds.shape={new_bounds.shape}"
        ) from None
    problem = bounds_problem(new_bounds[..., 0], new_bounds[..., 1])
    if problem is not None:
        raise ValueError(
            f"`new_bounds` must be {problem} for every neuron (lower < upper). "
            f"Received: new_bounds={_summary(new_bounds)}"
        )
    return new_bounds


def _values(x, coefficients, bounds, extrapolation):
    """The activation at `x` `(points, neurons)`, in float64 (de Casteljau).

    `coefficients` `(neurons, n + 1)`, `bounds` `(neurons, 2)`.
    """
    degree = coefficients.shape[-1] - 1
    with np.errstate(all="ignore"):
        t = (x - bounds[:, 0]) / (bounds[:, 1] - bounds[:, 0])
        inner = t if extrapolation == "polynomial" else np.clip(t, 0.0, 1.0)
        values = np.broadcast_to(coefficients, inner.shape + (degree + 1,))
        for _ in range(degree):
            values = _de_casteljau_step(values, inner[..., None])
        values = values[..., 0]
        if extrapolation == "linear" and degree:
            slope_lower, slope_upper = bernstein_ops.end_slopes(coefficients)
            values = values + slope_lower * np.minimum(t, 0.0)
            values = values + slope_upper * np.maximum(t - 1.0, 0.0)
    return values


def _rounding(x, coefficients, bounds, epsilon):
    """Bound of the float rounding error of the activation at `x` inside
    `bounds`: `2 (n + 1) eps sum_k |c_k| b_k(t)` for the sum of `n + 1`
    terms, and `2 eps |t| n sum_k |c_{k+1} - c_k| b_{n-1,k}(t)` for the
    rounding of `t = (x - l) / (u - l)` (two operations, relative `eps`
    each) times a bound of the slope in `t` there.
    """
    degree = coefficients.shape[-1] - 1
    with np.errstate(all="ignore"):
        t = np.abs((x - bounds[:, 0]) / (bounds[:, 1] - bounds[:, 0]))
        terms = _values(x, np.abs(coefficients), bounds, "clip")
        slopes = 0.0
        if degree:
            steps = np.abs(np.diff(coefficients, axis=-1))
            slopes = degree * _values(x, steps, bounds, "clip")
        return 2 * epsilon * ((degree + 1) * terms + t * slopes)


def _grid(lower, upper):
    """`_GRID_SIZE` points from `lower` to `upper` (arrays `(neurons,)`)."""
    steps = np.linspace(0.0, 1.0, _GRID_SIZE)[:, None]
    return lower + (upper - lower) * steps


class _Rebound:
    """One neuron-wise re-expression of a `Bernstein` layer, and its checks.

    The candidate coefficients are what the layer would hold: re-expressed
    in float64, rounded to the variable's dtype and passed through the
    layer's coefficient constraint. Neurons are flattened to rows; only the
    rows `rows` (default all) get `new_bounds` `(len(rows), 2)`, and the
    arrays of the checks hold those rows only.
    """

    def __init__(self, bernstein, new_bounds, rows=None):
        self.bernstein = bernstein
        self.shape = tuple(bernstein.coefficients.shape)
        self.dtype = bernstein.coefficients.dtype
        self.degree = bernstein.degree
        all_coefficients = as_float64(bernstein.coefficients).reshape(-1, self.degree + 1)
        self.rows = np.arange(len(all_coefficients)) if rows is None else rows
        self.old_coefficients = all_coefficients[self.rows]
        self.old_bounds = as_float64(bernstein.bounds).reshape(-1, 2)[self.rows]
        stored = np.asarray(new_bounds, "float64").reshape(-1, 2)
        self.new_bounds = stored.astype(bernstein.bounds.dtype).astype("float64")
        width = self.old_bounds[:, 1] - self.old_bounds[:, 0]
        start = (self.new_bounds[:, 0] - self.old_bounds[:, 0]) / width
        stop = (self.new_bounds[:, 1] - self.old_bounds[:, 0]) / width
        with np.errstate(all="ignore"):
            exact = bernstein_ops.subdivide_coefficients(
                self.old_coefficients, start, stop
            )
            rounded = exact.astype(self.dtype)
        constraint = bernstein.coefficient_constraint
        if constraint is not None and np.all(np.isfinite(rounded)):
            # The constraint sees the whole weight, the other rows unchanged.
            whole = all_coefficients.astype(self.dtype)
            whole[self.rows] = rounded
            whole = keras.ops.convert_to_numpy(
                constraint(keras.ops.convert_to_tensor(whole.reshape(self.shape)))
            )
            rounded = np.reshape(whole, all_coefficients.shape)[self.rows]
        self.coefficients = np.asarray(rounded, "float64")

    def scale(self):
        """The coefficient range `max c - min c` of each old neuron."""
        return np.ptp(self.old_coefficients, axis=-1)

    def change(self, lower, upper, epsilon=None):
        """Largest `|new - old|` of each neuron's activation on `[lower, upper]`;
        with `epsilon`, plus the bound of `_rounding` on the new evaluation."""
        x = _grid(lower, upper)
        extrapolation = self.bernstein.extrapolation
        old = _values(x, self.old_coefficients, self.old_bounds, extrapolation)
        new = _values(x, self.coefficients, self.new_bounds, extrapolation)
        with np.errstate(all="ignore"):
            change = np.abs(new - old)
            if epsilon is not None:
                change = change + _rounding(x, self.coefficients, self.new_bounds, epsilon)
            change = change.max(axis=0)
        return np.where(np.isfinite(change), change, np.inf)

    def interval_error(self):
        """Per neuron: how far the layer's float output on the old interval
        (where it overlaps the new one) may move, and what is allowed.

        The float64 change of the rounded, constrained coefficients plus the
        rounding error of evaluating them in the variable's dtype
        (`_rounding`); allowed: `REBOUND_TOLERANCE` times the coefficient
        range, plus the largest rounding error of evaluating the old
        coefficients on their interval.
        """
        lower = np.maximum(self.old_bounds[:, 0], self.new_bounds[:, 0])
        upper = np.minimum(self.old_bounds[:, 1], self.new_bounds[:, 1])
        epsilon = float(np.finfo(self.dtype).eps)
        error = self.change(lower, upper, epsilon)
        # Disjoint intervals share nothing to keep; the values must be finite.
        finite = np.all(np.isfinite(self.coefficients), axis=-1)
        error = np.where(lower <= upper, error, np.where(finite, 0.0, np.inf))
        return error, REBOUND_TOLERANCE * self.scale() + self.rounding_floor(epsilon)

    def rounding_floor(self, epsilon):
        """`_rounding`'s bound for the old coefficients anywhere on `[l, u]`:
        `2 eps ((n + 1) max |c| + n max |c_{k+1} - c_k|)`."""
        coefficients = self.old_coefficients
        steps = np.abs(np.diff(coefficients, axis=-1)).max(axis=-1, initial=0.0)
        return 2 * epsilon * (
            (self.degree + 1) * np.abs(coefficients).max(axis=-1) + self.degree * steps
        )

    def slope_sign_kept(self):
        """Whether each positive derivative certificate stays positive."""
        old = np.diff(self.old_coefficients, axis=-1).min(axis=-1, initial=np.inf)
        new = np.diff(self.coefficients, axis=-1).min(axis=-1, initial=np.inf)
        return (old <= 0.0) | (new > 0.0)

    def assign(self):
        """Writes the rows' coefficients and bounds into the layer."""
        coefficients = as_float64(self.bernstein.coefficients).reshape(-1, self.degree + 1)
        bounds = as_float64(self.bernstein.bounds).reshape(-1, 2)
        coefficients[self.rows] = self.coefficients
        bounds[self.rows] = self.new_bounds
        self.bernstein.coefficients.assign(coefficients.reshape(self.shape).astype(self.dtype))
        self.bernstein.bounds.assign(
            bounds.reshape(self.shape[:-1] + (2,)).astype(self.bernstein.bounds.dtype)
        )


def rebound(layer, new_bounds):
    """Re-expresses each neuron's polynomial on a new interval, in place.

    With `t = (x - l) / (u - l)` and the new interval `[l', u']` mapped to
    `[a, b]` in `t`, the new coefficients are the old polynomial's blossom
    values on `[a, b]` (`keras_bernstein.ops.subdivide_coefficients`). The
    polynomial is unchanged on the whole real line, so:

    - inside the new interval `[l', u']` the layer computes the old
      polynomial: the old function on the overlap with `[l, u]`;
      on parts of `[l', u']` outside `[l, u]` (widening) it computes the
      polynomial's own continuation where the old layer extrapolated
      (linearly or by clipping), so the function changes there unless the
      extrapolation is `"polynomial"`;
    - outside `[l', u']` the layer extrapolates from the new ends in its mode.
      With `"polynomial"` extrapolation the function is unchanged everywhere.

    Shrinking an interval therefore keeps the function on the new interval
    and changes the extrapolated parts; widening keeps it on the old one.
    The degree and variable shapes do not change, so a compiled model keeps
    training (the optimizer's moment estimates refer to the old basis).

    Guarantee: on the overlap of the old and new intervals every neuron's
    output changes by at most `REBOUND_TOLERANCE` (`1e-4`) times its
    coefficient range `max c - min c`, plus the float32 rounding of
    evaluating the polynomial, `2.4e-7 · ((n + 1) max |c| + n max |c_{k+1}
    - c_k|)`. The new
    coefficients are rounded to float32 and passed through the layer's
    coefficient constraint before this is checked. Widening grows the
    coefficients (roughly like the widening factor to the power of the
    degree), so a widening too large for float32 to keep the guarantee is
    refused with a `ValueError`; `BoundsUpdate` caps its widenings instead.

    Args:
        layer: A built `Bernstein` or `BernsteinDense` layer.
        new_bounds: `(l', u')` for every neuron, or an array broadcastable to
            the layer's `bounds` shape `param_shape + (2,)`; finite, with
            `l' < u'`.

    Returns:
        `layer`, with new `coefficients` and `bounds`.

    Raises:
        ValueError: for invalid `new_bounds`, or new bounds under which the
            layer cannot keep the guarantee, naming the layer.

    Example:
        >>> rebound(model.layers[1], (-4.0, 4.0))
    """
    bernstein = _activation_of(layer)
    _check_built(layer)
    bounds = as_float64(bernstein.bounds)
    requested = new_bounds
    new_bounds = _check_new_bounds(new_bounds, bounds.shape)
    plan = _Rebound(bernstein, new_bounds)
    error, allowed = plan.interval_error()
    broken = ~(error <= allowed)
    if np.any(broken):
        worst = int(np.argmax(np.where(broken, error - allowed, -np.inf)))
        cause = "float32 rounding"
        if bernstein.coefficient_constraint is not None:
            cause += " or the coefficient constraint"
        raise ValueError(
            f"`new_bounds` would change the function of layer {layer.name!r} on "
            f"its old interval by more than `rebound` allows ({cause}; "
            f"{int(broken.sum())} of {broken.size} neurons; neuron {worst}: up to "
            f"{error[worst]:.3g}, allowed {allowed[worst]:.3g}): widen less at a "
            f"time. Received: new_bounds={_summary(requested)}"
        )
    plan.assign()
    return layer


def bounds_from_domain(model, lower, upper, margin=0.0, min_width=1e-3):
    """Sets every Bernstein interval to cover its inputs over an input domain.

    For each Bernstein activation in model order (a `Bernstein` layer, or
    the activation of a `BernsteinDense`, nested models included), computes
    the certified float64 interval of its inputs when the model's input lies
    in the box `lower <= x <= upper`
    (`keras_bernstein.verification.activation_input_bounds`), takes the
    smallest and largest value per neuron over the boxes of the batch (and
    over shared axes), widens it by `margin` times its width on each side,
    widens intervals narrower than `min_width` symmetrically to `min_width`,
    rounds the ends outward to float32 and `rebound`s the layer to it, then
    propagates the domain again for the next layer (a rebound changes the
    function where inputs used to be extrapolated). As in the DeepBern-Nets
    reference, in-domain inputs then never leave their intervals (up to the
    float32 rounding of evaluating the model), where the range and
    derivative guarantees of `Bernstein` hold and certified bounds are
    tightest.

    `rebound` keeps each neuron's function on the overlap of its old and new
    intervals (to `REBOUND_TOLERANCE`) and changes it only where the old
    layer extrapolated, so on in-domain inputs the model is unchanged when
    every old interval already covered the layer's in-domain inputs (and
    everywhere with `"polynomial"` extrapolation). Batch normalization is
    propagated in inference mode (its moving statistics). The domain is
    propagated once per activation, so the cost grows with the square of
    the number of Bernstein layers.

    Args:
        model: A built model accepted by
            `keras_bernstein.verification.output_bounds`.
        lower: Array of the model's input shape, batch first (a list for
            several inputs): the lower corners of the domain's boxes. The
            intervals cover the union of the boxes.
        upper: Same shape, with `upper >= lower`.
        margin: Finite number `>= 0`: the fraction of each interval's width
            added on each side.
        min_width: Positive number, the smallest width `u - l` of a new
            interval (a neuron whose input is constant on the domain gets an
            interval of this width around it). A layer with trainable bounds
            uses at least its bounds constraint's `min_width`.

    Returns:
        `model`, with new `coefficients` and `bounds` in its Bernstein layers.
        Recompile it before training further (see `rebound`).

    Raises:
        ValueError: for invalid arguments, or when a layer cannot take its
            new intervals (`rebound` refuses a widening float32 cannot
            honour, or the interval is not finite in float32), naming the
            layer; then no layer of the model is changed.

    Example:
        >>> lower, upper = np.zeros((1, 784)), np.ones((1, 784))  # pixels in [0, 1]
        >>> bounds_from_domain(model, lower, upper, margin=0.05)
    """
    _domain_bounds(model, lower, upper, margin, min_width)
    return model


def _domain_bounds(model, lower, upper, margin, min_width):
    """`bounds_from_domain`; returns `(name, old bounds, new bounds)` per
    activation, float64 arrays `param_shape + (2,)`."""
    check_model(model)
    margin = check_nonnegative_number(margin, "margin")
    min_width = check_nonnegative_number(min_width, "min_width", positive=True)
    activations = bernstein_activations(model)
    saved = [
        (variable, keras.ops.convert_to_numpy(variable))
        for _, bernstein in activations
        for variable in (bernstein.coefficients, bernstein.bounds)
    ]
    changes = []
    try:
        for name, bernstein in activations:
            # Again for every layer: the rebounds before it change what it sees.
            low, high = next(
                (low, high)
                for layer, low, high in verification.activation_input_bounds(
                    model, lower, upper
                )
                if layer is bernstein
            )
            old = as_float64(bernstein.bounds)
            width = min_width
            if bernstein.trainable_bounds:
                # Narrower intervals the bounds constraint would widen at the
                # next step, without re-expressing the coefficients.
                width = max(width, getattr(bernstein.bounds_constraint, "min_width", 0.0))
            new = _covering_bounds(
                low, high, old.shape[:-1], margin, width, bernstein.bounds.dtype
            )
            try:
                rebound(bernstein, new)
            except ValueError as error:
                raise ValueError(
                    f"`bounds_from_domain` cannot set the intervals of layer "
                    f"{name!r} to cover its inputs on the domain: {error}"
                ) from None
            changes.append((name, old, as_float64(bernstein.bounds)))
    except Exception:
        for variable, value in saved:
            variable.assign(value)
        raise
    return changes


def _covering_bounds(low, high, parameter_shape, margin, min_width, dtype):
    """Rows `(l, u)` of shape `parameter_shape + (2,)`, representable in
    `dtype`, that contain `[low, high]` (`(batch,) + input shape`) per
    neuron, widened by `margin` and to `min_width`."""
    low = np.asarray(low, "float64")
    high = np.asarray(high, "float64")
    # Samples of one neuron: the boxes and the shared axes.
    axes = (0,) + tuple(
        axis + 1 for axis, size in enumerate(parameter_shape) if size == 1
    )
    low = np.min(low, axis=axes, keepdims=True)[0]
    high = np.max(high, axis=axes, keepdims=True)[0]
    if low.shape != tuple(parameter_shape):
        raise ValueError(
            f"Internal error: activation input bounds of shape {low.shape} for "
            f"neurons of shape {tuple(parameter_shape)}."
        )
    with np.errstate(all="ignore"):
        padding = margin * (high - low)
        lower, upper = low - padding, high + padding
        centre = 0.5 * (lower + upper)
        narrow = ~(upper - lower >= min_width)
        lower = np.where(narrow, np.minimum(lower, centre - 0.5 * min_width), lower)
        upper = np.where(narrow, np.maximum(upper, centre + 0.5 * min_width), upper)
        # Outward to the dtype the layer stores, so that the stored interval
        # still contains the float64 one.
        dtype = np.dtype(keras.backend.standardize_dtype(dtype))
        down, up = dtype.type(-np.inf), dtype.type(np.inf)
        stored_lower = lower.astype(dtype)
        stored_upper = upper.astype(dtype)
        stored_lower = np.where(
            stored_lower > lower, np.nextafter(stored_lower, down), stored_lower
        )
        stored_upper = np.where(
            stored_upper < upper, np.nextafter(stored_upper, up), stored_upper
        )
        stored_upper = np.where(
            stored_upper <= stored_lower, np.nextafter(stored_lower, up), stored_upper
        )
    return np.stack([stored_lower, stored_upper], axis=-1).astype("float64")


def _summary(values):
    values = np.asarray(values)
    return values.tolist() if values.size <= 8 else f"array of shape {values.shape}"


# Halvings of a capped widening before a neuron keeps its interval.
_MAX_HALVINGS = 12


def _widen_toward_data(layer, z, quantiles, margin, max_change):
    """Widens `layer`'s intervals toward its pre-activations `z`, in place.

    The widening of `keras_bernstein.callbacks.BoundsUpdate`, which states
    its promises: per neuron, toward the `quantiles` of `z` plus `margin`
    times their range, each side by at most the interval's width, halved
    until `_keeps_promises` holds.

    Returns:
        `(widened, capped)`: how many neurons got a wider interval, and how
        many of the neurons that asked for one got less than asked.
    """
    bernstein = _activation_of(layer)
    parameter_shape = tuple(bernstein.coefficients.shape[:-1])
    # Samples of one neuron: the batch axis and the shared axes.
    sample_axes = (0,) + tuple(
        axis + 1 for axis, size in enumerate(parameter_shape) if size == 1
    )
    z = z.astype("float64")
    if not np.all(np.isfinite(z)):
        raise ValueError(
            f"`BoundsUpdate`: the pre-activations of layer {layer.name!r} on "
            "the probe data hold NaN or infinite values (non-finite probe "
            "inputs, or a diverged model); no interval can cover them. "
            f"Received: {int(np.sum(~np.isfinite(z)))} non-finite entries"
        )

    def per_neuron(values):
        return np.reshape(values, -1)

    low, high = np.quantile(z, quantiles, axis=sample_axes, keepdims=True)
    low, high = per_neuron(low), per_neuron(high)
    data_lower = per_neuron(z.min(axis=sample_axes, keepdims=True))
    data_upper = per_neuron(z.max(axis=sample_axes, keepdims=True))
    padding = margin * (high - low)
    bounds = as_float64(bernstein.bounds).reshape(-1, 2)
    target = np.stack([low - padding, high + padding], -1)
    # One update extends each side by at most the interval's width: beyond
    # that float32 rarely keeps the function (see `rebound`), and halving
    # a step toward a far outlier would never reach a usable size.
    width = bounds[:, 1] - bounds[:, 0]
    target = np.stack(
        [
            np.clip(target[:, 0], bounds[:, 0] - width, bounds[:, 0]),
            np.clip(target[:, 1], bounds[:, 1], bounds[:, 1] + width),
        ],
        axis=-1,
    ).astype(bernstein.bounds.dtype).astype("float64")
    # Compared in the variable's dtype, so that rounding alone never
    # counts as widening.
    wanted = np.any(target != bounds, axis=-1)
    if not np.any(wanted):
        return 0, 0
    chosen_bounds = bounds.copy()
    chosen_coefficients = as_float64(bernstein.coefficients).reshape(bounds.shape[0], -1)
    # Per side, the fraction of the asked widening tried; the two sides
    # are capped separately, so one side's trouble does not block the other.
    wants_lower = target[:, 0] != bounds[:, 0]
    wants_upper = target[:, 1] != bounds[:, 1]
    lower_step = wants_lower.astype("float64")
    upper_step = wants_upper.astype("float64")
    smallest = 0.5**_MAX_HALVINGS

    def passes(rows, lower, upper):
        old = bounds[rows]
        candidate = np.stack(
            [
                old[:, 0] + lower * (target[rows, 0] - old[:, 0]),
                old[:, 1] + upper * (target[rows, 1] - old[:, 1]),
            ],
            axis=-1,
        )
        plan = _Rebound(bernstein, candidate, rows)
        return plan, _keeps_promises(plan, data_lower[rows], data_upper[rows], max_change)

    done = ~wanted
    while not np.all(done):
        rows = np.flatnonzero(~done)
        lower, upper = lower_step[rows], upper_step[rows]
        plan, passed = passes(rows, lower, upper)
        chosen_bounds[rows[passed]] = plan.new_bounds[passed]
        chosen_coefficients[rows[passed]] = plan.coefficients[passed]
        done[rows[passed]] = True
        rows, lower, upper = rows[~passed], lower[~passed], upper[~passed]
        if not len(rows):
            break
        _, lower_alone = passes(rows, lower, 0.0 * upper)
        _, upper_alone = passes(rows, 0.0 * lower, upper)
        lower = np.where(lower_alone & ~upper_alone, lower, 0.5 * lower)
        upper = np.where(upper_alone & ~lower_alone, upper, 0.5 * upper)
        lower[lower < smallest] = 0.0
        upper[upper < smallest] = 0.0
        lower_step[rows], upper_step[rows] = lower, upper
        # Nothing left to widen: the neuron keeps its interval.
        done[rows[(lower == 0.0) & (upper == 0.0)]] = True
    widened = np.any(chosen_bounds != bounds, axis=-1)
    capped = int(
        np.sum((wants_lower & (lower_step < 1.0)) | (wants_upper & (upper_step < 1.0)))
    )
    if np.any(widened):
        rows = np.flatnonzero(widened)
        plan = _Rebound(bernstein, chosen_bounds[rows], rows)
        plan.coefficients = chosen_coefficients[rows]
        plan.assign()
    kept = wanted & ~widened
    if capped:
        warnings.warn(
            f"`BoundsUpdate` widened {capped} of {bounds.shape[0]} neurons of "
            f"layer {layer.name!r} less than the probe data asks "
            f"({int(kept.sum())} not at all), to keep its function on the "
            "old interval (float32), its change on the probe range "
            f"(max_change={max_change}), its coefficient constraint "
            "and its derivative certificate.",
            stacklevel=2,
        )
    return int(widened.sum()), capped


def _keeps_promises(plan, data_lower, data_upper, max_change):
    """Per neuron: whether `plan` keeps every promise of `BoundsUpdate`."""
    error, allowed = plan.interval_error()
    rounding = plan.rounding_floor(float(np.finfo(plan.dtype).eps))
    # Outside the new interval both functions are affine (or constant):
    # the data range's ends and the new interval inside it see the most.
    on_data = np.maximum(
        plan.change(data_lower, data_upper),
        plan.change(
            np.maximum(plan.new_bounds[:, 0], data_lower),
            np.minimum(plan.new_bounds[:, 1], data_upper),
        ),
    )
    return (
        (error <= allowed)
        & (on_data <= max_change * plan.scale() + rounding)
        & plan.slope_sign_kept()
        & np.all(np.isfinite(plan.coefficients), axis=-1)
    )
