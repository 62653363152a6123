"""The C++ kernels under concurrency, their shape checks, and the batch
statistics of every path against a float64 NumPy reference."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()

# ---------------------------------------------------------------------------
# Concurrency: parallel branches on a few intra-op threads.
# ---------------------------------------------------------------------------

# Three parallel branches of Bernstein layers, each kernel call large enough
# to be split over the intra-op threads (8192 rows of 64 units), trained and
# then predicted repeatedly: XLA runs the branches' custom calls at once on
# one pool.
_PARALLEL_BRANCHES = textwrap.dedent(
    """
    import os, sys
    threads = int(sys.argv[1])
    if os.environ["KERAS_BACKEND"] == "jax":
        os.environ["XLA_FLAGS"] = (
            "--xla_cpu_multi_thread_eigen=true "
            f"intra_op_parallelism_threads={threads}"
        )
    import keras
    import numpy as np
    if os.environ["KERAS_BACKEND"] == "tensorflow":
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    import keras_bernstein

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 16))
    branches = []
    for _ in range(3):
        hidden = keras_bernstein.Bernstein(degree=8)(inputs)
        hidden = keras_bernstein.BernsteinDense(64)(hidden)
        branches.append(hidden)
    model = keras.Model(inputs, keras.layers.Average()(branches))
    model.compile("adam", "mse")
    x = np.random.default_rng(0).normal(size=(1024, 8, 16)).astype("float32")
    model.fit(x, np.zeros((1024, 8, 64), "float32"), batch_size=1024, epochs=1, verbose=0)
    for _ in range(int(sys.argv[2])):
        predictions = model.predict(x, batch_size=1024, verbose=0)
    assert np.isfinite(predictions).all()
    print("finished")
    """
)


def _threads(count):
    """JAX on two threads (where XLA runs the branches at once) in every run;
    the rest, and TensorFlow's slower model building, with the slow tests."""
    fast = BACKEND == "jax" and count == 2
    return count if fast else pytest.param(count, marks=pytest.mark.slow)


@pytest.mark.parametrize("threads", [_threads(1), _threads(2), _threads(4)])
def test_parallel_branches_finish_on_any_number_of_threads(threads, kernel_targets):
    """A kernel never blocks a pool thread waiting for work only queued on
    that pool: a model of parallel branches trains and predicts on 1, 2 and
    4 intra-op threads (in a subprocess with a time limit, so that a
    deadlock fails the test instead of hanging the suite)."""
    from keras_bernstein._fast import cpu_kernels

    assert cpu_kernels._library(8) is not None, "no kernel built"  # cached for the child
    predictions = 5 if BACKEND == "jax" else 2
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PARALLEL_BRANCHES, str(threads), str(predictions)],
            env={**os.environ, "KERAS_BERNSTEIN_CPU_KERNEL": "1"},
            capture_output=True,
            text=True,
            timeout=240,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"no answer within 240 s on {threads} intra-op threads")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished" in result.stdout


# ---------------------------------------------------------------------------
# Shape checks of JAX's FFI handlers.
# ---------------------------------------------------------------------------


def _jax_kernel_calls(units=5, rows=4, degree=3):
    """Each JAX handler of `degree`'s library with well-shaped inputs: kind
    -> (target, inputs by name, result shapes, epsilon)."""
    from keras_bernstein._fast import cpu_kernels

    assert cpu_kernels._library(degree) is not None, "no kernel built"
    x = np.linspace(-2.0, 2.0, rows * units, dtype="float32").reshape(rows, units)
    bounds = np.tile(np.array([-1.0, 1.0], "float32"), (units, 1))
    vector = np.full(units, 0.5, "float32")
    columns = np.ones((degree + 1, units), "float32")
    slopes = np.ones((degree, units), "float32")
    count = cpu_kernels._sum_count(degree, "linear")
    polynomial = {"x": x, "bounds": bounds, "columns": columns, "slope_lower": vector,
                  "bend": vector}
    gradient = {"x": x, "upstream": x, "bounds": bounds, "slope_table": slopes}
    normalized = {"x": x, "scale": vector, "offset": vector, "bounds": bounds,
                  "columns": columns, "slope_lower": vector, "bend": vector}
    normalized_gradient = {"x": x, "upstream": x, "mean": vector, "variance": vector,
                           "scale": vector, "offset": vector, "bounds": bounds,
                           "slope_table": slopes}
    return {
        "Values": (polynomial, [x.shape], None),
        "Gradient": (gradient, [x.shape, (count, units)], None),
        "BatchNormalizedValues": (normalized, [x.shape, (units,), (units,)], 1e-3),
        "BatchNormalizedGradient": (
            normalized_gradient, [x.shape, (count + 2, units)], 1e-3
        ),
    }


