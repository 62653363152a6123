"""Bernstein-polynomial mathematics on tensors, built on `keras.ops` only.

Everything that evaluates, differentiates or bounds a Bernstein polynomial is
reached from here; layers own the weights and call these functions, and the
rest of the package reads layers through them. This module checks the
arguments and picks the implementation of each call (`implementation`); the
formulas are `_formula`'s, the NumPy coefficient algebra
`_coefficient_algebra`'s, the fast paths `_fast`'s, which only this module
calls.

Conventions shared by every function:

- `coefficients` has shape `(..., degree + 1)`: the last axis holds
  `c_0 ... c_n`, the leading axes broadcast against the trailing axes of `x`
  (one polynomial per neuron).
- `bounds` has shape `(..., 2)` holding `(l, u)` per polynomial, broadcast the
  same way.
- `x` is mapped to `t = (x - l) / (u - l)`; the polynomial is
  `sum_k c_k * C(n, k) * t**k * (1 - t)**(n - k)`.
- The degree is at most `MAX_DEGREE` (100): above it float32 evaluates
  neither the polynomial nor its gradients accurately.
- Arguments are checked on entry, with a `ValueError` naming them: the
  tables' shapes always, the values of `bounds` (finite, `l < u`, usable in
  float32) where they are concrete (NumPy and Python values, eager tensors
  in host memory). Inside a traced function (`jax.jit`, `tf.function`,
  `torch.compile`), on an accelerator, and for Keras variables (the layers
  check their weights where they are set) the values are not read, and an
  empty or inverted interval gives NaN or inf instead of an error.

Evaluation never calls `pow`: a Horner-like recurrence in `t` and `1 - t`
whose terms are all nonnegative products keeps its float32 error within a
few `n * eps` of the condition scale `sum_k |c_k| b_k(t)` even at degree 24.
"""

import collections
import functools
import logging

import keras
import numpy as np
from keras import ops

from keras_bernstein import _arguments
from keras_bernstein import _formula
from keras_bernstein._arguments import check_bounds_values
from keras_bernstein._arguments import check_extrapolation
from keras_bernstein._coefficient_algebra import RANGE_METHODS
from keras_bernstein._coefficient_algebra import bernstein_range
from keras_bernstein._coefficient_algebra import elevate_coefficients
from keras_bernstein._coefficient_algebra import subdivide_coefficients
from keras_bernstein._fast import statistics_of
from keras_bernstein._formula import EXTRAPOLATION_MODES
from keras_bernstein._formula import MAX_DEGREE
from keras_bernstein._formula import derivative_coefficients
from keras_bernstein._formula import end_slopes
from keras_bernstein._formula import to_unit_interval

__all__ = [
    "EXTRAPOLATION_MODES",
    "IMPLEMENTATIONS",
    "Implementation",
    "MAX_DEGREE",
    "RANGE_METHODS",
    "batch_normalized_bernstein_polynomial",
    "bernstein_basis",
    "bernstein_derivative",
    "bernstein_nodes",
    "bernstein_polynomial",
    "bernstein_range",
    "binomial_coefficients",
    "check_bounds_values",
    "check_extrapolation",
    "coefficient_range",
    "derivative_coefficients",
    "derivative_lower_bound",
    "elevate_coefficients",
    "end_slopes",
    "implementation",
    "normalized_bernstein_polynomial",
    "subdivide_coefficients",
    "to_unit_interval",
]

_BACKEND = keras.backend.backend()


def binomial_coefficients(degree):
    """`C(degree, k)` for `k = 0 ... degree` as a float64 NumPy array.

    `degree` is an integer from 0 to `MAX_DEGREE` (100).
    """
    return _formula.binomials(_arguments.check_degree(degree, minimum=0))


def bernstein_nodes(degree):
    """The Greville abscissae `k / degree` of the basis, as a NumPy array.

    Setting `c_k = f(l + (u - l) * k / degree)` gives the Bernstein
    approximant of `f` on `[l, u]`; for linear `f` it is exact. `degree` is
    an integer from 1 to `MAX_DEGREE` (100).
    """
    degree = _arguments.check_degree(degree)
    return np.arange(degree + 1, dtype="float64") / degree


