"""Layers, initializers and `ops` refuse what they cannot compute, with the
same `ValueError` on every backend; weights are checked where they are set."""

import math
import re
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

from keras_bernstein import _arguments
from keras_bernstein import Bernstein
from keras_bernstein import BernsteinDense
from keras_bernstein import initializers
from keras_bernstein import ops as bernstein_ops
from keras_bernstein import sos
from keras_bernstein import transforms
from keras_bernstein._arguments import MAX_DEGREE
from keras_bernstein._arguments import describe


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x), dtype="float64")


def _raises(message, function, *args, **kwargs):
    """`function(*args, **kwargs)` raises a `ValueError` with exactly `message`."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        function(*args, **kwargs)


# --- Degree ---------------------------------------------------------------


def _degree_message(value, name="degree", minimum=1):
    return (
        f"`{name}` must be an integer from {minimum} to {MAX_DEGREE} (above "
        f"{MAX_DEGREE} float32 cannot evaluate the polynomial and its "
        f"gradients accurately). Received: {name}={value!r}"
    )


@pytest.mark.parametrize("degree", [MAX_DEGREE + 1, 132, 10**6, 0, -1, 2.0, True, "8"])
def test_layers_refuse_degrees_outside_the_limit(degree):
    _raises(_degree_message(degree), Bernstein, degree=degree)
    _raises(_degree_message(degree), BernsteinDense, 4, degree=degree)


def test_functions_refuse_degrees_outside_the_limit():
    t = np.linspace(0.0, 1.0, 5)
    for degree in (MAX_DEGREE + 1, -1, 2.5, True):
        _raises(_degree_message(degree, minimum=0), bernstein_ops.bernstein_basis, t, degree)
        _raises(_degree_message(degree, minimum=0), bernstein_ops.binomial_coefficients, degree)
    _raises(_degree_message(0), bernstein_ops.bernstein_nodes, 0)
    _raises(_degree_message(MAX_DEGREE + 1), bernstein_ops.bernstein_nodes, MAX_DEGREE + 1)
    _raises(
        f"`new_degree` must be an integer from the current degree 2 to {MAX_DEGREE}. "
        f"Received: new_degree={MAX_DEGREE + 1}",
        bernstein_ops.elevate_coefficients,
        np.zeros((3, 3)),
        MAX_DEGREE + 1,
    )
    initializer = initializers.ActivationCoefficients("relu")
    _raises(_degree_message(MAX_DEGREE + 1), initializer, shape=(2, MAX_DEGREE + 2))
    table = np.zeros((2, MAX_DEGREE + 2), "float32")
    bounds = np.tile(np.array([[-1.0, 1.0]], "float32"), (2, 1))
    message = (
        "The last axis of `coefficients` must be static and hold degree + 1 values, "
        f"a degree from 0 to {MAX_DEGREE} (above it float32 cannot evaluate the "
        "polynomial and its gradients accurately). Received: "
        f"coefficients.shape=(2, {MAX_DEGREE + 2})"
    )
    _raises(message, bernstein_ops.bernstein_polynomial, np.zeros((3, 2), "float32"), table, bounds)
    _raises(message, bernstein_ops.derivative_lower_bound, table, bounds)


@pytest.mark.parametrize("degree", [MAX_DEGREE + 1, 10**6, True, 1.5])
def test_power_to_bernstein_refuses_degrees_outside_the_limit(degree):
    _raises(
        f"`degree` must be an integer from 1, the polynomial's degree, to {MAX_DEGREE} "
        f"(a layer's largest). Received: degree={degree!r}",
        sos.power_to_bernstein,
        [0.0, 1.0],
        (0.0, 1.0),
        degree=degree,
    )


def test_elevate_degree_and_loading_respect_the_limit(tmp_path):
    layer = Bernstein(degree=8)
    layer.build((None, 3))
    _raises(_degree_message(MAX_DEGREE + 1), transforms.elevate_degree, layer, MAX_DEGREE + 1)
    # A saved file whose config asks for a degree above the limit.
    model = keras.Sequential([keras.Input((3,)), Bernstein(degree=8, name="act")])
    path = tmp_path / "model.keras"
    model.save(path)
    edited = tmp_path / "edited.keras"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(edited, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                data = data.replace(b'"degree": 8', f'"degree": {MAX_DEGREE + 1}'.encode())
            target.writestr(item, data)
    with pytest.raises(Exception, match=re.escape(_degree_message(MAX_DEGREE + 1))):
        keras.saving.load_model(edited)


def _reference(t, coefficients):
    """Value, dσ/dt and dσ/dc_k of the polynomial in float64."""
    degree = coefficients.shape[-1] - 1
    k = np.arange(degree + 1)
    binomials = np.array([math.comb(degree, j) for j in k], "float64")
    basis = binomials * t[:, None] ** k * (1.0 - t[:, None]) ** (degree - k)
    values = (basis * coefficients).sum(-1)
    k = np.arange(degree)
    binomials = np.array([math.comb(degree - 1, j) for j in k], "float64")
    lower = binomials * t[:, None] ** k * (1.0 - t[:, None]) ** (degree - 1 - k)
    slopes = degree * (lower * np.diff(coefficients, axis=-1)).sum(-1)
    return values, slopes, basis


def _values_and_gradients(x, coefficients, bounds, extrapolation="linear"):
    """`bernstein_polynomial` at `x` and its gradients for `x` and the
    coefficients (of the loss `sum(values)`), as float64 NumPy arrays."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def loss(x, coefficients):
            values = bernstein_ops.bernstein_polynomial(x, coefficients, bounds, extrapolation)
            return values.sum(), values

        (grad_x, grad_c), values = jax.grad(loss, argnums=(0, 1), has_aux=True)(x, coefficients)
    elif backend == "tensorflow":
        import tensorflow as tf

        x_var, c_var = tf.Variable(x), tf.Variable(coefficients)
        with tf.GradientTape() as tape:
            values = bernstein_ops.bernstein_polynomial(x_var, c_var, bounds, extrapolation)
            total = tf.reduce_sum(values)
        grad_x, grad_c = tape.gradient(total, [x_var, c_var])
    else:
        import torch

        x_t = torch.tensor(x, requires_grad=True)
        c_t = torch.tensor(coefficients, requires_grad=True)
        values = bernstein_ops.bernstein_polynomial(x_t, c_t, torch.tensor(bounds), extrapolation)
        values.sum().backward()
        grad_x, grad_c, values = x_t.grad, c_t.grad, values.detach()
    return _numpy(values), _numpy(grad_x), _numpy(grad_c)


