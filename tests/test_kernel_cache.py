"""The native-code caches: the C++ kernels' folder (`_fast/cpu_kernels`) is
private, every library is verified against the digest recorded when it was
built before it is loaded, builds land whole; a compiled PyTorch polynomial
that fails when called (`_fast/torch_compilation`) runs eagerly instead.

One real kernel build per backend; the other tests reuse its bytes through
a stand-in compiler. Cases that could kill a process run in subprocesses.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

from keras_bernstein import _formula
from keras_bernstein import ops as bernstein_ops

BACKEND = keras.backend.backend()
DEGREE = 2
HAS_KERNELS = BACKEND in ("jax", "tensorflow")


def _cpu_kernels():
    from keras_bernstein._fast import cpu_kernels

    return cpu_kernels


def _fresh_state(cpu_kernels, setattr):
    """Forgets what this process built, loaded, refused and warned about."""
    setattr(cpu_kernels, "_libraries", {})
    setattr(cpu_kernels, "_warned", False)
    setattr(cpu_kernels, "_refused_folders", set())
    setattr(cpu_kernels, "_temporary_folder", None)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder (not yet made) named by `KERAS_BERNSTEIN_CACHE`,
    with the module's in-process state reset."""
    cpu_kernels = _cpu_kernels()
    folder = tmp_path / "cache"
    monkeypatch.setenv("KERAS_BERNSTEIN_CACHE", str(folder))
    monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", "1")
    _fresh_state(cpu_kernels, monkeypatch.setattr)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`(name, bytes)` of the kernel library of `DEGREE`, really built once."""
    if not HAS_KERNELS:
        pytest.skip("the C++ kernels are JAX's and TensorFlow's")
    cpu_kernels = _cpu_kernels()
    if not cpu_kernels.enabled():
        pytest.skip("the C++ kernels run on CPU")
    try:
        cpu_kernels._compiler()
    except RuntimeError as error:
        pytest.skip(str(error))
    folder = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_BERNSTEIN_CACHE", str(folder))
        patch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", "1")
        _fresh_state(cpu_kernels, patch.setattr)
        _, name, data = cpu_kernels._build(DEGREE)
    return name, data


@pytest.fixture
def compiler(built, cache, monkeypatch):
    """A stand-in for the C++ compiler that returns the bytes `built`; the
    names of the libraries it was asked for."""
    cpu_kernels = _cpu_kernels()
    name, data = built
    asked = []

    def compiled(folder, wanted, command):
        asked.append(wanted)
        assert wanted == name, "only the library of DEGREE is built here"
        return data

    monkeypatch.setattr(cpu_kernels, "_compiled", compiled)
    return asked


def _case(degree=DEGREE):
    rng = np.random.default_rng(degree)
    x = (rng.normal(size=(40, 5)) * 1.5).astype("float32")
    coefficients = rng.normal(size=(5, degree + 1)).astype("float32")
    bounds = np.stack([rng.uniform(-2, -1, 5), rng.uniform(1, 2, 5)], -1).astype("float32")
    return x, coefficients, bounds


def _kernel_and_portable(monkeypatch, degree=DEGREE):
    """The polynomial's values with the kernels on, then off."""
    results = []
    for setting in ("1", "0"):
        monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", setting)
        values = bernstein_ops.bernstein_polynomial(*_case(degree))
        results.append(keras.ops.convert_to_numpy(values))
    monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", "1")
    return results


def _assert_kernel_values_correct(monkeypatch):
    kernel, portable = _kernel_and_portable(monkeypatch)
    assert _cpu_kernels()._libraries.get(DEGREE) is not None, "the kernels did not run"
    np.testing.assert_allclose(kernel, portable, rtol=1e-5, atol=1e-5)


def _messages(record):
    messages = [str(warning.message) for warning in record]
    return [message for message in messages if "keras_bernstein" in message]


def _entry_is_verified(folder, name, data):
    cpu_kernels = _cpu_kernels()
    assert (folder / name).read_bytes() == data
    assert (folder / (name + ".sha256")).read_bytes() == cpu_kernels._digest_record(data, name)


