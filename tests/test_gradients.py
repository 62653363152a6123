"""The hand-written backward of `ops.bernstein_polynomial` against autodiff.

JAX and TensorFlow use the recomputing backward in training; it is portable
Keras code, so it is checked here on every backend against autodiff of the
plain evaluation, and both against central finite differences, in float64.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_bernstein import _formula
from keras_bernstein import ops as bernstein_ops

BACKEND = keras.backend.backend()


def backend_gradients(fn, arrays, weights):
    """Gradients of `sum(fn(*arrays) * weights)` with the backend's autodiff."""
    if BACKEND == "jax":
        import jax

        def loss(*args):
            return (fn(*args) * weights).sum()

        argnums = tuple(range(len(arrays)))
        return [np.asarray(g) for g in jax.grad(loss, argnums=argnums)(*arrays)]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        variables = [tf.Variable(a) for a in arrays]

        # Traced, as in training: there the polynomial is XLA-compiled.
        @tf.function
        def gradients():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(fn(*variables) * weights)
            return tape.gradient(loss, variables)

        return [g.numpy() for g in gradients()]
    import torch

    tensors = [
        a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor)
        else torch.tensor(a, requires_grad=True)
        for a in arrays
    ]
    (fn(*tensors) * torch.as_tensor(weights)).sum().backward()
    return [t.grad.float().numpy() for t in tensors]


@pytest.fixture(scope="module", autouse=True)
def float64_jax():
    if BACKEND == "jax":
        import jax

        previous = jax.config.jax_enable_x64
        jax.config.update("jax_enable_x64", True)
        yield
        jax.config.update("jax_enable_x64", previous)
    else:
        yield


def plain(extrapolation, degree):
    def evaluate(x, coefficients, bounds):
        return _formula._evaluate(x, coefficients, bounds, extrapolation)

    return evaluate


def implementation(name, extrapolation):
    """The recomputing backward under test: the portable one, or what
    `bernstein_polynomial` dispatches to on this backend (the in-place
    autograd node on PyTorch, the portable one on JAX, the portable one
    compiled by XLA on TensorFlow, where `backend_gradients` traces it).
    """
    if name == "lean":
        return bernstein_ops._with_lean_gradient(extrapolation)

    def dispatched(x, coefficients, bounds):
        return bernstein_ops.bernstein_polynomial(x, coefficients, bounds, extrapolation)

    return dispatched


@pytest.mark.parametrize("name", ["lean", "dispatched"])
@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
@pytest.mark.parametrize("degree", [1, 2, 5, 8, 16, 24])
def test_backward_matches_autodiff_and_finite_differences(name, extrapolation, degree):
    rng = np.random.default_rng(degree)
    x = rng.normal(size=(9, 4)) * 1.5
    if extrapolation == "polynomial":  # t**24 far outside swamps any difference
        x[0] = [-2.2, 2.3, 1.3, -1.6]
    else:  # far outside and just outside the bounds
        x[0] = [-7.0, 5.0, 1.3, -1.6]
    coefficients = rng.normal(size=(4, degree + 1))
    bounds = np.stack([rng.uniform(-2, -1, 4), rng.uniform(1, 2, 4)], -1)
    weights = rng.normal(size=(9, 4))
    lean = implementation(name, extrapolation)
    lean_grads = backend_gradients(lean, (x, coefficients, bounds), weights)
    plain_grads = backend_gradients(
        plain(extrapolation, degree), (x, coefficients, bounds), weights
    )
    for name, a, b in zip(("x", "coefficients", "bounds"), lean_grads, plain_grads):
        np.testing.assert_allclose(
            a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max(), err_msg=name
        )

    def loss(x_, c_, b_):
        values = bernstein_ops.bernstein_polynomial(x_, c_, b_, extrapolation)
        return float(np.sum(ops.convert_to_numpy(values) * weights))

    arrays = [x, coefficients, bounds]
    for index, grad in enumerate(lean_grads):
        shape = arrays[index].shape
        for position in [(0,) * len(shape), tuple(size - 1 for size in shape)]:
            assert_central_difference(loss, arrays, index, position, grad[position])


def assert_central_difference(loss, arrays, index, position, gradient, step=1e-6):
    """`gradient` of `loss(*arrays)` at `arrays[index][position]` against a
    central difference (float64)."""
    up = [a.copy() for a in arrays]
    down = [a.copy() for a in arrays]
    up[index][position] += step
    down[index][position] -= step
    loss_up, loss_down = loss(*up), loss(*down)
    numeric = (loss_up - loss_down) / (2 * step)
    # Rounding of the loss, divided by the step, bounds the FD error.
    rounding = 1e-7 * max(1.0, abs(loss_up))
    assert gradient == pytest.approx(numeric, rel=1e-5, abs=rounding)