def test_the_largest_degree_keeps_the_documented_accuracy():
    """At `MAX_DEGREE`, float32 values and gradients stay within `2 n eps` of
    float64 (for the slopes, whose scale is `n`, `2 n^2 eps`); coefficients
    in [-1, 1], one point per neuron."""
    degree = MAX_DEGREE
    rng = np.random.default_rng(0)
    t = np.concatenate([[0.0, 0.5, 1.0], rng.uniform(0.0, 1.0, 61)])
    coefficients = rng.uniform(-1.0, 1.0, (t.size, degree + 1))
    bounds = np.tile(np.array([[0.0, 1.0]], "float32"), (t.size, 1))
    values, grad_x, grad_c = _values_and_gradients(
        t[None].astype("float32"), coefficients.astype("float32"), bounds
    )
    expected_values, slopes, basis = _reference(t, coefficients)
    bound = 2 * degree * np.finfo("float32").eps
    assert np.abs(values[0] - expected_values).max() <= bound
    assert np.abs(grad_x[0] - slopes).max() <= bound * degree
    assert np.abs(grad_c - basis).max() <= bound


# --- Booleans ---------------------------------------------------------------


@pytest.mark.parametrize("value", ["no", "True", 1, 0, None, 1.0])
def test_boolean_arguments_must_be_booleans(value):
    def message(name):
        return f"`{name}` must be a boolean. Received: {name}={value!r}"

    _raises(message("trainable_bounds"), Bernstein, trainable_bounds=value)
    _raises(message("trainable_bounds"), BernsteinDense, 4, trainable_bounds=value)
    if value is not None:  # None picks the default
        _raises(message("use_bias"), BernsteinDense, 4, use_bias=value)


