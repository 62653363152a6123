"""Compositional ReLU networks: deep, 4-wide ReLU stacks built from triangle waves.

A triangle with peak `a ∈ (0, 1)` maps `[0, 1]` onto itself,

`T_a(t) = t / a − ReLU(t − a) / (a (1 − a))`,

and the waves `W_0 = T_{a_0}`, `W_i = T_{a_i} ∘ W_{i−1}` have `2^(i+1)` linear
pieces. A network of depth `L` outputs, on `[0, 1]`,

`F(x) = intercept + slope · x + σ Σ_{i<L} s_i W_i(x)`,

with `σ = −1` for convex targets and `+1` for concave ones. Every hidden layer
has four ReLU neurons: the accumulated sum, the current wave `s_i W_{i−1}`, the
same shifted by the peak, `s_i ReLU(W_{i−1} − a_i)`, and the constant `s_i`,
which feeds itself with the ratio `s_{i+1} / s_i` so that the biases shrink
with the amplitudes. Whatever the peaks and scales, the network has exactly
`2^L` linear pieces on `[0, 1]`.

The limit `L → ∞` is differentiable exactly when
`s_{i+1} = s_i (1 − a_{i+1}) a_{i+2}` (`differentiable_scales`); then
`s_{i+2} / s_i <= 1/4` and the error decays exponentially with depth. With all
`a_i = 1/2`, `σ = −1` and `s_0 = 1/4` this is Yarotsky's construction of `x²`,
whose largest error is `2^(−2L−2)`.

Reference:
    Milkert, Hyde and Laine, "Compelling ReLU Networks to Exhibit
    Exponentially Many Linear Regions at Initialization and During
    Training", ICML 2025 (arXiv:2311.18022); Yarotsky, "Error bounds for
    approximations with deep ReLU networks", Neural Networks 94 (2017).
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_bernstein._arguments import check_positive_integer

SCALE_RULES = ("differentiable", "free")
# The missing `a_L` of the rule `s_{L-1} = s_{L-2} (1 - a_{L-1}) a_L`: the
# symmetric peak, which continues the wave as in Yarotsky's construction.
TAIL_PEAK = 0.5


def triangle_wave(t, peak):
    """The triangle `T_a(t) = t / a − ReLU(t − a) / (a (1 − a))`.

    On `[0, 1]` it rises linearly from `T(0) = 0` to `T(a) = 1` and falls back
    to `T(1) = 0`.

    Args:
        t: Tensor of points, usually in `[0, 1]`.
        peak: The peak location `a`, strictly inside `(0, 1)`; a scalar or a
            tensor broadcasting against `t`.

    Returns:
        Tensor of the broadcast shape of `t` and `peak`.
    """
    return ops.subtract(
        ops.divide(t, peak),
        ops.divide(ops.relu(ops.subtract(t, peak)), peak * (1.0 - peak)),
    )


def differentiable_scales(first_scale, peaks):
    """Scales obeying the differentiability rule `s_{i+1} = s_i (1 − a_{i+1}) a_{i+2}`.

    The rule needs one peak beyond the last; it is taken as `1/2`
    (`TAIL_PEAK`), which continues the wave symmetrically.

    Args:
        first_scale: Scalar tensor `s_0`.
        peaks: Tensor `(L,)` of peaks `a_0 ... a_{L−1}`.

    Returns:
        Tensor `(L,)` of scales `s_0 ... s_{L−1}`.
    """
    peaks = ops.convert_to_tensor(peaks)
    first_scale = ops.reshape(ops.cast(first_scale, peaks.dtype), (1,))
    if peaks.shape[0] == 1:
        return first_scale
    tail = ops.ones((1,), dtype=peaks.dtype) * TAIL_PEAK
    following = ops.concatenate([peaks[2:], tail], axis=0)
    ratios = (1.0 - peaks[1:]) * following
    return ops.concatenate([first_scale, first_scale * ops.cumprod(ratios)], axis=0)


def wave_sum(x, peaks, scales, sign, intercept=0.0, slope=1.0):
    """The closed form `intercept + slope · x + σ Σ_i s_i W_i(x)`.

    Args:
        x: Tensor of points in `[0, 1]`.
        peaks: Tensor `(L,)` of peaks.
        scales: Tensor `(L,)` of scales.
        sign: `−1` or `+1`.
        intercept: Value of the linear part at `0`.
        slope: Slope of the linear part.

    Returns:
        Tensor of the shape of `x`.
    """
    total = ops.add(intercept, ops.multiply(slope, x))
    wave = x
    for i in range(peaks.shape[0]):
        wave = triangle_wave(wave, peaks[i])
        total = ops.add(total, ops.multiply(sign * scales[i], wave))
    return total


def dense_stack_weights(
    peaks, scales, sign, intercept=0.0, slope=1.0, accumulator_offset=1.0
):
    """Kernels and biases of the 4-wide ReLU network computing `wave_sum`.

    Hidden layer `i` holds, after its ReLU, the accumulated sum
    `offset + intercept + slope · x + σ Σ_{j<i} s_j W_j`, the wave `s_i W_{i−1}`
    (with `W_{−1} = x`), the shifted wave `s_i ReLU(W_{i−1} − a_i)` and the
    constant `s_i`. The next layer forms `s_i W_i` from the two middle neurons
    (`T_{a_i}` is linear in them) and rescales everything by `s_{i+1} / s_i`;
    only the first and the output layer have nonzero biases. The network
    equals `wave_sum` on `[0, 1]` as long as the accumulated sum plus
    `accumulator_offset` stays nonnegative and the scales are positive.

    Args:
        peaks: Tensor `(L,)` of peaks in `(0, 1)`.
        scales: Tensor `(L,)` of positive scales.
        sign: `−1` or `+1`.
        intercept: Value of the linear part at `0`.
        slope: Slope of the linear part.
        accumulator_offset: Constant added to the accumulated sum so that its
            ReLU stays in the linear regime; removed by the output bias.

    Returns:
        A list of `L + 1` pairs `(kernel, bias)`: `(1, 4)` and `(4,)` for the
        first layer, `(4, 4)` and `(4,)` for the next `L − 1`, `(4, 1)` and
        `(1,)` for the linear output layer.
    """
    peaks = ops.convert_to_tensor(peaks)
    scales = ops.convert_to_tensor(scales, dtype=peaks.dtype)
    depth = peaks.shape[0]
    zero = ops.zeros((), dtype=peaks.dtype)
    first_scale = scales[0]
    weights = [
        (
            ops.reshape(ops.stack([slope + zero, first_scale, first_scale, zero]), (1, 4)),
            ops.stack(
                [
                    intercept + accumulator_offset + zero,
                    zero,
                    -first_scale * peaks[0],
                    first_scale,
                ]
            ),
        )
    ]
    for i in range(depth):
        peak = peaks[i]
        # Rows of `s_i W_i = wave / a − shifted / (a (1 − a))` over the
        # neurons (sum, wave, shifted, constant).
        wave_row = ops.stack([zero, 1.0 / peak, -1.0 / (peak * (1.0 - peak)), zero])
        sum_column = ops.stack([1.0 + zero, zero, zero, zero]) + sign * wave_row
        if i == depth - 1:
            weights.append(
                (
                    ops.reshape(sum_column, (4, 1)),
                    ops.reshape(-accumulator_offset + zero, (1,)),
                )
            )
            break
        ratio = scales[i + 1] / scales[i]
        constant_row = ops.stack([zero, zero, zero, ratio])
        kernel = ops.stack(
            [
                sum_column,
                ratio * wave_row,
                ratio * wave_row - peaks[i + 1] * constant_row,
                constant_row,
            ],
            axis=1,
        )
        weights.append((kernel, ops.zeros((4,), dtype=peaks.dtype)))
    return weights


def count_linear_pieces(x, y, tolerance=1e-9):
    """Number of linear pieces of a sampled piecewise-linear function (NumPy).

    A piece counts when its slope holds over at least two consecutive grid
    cells, so the grid must be finer than half the narrowest piece; a cell
    that straddles a breakpoint has an intermediate slope and is not counted.

    Args:
        x: Increasing 1-D array of sample points.
        y: 1-D array of values at `x`.
        tolerance: Largest slope difference, relative to `max(1, max |slope|)`,
            still counted as the same slope.

    Returns:
        The number of pieces, an `int`.
    """
    slopes = np.diff(np.asarray(y, "float64")) / np.diff(np.asarray(x, "float64"))
    scale = max(1.0, float(np.max(np.abs(slopes))))
    same = np.abs(np.diff(slopes)) <= tolerance * scale
    # Runs of `True` in `same` are runs of >= 2 cells with one slope.
    runs = np.count_nonzero(same[1:] & ~same[:-1]) + int(same[0])
    return int(runs)


def _affine(inputs, kernel, bias):
    """`inputs @ kernel + bias` as a broadcast sum over at most 4 inputs.

    Not `ops.matmul`: Keras 3.15's PyTorch backend returns float32 from it for
    float64 operands, and the network is tested against its closed form in
    float64.
    """
    return ops.add(
        ops.sum(ops.multiply(ops.expand_dims(inputs, -1), kernel), axis=-2), bias
    )


def _values_initializer(values):
    """An initializer returning `values` in the requested dtype.

    `keras.initializers.Constant` with an array goes through float32 on some
    backends, which loses the float64 digits this module is tested to.
    """
    values = np.asarray(values, "float64")

    def initializer(shape, dtype=None):
        return ops.convert_to_tensor(np.broadcast_to(values, shape), dtype=dtype)

    return initializer


@keras.saving.register_keras_serializable(package="keras_bernstein")
class ClipValues(keras.constraints.Constraint):
    """Clips a weight into `[min_value, max_value]` after every update.

    Args:
        min_value: Lower end, or `None` for none.
        max_value: Upper end, or `None` for none.
    """

    def __init__(self, min_value=None, max_value=None):
        self.min_value = None if min_value is None else float(min_value)
        self.max_value = None if max_value is None else float(max_value)

    def __call__(self, w):
        if self.min_value is not None:
            w = ops.maximum(w, self.min_value)
        if self.max_value is not None:
            w = ops.minimum(w, self.max_value)
        return w

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


@keras.saving.register_keras_serializable(package="keras_bernstein")
class TriangleWaveNetwork(keras.layers.Layer):
    """A deep 4-wide ReLU network forced to have `2^depth` linear pieces.

    The layer holds the peaks `a_i` (kept in `[ε, 1 − ε]`), the first scale
    `s_0` (rule `"differentiable"`) or all scales `s_i` (rule `"free"`), and
    the linear part `intercept + slope · x`. Its call builds the ordinary
    ReLU `Dense` stack from them (`dense_stack_weights`) and runs it, so on
    `[0, 1]` it computes

    `F(x) = intercept + slope · x + σ Σ_{i<depth} s_i W_i(x)`

    and training it moves only the peaks and scales: the number of pieces
    cannot collapse. `to_sequential()` then gives the same function as a
    plain `keras.Sequential` of `Dense` layers, to be trained as an ordinary
    network (`train_two_stage` runs both stages).

    Reference:
        Milkert, Hyde and Laine, ICML 2025, arXiv:2311.18022.

    Args:
        depth: Positive integer `L`, the number of hidden layers and waves.
        sign: `−1` (default, convex targets) or `+1` (concave targets).
        scale_rule: `"differentiable"` (default): `s_{i+1} = s_i (1 − a_{i+1})
            a_{i+2}` with one learned `s_0`; `"free"`: every `s_i` learned.
        peak_initializer: Initializer for the peaks, shape `(depth,)`;
            default `Constant(0.5)`.
        first_scale: Initial `s_0`; the other scales start from the rule.
        intercept: Initial value of the linear part at `0`.
        slope: Initial slope of the linear part.
        epsilon: Peaks are clipped into `[epsilon, 1 − epsilon]`, scales to
            at least `epsilon²`.
        accumulator_offset: Constant carried by the accumulating neuron so its
            ReLU stays linear (see `dense_stack_weights`).
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        `(batch_size, 1)`, points in `[0, 1]`.

    Output shape:
        `(batch_size, 1)`.

    Example:
        >>> model = keras.Sequential([keras.Input((1,)), TriangleWaveNetwork(5)])
        >>> y = model(keras.ops.linspace(0.0, 1.0, 9)[:, None])  # ≈ x²
        >>> plain = model.layers[0].to_sequential()   # Dense(4, relu) x 5, Dense(1)
    """

    def __init__(
        self,
        depth,
        sign=-1,
        scale_rule="differentiable",
        peak_initializer=None,
        first_scale=0.25,
        intercept=0.0,
        slope=1.0,
        epsilon=0.01,
        accumulator_offset=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_integer(depth, "depth")
        if sign not in (-1, 1):
            raise ValueError(f"`sign` must be -1 or 1. Received: sign={sign!r}")
        if scale_rule not in SCALE_RULES:
            raise ValueError(
                f"`scale_rule` must be one of {SCALE_RULES}. "
                f"Received: scale_rule={scale_rule!r}"
            )
        if not 0.0 < epsilon < 0.5:
            raise ValueError(
                f"`epsilon` must lie in (0, 0.5). Received: epsilon={epsilon!r}"
            )
        if not first_scale > 0:
            raise ValueError(
                "`first_scale` must be positive. "
                f"Received: first_scale={first_scale!r}"
            )
        self.depth = int(depth)
        self.sign = int(sign)
        self.scale_rule = scale_rule
        self.peak_initializer = keras.initializers.get(
            peak_initializer or keras.initializers.Constant(0.5)
        )
        self.first_scale = float(first_scale)
        self.intercept = float(intercept)
        self.slope = float(slope)
        self.epsilon = float(epsilon)
        self.accumulator_offset = float(accumulator_offset)

    def build(self, input_shape):
        if input_shape[-1] != 1:
            raise ValueError(
                "`TriangleWaveNetwork` takes one input feature. "
                f"Received: input_shape={input_shape}"
            )
        self.peaks = self.add_weight(
            name="peaks",
            shape=(self.depth,),
            initializer=self.peak_initializer,
            constraint=ClipValues(self.epsilon, 1.0 - self.epsilon),
        )
        # Start the free scales where the rule would put them, so the two
        # rules differ only in training.
        def free_scales_initializer(shape, dtype=None):
            # Tensor ops, no NumPy: Keras may build the layer inside a trace.
            scales = differentiable_scales(
                ops.convert_to_tensor(self.first_scale, dtype=self.peaks.dtype),
                ops.convert_to_tensor(self.peaks),
            )
            return ops.cast(scales, dtype or self.peaks.dtype)

        free = self.scale_rule == "free"
        self.scales = self.add_weight(
            name="scales",
            shape=(self.depth if free else 1,),
            initializer=(
                free_scales_initializer if free else _values_initializer([self.first_scale])
            ),
            constraint=ClipValues(min_value=self.epsilon**2),
        )
        self.linear_part = self.add_weight(
            name="linear_part",
            shape=(2,),
            initializer=_values_initializer([self.intercept, self.slope]),
        )

    def all_scales(self):
        """The scales `s_0 ... s_{L−1}` as a tensor `(depth,)`."""
        if self.scale_rule == "free":
            return ops.convert_to_tensor(self.scales)
        return differentiable_scales(self.scales[0], ops.convert_to_tensor(self.peaks))

    def _wave_parameters(self):
        """`(peaks, scales, sign, intercept, slope)`, as `wave_sum` takes them."""
        return (
            ops.convert_to_tensor(self.peaks),
            self.all_scales(),
            self.sign,
            self.linear_part[0],
            self.linear_part[1],
        )

    def dense_weights(self):
        """The `(kernel, bias)` pairs of the equivalent ReLU `Dense` stack."""
        return dense_stack_weights(*self._wave_parameters(), self.accumulator_offset)

    def call(self, inputs):
        weights = self.dense_weights()
        hidden = inputs
        for kernel, bias in weights[:-1]:
            hidden = ops.relu(_affine(hidden, kernel, bias))
        kernel, bias = weights[-1]
        return _affine(hidden, kernel, bias)

    def closed_form(self, x):
        """`wave_sum` with this layer's parameters (valid on `[0, 1]`)."""
        return wave_sum(x, *self._wave_parameters())

    def to_sequential(self, name=None):
        """A plain `keras.Sequential` of `Dense` layers computing the same function.

        Returns:
            `keras.Sequential([Input((1,)), Dense(4, "relu") × depth,
            Dense(1)])` with this layer's weights, in this layer's dtype.
        """
        model = keras.Sequential(name=name)
        model.add(keras.Input((1,), dtype=self.dtype))
        weights = self.dense_weights()
        for index, (kernel, bias) in enumerate(weights):
            last = index == len(weights) - 1
            layer = keras.layers.Dense(
                1 if last else 4, activation=None if last else "relu", dtype=self.dtype
            )
            model.add(layer)
            layer.set_weights([ops.convert_to_numpy(kernel), ops.convert_to_numpy(bias)])
        return model

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (1,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depth": self.depth,
                "sign": self.sign,
                "scale_rule": self.scale_rule,
                "peak_initializer": keras.initializers.serialize(
                    self.peak_initializer
                ),
                "first_scale": self.first_scale,
                "intercept": self.intercept,
                "slope": self.slope,
                "epsilon": self.epsilon,
                "accumulator_offset": self.accumulator_offset,
            }
        )
        return config