def bernstein_basis(t, degree):
    """All `degree + 1` Bernstein basis functions at `t`.

    Args:
        t: Tensor of points, usually in `[0, 1]`.
        degree: Integer `n` from 0 to `MAX_DEGREE` (100).

    Returns:
        Tensor of shape `t.shape + (degree + 1,)` holding
        `C(n, k) t^k (1 - t)^(n - k)`, computed by products of powers
        built by repeated multiplication (no `pow`).
    """
    degree = _arguments.check_degree(degree, minimum=0)
    basis = ops.stack(_formula._basis_terms(ops.convert_to_tensor(t), degree), axis=-1)
    return ops.multiply(basis, ops.cast(_formula.binomials(degree), basis.dtype))


def bernstein_derivative(x, coefficients, bounds, extrapolation="linear"):
    """`dσ/dx` of `bernstein_polynomial` with the same arguments.

    Inside `[l, u]` this is `n / (u - l) * sum_k (c_{k+1} - c_k) b_{n-1,k}(t)`;
    outside it is the end slope (`"linear"`), zero (`"clip"`) or the
    polynomial's own derivative (`"polynomial"`).
    """
    check_extrapolation(extrapolation)
    given_bounds = bounds
    x, coefficients, bounds = (ops.convert_to_tensor(v) for v in (x, coefficients, bounds))
    degree = _arguments.check_tables(coefficients, bounds, x, given_bounds)
    t = to_unit_interval(x, bounds)
    if degree == 0:
        return ops.zeros_like(t)
    width = bounds[..., 1] - bounds[..., 0]
    return ops.divide(_formula._slope_in_t(t, coefficients, extrapolation), width)


def derivative_lower_bound(coefficients, bounds):
    """Guaranteed minimum of `dσ/dx` on `[l, u]`: `n min_k (c_{k+1} - c_k) / (u - l)`.

    With `"linear"` extrapolation the bound holds on the whole real line. It
    is positive exactly when the coefficients increase strictly, and may be
    negative otherwise (then it is still a valid, if useless, lower bound).
    """
    given_bounds = bounds
    coefficients, bounds = (ops.convert_to_tensor(v) for v in (coefficients, bounds))
    _arguments.check_tables(coefficients, bounds, given_bounds=given_bounds)
    derivative = derivative_coefficients(coefficients)
    width = bounds[..., 1] - bounds[..., 0]
    return ops.divide(ops.min(derivative, axis=-1), width)


def coefficient_range(coefficients):
    """Range enclosure on `[l, u]`: `(min_k c_k, max_k c_k)` stacked on a last axis of 2."""
    return ops.stack(
        [ops.min(coefficients, axis=-1), ops.max(coefficients, axis=-1)], axis=-1
    )


# --- Which implementation runs ---------------------------------------------

# This backend's fast paths (`_fast`), imported once; the formulas take the
# backend's own form of a few steps (`_formula.Primitives`).
_cpu_kernels = _tensorflow_compilation = None
_torch_compilation = _torch_normalization = _torch_polynomial = None
if _BACKEND == "jax":
    from keras_bernstein._fast import cpu_kernels as _cpu_kernels
    from keras_bernstein._fast import jax_reductions

    _formula.use_primitives(jax_reductions.PRIMITIVES)
elif _BACKEND == "tensorflow":
    from keras_bernstein._fast import cpu_kernels as _cpu_kernels
    from keras_bernstein._fast import tensorflow_compilation as _tensorflow_compilation

    _formula.use_primitives(_tensorflow_compilation.PRIMITIVES)
elif _BACKEND == "torch":
    from keras_bernstein._fast import torch_compilation as _torch_compilation
    from keras_bernstein._fast import torch_normalization as _torch_normalization
    from keras_bernstein._fast import torch_polynomial as _torch_polynomial

    _formula.use_primitives(_torch_polynomial.PRIMITIVES)



def _dynamo_tracing():
    """Whether PyTorch's Dynamo traces the running code (never elsewhere)."""
    return False


if _torch_compilation is not None:
    _dynamo_tracing = _torch_compilation.tracing  # noqa: F811