def test_numpy_booleans_are_booleans():
    layer = BernsteinDense(4, use_bias=np.bool_(True), trainable_bounds=np.bool_(True))
    assert layer.use_bias is True and layer.bernstein.trainable_bounds is True
    assert layer.get_config()["trainable_bounds"] is True


# --- Bounds and numbers in constructors ---------------------------------------


@pytest.mark.parametrize(
    "bounds",
    [
        (1.0, -1.0),
        (1.0, 1.0),
        (float("nan"), 1.0),
        (0.0, float("inf")),
        (-1e39, 1e39),  # not finite in float32
        (1.0, 1.0 + 1e-9),  # equal in float32
        (0.0, 1e-39),  # a width whose reciprocal overflows float32
        (-3.4e38, 3.4e38),  # a width that overflows float32
        ("a", "b"),
        (True, 2.0),
        (1.0,),
        "ab",
    ],
)
def test_constructors_refuse_unusable_bounds(bounds):
    message = (
        "`bounds` must be two numbers (l, u) with l < u, finite in float32, with "
        f"a finite width u - l. Received: bounds={bounds!r}"
    )
    _raises(message, Bernstein, bounds=bounds)
    _raises(message, BernsteinDense, 4, bounds=bounds)
    _raises(message, initializers.ActivationCoefficients, "relu", bounds=bounds)


@pytest.mark.parametrize("initializer", ["relu", "identity"])
def test_bounds_whose_coefficients_overflow_are_refused(initializer):
    """`(-1e38, 1e38)` is finite, but its coefficients times the binomials
    (the terms the polynomial sums) are not."""
    message = (
        "`bounds` is too wide for degree 8: the coefficients times their binomials "
        "C(n, k) exceed float32's range. Received: bounds=(-1e+38, 1e+38)"
    )
    _raises(message, Bernstein, bounds=(-1e38, 1e38), coefficient_initializer=initializer)
    _raises(message, BernsteinDense, 4, bounds=(-1e38, 1e38), coefficient_initializer=initializer)
    init = initializers.ActivationCoefficients(initializer, bounds=(-1e38, 1e38))
    _raises(message, init, shape=(3, 9))


@pytest.mark.parametrize("initializer", ["relu", "identity"])
def test_per_neuron_bounds_whose_coefficients_overflow_are_refused(initializer):
    """The float32 checks of a pair hold for every neuron's own interval."""
    rows = np.array([[-1.0, 1.0], [-1e38, 1e38]])
    message = (
        "`bounds` is too wide for degree 8: the coefficients times their binomials "
        f"C(n, k) exceed float32's range. Received: bounds={describe(rows)}"
    )
    _raises(message, Bernstein, bounds=rows, coefficient_initializer=initializer)
    _raises(message, BernsteinDense, 2, bounds=rows, coefficient_initializer=initializer)
    # Each neuron at its own degree-4 nodes is finite; at degree 8 one is not.
    init = initializers.ActivationCoefficients(initializer, bounds=[[0.0, 1.0], [0.0, 1e37]])
    assert np.all(np.isfinite(_numpy(init(shape=(2, 5)))))
    with pytest.raises(ValueError, match="`bounds` is too wide for degree 8"):
        init(shape=(2, 9))
    _raises(
        "`activation` must be finite in float32 at the ends of `bounds` "
        "[[ 0., 1.], [ 0., 200.]]. Received: activation='exponential'",
        initializers.ActivationCoefficients,
        "exponential",
        bounds=[[0, 1], [0, 200]],
    )


def test_activation_coefficients_refuse_activations_that_overflow():
    _raises(
        "`activation` must be finite in float32 at the ends of `bounds` (0.0, 200.0). "
        "Received: activation='exponential'",
        initializers.ActivationCoefficients,
        "exponential",
        bounds=(0, 200),
    )
    # Finite values whose terms C(n, k) c_k overflow at degree 8, not at 4.
    init = initializers.ActivationCoefficients("linear", bounds=(0, 1e37))
    assert np.all(np.isfinite(_numpy(init(shape=(2, 5)))))
    with pytest.raises(ValueError, match="`bounds` is too wide for degree 8"):
        init(shape=(2, 9))


