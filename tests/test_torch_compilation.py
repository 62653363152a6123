"""PyTorch's fast paths (`keras_bernstein/_fast/torch_*`) in the layers:
second derivatives, and when the polynomial is compiled."""

import keras
import numpy as np
import pytest

from keras_bernstein import Bernstein
from keras_bernstein import BernsteinDense
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
            return bernstein_ops._evaluate(x, coefficients, bounds, "clip")

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
            return bernstein_ops._evaluate(normalized, coefficients, bounds, "linear")

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
