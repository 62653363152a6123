"""The polynomial of `ops.bernstein_polynomial`, its batch-normalized form
`ops.batch_normalized_bernstein_polynomial` and their backward passes on
CPU, as C++ kernels, for JAX and TensorFlow.

Without them XLA-CPU runs the backward's `n + 3` per-neuron sums as one
scalar loop (JAX), and TensorFlow, which Keras runs without XLA on CPU,
either runs the Horner loop op by op or calls XLA functions at about 0.2 ms
apiece (`tensorflow_compilation`). `bernstein_cpu.h` computes the same
values, input gradient and sums, with the same formulas in the same order,
holding a block of 16 neurons in vector registers while it walks down the
rows: `values`, `gradient_and_sums`, `batch_normalized_values` and
`batch_normalized_gradient` here, the same on both backends. Each backend
module (`jax_cpu_kernel`: XLA FFI handlers, `bernstein_cpu.cc`;
`tensorflow_cpu_kernel`: TensorFlow ops, `bernstein_tensorflow.cc`) says
where its kernels may run, how its front end is built and loaded, and how
a kernel is called and differentiated. Measured on the benchmark MLP
(degree 8, one CPU thread, docs/performance.md): JAX's training step went
from 1.63x to 1.17x of ReLU's with batch normalization and from 1.38x to
1.11-1.15x without.

The front end is compiled by the system's C++ compiler (`$CXX`, else `c++`,
`g++` or `clang++`) with `-O3 -march=native`, once per degree, into a cache
directory (`$KERAS_BERNSTEIN_CACHE`, else `~/.cache/keras_bernstein`), keyed
by the sources, the compiler, the flags, the framework's version and the
processor; a build takes 2-7 seconds. Where there is no compiler, the build
fails, the input is not float32, the tables are broadcast along other than
their leading (shared) axes, or the degree is above `MAX_DEGREE`, the
portable code runs instead, with the same values.
`KERAS_BERNSTEIN_CPU_KERNEL=0` turns the kernels off. They have no
derivatives of their own: differentiating through them (a gradient penalty)
differentiates the portable code they stand for.
"""

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

import keras
from keras import ops

DISABLE_VARIABLE = "KERAS_BERNSTEIN_CPU_KERNEL"
HEADER = pathlib.Path(__file__).with_name("bernstein_cpu.h")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
# The kernel keeps `3 n + 5` vectors live per block of neurons; past this
# degree they spill from the registers, and the build time grows.
MAX_DEGREE = 32
# The kernels of each front end: for each extrapolation mode (an attribute
# or part of the name, as the front end has it), these four.
KINDS = ("Values", "Gradient", "BatchNormalizedValues", "BatchNormalizedGradient")

_lock = threading.Lock()
# degree -> the backend's loaded kernels (`load`), or None where the build
# failed. The kernels read every array as row-major memory: neuron axes
# flat, tables degree axis first.
_libraries = {}
_warned = False


def _backend():
    """The backend's kernel module, or None where it has none."""
    backend = keras.backend.backend()
    if backend == "jax":
        from keras_bernstein._fast import jax_cpu_kernel

        return jax_cpu_kernel
    if backend == "tensorflow":
        from keras_bernstein._fast import tensorflow_cpu_kernel

        return tensorflow_cpu_kernel
    return None


def enabled():
    """Whether the kernels may run here: JAX or TensorFlow on CPU (not
    inside an XLA computation of TensorFlow's), and not turned off."""
    if os.environ.get(DISABLE_VARIABLE, "1").strip().lower() in ("0", "false", "no"):
        return False
    backend = _backend()
    return backend is not None and backend.enabled()


def _is_float32(tensor):
    return keras.backend.standardize_dtype(tensor.dtype) == "float32"


def _neuron_shape(x, coefficients, bounds):
    """The neuron shape the kernels see: that of the `coefficients` and
    `bounds` tables without its leading 1s (axes the neurons share, which the
    kernels treat as batch axes), where it is `x`'s trailing shape; else
    None."""
    shape = tuple(bounds.shape[:-1])
    if tuple(coefficients.shape[:-1]) != shape or None in shape:
        return None
    while shape and shape[0] == 1:
        shape = shape[1:]
    if len(shape) > len(x.shape) or tuple(x.shape[len(x.shape) - len(shape) :]) != shape:
        return None
    return shape


