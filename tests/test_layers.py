"""Tests of the `Bernstein` and `BernsteinDense` layers."""

import functools
import math
import re

import keras
import numpy as np
import pytest
from keras import ops
from layer_test import run_layer_test

from keras_bernstein import Bernstein
from keras_bernstein import BernsteinDense
from keras_bernstein import _formula
from keras_bernstein import constraints
from keras_bernstein import initializers


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


# ---------------------------------------------------------------------------
# The standard layer checks.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("trainable_bounds", [False, True])
@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
def test_bernstein_standard_checks_2d(extrapolation, trainable_bounds, tmp_path):
    run_layer_test(
        Bernstein,
        {
            "degree": 4,
            "extrapolation": extrapolation,
            "trainable_bounds": trainable_bounds,
        },
        input_shape=(8, 5),
        expected_output_shape=(8, 5),
        expected_num_trainable_weights=2 if trainable_bounds else 1,
        expected_num_non_trainable_weights=0 if trainable_bounds else 1,
        expected_weight_shapes={"coefficients": (5, 5), "bounds": (5, 2)},
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("shared_axes", [[1, 2], [-3, -2]])
def test_bernstein_standard_checks_4d_shared_axes(shared_axes, tmp_path):
    run_layer_test(
        Bernstein,
        {"degree": 3, "shared_axes": shared_axes, "trainable_bounds": True},
        input_shape=(2, 3, 4, 5),
        expected_output_shape=(2, 3, 4, 5),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=0,
        expected_weight_shapes={"coefficients": (1, 1, 5, 4), "bounds": (1, 1, 5, 2)},
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize(
    "normalization, use_bias, trainable, non_trainable",
    [("batch", None, 4, 3), ("batch", True, 5, 3), (None, None, 3, 1)],
)
def test_bernstein_dense_standard_checks(
    normalization, use_bias, trainable, non_trainable, tmp_path
):
    shapes = {"kernel": (6, 4), "coefficients": (4, 6), "bounds": (4, 2)}
    if use_bias or normalization is None:  # the default bias: without normalization
        shapes["bias"] = (4,)
    run_layer_test(
        BernsteinDense,
        {"units": 4, "degree": 5, "normalization": normalization, "use_bias": use_bias},
        input_shape=(8, 6),
        expected_output_shape=(8, 4),
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable,
        expected_weight_shapes=shapes,
        tmp_path=tmp_path,
    )


def test_bernstein_dense_drops_the_bias_that_batch_normalization_cancels():
    """By default a bias only where no batch normalization subtracts the
    batch mean; with one, a bias changes no output of a training step."""
    assert not BernsteinDense(3).use_bias
    assert BernsteinDense(3, normalization=None).use_bias
    assert BernsteinDense(3, use_bias=True).use_bias
    x = np.random.default_rng(0).standard_normal((16, 5)).astype("float32")
    layer = BernsteinDense(3, degree=4, use_bias=True, bias_initializer="ones")
    with_bias = _numpy(layer(x, training=True))
    layer.bias.assign(np.zeros(3, "float32"))
    np.testing.assert_allclose(
        _numpy(layer(x, training=True)), with_bias, rtol=1e-5, atol=1e-5
    )
    assert layer.get_config()["use_bias"] is True
    assert BernsteinDense(3).get_config()["use_bias"] is False


# ---------------------------------------------------------------------------
# Argument validation.
# ---------------------------------------------------------------------------


def _raises_naming(name, value):
    """`pytest.raises` for a ValueError ending in `Received: name=repr(value)`."""
    return pytest.raises(
        ValueError, match=re.escape(f"Received: {name}={value!r}") + r"\s*$"
    )


@pytest.mark.parametrize("degree", [0, -1, 2.5, True, "8", None])
def test_bad_degree(degree):
    with _raises_naming("degree", degree):
        Bernstein(degree=degree)
    with _raises_naming("degree", degree):
        BernsteinDense(4, degree=degree)


@pytest.mark.parametrize(
    "bounds",
    [
        (1, 1), (2, 1), (0, math.inf), (-math.inf, 0), (math.nan, 1), (1,), (0, 1, 2),
        "ab", "12", ("-1", "1"), (False, True), None,
    ],
)
def test_bad_bounds(bounds):
    with _raises_naming("bounds", bounds):
        Bernstein(bounds=bounds)
    with _raises_naming("bounds", bounds):
        BernsteinDense(4, bounds=bounds)
    with _raises_naming("bounds", bounds):
        initializers.ActivationCoefficients("relu", bounds=bounds)


@pytest.mark.parametrize("extrapolation", ["cubic", "Linear", None])
def test_bad_extrapolation(extrapolation):
    with _raises_naming("extrapolation", extrapolation):
        Bernstein(extrapolation=extrapolation)
    with _raises_naming("extrapolation", extrapolation):
        BernsteinDense(4, extrapolation=extrapolation)


@pytest.mark.parametrize("normalization", ["layer", "Batch", True])
def test_bad_normalization(normalization):
    with _raises_naming("normalization", normalization):
        BernsteinDense(4, normalization=normalization)


@pytest.mark.parametrize("units", [0, -3, 2.5, True, "4", None])
def test_bad_units(units):
    with _raises_naming("units", units):
        BernsteinDense(units)


@pytest.mark.parametrize("shared_axes", [[0], [1, 0], 0, [1.5], [True]])
def test_bad_shared_axes_at_construction(shared_axes):
    with _raises_naming("shared_axes", shared_axes):
        Bernstein(shared_axes=shared_axes)


@pytest.mark.parametrize("shared_axes", [[3], [-3], [1, 5]])
def test_shared_axes_out_of_range_for_input_rank(shared_axes):
    layer = Bernstein(shared_axes=shared_axes)  # Valid until the rank is known.
    with _raises_naming("shared_axes", shared_axes):
        layer(np.zeros((2, 3, 4), "float32"))
    with _raises_naming("shared_axes", shared_axes):
        Bernstein(shared_axes=shared_axes).build((None, 3, 4))


def test_scalar_shared_axis_is_accepted():
    layer = Bernstein(degree=2, shared_axes=1)
    layer.build((None, 3, 4))
    assert layer.shared_axes == [1]
    assert tuple(layer.coefficients.shape) == (1, 4, 3)


@pytest.mark.parametrize("value", [-0.1, -1, "abc", "0.5", True, None, math.nan, math.inf])
def test_bad_min_width_and_min_gap(value):
    with _raises_naming("min_width", value):
        constraints.OrderedBounds(min_width=value)
    with _raises_naming("min_gap", value):
        constraints.MonotonicCoefficients(min_gap=value)


def test_zero_min_width_is_rejected_but_zero_min_gap_is_not():
    with _raises_naming("min_width", 0.0):
        constraints.OrderedBounds(min_width=0.0)
    assert constraints.MonotonicCoefficients(min_gap=0).min_gap == 0.0


def test_rank_one_input_is_rejected():
    with pytest.raises(ValueError, match="rank >= 2"):
        Bernstein().build((5,))


def test_unknown_unshared_axis_is_rejected():
    with pytest.raises(ValueError, match="known size"):
        Bernstein().build((None, None, 4))
    # A shared unknown axis is fine.
    layer = Bernstein(shared_axes=[1])
    layer.build((None, None, 4))
    assert tuple(layer.coefficients.shape) == (1, 4, 9)


def test_unknown_last_axis_is_rejected_by_bernstein_dense():
    with pytest.raises(ValueError, match="must be known"):
        BernsteinDense(3).build((None, None))


def _incompatible_input():
    return pytest.raises(ValueError, match="is incompatible with the layer")


def test_bernstein_rejects_wrong_feature_size_and_rank_after_build():
    layer = Bernstein(degree=3)
    layer(np.zeros((2, 5), "float32"))
    with _incompatible_input():
        layer(np.zeros((2, 4), "float32"))
    with _incompatible_input():
        layer(np.zeros((2, 3, 5), "float32"))
    with _incompatible_input():
        layer(keras.KerasTensor((None, 6)))


def test_bernstein_with_shared_axes_accepts_any_size_on_shared_axes():
    layer = Bernstein(degree=3, shared_axes=[1])
    layer(np.zeros((2, 3, 5), "float32"))
    assert tuple(layer(np.zeros((2, 7, 5), "float32")).shape) == (2, 7, 5)
    with _incompatible_input():
        layer(np.zeros((2, 3, 4), "float32"))


def test_bernstein_dense_rejects_wrong_feature_size_and_rank_after_build():
    layer = BernsteinDense(3, degree=3)
    layer(np.zeros((2, 5), "float32"))
    with _incompatible_input():
        layer(np.zeros((2, 4), "float32"))
    with _incompatible_input():
        layer(np.zeros((5,), "float32"))


# ---------------------------------------------------------------------------
# Initializers.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bounds", [(-3.0, 3.0), (0.0, 1.0), (-0.5, 2.0)])
@pytest.mark.parametrize("degree", [1, 4, 8, 16, 24])
def test_identity_initializer_gives_identity_on_bounds(degree, bounds):
    # 1e-6, scaled by the size of x for bounds beyond [-1, 1] (float32 has a
    # relative resolution); measured worst: 9.5e-7 at degree 24 on (-3, 3).
    lower, upper = bounds
    layer = Bernstein(degree=degree, bounds=bounds, coefficient_initializer="identity")
    x = np.linspace(lower, upper, 257, dtype="float32")[:, None] * np.ones(
        (1, 3), "float32"
    )
    y = _numpy(layer(x))
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-6 * max(1.0, abs(lower), abs(upper)))
    # The linear extrapolation continues the line.
    outside = np.array([[lower - 2.0] * 3, [upper + 5.0] * 3], "float32")
    np.testing.assert_allclose(_numpy(layer(outside)), outside, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bounds", [(-3.0, 3.0), (-1.0, 2.0), (0.5, 1.5)])
@pytest.mark.parametrize("degree", [1, 5, 8])
def test_relu_initializer_gives_relu_of_nodes(degree, bounds):
    lower, upper = bounds
    layer = Bernstein(degree=degree, bounds=bounds)  # "relu" is the default.
    layer.build((None, 4))
    nodes = lower + (upper - lower) * np.arange(degree + 1) / degree
    expected = np.broadcast_to(np.maximum(nodes, 0.0), (4, degree + 1))
    np.testing.assert_allclose(_numpy(layer.coefficients), expected, rtol=1e-7, atol=0)
    explicit = Bernstein(degree=degree, bounds=bounds, coefficient_initializer="relu")
    explicit.build((None, 4))
    np.testing.assert_array_equal(
        _numpy(explicit.coefficients), _numpy(layer.coefficients)
    )


def test_activation_coefficients_initializer():
    init = initializers.ActivationCoefficients("tanh", bounds=(-2.0, 2.0))
    values = _numpy(init(shape=(2, 3, 5)))
    assert values.shape == (2, 3, 5)
    np.testing.assert_allclose(
        values[1, 2], np.tanh(np.linspace(-2.0, 2.0, 5)), rtol=1e-6
    )
    assert init.get_config() == {"activation": "tanh", "bounds": [-2.0, 2.0]}
    revived = keras.initializers.deserialize(keras.initializers.serialize(init))
    assert isinstance(revived, initializers.ActivationCoefficients)
    assert revived.get_config() == init.get_config()
    # "identity" is an alias of "linear".
    assert initializers.ActivationCoefficients("identity").activation == "linear"
    with pytest.raises(ValueError, match=r"Received: shape=\(3, 1\)"):
        init(shape=(3, 1))


def test_activation_coefficients_on_per_neuron_bounds():
    rows = [[-2.0, 2.0], [0.0, 4.0]]
    init = initializers.ActivationCoefficients("tanh", bounds=rows)
    values = _numpy(init(shape=(3, 2, 5)))
    assert values.shape == (3, 2, 5)
    for j, (lower, upper) in enumerate(rows):
        np.testing.assert_allclose(
            values[1, j], np.tanh(np.linspace(lower, upper, 5)), rtol=1e-6
        )
    assert init.get_config() == {"activation": "tanh", "bounds": rows}
    revived = keras.initializers.deserialize(keras.initializers.serialize(init))
    np.testing.assert_array_equal(_numpy(revived(shape=(3, 2, 5))), values)
    message = (
        "`bounds` of `ActivationCoefficients` must broadcast to the weight's "
        "neurons, shape (3, 2). Received: bounds.shape=(2, 2)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        init(shape=(3, 5))
    # A pair keeps its config and its coefficients.
    pair = initializers.ActivationCoefficients("relu", bounds=(-1, 1))
    assert pair.bounds == (-1.0, 1.0)
    assert pair.get_config() == {"activation": "relu", "bounds": [-1.0, 1.0]}


def _traced(function):
    """`function` run where the backend traces it into a graph, as Keras does
    when it builds a model inside `fit` or while loading."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(function)()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function)()
    return function()


@pytest.mark.parametrize("activation", ["relu", "identity", "tanh"])
def test_activation_coefficients_initializer_works_traced(activation, float64):
    init = initializers.ActivationCoefficients(activation, bounds=(-2.0, 2.0))
    eager = _numpy(init(shape=(3, 7)))
    traced = _numpy(_traced(lambda: init(shape=(3, 7))))
    assert traced.dtype == eager.dtype == np.dtype("float32")
    assert _numpy(init(shape=(2,), dtype="float64")).dtype == np.dtype("float64")
    assert _numpy(_traced(lambda: init(shape=(2,), dtype="float64"))).dtype == np.dtype("float64")
    expected = np.broadcast_to(init.coefficients(6), (3, 7))
    np.testing.assert_array_equal(eager, expected)
    # XLA may fold the traced activation with its own float32 `tanh` (1 ulp).
    np.testing.assert_allclose(traced, expected, rtol=2e-7, atol=0)


def test_keras_initializer_for_coefficients():
    layer = Bernstein(degree=3, coefficient_initializer="ones")
    layer.build((None, 2))
    np.testing.assert_array_equal(_numpy(layer.coefficients), np.ones((2, 4)))
    # Constant coefficients give a constant activation, everywhere.
    y = _numpy(layer(np.array([[-10.0, 0.3], [2.9, 40.0]], "float32")))
    np.testing.assert_allclose(y, np.ones((2, 2)), rtol=1e-6)


def test_bounds_weight_is_initialized_from_bounds():
    layer = Bernstein(degree=2, bounds=(-1.5, 0.25), shared_axes=[1])
    layer.build((None, 3, 2))
    np.testing.assert_array_equal(
        _numpy(layer.bounds), np.broadcast_to([-1.5, 0.25], (1, 2, 2))
    )
    assert not layer.bounds.trainable
    assert layer.coefficients.trainable


def test_bounds_weight_is_initialized_from_per_neuron_bounds():
    rows = [[-1.0, 1.0], [0.0, 2.0], [-5.0, -4.0]]
    layer = Bernstein(degree=2, bounds=rows)
    layer.build((None, 3))
    np.testing.assert_array_equal(_numpy(layer.bounds), rows)
    # Rows of shared channels; an array that broadcasts over the spatial axes.
    conv = Bernstein(degree=2, bounds=np.array(rows[:2]), shared_axes=[1, 2])
    conv.build((None, 4, 5, 2))
    np.testing.assert_array_equal(_numpy(conv.bounds), np.reshape(rows[:2], (1, 1, 2, 2)))
    spatial = np.stack([np.full((3, 2), -1.0 - i) for i in range(2)], -1)  # (3, 2, 2)
    spatial[..., 1] = 1.0
    unshared = Bernstein(degree=2, bounds=spatial[:, None])  # (3, 1, 2, 2)
    unshared.build((None, 3, 4, 2))
    np.testing.assert_array_equal(
        _numpy(unshared.bounds), np.broadcast_to(spatial[:, None], (3, 4, 2, 2))
    )
    dense = BernsteinDense(3, bounds=rows)
    dense.build((None, 4))
    np.testing.assert_array_equal(_numpy(dense.bounds), rows)
    # BernsteinDense on sequences shares each unit's interval over the steps.
    dense = BernsteinDense(3, bounds=rows)
    dense.build((None, 7, 4))
    np.testing.assert_array_equal(_numpy(dense.bounds), np.reshape(rows, (1, 3, 2)))


def test_per_neuron_bounds_config_round_trips():
    rows = [[-1.0, 1.0], [0.0, 2.0]]
    layer = BernsteinDense(2, degree=3, bounds=np.array(rows, "float32"))
    config = layer.get_config()
    assert config["bounds"] == rows
    revived = BernsteinDense.from_config(config)
    revived.build((None, 3))
    np.testing.assert_array_equal(_numpy(revived.bounds), rows)
    np.testing.assert_allclose(
        _numpy(revived.coefficients),
        np.maximum(np.linspace(np.array(rows)[:, 0], np.array(rows)[:, 1], 4).T, 0),
        rtol=1e-7,
    )
    # A pair stays a pair.
    assert Bernstein(bounds=(-1, 2)).get_config()["bounds"] == [-1.0, 2.0]
    assert Bernstein(bounds=np.array([-1.0, 2.0])).initial_bounds == (-1.0, 2.0)


@pytest.mark.parametrize(
    "bounds, problem",
    [
        ([[1.0, -1.0], [0.0, 1.0]], "Every row (l, u) of `bounds` must be ordered"),
        ([[0.0, math.inf]], "Every row (l, u) of `bounds` must be finite"),
        (np.array([[-1e39, 1.0]]), "must be finite in float32"),
        (np.zeros((2, 3)), "must have a last axis of size 2"),
        ([[0.0, "1"]], "an array of rows (l, u) of real numbers"),
        ([[False, True]], "an array of rows (l, u) of real numbers"),
        (np.array([[0, 1]], dtype=bool), "an array of rows (l, u) of real numbers"),
    ],
)
def test_bad_per_neuron_bounds(bounds, problem):
    for make in (
        lambda: Bernstein(bounds=bounds),
        lambda: BernsteinDense(4, bounds=bounds),
        lambda: initializers.ActivationCoefficients("relu", bounds=bounds),
    ):
        with pytest.raises(ValueError) as error:
            make()
        message = str(error.value)
        assert problem in message, message
        # The array is shown, on one line, at the end.
        assert re.search(r"Received: bounds=\[\[[^\n]*\]\]$", message), message


@pytest.mark.parametrize(
    "bounds, input_shape, expected",
    [
        ([[-1.0, 1.0], [0.0, 2.0]], (None, 3), (3, 2)),
        (np.zeros((5, 2)) + [0, 1], (None, 5, 4), (5, 4, 2)),
        (np.zeros((5, 4, 2)) + [0, 1], (None, 5, 4), (1, 4, 2)),
    ],
)
def test_per_neuron_bounds_that_do_not_broadcast_are_refused_in_build(
    bounds, input_shape, expected
):
    shared_axes = [1] if expected[0] == 1 else None
    layer = Bernstein(bounds=bounds, shared_axes=shared_axes)
    message = (
        f"`bounds` must broadcast to the layer's bounds shape {expected} "
        "(param_shape + (2,), one row (l, u) per neuron). "
        f"Received: bounds.shape={np.shape(bounds)}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        layer.build(input_shape)
    with pytest.raises(ValueError, match=re.escape("bounds shape (3, 2)")):
        BernsteinDense(3, bounds=[[-1.0, 1.0], [0.0, 2.0]]).build((None, 4))


@pytest.mark.parametrize("degree", [1, 5, 12])
def test_identity_initializer_gives_identity_on_each_neurons_interval(degree):
    rows = np.array([[-3.0, 3.0], [0.0, 1.0], [-0.5, 2.0], [10.0, 14.0]])
    layer = Bernstein(degree=degree, bounds=rows, coefficient_initializer="identity")
    x = (rows[:, 0] + (rows[:, 1] - rows[:, 0]) * np.linspace(0, 1, 65)[:, None]).astype(
        "float32"
    )
    np.testing.assert_allclose(_numpy(layer(x)), x, rtol=0, atol=2e-6 * 14.0)
    # Linear extrapolation continues each neuron's line.
    outside = np.stack([rows[:, 0] - 2.0, rows[:, 1] + 5.0]).astype("float32")
    np.testing.assert_allclose(_numpy(layer(outside)), outside, rtol=0, atol=2e-5)
    # With shared axes: one interval per channel.
    shared = Bernstein(
        degree=degree, bounds=rows, shared_axes=[1], coefficient_initializer="identity"
    )
    images = np.broadcast_to(x[:, None, :], (65, 3, 4))
    np.testing.assert_allclose(_numpy(shared(images)), images, rtol=0, atol=2e-6 * 14.0)


@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
def test_relu_initializer_gives_each_neurons_bernstein_approximant(extrapolation):
    degree = 6
    rows = np.array([[-3.0, 3.0], [-1.0, 2.0], [0.5, 1.5]])
    layer = BernsteinDense(
        3, degree=degree, bounds=rows, normalization=None, extrapolation=extrapolation
    )
    layer.build((None, 3))
    nodes = rows[:, :1] + (rows[:, 1:] - rows[:, :1]) * np.arange(degree + 1) / degree
    np.testing.assert_allclose(
        _numpy(layer.coefficients), np.maximum(nodes, 0.0), rtol=1e-7, atol=0
    )
    # The approximant `sum_k relu(node_jk) C(n, k) t^k (1 - t)^(n - k)`, in float64.
    x = rows[:, 0] + (rows[:, 1] - rows[:, 0]) * np.linspace(0, 1, 33)[:, None]
    t = (x - rows[:, 0]) / (rows[:, 1] - rows[:, 0])
    k = np.arange(degree + 1)
    basis = np.array([math.comb(degree, i) for i in k])
    expected = np.sum(
        np.maximum(nodes, 0.0) * basis * t[..., None] ** k * (1 - t[..., None]) ** (degree - k),
        axis=-1,
    )
    layer.dense.kernel.assign(np.eye(3, dtype="float32"))
    np.testing.assert_allclose(_numpy(layer(x.astype("float32"))), expected, rtol=0, atol=2e-6)


# ---------------------------------------------------------------------------
# Guarantees read from the weights.
# ---------------------------------------------------------------------------


def test_derivative_lower_bound_and_output_bounds_on_hand_set_coefficients():
    layer = Bernstein(degree=3, bounds=(-1.0, 1.0))
    layer.build((None, 3))
    layer.coefficients.assign(
        np.array(
            [
                [0.0, 1.0, 2.0, 3.0],  # gaps 1, 1, 1
                [-1.0, -0.5, 1.0, 1.25],  # gaps 0.5, 1.5, 0.25
                [2.0, 0.0, 1.0, -1.0],  # gaps -2, 1, -2
            ],
            "float32",
        )
    )
    layer.bounds.assign(np.array([[-1.0, 1.0], [0.0, 4.0], [-2.0, -1.5]], "float32"))
    bound = _numpy(layer.derivative_lower_bound())
    assert bound.shape == (3,)
    # n * min gap / (u - l)
    np.testing.assert_allclose(bound, [3 * 1 / 2, 3 * 0.25 / 4, 3 * -2 / 0.5], rtol=1e-6)
    ranges = _numpy(layer.output_bounds())
    assert ranges.shape == (3, 2)
    np.testing.assert_array_equal(ranges, [[0.0, 3.0], [-1.0, 1.25], [-1.0, 2.0]])


def test_guarantee_shapes_with_shared_axes_and_bernstein_dense():
    layer = Bernstein(degree=4, shared_axes=[1, 2])
    layer.build((None, 5, 6, 7))
    assert tuple(layer.derivative_lower_bound().shape) == (1, 1, 7)
    assert tuple(layer.output_bounds().shape) == (1, 1, 7, 2)
    dense = BernsteinDense(3, degree=4, bounds=(-2.0, 2.0))
    dense.build((None, 5))
    assert tuple(dense.derivative_lower_bound().shape) == (3,)
    assert tuple(dense.output_bounds().shape) == (3, 2)
    # ReLU coefficients at nodes -2, -1, 0, 1, 2: 0, 0, 0, 1, 2.
    np.testing.assert_allclose(_numpy(dense.derivative_lower_bound()), np.zeros(3))
    np.testing.assert_allclose(_numpy(dense.output_bounds()), [[0.0, 2.0]] * 3)


def test_layer_derivative_matches_ops():
    from keras_bernstein import ops as bernstein_ops

    layer = Bernstein(degree=5, extrapolation="clip", coefficient_initializer="glorot_normal")
    x = np.linspace(-5.0, 5.0, 40, dtype="float32").reshape(10, 4)
    layer.build((None, 4))
    expected = bernstein_ops.bernstein_derivative(
        x, layer.coefficients, layer.bounds, "clip"
    )
    np.testing.assert_array_equal(_numpy(layer.derivative(x)), _numpy(expected))
    assert tuple(layer.derivative(x).shape) == (10, 4)


# ---------------------------------------------------------------------------
# BernsteinDense composition.
# ---------------------------------------------------------------------------


def test_bernstein_dense_attributes_are_the_variables():
    layer = BernsteinDense(4, degree=3, use_bias=True, trainable_bounds=True)
    layer.build((None, 6))
    ids = [id(v) for v in layer.weights]
    for name in ("kernel", "bias", "coefficients", "bounds"):
        assert id(getattr(layer, name)) in ids, name
    assert layer.kernel is layer.dense.kernel
    assert layer.bias is layer.dense.bias
    assert layer.coefficients is layer.bernstein.coefficients
    assert layer.bounds is layer.bernstein.bounds
    assert tuple(layer.kernel.shape) == (6, 4)
    assert tuple(layer.coefficients.shape) == (4, 4)
    assert layer.degree == 3 and layer.extrapolation == "linear"
    assert layer.bounds.trainable
    # The pieces are computed in order: Dense -> BatchNormalization -> Bernstein.
    x = np.random.default_rng(0).standard_normal((5, 6)).astype("float32")
    hidden = layer.batch_normalization(layer.dense(x), training=False)
    np.testing.assert_allclose(
        _numpy(layer.pre_activation(x)), _numpy(hidden), rtol=1e-6
    )
    np.testing.assert_allclose(
        _numpy(layer(x)), _numpy(layer.bernstein(hidden)), rtol=1e-6, atol=1e-7
    )


def test_bernstein_dense_standard_checks_3d(tmp_path):
    run_layer_test(
        BernsteinDense,
        {"units": 4, "degree": 3},
        input_shape=(4, 3, 6),
        expected_output_shape=(4, 3, 4),
        expected_num_trainable_weights=4,
        expected_num_non_trainable_weights=3,
        expected_weight_shapes={"kernel": (6, 4), "coefficients": (1, 4, 4)},
        tmp_path=tmp_path,
    )


def test_bernstein_dense_on_sequences_acts_per_unit_like_dense():
    """As Dense, BernsteinDense on `(batch, time, features)` applies the same
    map at every position: one activation per unit, any sequence length."""
    layer = BernsteinDense(3, degree=4, coefficient_initializer="glorot_normal")
    symbolic = layer(keras.KerasTensor((None, None, 5)))
    assert tuple(symbolic.shape) == (None, None, 3)
    assert tuple(layer.coefficients.shape) == (1, 3, 5)
    assert tuple(layer.derivative_lower_bound().shape) == (1, 3)
    x = np.random.default_rng(0).standard_normal((2, 7, 5)).astype("float32")
    y = _numpy(layer(x))
    assert y.shape == (2, 7, 3)
    # Position by position, it is the layer applied to 2-D slices.
    for step in (0, 6):
        single = _numpy(layer(x[:, step : step + 1]))[:, 0]
        np.testing.assert_allclose(y[:, step], single, rtol=1e-6, atol=1e-6)
    assert _numpy(layer(x[:, :2])).shape == (2, 2, 3)


def test_bernstein_dense_without_bias_and_normalization():
    layer = BernsteinDense(2, normalization=None, use_bias=False, degree=2)
    layer.build((None, 3))
    assert layer.bias is None
    assert layer.batch_normalization is None
    assert len(layer.weights) == 3


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_bernstein_dense_without_normalization_is_its_sublayers(policy):
    """The layer calls its activation's `call` directly; the values and the
    dtype are those of the sublayers called one after the other."""
    keras.config.set_dtype_policy(policy)  # conftest restores float32
    layer = BernsteinDense(5, normalization=None, degree=3, bounds=(-1.0, 1.0))
    x = np.random.default_rng(0).standard_normal((6, 4)).astype("float32") * 2.0
    got = layer(x)
    expected = layer.bernstein(layer.dense(x))
    assert got.dtype == expected.dtype
    assert keras.backend.standardize_dtype(got.dtype) == (
        "float16" if policy == "mixed_float16" else "float32"
    )
    np.testing.assert_array_equal(_numpy(got), _numpy(expected))


def test_bernstein_dense_config_carries_dense_and_bernstein_arguments():
    layer = BernsteinDense(
        3,
        degree=6,
        bounds=(-2.0, 1.0),
        extrapolation="clip",
        kernel_regularizer="l2",
        coefficient_constraint="monotonic_coefficients",
        trainable_bounds=True,
        bounds_constraint=constraints.OrderedBounds(min_width=0.25),
    )
    config = layer.get_config()
    assert config["units"] == 3 and config["degree"] == 6
    assert config["bounds"] == [-2.0, 1.0]
    assert config["extrapolation"] == "clip"
    revived = BernsteinDense.from_config(config)
    revived.build((None, 2))
    assert isinstance(
        revived.bernstein.coefficient_constraint, constraints.MonotonicCoefficients
    )
    assert revived.bernstein.bounds_constraint.min_width == 0.25
    assert revived.bernstein.trainable_bounds
    assert revived.dense.kernel_regularizer is not None


def test_global_mixed_float16_policy_trains_bernstein_dense_model():
    keras.config.set_dtype_policy("mixed_float16")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6)).astype("float32")
    y = rng.standard_normal((32, 1)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((6,)),
            BernsteinDense(8, degree=4),
            BernsteinDense(8, degree=4, normalization=None),
            keras.layers.Dense(1, dtype="float32"),
        ]
    )
    for layer in model.layers[:2]:
        assert layer.dtype_policy.name == "mixed_float16"
        assert layer.bernstein.dtype_policy.name == "mixed_float16"
    model.compile(optimizer="adam", loss="mse")
    before = _numpy(model.layers[0].coefficients).copy()
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.any(_numpy(model.layers[0].coefficients) != before)
    for variable in model.weights:
        assert variable.dtype == "float32", variable.path
    hidden = model.layers[0](x[:4])
    assert keras.backend.standardize_dtype(hidden.dtype) == "float16"
    predictions = model.predict(x, verbose=0)
    assert predictions.dtype == np.float32
    assert np.all(np.isfinite(predictions))


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="PyTorch's fused batch normalization"
)
@pytest.mark.parametrize("shape", [(16, 6), (4, 3, 6)])
def test_torch_fused_batch_normalization_matches_keras_layer(shape):
    """BernsteinDense's fused normalization against the Keras layer it stands for:
    outputs, gradients and moving statistics, in training and in inference."""
    import torch

    from keras_bernstein._fast import torch_normalization

    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=shape).astype("float32")
    layers = []
    for _ in range(2):
        layer = keras.layers.BatchNormalization(momentum=0.9)
        layer.build(shape)
        layer.gamma.assign(rng.uniform(0.5, 2.0, shape[-1]))
        layer.beta.assign(rng.normal(size=shape[-1]))
        layers.append(layer)
    layers[1].set_weights(layers[0].get_weights())
    fused, reference = layers
    assert torch_normalization.supports(ops.convert_to_tensor(x))
    upstream = torch.as_tensor(rng.normal(size=shape).astype("float32"))
    for training in (True, True, False):
        results = []
        for layer, function in (
            (fused, lambda a: torch_normalization.batch_normalization(fused, a, training)),
            (reference, lambda a: reference(a, training=training)),
        ):
            inputs = torch.tensor(x, requires_grad=True)
            outputs = function(inputs)
            grads = torch.autograd.grad(
                outputs, [inputs, layer.gamma.value, layer.beta.value], upstream
            )
            results.append([outputs.detach(), *grads])
        for label, a, b in zip(("outputs", "x", "gamma", "beta"), *results):
            np.testing.assert_allclose(
                a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4, err_msg=label
            )
        for a, b in zip(fused.get_weights(), reference.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    one_row = np.zeros((1,) * (len(shape) - 1) + (shape[-1],), "float32")
    assert not torch_normalization.supports(ops.convert_to_tensor(one_row))


def two_steps_then_predict(x, y, extrapolation, jit_compile="auto"):
    """Weights and predictions of a BernsteinDense(4, degree=3) -> Dense(1)
    model (normalization scale and offset set away from 1 and 0) after two
    SGD steps on `(x, y)`."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            BernsteinDense(4, degree=3, extrapolation=extrapolation),
            keras.layers.Dense(1),
        ]
    )
    model.layers[0].batch_normalization.gamma.assign(np.linspace(0.5, 2.0, 4))
    model.layers[0].batch_normalization.beta.assign(np.linspace(-1.0, 1.0, 4))
    model.compile(optimizer="sgd", loss="mse", jit_compile=jit_compile)
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    return model.get_weights() + [model.predict_on_batch(x)]


def fast_and_unfused(shape, extrapolation, monkeypatch, fall_back, jit_compile="auto"):
    """`two_steps_then_predict` on the same data twice: with the fast path,
    then with `fall_back()` applied and the normalization unfused."""
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, size=shape).astype("float32")
    y = rng.normal(size=shape[:-1] + (1,)).astype("float32")
    fast = two_steps_then_predict(x, y, extrapolation, jit_compile)
    fall_back()
    monkeypatch.setattr(BernsteinDense, "_plain_normalization", lambda *args: False)
    return fast, two_steps_then_predict(x, y, extrapolation, jit_compile)


