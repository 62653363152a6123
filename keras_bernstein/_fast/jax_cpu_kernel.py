"""The JAX polynomial of `ops.bernstein_polynomial`, its batch-normalized
form `ops.batch_normalized_bernstein_polynomial` and their backward passes
on CPU, as C++ kernels.

XLA-CPU runs the backward's `n + 3` per-neuron sums as one scalar loop, and
on a machine whose matrix products are fast that loop is most of what a
Bernstein layer costs beyond a ReLU layer (docs/performance.md).
`bernstein_cpu.cc` computes the same values, input gradient and sums, with
the same formulas in the same order, holding a block of 16 neurons in
vector registers while it walks down the rows, and is called from XLA as FFI
custom calls (`values`, `gradient_and_sums`, `batch_normalized_values`,
`batch_normalized_gradient`). Measured on the benchmark MLP (degree 8, one
CPU thread, kernels on and off in one process): the training step went from
1.63x to 1.17x of ReLU's with batch normalization (`BernsteinDense` then
runs the batch-normalized kernels in training) and from 1.38x to 1.11-1.15x
without; predict from 1.15x to 0.83x.

The file is compiled by the system's C++ compiler (`$CXX`, else `c++`,
`g++` or `clang++`) with `-O3 -march=native`, once per degree, into a cache
directory (`$KERAS_BERNSTEIN_CACHE`, else `~/.cache/keras_bernstein`), keyed
by the source, the compiler, the flags, jax's version and the processor;
a build takes about two seconds. Where there is no compiler, the build
fails, the input is not float32, the tables are broadcast along other than
their leading (shared) axes, or the degree is above `MAX_DEGREE`, the XLA
code runs instead, with the same values. `KERAS_BERNSTEIN_CPU_KERNEL=0`
turns the kernels off. They have no
derivatives of their own: differentiating through them (a gradient penalty)
differentiates the XLA code they stand for (`_differentiable`).
"""

import ctypes
import functools
import hashlib
import math
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np

_DISABLE_VARIABLE = "KERAS_BERNSTEIN_CPU_KERNEL"
_SOURCE = pathlib.Path(__file__).with_name("bernstein_cpu.cc")
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
# The handlers' names in `bernstein_cpu.cc`: a mode, then a kind.
_MODES = {"polynomial": "Polynomial", "clip": "Clip", "linear": "Linear"}
_KINDS = ("Values", "Gradient", "BatchNormalizedValues", "BatchNormalizedGradient")

# The kernel keeps `3 n + 5` vectors live per block of neurons; past this
# degree they spill from the registers, and the build time grows.
MAX_DEGREE = 32

_lock = threading.Lock()
# degree -> the registered FFI target of each handler in `bernstein_cpu.cc`
# (by its name there), or None where the build failed. The handlers read every
# array as row-major memory: neuron axes flat (a table's leading axes of size 1
# change nothing), tables degree axis first.
_targets = {}
_warned = False


def enabled():
    """Whether the kernel may run: JAX on CPU, with FFI calls (jax 0.5 and
    later), and not turned off."""
    if os.environ.get(_DISABLE_VARIABLE, "1").strip().lower() in ("0", "false", "no"):
        return False
    return jax.default_backend() == "cpu" and hasattr(jax, "ffi")


def _neuron_shape(x, coefficients, bounds):
    """The neuron shape the kernels see: that of the `coefficients` and
    `bounds` tables without its leading 1s (axes the neurons share, which the
    kernels treat as batch axes), where it is `x`'s trailing shape; else
    None."""
    shape = tuple(bounds.shape[:-1])
    if tuple(coefficients.shape[:-1]) != shape:
        return None
    while shape and shape[0] == 1:
        shape = shape[1:]
    if len(shape) > len(x.shape) or tuple(x.shape[len(x.shape) - len(shape) :]) != shape:
        return None
    return shape


def _applies(x, coefficients, bounds, *others):
    """Whether the kernel takes these tensors: float32, the `coefficients`
    and `bounds` tables of `x`'s trailing (neuron) shape (`_neuron_shape`),
    `others` of `x`'s shape, a degree from 1 to `MAX_DEGREE`, and the kernel
    on."""
    degree = coefficients.shape[-1] - 1
    return (
        enabled()
        and 1 <= degree <= MAX_DEGREE
        and _neuron_shape(x, coefficients, bounds) is not None
        and all(tuple(other.shape) == tuple(x.shape) for other in others)
        and all(
            tensor.dtype == jnp.float32 for tensor in (x, coefficients, bounds, *others)
        )
    )


def _differentiable(kernel, reference):
    """`kernel` with the derivatives of `reference`, the same function in
    XLA (a `jax.custom_jvp`): the kernels have no derivative of their own."""
    kernel = jax.custom_jvp(kernel)

    @kernel.defjvp
    def _(primals, tangents):
        _, changes = jax.jvp(reference, primals, tangents)
        return kernel(*primals), changes

    return kernel


