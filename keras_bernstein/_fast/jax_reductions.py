"""Many sums over the same axes as one XLA reduction, for the JAX-CPU backward.

The recomputed backward of `ops.bernstein_polynomial` sums `n + 5`
elementwise products of `t`, the overshoot and the upstream gradient over the
batch axes. As separate sums, XLA-CPU materialises the powers of `t` they
share; as one variadic `lax.reduce`, every product is computed inside one
fused loop. Measured on CPU (degree 8, one thread): for a `(4096, 512)`
activation the gradient's temporaries fell from 176 MiB to 0 and its time
from 162 ms to 50 ms; `benchmarks/performance.py`'s training step went from
2.20-2.25x to 1.50-1.65x of ReLU's (docs/performance.md).
"""

import jax
from jax import lax
import jax.numpy as jnp


# Operands per variadic reduction. XLA-CPU runs it as one scalar loop; with
# more operands (degree 16: 21) it measured slower than separate sums, in
# groups of 13 (all of degree 8's) as fast or faster at every degree.
_MAX_OPERANDS = 13


def fuses_many_sums():
    """Whether to take the sums as one variadic reduction: on CPU only.

    XLA-GPU already fuses the separate sums (the training step's memory
    measured 1.43x of ReLU's on an H100), and its variadic reduction of
    `n + 5` operands runs out of shared memory in `ptxas` at degree 32.
    """
    return jax.default_backend() == "cpu"


def recomputation_barrier(tensors):
    """`tensors` through `lax.optimization_barrier`: values XLA cannot merge
    with the forward pass's, so the backward pass recomputes from them."""
    return lax.optimization_barrier(tensors)


def sum_many_to_shape(tensors, shape):
    """Sums each of `tensors` (one common shape) down to `shape`, in one pass.

    `shape` is the common shape without its leading axes and with some axes
    set to 1 (those that broadcasting added), as in `ops._sum_to_shape`.
    Half-precision inputs are accumulated in float32 and the sums cast back.
    """
    tensors = [jnp.asarray(tensor) for tensor in tensors]
    full_shape = tensors[0].shape
    leading = len(full_shape) - len(shape)
    axes = tuple(range(leading)) + tuple(
        leading + i
        for i, size in enumerate(shape)
        if size == 1 and full_shape[leading + i] != 1
    )
    dtype = tensors[0].dtype
    accumulate = jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype
    operands = tuple(tensor.astype(accumulate) for tensor in tensors)
    sums = []
    for start in range(0, len(operands), _MAX_OPERANDS):
        group = operands[start : start + _MAX_OPERANDS]
        zeros = tuple(jnp.zeros((), accumulate) for _ in group)
        sums += lax.reduce(
            group, zeros, lambda a, b: tuple(x + y for x, y in zip(a, b)), axes
        )
    return [total.reshape(shape).astype(dtype) for total in sums]