@pytest.mark.parametrize("name", ["lean", "dispatched"])
@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
def test_backward_broadcasts_over_shared_axes(name, extrapolation):
    """Image-like input (batch, h, w, channels) with one polynomial per channel."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 4, 5, 2)) * 2.0
    coefficients = rng.normal(size=(1, 1, 2, 6))
    bounds = np.broadcast_to([-1.5, 1.25], (1, 1, 2, 2)).copy()
    weights = rng.normal(size=(3, 4, 5, 2))
    arrays = (x, coefficients, bounds)
    fast = backend_gradients(implementation(name, extrapolation), arrays, weights)
    plain_grads = backend_gradients(plain(extrapolation, 5), arrays, weights)
    for label, a, b in zip(("x", "coefficients", "bounds"), fast, plain_grads):
        assert a.shape == b.shape, label
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=label)


@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
@pytest.mark.parametrize("degree", [1, 8, 24])
def test_float32_backward_matches_float64_autodiff(extrapolation, degree):
    """The fast paths in float32 against the float64 formula, scaled by its size."""
    rng = np.random.default_rng(degree + 100)
    x = rng.normal(size=(64, 5)) * 1.5
    x[0] = [-7.0, 5.0, 1.3, -1.6, 0.0]
    coefficients = rng.normal(size=(5, degree + 1))
    bounds = np.stack([rng.uniform(-2, -1, 5), rng.uniform(1, 2, 5)], -1)
    weights = rng.normal(size=(64, 5))
    arrays32 = tuple(a.astype("float32") for a in (x, coefficients, bounds))
    reference = backend_gradients(
        plain(extrapolation, degree), (x, coefficients, bounds), weights
    )
    for name in ("lean", "dispatched"):
        fast = backend_gradients(
            implementation(name, extrapolation), arrays32, weights.astype("float32")
        )
        for label, a, b in zip(("x", "coefficients", "bounds"), fast, reference):
            assert a.dtype == np.float32, (name, label)
            scale = np.abs(b).max() + 1.0
            np.testing.assert_allclose(
                a, b, rtol=0, atol=5e-5 * scale, err_msg=f"{name} {label}"
            )


@pytest.mark.parametrize("dtype, tolerance", [("float16", 2e-2), ("bfloat16", 1e-1)])
@pytest.mark.parametrize("extrapolation", ["linear", "polynomial"])
def test_half_precision_backward_matches_float64_autodiff(dtype, tolerance, extrapolation):
    """Mixed precision: the fast paths in 16-bit against the float64 formula.

    The coefficient gradients are sums over 512 rows; the JAX path
    accumulates them in float32, so the error is that of the 16-bit inputs.
    (Not `"clip"`: its derivative jumps at the bounds, where 16-bit rounding
    of `t` moves points across.)
    """
    rng = np.random.default_rng(7)
    x = rng.normal(size=(512, 4))
    coefficients = rng.normal(size=(4, 9))
    bounds = np.broadcast_to([-2.0, 2.0], (4, 2)).copy()
    weights = rng.normal(size=(512, 4))
    # The float64 reference on the inputs as rounded to `dtype`.
    rounded = [
        ops.convert_to_numpy(ops.cast(ops.convert_to_tensor(a), dtype)).astype("float64")
        for a in (x, coefficients, bounds, weights)
    ]
    reference = backend_gradients(plain(extrapolation, 8), tuple(rounded[:3]), rounded[3])
    arrays = tuple(ops.cast(ops.convert_to_tensor(a), dtype) for a in rounded[:3])
    weights = ops.cast(ops.convert_to_tensor(rounded[3]), dtype)
    if BACKEND == "tensorflow":
        arrays = tuple(ops.convert_to_numpy(a) for a in arrays)
    for name in ("lean", "dispatched"):
        fast = backend_gradients(implementation(name, extrapolation), arrays, weights)
        for label, a, b in zip(("x", "coefficients", "bounds"), fast, reference):
            scale = np.abs(b).max() + 1.0
            np.testing.assert_allclose(
                np.asarray(a, dtype="float64"), b, rtol=0, atol=tolerance * scale,
                err_msg=f"{name} {label} {dtype}",
            )


@pytest.mark.skipif(BACKEND != "torch", reason="the row-chunked backward is PyTorch's")
@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
@pytest.mark.parametrize("limit", [50, 1])
def test_torch_backward_in_row_chunks_matches_autodiff(extrapolation, limit, monkeypatch):
    """Large batches sum the coefficient gradient in chunks of rows."""
    from keras_bernstein._fast import torch_polynomial

    monkeypatch.setattr(torch_polynomial, "_MAX_BUFFER_ELEMENTS", limit)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(37, 3, 5)) * 2.5
    coefficients = rng.normal(size=(1, 5, 7))
    bounds = np.broadcast_to([-2.0, 1.5], (1, 5, 2)).copy()
    weights = rng.normal(size=(37, 3, 5))
    arrays = (x, coefficients, bounds)
    fast = backend_gradients(implementation("dispatched", extrapolation), arrays, weights)
    reference = backend_gradients(plain(extrapolation, 6), arrays, weights)
    for label, a, b in zip(("x", "coefficients", "bounds"), fast, reference):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=label)


@pytest.mark.skipif(BACKEND != "jax", reason="the JAX backward's accelerator form")
@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
def test_jax_accelerator_form_matches_autodiff(extrapolation, monkeypatch):
    """Off CPU the JAX backward takes separate sums and no barrier; same result."""
    from keras_bernstein._fast import jax_reductions

    monkeypatch.setattr(jax_reductions, "_on_cpu", lambda: False)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(9, 4)) * 1.5
    x[0] = [-7.0, 5.0, 1.3, -1.6]
    coefficients = rng.normal(size=(4, 7))
    bounds = np.stack([rng.uniform(-2, -1, 4), rng.uniform(1, 2, 4)], -1)
    weights = rng.normal(size=(9, 4))
    arrays = (x, coefficients, bounds)
    # A fresh function: the cached one may have been traced with the CPU form.
    lean = bernstein_ops._with_lean_gradient.__wrapped__(extrapolation)
    fast = backend_gradients(lean, arrays, weights)
    reference = backend_gradients(plain(extrapolation, 6), arrays, weights)
    for label, a, b in zip(("x", "coefficients", "bounds"), fast, reference):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=label)


@pytest.mark.skipif(BACKEND != "jax", reason="the JAX backward's accelerator form")
@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
@pytest.mark.parametrize("function", ["plain", "normalized", "batch_normalized"])
@pytest.mark.parametrize("shape", [(37, 4), (7, 3, 4)])
def test_jax_accelerator_sums_in_row_chunks_match_autodiff(
    extrapolation, function, shape, monkeypatch
):
    """Off CPU a large batch's sums are taken in row chunks: a scan over whole
    chunks, then the rows left over (37 and 7 rows: prime, so some are left
    over wherever chunks of more than one row fit); same gradients as
    autodiff."""
    import jax

    from keras_bernstein._fast import jax_reductions

    monkeypatch.setattr(jax_reductions, "_on_cpu", lambda: False)
    # 7 to 11 float64 products per element: chunks of 4 to 6 rows of 4
    # elements, 1 or 2 rows of (3, 4).
    monkeypatch.setattr(jax_reductions, "MAX_STORED_PRODUCT_BYTES", 1500)
    scans = []
    scan = jax.lax.scan
    monkeypatch.setattr(jax.lax, "scan", lambda *a, **k: scans.append(1) or scan(*a, **k))
    arrays, weights = normalized_case(extrapolation, 6, shape)
    if function == "plain":
        arrays = [arrays[0], arrays[3], arrays[4]]
        fast = bernstein_ops._with_lean_gradient.__wrapped__(extrapolation)
        reference = plain(extrapolation, 6)
    else:
        fast = batch_normalized(extrapolation, True if function == "normalized" else "statistics")
        reference = batch_normalized(extrapolation, False)
    fast_grads = backend_gradients(fast, arrays, weights)
    assert scans, "the sums were not taken in chunks"
    for index, (a, b) in enumerate(zip(fast_grads, backend_gradients(reference, arrays, weights))):
        np.testing.assert_allclose(
            a, b, rtol=1e-10, atol=1e-10 * (np.abs(b).max() + 1.0), err_msg=str(index)
        )


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's backward branches on what needs a gradient")
@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
@pytest.mark.parametrize("wanted", ["x", "parameters"])
def test_torch_backward_for_a_frozen_polynomial_or_a_constant_input(extrapolation, wanted):
    """With frozen coefficients and bounds the input gradient comes from a Horner
    pass; with a constant input only the parameters' gradients are formed."""
    import torch

    rng = np.random.default_rng(5)
    x = rng.normal(size=(13, 4)) * 2.0
    x[0] = [-9.0, 9.0, -1.5, 0.5]
    arrays = (x, rng.normal(size=(4, 6)), np.broadcast_to([-1.5, 2.0], (4, 2)).copy())
    weights = rng.normal(size=(13, 4))
    reference = backend_gradients(plain(extrapolation, 5), arrays, weights)
    tensors = [torch.tensor(a) for a in arrays]
    wanted_positions = (0,) if wanted == "x" else (1, 2)
    for i in wanted_positions:
        tensors[i].requires_grad_()
    values = bernstein_ops.bernstein_polynomial(*tensors, extrapolation)
    (values * torch.as_tensor(weights)).sum().backward()
    for i in range(3):
        if i in wanted_positions:
            # `backend_gradients` returns float32 copies of float64 gradients.
            np.testing.assert_allclose(
                tensors[i].grad.float().numpy(), reference[i], rtol=1e-6, atol=1e-6
            )
        else:
            assert tensors[i].grad is None