def test_wide_and_narrow_bounds_that_fit_float32_work():
    for bounds in ((-1e30, 1e30), (1e6, 1e6 + 1.0), (-1e-30, 1e-30)):
        layer = Bernstein(degree=8, bounds=bounds, coefficient_initializer="identity")
        x = np.array([[bounds[0], 0.5 * (bounds[0] + bounds[1]), bounds[1]]], "float32").T
        assert np.all(np.isfinite(_numpy(layer(x))))


# --- ops: argument checks ---------------------------------------------------


def _tables(units=3, degree=8):
    rng = np.random.default_rng(1)
    coefficients = rng.uniform(-1, 1, (units, degree + 1)).astype("float32")
    bounds = np.tile(np.array([[-2.0, 2.0]], "float32"), (units, 1))
    x = rng.normal(size=(5, units)).astype("float32")
    return x, coefficients, bounds


def _table_functions():
    """Each public function of `ops` that takes coefficient and bounds tables,
    as `function(x, coefficients, bounds)`."""
    units = 3

    def normalized(x, c, b):
        ones, zeros = np.ones(units, "float32"), np.zeros(units, "float32")
        return bernstein_ops.normalized_bernstein_polynomial(x, zeros, ones, ones, zeros, c, b)

    def batch_normalized(x, c, b):
        ones, zeros = np.ones(units, "float32"), np.zeros(units, "float32")
        return bernstein_ops.batch_normalized_bernstein_polynomial(x, ones, zeros, c, b)[0]

    return {
        "bernstein_polynomial": bernstein_ops.bernstein_polynomial,
        "bernstein_derivative": bernstein_ops.bernstein_derivative,
        "normalized_bernstein_polynomial": normalized,
        "batch_normalized_bernstein_polynomial": batch_normalized,
        "derivative_lower_bound": lambda x, c, b: bernstein_ops.derivative_lower_bound(c, b),
    }


def _eager(array):
    """`array` as an eager backend tensor (concrete, host memory)."""
    return ops.convert_to_tensor(array)


@pytest.mark.parametrize("name", sorted(_table_functions()))
@pytest.mark.parametrize("kind", ["numpy", "eager"])
@pytest.mark.parametrize(
    "row, reason",
    [
        ((1.0, 1.0), "ordered, l < u (also in float32)"),
        ((2.0, -2.0), "ordered, l < u (also in float32)"),
        ((float("nan"), 1.0), "finite"),
        ((0.0, float("inf")), "finite"),
    ],
)
def test_ops_refuse_concrete_bounds_that_are_no_intervals(name, kind, row, reason):
    x, coefficients, bounds = _tables()
    bounds[1] = row
    wrap = _eager if kind == "eager" else np.asarray
    message = f"Every row (l, u) of `bounds` must be {reason}. Received: bounds={describe(bounds)}"
    _raises(message, _table_functions()[name], wrap(x), wrap(coefficients), wrap(bounds))


@pytest.mark.parametrize("name", sorted(_table_functions()))
def test_ops_refuse_tables_of_the_wrong_shape(name, kernel_targets_or_none):
    x, coefficients, bounds = _tables()
    function = _table_functions()[name]
    wide = np.concatenate([bounds, bounds[:, :1] + 5.0], axis=-1)  # (units, 3)
    _raises(
        "The last axis of `bounds` must hold the two values (l, u). "
        "Received: bounds.shape=(3, 3)",
        function,
        _eager(x),
        _eager(coefficients),
        _eager(wide),
    )
    more = np.concatenate([bounds, bounds[:1]], axis=0)  # (units + 1, 2)
    with pytest.raises(ValueError, match=r"^The neuron axes of `coefficients`"):
        function(_eager(x), _eager(coefficients), _eager(more))
    assert not kernel_targets_or_none  # refused before any kernel ran