_WRONG_INPUTS = {
    "x": [np.ones((4, 6), "float32"), np.ones((7,), "float32")],
    "upstream": [np.ones((5, 4), "float32"), np.ones((20,), "float32")],
    "bounds": [np.ones((5, 3), "float32"), np.ones((10,), "float32"),
               np.ones((4, 2), "float32"), np.ones((1, 5, 2), "float32")],
    "columns": [np.ones((3, 5), "float32"), np.ones((4, 6), "float32"),
                np.ones((20,), "float32")],
    "slope_table": [np.ones((4, 5), "float32"), np.ones((3, 4), "float32")],
    "slope_lower": [np.ones(4, "float32"), np.ones((5, 1), "float32")],
    "bend": [np.ones(6, "float32")],
    "scale": [np.ones(4, "float32")],
    "offset": [np.ones((1, 5), "float32")],
    "mean": [np.ones(6, "float32")],
    "variance": [np.ones(4, "float32")],
}


@pytest.mark.parametrize(
    "kind", ["Values", "Gradient", "BatchNormalizedValues", "BatchNormalizedGradient"]
)
def test_jax_kernels_refuse_buffers_of_other_shapes(kind, kernel_targets):
    """Every JAX handler checks the exact shape of each table, vector and
    result it touches: a wrong one raises (ValueError called directly,
    JaxRuntimeError under jit) instead of reading past its end."""
    if BACKEND != "jax":
        pytest.skip("JAX's FFI handlers")
    import jax

    from keras_bernstein._fast import cpu_kernels, jax_cpu_kernel

    inputs, result_shapes, epsilon = _jax_kernel_calls()[kind]
    target = cpu_kernels._target(3, "linear", kind)

    def call(inputs, result_shapes=result_shapes):
        return jax_cpu_kernel.call(target, list(inputs.values()), result_shapes, epsilon)

    expected = [np.asarray(output) for output in call(inputs)]
    assert [output.shape for output in expected] == [tuple(s) for s in result_shapes]
    for name, wrongs in _WRONG_INPUTS.items():
        if name not in inputs:
            continue
        for wrong in wrongs:
            bad = {**inputs, name: wrong}
            # Bounds of other units are a table; the first buffer read
            # by them is the one named.
            named = name if wrong.shape[-1:] != (2,) else r"\w+"
            with pytest.raises(ValueError, match=rf"Received: {named}\.shape="):
                call(bad)
            with pytest.raises(jax.errors.JaxRuntimeError, match="must"):
                jax.jit(lambda *arrays: jax_cpu_kernel.call(
                    target, list(arrays), result_shapes, epsilon
                ))(*bad.values())
    wrong_results = [list(result_shapes) for _ in result_shapes]
    for index, shapes in enumerate(wrong_results):
        shapes[index] = (3,) + tuple(shapes[index])[1:]
        with pytest.raises(ValueError, match="must"):
            call(inputs, shapes)


# ---------------------------------------------------------------------------
# Batch statistics: every path against float64 NumPy.
# ---------------------------------------------------------------------------

DEGREE = 3
EPSILON = 1e-3


