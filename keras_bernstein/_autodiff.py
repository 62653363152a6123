"""Gradients of a scalar function with respect to chosen tensors, per backend.

`keras.ops` has no portable "gradient of this function" operation, so this is
the one module of the package that talks to each backend's autodiff directly.
It is used by `keras_bernstein.callbacks` to differentiate an activation
elementwise and to back-propagate a loss to pre-activations, and by
`keras_bernstein.attacks` for the gradient of a loss with respect to the
inputs, in a step compiled once per model and batch shape. The functions
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


def gradients_and_aux(function, tensors):
    """Like `gradients`, for a `function` returning `(scalar, aux)`.

    Args:
        function: Callable taking `len(tensors)` tensors and returning a
            scalar tensor and a nested structure of tensors `aux` (e.g. the
            model outputs the scalar was computed from).
        tensors: List of floating-point tensors of the current backend.

    Returns:
        `(grads, aux)`: one gradient per tensor, as in `gradients`, and `aux`
        from the same evaluation, cut from the autodiff graph.

    Example:
        >>> z = keras.ops.convert_to_tensor([-1.0, 0.0, 2.0])
        >>> grads, y = gradients_and_aux(
        ...     lambda z: (keras.ops.sum(keras.ops.relu(z)), keras.ops.relu(z)), [z])
    """
    tensors = list(tensors)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        argnums = tuple(range(len(tensors)))
        grads, aux = jax.grad(function, argnums=argnums, has_aux=True)(*tensors)
        return list(grads), aux
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.convert_to_tensor(t) for t in tensors]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value, aux = function(*tensors)
        grads = tape.gradient(
            value, tensors, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return grads, keras.tree.map_structure(tf.stop_gradient, aux)
    if backend == "torch":
        import torch

        tensors = [
            keras.ops.convert_to_tensor(t).detach().requires_grad_(True)
            for t in tensors
        ]
        with torch.enable_grad():
            value, aux = function(*tensors)
            grads = torch.autograd.grad(value, tensors, allow_unused=True)
        grads = [
            torch.zeros_like(t) if g is None else g.detach()
            for t, g in zip(tensors, grads)
        ]
        return grads, keras.tree.map_structure(lambda t: t.detach(), aux)
    raise ValueError(
        "Gradients are implemented for the jax, tensorflow and torch "
        f"backends. Received: backend={backend!r}"
    )


def compiled(function):
    """`function` compiled for repeated calls on tensors of the same shapes.

    JAX: `jax.jit` (traced once per argument shapes); TensorFlow: a
    `tf.function` (a graph per argument shapes); PyTorch: `function` itself,
    run eagerly. `function` must take and return tensors (or nested
    structures of them) and read no Python state that changes between calls:
    a compiled trace keeps the values it saw. Pass a model's variables as
    arguments (`model.stateless_call`) so that new weights are seen.

    Args:
        function: Callable on backend tensors, free of side effects.

    Returns:
        A callable with the signature of `function`.

    Example:
        >>> square_sum = compiled(lambda x: keras.ops.sum(x * x))
        >>> square_sum(keras.ops.ones((3,)))   # 3.0
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(function)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, reduce_retracing=True)
    if backend == "torch":
        return function
    raise ValueError(
        "Compiled functions are implemented for the jax, tensorflow and torch "
        f"backends. Received: backend={backend!r}"
    )
