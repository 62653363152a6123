"""The polynomial of `ops.bernstein_polynomial`, its batch-normalized form
`ops.batch_normalized_bernstein_polynomial` and their backward passes on
CPU, as C++ kernels, for JAX and TensorFlow.

Without them XLA-CPU runs the backward's `n + 3` per-neuron sums as one
scalar loop (JAX), and TensorFlow, which Keras runs without XLA on CPU,
either runs the Horner loop op by op or calls XLA functions, each call
costly (`tensorflow_compilation`). `bernstein_cpu.h` computes the same
values, input gradient and sums, with the same formulas in the same order,
holding a block of 16 neurons in vector registers while it walks down the
rows: `values`, `gradient_and_sums`, `batch_normalized_values` and
`batch_normalized_gradient` here, the same on both backends. Each backend
module (`jax_cpu_kernel`: XLA FFI handlers, `bernstein_cpu.cc`;
`tensorflow_cpu_kernel`: TensorFlow ops, `bernstein_tensorflow.cc`) says
where its kernels may run, how its front end is built and loaded, and how
a kernel is called and differentiated. The extrapolation mode reaches the
kernels as its index in `_formula.EXTRAPOLATION_MODES`: compiled into the
library as the values of the C++ `Mode` enum (`_MODE_DEFINES`), passed to
each call as the integer attribute `mode` (`mode_index`).

The front end is compiled by the system's C++ compiler (`$CXX`, else `c++`,
`g++` or `clang++`) with `-O3 -march=native`, once per degree, into a cache
folder (`$KERAS_BERNSTEIN_CACHE`, else `$XDG_CACHE_HOME/keras_bernstein`,
else `~/.cache/keras_bernstein`), keyed by the sources, the compiler, the
flags, the framework's version and the processor; a build takes seconds.
The folder must be the user's alone (`_private_folder`; else a private
temporary one serves the process), and a library is loaded only
from a private copy of bytes whose SHA-256 matches the digest recorded when
it was built (`_cached`, `_load_verified`): a planted, damaged or
mismatched entry is built again, never loaded (docs/native-code.md). Where
there is no compiler, the build fails, the input is not float32, the tables
are broadcast along other than their leading (shared) axes, or the degree
is above `MAX_DEGREE`, the portable code runs instead, with the same values (`refusal` says why).
`KERAS_BERNSTEIN_CPU_KERNEL=0` turns the kernels off. They have no
derivatives of their own: differentiating through them (a gradient penalty)
differentiates the portable code they stand for. An exported model
(`model.export`) holds the portable code instead of them, so that it loads
where this library is not (`tests/test_export.py`).
"""

import atexit
import contextlib
import errno
import functools
import hashlib
import math
import os
import pathlib
import platform
import shutil
import stat
import subprocess
import tempfile
import threading
import warnings

import keras
from keras import ops

from keras_bernstein import _formula
from keras_bernstein._formula import _degree_of

try:
    import fcntl
except ImportError:  # no flock: builds still land whole, by renames
    fcntl = None

DISABLE_VARIABLE = "KERAS_BERNSTEIN_CPU_KERNEL"
CACHE_VARIABLE = "KERAS_BERNSTEIN_CACHE"
HEADER = pathlib.Path(__file__).with_name("bernstein_cpu.h")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
# The kernel keeps `3 n + 5` vectors live per block of neurons; past this
# degree they spill from the registers, and the build time grows.
MAX_DEGREE = 32
# The C++ `Mode` enum's values (`bernstein_cpu.h`): each mode's index in
# `_formula.EXTRAPOLATION_MODES`, which the kernels take as `mode`.
_MODE_DEFINES = tuple(
    f"-DKERAS_BERNSTEIN_MODE_{mode.upper()}={index}"
    for index, mode in enumerate(_formula.EXTRAPOLATION_MODES)
) + (f"-DKERAS_BERNSTEIN_MODES={len(_formula.EXTRAPOLATION_MODES)}",)

_lock = threading.Lock()
# degree -> the backend's loaded kernels (`load`), or None where the build
# failed. The kernels read every array as row-major memory: neuron axes
# flat, tables degree axis first.
_libraries = {}
_warned = False
# (backend module, degree, SHA-256) -> what its `load` returned.
_loaded = {}
# Cache folders refused (warned about once), and the per-process private
# folder used instead.
_refused_folders = set()
_temporary_folder = None
# Part of every entry's key: entries of an earlier layout are never read.
_CACHE_LAYOUT = "layout 2: library and sha256sum digest"
_DIGEST_SUFFIX = ".sha256"
# The libraries are well under 1 MiB; a larger entry is not read.
_MAX_LIBRARY_BYTES = 64 << 20
_BUILD_SECONDS = 600
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


