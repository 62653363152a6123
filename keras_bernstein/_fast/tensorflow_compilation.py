"""The TensorFlow polynomial, compiled by XLA.

Keras runs TensorFlow models without XLA where there is no GPU
(`jit_compile="auto"`), so the polynomial's Horner loop (about `4 n`
elementwise ops) and its backward's `n + 3` sums each run as separate kernels,
one pass over memory apiece. As one XLA function, forward and backward each
fuse into a few loops; the rest of the model is untouched. Measured on the
784 -> 4x512 -> 10 MLP, degree 8, one CPU thread: the training step went from
1.68x to 1.25x of ReLU's, `predict` from 1.50x to 1.16x, and the peak memory
of a training step at batch 4096 from 9.9x to 3.6-4.0x (docs/performance.md).
Where Keras compiles the whole step with XLA (GPU), this function is simply
part of it.
"""

import functools

import tensorflow as tf


@functools.lru_cache(maxsize=None)
def _compiled(function):
    # One tf.function per polynomial (cached), so that every layer of the
    # same shape shares its trace and its XLA executable.
    return tf.function(function, jit_compile=True)


def call(function, *tensors):
    """`function(*tensors)`, XLA-compiled inside a traced graph.

    `function` is one of `ops`' polynomials with a recomputing custom
    gradient, which is compiled with it. Inside `tf.function` (Keras' train,
    test and predict functions) it runs as one XLA function, which XLA
    compiles once per concrete input shape. Eager calls (a layer called on a
    batch, plots, callbacks) run it op by op instead: compiled, each new input
    shape would cost a trace and a compilation (0.1-0.2 s). Variables are read
    first: `tf.custom_gradient` refuses functions that read variables.
    """
    tensors = [tf.identity(tensor) for tensor in tensors]
    if tf.executing_eagerly():
        return function(*tensors)
    return _compiled(function)(*tensors)
