"""Certified output bounds (Bern-IBP), certified accuracy, derivative certificates.

`output_bounds` propagates an input box through a model by interval
arithmetic in NumPy float64. Affine layers use the centre-radius form
(`W mid + b ± |W| rad`), monotone activations are applied to both ends, and
Bernstein activations use the tight Bern-IBP scheme of
`keras_bernstein.ops.bernstein_range`: the coefficients are re-expressed on
each neuron's incoming interval by de Casteljau subdivision and bounded by
their min/max, and the parts of the interval outside `[l, u]` are bounded
exactly for the layer's extrapolation mode.

The bounds are sound for the real-number function the model computes; the
model itself runs in float32, whose rounding can differ from it by about
`1e-6` relative. Leave that slack when you compare a float32 evaluation with
the bounds.

Reference:
    Khedr and Shoukry, DeepBern-Nets: Taming the Complexity of Certifying
    Neural Networks using Bernstein Polynomial Activations and Precise Bound
    Propagation, AAAI 2024.
"""

import dataclasses

import keras
import numpy as np

from keras_bernstein import ops as bernstein_ops
from keras_bernstein._arguments import check_interval
from keras_bernstein._arguments import check_nonnegative_number
from keras_bernstein._model_layers import activation_name
from keras_bernstein._model_layers import as_float64
from keras_bernstein._model_layers import bernstein_activations
from keras_bernstein._model_layers import check_model
from keras_bernstein._model_layers import is_bernstein
from keras_bernstein._model_layers import output_layers
from keras_bernstein.layers import Bernstein
from keras_bernstein.layers import BernsteinDense

# Elementwise non-decreasing activations, in float64, by their Keras names.
MONOTONE_ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "leaky_relu": lambda x: np.where(x >= 0.0, x, 0.2 * x),
    "elu": lambda x: np.where(x > 0.0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: 1.0507009873554805 * np.where(
        x > 0.0, x, 1.6732632423543772 * np.expm1(np.minimum(x, 0.0))
    ),
    "softplus": lambda x: np.logaddexp(x, 0.0),
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "sigmoid": lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)),
    "hard_sigmoid": lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "tanh": np.tanh,
}


class Box:
    """An elementwise interval `[lower, upper]` of float64 arrays, batch first."""

    def __init__(self, lower, upper):
        self.lower = np.asarray(lower, dtype="float64")
        self.upper = np.asarray(upper, dtype="float64")

    @property
    def center(self):
        return 0.5 * (self.lower + self.upper)

    @property
    def radius(self):
        return 0.5 * (self.upper - self.lower)

    def map_monotone(self, function):
        return Box(function(self.lower), function(self.upper))

    def reshape(self, shape):
        return Box(self.lower.reshape(shape), self.upper.reshape(shape))


def _affine(box, kernel_fn, absolute_kernel_fn, bias=None):
    """`kernel_fn(x) + bias` over the box, by centre and radius."""
    center = kernel_fn(box.center)
    radius = absolute_kernel_fn(box.radius)
    if bias is not None:
        center = center + bias
    return Box(center - radius, center + radius)


def _scale_shift(box, scale, shift):
    """`x * scale + shift` elementwise; `scale` may be negative."""
    low = box.lower * scale
    high = box.upper * scale
    return Box(np.minimum(low, high) + shift, np.maximum(low, high) + shift)


def _activation(box, layer, activation):
    name = activation_name(activation)
    if name == "softmax":
        return _softmax(box)
    if name not in MONOTONE_ACTIVATIONS:
        shown = name or activation
        if name is None and hasattr(activation, "__qualname__"):
            shown = f"{activation.__module__}.{activation.__qualname__}"
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) uses the activation "
            f"{shown!r}, which has no certified bound. Supported: "
            f"{sorted(MONOTONE_ACTIVATIONS) + ['softmax']}."
        )
    return box.map_monotone(MONOTONE_ACTIVATIONS[name])