@functools.cache
def _backend():
    """The backend's kernel module, or None where it has none or it cannot
    be imported (a framework release without the APIs it uses: one warning)."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            from keras_bernstein._fast import jax_cpu_kernel

            return jax_cpu_kernel
        if backend == "tensorflow":
            from keras_bernstein._fast import tensorflow_cpu_kernel

            return tensorflow_cpu_kernel
    except Exception as error:
        warnings.warn(
            "keras_bernstein: the CPU kernels of the Bernstein activation are off: "
            f"their {backend} front end could not be imported ({type(error).__name__}: "
            f"{error}), so the portable code computes it (slower training steps on CPU).",
            stacklevel=2,
        )
    return None


def mode_index(extrapolation):
    """The integer the kernels take for the mode `extrapolation`."""
    return _formula.EXTRAPOLATION_MODES.index(extrapolation)


def enabled():
    """Whether the kernels may run here: JAX or TensorFlow on CPU (not
    inside an XLA computation of TensorFlow's), and not turned off."""
    return _disabled() is None


def _disabled():
    """Why the kernels may not run here, or None."""
    if os.environ.get(DISABLE_VARIABLE, "1").strip().lower() in ("0", "false", "no"):
        return f"the C++ kernels are turned off ({DISABLE_VARIABLE}=0)"
    backend = _backend()
    if backend is None:
        return "the C++ kernels' front end could not be imported"
    if not backend.enabled():
        return backend.DISABLED
    return None


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


def _tensors_refusal(x, coefficients, bounds, others=(), vectors=None):
    """Why the kernels do not take these tensors, or None where they do:
    the kernels on (`enabled`), float32, the `coefficients` and `bounds`
    tables of `x`'s trailing (neuron) shape (`_neuron_shape`), `others` of
    `x`'s shape, a degree from 1 to `MAX_DEGREE`; with `vectors` (the
    batch normalization's, a list, maybe empty) `x` normalized over all but
    its last axis, tables of its last axis's neurons, float32 `vectors` of
    shape `(units,)`."""
    disabled = _disabled()
    if disabled is not None:
        return disabled
    degree = _degree_of(coefficients)
    if not 1 <= degree <= MAX_DEGREE:
        return f"the C++ kernels take degrees 1 to {MAX_DEGREE}, not {degree}"
    neuron_shape = _neuron_shape(x, coefficients, bounds)
    if neuron_shape is None:
        return "the tables are broadcast along other than their leading axes"
    if any(tuple(other.shape) != tuple(x.shape) for other in others):
        return "a batch-shaped tensor is broadcast"
    if not all(_is_float32(tensor) for tensor in (x, coefficients, bounds, *others)):
        return "not float32"
    if vectors is not None:
        units = x.shape[-1] if len(x.shape) >= 2 else None
        if units is None or neuron_shape != (units,):
            return "the batch normalization's kernels take (rows, units) tensors"
        if not all(tuple(v.shape) == (units,) and _is_float32(v) for v in vectors):
            return "the normalization's vectors are not float32 (units,)"
    return None


def refusal(x, coefficients, bounds, vectors=(), normalized=False):
    """Why `values` and `gradient_and_sums` (with `normalized`,
    `batch_normalized_values` and `batch_normalized_gradient`, of the
    normalization's `vectors`) do not run the kernels for these tensors,
    or None where they do (building them on first use)."""
    problem = _tensors_refusal(x, coefficients, bounds, vectors=vectors if normalized else None)
    if problem is None and _library_of(coefficients) is None:
        return "the C++ kernels could not be built"
    return problem


def _target_where(problem, coefficients, extrapolation, kind):
    """`_target` for the degree of `coefficients` where there is no
    `problem`, else None."""
    if problem is not None:
        return None
    return _target(_degree_of(coefficients), extrapolation, kind)


def _flat_tables(coefficients, bounds):
    """The forward pass's tables as the kernels read them: bounds `(units,
    2)`, Horner columns `(n + 1, units)`, the slope below `l` and the change
    of slope at `u` `(units,)`."""
    _, _, _, columns, slope_lower, bend = _formula._polynomial_tables(
        coefficients, bounds
    )
    return (
        ops.reshape(bounds, (-1, 2)),
        ops.reshape(columns, (columns.shape[0], -1)),
        ops.reshape(slope_lower, (-1,)),
        ops.reshape(bend, (-1,)),
    )


def _slope_table(coefficients):
    """`_formula._slope_in_t`'s Horner columns, `n (c_{k+1} - c_k) C(n - 1, k)`,
    `(n, units)`."""
    columns = _formula._scaled_columns(_formula.derivative_coefficients(coefficients))
    return ops.reshape(ops.stack(columns, axis=0), (len(columns), -1))


def _sum_count(degree, extrapolation, normalized=False):
    """The sums a gradient kernel returns: the polynomial's, then with
    `normalized` the normalization's two (`SumCount` in `bernstein_cpu.h`)."""
    return _formula._polynomial_sum_count(degree, extrapolation) + (2 if normalized else 0)


def values(x, coefficients, bounds, extrapolation, reference):
    """`reference(x, coefficients, bounds)`, `_formula._evaluate`, computed
    by the kernel where it takes the tensors (`_tensors_refusal`)."""
    problem = _tensors_refusal(x, coefficients, bounds)
    target = _target_where(problem, coefficients, extrapolation, "Values")
    if target is None:
        return reference(x, coefficients, bounds)
    backend = _backend()

    def kernel(x, coefficients, bounds):
        tables = _flat_tables(coefficients, bounds)
        return backend.call(target, (x, *tables), [x.shape])[0]

    return backend.differentiable(kernel, reference)(x, coefficients, bounds)


def gradient_and_sums(upstream, x, coefficients, bounds, extrapolation, reference):
    """`reference(upstream, x, coefficients, bounds)`: the input gradient and
    the list of per-neuron sums of `_formula._gradient_and_sums` for the
    unnormalized polynomial, computed by the kernel where it applies
    (`_tensors_refusal`)."""
    problem = _tensors_refusal(x, coefficients, bounds, (upstream,))
    target = _target_where(problem, coefficients, extrapolation, "Gradient")
    if target is None:
        return reference(upstream, x, coefficients, bounds)
    backend = _backend()
    neuron_shape = tuple(bounds.shape[:-1])
    sum_count = _sum_count(_degree_of(coefficients), extrapolation)

    def kernel(upstream, x, coefficients, bounds):
        grad_x, sums = backend.call(
            target,
            (x, upstream, ops.reshape(bounds, (-1, 2)), _slope_table(coefficients)),
            [x.shape, (sum_count, math.prod(neuron_shape))],
        )
        return grad_x, [ops.reshape(total, neuron_shape) for total in ops.unstack(sums)]

    return backend.differentiable(kernel, reference)(upstream, x, coefficients, bounds)


def batch_normalized_values(
    x, scale, offset, coefficients, bounds, epsilon, extrapolation, reference
):
    """`reference(x, scale, offset, coefficients, bounds)`: the values of
    `_formula._evaluate_batch_normalized` with the batch mean and variance,
    computed by the kernel where it takes the tensors."""
    problem = _tensors_refusal(x, coefficients, bounds, vectors=(scale, offset))
    target = _target_where(problem, coefficients, extrapolation, "BatchNormalizedValues")
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
    problem = _tensors_refusal(
        x, coefficients, bounds, (upstream,), vectors=(scale, offset, mean, variance)
    )
    target = _target_where(problem, coefficients, extrapolation, "BatchNormalizedGradient")
    if target is None:
        return reference(*tensors)
    backend = _backend()
    sum_count = _sum_count(_degree_of(coefficients), extrapolation, normalized=True)

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
    """The backend's kernel of `kind` (one of `_fast.KINDS`) for `degree` and
    `extrapolation` (`_library`), its `mode` given; None where the build
    failed."""
    library = _library(degree)
    if library is None:
        return None
    return _backend().target(library, degree, mode_index(extrapolation), kind)


def _library_of(coefficients):
    return _library(_degree_of(coefficients))


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
        return _load_verified(*_build(degree), degree)
    except Exception as error:  # No compiler, an old framework, a refused cache, ...
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
    framework, the processor, the cache's layout); found once per process."""
    compiler = _compiler()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=True
    ).stdout
    backend = _backend()
    before, after, framework = backend.build_arguments()
    parts = (
        _CACHE_LAYOUT,
        HEADER.read_text(),
        backend.SOURCE.read_text(),
        compiler,
        version,
        " ".join((*FLAGS, *_MODE_DEFINES, *before, *after)),
        framework,
        platform.machine(),
        _processor(),
    )
    return compiler, before, after, "\0".join(parts)


