"""Tests for `keras_bernstein.compositional` (triangle-wave ReLU networks)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_bernstein import compositional
from keras_bernstein.compositional import TriangleWaveNetwork
from tests.layer_test import run_layer_test


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def _numpy_wave_sum(x, peaks, scales, sign, intercept, slope):
    """An independent float64 closed form: piecewise triangles, no ReLU."""
    total = intercept + slope * x
    wave = x
    for peak, scale in zip(peaks, scales):
        wave = np.where(wave <= peak, wave / peak, (1.0 - wave) / (1.0 - peak))
        total = total + sign * scale * wave
    return total


def _network(depth, dtype, **kwargs):
    network = TriangleWaveNetwork(depth, dtype=dtype, **kwargs)
    network.build((None, 1))
    return network


def test_triangle_wave_values():
    t = np.array([0.0, 0.15, 0.3, 0.65, 1.0])
    values = _numpy(compositional.triangle_wave(t, 0.3))
    np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_differentiable_scales_obey_rule():
    peaks = np.array([0.3, 0.6, 0.45, 0.7, 0.2], "float32")
    scales = _numpy(compositional.differentiable_scales(ops.convert_to_tensor(0.25), peaks))
    assert scales.shape == (5,)
    following = np.append(peaks[2:], compositional.TAIL_PEAK)
    np.testing.assert_allclose(
        scales[1:], scales[:-1] * (1 - peaks[1:]) * following, rtol=1e-6
    )
    assert np.all(scales[2:] / scales[:-2] <= 0.25 + 1e-7)


@pytest.mark.parametrize("scale_rule", ["differentiable", "free"])
@pytest.mark.parametrize("sign", [-1, 1])
def test_network_equals_closed_form_float64(float64, scale_rule, sign):
    network = _network(
        6,
        "float64",
        sign=sign,
        scale_rule=scale_rule,
        peak_initializer=keras.initializers.RandomUniform(0.1, 0.9, seed=3),
        intercept=0.2,
        slope=-0.5,
    )
    x = np.linspace(0.0, 1.0, 4097)[:, None]
    expected = _numpy_wave_sum(
        x,
        _numpy(network.peaks),
        _numpy(network.all_scales()),
        sign,
        0.2,
        -0.5,
    )
    outputs = _numpy(network(x))
    assert outputs.dtype == np.float64
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_numpy(network.closed_form(x)), expected, rtol=0, atol=1e-12)
    plain = network.to_sequential()
    assert all(isinstance(layer, keras.layers.Dense) for layer in plain.layers)
    assert [layer.units for layer in plain.layers] == [4] * 6 + [1]
    # `Dense` multiplies with `ops.matmul`, which Keras 3.15's PyTorch backend
    # rounds to float32 for float64 operands.
    matmul_dtype = keras.backend.standardize_dtype(
        ops.matmul(ops.ones((1, 1), "float64"), ops.ones((1, 1), "float64")).dtype
    )
    tolerance = 1e-12 if matmul_dtype == "float64" else 1e-6
    np.testing.assert_allclose(_numpy(plain(x)), expected, rtol=0, atol=tolerance)


def test_network_equals_closed_form_float32():
    network = _network(
        5, "float32", peak_initializer=keras.initializers.RandomUniform(0.2, 0.8, seed=1)
    )
    x = np.linspace(0.0, 1.0, 1001, dtype="float32")[:, None]
    expected = _numpy_wave_sum(
        x.astype("float64"),
        _numpy(network.peaks).astype("float64"),
        _numpy(network.all_scales()).astype("float64"),
        -1,
        0.0,
        1.0,
    )
    np.testing.assert_allclose(_numpy(network(x)), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 7])
def test_exactly_two_to_the_depth_pieces(float64, depth):
    network = _network(
        depth,
        "float64",
        scale_rule="free",
        peak_initializer=keras.initializers.RandomUniform(0.3, 0.7, seed=depth),
    )
    # The narrowest piece is wider than 0.3**depth >= 2e-4: 2e5 cells resolve it.
    x = np.linspace(0.0, 1.0, 200_001)
    y = _numpy(network(x[:, None]))[:, 0]
    assert compositional.count_linear_pieces(x, y) == 2**depth


def test_count_linear_pieces():
    x = np.linspace(0.0, 1.0, 1001)
    assert compositional.count_linear_pieces(x, 2 * x + 1) == 1
    assert compositional.count_linear_pieces(x, np.abs(x - 0.3337)) == 2
    assert compositional.count_linear_pieces(x, np.abs(x - 0.5)) == 2


@pytest.mark.parametrize("depth", [1, 2, 4, 6, 8])
def test_half_peaks_reproduce_square_error_bound(float64, depth):
    # Yarotsky: all a_i = 1/2, σ = -1, s_0 = 1/4 gives x², max error 2^(-2L-2),
    # reached halfway between the 2^L + 1 dyadic nodes where it is exact.
    network = _network(depth, "float64")
    x = np.linspace(0.0, 1.0, 2 ** (depth + 3) + 1)
    error = _numpy(network(x[:, None]))[:, 0] - x**2
    assert np.max(np.abs(error)) == pytest.approx(2.0 ** (-2 * depth - 2), rel=1e-12)
    assert np.all(error >= -1e-15)
    nodes = x[:: 2**3]
    np.testing.assert_allclose(
        _numpy(network(nodes[:, None]))[:, 0], nodes**2, rtol=0, atol=1e-15
    )


def test_layer_checks(tmp_path):
    rng = np.random.default_rng(0)
    run_layer_test(
        TriangleWaveNetwork,
        {"depth": 3, "sign": 1, "scale_rule": "free"},
        input_shape=(8, 1),
        expected_output_shape=(8, 1),
        expected_num_trainable_weights=3,
        expected_num_non_trainable_weights=0,
        expected_weight_shapes={"peaks": (3,), "scales": (3,), "linear_part": (2,)},
        input_data=rng.uniform(size=(8, 1)).astype("float32"),
        tmp_path=tmp_path,
    )


def test_peaks_stay_inside_interval_during_training():
    network = TriangleWaveNetwork(3, epsilon=0.05)
    model = keras.Sequential([keras.Input((1,)), network])
    model.compile(optimizer=keras.optimizers.SGD(10.0), loss="mse")
    x = np.linspace(0.0, 1.0, 64, dtype="float32")[:, None]
    model.fit(x, np.sin(9 * x), batch_size=64, epochs=5, verbose=0)
    peaks = _numpy(network.peaks)
    assert np.all(peaks >= 0.05 - 1e-7) and np.all(peaks <= 0.95 + 1e-7)
    assert np.all(_numpy(network.scales) > 0)


def test_train_two_stage_improves_and_returns_plain_dense():
    x = np.linspace(0.0, 1.0, 100, dtype="float32")[:, None]
    y = x**3
    network = TriangleWaveNetwork(3, first_scale=0.2)
    initial = float(np.mean((_numpy(network(x)) - y) ** 2))
    model, pretrain_history, history = compositional.train_two_stage(
        network,
        x,
        y,
        pretrain_epochs=15,
        epochs=15,
        optimizer=keras.optimizers.Adam(1e-2),
    )
    assert len(pretrain_history.history["loss"]) == 15
    assert len(history.history["loss"]) == 15
    assert all(type(layer) is keras.layers.Dense for layer in model.layers)
    final = float(np.mean((_numpy(model(x)) - y) ** 2))
    assert final < 0.5 * initial


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"depth": 0}, "depth"),
        ({"depth": 2.0}, "depth"),
        ({"depth": 2, "sign": 0}, "sign"),
        ({"depth": 2, "scale_rule": "rule"}, "scale_rule"),
        ({"depth": 2, "epsilon": 0.5}, "epsilon"),
        ({"depth": 2, "first_scale": 0.0}, "first_scale"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"Received: {message}="):
        TriangleWaveNetwork(**kwargs)


def test_rejects_more_than_one_feature():
    with pytest.raises(ValueError, match="one input feature"):
        TriangleWaveNetwork(2)(np.zeros((3, 2), "float32"))


def test_train_two_stage_rejects_bad_arguments():
    x = np.zeros((4, 1), "float32")
    with pytest.raises(ValueError, match="Received: network="):
        compositional.train_two_stage(keras.layers.Dense(1), x, x)
    with pytest.raises(ValueError, match="Received: epochs=-1"):
        compositional.train_two_stage(TriangleWaveNetwork(2), x, x, epochs=-1)


@keras.saving.register_keras_serializable(package="keras_bernstein_tests")
class SubclassedTriangleWave(keras.Model):
    def __init__(self, scale_rule="free", **kwargs):
        super().__init__(**kwargs)
        self.scale_rule = scale_rule
        self.network = TriangleWaveNetwork(3, scale_rule=scale_rule)

    def call(self, inputs):
        return self.network(inputs)

    def get_config(self):
        return {**super().get_config(), "scale_rule": self.scale_rule}


@pytest.mark.parametrize("scale_rule", ["free", "differentiable"])
def test_subclassed_model_builds_in_fit_and_reloads(scale_rule, tmp_path):
    # `fit` builds the layer inside a trace: its initial scales are tensors there.
    model = SubclassedTriangleWave(scale_rule)
    model.compile(optimizer="adam", loss="mse")
    x = np.linspace(0.0, 1.0, 32, dtype="float32")[:, None]
    model.fit(x, x, epochs=1, batch_size=8, verbose=0)
    path = str(tmp_path / "wave.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