def _batch_normalized_case(rows, units, seed=0, mean=1000.0):
    """float32 rows of a large mean and unit deviation, the polynomial's
    coefficients, bounds that hold every normalized value, the
    normalization's scale and offset, and weights of the loss
    `sum(values * weights)` (of a nonzero mean, so that the sums grow)."""
    rng = np.random.default_rng(seed)
    x = mean + rng.normal(size=(rows, units)) * np.linspace(0.5, 2.0, units)
    coefficients = rng.normal(size=(units, DEGREE + 1))
    bounds = np.tile([-9.0, 8.0], (units, 1))
    scale = np.linspace(0.8, 1.2, units)
    offset = np.linspace(-0.2, 0.3, units)
    weights = 1.0 + 0.5 * rng.normal(size=(rows, units))
    return tuple(a.astype("float32") for a in (x, coefficients, bounds, scale, offset, weights))


def _reference(x, coefficients, bounds, scale, offset, weights, statistics=None):
    """In float64: the batch mean and variance, the values and the gradients
    of `sum(values * weights)` for x, scale, offset and coefficients, and
    the sum of each gradient's terms' magnitudes (its rounding scale). With
    `statistics`, the values and gradients of that mean and variance."""
    from math import comb

    x, coefficients, bounds, scale, offset, weights = (
        a.astype("float64") for a in (x, coefficients, bounds, scale, offset, weights)
    )
    n = coefficients.shape[-1] - 1
    mean, variance = x.mean(0), x.var(0)
    if statistics is not None:
        mean, variance = (np.asarray(s, "float64") for s in statistics)
    inverse = 1.0 / np.sqrt(variance + EPSILON)
    normalized = (x - mean) * inverse
    width = bounds[:, 1] - bounds[:, 0]
    t = (normalized * scale + offset - bounds[:, 0]) / width
    assert 0.0 < t.min() and t.max() < 1.0, "the case must stay inside the bounds"
    basis = np.stack([comb(n, k) * t**k * (1 - t) ** (n - k) for k in range(n + 1)], -1)
    values = (basis * coefficients).sum(-1)
    slope = sum(
        n * (coefficients[:, k + 1] - coefficients[:, k]) * comb(n - 1, k)
        * t**k * (1 - t) ** (n - 1 - k)
        for k in range(n)
    )
    grad_z = weights * slope / width
    grad_offset, grad_scale = grad_z.sum(0), (grad_z * normalized).sum(0)
    grad_x = scale * inverse * (
        grad_z - grad_z.mean(0) - normalized * (grad_z * normalized).mean(0)
    )
    grad_coefficients = (weights[..., None] * basis).sum(0)
    magnitudes = {
        "scale": np.abs(grad_z * normalized).sum(0),
        "offset": np.abs(grad_z).sum(0),
        "coefficients": np.abs(weights[..., None] * basis).sum(0),
    }
    gradients = {"x": grad_x, "scale": grad_scale, "offset": grad_offset,
                 "coefficients": grad_coefficients}
    return mean, variance, values, gradients, magnitudes


def _backend_gradients(function, arrays, weights):
    """`function(*arrays)`'s first output and the gradients of
    `sum(output * weights)` for each of `arrays`, by the backend."""
    if BACKEND == "jax":
        import jax

        def loss(*arrays):
            outputs = function(*arrays)
            return (outputs[0] * weights).sum(), outputs

        gradients, outputs = jax.grad(loss, argnums=tuple(range(len(arrays))), has_aux=True)(
            *arrays
        )
        return [np.asarray(o) for o in outputs], [np.asarray(g) for g in gradients]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        variables = [tf.Variable(a) for a in arrays]
        with tf.GradientTape() as tape:
            outputs = function(*variables)
            loss = tf.reduce_sum(outputs[0] * weights)
        gradients = tape.gradient(loss, variables)
        return [np.asarray(o) for o in outputs], [g.numpy() for g in gradients]
    import torch

    tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
    outputs = function(*tensors)
    (outputs[0] * torch.as_tensor(weights)).sum().backward()
    return [o.detach().numpy() for o in outputs], [t.grad.numpy() for t in tensors]


def _assert_matches(label, got, expected, tolerance):
    error = np.abs(np.asarray(got, "float64") - expected)
    worst = np.unravel_index(np.argmax(error / tolerance), error.shape)
    assert np.all(error <= tolerance), (
        f"{label}: off by {error[worst]:.3g} at {worst} (allowed "
        f"{np.broadcast_to(tolerance, error.shape)[worst]:.3g}; expected "
        f"{expected[worst]:.9g}, got {np.asarray(got)[worst]:.9g})"
    )


