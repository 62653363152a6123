"""PyTorch's fast paths (`keras_bernstein/_fast/torch_*`) in the layers:
second derivatives, and when the polynomial is compiled."""

import keras
import numpy as np
import pytest

from keras_bernstein import Bernstein
from keras_bernstein import BernsteinDense
from keras_bernstein import _formula
from keras_bernstein import ops as bernstein_ops

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="PyTorch's fast paths"
)


def penalty_gradients(function, x, parameters, weights):
    """Gradients for `x` and `parameters` of the gradient penalty
    `sum(g**2)`, `g` the input gradient of `sum(function(x) * weights)`."""
    import torch

    loss = (function(x) * weights).sum()
    (gradient,) = torch.autograd.grad(loss, [x], create_graph=True)
    grads = torch.autograd.grad((gradient**2).sum(), [x, *parameters], allow_unused=True)
    return [
        np.zeros(tuple(t.shape)) if g is None else g.detach().double().numpy()
        for t, g in zip([x, *parameters], grads)
    ]


def float64_leaves(variables):
    """float64 copies of `variables`, requiring a gradient where trainable."""
    import torch

    return [
        torch.tensor(
            keras.ops.convert_to_numpy(v), dtype=torch.float64, requires_grad=v.trainable
        )
        for v in variables
    ]


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize(
    "layer, training",
    [("Bernstein", True), ("BernsteinDense", True), ("BernsteinDense", False)],
)
def test_layer_gradient_penalty_matches_float64_autodiff(layer, training, compiled, request):
    """A gradient penalty through `Bernstein` and `BernsteinDense` (in
    training: batch statistics; in inference: moving ones), compiled by
    TorchInductor or not, against autodiff of the plain formula in float64."""
    import torch

    if compiled:
        names = request.getfixturevalue("torch_compiled")
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(24, 5)) * 1.5, dtype=torch.float32, requires_grad=True)
    if layer == "Bernstein":
        model = Bernstein(degree=3, extrapolation="clip")
        model.build((None, 5))
        model.coefficients.assign(rng.normal(size=(5, 4)))
        variables = [model.coefficients, model.bounds]

        def reference(x, coefficients, bounds):
            return _formula._evaluate(x, coefficients, bounds, "clip")

    else:
        model = BernsteinDense(4, degree=3)
        model.build((None, 5))
        model.coefficients.assign(rng.normal(size=(4, 4)))
        normalization = model.batch_normalization
        normalization.beta.assign(rng.normal(size=4) * 0.3)
        normalization.moving_mean.assign(rng.normal(size=4))
        normalization.moving_variance.assign(rng.uniform(1.0, 3.0, 4))
        variables = [
            model.dense.kernel,
            normalization.gamma,
            normalization.beta,
            model.coefficients,
            model.bounds,
        ]
        epsilon = normalization.epsilon

        def reference(x, kernel, gamma, beta, coefficients, bounds):
            hidden = x @ kernel
            if training:
                mean, variance = hidden.mean(0), hidden.var(0, unbiased=False)
            else:
                mean, variance = float64_leaves(
                    [normalization.moving_mean, normalization.moving_variance]
                )
            normalized = (hidden - mean) * torch.rsqrt(variance + epsilon) * gamma + beta
            return _formula._evaluate(normalized, coefficients, bounds, "linear")

    weights = torch.tensor(rng.normal(size=(24, 5 if layer == "Bernstein" else 4)))
    parameters = [v.value for v in variables if v.trainable]
    fast = penalty_gradients(
        lambda x: model(x, training=training), x, parameters, weights.float()
    )
    if compiled:
        assert names, "nothing ran compiled"
    leaves = float64_leaves(variables)
    exact = penalty_gradients(
        lambda x: reference(x, *leaves),
        x.detach().double().requires_grad_(),
        [leaf for leaf, v in zip(leaves, variables) if v.trainable],
        weights,
    )
    for index, (a, b) in enumerate(zip(fast, exact)):
        assert a.shape == b.shape, index
        scale = np.abs(b).max() + 1.0
        np.testing.assert_allclose(a, b, rtol=0, atol=5e-5 * scale, err_msg=str(index))


def small_model(units=4):
    model = keras.Sequential(
        [keras.Input((6,)), BernsteinDense(units, degree=3), keras.layers.Dense(1)]
    )
    model.compile("adam", "mse")
    return model


def compilations():
    """Graphs Dynamo has compiled in this process, and signatures that
    `torch_compilation` compiled."""
    import torch

    from keras_bernstein._fast import torch_compilation

    return (
        torch._dynamo.utils.counters["stats"]["unique_graphs"],
        len(torch_compilation._compile_seconds),
    )


def fail_instead_of_eager(error, *arguments):
    raise AssertionError("the compiled polynomial failed and ran eagerly") from error


