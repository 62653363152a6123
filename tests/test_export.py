"""`model.export`: the artifact holds no C++ kernels, reloads and predicts
what the model predicts with them; on JAX, only exported programs lose the
kernels (`_fast/jax_cpu_kernel`)."""

import os

import keras
import numpy as np
import pytest

from keras_bernstein import Bernstein
from keras_bernstein import BernsteinDense
from keras_bernstein import ops as bernstein_ops

BACKEND = keras.backend.backend()
ROWS, FEATURES = 7, 6


@pytest.fixture
def kernels_looked_up(monkeypatch):
    """The `(degree, extrapolation, kind)` of each C++ kernel looked up
    during the test, and whether they can run here at all (JAX or
    TensorFlow on CPU, with a C++ compiler). Skips on PyTorch."""
    if BACKEND == "torch":
        pytest.skip(
            "Keras' own `model.export` fails on PyTorch for a plain ReLU model "
            "(torch.export: mismatch between `inputs` and `dynamic_shapes`)"
        )
    from keras_bernstein._fast import cpu_kernels

    try:
        available = cpu_kernels.enabled() and bool(cpu_kernels._compiler())
    except RuntimeError:  # no C++ compiler
        available = False
    looked_up = []
    target = cpu_kernels._target
    monkeypatch.setattr(
        cpu_kernels, "_target", lambda *args: looked_up.append(args) or target(*args)
    )
    return looked_up, available


def _model(kind, extrapolation):
    layers = [
        BernsteinDense(8, degree=4, extrapolation=extrapolation),
        keras.layers.Dense(5),
        Bernstein(degree=5, extrapolation=extrapolation),
        keras.layers.Dense(2),
    ]
    if kind == "sequential":
        return keras.Sequential([keras.Input((FEATURES,)), *layers])
    inputs = keras.Input((FEATURES,))
    outputs = inputs
    for layer in layers:
        outputs = layer(outputs)
    return keras.Model(inputs, outputs)


def _inputs():
    # Wide enough that both polynomials see inputs outside their bounds.
    return np.random.default_rng(0).normal(size=(ROWS, FEATURES)).astype("float32") * 3.0


@pytest.mark.parametrize(
    "kind, extrapolation, signature",
    [
        ("sequential", "linear", "batch"),
        ("functional", "linear", "fixed"),
        ("sequential", "clip", "fixed"),
        ("functional", "clip", "batch"),
    ],
)
def test_export_reloads_and_predicts_like_the_model(
    kind, extrapolation, signature, kernels_looked_up, tmp_path
):
    """The default `tf_saved_model` export, with a polymorphic batch axis or
    a fixed input signature, holds no kernels and serves what `predict`
    computes with them."""
    import tensorflow as tf

    looked_up, kernels_available = kernels_looked_up
    model = _model(kind, extrapolation)
    x = _inputs()
    model(x, training=True)  # moving statistics other than their start
    looked_up.clear()
    expected = model.predict(x, verbose=0)
    if kernels_available:
        assert {kind for *_, kind in looked_up} == {"Values"}
    arguments = {}
    if signature == "fixed":
        arguments["input_signature"] = [keras.InputSpec(shape=(ROWS, FEATURES), dtype="float32")]
    path = str(tmp_path / "exported")
    model.export(path, verbose=False, **arguments)
    with open(os.path.join(path, "saved_model.pb"), "rb") as graph:
        assert b"KerasBernstein" not in graph.read()  # TensorFlow's kernel ops
    loaded = tf.saved_model.load(path)  # kept: its variables die with it
    served = loaded.serve(tf.constant(x)).numpy()
    scale = np.abs(expected).max()
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5 * scale)
    if BACKEND == "tensorflow":
        served = keras.layers.TFSMLayer(path, call_endpoint="serve")(x)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(served), expected, rtol=0, atol=1e-5 * scale
        )