def _check(case, values, mean, variance, gradients, sums=2e-5, deviation=2e-5):
    """Everything computed in float32 against the float64 reference, within
    a few float32 roundings of each quantity's scale (`sums` times the sum
    of the magnitudes of a per-neuron sum's terms)."""
    reference_mean, reference_variance, *_ = _reference(*case)
    _assert_matches("mean", mean, reference_mean, 4e-7 * np.abs(reference_mean))
    _assert_matches("variance", variance, reference_variance, deviation * reference_variance)
    # The rest of the float32 statistics (a rounded mean shifts every
    # normalized value alike, which moves sums over many rows).
    _, _, reference_values, reference_gradients, magnitudes = _reference(
        *case, statistics=(mean, variance)
    )
    _assert_matches("values", values, reference_values, 2e-4 * np.abs(reference_values).max())
    for name, gradient in gradients.items():
        expected = reference_gradients[name]
        if name == "x":
            _assert_matches(name, gradient, expected, 2e-4 * np.abs(expected).max())
        else:
            _assert_matches(name, gradient, expected, sums * magnitudes[name] + 1e-6)


_SIZES = [(4096, 17), pytest.param(1 << 20, 3, marks=pytest.mark.slow)]


def _xla_cpu_tolerances(kernels):
    """`(sums, deviation)` tolerances: XLA-CPU, which runs the portable code
    on JAX and TensorFlow without the kernels, sums over the rows in one
    float32 loop, where terms below half a unit of the running sum round
    away (at 2^20 rows: 5e-5 of the basis sums, 5e-4 of the variance)."""
    if kernels == "off" and BACKEND in ("jax", "tensorflow"):
        return 1e-3, 1e-3
    return 2e-5, 2e-5


@pytest.mark.parametrize("kernels", ["on", "off"])
@pytest.mark.parametrize("rows, units", _SIZES)
def test_batch_normalized_polynomial_matches_float64(rows, units, kernels, monkeypatch):
    """`ops.batch_normalized_bernstein_polynomial` of rows of mean 1000:
    statistics, values and gradients of every path (the C++ kernels on JAX
    and TensorFlow, XLA's and PyTorch's portable code) to float32 accuracy."""
    from keras_bernstein import ops as bernstein_ops

    if kernels == "on" and BACKEND == "torch":
        pytest.skip("PyTorch has no C++ kernels; its compiled path is tested below")
    monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", "1" if kernels == "on" else "0")
    case = _batch_normalized_case(rows, units)
    x, coefficients, bounds, scale, offset, weights = case

    def function(x, scale, offset, coefficients):
        return bernstein_ops.batch_normalized_bernstein_polynomial(
            x, scale, offset, coefficients, bounds, epsilon=EPSILON
        )

    (values, mean, variance), (grad_x, grad_scale, grad_offset, grad_coefficients) = (
        _backend_gradients(function, (x, scale, offset, coefficients), weights)
    )
    gradients = {"x": grad_x, "scale": grad_scale, "offset": grad_offset,
                 "coefficients": grad_coefficients}
    _check(case, values, mean, variance, gradients, *_xla_cpu_tolerances(kernels))


def test_torch_compiled_batch_normalized_polynomial_matches_float64(torch_compiled):
    """The same through TorchInductor's compiled function."""
    from keras_bernstein import ops as bernstein_ops

    case = _batch_normalized_case(4096, 17)
    x, coefficients, bounds, scale, offset, weights = case

    def function(x, scale, offset, coefficients):
        return bernstein_ops.batch_normalized_bernstein_polynomial(
            x, scale, offset, coefficients, bounds, epsilon=EPSILON
        )

    (values, mean, variance), (grad_x, grad_scale, grad_offset, grad_coefficients) = (
        _backend_gradients(function, (x, scale, offset, coefficients), weights)
    )
    assert torch_compiled, "nothing ran compiled"
    gradients = {"x": grad_x, "scale": grad_scale, "offset": grad_offset,
                 "coefficients": grad_coefficients}
    _check(case, values, mean, variance, gradients)