def _softmax(box):
    """Softmax on the last axis: `p_i` is smallest at `z_i = l_i`, `z_j = u_j`."""
    size = box.lower.shape[-1]
    diagonal = np.eye(size, dtype=bool)

    def probability(own, others):
        logits = np.where(diagonal, own[..., :, None], others[..., None, :])
        peak = logits.max(axis=-1)
        log_sum = peak + np.log(np.exp(logits - peak[..., None]).sum(axis=-1))
        return np.exp(own - log_sum)

    return Box(probability(box.lower, box.upper), probability(box.upper, box.lower))


def _dense(box, layer):
    kernel = as_float64(layer.kernel)
    bias = as_float64(layer.bias) if layer.use_bias else None
    box = _affine(box, lambda x: x @ kernel, lambda r: r @ np.abs(kernel), bias)
    return _activation(box, layer, layer.activation)


def _conv_same_padding(size, kernel, stride, dilation):
    extent = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def _convolve(x, kernel, strides, padding, dilation):
    """Channels-last N-D convolution in NumPy (cross-correlation, as Keras)."""
    rank = kernel.ndim - 2
    spatial = range(1, rank + 1)
    pads = [(0, 0)]
    for axis, k, s, d in zip(spatial, kernel.shape[:rank], strides, dilation):
        if padding == "same":
            pads.append(_conv_same_padding(x.shape[axis], k, s, d))
        elif padding == "causal":
            pads.append(((k - 1) * d, 0))
        else:
            pads.append((0, 0))
    x = np.pad(x, pads + [(0, 0)])
    extents = [(k - 1) * d + 1 for k, d in zip(kernel.shape[:rank], dilation)]
    windows = np.lib.stride_tricks.sliding_window_view(x, extents, axis=tuple(spatial))
    # windows: (batch, *positions, channels, *extents)
    index = (slice(None),)
    index += tuple(slice(None, None, s) for s in strides)
    index += (slice(None),)
    index += tuple(slice(None, None, d) for d in dilation)
    windows = windows[index]
    return np.tensordot(
        windows,
        kernel,
        axes=(list(range(rank + 1, 2 * rank + 2)), [rank] + list(range(rank))),
    )


def _conv(box, layer):
    if layer.groups != 1 or layer.rank not in (1, 2):
        raise ValueError(
            f"Layer {layer.name!r}: only 1-D and 2-D convolutions with groups=1 "
            f"are supported. Received: rank={layer.rank}, groups={layer.groups}"
        )
    if layer.padding not in ("valid", "same", "causal"):
        raise ValueError(
            f"Layer {layer.name!r}: unsupported padding. "
            f"Received: padding={layer.padding!r}"
        )
    kernel = as_float64(layer.kernel)
    channels_first = layer.data_format == "channels_first"
    if channels_first:
        box = Box(np.moveaxis(box.lower, 1, -1), np.moveaxis(box.upper, 1, -1))
    args = (tuple(layer.strides), layer.padding, tuple(layer.dilation_rate))
    bias = as_float64(layer.bias) if layer.use_bias else None
    box = _affine(
        box,
        lambda x: _convolve(x, kernel, *args),
        lambda r: _convolve(r, np.abs(kernel), *args),
        bias,
    )
    box = _activation(box, layer, layer.activation)
    if channels_first:
        box = Box(np.moveaxis(box.lower, -1, 1), np.moveaxis(box.upper, -1, 1))
    return box


_MAX_POOLING = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D)
_AVERAGE_POOLING = (keras.layers.AveragePooling1D, keras.layers.AveragePooling2D)