def _target_where(applies, coefficients, extrapolation, kind):
    """`_target` for the degree of `coefficients` where `applies`, else None."""
    if not applies:
        return None
    return _target(coefficients.shape[-1] - 1, extrapolation, kind)


def values(x, coefficients, bounds, extrapolation, reference):
    """`reference(x, coefficients, bounds)`, `ops._evaluate`, computed by
    the kernel where it applies (`_applies`)."""
    applies = _applies(x, coefficients, bounds)
    target = _target_where(applies, coefficients, extrapolation, "Values")
    if target is None:
        return reference(x, coefficients, bounds)

    def kernel(x, coefficients, bounds):
        from keras_bernstein import ops as bernstein_ops

        _, _, _, columns, slope_lower, bend = bernstein_ops._polynomial_tables(
            coefficients, bounds
        )
        return jax.ffi.ffi_call(
            target, jax.ShapeDtypeStruct(x.shape, jnp.float32), vmap_method="sequential"
        )(x, bounds, columns, slope_lower, bend)

    return _differentiable(kernel, reference)(x, coefficients, bounds)


def gradient_and_sums(upstream, x, coefficients, bounds, extrapolation, reference):
    """`reference(upstream, x, coefficients, bounds)`: the input gradient and
    the list of per-neuron sums of `ops._gradient_and_sums` for the
    unnormalized polynomial, computed by the kernel where it applies
    (`_applies`)."""
    applies = _applies(x, coefficients, bounds, upstream)
    target = _target_where(applies, coefficients, extrapolation, "Gradient")
    if target is None:
        return reference(upstream, x, coefficients, bounds)
    degree = coefficients.shape[-1] - 1
    neuron_shape = tuple(bounds.shape[:-1])
    sum_count = degree + 1 if extrapolation == "polynomial" else degree + 3

    def kernel(upstream, x, coefficients, bounds):
        grad_x, sums = jax.ffi.ffi_call(
            target,
            (
                jax.ShapeDtypeStruct(x.shape, jnp.float32),
                jax.ShapeDtypeStruct((sum_count, math.prod(neuron_shape)), jnp.float32),
            ),
            vmap_method="sequential",
        )(x, upstream, bounds, _slope_table(coefficients))
        return grad_x, [jnp.reshape(total, neuron_shape) for total in sums]

    return _differentiable(kernel, reference)(upstream, x, coefficients, bounds)


def batch_normalized_applies(x, coefficients, bounds, vectors=()):
    """Whether `batch_normalized_values` and `batch_normalized_gradient` run
    the kernels (building them on first use): `x` float32 and normalized
    over all but its last axis, tables of its last axis's neurons (after
    `_neuron_shape`), float32 `vectors` of shape `(units,)` (scale, offset
    and, for the gradient, the statistics)."""
    units = x.shape[-1] if len(x.shape) >= 2 else None
    return (
        units is not None
        and _applies(x, coefficients, bounds)
        and _neuron_shape(x, coefficients, bounds) == (units,)
        and all(
            tuple(vector.shape) == (units,) and vector.dtype == jnp.float32
            for vector in vectors
        )
        and _target(coefficients.shape[-1] - 1, "linear", "Values") is not None
    )


def batch_normalized_values(
    x, scale, offset, coefficients, bounds, epsilon, extrapolation, reference
):
    """`reference(x, scale, offset, coefficients, bounds)`: the values of
    `ops._evaluate_batch_normalized` with the batch mean and variance,
    computed by the kernel where it applies."""
    applies = batch_normalized_applies(x, coefficients, bounds, (scale, offset))
    target = _target_where(applies, coefficients, extrapolation, "BatchNormalizedValues")
    if target is None:
        return reference(x, scale, offset, coefficients, bounds)

    def kernel(x, scale, offset, coefficients, bounds):
        from keras_bernstein import ops as bernstein_ops

        _, _, _, columns, slope_lower, bend = bernstein_ops._polynomial_tables(
            coefficients, bounds
        )
        statistic = jax.ShapeDtypeStruct(scale.shape, jnp.float32)
        values, mean, variance = jax.ffi.ffi_call(
            target,
            (jax.ShapeDtypeStruct(x.shape, jnp.float32), statistic, statistic),
            vmap_method="sequential",
        )(x, scale, offset, bounds, columns, slope_lower, bend, epsilon=np.float32(epsilon))
        return values, mean, variance

    return _differentiable(kernel, reference)(x, scale, offset, coefficients, bounds)


