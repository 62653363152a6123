"""Interval bound propagation through a Keras model, one rule per layer.

Each rule is written once against an array namespace: `FLOAT64` runs it in
NumPy float64 (the certificates of `keras_bernstein.verification`), `TENSORS`
on backend tensors with `keras.ops` (float32, differentiable with respect to
the weights, for certified training). Affine layers use the centre-radius
form (`W mid + b ± |W| rad`), monotone maps are applied to both ends, and
Bernstein activations use the subdivision enclosure of
`keras_bernstein.ops.bernstein_range`.
"""

import math

import keras
import numpy as np

from keras_bernstein._coefficient_algebra import _as_float64
from keras_bernstein._coefficient_algebra import _enclosure
from keras_bernstein._model_layers import activation_name
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


def _conv_same_padding(size, kernel, stride, dilation):
    extent = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def _spatial_padding(shape, kernels, strides, dilation, padding):
    """`(before, after)` per spatial axis of a channels-last input."""
    pads = []
    for size, k, s, d in zip(shape[1:-1], kernels, strides, dilation):
        if padding == "same":
            pads.append(_conv_same_padding(size, k, s, d))
        elif padding == "causal":
            pads.append(((k - 1) * d, 0))
        else:
            pads.append((0, 0))
    return pads


class _Float64:
    """NumPy float64: the namespace of certificates."""

    xp = np

    @staticmethod
    def weight(variable):
        return _as_float64(variable)

    @staticmethod
    def monotone(name, function):
        return MONOTONE_ACTIVATIONS[name]

    @staticmethod
    def convolve(x, kernel, strides, padding, dilation):
        """Channels-last N-D cross-correlation (as Keras), by sliding windows."""
        rank = kernel.ndim - 2
        spatial = tuple(range(1, rank + 1))
        pads = _spatial_padding(x.shape, kernel.shape[:rank], strides, dilation, padding)
        x = np.pad(x, [(0, 0)] + pads + [(0, 0)])
        extents = [(k - 1) * d + 1 for k, d in zip(kernel.shape[:rank], dilation)]
        windows = np.lib.stride_tricks.sliding_window_view(x, extents, axis=spatial)
        # windows: (batch, *positions, channels, *extents)
        index = (slice(None),)
        index += tuple(slice(None, None, s) for s in strides)
        index += (slice(None),)
        index += tuple(slice(None, None, d) for d in dilation)
        return np.tensordot(
            windows[index],
            kernel,
            axes=(list(range(rank + 1, 2 * rank + 2)), [rank] + list(range(rank))),
        )

    @staticmethod
    def pool(x, pool_size, strides, padding, average):
        """Channels-last max or average pooling; `"same"` pads with -inf (max only)."""
        rank = len(pool_size)
        pads = _spatial_padding(x.shape, pool_size, strides, (1,) * rank, padding)
        x = np.pad(x, [(0, 0)] + pads + [(0, 0)], constant_values=-np.inf)
        windows = np.lib.stride_tricks.sliding_window_view(
            x, pool_size, axis=tuple(range(1, rank + 1))
        )[(slice(None),) + tuple(slice(None, None, s) for s in strides)]
        window_axes = tuple(range(-rank, 0))
        return windows.mean(axis=window_axes) if average else windows.max(axis=window_axes)

    @staticmethod
    def bernstein(layer, lower, upper, method):
        return _enclosure(
            np,
            _as_float64(layer.coefficients),
            _as_float64(layer.bounds),
            lower,
            upper,
            layer.extrapolation,
            method,
        )


class _Tensors:
    """Backend tensors through `keras.ops`: differentiable, in the layers' dtype."""

    xp = keras.ops

    @staticmethod
    def weight(variable):
        return keras.ops.cast(variable, "float32")

    @staticmethod
    def monotone(name, function):
        # The layer's own function: what the model computes, on tensors.
        return function

    @staticmethod
    def convolve(x, kernel, strides, padding, dilation):
        if padding == "causal":
            rank = len(kernel.shape) - 2
            pads = _spatial_padding(x.shape, kernel.shape[:rank], strides, dilation, padding)
            x = keras.ops.pad(x, [(0, 0)] + pads + [(0, 0)])
            padding = "valid"
        return keras.ops.conv(
            x, kernel, strides=strides, padding=padding, dilation_rate=dilation,
            data_format="channels_last",
        )

    @staticmethod
    def pool(x, pool_size, strides, padding, average):
        pool = keras.ops.average_pool if average else keras.ops.max_pool
        return pool(x, pool_size, strides, padding, data_format="channels_last")

    @staticmethod
    def bernstein(layer, lower, upper, method):
        return _enclosure(
            keras.ops,
            keras.ops.cast(layer.coefficients, "float32"),
            keras.ops.cast(layer.bounds, "float32"),
            lower,
            upper,
            layer.extrapolation,
            method,
        )