Implementation = collections.namedtuple("Implementation", ["name", "fused", "reason"])
Implementation.__doc__ = """What computes a call (`implementation`): `(name, fused, reason)`.

- `name`, one of `IMPLEMENTATIONS`: `"cpu_kernel"`, the C++ kernels of
  `_fast/cpu_kernels` (JAX- and TensorFlow-CPU, float32); `"xla_compiled"`,
  forward and backward each an XLA function (TensorFlow inside a traced
  function, where the kernels do not run); `"torch_compiled"`, the formula
  compiled by TorchInductor (PyTorch-CPU; under the default
  `KERAS_BERNSTEIN_TORCH_COMPILE=auto` once the eager kernels have run as
  long as compiling is expected to take); `"torch_eager"`, PyTorch's
  in-place autograd nodes (and its fused batch normalization kernel);
  `"recomputed_gradient"`, the portable formula with its hand-written
  backward, which recomputes from the input; `"portable"`, autodiff of the
  portable formula.
- `fused`: with a normalization, whether it runs in one function with the
  polynomial (else the normalization runs first, then
  `bernstein_polynomial`, whose implementation `name` is); without one,
  False.
- `reason`: why, in words.
"""

IMPLEMENTATIONS = (
    "cpu_kernel",
    "xla_compiled",
    "torch_compiled",
    "torch_eager",
    "recomputed_gradient",
    "portable",
)
_NORMALIZATIONS = (None, "inference", "training")

# Backends on which, without the C++ kernels, `BernsteinDense` runs a plain
# batch normalization and the polynomial as one function: TensorFlow's step
# and its memory gain; JAX's step was slower fused, so JAX keeps the two.
_FUSED_NORMALIZATION_BACKENDS = ("tensorflow",)

_logger = logging.getLogger("keras_bernstein")
_logged = set()
# (name, fused, reason) -> the one `Implementation` of it: PyTorch's eager
# calls ask at every step, and get a tuple built once.
_choices = {}


def _choice(name, fused, reason, detail=""):
    """`Implementation(name, fused, reason + detail)`, built once."""
    key = (name, fused, reason, detail)
    choice = _choices.get(key)
    if choice is None:
        choice = _choices[key] = Implementation(name, fused, reason + detail)
    return choice


def implementation(
    x, coefficients, bounds, extrapolation="linear", normalization=None, fused=None
):
    """Which implementation a call with these arguments would use, and why.

    The same answer the functions here act on: `bernstein_polynomial` (the
    `Bernstein` layer) without a normalization; with one, `BernsteinDense`'s
    batch normalization and activation (its default normalization, as the
    layer builds it) in inference or in training, or with `fused=True` the
    one-function forms `normalized_bernstein_polynomial` (`"inference"`:
    given statistics) and `batch_normalized_bernstein_polynomial`
    (`"training"`: the batch's). Each decision is also logged, once per
    distinct answer, at debug level on the `"keras_bernstein"` logger.

    Args:
        x: Input tensor (for a normalization, its input).
        coefficients, bounds, extrapolation: As in `bernstein_polynomial`.
        normalization: `None`, `"inference"` or `"training"`.
        fused: `None` (what `BernsteinDense` runs) or `True` (the
            one-function form, called directly); only with a normalization.

    Returns:
        `Implementation(name, fused, reason)`; `name` is one of
        `IMPLEMENTATIONS`.

    Examples:
        >>> x = np.zeros((4, 3), "float32")
        >>> coefficients = np.zeros((3, 9), "float32")
        >>> bounds = np.tile([-3.0, 3.0], (3, 1)).astype("float32")
        >>> ops.implementation(x, coefficients, bounds).name  # JAX on CPU
        'cpu_kernel'
        >>> ops.implementation(x, coefficients, bounds, normalization="training")
        Implementation(name='cpu_kernel', fused=True, reason='the C++ kernels apply (CPU, float32)')
    """
    check_extrapolation(extrapolation)
    if normalization not in _NORMALIZATIONS:
        raise ValueError(
            f"`normalization` must be one of {_NORMALIZATIONS}. "
            f"Received: normalization={normalization!r}"
        )
    if fused not in (None, True) or (fused and normalization is None):
        raise ValueError(
            "`fused` must be None, or True with a normalization. "
            f"Received: fused={fused!r}, normalization={normalization!r}"
        )
    given_bounds = bounds
    x, coefficients, bounds = (ops.convert_to_tensor(v) for v in (x, coefficients, bounds))
    degree = _arguments.check_tables(coefficients, bounds, x, given_bounds)
    return _implementation(x, coefficients, bounds, degree, normalization, fused)