def _fresh_optimizer(optimizer):
    """A new, unbuilt optimizer like `optimizer` (a name or an instance)."""
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer.__class__.from_config(optimizer.get_config())
    return keras.optimizers.get(optimizer)


def train_two_stage(
    network,
    x,
    y,
    pretrain_epochs=1000,
    epochs=1000,
    optimizer="adam",
    loss="mean_squared_error",
    batch_size=None,
    verbose=0,
):
    """Trains a `TriangleWaveNetwork` through its peaks, then as a plain network.

    Stage 1 fits only the reparameterised weights (peaks, scales, linear
    part), so the `2^depth` pieces are kept; stage 2 converts the network
    with `to_sequential()` and fits every kernel and bias.

    Reference:
        Milkert, Hyde and Laine, ICML 2025, arXiv:2311.18022, section 4.

    Args:
        network: A `TriangleWaveNetwork`.
        x: Array `(n, 1)` of inputs in `[0, 1]`.
        y: Array `(n, 1)` of targets.
        pretrain_epochs: Epochs of stage 1 (`0` skips it).
        epochs: Epochs of stage 2 (`0` skips it).
        optimizer: Name or instance; each stage gets a fresh copy.
        loss: Keras loss.
        batch_size: Batch size; default full batch.
        verbose: Verbosity of `fit`.

    Returns:
        `(model, pretrain_history, history)`: the plain `keras.Sequential`
        after stage 2 and the two `History` objects (`None` for a skipped
        stage).

    Example:
        >>> x = np.linspace(0, 1, 500)[:, None]
        >>> model, _, _ = train_two_stage(TriangleWaveNetwork(5), x, x**3)
    """
    if not isinstance(network, TriangleWaveNetwork):
        raise ValueError(
            "`network` must be a `TriangleWaveNetwork`. "
            f"Received: network={network!r}"
        )
    for name, value in (("pretrain_epochs", pretrain_epochs), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (
            value < 0
        ):
            raise ValueError(
                f"`{name}` must be a nonnegative integer. Received: {name}={value!r}"
            )
    batch_size = batch_size or len(x)
    pretrain_history = history = None
    if pretrain_epochs:
        wrapper = keras.Sequential([keras.Input((1,), dtype=network.dtype), network])
        wrapper.compile(optimizer=_fresh_optimizer(optimizer), loss=loss)
        pretrain_history = wrapper.fit(
            x, y, batch_size=batch_size, epochs=pretrain_epochs, verbose=verbose
        )
    model = network.to_sequential()
    if epochs:
        model.compile(optimizer=_fresh_optimizer(optimizer), loss=loss)
        history = model.fit(
            x, y, batch_size=batch_size, epochs=epochs, verbose=verbose
        )
    return model, pretrain_history, history