def batch_normalized(extrapolation, fused):
    """`σ(BN(x))` with batch statistics over all axes but the last: the fused
    `normalized_bernstein_polynomial` (`fused=True`), the fused
    `batch_normalized_bernstein_polynomial`, which also takes the statistics
    and their gradient (`fused="statistics"`), or the plain formula for
    autodiff (`fused=False`)."""

    def evaluate(x, scale, offset, coefficients, bounds):
        if fused == "statistics":
            return bernstein_ops.batch_normalized_bernstein_polynomial(
                x, scale, offset, coefficients, bounds, 1e-3, extrapolation
            )[0]
        mean, variance = ops.moments(x, axes=tuple(range(len(x.shape) - 1)))
        inverse_deviation = ops.rsqrt(variance + 1e-3)
        if fused:
            return bernstein_ops.normalized_bernstein_polynomial(
                x, mean, inverse_deviation, scale, offset, coefficients, bounds, extrapolation
            )
        normalized = (x - mean) * inverse_deviation * scale + offset
        return _formula._evaluate(normalized, coefficients, bounds, extrapolation)

    return evaluate


def normalized_case(extrapolation, degree, shape):
    """`([x, scale, offset, coefficients, bounds], weights)` for the batch-
    normalized polynomial, float64, four units."""
    rng = np.random.default_rng(degree + len(shape))
    x = rng.normal(0.5, 2.0, size=shape)
    # Unit 0 scaled far past the bounds (linear and clip) or just past them.
    scale = np.array([3.0 if extrapolation != "polynomial" else 1.3, 1.0, 0.7, -0.8])
    offset = rng.normal(size=4) * 0.3
    coefficients = rng.normal(size=(1,) * (len(shape) - 2) + (4, degree + 1))
    bounds = np.stack([rng.uniform(-2, -1, 4), rng.uniform(1, 2, 4)], -1).reshape(
        coefficients.shape[:-1] + (2,)
    )
    weights = rng.normal(size=shape)
    return [x, scale, offset, coefficients, bounds], weights