FLOAT64 = _Float64()
TENSORS = _Tensors()


class Box:
    """An elementwise interval `[lower, upper]`, batch first, of one namespace."""

    def __init__(self, lower, upper, arrays):
        self.lower = lower
        self.upper = upper
        self.arrays = arrays

    @property
    def center(self):
        return 0.5 * (self.lower + self.upper)

    @property
    def radius(self):
        return 0.5 * (self.upper - self.lower)

    def map(self, function):
        """The box of a non-decreasing elementwise `function`."""
        return Box(function(self.lower), function(self.upper), self.arrays)

    def reshape(self, shape):
        xp = self.arrays.xp
        return Box(xp.reshape(self.lower, shape), xp.reshape(self.upper, shape), self.arrays)

    def moveaxis(self, source, destination):
        xp = self.arrays.xp
        return Box(
            xp.moveaxis(self.lower, source, destination),
            xp.moveaxis(self.upper, source, destination),
            self.arrays,
        )


def _affine(box, kernel_fn, absolute_kernel_fn, bias=None):
    """`kernel_fn(x) + bias` over the box, by centre and radius."""
    center = kernel_fn(box.center)
    radius = absolute_kernel_fn(box.radius)
    if bias is not None:
        center = center + bias
    return Box(center - radius, center + radius, box.arrays)


def _scale_shift(box, scale, shift):
    """`x * scale + shift` elementwise; `scale` may be negative."""
    xp = box.arrays.xp
    low = box.lower * scale
    high = box.upper * scale
    return Box(xp.minimum(low, high) + shift, xp.maximum(low, high) + shift, box.arrays)


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
    return box.map(box.arrays.monotone(name, activation))


def _softmax(box):
    """Softmax on the last axis: `p_i` is smallest at `z_i = l_i`, `z_j = u_j`."""
    xp = box.arrays.xp
    size = box.lower.shape[-1]
    diagonal = xp.eye(size) > 0.5

    def probability(own, others):
        logits = xp.where(diagonal, own[..., :, None], others[..., None, :])
        peak = xp.max(logits, axis=-1)
        log_sum = peak + xp.log(xp.sum(xp.exp(logits - peak[..., None]), axis=-1))
        return xp.exp(own - log_sum)

    return Box(
        probability(box.lower, box.upper), probability(box.upper, box.lower), box.arrays
    )


def _dense(box, layer):
    arrays = box.arrays
    xp = arrays.xp
    kernel = arrays.weight(layer.kernel)
    bias = arrays.weight(layer.bias) if layer.use_bias else None
    box = _affine(
        box, lambda x: xp.matmul(x, kernel), lambda r: xp.matmul(r, xp.abs(kernel)), bias
    )
    return _activation(box, layer, layer.activation)


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
    arrays = box.arrays
    kernel = arrays.weight(layer.kernel)
    absolute_kernel = arrays.xp.abs(kernel)
    channels_first = layer.data_format == "channels_first"
    if channels_first:
        box = box.moveaxis(1, -1)
    args = (tuple(layer.strides), layer.padding, tuple(layer.dilation_rate))
    bias = arrays.weight(layer.bias) if layer.use_bias else None
    box = _affine(
        box,
        lambda x: arrays.convolve(x, kernel, *args),
        lambda r: arrays.convolve(r, absolute_kernel, *args),
        bias,
    )
    box = _activation(box, layer, layer.activation)
    if channels_first:
        box = box.moveaxis(-1, 1)
    return box


MAX_POOLING = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D)
AVERAGE_POOLING = (keras.layers.AveragePooling1D, keras.layers.AveragePooling2D)


def _pool(box, layer):
    """Max pooling is monotone and average pooling a positive linear map, so
    both map the box's corners: pool(lower) <= pool(x) <= pool(upper)."""
    average = isinstance(layer, AVERAGE_POOLING)
    if layer.padding not in ("valid", "same") or (average and layer.padding == "same"):
        raise ValueError(
            f"Layer {layer.name!r}: unsupported padding for {type(layer).__name__}. "
            f"Received: padding={layer.padding!r}"
        )
    channels_first = layer.data_format == "channels_first"
    if channels_first:
        box = box.moveaxis(1, -1)
    pool_size, strides = tuple(layer.pool_size), tuple(layer.strides)
    box = box.map(lambda x: box.arrays.pool(x, pool_size, strides, layer.padding, average))
    if channels_first:
        box = box.moveaxis(-1, 1)
    return box