@pytest.fixture
def kernel_targets_or_none(request):
    """The C++ kernels looked up (`kernel_targets`), or [] where there are none."""
    if keras.backend.backend() not in ("jax", "tensorflow"):
        return []
    try:
        return request.getfixturevalue("kernel_targets")
    except pytest.skip.Exception:
        return []


def test_shape_messages_name_the_shapes_of_every_table():
    x, coefficients, bounds = _tables()
    _raises(
        "The neuron axes of `coefficients`, `bounds` and `x` must broadcast together "
        "(the last axis of each table holds its values). Received: "
        "coefficients.shape=(3, 9), bounds.shape=(4, 2), x.shape=(5, 3)",
        bernstein_ops.bernstein_polynomial,
        x,
        coefficients,
        np.concatenate([bounds, bounds[:1]]),
    )
    _raises(
        "The neuron axes of `coefficients`, `bounds` and `x` must broadcast together "
        "(the last axis of each table holds its values). Received: "
        "coefficients.shape=(3, 9), bounds.shape=(3, 2), x.shape=(5, 4)",
        bernstein_ops.bernstein_polynomial,
        np.zeros((5, 4), "float32"),
        coefficients,
        bounds,
    )


def test_normalization_vectors_of_the_wrong_shape_are_refused():
    x, coefficients, bounds = _tables()
    ones, wrong = np.ones(3, "float32"), np.ones(4, "float32")
    _raises(
        "`offset` must broadcast against `x` (one value per unit of its last axis). "
        "Received: offset.shape=(4,), x.shape=(5, 3)",
        bernstein_ops.batch_normalized_bernstein_polynomial,
        _eager(x),
        _eager(ones),
        _eager(wrong),
        _eager(coefficients),
        _eager(bounds),
    )
    _raises(
        "`inverse_deviation` must broadcast against `x` (one value per unit of its last "
        "axis). Received: inverse_deviation.shape=(4,), x.shape=(5, 3)",
        bernstein_ops.normalized_bernstein_polynomial,
        x,
        ones,
        wrong,
        ones,
        ones,
        coefficients,
        bounds,
    )


def test_traced_bounds_are_checked_by_shape_only():
    """Inside a traced function the values cannot be read: an empty interval
    computes (NaN or inf) without raising."""
    x, coefficients, bounds = _tables()
    bounds[0] = (1.0, 1.0)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        function = jax.jit(bernstein_ops.bernstein_polynomial)
    elif backend == "tensorflow":
        import tensorflow as tf

        function = tf.function(bernstein_ops.bernstein_polynomial)
    else:
        pytest.skip("PyTorch runs eagerly here; torch.compile takes seconds")
    values = _numpy(function(x, coefficients, bounds))
    assert np.all(np.isfinite(values[:, 1:]))


def test_layer_weights_are_not_read_at_every_call(monkeypatch):
    """The layers pass their variables, which `ops` does not read by value."""
    read = []
    concrete = _arguments._concrete_values
    monkeypatch.setattr(
        _arguments,
        "_concrete_values",
        lambda value: read.append(value) or concrete(value),
    )
    layer = Bernstein(degree=8)
    layer(np.zeros((2, 4), "float32"))
    assert read and all(concrete(value) is None for value in read)


@pytest.mark.parametrize("epsilon", [float("nan"), -1e-3, float("inf"), "0.001", None, True])
def test_batch_normalized_polynomial_refuses_bad_epsilons(epsilon):
    x, coefficients, bounds = _tables()
    ones, zeros = np.ones(3, "float32"), np.zeros(3, "float32")
    _raises(
        f"`epsilon` must be a finite number >= 0. Received: epsilon={epsilon!r}",
        bernstein_ops.batch_normalized_bernstein_polynomial,
        x,
        ones,
        zeros,
        coefficients,
        bounds,
        epsilon=epsilon,
    )