@pytest.mark.parametrize("fused", [True, "statistics"])
@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
@pytest.mark.parametrize("degree", [1, 2, 8, 24])
@pytest.mark.parametrize("shape", [(9, 4), (3, 5, 4)])
def test_normalized_backward_matches_autodiff_and_finite_differences(
    fused, extrapolation, degree, shape
):
    """Batch normalization and polynomial as one function (the TensorFlow
    `BernsteinDense` in training takes `"statistics"`): gradients for the
    input, the normalization's scale and offset, the coefficients and the
    bounds, through the batch statistics, against autodiff of the plain
    formula and central differences."""
    function = batch_normalized(extrapolation, fused)
    arrays, weights = normalized_case(extrapolation, degree, shape)
    fused = backend_gradients(function, arrays, weights)
    reference = backend_gradients(batch_normalized(extrapolation, False), arrays, weights)
    labels = ("x", "scale", "offset", "coefficients", "bounds")
    for label, a, b in zip(labels, fused, reference):
        assert a.shape == b.shape, label
        np.testing.assert_allclose(
            a, b, rtol=1e-9, atol=1e-9 * (np.abs(b).max() + 1.0), err_msg=label
        )

    def loss(*values):
        outputs = function(*[ops.convert_to_tensor(v) for v in values])
        return float(np.sum(ops.convert_to_numpy(outputs) * weights))

    for index in (0, 1):
        position = (0,) * arrays[index].ndim
        assert_central_difference(loss, list(arrays), index, position, fused[index][position])


@pytest.mark.parametrize(
    "dtype, tolerance", [("float32", 5e-5), ("float16", 3e-2), ("bfloat16", 1.5e-1)]
)
@pytest.mark.parametrize("extrapolation", ["linear", "polynomial"])
@pytest.mark.parametrize("degree", [1, 8, 24])
def test_batch_normalized_low_precision_backward_matches_float64_autodiff(
    dtype, tolerance, extrapolation, degree
):
    """`batch_normalized_bernstein_polynomial` in float32 and 16 bits (mixed
    precision) against autodiff of the float64 formula on the same rounded
    inputs, scaled by the gradients' size. (Not `"clip"`: its derivative
    jumps at the bounds, where rounding moves points across.)"""
    if dtype != "float32" and degree == 24:
        pytest.skip("16-bit powers of t underflow at degree 24 in both formulas")
    arrays, weights = normalized_case(extrapolation, degree, (256, 4))
    rounded = [
        ops.convert_to_numpy(ops.cast(ops.convert_to_tensor(a), dtype)).astype("float64")
        for a in arrays + [weights]
    ]
    reference = backend_gradients(
        batch_normalized(extrapolation, False), rounded[:5], rounded[5]
    )
    low = [ops.cast(ops.convert_to_tensor(a), dtype) for a in rounded]
    if BACKEND == "tensorflow":
        low = [ops.convert_to_numpy(a) for a in low]
    fast = backend_gradients(batch_normalized(extrapolation, "statistics"), low[:5], low[5])
    labels = ("x", "scale", "offset", "coefficients", "bounds")
    for label, a, b in zip(labels, fast, reference):
        scale = np.abs(b).max() + 1.0
        np.testing.assert_allclose(
            np.asarray(a, dtype="float64"), b, rtol=0, atol=tolerance * scale,
            err_msg=f"{label} {dtype}",
        )


def torch_loss(function, weights):
    """`sum(function(*arrays) * weights)` as a float, evaluated on tensors
    that require gradients: the compiled training graph, not a second
    (inference) compilation."""
    import torch

    def loss(*arrays):
        tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
        return float((function(*tensors).detach().numpy() * weights).sum())

    return loss


@pytest.mark.parametrize(
    "extrapolation, degree",
    [(e, d) for e in ("linear", "clip", "polynomial") for d in (1, 2, 8)] + [("linear", 16)],
)
def test_torch_compiled_backward_matches_autodiff_and_finite_differences(
    extrapolation, degree, torch_compiled
):
    """PyTorch-CPU's default path: `ops._evaluate` compiled by TorchInductor,
    with AOTAutograd's backward, against eager autodiff of the same formula
    and central differences, in float64 (degrees above
    `torch_compilation.MAX_DEGREE` run the eager kernels tested above)."""
    rng = np.random.default_rng(degree)
    x = rng.normal(size=(9, 4)) * 1.5
    x[0] = [-7.0, 5.0, 1.3, -1.6] if extrapolation != "polynomial" else [-2.2, 2.3, 1.3, -1.6]
    coefficients = rng.normal(size=(4, degree + 1))
    bounds = np.stack([rng.uniform(-2, -1, 4), rng.uniform(1, 2, 4)], -1)
    weights = rng.normal(size=(9, 4))
    arrays = [x, coefficients, bounds]
    compiled = backend_gradients(implementation("dispatched", extrapolation), arrays, weights)
    assert torch_compiled == ["_evaluate"]
    reference = backend_gradients(plain(extrapolation, degree), arrays, weights)
    for label, a, b in zip(("x", "coefficients", "bounds"), compiled, reference):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max(), err_msg=label)
    loss = torch_loss(implementation("dispatched", extrapolation), weights)
    for index, grad in enumerate(compiled):
        shape = arrays[index].shape
        for position in [(0,) * len(shape), tuple(size - 1 for size in shape)]:
            assert_central_difference(loss, arrays, index, position, grad[position])