def _implementation(x, coefficients, bounds, degree, normalization=None, fused=None, vectors=()):
    """`implementation` of checked arguments; `vectors` the normalization's
    per-unit tensors, where known."""
    if normalization is None:
        choice = _polynomial_choice(x, coefficients, bounds, degree)
    elif fused:
        choice = _fused_choice(x, coefficients, bounds, degree, normalization, vectors)
    else:
        choice = _layer_choice(x, coefficients, bounds, degree, normalization)
    # Not inside Dynamo's trace, whose graph a logger call would break.
    if not _dynamo_tracing() and _logger.isEnabledFor(logging.DEBUG):
        _log(choice, x, degree, normalization, fused)
    return choice


def _log(choice, x, degree, normalization, fused):
    key = (choice, tuple(x.shape), degree, normalization, fused)
    if key in _logged:
        return
    _logged.add(key)
    what = "bernstein_polynomial"
    if normalization is not None:
        what = f"{normalization} normalization ({'one function' if fused else 'BernsteinDense'})"
    _logger.debug(
        "keras_bernstein: %s of x%s at degree %d runs %s%s: %s",
        what,
        tuple(x.shape),
        degree,
        choice.name,
        " fused" if choice.fused else "",
        choice.reason,
    )


_PORTABLE_CONSTANT = Implementation(
    "portable", False, "degree 0: a constant, differentiated by autodiff"
)
_PORTABLE_FEW_AXES = Implementation(
    "portable", False, "x has fewer axes than the tables' neurons: autodiff of the formula"
)
_CPU_KERNEL = Implementation("cpu_kernel", False, "the C++ kernels apply (CPU, float32)")
_TORCH_COMPILED = Implementation(
    "torch_compiled",
    False,
    "PyTorch on CPU: TorchInductor, as KERAS_BERNSTEIN_TORCH_COMPILE says (by default"
    " the eager kernels run until compiling has paid for itself)",
)


def _polynomial_choice(x, coefficients, bounds, degree):
    if degree == 0:
        return _PORTABLE_CONSTANT
    if len(x.shape) < len(coefficients.shape) - 1:
        return _PORTABLE_FEW_AXES
    if _torch_compilation is not None:
        refusal = _torch_compilation.refusal(x, degree)
        if refusal is None:
            return _TORCH_COMPILED
        return _choice("torch_eager", False, "one in-place autograd node: ", refusal)
    refusal = _kernel_refusal(x, coefficients, bounds)
    if refusal is None:
        return _CPU_KERNEL
    return _recomputing_choice(False, refusal)


def _kernel_refusal(x, coefficients, bounds, vectors=(), normalized=False):
    """Why the C++ kernels do not take these tensors, or None where they do."""
    if _cpu_kernels is None:
        return "no C++ kernels on this backend"
    return _cpu_kernels.refusal(x, coefficients, bounds, vectors, normalized)


def _recomputing_choice(fused, refusal):
    """The custom gradient of the portable formula: on TensorFlow inside a
    traced function each pass an XLA function (`_fast/tensorflow_compilation`)."""
    if _tensorflow_compilation is not None and _tensorflow_compilation.compiles():
        return _choice(
            "xla_compiled", fused, "XLA functions inside a traced function: ", refusal
        )
    return _choice("recomputed_gradient", fused, "the portable formula: ", refusal)


def _fused_choice(x, coefficients, bounds, degree, normalization, vectors):
    """`normalized_bernstein_polynomial` (`"inference"`) or
    `batch_normalized_bernstein_polynomial` (`"training"`)."""
    refusal = None
    if _torch_compilation is not None:
        refusal = _torch_compilation.refusal(x, degree)
        if refusal is None:
            return _choice("torch_compiled", True, _TORCH_COMPILED.reason)
    if degree == 0:
        return _choice("portable", True, _PORTABLE_CONSTANT.reason)
    if refusal is not None:  # PyTorch, uncompiled
        return _recomputing_choice(True, refusal)
    if normalization == "inference":
        return _recomputing_choice(True, "no C++ kernel takes given statistics")
    refusal = _kernel_refusal(x, coefficients, bounds, vectors, normalized=True)
    if refusal is None:
        return _choice("cpu_kernel", True, _CPU_KERNEL.reason)
    return _recomputing_choice(True, refusal)


