"""Exact re-parameterisations of Bernstein layers: degree elevation and rebounding.

A Bernstein polynomial can be written in the basis of any higher degree
(`elevate_degree`) and on any other interval (`rebound`, by de Casteljau
subdivision / blossoming) without changing the polynomial. These transforms
let a model grow capacity or move its activation intervals mid-training at
the exact function it has learned; `BoundsUpdate` uses `rebound` to widen the
intervals to the observed pre-activation range, the Bernstein counterpart of
KAN's grid update.

After a transform, compile the model again before training further: the
optimizer's slots belong to the old variables (`elevate_degree`) or to the
old basis (`rebound`).
"""

import keras
import numpy as np

from keras_bernstein import ops as bernstein_ops
from keras_bernstein.layers import Bernstein
from keras_bernstein.layers import BernsteinDense
from keras_bernstein.layers.bernstein import check_degree


def _activation_of(layer):
    """The `Bernstein` layer that holds `layer`'s coefficients and bounds."""
    if isinstance(layer, BernsteinDense):
        return layer.bernstein
    if isinstance(layer, Bernstein):
        return layer
    raise ValueError(
        "Expected a `Bernstein` or `BernsteinDense` layer. "
        f"Received: layer={layer!r}"
    )


def _check_built(layer):
    if not layer.built:
        raise ValueError(
            f"Layer {layer.name!r} must be built before it is transformed "
            "(call it on data or build the model)."
        )


# Weights and boxes as float64 NumPy arrays.
_numpy = bernstein_ops._as_float64


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
        _numpy(bernstein.coefficients), new_degree
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
        if isinstance(layer, (Bernstein, BernsteinDense)):
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


def _check_new_bounds(new_bounds, shape):
    new_bounds = np.asarray(keras.ops.convert_to_numpy(new_bounds), "float64")
    try:
        new_bounds = np.broadcast_to(new_bounds, shape)
    except ValueError:
        raise ValueError(
            f"`new_bounds` must broadcast to the layer's bounds shape {shape}, "
            f"e.g. a pair (l, u). Received: new_bounds.shape={new_bounds.shape}"
        ) from None
    if not np.all(np.isfinite(new_bounds)) or np.any(
        new_bounds[..., 0] >= new_bounds[..., 1]
    ):
        raise ValueError(
            "`new_bounds` must be finite with lower < upper for every neuron. "
            f"Received: new_bounds={new_bounds.tolist() if new_bounds.size <= 8 else '...'}"
        )
    return new_bounds


def rebound(layer, new_bounds):
    """Re-expresses each neuron's polynomial on a new interval, in place.

    With `t = (x - l) / (u - l)` and the new interval `[l', u']` mapped to
    `[a, b]` in `t`, the new coefficients are the old polynomial's blossom
    values on `[a, b]` (`keras_bernstein.ops.subdivide_coefficients`). The
    polynomial is unchanged on the whole real line, so:

    - inside the new interval `[l', u']` the layer computes the old
      polynomial: exactly the old function on the overlap with `[l, u]`;
      on parts of `[l', u']` outside `[l, u]` (widening) it computes the
      polynomial's own continuation where the old layer extrapolated
      (linearly or by clipping), so the function changes there unless the
      extrapolation is `"polynomial"`;
    - outside `[l', u']` the layer extrapolates from the new ends in its mode.
      With `"polynomial"` extrapolation the function is unchanged everywhere.

    Shrinking an interval therefore keeps the function on the new interval
    and changes the extrapolated parts; widening keeps it on the old one.
    The degree and variable shapes do not change, so a compiled model keeps
    training (the optimizer's moment estimates refer to the old basis). Large
    widening factors amplify float32 rounding of the coefficients.

    Args:
        layer: A built `Bernstein` or `BernsteinDense` layer.
        new_bounds: `(l', u')` for every neuron, or an array broadcastable to
            the layer's `bounds` shape `param_shape + (2,)`.

    Returns:
        `layer`, with new `coefficients` and `bounds`.

    Example:
        >>> rebound(model.layers[1], (-4.0, 4.0))
    """
    bernstein = _activation_of(layer)
    _check_built(layer)
    bounds = _numpy(bernstein.bounds)
    new_bounds = _check_new_bounds(new_bounds, bounds.shape)
    width = bounds[..., 1] - bounds[..., 0]
    start = (new_bounds[..., 0] - bounds[..., 0]) / width
    stop = (new_bounds[..., 1] - bounds[..., 0]) / width
    coefficients = bernstein_ops.subdivide_coefficients(
        _numpy(bernstein.coefficients), start, stop
    )
    bernstein.coefficients.assign(coefficients.astype(bernstein.coefficients.dtype))
    bernstein.bounds.assign(new_bounds.astype(bernstein.bounds.dtype))
    return layer