def test_a_second_model_of_the_same_degree_compiles_nothing(torch_compiled):
    """Layers and models of the same degree, width and extrapolation share
    the compiled functions, whatever their batch size."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)), rng.normal(size=(32, 1))
    first = small_model()
    first.train_on_batch(x, y)
    first.predict_on_batch(x)
    assert set(torch_compiled) == {"_evaluate_batch_normalized", "_evaluate_normalized"}
    before = compilations()
    second = small_model()
    second.train_on_batch(x[:20], y[:20])
    second.train_on_batch(x, y)
    second.predict_on_batch(x[:7])
    assert compilations() == before


def test_auto_policy_compiles_a_signature_once_it_has_paid(monkeypatch):
    """`KERAS_BERNSTEIN_TORCH_COMPILE=auto`: the eager kernels run until a
    signature's eager time exceeds the expected compile time, with the same
    values; a signature used a few times is never compiled."""
    import torch

    from keras_bernstein._fast import torch_compilation

    monkeypatch.setenv("KERAS_BERNSTEIN_TORCH_COMPILE", "auto")
    monkeypatch.setattr(torch_compilation, "_compiler_works", None)
    monkeypatch.setattr(torch_compilation, "_portable_after", fail_instead_of_eager)
    monkeypatch.setattr(torch_compilation, "_eager_seconds", {})
    monkeypatch.setattr(torch_compilation, "_bought", set())
    monkeypatch.setattr(torch_compilation, "_compile_seconds", [])
    compiled = []
    run = torch_compilation._run
    monkeypatch.setattr(
        torch_compilation, "_run", lambda *a: compiled.append(a[1]) or run(*a)
    )
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(32, 6)), rng.normal(size=(32, 1))
    model = small_model(units=5)
    before = compilations()
    for _ in range(3):
        model.train_on_batch(x, y)
    model.predict_on_batch(x)
    assert not compiled and compilations() == before
    assert torch_compilation._compiler_works is None, "probed without compiling"
    rented = dict(torch_compilation._eager_seconds)
    assert len(rented) == 2 and all(seconds > 0 for seconds in rented.values())

    # Once the eager time exceeds the expected compile time, compiled.
    monkeypatch.setattr(torch_compilation, "FIRST_COMPILE_ESTIMATE", 0.0)
    # (The signature of the layer test above, compiled there when run first.)
    polynomial_inputs = [
        torch.tensor(rng.normal(size=(24, 5)), dtype=torch.float32, requires_grad=True),
        torch.tensor(rng.normal(size=(5, 4)), dtype=torch.float32, requires_grad=True),
        torch.tensor([[-1.0, 2.0]] * 5),
    ]
    eager = bernstein_ops.bernstein_polynomial(*polynomial_inputs, "clip")
    assert torch_compilation._bought and not compiled
    values = bernstein_ops.bernstein_polynomial(*polynomial_inputs, "clip")
    assert len(compiled) == 1
    np.testing.assert_allclose(
        values.detach().numpy(), eager.detach().numpy(), rtol=1e-5, atol=1e-6
    )


def test_batch_sizes_and_modes_never_recompile_a_compiled_function(torch_compiled):
    """Each compiled function serves one signature (modes, a single row or
    many, the input's non-batch shape) and compiles one graph, so that no
    mix of models and batch sizes reaches Dynamo's `recompile_limit`, past
    which it warns and runs the formula eagerly."""
    import torch

    # Dynamo's own patch: its config undoes it exactly (a monkeypatched
    # alias left `recompile_limit` missing for every later compile).
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        rng = np.random.default_rng(2)
        x, y = rng.normal(size=(9, 6)), rng.normal(size=(9, 1))
        model = small_model(units=3)
        for rows in (5, 1, 7):
            model.train_on_batch(x[:rows], y[:rows])
        for rows in (4, 1, 9):
            model.predict_on_batch(x[:rows])
    assert set(torch_compiled) == {"_evaluate_batch_normalized", "_evaluate_normalized"}


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_an_enclosing_compile_traces_one_graph_whatever_the_log_level(level, caplog):
    """Inside an enclosing `torch.compile(fullgraph=True)` the choice of
    implementation (`ops.implementation`) calls no logger, which would break
    Dynamo's graph; the formula is traced inline and gives its values."""
    import logging

    import torch

    rng = np.random.default_rng(6)
    x = torch.tensor(rng.normal(size=(8, 3)).astype("float32"))
    coefficients = torch.tensor(rng.normal(size=(3, 5)).astype("float32"))
    bounds = torch.tensor([[-1.0, 1.0]] * 3)

    @torch.compile(fullgraph=True)
    def compiled(x):
        return bernstein_ops.bernstein_polynomial(x, coefficients, bounds)

    with caplog.at_level(getattr(logging, level), logger="keras_bernstein"):
        values = compiled(x)
    expected = _formula._evaluate(x, coefficients, bounds, "linear")
    np.testing.assert_allclose(values.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