@pytest.mark.parametrize(
    "dtype, extrapolation, tolerance",
    [("float32", e, 5e-5) for e in ("linear", "clip", "polynomial")]
    + [("float16", "linear", 2e-2), ("bfloat16", "linear", 1e-1)],
)
def test_torch_compiled_low_precision_backward_matches_float64_autodiff(
    dtype, extrapolation, tolerance, torch_compiled
):
    """The compiled polynomial in float32 and in the 16-bit types of mixed
    precision, against the float64 formula on the same rounded inputs."""
    import torch

    rng = np.random.default_rng(17)
    x = rng.normal(size=(512, 4)) * 1.5
    x[0] = [-7.0, 5.0, 1.3, -1.6]
    arrays = [x, rng.normal(size=(4, 7)), np.broadcast_to([-2.0, 2.0], (4, 2)).copy()]
    weights = rng.normal(size=(512, 4))
    rounded = [torch.tensor(a).to(getattr(torch, dtype)) for a in arrays + [weights]]
    reference = backend_gradients(
        plain(extrapolation, 6), [r.double().numpy() for r in rounded[:3]], rounded[3].double()
    )
    compiled = backend_gradients(
        implementation("dispatched", extrapolation), rounded[:3], rounded[3]
    )
    assert torch_compiled == ["_evaluate"]
    for label, a, b in zip(("x", "coefficients", "bounds"), compiled, reference):
        scale = np.abs(b).max() + 1.0
        np.testing.assert_allclose(
            np.asarray(a, "float64"), b, rtol=0, atol=tolerance * scale, err_msg=label
        )


@pytest.mark.parametrize(
    "extrapolation, degree, shape",
    [(e, d, (9, 4)) for e in ("linear", "clip", "polynomial") for d in (1, 8)]
    + [("linear", 3, (3, 5, 4))],
)
def test_torch_compiled_batch_normalized_backward_matches_autodiff(
    extrapolation, degree, shape, torch_compiled
):
    """`BernsteinDense`'s training function on PyTorch-CPU: batch statistics,
    normalization and polynomial compiled as one, against eager autodiff of
    the plain formula and central differences (float64); the returned batch
    mean and variance against NumPy's."""
    arrays, weights = normalized_case(extrapolation, degree, shape)
    x = arrays[0]

    def compiled_function(*tensors):
        return bernstein_ops.batch_normalized_bernstein_polynomial(
            *tensors, epsilon=1e-3, extrapolation=extrapolation
        )

    compiled = backend_gradients(lambda *t: compiled_function(*t)[0], arrays, weights)
    assert torch_compiled == ["_evaluate_batch_normalized"]
    reference = backend_gradients(batch_normalized(extrapolation, False), arrays, weights)
    for label, a, b in zip(("x", "scale", "offset", "coefficients", "bounds"), compiled, reference):
        assert a.shape == b.shape, label
        np.testing.assert_allclose(
            a, b, rtol=1e-9, atol=1e-9 * (np.abs(b).max() + 1.0), err_msg=label
        )
    _, mean, variance = compiled_function(*[ops.convert_to_tensor(a) for a in arrays])
    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(ops.convert_to_numpy(mean), x.mean(axes), rtol=1e-12)
    np.testing.assert_allclose(ops.convert_to_numpy(variance), x.var(axes), rtol=1e-12)
    loss = torch_loss(lambda *t: compiled_function(*t)[0], weights)
    for index in (0, 1):
        position = (0,) * arrays[index].ndim
        assert_central_difference(loss, arrays, index, position, compiled[index][position])


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's compilation probe")
def test_torch_falls_back_to_eager_kernels_when_compilation_fails(monkeypatch):
    """Without a working compiler the polynomial runs eagerly, after one warning."""
    import torch

    from keras_bernstein._fast import torch_compilation

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setenv("KERAS_BERNSTEIN_TORCH_COMPILE", "1")
    monkeypatch.setattr(torch_compilation, "_compiler_works", None)
    monkeypatch.setattr(torch, "compile", broken_compile)
    x = torch.linspace(-4.0, 4.0, 12).reshape(6, 2)
    coefficients = torch.tensor([[0.0, 1.0, 3.0], [1.0, -1.0, 2.0]])
    bounds = torch.tensor([[-2.0, 2.0], [-1.0, 3.0]])
    with pytest.warns(UserWarning, match="no C.. compiler"):
        values = bernstein_ops.bernstein_polynomial(x, coefficients, bounds)
    expected = _formula._evaluate(x, coefficients, bounds, "linear")
    np.testing.assert_allclose(values.numpy(), expected.numpy(), rtol=1e-6)
    assert not torch_compilation.supports(x, 2)


def kernels_built(degree):
    """Builds the C++ kernels of `degree` (`_fast/cpu_kernels`) and checks
    that the build worked."""
    from keras_bernstein._fast import cpu_kernels

    assert cpu_kernels._library(degree) is not None, "no kernel built"