# The cache folder.


def test_the_cache_folder_is_made_private_whatever_the_umask(tmp_path, monkeypatch):
    cpu_kernels = _cpu_kernels()
    folder = tmp_path / "above" / "keras_bernstein"
    monkeypatch.setenv("KERAS_BERNSTEIN_CACHE", str(folder))
    old = os.umask(0)
    try:
        assert cpu_kernels._cache_folder() == folder
    finally:
        os.umask(old)
    for made in (folder, folder.parent):
        assert stat.S_IMODE(os.lstat(made).st_mode) == 0o700, made


def test_the_default_cache_folder(tmp_path, monkeypatch):
    cpu_kernels = _cpu_kernels()
    monkeypatch.delenv("KERAS_BERNSTEIN_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cpu_kernels._configured_folder() == tmp_path / "xdg" / "keras_bernstein"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cpu_kernels._configured_folder() == tmp_path / "home" / ".cache" / "keras_bernstein"


def _refused_for(monkeypatch, folder, reason):
    """`_cache_folder()` refuses `folder` (named by the environment) with one
    warning matching `reason`, and hands out a private temporary folder."""
    cpu_kernels = _cpu_kernels()
    monkeypatch.setenv("KERAS_BERNSTEIN_CACHE", str(folder))
    _fresh_state(cpu_kernels, monkeypatch.setattr)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = cpu_kernels._cache_folder()
        second = cpu_kernels._cache_folder()
    messages = _messages(record)
    assert len(messages) == 1, messages
    assert "is not used" in messages[0] and reason in messages[0], messages[0]
    assert first == second != folder
    status = os.lstat(first)
    assert status.st_uid == os.geteuid() and stat.S_IMODE(status.st_mode) == 0o700
    return first


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o722])
def test_a_cache_folder_others_may_write_to_is_refused(mode, tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(mode)
    _refused_for(monkeypatch, folder, "may be written to by its group or others")
    assert os.listdir(folder) == []


def test_a_cache_folder_under_a_folder_others_may_write_to_is_refused(tmp_path, monkeypatch):
    above = tmp_path / "open"
    (above / "cache").mkdir(parents=True, mode=0o700)
    above.chmod(0o777)  # not sticky: anyone may rename "cache" and put another in its place
    _refused_for(monkeypatch, above / "cache", "the folder above it")
    # In a sticky folder (/tmp) only an entry's owner may rename it.
    above.chmod(0o777 | stat.S_ISVTX)
    cpu_kernels = _cpu_kernels()
    assert cpu_kernels._private_folder(above / "cache") == above / "cache"


def test_a_cache_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    cpu_kernels = _cpu_kernels()
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(folder, 4321, 4321)
        _refused_for(monkeypatch, folder, "belongs to user 4321")
    # Seen from another user, this user's folder is another user's.
    monkeypatch.setattr(cpu_kernels, "_user", lambda: os.geteuid() + 1)
    with pytest.raises(cpu_kernels._Refused, match="belongs to user"):
        cpu_kernels._private_folder(tmp_path / "mine")


def test_a_symbolic_link_to_a_private_folder_is_followed_once(tmp_path, monkeypatch):
    cpu_kernels = _cpu_kernels()
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert cpu_kernels._private_folder(tmp_path / "link") == tmp_path / "real"


# The entries.


def test_a_library_is_stored_with_its_digest_and_loaded(built, cache, compiler, monkeypatch):
    name, data = built
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _assert_kernel_values_correct(monkeypatch)
    assert _messages(record) == []
    assert compiler == [name]
    _entry_is_verified(cache, name, data)
    for entry in (name, name + ".sha256"):
        assert stat.S_IMODE(os.lstat(cache / entry).st_mode) == 0o600
    # Only the entry, its digest and its lock remain: no partial files.
    assert sorted(os.listdir(cache)) == sorted([name, name + ".sha256", f".{name}.lock"])
    # A later process finds it and builds nothing.
    _fresh_state(_cpu_kernels(), monkeypatch.setattr)
    _assert_kernel_values_correct(monkeypatch)
    assert compiler == [name]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A library whose constructor writes a marker file: `(library, marker)`."""
    folder = tmp_path_factory.mktemp("planted")
    source, library, marker = folder / "planted.cc", folder / "planted.so", folder / "marker"
    source.write_text(
        "#include <cstdio>\n"
        "__attribute__((constructor)) static void planted() {\n"
        f'  if (FILE* f = std::fopen("{marker}", "w")) std::fclose(f);\n'
        "}\n"
    )
    compiler = _cpu_kernels()._compiler()
    subprocess.run(
        [compiler, "-shared", "-fPIC", str(source), "-o", str(library)], check=True
    )
    return library, marker


def _plant(how, cache, name, data, library):
    cache.mkdir(mode=0o700)
    digest = cache / (name + ".sha256")
    if how == "without a digest":
        shutil.copy(library, cache / name)
    elif how == "beside the real digest":
        shutil.copy(library, cache / name)
        digest.write_bytes(_cpu_kernels()._digest_record(data, name))
    elif how == "as a named pipe":  # reading it would block
        os.mkfifo(cache / name)
        digest.write_bytes(_cpu_kernels()._digest_record(data, name))
    elif how == "as a symbolic link":
        (cache / name).symlink_to(library)
        digest.write_bytes(_cpu_kernels()._digest_record(data, name))
    elif how == "truncated":  # the real library cut short (a full disk, a killed copy)
        (cache / name).write_bytes(data[: len(data) // 3])
        digest.write_bytes(_cpu_kernels()._digest_record(data, name))
    else:  # a library of another degree, with its own digest, under this name
        other = name.replace(f"_{DEGREE}_", f"_{DEGREE + 1}_")
        shutil.copy(library, cache / name)
        digest.write_bytes(_cpu_kernels()._digest_record(library.read_bytes(), other))
    for entry in cache.iterdir():
        if entry.is_file() and not entry.is_symlink():
            entry.chmod(0o600)


@pytest.mark.parametrize(
    "how",
    ["without a digest", "beside the real digest", "as a symbolic link", "as a named pipe",
     "truncated", "of another degree"],
)
def test_a_library_the_package_did_not_build_is_never_loaded(
    how, built, planted, cache, compiler, monkeypatch
):
    """A planted, damaged or mismatched library under the right name: one
    warning, never loaded (its constructor never runs), built again, and the
    values correct."""
    name, data = built
    library, marker = planted
    _plant(how, cache, name, data, library)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _assert_kernel_values_correct(monkeypatch)
    messages = _messages(record)
    assert len(messages) == 1 and "is not loaded" in messages[0], messages
    assert not marker.exists(), "the planted library ran"
    assert compiler == [name]
    _entry_is_verified(cache, name, data)


@pytest.mark.parametrize("whose", ["writable by others", "another user's"])
def test_an_entry_others_could_have_written_is_built_again(
    whose, built, cache, compiler, monkeypatch
):
    """The right bytes and digest, but in a file someone else could have
    written: not trusted."""
    name, data = built
    cache.mkdir(mode=0o700)
    (cache / name).write_bytes(data)
    (cache / (name + ".sha256")).write_bytes(_cpu_kernels()._digest_record(data, name))
    if whose == "writable by others":
        (cache / name).chmod(0o666)
        reason = "may be written to by its group or others"
    elif os.geteuid() == 0:
        os.chown(cache / name, 4321, 4321)
        reason = "belongs to user 4321"
    else:
        pytest.skip("giving a file to another user takes root")
    with pytest.warns(UserWarning, match=reason):
        _assert_kernel_values_correct(monkeypatch)
    assert compiler == [name]
    status = os.lstat(cache / name)
    assert status.st_uid == os.geteuid() and stat.S_IMODE(status.st_mode) == 0o600


def test_a_failed_load_falls_back_with_one_warning(built, cache, compiler, monkeypatch):
    cpu_kernels = _cpu_kernels()
    backend = cpu_kernels._backend()

    def broken_load(path, degree):
        raise OSError("cannot load")

    monkeypatch.setattr(backend, "load", broken_load)
    monkeypatch.setattr(cpu_kernels, "_loaded", {})
    with pytest.warns(UserWarning, match="cannot load"):
        kernel, portable = _kernel_and_portable(monkeypatch)
    assert cpu_kernels._libraries == {DEGREE: None}
    np.testing.assert_array_equal(kernel, portable)


@pytest.mark.skipif(not HAS_KERNELS, reason="no CPU kernels on this backend")
def test_a_front_end_that_cannot_be_imported_falls_back_with_one_warning(cache, monkeypatch):
    import keras_bernstein._fast as fast

    cpu_kernels = _cpu_kernels()
    name = {"jax": "jax_cpu_kernel", "tensorflow": "tensorflow_cpu_kernel"}[BACKEND]
    # A framework release without the APIs the front end uses fails its import.
    monkeypatch.setitem(sys.modules, f"keras_bernstein._fast.{name}", None)
    monkeypatch.delattr(fast, name)
    cpu_kernels._backend.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            kernel, portable = _kernel_and_portable(monkeypatch)
        assert len([m for m in _messages(record) if "could not be imported" in m]) == 1
        assert not cpu_kernels.enabled()
        np.testing.assert_array_equal(kernel, portable)
    finally:
        monkeypatch.undo()
        cpu_kernels._backend.cache_clear()
    assert cpu_kernels._backend() is not None


# Other processes.

_PROCESS = """
import json, os, sys, time, warnings
import numpy as np
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as record:
    import keras
    from keras_bernstein import ops
    from keras_bernstein._fast import cpu_kernels
    x, coefficients, bounds = (np.asarray(a, "float32") for a in json.loads(sys.argv[1]))
    compiled = []

    def stand_in(folder, name, command):  # the library built beforehand, slowly
        compiled.append(name)
        time.sleep(1.0)
        with open(sys.argv[2], "rb") as library:
            return library.read()

    cpu_kernels._compiled = stand_in
    kernel = keras.ops.convert_to_numpy(ops.bernstein_polynomial(x, coefficients, bounds))
    loaded = cpu_kernels._libraries.get(coefficients.shape[-1] - 1) is not None
    os.environ["KERAS_BERNSTEIN_CPU_KERNEL"] = "0"
    portable = keras.ops.convert_to_numpy(ops.bernstein_polynomial(x, coefficients, bounds))
print(json.dumps({
    "loaded": loaded,
    "compiled": len(compiled),
    "difference": float(np.abs(kernel - portable).max()),
    "warnings": [str(w.message) for w in record if "keras_bernstein" in str(w.message)],
}))
"""


def _start(cache, library):
    """A process that computes the polynomial of `DEGREE` with the kernels
    from `cache`, its compiler a stand-in that returns the bytes of
    `library`."""
    environment = dict(
        os.environ,
        KERAS_BACKEND=BACKEND,
        KERAS_BERNSTEIN_CACHE=str(cache),
        KERAS_BERNSTEIN_CPU_KERNEL="1",
        OMP_NUM_THREADS="1",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    arguments = json.dumps([a.tolist() for a in _case()])
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PROCESS), arguments, str(library)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finished(process):
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, f"exit {process.returncode}: {stderr[-3000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture
def library(built, tmp_path):
    """A file holding the library `built`."""
    path = tmp_path / "built.so"
    path.write_bytes(built[1])
    return path


def test_a_truncated_library_does_not_kill_the_process(built, cache, library):
    """Mapping a library cut short kills a process with SIGBUS; it is caught
    by its digest, and the process builds it again."""
    name, data = built
    cache.mkdir(mode=0o700)
    (cache / name).write_bytes(data[: len(data) // 3])
    (cache / (name + ".sha256")).write_bytes(_cpu_kernels()._digest_record(data, name))
    result = _finished(_start(cache, library))
    assert result["loaded"] and result["difference"] < 1e-5, result
    assert result["compiled"] == 1, result
    assert len(result["warnings"]) == 1 and "is not loaded" in result["warnings"][0], result
    assert (cache / name).stat().st_size > len(data) // 3


def test_two_processes_building_at_once_both_get_correct_kernels(built, cache, library):
    """Two processes start together on an empty cache: one builds, the other
    waits for it and loads its library, verified."""
    results = [_finished(process) for process in [_start(cache, library), _start(cache, library)]]
    for result in results:
        assert result["loaded"] and result["difference"] < 1e-5, result
        assert result["warnings"] == [], result
    assert sorted(result["compiled"] for result in results) == [0, 1], results
    names = [entry for entry in os.listdir(cache) if entry.endswith(".so")]
    assert len(names) == 1
    data = (cache / names[0]).read_bytes()
    _entry_is_verified(cache, names[0], data)


# PyTorch's compiled polynomial.


@pytest.fixture
def failing_compilation(torch_compiled, monkeypatch):
    """`torch_compilation` with compiled functions that raise, forward or
    backward, as a damaged TorchInductor cache entry does when called; the
    list of calls of the broken functions."""
    import torch

    from keras_bernstein._fast import torch_compilation

    for name, value in (("_compiled", {}), ("_ran", set()), ("_failed", set())):
        monkeypatch.setattr(torch_compilation, name, value)
    monkeypatch.setattr(torch_compilation, "_failure_warned", False)
    # The fallback under test, not `torch_compiled`'s guard against it.
    monkeypatch.setattr(
        torch_compilation, "_portable_after", torch_compilation._portable_after.original
    )
    calls = []

    class Broken(torch.autograd.Function):
        @staticmethod
        def forward(ctx, value):
            return value.clone()

        @staticmethod
        def backward(ctx, upstream):
            raise ImportError("cbackward.main.so: file too short")

    def broken(where):
        def compile(formula, constants, degree):
            def function(*tensors):
                calls.append(where)
                if where == "forward":
                    raise RuntimeError("InductorError: cforward.main.so: file too short")
                return Broken.apply(formula(*tensors, **constants))

            return function

        monkeypatch.setattr(torch_compilation, "_compile", compile)

    return broken, calls


@pytest.mark.parametrize("where", ["forward", "backward"])
def test_a_compiled_polynomial_that_fails_when_called_runs_eagerly(
    where, failing_compilation, monkeypatch
):
    import torch

    broken, calls = failing_compilation
    broken(where)
    x, coefficients, bounds = (torch.tensor(a) for a in _case())
    coefficients.requires_grad_(True)
    expected = _formula._evaluate(x, coefficients, bounds, "linear")
    (expected_gradient,) = torch.autograd.grad(expected.sum(), coefficients)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(2):
            values = bernstein_ops.bernstein_polynomial(x, coefficients, bounds)
            (gradient,) = torch.autograd.grad(values.sum(), coefficients)
            np.testing.assert_allclose(values.detach(), expected.detach(), rtol=1e-6)
            np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-5, atol=1e-6)
    messages = _messages(record)
    assert len(messages) == 1 and "file too short" in messages[0], messages
    assert calls == [where], "the failed function was called again"


def test_torchinductor_gets_a_private_cache(tmp_path, monkeypatch):
    """TorchInductor loads what it finds in its cache, by default
    `/tmp/torchinductor_<user>`, which any local user could make first: a
    folder others may write to is refused, one that is missing is made
    private."""
    if BACKEND != "torch":
        pytest.skip("TorchInductor compiles for PyTorch only")
    from keras_bernstein._fast import torch_compilation

    cpu_kernels = _cpu_kernels()
    _fresh_state(cpu_kernels, monkeypatch.setattr)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(shared))
    with pytest.warns(UserWarning, match="TorchInductor's cache .* is not used"):
        torch_compilation._private_inductor_cache()
    private = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    assert private != str(shared) and stat.S_IMODE(os.lstat(private).st_mode) == 0o700
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "missing" / "inductor"))
    torch_compilation._private_inductor_cache()
    assert stat.S_IMODE(os.lstat(tmp_path / "missing" / "inductor").st_mode) == 0o700