def _dense_in_training(case):
    """A `BernsteinDense` whose Dense is the identity, called in training on
    the case's rows: its outputs, the batch statistics read back from its
    moving averages, and the gradients of `sum(outputs * weights)`."""
    import keras_bernstein

    x, coefficients, bounds, scale, offset, weights = case
    units = x.shape[1]
    layer = keras_bernstein.BernsteinDense(units, degree=DEGREE)
    layer.build((None, units))
    normalization = layer.batch_normalization
    assert normalization.epsilon == EPSILON
    layer.dense.kernel.assign(np.eye(units, dtype="float32"))
    normalization.gamma.assign(scale)
    normalization.beta.assign(offset)
    layer.bernstein.coefficients.assign(coefficients)
    layer.bernstein.bounds.assign(bounds)
    variables = [normalization.gamma, normalization.beta, layer.bernstein.coefficients]
    if BACKEND == "jax":
        import jax

        trainable = [v.value for v in layer.trainable_variables]
        others = [v.value for v in layer.non_trainable_variables]

        def loss(trainable, x):
            outputs, updated = layer.stateless_call(trainable, others, x, training=True)
            return (outputs * weights).sum(), (outputs, updated)

        (grad_trainable, grad_x), (outputs, updated) = jax.grad(
            loss, argnums=(0, 1), has_aux=True
        )(trainable, x)
        for variable, value in zip(layer.non_trainable_variables, updated):
            variable.assign(value)
        by_path = {v.path: g for v, g in zip(layer.trainable_variables, grad_trainable)}
        gradients = [grad_x] + [by_path[v.path] for v in variables]
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs, training=True)
            loss = tf.reduce_sum(outputs * weights)
        gradients = tape.gradient(loss, [inputs] + [v.value for v in variables])
    else:
        import torch

        inputs = torch.tensor(x, requires_grad=True)
        outputs = layer(inputs, training=True)
        (outputs * torch.as_tensor(weights)).sum().backward()
        gradients = [inputs.grad] + [v.value.grad for v in variables]
    momentum = normalization.momentum
    moving_mean = keras.ops.convert_to_numpy(normalization.moving_mean)
    moving_variance = keras.ops.convert_to_numpy(normalization.moving_variance)
    mean = moving_mean.astype("float64") / (1.0 - momentum)
    variance = (moving_variance.astype("float64") - momentum) / (1.0 - momentum)
    names = ("x", "scale", "offset", "coefficients")
    gradients = {n: keras.ops.convert_to_numpy(g) for n, g in zip(names, gradients)}
    return keras.ops.convert_to_numpy(outputs), (mean, variance), gradients


@pytest.mark.parametrize("kernels", ["on", "off"])
@pytest.mark.parametrize("rows, units", _SIZES)
def test_bernstein_dense_training_matches_float64(rows, units, kernels, monkeypatch):
    """`BernsteinDense` in training on rows of mean 1000 (each backend's fused
    normalization: the C++ kernels, XLA, PyTorch's eager kernels): values,
    the batch statistics in its moving averages, and gradients."""
    if kernels == "on" and BACKEND == "torch":
        pytest.skip("PyTorch has no C++ kernels; its compiled path is tested below")
    monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", "1" if kernels == "on" else "0")
    case = _batch_normalized_case(rows, units, seed=1)
    values, (mean, variance), gradients = _dense_in_training(case)
    # The moving averages hold the statistics after a float32 product and sum.
    reference_mean, reference_variance, *_ = _reference(*case)
    _assert_matches("moving mean", mean, reference_mean, 1e-6 * np.abs(reference_mean))
    sums, deviation = _xla_cpu_tolerances(kernels)
    _assert_matches(
        "moving variance", variance, reference_variance, 1e-4 + deviation * reference_variance
    )
    _, _, reference_values, reference_gradients, magnitudes = _reference(
        *case, statistics=(reference_mean, reference_variance)
    )
    _assert_matches("values", values, reference_values, 3e-4 * np.abs(reference_values).max())
    for name, gradient in gradients.items():
        expected = reference_gradients[name]
        scale = np.abs(expected).max() if name == "x" else magnitudes[name]
        factor = 3e-4 + deviation if name == "x" else 5 * sums
        _assert_matches(name, gradient, expected, factor * scale)