def _layer_choice(x, coefficients, bounds, degree, normalization):
    """`BernsteinDense`'s plain batch normalization and polynomial."""
    if _torch_compilation is not None:
        refusal = _torch_compilation.refusal(x, degree)
        if refusal is None:
            return _choice("torch_compiled", True, _TORCH_COMPILED.reason)
        if not _torch_normalization.supports(x):
            return _choice("torch_eager", False, "a single row, Keras' normalization: ", refusal)
        if normalization == "training":
            return _choice("torch_eager", True, "one in-place autograd node: ", refusal)
        return _choice("torch_eager", False, "PyTorch's normalization kernel: ", refusal)
    refusal = _kernel_refusal(x, coefficients, bounds, normalized=True)
    if refusal is None:
        if normalization == "training":
            return _choice("cpu_kernel", True, _CPU_KERNEL.reason)
        polynomial = _polynomial_choice(x, coefficients, bounds, degree)
        return _choice(
            polynomial.name, False, "in inference Keras' normalization, then ", polynomial.reason
        )
    if _BACKEND in _FUSED_NORMALIZATION_BACKENDS:
        return _fused_choice(x, coefficients, bounds, degree, normalization, ())
    polynomial = _polynomial_choice(x, coefficients, bounds, degree)
    return _choice(polynomial.name, False, "Keras' normalization, then ", polynomial.reason)


# --- The polynomial ----------------------------------------------------------


def _with_gradient(forward, backward, kernel=False):
    """`forward` as a function whose gradient is `backward(upstream, *inputs,
    *statistics)`.

    `backward` returns one gradient per input and recomputes what it needs
    from the inputs, so a training step keeps nothing of the forward pass but
    its inputs. Where `forward` returns a tuple, only its first item carries
    a gradient (`upstream` is that item's); the others are per-neuron
    statistics, which callers return through `ops.stop_gradient` and which
    `backward` receives after the inputs (small, and so kept rather than
    recomputed). The inputs are `(x, ..., bounds)`, `x` the batch-shaped one.
    On TensorFlow forward and backward are each compiled by XLA
    (`_fast/tensorflow_compilation`), unless they call the C++ `kernel`s,
    which XLA cannot compile.
    """
    if _tensorflow_compilation is not None:
        return _tensorflow_compilation.with_gradient(forward, backward, compiled=not kernel)

    @ops.custom_gradient
    def function(*inputs):
        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            if isinstance(upstream, (tuple, list)):
                upstream = upstream[0]
            return backward(upstream, *inputs, *statistics)

        outputs = forward(*inputs)
        statistics = statistics_of(outputs)
        return outputs, gradient

    return function


@functools.lru_cache(maxsize=None)
def _with_lean_gradient(extrapolation, kernel=False):
    """The polynomial as a function whose backward is `_recomputed_gradients`,
    recomputing `t` and the overshoot from `x`; with `kernel` both passes
    the C++ kernels (`_fast/cpu_kernels`), where they take the tensors."""

    def evaluate(x, coefficients, bounds):
        return _formula._evaluate(x, coefficients, bounds, extrapolation)

    def forward(x, coefficients, bounds):
        if not kernel:
            return evaluate(x, coefficients, bounds)
        return _cpu_kernels.values(x, coefficients, bounds, extrapolation, evaluate)

    def backward(upstream, x, coefficients, bounds):
        (x,) = _formula._recomputation_barrier((x,))
        return _formula._recomputed_gradients(
            None, x, coefficients, bounds, upstream, extrapolation,
            kernel=_cpu_kernels.gradient_and_sums if kernel else None,
        )

    return _with_gradient(forward, backward, kernel)


