"""Tests for `keras_bernstein.plotting` (rendered headless with Agg)."""

import os

import keras
import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from keras_bernstein import Bernstein  # noqa: E402
from keras_bernstein import BernsteinDense  # noqa: E402
from keras_bernstein import plotting  # noqa: E402


def _pixels(figure):
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def _assert_not_blank(figure):
    pixels = _pixels(figure)
    colored = np.any(pixels < 200, axis=-1).mean()
    # Curves, markers, text: well above a few stray pixels, far below full.
    assert 0.01 < colored < 0.9, colored


def _model():
    return keras.Sequential(
        [
            keras.Input((3,)),
            BernsteinDense(5, degree=4, name="block"),
            Bernstein(degree=3, bounds=(-2.0, 1.0), extrapolation="clip", name="act"),
            keras.layers.Dense(1),
        ]
    )


def test_plot_activations_of_a_loaded_model(tmp_path):
    model = _model()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    png = str(tmp_path / "activations.png")
    figure = plotting.plot_activations(loaded, neurons_per_layer=3, path=png)
    assert len([ax for ax in figure.axes if ax.axison]) == 6  # 2 layers x 3
    assert os.path.getsize(png) > 5000
    _assert_not_blank(figure)
    # The drawn curve is the layer's own activation.
    ax = figure.axes[0]
    x, y = ax.lines[0].get_data()
    layer = loaded.get_layer("block").bernstein
    expected = keras.ops.convert_to_numpy(layer(np.tile(x[:, None], (1, 5))))[:, 0]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_plot_activations_of_a_layer_with_few_neurons():
    layer = Bernstein(degree=5)
    layer.build((None, 2))
    figure = plotting.plot_activations(layer, neurons_per_layer=4)
    assert len([ax for ax in figure.axes if ax.axison]) == 2
    _assert_not_blank(figure)


def test_plot_dead_neuron_ratio(tmp_path):
    history = keras.callbacks.History()
    history.history = {
        "loss": [1.0, 0.8, 0.7],
        "dead_neuron_ratio": [0.5, float("nan"), 0.25],
        "dead_neuron_ratio/dense": [1.0, float("nan"), 0.5],
        "dead_neuron_ratio/dense_1": [0.0, float("nan"), 0.0],
    }
    png = str(tmp_path / "dead.png")
    figure = plotting.plot_dead_neuron_ratio(history, path=png)
    assert os.path.getsize(png) > 5000
    _assert_not_blank(figure)
    labels = [line.get_label() for line in figure.axes[0].lines]
    assert labels == ["dense", "dense_1", "all layers"]
    x, y = figure.axes[0].lines[0].get_data()
    np.testing.assert_array_equal(x, [1, 3])  # the NaN epoch is skipped
    np.testing.assert_array_equal(y, [1.0, 0.5])
    # A plain dict works too.
    plotting.plot_dead_neuron_ratio(history.history)


def test_bad_arguments():
    with pytest.raises(ValueError, match="history"):
        plotting.plot_dead_neuron_ratio({"loss": [1.0]})
    with pytest.raises(ValueError, match="layer_or_model"):
        plotting.plot_activations(keras.layers.Dense(2))
    with pytest.raises(ValueError, match="layer_or_model"):
        plotting.plot_activations(Bernstein())
    with pytest.raises(ValueError, match="neurons_per_layer"):
        plotting.plot_activations(_model(), neurons_per_layer=0)


def test_plot_activations_finds_nested_layers():
    nested = keras.Sequential([Bernstein(degree=3, name="inner")])
    model = keras.Sequential(
        [keras.Input((3,)), BernsteinDense(2, name="outer"), nested, keras.layers.Dense(1)]
    )
    figure = plotting.plot_activations(model, neurons_per_layer=2)
    titles = [ax.get_title() for ax in figure.axes if ax.axison]
    assert [t.split(" ·")[0] for t in titles] == ["outer", "outer", "inner", "inner"]