def _build(degree):
    """`(folder, name, data)`: the backend's kernel library for `degree`, the
    bytes `data` of the cache entry `name` in the private `folder`
    (`_cache_folder`), verified against its digest (`_cached`) or compiled
    and stored there. One process at a time checks and builds an entry
    (`_locked`): a process that finds another building waits for it and
    loads its library."""
    compiler, before, after, toolchain_key = _toolchain()
    key = hashlib.sha256(f"{toolchain_key}\0{degree}".encode()).hexdigest()[:24]
    source = _backend().SOURCE
    name = f"{source.stem}_{degree}_{key}.so"
    folder = _cache_folder()
    with _locked(folder, name):
        data = _cached(folder, name)
        if data is None:
            command = [
                compiler, *FLAGS, *_MODE_DEFINES, f"-DDEGREE={degree}", *before, str(source),
                *after,
            ]
            data = _compiled(folder, name, command)
            _store(folder, name, data)
    return folder, name, data


def _compiled(folder, name, command):
    """The bytes of the library that `command` (less its output) compiles,
    built in a temporary folder of `folder`'s."""
    with tempfile.TemporaryDirectory(dir=folder, prefix=".building-") as building:
        output = os.path.join(building, name)
        result = subprocess.run(
            [*command, "-o", output], capture_output=True, text=True, timeout=_BUILD_SECONDS
        )
        if result.returncode:
            raise RuntimeError(f"{command[0]} failed: {result.stderr.strip()[-2000:]}")
        with open(output, "rb") as built:
            return built.read()


