"""Gradients of a scalar function with respect to chosen tensors, per backend.

`keras.ops` has no portable "gradient of this function" operation, so this is
the one module of the package that talks to each backend's autodiff directly.
It is used by `keras_bernstein.callbacks` to differentiate an activation
elementwise and to back-propagate a loss to pre-activations. The functions
differentiated here only read variables, so no optimizer state, gradient
buffer or random state is touched.
"""

import keras


def gradients(function, tensors):
    """Gradient of the scalar `function(*tensors)` with respect to each tensor.

    Args:
        function: Callable taking `len(tensors)` tensors and returning a
            scalar tensor. It may call Keras layers (in inference mode).
        tensors: List of floating-point tensors of the current backend.

    Returns:
        A list with one gradient per tensor, each of the same shape as its
        tensor. A tensor that `function` does not depend on gets zeros.

    Example:
        >>> z = keras.ops.convert_to_tensor([-1.0, 0.0, 2.0])
        >>> gradients(lambda z: keras.ops.sum(keras.ops.relu(z)), [z])
        [Array([0., 0., 1.], dtype=float32)]   # on JAX
    """
    tensors = list(tensors)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        argnums = tuple(range(len(tensors)))
        return list(jax.grad(function, argnums=argnums)(*tensors))
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.convert_to_tensor(t) for t in tensors]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = function(*tensors)
        return tape.gradient(
            value, tensors, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
    if backend == "torch":
        import torch

        tensors = [
            keras.ops.convert_to_tensor(t).detach().requires_grad_(True)
            for t in tensors
        ]
        with torch.enable_grad():
            value = function(*tensors)
            # `autograd.grad` (unlike `backward`) accumulates nothing into
            # the variables' `.grad`, so training state is left untouched.
            grads = torch.autograd.grad(value, tensors, allow_unused=True)
        return [
            torch.zeros_like(t) if g is None else g.detach()
            for t, g in zip(tensors, grads)
        ]
    raise ValueError(
        "Gradients are implemented for the jax, tensorflow and torch "
        f"backends. Received: backend={backend!r}"
    )