class BoundsUpdate(keras.callbacks.Callback):
    """Widens Bernstein intervals to the observed pre-activation range during `fit`.

    Every `frequency` epochs the callback runs the model (inference mode) on
    `probe_x`, takes per-neuron quantiles `quantiles` of each Bernstein
    layer's pre-activations and, where they fall outside a neuron's
    `[l, u]`, widens that neuron's interval to cover them (plus `margin` ×
    the quantile range) with `rebound`. The polynomial is re-expressed
    exactly, so the function is unchanged on the old interval; inputs that
    the old layer extrapolated and the new interval covers now see the
    polynomial's continuation (see `rebound`). Intervals are never narrowed.
    The Bernstein answer to KAN's grid update: the basis follows the data.

    Args:
        probe_x: Probe inputs (array, list/dict of arrays, or an iterable of
            batches), e.g. 1,000 training samples.
        frequency: Positive integer: update after every `frequency`-th epoch.
        quantiles: `(low, high)` with `0 <= low < high <= 1`, the per-neuron
            quantiles of the pre-activations to cover; `(0, 1)` covers the
            observed min and max.
        margin: Nonnegative fraction of the covered range added on each
            widened side.
        layers: Names or layer objects of the `Bernstein`/`BernsteinDense`
            layers to update; default all top-level ones.
        batch_size: Batch size for probing.
        verbose: 0 or 1 (one line per update).

    Attributes:
        updates: A list with one dict per update: `epoch`, and per layer name
            the number of neurons whose interval was widened.

    Example:
        >>> model.fit(x, y, epochs=20,
        ...           callbacks=[BoundsUpdate(x[:1000], frequency=5)])
    """

    def __init__(
        self,
        probe_x,
        frequency=1,
        quantiles=(0.001, 0.999),
        margin=0.0,
        layers=None,
        batch_size=256,
        verbose=0,
    ):
        super().__init__()
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise ValueError(
                f"`frequency` must be a positive integer. Received: frequency={frequency!r}"
            )
        quantiles = tuple(float(q) for q in quantiles)
        if len(quantiles) != 2 or not 0.0 <= quantiles[0] < quantiles[1] <= 1.0:
            raise ValueError(
                "`quantiles` must be (low, high) with 0 <= low < high <= 1. "
                f"Received: quantiles={quantiles}"
            )
        if not margin >= 0.0:
            raise ValueError(f"`margin` must be >= 0. Received: margin={margin!r}")
        if verbose not in (0, 1):
            raise ValueError(f"`verbose` must be 0 or 1. Received: verbose={verbose!r}")
        self.probe_x = probe_x
        self.frequency = frequency
        self.quantiles = quantiles
        self.margin = float(margin)
        self.layers = layers
        self.batch_size = int(batch_size)
        self.verbose = verbose
        self.updates = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.frequency == 0:
            self.update(epoch)

    def update(self, epoch=None):
        """Probes the model and widens the intervals now; returns the update's dict."""
        # Imported here: `keras_bernstein.callbacks` re-exports this class.
        from keras_bernstein import callbacks

        layers = self.layers
        if layers is None:
            layers = callbacks.bernstein_layers(self.model)
        pre_activations = callbacks.collect_pre_activations(
            self.model, self.probe_x, layers=layers, batch_size=self.batch_size
        )
        record = {"epoch": epoch}
        for layer in self.model._flatten_layers(include_self=False, recursive=True):
            if layer.name not in pre_activations or not isinstance(
                layer, (Bernstein, BernsteinDense)
            ):
                continue
            record[layer.name] = self._widen(layer, pre_activations[layer.name])
        self.updates.append(record)
        if self.verbose:
            widened = ", ".join(
                f"{name}: {count}" for name, count in record.items() if name != "epoch"
            )
            print(f"BoundsUpdate (epoch {epoch}): widened neurons {widened}")
        return record

    def _widen(self, layer, z):
        bernstein = _activation_of(layer)
        parameter_shape = tuple(bernstein.coefficients.shape[:-1])
        # Samples of one neuron: the batch axis and the shared axes.
        sample_axes = (0,) + tuple(
            axis + 1 for axis, size in enumerate(parameter_shape) if size == 1
        )
        z = z.astype("float64")
        low, high = np.quantile(z, self.quantiles, axis=sample_axes, keepdims=True)
        low = low.reshape(parameter_shape)
        high = high.reshape(parameter_shape)
        padding = self.margin * (high - low)
        bounds = keras.ops.convert_to_numpy(bernstein.bounds)
        # Compared in the variable's dtype, so that rounding alone never
        # counts as widening.
        target = np.stack([low - padding, high + padding], -1).astype(bounds.dtype)
        new_bounds = np.stack(
            [
                np.minimum(bounds[..., 0], target[..., 0]),
                np.maximum(bounds[..., 1], target[..., 1]),
            ],
            axis=-1,
        )
        widened = np.any(new_bounds != bounds, axis=-1)
        if np.any(widened):
            rebound(layer, new_bounds)
        return int(widened.sum())