def test_bernstein_range_refuses_nan_and_inverted_inputs():
    _, coefficients, bounds = _tables()
    _raises(
        "`lower` must not be NaN. Received: lower=nan",
        bernstein_ops.bernstein_range,
        coefficients,
        bounds,
        float("nan"),
        1.0,
    )
    _raises(
        f"`upper` must not be NaN. Received: upper={describe([0.0, np.nan, 1.0])}",
        bernstein_ops.bernstein_range,
        coefficients,
        bounds,
        -1.0,
        [0.0, float("nan"), 1.0],
    )
    _raises(
        "`upper` must be >= `lower` everywhere. Received: lower=1., upper=0.",
        bernstein_ops.bernstein_range,
        coefficients,
        bounds,
        1.0,
        0.0,
    )
    bounds[2] = (1.0, 1.0)
    with pytest.raises(ValueError, match=r"^Every row \(l, u\) of `bounds` must be ordered"):
        bernstein_ops.bernstein_range(coefficients, bounds, -1.0, 1.0)


# --- Loading and setting weights --------------------------------------------


def _bad_bounds(units, kind):
    bounds = np.tile(np.array([[-3.0, 3.0]], "float32"), (units, 1))
    bounds[-1] = {"inverted": (2.0, -2.0), "equal": (1.0, 1.0), "nan": (np.nan, 1.0)}[kind]
    return bounds


@pytest.mark.parametrize("kind", ["inverted", "equal", "nan"])
@pytest.mark.parametrize("trainable_bounds", [False, True])
@pytest.mark.parametrize("layer_class", ["Bernstein", "BernsteinDense"])
def test_loading_bad_bounds_fails_naming_the_layer(tmp_path, kind, trainable_bounds, layer_class):
    if layer_class == "Bernstein":
        layer = Bernstein(degree=8, trainable_bounds=trainable_bounds, name="act")
        path = "act"
    else:
        layer = BernsteinDense(4, degree=8, trainable_bounds=trainable_bounds, name="block")
        path = "block/bernstein"
    model = keras.Sequential([keras.Input((4,)), layer])
    # Written past the checks, as a file edited or saved by other code would hold them.
    layer.bounds.assign(_bad_bounds(4, kind))
    file = tmp_path / "model.keras"
    model.save(file)
    with pytest.raises(ValueError, match=rf"Layer '(\S*/)?{path}' was given bounds whose every"):
        keras.saving.load_model(file)
    # Weights loaded into a model that exists are refused as well, and leave it as it was.
    layer.bounds.assign(np.tile(np.array([[-3.0, 3.0]], "float32"), (4, 1)))
    model.save_weights(tmp_path / "good.weights.h5")
    layer.bounds.assign(_bad_bounds(4, kind))
    model.save_weights(tmp_path / "bad.weights.h5")
    fresh = keras.Sequential([keras.Input((4,)), layer.__class__.from_config(layer.get_config())])
    fresh.load_weights(tmp_path / "good.weights.h5")
    with pytest.raises(ValueError, match="was given bounds"):
        fresh.load_weights(tmp_path / "bad.weights.h5")
    np.testing.assert_array_equal(_numpy(fresh.layers[0].bounds)[-1], (-3.0, 3.0))


def test_loading_nan_coefficients_fails(tmp_path):
    layer = Bernstein(degree=8, name="act")
    model = keras.Sequential([keras.Input((2,)), layer])
    coefficients = _numpy(layer.coefficients)
    coefficients[0, 1] = np.nan
    layer.coefficients.assign(coefficients)
    model.save(tmp_path / "model.keras")
    with pytest.raises(ValueError, match="Layer 'act' was given coefficients that must be finite"):
        keras.saving.load_model(tmp_path / "model.keras")


@pytest.mark.parametrize("layer_class", ["Bernstein", "BernsteinDense"])
def test_set_weights_refuses_bad_bounds_and_keeps_the_old_weights(layer_class):
    if layer_class == "Bernstein":
        layer = Bernstein(degree=8, trainable_bounds=True)
        layer.build((None, 4))
    else:
        layer = BernsteinDense(4, degree=8)
        layer.build((None, 2))
    weights = layer.get_weights()
    bad = [w.copy() for w in weights]
    index = next(i for i, w in enumerate(bad) if w.shape == (4, 2))
    bad[index] = _bad_bounds(4, "inverted")
    bad[0] = bad[0] + 1.0
    with pytest.raises(ValueError, match="was given bounds whose every row"):
        layer.set_weights(bad)
    for old, now in zip(weights, layer.get_weights()):
        np.testing.assert_array_equal(old, now)