def _load_verified(folder, name, data, degree):
    """The backend's `load` of the library whose bytes are `data`.

    The bytes are written to a new file in a private temporary folder of
    `folder`'s and loaded from there, so the library loaded is exactly the
    one verified, whatever happens to the cache entry meanwhile. One load
    per process and content: a library's registrations run once.
    """
    backend = _backend()
    digest = hashlib.sha256(data).hexdigest()
    key = (backend.__name__, degree, digest)
    if key not in _loaded:
        try:
            loading = tempfile.TemporaryDirectory(dir=folder, prefix=".loading-")
        except OSError:  # a read-only cache folder
            loading = tempfile.TemporaryDirectory(prefix="keras_bernstein-")
        with loading as loading:
            path = os.path.join(loading, f"{pathlib.Path(name).stem}_{digest[:16]}.so")
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o700)
            with os.fdopen(descriptor, "wb") as copy:
                copy.write(data)
            # Loaded libraries stay mapped once their file is gone.
            _loaded[key] = backend.load(path, degree)
    return _loaded[key]


class _Refused(Exception):
    """A cache folder or entry that is not private to this user, or an entry
    that fails its digest."""


def _user():
    """The user the cache must belong to: this process's effective user."""
    return os.geteuid()


def _configured_folder():
    """The cache folder the environment names: `$KERAS_BERNSTEIN_CACHE`, else
    `$XDG_CACHE_HOME/keras_bernstein`, else `~/.cache/keras_bernstein`."""
    configured = os.environ.get(CACHE_VARIABLE)
    if configured:
        return pathlib.Path(os.path.abspath(os.path.expanduser(configured)))
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # a relative one is to be ignored (XDG spec)
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base, "keras_bernstein")


def _cache_folder():
    """The configured cache folder, or a private temporary one
    (`private_folder_or_temporary`)."""
    return private_folder_or_temporary(
        _configured_folder(), "the CPU kernel cache", CACHE_VARIABLE
    )


def private_folder_or_temporary(folder, what, variable):
    """`folder` made or checked private (`_private_folder`); where it is
    refused or cannot be made, one warning per folder (`what`, set by the
    environment variable `variable`) and a private temporary folder for
    this process instead."""
    global _temporary_folder
    try:
        return _private_folder(folder)
    except (_Refused, OSError) as error:
        if folder not in _refused_folders:
            _refused_folders.add(folder)
            warnings.warn(
                f"keras_bernstein: {what} {folder} is not used: {error}. A temporary "
                "folder serves this process instead (compiling again in each process). "
                f"Delete that folder (it is made again, private), or set {variable} to "
                "a folder only you can write to.",
                stacklevel=7,
            )
    if _temporary_folder is None:
        _temporary_folder = tempfile.mkdtemp(prefix="keras_bernstein-")
        atexit.register(shutil.rmtree, _temporary_folder, True)
    return _private_folder(pathlib.Path(_temporary_folder))


def _private_folder(folder):
    """`folder`, resolved, created where missing (with the folders above it)
    private to this user (mode 0700) whatever the umask; `_Refused` where
    another user could change what it holds: it is not this user's, its
    group or others may write to it, or a folder above it (`_check_above`)
    could be renamed or replaced by another user."""
    missing, path = [], folder
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:  # another process made it meanwhile
            continue
        descriptor = os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)
        try:
            os.fchmod(descriptor, 0o700)  # the umask can take the owner's bits too
        finally:
            os.close(descriptor)
    resolved = pathlib.Path(os.path.realpath(folder))
    _check_above(resolved)
    status = os.lstat(resolved)
    if not stat.S_ISDIR(status.st_mode):
        raise _Refused(f"{resolved} is not a folder")
    _check_private(status, f"the folder {resolved}")
    return resolved


