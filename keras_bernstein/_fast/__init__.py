"""Per-backend fast paths, reached only through `keras_bernstein.ops`.

Each module here computes exactly what the portable code in `ops.py` computes
(same formulas, same extrapolation semantics) with fewer, in-place kernels, and
is tested against it in `tests/test_gradients.py`.
"""