def kernel_case(rows, units, degree, seed, on_bounds=True):
    """float32 arrays for the kernel: points far outside, inside and (with
    `on_bounds`) on the bounds, per-neuron coefficients and bounds."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, units)) * 1.5
    bounds = np.stack([rng.uniform(-2, -1, units), rng.uniform(1, 2, units)], -1)
    x[0, ::2] = -7.0
    x[0, 1::2] = 9.0
    if on_bounds:
        x[1] = bounds[:, 0]
        x[2] = bounds[:, 1]
    coefficients = rng.normal(size=(units, degree + 1))
    weights = rng.normal(size=(rows, units))
    return tuple(a.astype("float32") for a in (x, coefficients, bounds, weights))


def xla_and_kernel_gradients(function, arrays, weights, monkeypatch):
    """`backend_gradients` of `function` with the kernels off (XLA's code),
    then on (each traced afresh)."""
    results = []
    for setting in ("0", "1"):
        monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", setting)
        results.append(backend_gradients(function, arrays, weights))
    return results


@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
@pytest.mark.parametrize("degree", [1, 2, 3, 5, 8, 13, 16, 24])
def test_cpu_kernels_match_the_portable_backward(extrapolation, degree, kernel_targets, monkeypatch):
    """The C++ kernels' values and gradients against the XLA code they
    replace (same formulas: to float32 rounding, points on the bounds included) and against
    float64 autodiff (off the bounds, where autodiff of `clip` takes a side
    of its own). 37 neurons: two vector blocks of 16 and five left over."""
    kernels_built(degree)
    function = implementation("dispatched", extrapolation)
    for on_bounds in (True, False):
        x, coefficients, bounds, weights = kernel_case(
            300, 37, degree, seed=degree, on_bounds=on_bounds
        )
        if extrapolation == "polynomial":  # t**24 far outside overflows float32
            x[0] = 0.5
        xla, kernel = xla_and_kernel_gradients(
            function, (x, coefficients, bounds), weights, monkeypatch
        )
        for label, a, b in zip(("x", "coefficients", "bounds"), kernel, xla):
            assert a.dtype == np.float32 and a.shape == b.shape, label
            scale = np.abs(b).max() + 1.0
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale, err_msg=label)
    assert sorted(set(kernel_targets)) == [(degree, extrapolation, kind) for kind in ("Gradient", "Values")]
    monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", "1")
    values = function(x, coefficients, bounds)
    expected = plain(extrapolation, degree)(x, coefficients, bounds)
    np.testing.assert_allclose(
        values, expected, rtol=0, atol=1e-5 * (np.abs(expected).max() + 1.0)
    )
    reference = backend_gradients(
        plain(extrapolation, degree),
        tuple(a.astype("float64") for a in (x, coefficients, bounds)),
        weights.astype("float64"),
    )
    for label, a, exact in zip(("x", "coefficients", "bounds"), kernel, reference):
        scale = np.abs(exact).max() + 1.0
        np.testing.assert_allclose(a, exact, rtol=0, atol=5e-5 * scale, err_msg=label)


@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
@pytest.mark.parametrize("degree", [1, 2, 8, 24])
def test_cpu_batch_normalized_kernels_match_the_portable_code(extrapolation, degree, kernel_targets, monkeypatch):
    """`batch_normalized_bernstein_polynomial` as C++ kernels (statistics,
    normalization and polynomial; the batch normalization's whole backward):
    values, statistics and the five gradients against the XLA code (float32
    rounding) and against float64 autodiff of the plain formula. 37 neurons:
    two vector blocks and five single ones."""
    kernels_built(degree)
    rng = np.random.default_rng(degree)
    units = 37
    x = rng.normal(0.5, 2.0, size=(300, units))
    x[0, :5] = [40.0, -40.0, 6.0, -6.0, 0.0]  # far past the bounds
    scale = rng.uniform(0.5, 1.5, units) * np.where(np.arange(units) % 3, 1.0, -1.0)
    offset = rng.normal(size=units) * 0.3
    coefficients = rng.normal(size=(units, degree + 1))
    bounds = np.stack([rng.uniform(-2, -1, units), rng.uniform(1, 2, units)], -1)
    weights = rng.normal(size=(300, units))
    if extrapolation == "polynomial":  # t**24 far outside overflows float32
        x[0, :5] = 0.5
    arrays = [a.astype("float32") for a in (x, scale, offset, coefficients, bounds)]
    function = batch_normalized(extrapolation, "statistics")

    def forward(*arrays):
        return [
            np.asarray(a)
            for a in bernstein_ops.batch_normalized_bernstein_polynomial(
                *arrays, 1e-3, extrapolation
            )
        ]

    results = []
    for setting in ("0", "1"):
        monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", setting)
        results.append(
            (forward(*arrays), backend_gradients(function, arrays, weights.astype("float32")))
        )
    (xla_outputs, xla), (kernel_outputs, kernel) = results
    assert {"BatchNormalizedGradient", "BatchNormalizedValues"} <= {kind for *_, kind in kernel_targets}
    for label, a, b in zip(("values", "mean", "variance"), kernel_outputs, xla_outputs):
        np.testing.assert_allclose(
            a, b, rtol=0, atol=1e-5 * (np.abs(b).max() + 1.0), err_msg=label
        )
    reference = backend_gradients(
        batch_normalized(extrapolation, False),
        [a.astype("float64") for a in arrays],
        weights,
    )
    labels = ("x", "scale", "offset", "coefficients", "bounds")
    for label, a, b, exact in zip(labels, kernel, xla, reference):
        assert a.dtype == np.float32 and a.shape == b.shape, label
        size = np.abs(exact).max() + 1.0
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * size, err_msg=label)
        np.testing.assert_allclose(a, exact, rtol=0, atol=5e-5 * size, err_msg=label)


@pytest.mark.parametrize("function", ["plain", "batch_normalized"])
def test_cpu_kernels_with_shared_axes(function, kernel_targets, monkeypatch):
    """Tables whose leading neuron axes are shared (size 1), as `Bernstein`
    with `shared_axes` and `BernsteinDense` on N-D inputs build them: the
    kernels run and agree with the XLA code, gradients in the tables' shape."""
    kernels_built(6)
    rng = np.random.default_rng(4)
    units = 37
    if function == "plain":
        shape, table_shape = (3, 5, 7, units), (1, 1, units)
        implementation_under_test = implementation("dispatched", "linear")
        arrays = [rng.normal(size=shape) * 1.5]
    else:
        shape, table_shape = (20, 15, units), (1, units)
        implementation_under_test = batch_normalized("linear", "statistics")
        arrays = [
            rng.normal(0.5, 2.0, size=shape),
            rng.uniform(0.5, 1.5, units),
            rng.normal(size=units) * 0.3,
        ]
    arrays += [
        rng.normal(size=table_shape + (7,)),
        np.broadcast_to([-1.5, 2.0], table_shape + (2,)).copy(),
    ]
    arrays = [a.astype("float32") for a in arrays]
    weights = rng.normal(size=shape).astype("float32")
    xla, kernel = xla_and_kernel_gradients(
        implementation_under_test, arrays, weights, monkeypatch
    )
    expected_kind = "Gradient" if function == "plain" else "BatchNormalizedGradient"
    assert expected_kind in {kind for *_, kind in kernel_targets}
    for index, (a, b) in enumerate(zip(kernel, xla)):
        assert a.shape == b.shape == arrays[index].shape, index
        scale = np.abs(b).max() + 1.0
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale, err_msg=str(index))


def test_cpu_kernels_on_many_threads_and_batch_axes(kernel_targets, monkeypatch):
    """A batch large enough to be split over the intra-op threads (when
    there are several), with two batch axes and a NaN, against the XLA backward."""
    kernels_built(8)
    x, coefficients, bounds, weights = kernel_case(1000, 150, 8, seed=5)
    x[5, 7] = np.nan
    x, weights = x.reshape(10, 100, 150), weights.reshape(10, 100, 150)
    function = implementation("dispatched", "linear")
    xla, kernel = xla_and_kernel_gradients(
        function, (x, coefficients, bounds), weights, monkeypatch
    )
    for label, a, b in zip(("x", "coefficients", "bounds"), kernel, xla):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=label)
        scale = np.nanmax(np.abs(b)) + 1.0
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * scale, err_msg=label)