def _custom_call_targets(module_text):
    """The C++ kernels the module calls, each as `name[mode]`: the
    extrapolation mode's index (`EXTRAPOLATION_MODES`) it is called with."""
    import re

    targets = set()
    for line in module_text.splitlines():
        for name in re.findall(r"custom_call @(keras_bernstein\w*)", line):
            mode = re.search(r"\bmode = (\d+)", line)
            targets.add(f"{name}[{mode.group(1) if mode else '?'}]")
    return targets


@pytest.mark.parametrize("extrapolation", ["linear", "clip"])
def test_jax_export_lowers_the_portable_code_where_jit_lowers_the_kernels(
    extrapolation, kernels_looked_up
):
    """One traced training step, lowered twice: by `jit` with the kernels'
    custom calls (all four kinds), by `jax.export` (batch axis polymorphic
    or fixed) with none, computing the same values and gradients."""
    if BACKEND != "jax":
        pytest.skip("JAX's lowering")
    _, kernels_available = kernels_looked_up
    if not kernels_available:
        pytest.skip("the C++ kernels cannot run here")
    import jax
    import jax.numpy as jnp
    from jax import export

    layer = BernsteinDense(8, degree=4, extrapolation=extrapolation)
    layer.build((None, FEATURES))
    trainable = [variable.value for variable in layer.trainable_variables]
    non_trainable = [variable.value for variable in layer.non_trainable_variables]

    def loss(trainable, x):
        outputs, _ = layer.stateless_call(trainable, non_trainable, x, training=True)
        return jnp.sum(outputs * jnp.cos(outputs))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    x = _inputs()
    kinds = ("Values", "Gradient", "BatchNormalizedValues", "BatchNormalizedGradient")
    mode = bernstein_ops.EXTRAPOLATION_MODES.index(extrapolation)
    # The inference pass (the moving statistics) and the training step's.
    inference = jax.jit(lambda x: layer(x))
    assert _custom_call_targets(inference.lower(x).as_text()) == {
        f"keras_bernstein_Values_4[{mode}]"
    }
    assert _custom_call_targets(step.lower(trainable, x).as_text()) == {
        f"keras_bernstein_{kind}_4[{mode}]" for kind in kinds[2:]
    }
    expected = step(trainable, x)
    batch = export.symbolic_shape(f"b, {FEATURES}")
    for shape in (batch, x.shape):
        spec = jax.ShapeDtypeStruct(shape, jnp.float32)
        exported = export.export(step)(trainable, spec)
        assert not _custom_call_targets(exported.mlir_module())
        got = exported.call(trainable, x)
        for got, want in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        exported = export.export(inference)(spec)
        assert not _custom_call_targets(exported.mlir_module())
        np.testing.assert_allclose(exported.call(x), inference(x), rtol=1e-5, atol=1e-5)


def test_jax_vmap_of_the_kernels_lowers_them(kernels_looked_up):
    """Under `jax.vmap` the kernels run one item at a time, as before, and
    stay out of exported programs."""
    if BACKEND != "jax":
        pytest.skip("JAX's lowering")
    _, kernels_available = kernels_looked_up
    if not kernels_available:
        pytest.skip("the C++ kernels cannot run here")
    import jax
    import jax.numpy as jnp
    from jax import export

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5, 4)).astype("float32") * 2.0
    coefficients = rng.normal(size=(4, 6)).astype("float32")
    bounds = np.tile(np.float32([-2.0, 2.0]), (4, 1))

    def loss(x, coefficients):
        values = bernstein_ops.bernstein_polynomial(x, coefficients, bounds)
        return jnp.sum(values * jnp.sin(values))

    gradients = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1)), (0, None)))
    targets = _custom_call_targets(gradients.lower(x, coefficients).as_text())
    linear = bernstein_ops.EXTRAPOLATION_MODES.index("linear")
    assert targets == {
        f"keras_bernstein_Values_5[{linear}]", f"keras_bernstein_Gradient_5[{linear}]"
    }
    expected = [jax.grad(loss, argnums=(0, 1))(item, coefficients) for item in x]
    for got, want in zip(jax.tree.leaves(gradients(x, coefficients)), zip(*expected)):
        np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-5)
    exported = export.export(gradients)(x, coefficients)
    assert not _custom_call_targets(exported.mlir_module())