def _axis_shape(arrays, ndim, axes, values):
    shape = [1] * ndim
    for axis in axes:
        shape[axis % ndim] = -1
    return arrays.xp.reshape(values, shape)


def _batch_normalization(box, layer):
    """The inference form: moving statistics."""
    arrays = box.arrays
    xp = arrays.xp
    ndim = len(box.lower.shape)
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    scale = 1.0 / xp.sqrt(arrays.weight(layer.moving_variance) + layer.epsilon)
    if layer.scale:
        scale = scale * arrays.weight(layer.gamma)
    shift = -arrays.weight(layer.moving_mean) * scale
    if layer.center:
        shift = shift + arrays.weight(layer.beta)
    return _scale_shift(
        box, _axis_shape(arrays, ndim, axes, scale), _axis_shape(arrays, ndim, axes, shift)
    )


def _bernstein(box, layer, method):
    low, high = box.arrays.bernstein(layer, box.lower, box.upper, method)
    return Box(low, high, box.arrays)


def _normalization(box, layer):
    if layer.mean is None:
        raise ValueError(f"Layer {layer.name!r}: `Normalization` is not adapted.")
    arrays = box.arrays
    xp = arrays.xp
    deviation = xp.maximum(xp.sqrt(arrays.weight(layer.variance)), keras.backend.epsilon())
    mean = arrays.weight(layer.mean)
    if layer.invert:
        return _scale_shift(box, deviation, mean)
    return _scale_shift(box, 1.0 / deviation, -mean / deviation)


def _rescaling(box, layer):
    weight = box.arrays.weight
    return _scale_shift(box, weight(layer.scale), weight(layer.offset))


def _flatten(box, layer):
    if layer.data_format == "channels_first" and len(box.lower.shape) > 2:
        box = box.moveaxis(1, -1)
    return box.reshape((-1, math.prod(box.lower.shape[1:])))


def _reshape(box, layer):
    # The batch axis may be unknown while traced: resolve a -1 of the target.
    target = list(layer.target_shape)
    if -1 in target:
        known = math.prod(size for size in target if size != -1)
        target[target.index(-1)] = math.prod(box.lower.shape[1:]) // known
    return box.reshape((-1,) + tuple(target))


def _check_slope(layer, slope):
    if slope < 0:
        raise ValueError(
            f"Layer {layer.name!r}: a negative slope is not monotone. "
            f"Received: negative_slope={slope}"
        )


def _leaky_relu(box, layer):
    slope = float(layer.negative_slope)
    _check_slope(layer, slope)
    xp = box.arrays.xp
    return box.map(lambda x: xp.where(x >= 0.0, x, slope * x))


def _relu(box, layer):
    max_value = math.inf if layer.max_value is None else float(layer.max_value)
    slope = float(layer.negative_slope)
    threshold = float(layer.threshold)
    _check_slope(layer, slope)
    xp = box.arrays.xp

    def relu(x):
        return xp.minimum(xp.where(x >= threshold, x, slope * (x - threshold)), max_value)

    return box.map(relu)


def _merge(boxes, layer):
    arrays = boxes[0].arrays
    if isinstance(layer, keras.layers.Add):
        return Box(sum(b.lower for b in boxes), sum(b.upper for b in boxes), arrays)
    if isinstance(layer, keras.layers.Subtract):
        first, second = boxes
        return Box(first.lower - second.upper, first.upper - second.lower, arrays)
    if isinstance(layer, keras.layers.Average):
        count = len(boxes)
        return Box(
            sum(b.lower for b in boxes) / count, sum(b.upper for b in boxes) / count, arrays
        )
    # Concatenate
    xp = arrays.xp
    return Box(
        xp.concatenate([b.lower for b in boxes], axis=layer.axis),
        xp.concatenate([b.upper for b in boxes], axis=layer.axis),
        arrays,
    )


MERGES = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Average,
    keras.layers.Concatenate,
)
IDENTITIES = (
    keras.layers.InputLayer,
    keras.layers.Dropout,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.ActivityRegularization,
)

SUPPORTED = (
    "Dense, BernsteinDense, Bernstein, Conv1D, Conv2D, MaxPooling1D/2D, "
    "AveragePooling1D/2D (valid), BatchNormalization, Rescaling, Normalization, "
    "Flatten, Reshape, monotone activations, softmax, Add, Subtract, Average, "
    "Concatenate and Dropout"
)


def _remember(record, layer, box):
    """Keeps the box entering `layer` (one entry per use of a shared layer)."""
    if record is not None:
        record.setdefault(id(layer), []).append(box)