@pytest.mark.parametrize("shape", [(32, 5), (8, 3, 5)])
@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
def test_bernstein_dense_trains_the_same_with_the_fused_normalization(
    shape, extrapolation, monkeypatch
):
    """Training steps and inference of a BernsteinDense model with its fused
    normalization (PyTorch's kernel; elsewhere normalization and polynomial as
    one function, which only TensorFlow uses by default) change the weights
    and moving statistics as the Keras BatchNormalization layer followed by
    Bernstein does."""
    from keras_bernstein import ops as bernstein_ops

    monkeypatch.setattr(
        bernstein_ops, "_FUSED_NORMALIZATION_BACKENDS", ("jax", "tensorflow")
    )
    results = fast_and_unfused(shape, extrapolation, monkeypatch, fall_back=lambda: None)
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow's XLA-compiled polynomial"
)
@pytest.mark.parametrize("model_jit_compile", [False, True])
def test_bernstein_dense_trains_the_same_with_the_compiled_polynomial(
    model_jit_compile, monkeypatch
):
    """On TensorFlow, without its C++ kernels, the polynomial runs as its own
    XLA function (also inside a model that XLA compiles whole); training
    matches the uncompiled function."""
    from keras_bernstein._fast import tensorflow_compilation

    monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", "0")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 5)).astype("float32") * 2.0
    y = rng.normal(size=(32, 1)).astype("float32")
    weights = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(
                tensorflow_compilation,
                "_call_for_any_batch",
                lambda function, tensors, *shape_arguments: function(*tensors),
            )
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((5,)), BernsteinDense(4, degree=5), keras.layers.Dense(1)]
        )
        model.compile(optimizer="sgd", loss="mse", jit_compile=model_jit_compile)
        model.train_on_batch(x, y)
        model.train_on_batch(x, y)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TensorFlow's XLA-compiled polynomial"
)
def test_compiled_polynomial_is_traced_once_for_every_batch_size(monkeypatch):
    """A new batch size makes XLA compile the polynomial's two functions for
    it (where the C++ kernels do not run), but does not trace them again
    (each trace stays resident in memory)."""
    from keras_bernstein._fast import tensorflow_compilation

    monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", "0")

    traced = []
    compile_function = tensorflow_compilation._compiled.__wrapped__

    @functools.lru_cache(maxsize=None)
    def recording(function):
        traced.append(compile_function(function))
        return traced[-1]

    monkeypatch.setattr(tensorflow_compilation, "_compiled", recording)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 5)).astype("float32")
    y = rng.normal(size=(24, 1)).astype("float32")
    model = keras.Sequential(
        [keras.Input((5,)), BernsteinDense(4, degree=3), keras.layers.Dense(1)]
    )
    model.compile(optimizer="sgd", loss="mse")
    traces = []
    for batch_size in (8, 16, 24):
        model.train_on_batch(x[:batch_size], y[:batch_size])
        traces.append(sum(f.experimental_get_tracing_count() for f in traced))
    assert traces == [2, 2, 2]


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("normalization", [None, "batch"])
def test_bernstein_dense_trains_the_same_with_the_cpu_kernels(
    jit_compile, normalization, kernel_targets, monkeypatch
):
    """Training steps and inference with the C++ kernels (which TensorFlow
    leaves out of a model that XLA compiles whole) match those without."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(64, 20)).astype("float32") * 2.0
    y = rng.normal(size=(64, 1)).astype("float32")
    results = []
    for setting in ("1", "0"):
        monkeypatch.setenv("KERAS_BERNSTEIN_CPU_KERNEL", setting)
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((20,)),
                BernsteinDense(40, degree=6, normalization=normalization),
                BernsteinDense(40, degree=6, normalization=normalization),
                keras.layers.Dense(1),
            ]
        )
        model.compile(optimizer="adam", loss="mse", jit_compile=jit_compile)
        for _ in range(3):
            model.train_on_batch(x, y)
        results.append(model.get_weights() + [model.predict(x, verbose=0)])
    kinds = {kind for *_, kind in kernel_targets}
    if jit_compile and keras.backend.backend() == "tensorflow":
        assert not kinds  # XLA compiles the whole step
    else:
        assert "Gradient" in kinds or "BatchNormalizedGradient" in kinds
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bernstein_dense_normalizes_without_the_masked_steps():
    """With a mask (here from Masking) the batch statistics skip the masked
    steps, as Keras' BatchNormalization does with the mask."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 6, 3)).astype("float32") * 2.0 + 1.0
    x[:, 4:] = 0.0
    inputs = keras.Input((6, 3))
    outputs = BernsteinDense(5, degree=3)(keras.layers.Masking(0.0)(inputs))
    model = keras.Model(inputs, outputs)
    layer = model.layers[-1]
    got = ops.convert_to_numpy(model(x, training=True))
    hidden = layer.dense(x)
    mask = ops.convert_to_tensor(np.any(x != 0.0, axis=-1))
    expected = layer.bernstein(layer.batch_normalization(hidden, training=True, mask=mask))
    unmasked = layer.bernstein(layer.batch_normalization(hidden, training=True))
    np.testing.assert_allclose(got, ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, ops.convert_to_numpy(unmasked), atol=1e-3)