def _pool(box, layer):
    """Max pooling is monotone and average pooling a positive linear map, so
    both map the box's corners: pool(lower) <= pool(x) <= pool(upper)."""
    average = isinstance(layer, _AVERAGE_POOLING)
    if layer.padding not in ("valid", "same") or (average and layer.padding == "same"):
        raise ValueError(
            f"Layer {layer.name!r}: unsupported padding for {type(layer).__name__}. "
            f"Received: padding={layer.padding!r}"
        )
    pool, strides = tuple(layer.pool_size), tuple(layer.strides)
    rank = len(pool)

    def apply(x):
        if layer.data_format == "channels_first":
            x = np.moveaxis(x, 1, -1)
        pads = [(0, 0)]
        for axis, k, stride in zip(range(1, rank + 1), pool, strides):
            same = layer.padding == "same"
            pads.append(_conv_same_padding(x.shape[axis], k, stride, 1) if same else (0, 0))
        x = np.pad(x, pads + [(0, 0)], constant_values=-np.inf)
        windows = np.lib.stride_tricks.sliding_window_view(
            x, pool, axis=tuple(range(1, rank + 1))
        )[(slice(None),) + tuple(slice(None, None, s) for s in strides)]
        window_axes = tuple(range(-rank, 0))
        out = windows.mean(axis=window_axes) if average else windows.max(axis=window_axes)
        if layer.data_format == "channels_first":
            out = np.moveaxis(out, -1, 1)
        return out

    return Box(apply(box.lower), apply(box.upper))


def _axis_shape(ndim, axes, values):
    shape = [1] * ndim
    for axis in axes:
        shape[axis % ndim] = -1
    return values.reshape(shape)


def _batch_normalization(box, layer):
    ndim = box.lower.ndim
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    variance = as_float64(layer.moving_variance)
    scale = 1.0 / np.sqrt(variance + layer.epsilon)
    if layer.scale:
        scale = scale * as_float64(layer.gamma)
    shift = -as_float64(layer.moving_mean) * scale
    if layer.center:
        shift = shift + as_float64(layer.beta)
    return _scale_shift(
        box, _axis_shape(ndim, axes, scale), _axis_shape(ndim, axes, shift)
    )


def _bernstein(box, layer, method):
    low, high = bernstein_ops.bernstein_range(
        layer.coefficients,
        layer.bounds,
        box.lower,
        box.upper,
        extrapolation=layer.extrapolation,
        method=method,
    )
    return Box(low, high)


def _normalization(box, layer):
    if layer.mean is None:
        raise ValueError(f"Layer {layer.name!r}: `Normalization` is not adapted.")
    deviation = np.maximum(
        np.sqrt(as_float64(layer.variance)), keras.backend.epsilon()
    )
    mean = as_float64(layer.mean)
    if layer.invert:
        return _scale_shift(box, deviation, mean)
    return _scale_shift(box, 1.0 / deviation, -mean / deviation)


def _flatten(box, layer):
    if layer.data_format == "channels_first" and box.lower.ndim > 2:
        box = Box(np.moveaxis(box.lower, 1, -1), np.moveaxis(box.upper, 1, -1))
    return box.reshape((box.lower.shape[0], -1))


def _leaky_relu(box, layer):
    if layer.negative_slope < 0:
        raise ValueError(
            f"Layer {layer.name!r}: a negative slope is not monotone. "
            f"Received: negative_slope={layer.negative_slope}"
        )
    slope = layer.negative_slope
    return box.map_monotone(lambda x: np.where(x >= 0.0, x, slope * x))


def _relu(box, layer):
    max_value = np.inf if layer.max_value is None else float(layer.max_value)
    slope = float(layer.negative_slope)
    threshold = float(layer.threshold)
    if slope < 0:
        raise ValueError(
            f"Layer {layer.name!r}: a negative slope is not monotone. "
            f"Received: negative_slope={slope}"
        )

    def relu(x):
        return np.minimum(np.where(x >= threshold, x, slope * (x - threshold)), max_value)

    return box.map_monotone(relu)


def _merge(boxes, layer):
    if isinstance(layer, keras.layers.Add):
        return Box(sum(b.lower for b in boxes), sum(b.upper for b in boxes))
    if isinstance(layer, keras.layers.Subtract):
        first, second = boxes
        return Box(first.lower - second.upper, first.upper - second.lower)
    if isinstance(layer, keras.layers.Average):
        count = len(boxes)
        return Box(
            sum(b.lower for b in boxes) / count, sum(b.upper for b in boxes) / count
        )
    # Concatenate
    return Box(
        np.concatenate([b.lower for b in boxes], axis=layer.axis),
        np.concatenate([b.upper for b in boxes], axis=layer.axis),
    )


