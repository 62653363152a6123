"""Per-backend fast paths, reached only through `keras_bernstein.ops`.

Each module here computes exactly what the portable code in `ops.py` computes
(same formulas, same extrapolation semantics) with fewer kernels:
`torch_polynomial` the whole polynomial as one in-place autograd node,
`jax_reductions` the per-neuron sums of the JAX backward as fused reductions.
Both are tested against autodiff of the portable formula in
`tests/test_gradients.py`.
"""
