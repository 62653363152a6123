"""Shared fixtures for the keras-bernstein test suite.

The suite runs once per backend, in separate processes:

    KERAS_BACKEND=jax python -m pytest tests -q -p no:cacheprovider
    KERAS_BACKEND=tensorflow python -m pytest tests -q -p no:cacheprovider
    KERAS_BACKEND=torch python -m pytest tests -q -p no:cacheprovider
"""

import contextlib
import functools
import os

# Must be set before any backend (and its thread pools) is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# TorchInductor takes seconds to compile each polynomial shape, so the suite
# runs PyTorch's eager kernels except in the tests that ask for
# `torch_compiled` (the compiled path is what PyTorch-CPU users run).
os.environ["KERAS_BERNSTEIN_TORCH_COMPILE"] = "0"

import keras  # noqa: E402
import pytest  # noqa: E402

SEED = 1337


@pytest.fixture(autouse=True)
def seed():
    """Seeds Python, NumPy and the backend before every test."""
    keras.utils.set_random_seed(SEED)
    return SEED


@pytest.fixture(autouse=True)
def restore_dtype_policy():
    """Restores the global float32 policy after every test.

    Mixed-precision tests set `keras.config.set_dtype_policy("mixed_float16")`;
    without this a failing one would leak the policy into later tests.
    """
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def torch_compiled(monkeypatch):
    """Runs the test with the polynomial compiled by TorchInductor
    (`_fast/torch_compilation`); skips off PyTorch or without a compiler.

    Returns the list of the formulas' names that ran compiled, in order.
    """
    if keras.backend.backend() != "torch":
        pytest.skip("TorchInductor compiles for PyTorch only")
    from keras_bernstein._fast import torch_compilation

    monkeypatch.setenv("KERAS_BERNSTEIN_TORCH_COMPILE", "1")
    monkeypatch.setattr(torch_compilation, "_compiler_works", None)
    if not torch_compilation._compilation_works():
        pytest.skip("torch.compile does not work on this machine")
    original = torch_compilation._portable_after

    def unexpected_failure(error, *arguments):
        raise AssertionError("the compiled polynomial failed and ran eagerly") from error

    # A compiled polynomial that fails falls back silently to users: not here.
    unexpected_failure.original = original
    monkeypatch.setattr(torch_compilation, "_portable_after", unexpected_failure)
    calls = []
    call = torch_compilation.call

    def recorded_call(formula, *tensors, **constants):
        calls.append(formula.__name__)
        return call(formula, *tensors, **constants)

    monkeypatch.setattr(torch_compilation, "call", recorded_call)
    return calls


def float64_context():
    """A context in which float64 tensors really are float64.

    JAX silently downcasts float64 to float32 unless x64 is enabled; the
    other backends need nothing.
    """
    if keras.backend.backend() == "jax":
        import jax

        return jax.enable_x64(True)
    return contextlib.nullcontext()


@pytest.fixture
def float64():
    """Runs the test body with real float64 support (see `float64_context`)."""
    with float64_context():
        yield


@functools.cache
def load_autompg():
    """The Auto MPG data set (UCI, 392 cars, shipped by `mlxtend`).

    Returns `(x, mpg, origin)`: the six numeric features (cylinders,
    displacement, horsepower, weight, acceleration, model year) standardized
    to zero mean and unit variance as float32, miles per gallon standardized
    the same way as float32 `(392, 1)`, and the region of origin as int labels
    0, 1, 2.
    """
    from mlxtend.data import autompg_data

    features, mpg = autompg_data()
    x = features[:, :6].astype("float64")
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    mpg = (mpg - mpg.mean()) / mpg.std()
    origin = features[:, 6].astype("int64") - 1
    return x.astype("float32"), mpg.reshape(-1, 1).astype("float32"), origin


@pytest.fixture
def autompg():
    return load_autompg()


@pytest.fixture
def kernel_targets(monkeypatch):
    """The `(degree, extrapolation, kind)` of every C++ kernel looked up
    during the test (`keras_bernstein/_fast/cpu_kernels`); skips where the
    backend has no kernels (PyTorch, a GPU) or no C++ compiler is installed
    (the portable code then runs)."""
    if keras.backend.backend() not in ("jax", "tensorflow"):
        pytest.skip("the C++ kernels are JAX's and TensorFlow's")
    from keras_bernstein._fast import cpu_kernels

    if not cpu_kernels.enabled():
        pytest.skip("the C++ kernels run on CPU")
    try:
        cpu_kernels._compiler()
    except RuntimeError as error:
        pytest.skip(str(error))
    looked_up = []
    target = cpu_kernels._target
    monkeypatch.setattr(
        cpu_kernels, "_target", lambda *args: looked_up.append(args) or target(*args)
    )
    return looked_up