# --- The linear tail at extreme inputs, the same on every path ---------------

EXTREMES = np.array([3e38, -3e38, 1e30, -1e30, 1e8, -10.0, np.nan, np.inf, -np.inf], "float32")


def _tail_reference(x, coefficients, bounds, extrapolation):
    """What `ops`' formula defines, in float64: the end value plus the end
    slope times the overshoot `t - clip(t, 0, 1)` of `t` limited to ±1e30
    (`"linear"`) or the end value (`"clip"`); the input gradient is the end
    slope (`"linear"`) or 0 (`"clip"`), NaN at NaN; the coefficient gradient
    the end basis plus the end slopes' terms times the overshoot."""
    degree = coefficients.shape[-1] - 1
    lower, upper = bounds[0]
    width = upper - lower
    with np.errstate(invalid="ignore"):
        t = (x.astype("float64") - lower) / width
        clipped = np.clip(t, 0.0, 1.0)
        overshoot = np.clip(t, -1e30, 1e30) - clipped
    values, slopes, basis = _reference(clipped, coefficients[0].astype("float64")[None])
    slope_lower = degree * (coefficients[0, 1] - coefficients[0, 0])
    slope_upper = degree * (coefficients[0, -1] - coefficients[0, -2])
    grad_c = basis.copy()
    if extrapolation == "linear":
        below, above = np.minimum(overshoot, 0.0), np.maximum(overshoot, 0.0)
        values = values + slope_lower * below + slope_upper * above
        grad_x = slopes / width
        grad_c[:, 0] -= degree * below
        grad_c[:, 1] += degree * below
        grad_c[:, -2] -= degree * above
        grad_c[:, -1] += degree * above
    else:
        grad_x = np.where(np.isnan(t), np.nan, np.where(overshoot != 0, 0.0, slopes / width))
    return values, grad_x, grad_c.sum(0)


def _check_tail(extrapolation, coefficients):
    coefficients = np.array([coefficients], "float32")
    bounds = np.array([[-3.0, 3.0]], "float32")
    x = EXTREMES[:, None]
    values, grad_x, grad_c = _values_and_gradients(x, coefficients, bounds, extrapolation)
    expected_values, expected_grad_x, expected_grad_c = _tail_reference(
        EXTREMES, coefficients, bounds, extrapolation
    )
    tolerance = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values[:, 0], expected_values, **tolerance, err_msg="values")
    np.testing.assert_allclose(grad_x[:, 0], expected_grad_x, **tolerance, err_msg="dσ/dx")
    finite = np.isfinite(EXTREMES)
    # NaN rows make the summed coefficient gradient NaN; the others are compared.
    _, _, finite_grad_c = _values_and_gradients(
        x[finite], coefficients, bounds, extrapolation
    )
    _, _, expected_finite_grad_c = _tail_reference(
        EXTREMES[finite], coefficients, bounds, extrapolation
    )
    np.testing.assert_allclose(finite_grad_c[0], expected_finite_grad_c, rtol=1e-5, err_msg="dσ/dc")
    assert np.all(np.isnan(grad_c)) == bool(np.isnan(EXTREMES).any())


@pytest.mark.parametrize("extrapolation", ["linear", "clip"])
def test_extreme_inputs_give_the_formula_on_every_backend(extrapolation):
    _check_tail(extrapolation, [0.5, -1.0, 0.3, 0.2, -0.1, 0.4, 0.9, 1.0, 1.5])


@pytest.mark.parametrize("extrapolation", ["linear", pytest.param("clip", marks=pytest.mark.slow)])
def test_extreme_inputs_give_the_formula_compiled(extrapolation, torch_compiled):
    """The compiled path differentiates the formula itself (degree 2: the
    compilation takes seconds, more at higher degrees)."""
    _check_tail(extrapolation, [0.5, -1.0, 1.5])
    assert "_evaluate" in torch_compiled