def penalty_gradients(function, arrays, weights):
    """Gradients of the gradient penalty `sum(g**2)` over the gradients `g`
    of `sum(function(*arrays) * weights)`, by the backend's autodiff."""
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        argnums = tuple(range(len(arrays)))

        def penalty(*arrays):
            def loss(*arrays):
                return jnp.sum(function(*arrays) * weights)

            gradients = jax.grad(loss, argnums=argnums)(*arrays)
            return sum(jnp.sum(g**2) for g in gradients)

        gradients = jax.jit(jax.grad(penalty, argnums=argnums))(*arrays)
        return [np.asarray(g) for g in gradients]
    if BACKEND == "torch":
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in arrays]
        loss = (function(*tensors) * torch.as_tensor(weights)).sum()
        gradients = torch.autograd.grad(loss, tensors, create_graph=True)
        penalty = sum((g**2).sum() for g in gradients)
        gradients = torch.autograd.grad(penalty, tensors, allow_unused=True)
        return [
            np.zeros(a.shape, a.dtype) if g is None else g.numpy()
            for a, g in zip(arrays, gradients)
        ]
    import tensorflow as tf

    variables = [tf.Variable(a) for a in arrays]

    @tf.function
    def gradients():
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = tf.reduce_sum(function(*variables) * weights)
            penalty = sum(tf.reduce_sum(g**2) for g in inner.gradient(loss, variables))
        return outer.gradient(penalty, variables)

    return [g.numpy() for g in gradients()]


def penalty_case(function, extrapolation, degree):
    """`(dispatched, plain, arrays, weights)` in float32: the polynomial
    (`"plain"`), or `σ(BN(x))` through `normalized_bernstein_polynomial`
    (`"normalized"`) or `batch_normalized_bernstein_polynomial`
    (`"batch_normalized"`), with the plain formula for autodiff. No point lies
    on a bound, where the clipped derivatives jump."""
    if function == "plain":
        x, coefficients, bounds, weights = kernel_case(
            40, 6, degree, seed=2, on_bounds=False
        )
        return (
            implementation("dispatched", extrapolation),
            plain(extrapolation, degree),
            (x, coefficients, bounds),
            weights,
        )
    arrays, weights = normalized_case(extrapolation, degree, (40, 4))
    fused = True if function == "normalized" else "statistics"
    return (
        batch_normalized(extrapolation, fused),
        batch_normalized(extrapolation, False),
        tuple(a.astype("float32") for a in arrays),
        weights.astype("float32"),
    )


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("function", ["plain", "normalized", "batch_normalized"])
@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
def test_gradient_penalty_matches_float64_autodiff(
    extrapolation, function, compiled, request
):
    """A gradient penalty differentiates the gradient again (PyTorch:
    `create_graph=True`), through each backend's fast path (compiled by
    TorchInductor or not on PyTorch); against autodiff of the plain formula
    in float64."""
    if compiled:
        names = request.getfixturevalue("torch_compiled")
    degree = 3
    dispatched, reference, arrays, weights = penalty_case(function, extrapolation, degree)
    fast = penalty_gradients(dispatched, arrays, weights)
    if compiled:
        assert names, "nothing ran compiled"
    exact = penalty_gradients(
        reference, tuple(a.astype("float64") for a in arrays), weights.astype("float64")
    )
    for index, (a, b) in enumerate(zip(fast, exact)):
        assert a.shape == b.shape, index
        scale = np.abs(b).max() + 1.0
        np.testing.assert_allclose(a, b, rtol=0, atol=5e-5 * scale, err_msg=str(index))


@pytest.mark.parametrize("extrapolation", ["linear", "clip"])
def test_cpu_kernel_gradient_is_differentiable(extrapolation, kernel_targets, monkeypatch):
    """A gradient penalty differentiates the gradient again: through the
    kernels, by the portable backward's derivative; against autodiff of the
    plain formula in float64."""
    kernels_built(5)
    x, coefficients, bounds, weights = kernel_case(40, 20, 5, seed=2, on_bounds=False)
    monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", "1")
    kernel = penalty_gradients(
        implementation("dispatched", extrapolation), (x, coefficients, bounds), weights
    )
    assert "Gradient" in {kind for *_, kind in kernel_targets}
    exact = penalty_gradients(
        plain(extrapolation, 5),
        tuple(a.astype("float64") for a in (x, coefficients, bounds)),
        weights.astype("float64"),
    )
    for label, a, b in zip(("x", "coefficients", "bounds"), kernel, exact):
        scale = np.abs(b).max() + 1.0
        np.testing.assert_allclose(a, b, rtol=0, atol=5e-5 * scale, err_msg=label)