_MERGES = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Average,
    keras.layers.Concatenate,
)
_IDENTITIES = (
    keras.layers.InputLayer,
    keras.layers.Dropout,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.ActivityRegularization,
)


def _propagate(layer, inputs, method, record=None):
    """Bounds of `layer`'s output given a `Box` (or a list of them) as input."""
    if isinstance(layer, keras.Sequential):
        box = inputs
        for sublayer in layer.layers:
            if record is not None:
                record[id(sublayer)] = box
            box = _propagate(sublayer, box, method)
        return box
    if isinstance(layer, keras.Model):
        return _propagate_functional(layer, inputs, method, record)
    if isinstance(layer, _MERGES):
        return _merge(inputs, layer)
    box = inputs
    if isinstance(box, (list, tuple)):
        if len(box) != 1:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) got "
                f"{len(box)} inputs; only merge layers take several."
            )
        (box,) = box
    if isinstance(layer, BernsteinDense):
        box = _dense(box, layer.dense)
        if layer.batch_normalization is not None:
            box = _batch_normalization(box, layer.batch_normalization)
        return _bernstein(box, layer.bernstein, method)
    if isinstance(layer, Bernstein):
        return _bernstein(box, layer, method)
    if isinstance(layer, keras.layers.Dense):
        return _dense(box, layer)
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)):
        return _conv(box, layer)
    if isinstance(layer, _MAX_POOLING + _AVERAGE_POOLING):
        return _pool(box, layer)
    if isinstance(layer, keras.layers.BatchNormalization):
        return _batch_normalization(box, layer)
    if isinstance(layer, keras.layers.Rescaling):
        return _scale_shift(box, np.asarray(layer.scale, "float64"),
                            np.asarray(layer.offset, "float64"))
    if isinstance(layer, keras.layers.Normalization):
        return _normalization(box, layer)
    if isinstance(layer, keras.layers.Flatten):
        return _flatten(box, layer)
    if isinstance(layer, keras.layers.Reshape):
        return box.reshape((box.lower.shape[0],) + tuple(layer.target_shape))
    if isinstance(layer, keras.layers.Activation):
        return _activation(box, layer, layer.activation)
    if isinstance(layer, keras.layers.ReLU):
        return _relu(box, layer)
    if isinstance(layer, keras.layers.LeakyReLU):
        return _leaky_relu(box, layer)
    if isinstance(layer, _IDENTITIES):
        return box
    raise ValueError(
        f"Cannot bound the output of layer {getattr(layer, 'name', layer)!r} "
        f"({type(layer).__name__}): `output_bounds` supports Dense, "
        "BernsteinDense, Bernstein, Conv1D, Conv2D, MaxPooling1D/2D, "
        "AveragePooling1D/2D (valid), BatchNormalization, Rescaling, "
        "Normalization, Flatten, Reshape, monotone activations, softmax, Add, "
        "Subtract, Average, Concatenate and Dropout."
    )


def _propagate_functional(model, inputs, method, record):
    def operation_fn(operation):
        def bound(*args, **kwargs):
            box = args[0]
            if record is not None:
                record[id(operation)] = box
            return _propagate(operation, box, method)

        return bound

    # Keras' own graph walker: it hands each operation the values computed
    # for its input tensors, here `Box`es in place of tensors.
    return model._run_through_graph(
        inputs if isinstance(inputs, (list, tuple)) else [inputs],
        operation_fn=operation_fn,
    )


def _check_box(lower, upper):
    lower = np.asarray(keras.ops.convert_to_numpy(lower), dtype="float64")
    upper = np.asarray(keras.ops.convert_to_numpy(upper), dtype="float64")
    if lower.shape != upper.shape:
        raise ValueError(
            "`lower` and `upper` must have the same shape. "
            f"Received: lower.shape={lower.shape}, upper.shape={upper.shape}"
        )
    if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper))):
        raise ValueError("`lower` and `upper` must be finite. Received: non-finite values")
    if np.any(lower > upper):
        raise ValueError(
            "`lower` must not exceed `upper`. Received: "
            f"max(lower - upper)={np.max(lower - upper)}"
        )
    return Box(lower, upper)


