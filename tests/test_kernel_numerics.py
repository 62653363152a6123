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
