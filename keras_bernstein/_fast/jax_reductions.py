"""How the JAX backward of `ops.bernstein_polynomial` meets XLA.

Two things, both measured on a training step (docs/performance.md):

- The backward's `n + 3` per-neuron sums (`n + 1` basis sums and two for the
  ends of the interval). On CPU they are variadic `lax.reduce`s, which fuse
  every product into one loop over the inputs; as separate sums, XLA-CPU
  materialised the powers of `t` they share (a `(4096, 512)` activation's
  gradient: 176 MiB and 162 ms of temporaries before, 0 and 50 ms after). On
  GPU they stay separate sums, which XLA-GPU fuses: on an H100 one reduction
  of the stacked terms saved memory (the step's peak 524 MiB against 877)
  but took the step from 1.49x to 2.05x of ReLU's (degree 32: 1.96x to
  7.27x), and a variadic reduction of 37 operands (degree 32) failed to
  compile (`ptxas`: too much shared data).
- A barrier between the forward and backward passes, on CPU: without it XLA
  merges the backward's powers of `t` with the forward Horner loop's, keeps
  all of them from the forward pass, and the reductions read `n` stored
  tensors instead of recomputing (degree 8: 1.9x -> 1.45x of ReLU's step,
  peak memory 3.2x -> 1.4x). On the H100 it changed neither time nor memory.
"""

import jax
from jax import lax
import jax.numpy as jnp

from keras_bernstein._fast import MAX_SUM_OPERANDS
from keras_bernstein._fast import reduced_axes


def _on_cpu():
    return jax.default_backend() == "cpu"


def fuses_many_sums():
    """Whether `sum_many_to_shape` should take the backward's sums: on CPU."""
    return _on_cpu()


def recomputation_barrier(tensors):
    """`tensors` through `lax.optimization_barrier` on CPU: values XLA cannot
    merge with the forward pass's, so the backward pass recomputes from them."""
    if _on_cpu():
        return lax.optimization_barrier(tensors)
    return tensors


def sum_many_to_shape(tensors, shape):
    """Sums each of `tensors` (one common shape) down to `shape`, in one pass
    of grouped variadic reductions (for XLA-CPU; see `fuses_many_sums`).

    `shape` is the common shape without its leading axes and with some axes
    set to 1 (those that broadcasting added), as in `ops._sum_to_shape`.
    Half-precision inputs are accumulated in float32 and the sums cast back.
    """
    tensors = [jnp.asarray(tensor) for tensor in tensors]
    axes = reduced_axes(tensors[0].shape, shape)
    dtype = tensors[0].dtype
    accumulate = jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype
    operands = tuple(tensor.astype(accumulate) for tensor in tensors)
    sums = []
    for start in range(0, len(operands), MAX_SUM_OPERANDS):
        group = operands[start : start + MAX_SUM_OPERANDS]
        zeros = tuple(jnp.zeros((), accumulate) for _ in group)
        sums += lax.reduce(
            group, zeros, lambda a, b: tuple(x + y for x, y in zip(a, b)), axes
        )
    return [total.reshape(shape).astype(dtype) for total in sums]