def bernstein_polynomial(x, coefficients, bounds, extrapolation="linear"):
    """Evaluates one Bernstein polynomial per neuron at `x`.

    Args:
        x: Input tensor; its trailing axes broadcast against
            `coefficients.shape[:-1]`.
        coefficients: Tensor `(..., degree + 1)`.
        bounds: Tensor `(..., 2)` holding `(l, u)` with `l < u`.
        extrapolation: Behaviour outside `[l, u]`:
            `"linear"` continues with the value and slope at the nearest end
            (C^1, unbounded slope guarantee), `"clip"` holds the end value
            (zero slope outside), `"polynomial"` evaluates the polynomial
            itself.

    Returns:
        Tensor of the broadcast shape of `x` and the neuron axes. NaN inputs
        give NaN outputs; finite inputs of any size give finite outputs with
        `"linear"` and `"clip"` (the overshoot is taken in the units of `x`).
        The gradient (with respect to all three inputs) recomputes instead of
        storing the basis: a custom gradient on JAX and TensorFlow (on
        their CPUs C++ kernels of our own, on TensorFlow otherwise compiled
        by XLA), the formula compiled by TorchInductor on PyTorch-CPU, one
        in-place autograd node on PyTorch otherwise (`implementation` says
        which). All are tested against autodiff of the same formula.
    """
    check_extrapolation(extrapolation)
    given_bounds = bounds
    x = ops.convert_to_tensor(x)
    coefficients = ops.convert_to_tensor(coefficients)
    bounds = ops.convert_to_tensor(bounds)
    degree = _arguments.check_tables(coefficients, bounds, x, given_bounds)
    name = _implementation(x, coefficients, bounds, degree).name
    if name == "torch_eager":
        return _torch_polynomial.bernstein_polynomial(x, coefficients, bounds, extrapolation)
    if name == "torch_compiled":
        return _torch_compilation.call(
            _formula._evaluate,
            x,
            coefficients,
            bounds,
            tabulated=(_formula._evaluate_from_tables, _formula._polynomial_tables),
            extrapolation=extrapolation,
        )
    if name == "portable":
        return _formula._evaluate(x, coefficients, bounds, extrapolation)
    return _with_lean_gradient(extrapolation, name == "cpu_kernel")(x, coefficients, bounds)


@functools.lru_cache(maxsize=None)
def _with_lean_normalized_gradient(extrapolation):
    """`normalized_bernstein_polynomial`'s function, whose backward keeps only
    the unnormalized input: the normalization and `t` are recomputed from it,
    and the normalization's own sums join the polynomial's in one pass
    (`_formula._recomputed_gradients`). The gradients for `mean` and
    `inverse_deviation` reach `x` through autodiff of the batch statistics.
    """

    def forward(x, mean, inverse_deviation, scale, offset, coefficients, bounds):
        return _formula._evaluate_normalized(
            x, mean, inverse_deviation, scale, offset, coefficients, bounds, extrapolation
        )

    def backward(upstream, x, mean, inverse_deviation, scale, offset, coefficients, bounds):
        (x,) = _formula._recomputation_barrier((x,))
        grad_input, grad_scale, grad_offset, grad_c, grad_bounds, _ = (
            _formula._normalized_gradients(
                upstream, x, mean, inverse_deviation, scale, offset, coefficients, bounds,
                extrapolation,
            )
        )
        factor = inverse_deviation * scale
        return (
            grad_input * factor,
            -factor * grad_offset,
            scale * grad_scale / inverse_deviation,
            grad_scale,
            grad_offset,
            grad_c,
            grad_bounds,
        )

    return _with_gradient(forward, backward)


def normalized_bernstein_polynomial(
    x, mean, inverse_deviation, scale, offset, coefficients, bounds, extrapolation="linear"
):
    """`bernstein_polynomial` of a batch-normalized `x`, as one function.

    Computes `bernstein_polynomial((x - mean) * inverse_deviation * scale +
    offset, coefficients, bounds, extrapolation)`: `BernsteinDense`'s
    BatchNormalization -> Bernstein. Its backward keeps only `x` (not the
    normalized tensor and `t`) and takes the normalization's two per-neuron
    sums in the polynomial's pass; the gradients for `mean` and
    `inverse_deviation` flow on to `x` by autodiff where they are batch
    statistics of it.

    Args:
        x: Input tensor; normalized along its last axis.
        mean, inverse_deviation, scale, offset: Tensors of shape `(units,)`:
            the statistics (`1 / sqrt(variance + epsilon)`) and the
            normalization's learned scale and offset.
        coefficients: Tensor `(..., degree + 1)`, as in `bernstein_polynomial`.
        bounds: Tensor `(..., 2)`.
        extrapolation: As in `bernstein_polynomial`.

    Returns:
        Tensor of the shape of `x`.
    """
    check_extrapolation(extrapolation)
    tensors = [
        ops.convert_to_tensor(value)
        for value in (x, mean, inverse_deviation, scale, offset, coefficients, bounds)
    ]
    degree = _arguments.check_tables(tensors[5], tensors[6], tensors[0], bounds)
    _arguments.check_vectors(
        tensors[0],
        **dict(zip(("mean", "inverse_deviation", "scale", "offset"), tensors[1:5])),
    )
    name = _implementation(
        tensors[0], tensors[5], tensors[6], degree, "inference", True, tensors[3:5]
    ).name
    if name == "torch_compiled":
        return _torch_compilation.call(
            _formula._evaluate_normalized,
            *tensors,
            tabulated=(_formula._evaluate_from_tables, _formula._normalized_tables),
            extrapolation=extrapolation,
        )
    if name == "portable":
        return _formula._evaluate_normalized(*tensors, extrapolation)
    return _with_lean_normalized_gradient(extrapolation)(*tensors)


