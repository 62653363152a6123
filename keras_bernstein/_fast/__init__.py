"""Per-backend fast paths, each behind one portable entry point.

Each module here computes exactly what the portable formulas of
`keras_bernstein._formula` compute (same formulas, same semantics) with
fewer kernels. `keras_bernstein.ops` alone imports them and picks which runs
(`ops.implementation`); they import `_formula` and each other, never `ops`:

- `jax_reductions` (via `ops.bernstein_polynomial`,
  `ops.normalized_bernstein_polynomial` and
  `ops.batch_normalized_bernstein_polynomial`): the per-neuron sums of the
  JAX backward as fused reductions on CPU and in row chunks for large
  batches on GPU, and the barrier that keeps XLA-CPU from storing the
  forward pass's powers of `t`;
- `cpu_kernels` (via `ops.bernstein_polynomial` and
  `ops.batch_normalized_bernstein_polynomial`, which `BernsteinDense` on
  JAX- and TensorFlow-CPU calls in training): the polynomial, with or
  without the batch normalization, and its backward as C++ kernels
  (`bernstein_cpu.h`), compiled on first use; called through XLA's FFI on
  JAX (`jax_cpu_kernel`, `bernstein_cpu.cc`) and as TensorFlow ops
  (`tensorflow_cpu_kernel`, `bernstein_tensorflow.cc`);
- `tensorflow_compilation` (via `ops.bernstein_polynomial`,
  `ops.normalized_bernstein_polynomial` and
  `ops.batch_normalized_bernstein_polynomial`, where the C++ kernels do not
  run): the polynomial and its recomputing gradient each compiled by XLA,
  which Keras does not use for TensorFlow on CPU, with the gradient's sums
  as one variadic reduction;
- `torch_compilation` (via `ops.bernstein_polynomial`,
  `ops.normalized_bernstein_polynomial` and
  `ops.batch_normalized_bernstein_polynomial`): on PyTorch-CPU, the portable
  formula itself compiled by TorchInductor, with AOTAutograd's backward;
- `torch_polynomial` (via `ops.bernstein_polynomial`, where nothing is
  compiled): the whole polynomial as one in-place autograd node;
- `torch_normalization` (via `ops`' path of `BernsteinDense`, where nothing
  is compiled):
  the batch normalization as PyTorch's fused kernel, on the Keras layer's
  variables, and in training one autograd node with the polynomial.

The first five are tested against autodiff of the portable formula in
`tests/test_gradients.py` (the compiled one in the tests that use the
`torch_compiled` fixture), the last against the Keras layer in
`tests/test_layers.py`.
"""

# Operands per variadic reduction (`jax_reductions`, `tensorflow_compilation`).
# XLA-CPU runs one as a scalar loop; on JAX, with many more operands it is
# slower than separate sums, in groups of 13 (all of degree 8's) as fast or
# faster at every degree.
MAX_SUM_OPERANDS = 13

# The C++ kernels of each front end (`cpu_kernels`), each for every
# extrapolation mode.
KINDS = ("Values", "Gradient", "BatchNormalizedValues", "BatchNormalizedGradient")


def statistics_of(outputs):
    """The outputs of a function after its first, which carry no gradient
    and which its backward receives after its inputs (`ops._with_gradient`)."""
    return tuple(outputs[1:]) if isinstance(outputs, (tuple, list)) else ()