def _applies(x, coefficients, bounds, *others):
    """Whether the kernels take these tensors: float32, the `coefficients`
    and `bounds` tables of `x`'s trailing (neuron) shape (`_neuron_shape`),
    `others` of `x`'s shape, a degree from 1 to `MAX_DEGREE`, and the kernels
    on."""
    degree = coefficients.shape[-1] - 1
    return (
        enabled()
        and 1 <= degree <= MAX_DEGREE
        and _neuron_shape(x, coefficients, bounds) is not None
        and all(tuple(other.shape) == tuple(x.shape) for other in others)
        and all(_is_float32(tensor) for tensor in (x, coefficients, bounds, *others))
    )


def _target_where(applies, coefficients, extrapolation, kind):
    """`_target` for the degree of `coefficients` where `applies`, else None."""
    if not applies:
        return None
    return _target(coefficients.shape[-1] - 1, extrapolation, kind)


def polynomial_applies(x, coefficients, bounds):
    """Whether `values` and `gradient_and_sums` run the kernels (building
    them on first use)."""
    return _applies(x, coefficients, bounds) and _library_of(coefficients) is not None


def _flat_tables(coefficients, bounds):
    """The forward pass's tables as the kernels read them: bounds `(units,
    2)`, Horner columns `(n + 1, units)`, the slope below `l` and the change
    of slope at `u` `(units,)`."""
    from keras_bernstein import ops as bernstein_ops

    _, _, _, columns, slope_lower, bend = bernstein_ops._polynomial_tables(
        coefficients, bounds
    )
    return (
        ops.reshape(bounds, (-1, 2)),
        ops.reshape(columns, (columns.shape[0], -1)),
        ops.reshape(slope_lower, (-1,)),
        ops.reshape(bend, (-1,)),
    )


def _slope_table(coefficients):
    """`ops._slope_in_t`'s Horner columns, `n (c_{k+1} - c_k) C(n - 1, k)`,
    `(n, units)`."""
    from keras_bernstein import ops as bernstein_ops

    columns = bernstein_ops._scaled_columns(
        bernstein_ops.derivative_coefficients(coefficients)
    )
    return ops.reshape(ops.stack(columns, axis=0), (len(columns), -1))


def _sum_count(degree, extrapolation, normalized=False):
    """The sums a gradient kernel returns: the polynomial's, then with
    `normalized` the normalization's two (`SumCount` in `bernstein_cpu.h`)."""
    from keras_bernstein import ops as bernstein_ops

    return bernstein_ops._polynomial_sum_count(degree, extrapolation) + (2 if normalized else 0)


def values(x, coefficients, bounds, extrapolation, reference):
    """`reference(x, coefficients, bounds)`, `ops._evaluate`, computed by
    the kernel where it applies (`_applies`)."""
    applies = _applies(x, coefficients, bounds)
    target = _target_where(applies, coefficients, extrapolation, "Values")
    if target is None:
        return reference(x, coefficients, bounds)
    backend = _backend()

    def kernel(x, coefficients, bounds):
        tables = _flat_tables(coefficients, bounds)
        return backend.call(target, (x, *tables), [x.shape])[0]

    return backend.differentiable(kernel, reference)(x, coefficients, bounds)


def gradient_and_sums(upstream, x, coefficients, bounds, extrapolation, reference):
    """`reference(upstream, x, coefficients, bounds)`: the input gradient and
    the list of per-neuron sums of `ops._gradient_and_sums` for the
    unnormalized polynomial, computed by the kernel where it applies
    (`_applies`)."""
    applies = _applies(x, coefficients, bounds, upstream)
    target = _target_where(applies, coefficients, extrapolation, "Gradient")
    if target is None:
        return reference(upstream, x, coefficients, bounds)
    backend = _backend()
    neuron_shape = tuple(bounds.shape[:-1])
    sum_count = _sum_count(coefficients.shape[-1] - 1, extrapolation)

    def kernel(upstream, x, coefficients, bounds):
        grad_x, sums = backend.call(
            target,
            (x, upstream, ops.reshape(bounds, (-1, 2)), _slope_table(coefficients)),
            [x.shape, (sum_count, math.prod(neuron_shape))],
        )
        return grad_x, [ops.reshape(total, neuron_shape) for total in ops.unstack(sums)]

    return backend.differentiable(kernel, reference)(upstream, x, coefficients, bounds)


