"""`BernsteinDense`'s batch normalization as PyTorch's fused kernel.

Keras' BatchNormalization runs on PyTorch as about ten separate kernels forward
and twice that backward; `torch.native_batch_norm` normalizes in one kernel
each way. This
module computes exactly what the Keras layer computes (batch statistics in
training, biased variance, the same moving-average update; moving statistics
otherwise), reading and updating the Keras layer's own variables, so weights,
saving and every other backend are unchanged. The batch statistics are its
own (`_statistics`): those of `torch.native_batch_norm` and of its backward
are float32 sums that drift for many rows of a large mean, so it normalizes
with given statistics and differentiates rows centered on their mean. In
training, `BernsteinDense` runs it and the polynomial as one autograd node
(`normalized_polynomial`) that saves the unnormalized rows instead of the
normalized tensor: one activation's worth of memory less per layer. Tested
against the Keras layer in `tests/test_layers.py`.
"""

import math

import keras
import torch

from keras_bernstein import _formula
from keras_bernstein._fast import torch_polynomial


def supports(inputs):
    """Whether the kernel takes `inputs`: not a single row (PyTorch refuses
    batch statistics of one value). The caller checks the layer's
    configuration (`BernsteinDense._plain_normalization`)."""
    return math.prod(inputs.shape[:-1]) > 1


def batch_normalization(layer, inputs, training):
    """`layer(inputs, training=training)` for a plain layer that `supports` them."""
    gamma = keras.ops.convert_to_tensor(layer.gamma)
    beta = keras.ops.convert_to_tensor(layer.beta)
    # The channels on axis 1, as the kernel wants them.
    rows = inputs.reshape(-1, inputs.shape[-1])
    if training and layer.trainable:
        mean, variance = _statistics(rows)
        # Differentiable through the statistics, by autograd.
        outputs = torch.addcmul(beta, rows - mean, torch.rsqrt(variance + layer.epsilon) * gamma)
        _update_moving_statistics(layer, mean.detach(), variance.detach())
    else:
        outputs = torch.nn.functional.batch_norm(
            rows,
            keras.ops.convert_to_tensor(layer.moving_mean),
            keras.ops.convert_to_tensor(layer.moving_variance),
            gamma,
            beta,
            training=False,
            eps=layer.epsilon,
        )
    return outputs.reshape(inputs.shape)


def _statistics(rows):
    """The mean and biased variance of `rows` over axis 0 (as
    `_formula._batch_statistics`): a first mean, then the mean deviation from it
    and the mean squared deviation, which correct the mean and give the
    variance without cancellation."""
    shift = rows.detach().mean(0)
    deviations = rows - shift
    correction = deviations.mean(0)
    variance = (deviations.square().mean(0) - correction.square()).clamp(min=0.0)
    return shift + correction, variance


def _update_moving_statistics(layer, mean, variance):
    """Keras' moving-average update, from the batch statistics."""
    with torch.no_grad():
        for moving, batch in ((layer.moving_mean, mean), (layer.moving_variance, variance)):
            moving.assign(
                _formula._moving_average(
                    keras.ops.convert_to_tensor(moving), batch, layer.momentum
                )
            )


def normalized_polynomial(layer, inputs, coefficients, bounds, extrapolation):
    """`bernstein_polynomial(layer(inputs, training=True), ...)` as one
    autograd node, for a plain trainable layer that `supports` the inputs.

    The node saves the unnormalized rows instead of the normalized tensor,
    and recomputes the normalization in the backward pass: one activation's
    worth of memory less per layer.
    """
    gamma = keras.ops.convert_to_tensor(layer.gamma)
    beta = keras.ops.convert_to_tensor(layer.beta)
    rows = inputs.reshape(-1, inputs.shape[-1])
    values, mean, variance = _NormalizedPolynomial.apply(
        rows,
        gamma,
        beta,
        keras.ops.convert_to_tensor(coefficients),
        keras.ops.convert_to_tensor(bounds),
        extrapolation,
        layer.epsilon,
        inputs.shape,
    )
    _update_moving_statistics(layer, mean, variance)
    return values