def _input_boxes(model, lower, upper):
    if isinstance(lower, (list, tuple)):
        if not isinstance(upper, (list, tuple)) or len(upper) != len(lower):
            raise ValueError(
                "For several inputs pass `lower` and `upper` as lists of the "
                f"same length. Received: {len(lower)} lower arrays"
            )
        return [_check_box(lo, hi) for lo, hi in zip(lower, upper)]
    return _check_box(lower, upper)


def _check_method(method):
    if method not in bernstein_ops.RANGE_METHODS:
        raise ValueError(
            f"`method` must be one of {bernstein_ops.RANGE_METHODS}. "
            f"Received: method={method!r}"
        )


def output_bounds(model, lower, upper, method="subdivision"):
    """Certified elementwise bounds on a model's output over an input box.

    Interval bound propagation in NumPy float64 with the tight Bern-IBP
    enclosure for Bernstein activations (see the module docstring). Every
    output the model computes for an input `x` with `lower <= x <= upper`
    lies in `[lower_out, upper_out]` (up to the model's own float32
    rounding, about `1e-6` relative). Layers run in inference mode: batch
    normalization uses its moving statistics, dropout is the identity.

    Reference:
        Khedr and Shoukry, DeepBern-Nets, AAAI 2024 (Bern-IBP).

    Args:
        model: A built Sequential or functional `keras.Model` made of `Dense`,
            `BernsteinDense`, `Bernstein` (any extrapolation), `Conv1D`,
            `Conv2D` (groups=1, valid/same/causal padding, any strides and
            dilation), `BatchNormalization`, `Rescaling`, `Normalization`,
            `Flatten`, `Reshape`, `Activation`/`ReLU`/`LeakyReLU` and layer
            activations that are monotone (`linear`, `relu`, `relu6`,
            `leaky_relu`, `elu`, `selu`, `softplus`, `softsign`, `sigmoid`,
            `hard_sigmoid`, `tanh`) or `softmax`, `Add`, `Subtract`,
            `Average`, `Concatenate`, `Dropout` and nested such models.
        lower: Array of the input's shape, batch first (a list of arrays
            for a model with several inputs).
        upper: Same, with `upper >= lower`.
        method: How Bernstein activations are bounded on their incoming
            interval: `"subdivision"` (default, tight) or
            `"coefficient_range"` (`[min c, max c]`, the naive enclosure, for
            comparison).

    Returns:
        `(lower_out, upper_out)`: float64 NumPy arrays of the model's output
        shape (lists of them for a model with several outputs).

    Raises:
        ValueError: for a layer or activation without a certified bound,
            naming the layer.

    Example:
        >>> x = np.random.rand(4, 784).astype("float32")
        >>> low, high = output_bounds(model, x - 0.01, x + 0.01)
        >>> bool(np.all(low <= model.predict(x)))
        True
    """
    check_model(model)
    _check_method(method)
    result = _propagate(model, _input_boxes(model, lower, upper), method)
    if isinstance(result, (list, tuple)):
        if len(result) == 1:
            return result[0].lower, result[0].upper
        return [b.lower for b in result], [b.upper for b in result]
    return result.lower, result.upper


def _num_classes(model):
    """The size of the model's single output, `(batch, classes)`."""
    try:
        shapes = [tuple(t.shape) for t in keras.tree.flatten(model.outputs)]
    except (AttributeError, TypeError, ValueError):
        shapes = []
    # With one class there is no margin to bound: every input would count.
    if len(shapes) != 1 or len(shapes[0]) != 2 or not (shapes[0][1] or 0) >= 2:
        raise ValueError(
            "`model` must have one output of shape (batch, classes) with at "
            f"least 2 classes. Received: model with output shapes {shapes}"
        )
    return shapes[0][1]