def test_tensorflow_kernels_refuse_inputs_of_other_sizes(kernel_targets):
    """The TensorFlow ops check the sizes they read (they are reachable from
    Python and from saved graphs), and fail with InvalidArgumentError."""
    if BACKEND != "tensorflow":
        pytest.skip("TensorFlow's ops")
    import tensorflow as tf

    from keras_bernstein._fast import cpu_kernels

    library = cpu_kernels._library(3)
    assert library is not None, "no kernel built"
    values = library.keras_bernstein_values3
    normalized = library.keras_bernstein_batch_normalized_values3
    units = np.zeros(5, "float32")
    good = dict(
        x=np.ones((4, 5), "float32"),
        bounds=np.tile(np.array([-1.0, 1.0], "float32"), (5, 1)),
        columns=np.ones((4, 5), "float32"),
        slope_lower=units,
        bend=units,
    )
    linear = cpu_kernels.mode_index("linear")
    assert values(**good, mode=linear).shape == (4, 5)
    wrong_inputs = [
        dict(x=np.ones((4, 6), "float32")),
        dict(bounds=np.ones((5, 3), "float32")),
        dict(columns=np.ones((3, 5), "float32")),
        dict(slope_lower=np.zeros(4, "float32")),
    ]
    for wrong in wrong_inputs:
        with pytest.raises(tf.errors.InvalidArgumentError):
            values(**{**good, **wrong}, mode=linear)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must end in 5"):
        normalized(
            np.ones((5, 4), "float32"), units, units, good["bounds"], good["columns"],
            units, units, mode=linear, epsilon=1e-3,
        )
    # A mode that `_formula.EXTRAPOLATION_MODES` does not number.
    with pytest.raises(tf.errors.InvalidArgumentError, match="unknown extrapolation mode"):
        values(**good, mode=len(bernstein_ops.EXTRAPOLATION_MODES))


@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
def test_tensorflow_kernels_write_over_their_inputs_correctly(extrapolation, kernel_targets):
    """Inside a graph the ops may write their output over the input `x`
    (values) or the upstream gradient (gradients) when nothing else holds
    it; the results equal those of eager calls on tensors held elsewhere."""
    if BACKEND != "tensorflow":
        pytest.skip("TensorFlow's ops")
    import tensorflow as tf

    from keras_bernstein._fast import cpu_kernels

    library = cpu_kernels._library(3)
    assert library is not None, "no kernel built"
    x, coefficients, bounds, weights = kernel_case(300, 37, 3, seed=7)
    bounds, columns, slope_lower, bend = (
        t.numpy() for t in cpu_kernels._flat_tables(tf.constant(coefficients), tf.constant(bounds))
    )
    slopes = cpu_kernels._slope_table(tf.constant(coefficients)).numpy()
    units = np.linspace(0.5, 1.5, 37).astype("float32")
    mode = cpu_kernels.mode_index(extrapolation)
    calls = {
        "values": lambda x, g: library.keras_bernstein_values3(
            x, bounds, columns, slope_lower, bend, mode=mode
        ),
        "gradient": lambda x, g: library.keras_bernstein_gradient3(
            x, g, bounds, slopes, mode=mode
        ),
        "batch_normalized_values": lambda x, g: library.keras_bernstein_batch_normalized_values3(
            x, units, units - 1.0, bounds, columns, slope_lower, bend,
            mode=mode, epsilon=1e-3,
        ),
        "batch_normalized_gradient": lambda x, g: (
            library.keras_bernstein_batch_normalized_gradient3(
                x, g, units - 1.0, units, units, units - 1.0, bounds, slopes,
                mode=mode, epsilon=1e-3,
            )
        ),
    }
    for name, call in calls.items():
        held = [a.numpy() for a in tf.nest.flatten(call(tf.constant(x + 0.5), weights * 2.0))]

        @tf.function
        def fresh(x, weights):
            return tf.nest.flatten(call(x + 0.5, weights * 2.0))  # only the op holds them

        for a, b in zip(fresh(tf.constant(x), tf.constant(weights)), held):
            np.testing.assert_array_equal(a.numpy(), b, err_msg=name)


def test_cpu_kernels_fall_back_when_the_build_fails(monkeypatch):
    """Without a working compiler the portable backward runs, after one
    warning."""
    if BACKEND not in ("jax", "tensorflow"):
        pytest.skip("the C++ kernels are JAX's and TensorFlow's")
    from keras_bernstein._fast import cpu_kernels

    def broken_build(degree):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(cpu_kernels, "_build", broken_build)
    monkeypatch.setattr(cpu_kernels, "_libraries", {})
    monkeypatch.setattr(cpu_kernels, "_warned", False)
    monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", "1")
    x, coefficients, bounds, weights = kernel_case(30, 4, 3, seed=1)
    function = implementation("dispatched", "linear")
    with pytest.warns(UserWarning, match="no C.. compiler found"):
        fallback = backend_gradients(function, (x, coefficients, bounds), weights)
    assert cpu_kernels._libraries == {3: None}
    monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", "0")
    portable = backend_gradients(function, (x, coefficients, bounds), weights)
    for label, a, b in zip(("x", "coefficients", "bounds"), fallback, portable):
        np.testing.assert_array_equal(a, b, err_msg=label)
