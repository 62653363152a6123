"""The power-form Bernstein activation, as the upstream DeepBern-Nets code evaluates it.

`σ(x) = Σ_k c_k C(n,k) pow(t, k) pow(1 − t, n − k)` over a stacked basis tensor
of shape `(batch, units, n + 1)`. Only here as the baseline that the benchmarks
compare against; never used by the package.
"""

from keras import ops

from keras_bernstein import Bernstein
from keras_bernstein import BernsteinDense
from keras_bernstein import ops as bernstein_ops


class PowerFormBernstein(Bernstein):
    """`Bernstein` with `"clip"` semantics, evaluated in the power form."""

    def call(self, inputs):
        x = ops.cast(inputs, self.variable_dtype)
        t = ops.clip(bernstein_ops.to_unit_interval(x, self.bounds), 0.0, 1.0)
        t = ops.expand_dims(t, -1)
        k = ops.arange(self.degree + 1, dtype=self.variable_dtype)
        binomials = ops.convert_to_tensor(
            bernstein_ops.binomial_coefficients(self.degree), self.variable_dtype
        )
        basis = binomials * ops.power(t, k) * ops.power(1.0 - t, self.degree - k)
        return ops.cast(ops.sum(basis * self.coefficients, axis=-1), self.compute_dtype)


class PowerFormBernsteinDense(BernsteinDense):
    """`BernsteinDense` whose activation is `PowerFormBernstein`."""

    def __init__(self, units, degree=8, **kwargs):
        super().__init__(units, degree=degree, extrapolation="clip", **kwargs)
        self.bernstein = PowerFormBernstein(
            degree=degree, extrapolation="clip", dtype=self.dtype_policy, name="bernstein"
        )