def batch_normalized_applies(x, coefficients, bounds, vectors=()):
    """Whether `batch_normalized_values` and `batch_normalized_gradient` run
    the kernels (building them on first use): `x` float32 and normalized
    over all but its last axis, tables of its last axis's neurons (after
    `_neuron_shape`), float32 `vectors` of shape `(units,)` (scale, offset
    and, for the gradient, the statistics)."""
    units = x.shape[-1] if len(x.shape) >= 2 else None
    applies = (
        units is not None
        and _applies(x, coefficients, bounds)
        and _neuron_shape(x, coefficients, bounds) == (units,)
        and all(tuple(vector.shape) == (units,) and _is_float32(vector) for vector in vectors)
    )
    return applies and _library_of(coefficients) is not None


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
    backend = _backend()

    def kernel(x, scale, offset, coefficients, bounds):
        bounds, columns, slope_lower, bend = _flat_tables(coefficients, bounds)
        values, mean, variance = backend.call(
            target,
            (x, scale, offset, bounds, columns, slope_lower, bend),
            [x.shape, scale.shape, scale.shape],
            epsilon=epsilon,
        )
        return values, mean, variance

    return backend.differentiable(kernel, reference)(x, scale, offset, coefficients, bounds)


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
        and _is_float32(upstream)
        and batch_normalized_applies(x, coefficients, bounds, (scale, offset, mean, variance))
    )
    target = _target_where(applies, coefficients, extrapolation, "BatchNormalizedGradient")
    if target is None:
        return reference(*tensors)
    backend = _backend()
    sum_count = _sum_count(coefficients.shape[-1] - 1, extrapolation, normalized=True)

    def kernel(upstream, x, scale, offset, coefficients, bounds, mean, variance):
        grad_x, sums = backend.call(
            target,
            (
                x, upstream, mean, variance, scale, offset, ops.reshape(bounds, (-1, 2)),
                _slope_table(coefficients),
            ),
            [x.shape, (sum_count, x.shape[-1])],
            epsilon=epsilon,
        )
        # The polynomial's sums in the tables' neuron shape, the normalization's
        # two in the scale's.
        sums = ops.unstack(sums)
        sums = [ops.reshape(total, bounds.shape[:-1]) for total in sums[:-2]] + sums[-2:]
        return from_sums(grad_x, sums, coefficients, bounds)

    return backend.differentiable(kernel, reference)(*tensors)


def _target(degree, extrapolation, kind):
    """The backend's kernel of `kind` (one of `KINDS`) for `degree` and
    `extrapolation` (`_library`); None where the build failed."""
    library = _library(degree)
    return None if library is None else _backend().target(library, degree, extrapolation, kind)


def _library_of(coefficients):
    return _library(coefficients.shape[-1] - 1)


def _library(degree):
    """The backend's kernels of `degree`, built and loaded on first use; None
    where that failed."""
    with _lock:
        if degree not in _libraries:
            _libraries[degree] = _load(degree)
    return _libraries[degree]


def _load(degree):
    global _warned
    backend = _backend()
    try:
        return backend.load(_build(degree), degree)
    except Exception as error:  # No compiler, an old framework, a read-only home, ...
        if not _warned:
            _warned = True
            warnings.warn(
                "keras_bernstein: the CPU kernels of the Bernstein activation could "
                f"not be built, so {backend.FALLBACK} compute it (slower training "
                f"steps on CPU). Set {DISABLE_VARIABLE}=0 to skip the build. "
                f"The error was: {type(error).__name__}: {error}",
                stacklevel=5,
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
    """`(compiler, arguments before the source, after it, key)`: what every
    degree's build uses, and a key of all that its library depends on but
    the degree (the sources, the compiler and its version, the flags, the
    framework, the processor); found once per process."""
    compiler = _compiler()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    backend = _backend()
    before, after, framework = backend.build_arguments()
    parts = (
        HEADER.read_text(),
        backend.SOURCE.read_text(),
        compiler,
        version,
        " ".join((*FLAGS, *before, *after)),
        framework,
        platform.machine(),
        _processor(),
    )
    return compiler, before, after, "\0".join(parts)


def _build(degree):
    """The backend's kernel library for `degree`, compiled into the cache
    unless there."""
    compiler, before, after, toolchain_key = _toolchain()
    key = hashlib.sha256(f"{toolchain_key}\0{degree}".encode()).hexdigest()[:24]
    cache = pathlib.Path(
        os.environ.get("KERAS_BERNSTEIN_CACHE")
        or pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
        / "keras_bernstein"
    )
    source = _backend().SOURCE
    library = cache / f"{source.stem}_{degree}_{key}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: processes that build at the
    # same time never load a half-written library.
    with tempfile.TemporaryDirectory(dir=cache) as building:
        partial = pathlib.Path(building) / library.name
        result = subprocess.run(
            [compiler, *FLAGS, f"-DDEGREE={degree}", *before, str(source), *after]
            + ["-o", str(partial)],
            capture_output=True,
            text=True,
        )
        if result.returncode:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(partial, library)
    return library
