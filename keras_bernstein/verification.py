"""Certified output bounds (Bern-IBP), certified accuracy, derivative certificates.

`output_bounds` propagates an input box through a model by interval
arithmetic in NumPy float64. Affine layers use the centre-radius form
(`W mid + b ± |W| rad`), monotone activations are applied to both ends, and
Bernstein activations use the tight Bern-IBP scheme of
`keras_bernstein.ops.bernstein_range`: the coefficients are re-expressed on
each neuron's incoming interval by de Casteljau subdivision and bounded by
their min/max, and the parts of the interval outside `[l, u]` are bounded
exactly for the layer's extrapolation mode.

`interval_bounds` and `margin_bounds` are the differentiable twin for
training (certified training, `keras_bernstein.training`): the same layer
rules on backend tensors in float32, with gradients. `activation_input_bounds`
gives the intervals entering each Bernstein activation, from which
`keras_bernstein.transforms` sets the activations' `[l, u]`.

The float64 bounds are sound for the real-number function the model
computes; the model itself runs in float32, whose rounding can differ from it by about
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
from keras_bernstein._intervals import FLOAT64
from keras_bernstein._intervals import MONOTONE_ACTIVATIONS  # noqa: F401
from keras_bernstein._intervals import TENSORS
from keras_bernstein._intervals import Box
from keras_bernstein._intervals import _single
from keras_bernstein._intervals import margins
from keras_bernstein._intervals import propagate
from keras_bernstein._model_layers import as_float64
from keras_bernstein._model_layers import bernstein_activations
from keras_bernstein._model_layers import check_model
from keras_bernstein._model_layers import is_bernstein

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
    return Box(lower, upper, FLOAT64)


def _tensor_box(lower, upper):
    """Float32 backend tensors; values are not checked (they may be traced)."""
    lower = keras.ops.convert_to_tensor(lower, "float32")
    upper = keras.ops.convert_to_tensor(upper, "float32")
    if tuple(lower.shape) != tuple(upper.shape):
        raise ValueError(
            "`lower` and `upper` must have the same shape. "
            f"Received: lower.shape={tuple(lower.shape)}, "
            f"upper.shape={tuple(upper.shape)}"
        )
    return Box(lower, upper, TENSORS)


def _input_boxes(lower, upper, make_box=_check_box):
    if isinstance(lower, (list, tuple)):
        if not isinstance(upper, (list, tuple)) or len(upper) != len(lower):
            raise ValueError(
                "For several inputs pass `lower` and `upper` as lists of the "
                f"same length. Received: {len(lower)} lower arrays"
            )
        return [make_box(lo, hi) for lo, hi in zip(lower, upper)]
    return make_box(lower, upper)


def _ends(result):
    """`(lower, upper)` of a propagated box, or lists of them for several outputs."""
    if isinstance(result, (list, tuple)):
        if len(result) == 1:
            return result[0].lower, result[0].upper
        return [b.lower for b in result], [b.upper for b in result]
    return result.lower, result.upper


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
    return _ends(propagate(model, _input_boxes(lower, upper), method))


def interval_bounds(model, lower, upper):
    """Differentiable interval bounds of a model's output, on backend tensors.

    The twin of `output_bounds` for training: the same layer rules and the
    same subdivision enclosure of Bernstein activations, computed with
    `keras.ops` in float32 on the layers' variables. The result carries
    gradients with respect to the weights (and to `lower` and `upper`), and
    the function runs inside `jax.jit`, `tf.function`, PyTorch autograd and
    a model's `compute_loss`. Certificates reported to users should come from
    the float64 `output_bounds`; these bounds agree with it to float32
    rounding.

    Args:
        model: A built model accepted by `output_bounds`.
        lower: Tensor of the input's shape, batch first (a list of tensors
            for a model with several inputs). Not checked for `lower <=
            upper` or finiteness, since it may be a traced value.
        upper: Same, with `upper >= lower`.

    Returns:
        `(lower_out, upper_out)`: float32 tensors of the model's output shape
        (lists of them for a model with several outputs).

    Raises:
        ValueError: for a layer or activation without a bound, naming it.

    Example:
        >>> x = keras.ops.convert_to_tensor(np.random.rand(4, 784), "float32")
        >>> low, high = interval_bounds(model, x - 0.01, x + 0.01)
    """
    check_model(model)
    return _ends(propagate(model, _input_boxes(lower, upper, _tensor_box)))


def _margins(model, box, labels, method="subdivision"):
    """`_intervals.margins` of a one-output classifier over the input `box`."""
    record = {}
    output = propagate(model, box, method, record)
    if isinstance(output, (list, tuple)):
        (output,) = output
    return margins(model, output, labels, record)


def margin_bounds(model, lower, upper, y):
    """Differentiable lower bounds of the logit margins `z_y - z_j` over input boxes.

    The specification of a correct classification is `z_y - z_j > 0` for
    every `j != y`; a batch element whose every margin bound is positive is
    certified on its box. When the model ends in a `Dense` layer with a
    linear or softmax activation, the margins are those of that layer's
    logits, bounded through the weight differences `W_y - W_j` (tighter
    than subtracting two output intervals). The loss of interval bound
    propagation training is the cross-entropy of `-margin_bounds` (the
    worst-case logits; Gowal et al., 2018). Float32 tensors with gradients,
    as `interval_bounds`.

    Args:
        model: A built model accepted by `output_bounds`, with one input and
            one output of shape `(batch, classes)`.
        lower: Tensor of the input's shape, batch first.
        upper: Same, with `upper >= lower`.
        y: Integer labels, a tensor or array of shape `(batch,)`, in
            `[0, classes)` (not checked: it may be traced).

    Returns:
        Float32 tensor `(batch, classes)`; column `y` of each row is 0.

    Example:
        >>> x, y = x_train[:32], y_train[:32]
        >>> bounds = margin_bounds(model, x - 0.1, x + 0.1, y)
        >>> worst_logits = -bounds  # the robust loss's logits
    """
    check_model(model)
    _num_classes(model)
    labels = keras.ops.reshape(keras.ops.convert_to_tensor(y, "int32"), (-1,))
    result = _margins(model, _tensor_box(lower, upper), labels)
    own = keras.ops.one_hot(labels, keras.ops.shape(result)[-1]) > 0.5
    return keras.ops.where(own, 0.0, result)


def activation_input_bounds(model, lower, upper):
    """Certified intervals of every Bernstein activation's inputs over an input box.

    Float64 interval bound propagation, as `output_bounds`: for each
    Bernstein activation (a `Bernstein` layer, or the activation inside a
    `BernsteinDense`, after its matmul and batch normalization), the
    elementwise bounds of the values that enter it when the model's input
    lies in `[lower, upper]`. Setting each activation's interval `[l, u]`
    to contain them keeps in-domain inputs inside `[l, u]`.

    Args:
        model: A built model accepted by `output_bounds`.
        lower: Array of the input's shape, batch first (a list for several
            inputs).
        upper: Same, with `upper >= lower`.

    Returns:
        A list of `(layer, low, high)` in the order of the layers: `layer` is
        the `Bernstein` layer (for a `BernsteinDense`, its `bernstein`), and
        `low`, `high` float64 arrays of shape `(batch,) + its input shape[1:]`.
        A layer applied several times has the boxes of its uses concatenated
        along the batch axis.

    Example:
        >>> for layer, low, high in activation_input_bounds(model, 0 * x, 0 * x + 1):
        ...     print(layer.name, low.min(), high.max())
    """
    check_model(model)
    record = {}
    propagate(model, _input_boxes(lower, upper), "subdivision", record)
    result = []
    for name, layer in bernstein_activations(model):
        boxes = record.get(id(layer))
        if not boxes:
            raise ValueError(
                f"Layer {name!r} is not on a path from the model's inputs to its "
                "outputs, so its inputs have no bound."
            )
        boxes = [_single(box, layer) for box in boxes]
        result.append(
            (
                layer,
                np.concatenate([box.lower for box in boxes], axis=0),
                np.concatenate([box.upper for box in boxes], axis=0),
            )
        )
    return result


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
    result = _margins(model, _check_box(lower, upper), y, method)
    result[np.arange(len(y)), y] = np.inf
    return result.min(axis=-1)


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