def batch_normalized_gradient(
    upstream, x, scale, offset, coefficients, bounds, mean, variance, epsilon, extrapolation,
    reference, from_sums,
):
    """`reference(upstream, x, scale, offset, coefficients, bounds, mean,
    variance)`, the gradients of `ops._with_lean_batch_normalized_gradient`;
    where the kernel applies, `from_sums(grad_x, sums, coefficients, bounds)`
    of its input gradient and per-neuron sums."""
    tensors = (upstream, x, scale, offset, coefficients, bounds, mean, variance)
    applies = (
        tuple(upstream.shape) == tuple(x.shape)
        and upstream.dtype == jnp.float32
        and batch_normalized_applies(x, coefficients, bounds, (scale, offset, mean, variance))
    )
    target = _target_where(applies, coefficients, extrapolation, "BatchNormalizedGradient")
    if target is None:
        return reference(*tensors)
    degree = coefficients.shape[-1] - 1
    sum_count = degree + (3 if extrapolation == "polynomial" else 5)

    def kernel(upstream, x, scale, offset, coefficients, bounds, mean, variance):
        grad_x, sums = jax.ffi.ffi_call(
            target,
            (
                jax.ShapeDtypeStruct(x.shape, jnp.float32),
                jax.ShapeDtypeStruct((sum_count, x.shape[-1]), jnp.float32),
            ),
            vmap_method="sequential",
        )(
            x, upstream, mean, variance, scale, offset, bounds, _slope_table(coefficients),
            epsilon=np.float32(epsilon),
        )
        # The polynomial's sums in the tables' neuron shape, the normalization's
        # two in the scale's.
        sums = [jnp.reshape(total, bounds.shape[:-1]) for total in sums[:-2]] + list(sums[-2:])
        return from_sums(grad_x, sums, coefficients, bounds)

    return _differentiable(kernel, reference)(*tensors)


def _slope_table(coefficients):
    """`ops._slope_in_t`'s Horner columns, `n (c_{k+1} - c_k) C(n - 1, k)`,
    degree axis first."""
    from keras_bernstein import ops as bernstein_ops

    differences = bernstein_ops.derivative_coefficients(coefficients)
    return jnp.stack(bernstein_ops._scaled_columns(differences), axis=0)


def _target(degree, extrapolation, kind):
    """The registered FFI target of `kind` (one of `_KINDS`) for `degree`
    and `extrapolation`, building and loading the kernel library for
    `degree` on first use; None where that failed."""
    with _lock:
        if degree not in _targets:
            _targets[degree] = _register(degree)
    names = _targets[degree]
    return None if names is None else names[_MODES[extrapolation] + kind]


def _register(degree):
    global _warned
    try:
        library = ctypes.cdll.LoadLibrary(str(_build(degree)))
        names = {}
        for mode in _MODES.values():
            for kind in _KINDS:
                symbol = mode + kind
                name = f"keras_bernstein_{symbol}_{degree}"
                jax.ffi.register_ffi_target(
                    name, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu"
                )
                names[symbol] = name
        return names
    except Exception as error:  # No compiler, an old jaxlib, a read-only home, ...
        if not _warned:
            _warned = True
            warnings.warn(
                "keras_bernstein: the CPU kernel for the Bernstein activation's "
                "gradient could not be built, so XLA computes it (about 1.2x slower "
                f"training steps on CPU). Set {_DISABLE_VARIABLE}=0 to skip the build. "
                f"The error was: {type(error).__name__}: {error}",
                stacklevel=4,
            )
        return None


def _compiler():
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    raise RuntimeError("no C++ compiler found (set CXX)")


def _processor():
    """What `-march=native` depends on: the processor's model and flags."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def _toolchain():
    """`(compiler, include directory, key)`: what every degree's build uses,
    and a key of all that its library depends on but the degree (the source,
    the compiler and its version, the flags, jax, the processor); found once
    per process."""
    compiler = _compiler()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    include = jax.ffi.include_dir()
    parts = (
        _SOURCE.read_text(),
        compiler,
        version,
        " ".join(_FLAGS),
        jax.__version__,
        include,
        platform.machine(),
        _processor(),
    )
    return compiler, include, "\0".join(parts)


def _build(degree):
    """The kernel library for `degree`, compiled into the cache unless there."""
    compiler, include, toolchain_key = _toolchain()
    key = hashlib.sha256(f"{toolchain_key}\0{degree}".encode()).hexdigest()[:24]
    cache = pathlib.Path(
        os.environ.get("KERAS_BERNSTEIN_CACHE")
        or pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
        / "keras_bernstein"
    )
    library = cache / f"bernstein_cpu_{degree}_{key}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: processes that build at the
    # same time never load a half-written library.
    with tempfile.TemporaryDirectory(dir=cache) as building:
        partial = pathlib.Path(building) / library.name
        result = subprocess.run(
            [compiler, *_FLAGS, f"-DDEGREE={degree}", f"-I{include}", str(_SOURCE)]
            + ["-o", str(partial)],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(partial, library)
    return library