def test_compiled_inference_follows_weight_updates(torch_compiled):
    """The compiled polynomial keeps the layer's tables between inference
    calls; a training step or an `assign` in between must show in the next
    inference as in the uncompiled formula."""
    import torch

    from keras_bernstein import ops as bernstein_ops

    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((5,)), BernsteinDense(4, degree=3), keras.layers.Dense(1)]
    )
    model.compile(optimizer="sgd", loss="mse")
    layer = model.layers[0]

    def inference_and_reference():
        with torch.no_grad():
            outputs = layer(x, training=False)
            reference = _formula._evaluate(
                layer.pre_activation(x), layer.coefficients, layer.bounds, "linear"
            )
        outputs, reference = ops.convert_to_numpy(outputs), ops.convert_to_numpy(reference)
        np.testing.assert_allclose(outputs, reference, rtol=1e-5, atol=1e-6)
        return outputs

    first = inference_and_reference()
    model.train_on_batch(x, y)
    trained = inference_and_reference()
    layer.coefficients.assign(layer.coefficients * 2.0 + 1.0)
    assigned = inference_and_reference()
    assert not np.allclose(first, trained) and not np.allclose(trained, assigned)
    assert torch_compiled.count("_evaluate_normalized") == 3


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("extrapolation", ["linear", "clip", "polynomial"])
@pytest.mark.parametrize("degree", [1, 3, 8])
def test_compiled_inference_from_kept_tables_matches_the_formula(
    degree, extrapolation, dtype, tolerance, torch_compiled, monkeypatch
):
    """Without a gradient the compiled polynomial runs from per-neuron tables
    (`ops._polynomial_tables`, `ops._normalized_tables`) kept between calls:
    its values match the eager formula, NaN and huge inputs included, and
    the tables are computed again exactly when a source changes (an
    in-place update, or new values in a new tensor)."""
    import torch

    from keras_bernstein import ops as bernstein_ops
    from keras_bernstein._fast import torch_compilation

    tabulated = []
    kept_tables = torch_compilation._kept_tables

    def recorded(tabulate, sources):
        before = torch_compilation._tables.get((tabulate, id(sources[-2])))
        tables = kept_tables(tabulate, sources)
        after = torch_compilation._tables[(tabulate, id(sources[-2]))]
        tabulated.append(after is not before)
        return tables

    monkeypatch.setattr(torch_compilation, "_kept_tables", recorded)
    rng = np.random.default_rng(degree)
    units = 6
    x = rng.normal(size=(40, units)) * 3.0
    x[0, 0], x[1, 1], x[2, 2] = np.nan, 1e30, -1e30
    x = torch.tensor(x, dtype=getattr(torch, dtype))
    coefficients = torch.tensor(rng.normal(size=(units, degree + 1)), dtype=x.dtype)
    lower = -rng.uniform(0.5, 1.5, size=units)
    bounds = torch.tensor(np.stack([lower, lower + rng.uniform(0.5, 3.0, size=units)], -1), dtype=x.dtype)
    statistics = [torch.tensor(rng.uniform(0.5, 1.5, size=units), dtype=x.dtype) for _ in range(4)]

    def check():
        with torch.no_grad():
            got = bernstein_ops.bernstein_polynomial(x, coefficients, bounds, extrapolation)
            expected = _formula._evaluate(x, coefficients, bounds, extrapolation)
            got_normalized = bernstein_ops.normalized_bernstein_polynomial(
                x, *statistics, coefficients, bounds, extrapolation
            )
            expected_normalized = _formula._evaluate_normalized(
                x, *statistics, coefficients, bounds, extrapolation
            )
        # `t` by a multiplication, not a division: its rounding grows with
        # the degree in the polynomial's own extrapolation far outside.
        rtol = tolerance * (10.0 if extrapolation == "polynomial" else 1.0)
        for a, b in ((got, expected), (got_normalized, expected_normalized)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=rtol, atol=tolerance)
        return got.numpy(), got_normalized.numpy()

    first = check()
    assert tabulated == [True, True]
    again = check()  # same tensors: kept
    statistics[1] = statistics[1].clone()  # a new tensor, same values: kept
    check()
    assert tabulated[2:] == [False, False, False, False]
    np.testing.assert_array_equal(first[0], again[0])
    with torch.no_grad():
        coefficients.mul_(2.0)  # in place: both tables again
    check()
    statistics[1] = statistics[1] * 0.5  # new values: the normalized one again
    changed = check()
    assert tabulated[6:] == [True, True, False, True]
    assert not np.allclose(changed[1], first[1], equal_nan=True)
    # A gradient needs the formula itself (AOTAutograd's backward).
    coefficients.requires_grad_(True)
    bernstein_ops.bernstein_polynomial(x, coefficients, bounds, extrapolation)
    assert len(tabulated) == 10