@functools.lru_cache(maxsize=None)
def _with_lean_batch_normalized_gradient(extrapolation, epsilon, kernel=False):
    """`batch_normalized_bernstein_polynomial` as one function: the batch
    statistics, the normalization and the polynomial in the forward pass;
    in the backward, the batch normalization's whole input gradient,
    `scale * inverse_deviation * (g - (sum g + normalized * sum g *
    normalized) / count)` with `g` the polynomial's input gradient, from the
    sums that `_formula._recomputed_gradients` takes in its one pass. It
    keeps `x` and the forward pass's per-neuron mean and variance:
    recomputing them cost the backward two more passes over `x` and, on
    TensorFlow, a stored tensor of squared deviations. With `kernel` both
    passes run as C++ kernels where they take the tensors (`_fast/cpu_kernels`).
    """

    def evaluate(x, scale, offset, coefficients, bounds):
        return _formula._evaluate_batch_normalized(
            x, scale, offset, coefficients, bounds, epsilon, extrapolation
        )

    def forward(x, scale, offset, coefficients, bounds):
        if not kernel:
            return evaluate(x, scale, offset, coefficients, bounds)
        return _cpu_kernels.batch_normalized_values(
            x, scale, offset, coefficients, bounds, epsilon, extrapolation, evaluate
        )

    def gradients(upstream, x, scale, offset, coefficients, bounds, mean, variance):
        (x,) = _formula._recomputation_barrier((x,))
        inverse_deviation = _formula._inverse_deviation(variance, epsilon)
        grad_input, grad_scale, grad_offset, grad_c, grad_bounds, normalized = (
            _formula._normalized_gradients(
                upstream, x, mean, inverse_deviation, scale, offset, coefficients, bounds,
                extrapolation,
            )
        )
        count = ops.cast(ops.size(x) // ops.shape(x)[-1], x.dtype)
        centered = grad_input - (grad_offset + normalized * grad_scale) / count
        return (
            (scale * inverse_deviation) * centered,
            grad_scale,
            grad_offset,
            grad_c,
            grad_bounds,
        )

    def from_kernel_sums(grad_x, sums, coefficients, bounds):
        grad_c, grad_bounds, (grad_offset, grad_scale) = _formula._gradients_from_sums(
            sums, coefficients, bounds, extrapolation
        )
        return grad_x, grad_scale, grad_offset, grad_c, grad_bounds

    def backward(upstream, x, scale, offset, coefficients, bounds, mean, variance):
        tensors = (upstream, x, scale, offset, coefficients, bounds, mean, variance)
        if not kernel:
            return gradients(*tensors)
        return _cpu_kernels.batch_normalized_gradient(
            *tensors, epsilon, extrapolation, gradients, from_kernel_sums
        )

    return _with_gradient(forward, backward, kernel)


def batch_normalized_bernstein_polynomial(
    x, scale, offset, coefficients, bounds, epsilon=1e-3, extrapolation="linear"
):
    """`normalized_bernstein_polynomial` with the batch statistics of `x`.

    What `BernsteinDense` computes in training: the mean and the (biased)
    variance over every axis of `x` but the last, then
    `normalized_bernstein_polynomial(x, mean, 1 / sqrt(variance + epsilon),
    scale, offset, coefficients, bounds, extrapolation)`. The statistics are
    part of one function with the polynomial: compiled by TorchInductor on
    PyTorch-CPU; on JAX and TensorFlow a custom gradient that keeps only `x`
    and takes the whole batch normalization's input gradient from the sums
    of the polynomial's backward pass (on TensorFlow, where Keras runs the
    rest of a CPU step without XLA, inside its XLA functions);
    `implementation(..., normalization="training", fused=True)` says which.

    Args:
        x: Input tensor; normalized along its last axis.
        scale, offset: Tensors of shape `(units,)`.
        coefficients, bounds, extrapolation: As in `bernstein_polynomial`.
        epsilon: Small float added to the variance.

    Returns:
        `(values, mean, variance)`: values of the shape of `x`; the batch
        mean and variance of shape `(units,)`, for the moving averages (on
        JAX and TensorFlow without a gradient: `values` carries the
        statistics' share of the input gradient).
    """
    check_extrapolation(extrapolation)
    epsilon = _arguments.check_nonnegative_number(epsilon, "epsilon")
    x = ops.convert_to_tensor(x)
    tensors = [ops.convert_to_tensor(v) for v in (scale, offset, coefficients, bounds)]
    degree = _arguments.check_tables(tensors[2], tensors[3], x, bounds)
    _arguments.check_vectors(x, scale=tensors[0], offset=tensors[1])
    name = _implementation(x, tensors[2], tensors[3], degree, "training", True, tensors[:2]).name
    if name == "torch_compiled":
        return _torch_compilation.call(
            _formula._evaluate_batch_normalized,
            x,
            *tensors,
            epsilon=float(epsilon),
            extrapolation=extrapolation,
        )
    if name in ("cpu_kernel", "xla_compiled") or (
        name == "recomputed_gradient" and _torch_compilation is None
    ):
        function = _with_lean_batch_normalized_gradient(
            extrapolation, float(epsilon), name == "cpu_kernel"
        )
        values, mean, variance = function(x, *tensors)
        return values, ops.stop_gradient(mean), ops.stop_gradient(variance)
    # Degree 0, or PyTorch uncompiled: the statistics by autodiff.
    mean, variance, inverse_deviation = _formula._batch_statistics(x, epsilon)
    values = normalized_bernstein_polynomial(x, mean, inverse_deviation, *tensors, extrapolation)
    return values, mean, variance


def _batch_normalized_layer(x, layer, coefficients, bounds, extrapolation, training):
    """`bernstein_polynomial(layer(x, training=training), coefficients,
    bounds, extrapolation)` for a plain `keras.layers.BatchNormalization`
    `layer` (`BernsteinDense._plain_normalization`): as one function where
    `implementation` says so (`fused`), on the layer's own variables, with
    the same statistics and moving-average update."""
    learning = bool(training) and layer.trainable
    normalization = "training" if learning else "inference"
    degree = _formula._degree_of(coefficients)
    choice = _implementation(x, coefficients, bounds, degree, normalization)
    if not choice.fused:
        return bernstein_polynomial(
            _batch_normalization(layer, x, training), coefficients, bounds, extrapolation
        )
    if choice.name == "torch_eager":
        return _torch_normalization.normalized_polynomial(
            layer, x, coefficients, bounds, extrapolation
        )
    if not learning:
        return normalized_bernstein_polynomial(
            x,
            layer.moving_mean,
            ops.rsqrt(layer.moving_variance + layer.epsilon),
            layer.gamma,
            layer.beta,
            coefficients,
            bounds,
            extrapolation,
        )
    values, mean, variance = batch_normalized_bernstein_polynomial(
        x, layer.gamma, layer.beta, coefficients, bounds, layer.epsilon, extrapolation
    )
    layer.moving_mean.assign(_formula._moving_average(layer.moving_mean, mean, layer.momentum))
    layer.moving_variance.assign(
        _formula._moving_average(layer.moving_variance, variance, layer.momentum)
    )
    return values


def _batch_normalization(layer, x, training):
    """`layer(x, training=training)` for a plain `keras.layers.BatchNormalization`
    (`BernsteinDense._plain_normalization`): PyTorch's fused kernel on the
    layer's variables where it takes `x` (`_fast/torch_normalization`)."""
    if _torch_normalization is not None and _torch_normalization.supports(x):
        return _torch_normalization.batch_normalization(layer, x, training)
    return layer(x, training=training)