def _check_inputs(x, input_range):
    """`x` as float64, finite and inside `input_range` (a certificate for a
    ball clipped to a range that does not hold its centre is meaningless)."""
    x = np.asarray(keras.ops.convert_to_numpy(x), dtype="float64")
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(
            f"`x` must hold a batch of inputs. Received: x.shape={x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("`x` must be finite. Received: x with NaN or inf entries")
    if input_range is not None:
        low, high = check_interval(input_range, "input_range")
        if x.min() < low or x.max() > high:
            raise ValueError(
                "`x` must lie inside `input_range` (pass the range of valid "
                "inputs, e.g. (0, 255) for raw pixels, or None). Received: x "
                f"in [{x.min():g}, {x.max():g}], input_range={input_range!r}"
            )
    return x


def _check_labels(y, count, classes):
    """Integer labels `(count,)` in `[0, classes)`, from labels or one-hot rows."""
    y = np.asarray(keras.ops.convert_to_numpy(y))
    if y.ndim == 2 and y.shape[1] == classes and classes > 1:
        y = y.argmax(axis=-1)
    elif y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (count,):
        raise ValueError(
            f"`y` must hold one label per input: shape ({count},) or one-hot "
            f"({count}, {classes}). Received: y.shape={y.shape}"
        )
    if y.dtype == bool or not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"`y` must hold integer labels. Received: y.dtype={y.dtype}")
    if np.issubdtype(y.dtype, np.floating) and not np.all(
        np.isfinite(y) & (y == np.round(y))
    ):
        raise ValueError(
            "`y` must hold integer labels. Received: y with non-integer values"
        )
    if y.min() < 0 or y.max() >= classes:
        raise ValueError(
            f"`y` must hold labels in [0, {classes - 1}] (the model has "
            f"{classes} classes). Received: y in [{y.min():g}, {y.max():g}]"
        )
    return y.astype(int)


def certified_margins(model, x, y, epsilon, input_range=(0.0, 1.0), method="subdivision"):
    """Lower bounds of `z_y - max_{j != y} z_j` over L∞ balls of radius `epsilon`.

    `z` are the logits. When the model ends in a `Dense` layer with a linear
    or softmax activation (softmax preserves the order of the logits), the
    margin is bounded through that layer's weight differences
    `(W_y - W_j) h + b_y - b_j` on the bounds of its input `h`, which is
    tighter than subtracting two independent logit intervals; otherwise the
    output intervals are subtracted.

    Args:
        model: A model accepted by `output_bounds` with one input and one
            output of shape `(batch, classes)`.
        x: Inputs, batch first.
        y: Integer labels in `[0, classes)`, `(batch,)` or `(batch, 1)`, or
            one-hot `(batch, classes)`.
        epsilon: Nonnegative radius of the L∞ ball around each input.
        input_range: `(min, max)` with `min < max`, the range of valid
            inputs (e.g. pixel values) the box is clipped to, or `None`.
            Every entry of `x` must lie inside it.
        method: See `output_bounds`.

    Returns:
        Float64 array `(batch,)`; a positive entry certifies that every input
        in the ball is classified as `y`.
    """
    check_model(model)
    _check_method(method)
    epsilon = check_nonnegative_number(epsilon, "epsilon")
    x = _check_inputs(x, input_range)
    y = _check_labels(y, len(x), _num_classes(model))
    lower, upper = x - epsilon, x + epsilon
    if input_range is not None:
        lower = np.clip(lower, *input_range)
        upper = np.clip(upper, *input_range)
    record = {}
    box = _propagate(model, _check_box(lower, upper), method, record)
    if isinstance(box, (list, tuple)):
        (box,) = box
    rows = np.arange(len(y))
    outputs = output_layers(model)
    last = outputs[0] if len(outputs) == 1 else None
    if (
        type(last) is keras.layers.Dense
        and activation_name(last.activation) in ("linear", "softmax")
        and id(last) in record
    ):
        hidden = record[id(last)]
        if isinstance(hidden, (list, tuple)):
            (hidden,) = hidden
        kernel = as_float64(last.kernel)
        bias = as_float64(last.bias) if last.use_bias else np.zeros(kernel.shape[1])
        # difference[b, :, j] = W[:, y_b] - W[:, j]
        difference = kernel[:, y].T[:, :, None] - kernel[None, :, :]
        center = np.einsum("bi,bij->bj", hidden.center, difference)
        radius = np.einsum("bi,bij->bj", hidden.radius, np.abs(difference))
        margins = center - radius + (bias[y][:, None] - bias[None, :])
    else:
        margins = box.lower[rows, y][:, None] - box.upper
    margins[rows, y] = np.inf
    return margins.min(axis=-1)