@pytest.mark.parametrize(
    "shape, extrapolation, model_jit_compile",
    [((32, 5), e, False) for e in ("linear", "clip", "polynomial")]
    + [((8, 3, 5), "linear", False), ((32, 5), "linear", True)],
)
def test_bernstein_dense_trains_the_same_compiled_by_torch(
    shape, extrapolation, model_jit_compile, torch_compiled, monkeypatch
):
    """PyTorch-CPU's default: normalization and polynomial compiled by
    TorchInductor, in training (batch statistics) and inference (moving
    statistics), also inside a model compiled whole. Weights, moving
    statistics and predictions match Keras' BatchNormalization followed by
    the eager polynomial."""
    from keras_bernstein._fast import torch_compilation

    results = fast_and_unfused(
        shape,
        extrapolation,
        monkeypatch,
        fall_back=lambda: monkeypatch.setattr(torch_compilation, "_compiler_works", False),
        jit_compile=model_jit_compile,
    )
    if not model_jit_compile:
        assert set(torch_compiled) == {
            "_evaluate_batch_normalized", "_evaluate_normalized"
        }, torch_compiled
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bernstein_dense_with_a_custom_activation_calls_it():
    """The fused normalization stands for the stock `Bernstein` only: a
    subclass with its own `call` (the benchmarks' power form) is called."""

    class Halved(Bernstein):
        def call(self, inputs):
            return super().call(inputs) * 0.5

    class HalvedDense(BernsteinDense):
        def __init__(self, units, **kwargs):
            super().__init__(units, **kwargs)
            self.bernstein = Halved(degree=self.degree, name="bernstein")

    x = np.random.default_rng(4).normal(size=(16, 5)).astype("float32")
    outputs = []
    for layer_class in (BernsteinDense, HalvedDense):
        keras.utils.set_random_seed(0)
        layer = layer_class(3, degree=4)
        outputs.append(ops.convert_to_numpy(layer(x, training=True)))
    np.testing.assert_allclose(outputs[1], 0.5 * outputs[0], rtol=1e-6, atol=1e-6)