def _check_private(status, what):
    """`_Refused` unless `status` is of a file or folder this user owns and
    that no one else may write to."""
    if status.st_uid != _user():
        raise _Refused(f"{what} belongs to user {status.st_uid}, not to user {_user()}")
    if status.st_mode & 0o022:
        raise _Refused(
            f"{what} may be written to by its group or others "
            f"(mode {stat.S_IMODE(status.st_mode):o})"
        )


def _check_above(folder):
    """`_Refused` unless no other user can rename or replace `folder` (a
    resolved path): every folder above it belongs to this user or to root,
    and only they may write to it, or its group is this user's own (a user
    private group), or it is sticky (`/tmp`: there only an entry's owner may
    rename it)."""
    for parent in folder.parents:
        status = os.lstat(parent)
        if status.st_uid not in (0, _user()):
            raise _Refused(f"the folder above it, {parent}, belongs to user {status.st_uid}")
        writable = status.st_mode & (0o002 if _own_group(status.st_gid) else 0o022)
        if writable and not status.st_mode & stat.S_ISVTX:
            raise _Refused(
                f"the folder above it, {parent}, may be written to by others "
                f"(mode {stat.S_IMODE(status.st_mode):o})"
            )


def _own_group(gid):
    """Whether `gid` is this user's private group: their primary group, of
    their name, with no other member."""
    try:
        import grp
        import pwd

        user = pwd.getpwuid(_user())
        group = grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    return (
        gid == user.pw_gid
        and group.gr_name == user.pw_name
        and set(group.gr_mem) <= {user.pw_name}
    )


@contextlib.contextmanager
def _locked(folder, name):
    """An exclusive lock on the entry `name` of `folder` (a `.lock` file
    beside it), where the system has `flock`."""
    descriptor = None
    if fcntl is not None:
        try:
            descriptor = os.open(
                folder / f".{name}.lock", os.O_RDWR | os.O_CREAT | _NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError:  # a read-only cache, a file system without locks: renames still
            pass  # keep every entry whole
    try:
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)


def _digest_record(data, name):
    """The digest file of the library `name` holding `data`, in `sha256sum`'s
    format (`sha256sum -c` checks it in the cache folder)."""
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()


def _cached(folder, name):
    """The bytes of the library `name` in `folder` where it is there, is
    this user's and only theirs to write, and has the SHA-256 recorded for
    that name when it was built; None where it is not there. Otherwise (a
    damaged, truncated or planted file, a missing digest): one warning and
    None, so that it is built again, never loaded."""
    try:
        data = _read_private(folder, name, _MAX_LIBRARY_BYTES)
        if data is None:
            return None
        record = _read_private(folder, name + _DIGEST_SUFFIX, 4096)
        if record is None:
            raise _Refused(f"no digest ({name}{_DIGEST_SUFFIX}) was recorded for it")
        if record != _digest_record(data, name):
            raise _Refused("its bytes are not those recorded when it was built")
    except (_Refused, OSError) as error:
        warnings.warn(
            f"keras_bernstein: the cached CPU kernel {folder / name} is not loaded: "
            f"{error}. It is built again.",
            stacklevel=7,
        )
        return None
    return data


def _read_private(folder, name, limit):
    """The bytes of the file `name` in `folder`, read through one descriptor
    that follows no symbolic link; None where there is none. `_Refused`
    where it is not a regular file, not private (`_check_private`) or
    larger than `limit`."""
    try:
        descriptor = os.open(
            folder / name, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | os.O_CLOEXEC
        )
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _Refused(f"{name} is a symbolic link") from None
        raise
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise _Refused(f"{name} is not a regular file")
        _check_private(status, name)
        if status.st_size > limit:
            raise _Refused(f"{name} is larger than {limit} bytes")
        return file.read(limit + 1)


def _store(folder, name, data):
    """Stores the library `data` as the entry `name` of `folder`, then its
    digest, each written under a temporary name and renamed over the entry:
    a reader sees whole files or none. An entry that cannot be written (a
    full disk) is built again by the next process."""
    for entry, content in ((name, data), (name + _DIGEST_SUFFIX, _digest_record(data, name))):
        descriptor, partial = tempfile.mkstemp(dir=folder, prefix=f".{entry}.")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(content)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, folder / entry)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            return
