"""`BernsteinDense`'s batch normalization as PyTorch's fused kernel.

Keras' BatchNormalization runs on PyTorch as about ten separate kernels forward
and twice that backward: 1.5-2.6 ms for a `(256, 512)` training step's forward
and backward on one CPU thread (0.45 ms here), and 0.33 ms for inference (0.17
ms here). `torch.native_batch_norm` does the same in one kernel each way. This
module computes exactly what the Keras layer computes (batch statistics in
training, biased variance, the same moving-average update; moving statistics
otherwise), reading and updating the Keras layer's own variables, so weights,
saving and every other backend are unchanged. Tested against the Keras layer
in `tests/test_layers.py`.
"""

import math

import keras
import torch


def supports(inputs):
    """Whether the kernel takes `inputs`: not a single row (PyTorch refuses
    batch statistics of one value). `BernsteinDense._plain_normalization`
    checks the layer's configuration."""
    return math.prod(inputs.shape[:-1]) > 1


def batch_normalization(layer, inputs, training):
    """`layer(inputs, training=training)` for a plain layer that `supports` them."""
    gamma = keras.ops.convert_to_tensor(layer.gamma)
    beta = keras.ops.convert_to_tensor(layer.beta)
    moving_mean = keras.ops.convert_to_tensor(layer.moving_mean)
    moving_variance = keras.ops.convert_to_tensor(layer.moving_variance)
    # The channels on axis 1, as the kernel wants them.
    rows = inputs.reshape(-1, inputs.shape[-1])
    if training and layer.trainable:
        # The kernel also returns the batch mean and 1 / sqrt(variance + eps);
        # a separate torch.var_mean over the batch measured 0.9 ms, more
        # than the normalization itself.
        outputs, mean, inverse_deviation = torch.native_batch_norm(
            rows, gamma, beta, None, None, True, 0.0, layer.epsilon
        )
        with torch.no_grad():
            variance = inverse_deviation.pow(-2) - layer.epsilon
            layer.moving_mean.assign(
                moving_mean * layer.momentum + mean * (1.0 - layer.momentum)
            )
            layer.moving_variance.assign(
                moving_variance * layer.momentum + variance * (1.0 - layer.momentum)
            )
    else:
        outputs = torch.nn.functional.batch_norm(
            rows,
            moving_mean,
            moving_variance,
            gamma,
            beta,
            training=False,
            eps=layer.epsilon,
        )
    return outputs.reshape(inputs.shape)
