"""The TensorFlow polynomial, compiled by XLA.

Keras runs TensorFlow models without XLA where there is no GPU
(`jit_compile="auto"`), so the polynomial's Horner loop (about `4 n`
elementwise ops) and its backward's `n + 3` sums each run as separate kernels,
one pass over memory apiece. As XLA functions, forward and backward each
fuse into a few loops; the rest of the model is untouched. A training
step's peak memory stays that of ReLU's with the custom gradient outside
the two XLA functions (`with_gradient`) and the backward's sums as one
variadic reduction (`sum_many_to_shape`, TensorFlow's
`_formula.Primitives.sums_to_shape`: `PRIMITIVES`). Each function is traced
once for every batch size (`_call_for_any_batch`): a trace per shape stays
resident. Where Keras compiles the whole step with XLA (GPU), these
functions are simply part of it.
"""

import functools
import threading

import tensorflow as tf

from keras_bernstein import _formula
from keras_bernstein._fast import MAX_SUM_OPERANDS
from keras_bernstein._fast import statistics_of
from keras_bernstein._formula import reduced_axes

# How many compiled functions are being traced on this thread (nested when
# Keras compiles the whole step): the backward may then use XLA's own ops.
_tracing = threading.local()


@functools.lru_cache(maxsize=None)
def _compiled(function):
    # One tf.function per function (cached), so that every layer of the same
    # shape shares its trace and its XLA executable.
    def traced(*tensors):
        _tracing.depth = getattr(_tracing, "depth", 0) + 1
        try:
            return function(*tensors)
        finally:
            _tracing.depth -= 1

    return tf.function(traced, jit_compile=True)


def _call_for_any_batch(function, tensors, batch_tensors, neuron_rank):
    """`_compiled(function)(*tensors)`, traced with the leading axes of the
    first `batch_tensors` tensors (those before the last `neuron_rank`)
    unknown.

    One trace then serves every batch size, and XLA still compiles for each
    concrete shape. Traced for the shape at hand, a new batch size (Keras'
    train function retraces once for a new one, then keeps an unknown batch
    axis) would trace both functions again, and each trace stays resident.
    """
    specs = []
    for index, tensor in enumerate(tensors):
        shape = tensor.shape
        if index < batch_tensors:
            leading = max(shape.rank - neuron_rank, 0)
            shape = tf.TensorShape([None] * leading).concatenate(shape[leading:])
        specs.append(tf.TensorSpec(shape, tensor.dtype))
    return _compiled(function).get_concrete_function(*specs)(*tensors)


def compiles():
    """Whether `with_gradient` compiles its functions here: inside a traced
    function (`tf.function`). Eager calls (a layer called on a batch, plots,
    callbacks) run op by op instead: compiled, each new input shape would
    cost a trace and a compilation."""
    return not tf.executing_eagerly()


def with_gradient(forward, backward, compiled=True):
    """`forward` with the gradient `backward(upstream, *inputs, *statistics)`
    (`statistics`: `forward`'s outputs after the first), each compiled by XLA
    where `compiled` and `compiles()`.

    The custom gradient sits outside the two XLA functions, so the step keeps
    only the inputs for the backward pass. (With `tf.custom_gradient` inside
    one XLA function, TensorFlow's function gradient returns two copies of
    the input from the forward function.) Inside `tf.function` (Keras'
    train, test and predict functions) each runs as one XLA function,
    compiled once per concrete input shape. Functions that call the C++
    kernels (`_fast/cpu_kernels`), single ops which XLA cannot compile, are
    not `compiled`. Variables are read first:
    `tf.custom_gradient` refuses functions that read variables.
    The inputs are `(x, ..., bounds)`: `x`'s axes before `bounds`' neuron
    axes are batch axes (`_call_for_any_batch`).
    """

    @tf.custom_gradient
    def function(*inputs):
        neuron_rank = inputs[-1].shape.rank - 1
        in_xla = compiled and compiles()

        def gradient(upstream, *statistics_upstream):
            # Outputs after the first are gradient-free statistics.
            tensors = (upstream, *inputs, *statistics)
            if in_xla:
                return _call_for_any_batch(backward, tensors, 2, neuron_rank)
            return backward(*tensors)

        if in_xla:
            outputs = _call_for_any_batch(forward, inputs, 1, neuron_rank)
        else:
            outputs = forward(*inputs)
        statistics = statistics_of(outputs)
        return outputs, gradient

    def read_variables_first(*inputs):
        return function(*(tf.identity(value) for value in inputs))

    return read_variables_first


def fuses_many_sums():
    """Whether `sum_many_to_shape` should take the backward's sums: while a
    function is traced for XLA (`_compiled`)."""
    return getattr(_tracing, "depth", 0) > 0


@functools.lru_cache(maxsize=None)
def _adder(count, dtype):
    # The reducer of a variadic reduction: `count` running sums plus
    # `count` new values, all scalars.
    spec = [tf.TensorSpec([], dtype)] * (2 * count)

    def add(*values):
        return tuple(a + b for a, b in zip(values[:count], values[count:]))

    return tf.function(add).get_concrete_function(*spec)


def sum_many_to_shape(tensors, shape):
    """Sums each of `tensors` (one common shape) down to `shape`, in one pass
    of XLA variadic reductions (the TensorFlow side of
    `_fast/jax_reductions.sum_many_to_shape`, same arguments).

    As separate `reduce_sum`s XLA-CPU stores every product first.
    """
    from tensorflow.compiler.tf2xla.python import xla

    axes = list(reduced_axes(tensors[0].shape, shape))
    dtype = tensors[0].dtype
    accumulate = tf.float32 if dtype.size < 4 else dtype

    # XLA's variadic reduction has no gradient of its own; a sum's is the
    # upstream broadcast back (a gradient penalty differentiates these sums).
    @tf.custom_gradient
    def summed(*tensors):
        operands = [tf.cast(tensor, accumulate) for tensor in tensors]
        sums = []
        for start in range(0, len(operands), MAX_SUM_OPERANDS):
            group = operands[start : start + MAX_SUM_OPERANDS]
            zeros = [tf.zeros([], accumulate)] * len(group)
            sums += xla.variadic_reduce(
                group, zeros, dimensions_to_reduce=axes, reducer=_adder(len(group), accumulate)
            )

        def gradient(*upstream):
            return [
                tf.zeros_like(tensor)
                if grad is None
                else tf.broadcast_to(tf.cast(grad, tensor.dtype), tf.shape(tensor))
                for tensor, grad in zip(tensors, upstream)
            ]

        return [tf.cast(tf.reshape(total, shape), dtype) for total in sums], gradient

    return summed(*tensors)


def sums_to_shape(tensors, shape):
    """`Primitives.sums_to_shape`: fused inside the XLA functions
    (`sum_many_to_shape`)."""
    if fuses_many_sums():
        return sum_many_to_shape(tensors, shape)
    return _formula.PORTABLE.sums_to_shape(tensors, shape)


PRIMITIVES = _formula.PORTABLE._replace(sums_to_shape=sums_to_shape)