def certified_accuracy(model, x, y, epsilon, input_range=(0.0, 1.0), method="subdivision"):
    """Fraction of inputs certified robust within an L∞ ball of radius `epsilon`.

    An input counts when the lower bound of its true-class logit margin
    (`certified_margins`) is positive: then every point of the ball, the
    input included, is classified correctly.

    Args:
        model: See `certified_margins`.
        x: Inputs, batch first.
        y: Integer labels or one-hot.
        epsilon: Radius of the L∞ ball.
        input_range: `(min, max)` the box is clipped to, or `None`; see
            `certified_margins`.
        method: `"subdivision"` or `"coefficient_range"`; see `output_bounds`.

    Returns:
        A float in `[0, 1]`, at most the clean accuracy (up to float32
        rounding of margins within about `1e-6` of zero).

    Raises:
        ValueError: for an invalid `epsilon` or `input_range`, inputs outside
            `input_range`, or labels that are not integers in
            `[0, classes)`.

    Example:
        >>> fraction = certified_accuracy(model, x_test, y_test, epsilon=0.01)
    """
    margins = certified_margins(model, x, y, epsilon, input_range, method)
    return float(np.mean(margins > 0.0))


@dataclasses.dataclass(frozen=True)
class DerivativeCertificate:
    """The slope guarantee of one Bernstein layer.

    Attributes:
        layer_name: The layer's name (the `BernsteinDense` or `Bernstein`).
        lower_bounds: Float64 array, one guaranteed `min σ'` per neuron
            (`Bernstein.derivative_lower_bound()`).
        min_slope: The smallest of them.
        monotone: Whether every neuron's bound is positive (strictly
            increasing coefficients): each activation is strictly increasing
            with slope at least `min_slope`.
        monotone_fraction: Fraction of neurons with a positive bound.
        domain: Where the bound holds: `"all real inputs"` for linear
            extrapolation, `"[l, u]"` otherwise (clip has slope 0 outside,
            polynomial has the continuation's slope).
    """

    layer_name: str
    lower_bounds: np.ndarray
    min_slope: float
    monotone: bool
    monotone_fraction: float
    domain: str


def derivative_certificate(model):
    """Per Bernstein layer: the guaranteed minimum slope and the monotone condition.

    Reads `Bernstein.derivative_lower_bound()`, `n · min_k (c_k+1 − c_k) / (u − l)`
    per neuron, for every `Bernstein` and `BernsteinDense` in the model
    (nested ones included). A layer is monotone when every neuron's bound is
    positive; a network whose Bernstein layers are all monotone and whose
    other layers are monotone maps never has an activation with vanishing
    gradient inside `[l, u]`.

    Args:
        model: A built `keras.Model` (or a single built Bernstein layer).

    Returns:
        A list of `DerivativeCertificate`, in the order of the layers.

    Example:
        >>> for cert in derivative_certificate(model):
        ...     print(cert.layer_name, cert.min_slope, cert.monotone)
    """
    if not (isinstance(model, keras.Model) or is_bernstein(model)):
        raise ValueError(
            "`model` must be a keras.Model or a Bernstein layer. "
            f"Received: model={model!r}"
        )
    certificates = []
    for name, layer in bernstein_activations(model):
        if not layer.built:
            raise ValueError(f"Layer {name!r} is not built yet; call the model first.")
        bounds = as_float64(layer.derivative_lower_bound())
        certificates.append(
            DerivativeCertificate(
                layer_name=name,
                lower_bounds=bounds,
                min_slope=float(bounds.min()),
                monotone=bool(np.all(bounds > 0.0)),
                monotone_fraction=float(np.mean(bounds > 0.0)),
                domain="all real inputs" if layer.extrapolation == "linear" else "[l, u]",
            )
        )
    return certificates
