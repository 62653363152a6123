"""How the JAX backward of `ops.bernstein_polynomial` meets XLA: JAX's
`_formula.Primitives` (`PRIMITIVES`).

Three things:

- The backward's `n + 3` per-neuron sums (`n + 1` basis sums and two for the
  ends of the interval). On CPU they are variadic `lax.reduce`s, which fuse
  every product into one loop over the inputs; as separate sums, XLA-CPU
  materialises the powers of `t` they share. On GPU they stay separate
  sums: XLA-GPU computes all the products in one kernel, stores them and
  then reduces them in every form tried, and grouped variadic reductions
  were no clear gain there (and many operands fail to compile).
- On GPU, the sums of a batch whose products would take more than
  `MAX_STORED_PRODUCT_BYTES` in row chunks (`sums_in_row_chunks`).
- A barrier between the forward and backward passes, on CPU: without it XLA
  merges the backward's powers of `t` with the forward Horner loop's, keeps
  all of them from the forward pass, and the reductions read `n` stored
  tensors instead of recomputing. On GPU it changes neither time nor memory.
"""

import functools
import math

import jax
from jax import lax
import jax.numpy as jnp

from keras_bernstein import _formula
from keras_bernstein._fast import MAX_SUM_OPERANDS
from keras_bernstein._formula import reduced_axes


# Bytes of stored products above which `sums_in_row_chunks` takes the
# backward's sums in row chunks.
MAX_STORED_PRODUCT_BYTES = 2**30


def _on_cpu():
    return jax.default_backend() == "cpu"


def _accumulation_dtype(dtype):
    """float32 for half-precision sums, else `dtype`."""
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


def fuses_many_sums():
    """Whether `sum_many_to_shape` should take the backward's sums: on CPU."""
    return _on_cpu()


def recomputation_barrier(tensors):
    """`tensors` through `lax.optimization_barrier` on CPU: values XLA cannot
    merge with the forward pass's, so the backward pass recomputes from them."""
    if _on_cpu():
        return lax.optimization_barrier(tensors)
    return tensors


def sums_to_shape(tensors, shape):
    """`Primitives.sums_to_shape`: fused on CPU (`sum_many_to_shape`)."""
    if fuses_many_sums():
        return sum_many_to_shape(tensors, shape)
    return _formula.PORTABLE.sums_to_shape(tensors, shape)


def sum_many_to_shape(tensors, shape):
    """Sums each of `tensors` (one common shape) down to `shape`, in one pass
    of grouped variadic reductions (for XLA-CPU; see `fuses_many_sums`).

    `shape` is the common shape without its leading axes and with some axes
    set to 1 (those that broadcasting added), as in `_formula._sum_to_shape`.
    Half-precision inputs are accumulated in float32 and the sums cast back.
    """
    return list(_sum_many(tuple(shape), *(jnp.asarray(tensor) for tensor in tensors)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _sum_many(shape, *tensors):
    axes = reduced_axes(tensors[0].shape, shape)
    dtype = tensors[0].dtype
    accumulate = _accumulation_dtype(dtype)
    operands = tuple(tensor.astype(accumulate) for tensor in tensors)
    sums = []
    for start in range(0, len(operands), MAX_SUM_OPERANDS):
        group = operands[start : start + MAX_SUM_OPERANDS]
        zeros = tuple(jnp.zeros((), accumulate) for _ in group)
        sums += lax.reduce(
            group, zeros, lambda a, b: tuple(x + y for x, y in zip(a, b)), axes
        )
    return tuple(total.reshape(shape).astype(dtype) for total in sums)


@_sum_many.defjvp
def _sum_many_jvp(shape, primals, tangents):
    # A sum is linear: the tangents' plain sums, which JAX can transpose (a
    # gradient penalty differentiates the backward's sums again).
    axes = reduced_axes(primals[0].shape, shape)
    dtype = primals[0].dtype
    accumulate = _accumulation_dtype(dtype)
    tangent_sums = tuple(
        jnp.sum(tangent.astype(accumulate), axis=axes).reshape(shape).astype(dtype)
        for tangent in tangents
    )
    return _sum_many(shape, *primals), tangent_sums


def sums_in_row_chunks(function, tensors, neuron_rank, whole_batch):
    """`whole_batch()`, a list of per-neuron sums over the batch axes of the
    batch-shaped `tensors` (the axes before the last `neuron_rank`); where,
    off CPU, the products summed would take more than
    `MAX_STORED_PRODUCT_BYTES`, the same sums from `function(*tensors)`,
    which recomputes them from `tensors` alone, in a `lax.scan` over row
    chunks.

    XLA-GPU computes the products in one multi-output kernel and stores each
    of them before reducing them: `n + 3` tensors of the batch's size,
    growing with the batch. In chunks they are bounded, but they cost time,
    so only batches past the limit are chunked, into as few chunks as keep
    under it. `function` must be elementwise along the batch axes: it sees a
    chunk's rows with the batch axes flattened into one. Half-precision sums
    are accumulated in float32.
    """
    shape = tuple(tensors[0].shape)
    batch_rank = len(shape) - neuron_rank
    if (
        _on_cpu()
        or batch_rank < 1
        or None in shape
        or any(tuple(tensor.shape) != shape for tensor in tensors)
    ):
        return whole_batch()
    rows = math.prod(shape[:batch_rank])
    row_shape = shape[batch_rank:]
    dtype = tensors[0].dtype
    row_sums = jax.eval_shape(function, *(jnp.zeros((1,) + row_shape, dtype) for _ in tensors))
    row_bytes = len(row_sums) * math.prod(row_shape) * jnp.dtype(dtype).itemsize
    largest = max(1, MAX_STORED_PRODUCT_BYTES // row_bytes)
    if rows <= largest:
        return whole_batch()
    chunk = -(-rows // -(-rows // largest))  # as few chunks as fit, of equal size
    count = rows // chunk
    flat = [jnp.reshape(tensor, (rows,) + row_shape) for tensor in tensors]
    chunked = [
        jnp.reshape(tensor[: count * chunk], (count, chunk) + row_shape) for tensor in flat
    ]
    accumulate = _accumulation_dtype(dtype)

    def add_chunk(totals, chunk_tensors):
        sums = function(*chunk_tensors)
        return [total + jnp.asarray(s, accumulate) for total, s in zip(totals, sums)], None

    zeros = [jnp.zeros(s.shape, accumulate) for s in row_sums]
    totals, _ = lax.scan(add_chunk, zeros, chunked)
    if count * chunk < rows:
        rest = function(*(tensor[count * chunk :] for tensor in flat))
        totals = [total + jnp.asarray(s, accumulate) for total, s in zip(totals, rest)]
    return [total.astype(dtype) for total in totals]


PRIMITIVES = _formula.PORTABLE._replace(
    sums_to_shape=sums_to_shape,
    batch_sums=sums_in_row_chunks,
    recomputation_barrier=recomputation_barrier,
)