def test_torch_compiled_bernstein_dense_training_matches_float64(torch_compiled):
    """The same with TorchInductor's compiled function."""
    case = _batch_normalized_case(4096, 17, seed=1)
    values, (mean, variance), gradients = _dense_in_training(case)
    assert torch_compiled, "nothing ran compiled"
    reference_mean, reference_variance, reference_values, reference_gradients, magnitudes = (
        _reference(*case)
    )
    _assert_matches("moving mean", mean, reference_mean, 1e-6 * np.abs(reference_mean))
    _assert_matches("moving variance", variance, reference_variance, 1e-4)
    _assert_matches("values", values, reference_values, 3e-4 * np.abs(reference_values).max())
    for name, gradient in gradients.items():
        expected = reference_gradients[name]
        scale = np.abs(expected).max() if name == "x" else magnitudes[name]
        _assert_matches(name, gradient, expected, (3e-4 if name == "x" else 1e-4) * scale)


def test_every_extrapolation_mode_is_numbered_for_the_kernels():
    """The modes are listed once (`_formula.EXTRAPOLATION_MODES`): the
    kernels take each as its index, compiled into the C++ `Mode` enum from
    `cpu_kernels._MODE_DEFINES`, whose every name the header reads."""
    import pathlib

    from keras_bernstein import _formula
    from keras_bernstein._fast import cpu_kernels

    header = pathlib.Path(cpu_kernels.HEADER).read_text()
    for index, mode in enumerate(_formula.EXTRAPOLATION_MODES):
        assert cpu_kernels.mode_index(mode) == index
        define = f"KERAS_BERNSTEIN_MODE_{mode.upper()}"
        assert f"-D{define}={index}" in cpu_kernels._MODE_DEFINES
        assert define in header, f"the kernels have no mode {mode!r}"
    count = len(_formula.EXTRAPOLATION_MODES)
    assert f"-DKERAS_BERNSTEIN_MODES={count}" in cpu_kernels._MODE_DEFINES
    assert f"KERAS_BERNSTEIN_MODES == {count}" in header


def test_every_extrapolation_mode_reaches_the_kernels(kernel_targets):
    """Each mode's kernels are looked up with that mode, and compute what
    the portable formula computes for it (so no two modes share a number)."""
    from keras_bernstein import _formula
    from keras_bernstein import ops as bernstein_ops

    rng = np.random.default_rng(8)
    x = (rng.normal(size=(64, 6)) * 2.0).astype("float32")
    coefficients = rng.normal(size=(6, 5)).astype("float32")
    bounds = np.tile([-1.5, 1.0], (6, 1)).astype("float32")
    for mode in _formula.EXTRAPOLATION_MODES:
        kernel_targets.clear()
        values = bernstein_ops.bernstein_polynomial(x, coefficients, bounds, mode)
        assert set(kernel_targets) == {(4, mode, "Values")}
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(values),
            keras.ops.convert_to_numpy(_formula._evaluate(x, coefficients, bounds, mode)),
            rtol=1e-5,
            atol=1e-4,
        )


def test_jax_kernels_refuse_an_unknown_mode(kernel_targets):
    """A mode the kernels do not number raises instead of computing another's."""
    if BACKEND != "jax":
        pytest.skip("JAX's FFI handlers")
    from keras_bernstein import _formula
    from keras_bernstein._fast import cpu_kernels, jax_cpu_kernel

    inputs, result_shapes, epsilon = _jax_kernel_calls()["Values"]
    name, _ = cpu_kernels._target(3, "linear", "Values")
    unknown = (name, len(_formula.EXTRAPOLATION_MODES))
    with pytest.raises(ValueError, match="unknown extrapolation mode"):
        jax_cpu_kernel.call(unknown, list(inputs.values()), result_shapes, epsilon)