def _single(inputs, layer):
    if isinstance(inputs, (list, tuple)):
        if len(inputs) != 1:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) got "
                f"{len(inputs)} inputs; only merge layers take several."
            )
        (inputs,) = inputs
    return inputs


def propagate(layer, inputs, method="subdivision", record=None):
    """Bounds of `layer`'s output given a `Box` (or a list of them) as input.

    `record`, a dict, receives `id(layer) -> [boxes entering it]` for every
    layer reached (the `Bernstein` inside a `BernsteinDense` included).
    """
    if isinstance(layer, keras.Sequential):
        box = inputs
        for sublayer in layer.layers:
            _remember(record, sublayer, box)
            box = propagate(sublayer, box, method, record)
        return box
    if isinstance(layer, keras.Model):
        return _propagate_functional(layer, inputs, method, record)
    if isinstance(layer, MERGES):
        return _merge(inputs, layer)
    box = _single(inputs, layer)
    if isinstance(layer, BernsteinDense):
        box = _dense(box, layer.dense)
        if layer.batch_normalization is not None:
            box = _batch_normalization(box, layer.batch_normalization)
        _remember(record, layer.bernstein, box)
        return _bernstein(box, layer.bernstein, method)
    if isinstance(layer, Bernstein):
        return _bernstein(box, layer, method)
    if isinstance(layer, keras.layers.Dense):
        return _dense(box, layer)
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D)):
        return _conv(box, layer)
    if isinstance(layer, MAX_POOLING + AVERAGE_POOLING):
        return _pool(box, layer)
    if isinstance(layer, keras.layers.BatchNormalization):
        return _batch_normalization(box, layer)
    if isinstance(layer, keras.layers.Rescaling):
        return _rescaling(box, layer)
    if isinstance(layer, keras.layers.Normalization):
        return _normalization(box, layer)
    if isinstance(layer, keras.layers.Flatten):
        return _flatten(box, layer)
    if isinstance(layer, keras.layers.Reshape):
        return _reshape(box, layer)
    if isinstance(layer, keras.layers.Activation):
        return _activation(box, layer, layer.activation)
    if isinstance(layer, keras.layers.ReLU):
        return _relu(box, layer)
    if isinstance(layer, keras.layers.LeakyReLU):
        return _leaky_relu(box, layer)
    if isinstance(layer, IDENTITIES):
        return box
    raise ValueError(
        f"Cannot bound the output of layer {getattr(layer, 'name', layer)!r} "
        f"({type(layer).__name__}): interval bounds support {SUPPORTED}."
    )


def _propagate_functional(model, inputs, method, record):
    def operation_fn(operation):
        def bound(*args, **kwargs):
            box = args[0]
            _remember(record, operation, box)
            return propagate(operation, box, method, record)

        return bound

    # Keras' own graph walker: it hands each operation the values computed
    # for its input tensors, here `Box`es in place of tensors.
    return model._run_through_graph(
        inputs if isinstance(inputs, (list, tuple)) else [inputs],
        operation_fn=operation_fn,
    )


def margins(model, box, labels, record):
    """Lower bounds of `z_y - z_j`, `(batch, classes)`, from `propagate`'s
    output `box` and `record`; the column `j = y` holds no meaningful value.

    When the model ends in a `Dense` layer with a linear or softmax
    activation (softmax keeps the logits' order), the margin is bounded
    through the weight differences `(W_y - W_j) h + b_y - b_j` on that
    layer's input box `h`, tighter than subtracting two logit intervals.
    """
    arrays = box.arrays
    xp = arrays.xp
    outputs = output_layers(model)
    last = outputs[0] if len(outputs) == 1 else None
    entering = record.get(id(last), []) if last is not None else []
    if (
        type(last) is keras.layers.Dense
        and activation_name(last.activation) in ("linear", "softmax")
        and len(entering) == 1
    ):
        hidden = _single(entering[0], last)
        kernel = arrays.weight(last.kernel)
        # difference[b, :, j] = W[:, y_b] - W[:, j]
        own = xp.transpose(xp.take(kernel, labels, axis=1))
        difference = own[:, :, None] - kernel[None, :, :]
        center = xp.einsum("bi,bij->bj", hidden.center, difference)
        radius = xp.einsum("bi,bij->bj", hidden.radius, xp.abs(difference))
        result = center - radius
        if last.use_bias:
            bias = arrays.weight(last.bias)
            result = result + (xp.take(bias, labels, axis=0)[:, None] - bias[None, :])
        return result
    own_lower = xp.take_along_axis(box.lower, labels[:, None], axis=1)
    return own_lower - box.upper