def batch_normalized_polynomial(x, scale, offset, coefficients, bounds, epsilon, extrapolation):
    """`_formula._evaluate_batch_normalized` as one autograd node, for
    `x` that `supports`: `(values, mean, variance)`, the statistics without
    a gradient."""
    rows = x.reshape(-1, x.shape[-1])
    return _NormalizedPolynomial.apply(
        rows, scale, offset, coefficients, bounds, extrapolation, epsilon, x.shape
    )


class _NormalizedPolynomial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, gamma, beta, coefficients, bounds, extrapolation, epsilon, shape):
        mean, variance = _statistics(rows)
        # One kernel, with these statistics ("running" ones, training=False).
        normalized = torch.native_batch_norm(
            rows, gamma, beta, mean, variance, False, 0.0, epsilon
        )[0]
        values = torch_polynomial.forward(
            normalized.reshape(shape), coefficients, bounds, extrapolation
        )
        inverse_deviation = torch.rsqrt(variance + epsilon)
        ctx.save_for_backward(rows, gamma, beta, mean, inverse_deviation, coefficients, bounds)
        ctx.extrapolation, ctx.epsilon, ctx.shape = extrapolation, epsilon, shape
        ctx.mark_non_differentiable(mean, variance)
        return values, mean, variance

    @staticmethod
    def backward(ctx, upstream, _, __):
        rows, gamma, beta, mean, inverse_deviation, coefficients, bounds = ctx.saved_tensors
        if torch.is_grad_enabled():
            # A graph of the gradient is wanted (`create_graph=True`), which
            # the in-place kernels cannot record.
            return torch_polynomial.differentiable_gradients(
                lambda *inputs: _normalized_formula(
                    *inputs, ctx.extrapolation, ctx.epsilon, ctx.shape
                ),
                (rows, gamma, beta, coefficients, bounds),
                upstream,
                ctx.needs_input_grad[:5],
            ) + (None, None, None)
        need_rows, need_gamma, need_beta, need_coefficients, need_bounds = (
            ctx.needs_input_grad[:5]
        )
        centered = rows - mean
        normalized = torch.addcmul(beta, centered, inverse_deviation * gamma)
        need_input = need_rows or need_gamma or need_beta
        grad_input, grad_coefficients, grad_bounds = torch_polynomial.gradients(
            upstream,
            normalized.reshape(ctx.shape),
            coefficients,
            bounds,
            ctx.extrapolation,
            (need_input, need_coefficients, need_bounds),
        )
        grad_rows = grad_gamma = grad_beta = None
        if need_input:
            # Centered rows and a zero mean: the kernel's float32 sum of
            # `grad * (rows - mean)` as `sum grad * rows - mean * sum grad`
            # cancels (the scale's gradient off by 8% at 2^20 rows of 1000).
            grad_rows, grad_gamma, grad_beta = torch.ops.aten.native_batch_norm_backward(
                grad_input.reshape(rows.shape),
                centered,
                gamma,
                None,
                None,
                torch.zeros_like(mean),
                inverse_deviation,
                True,
                ctx.epsilon,
                [need_rows, need_gamma, need_beta],
            )
        return (
            grad_rows, grad_gamma, grad_beta, grad_coefficients, grad_bounds, None, None, None
        )


def _normalized_formula(rows, gamma, beta, coefficients, bounds, extrapolation, epsilon, shape):
    """What `_NormalizedPolynomial` computes, as plain differentiable ops."""
    mean, variance = _statistics(rows)
    normalized = (rows - mean) * (torch.rsqrt(variance + epsilon) * gamma) + beta
    return _formula._evaluate(normalized.reshape(shape), coefficients, bounds, extrapolation)
