"""Plots of learned Bernstein activations and of dead-neuron ratios.

matplotlib is an optional dependency (`pip install matplotlib`, or the
`examples` extra); it is imported only when a plot is drawn. The functions
build a `matplotlib.figure.Figure` directly, without `pyplot`, so they work
headless and leave no global figure state behind.
"""

import math
import numbers

import numpy as np
from keras import ops

from keras_bernstein import ops as bernstein_ops
from keras_bernstein._arguments import check_positive_integer
from keras_bernstein._model_layers import bernstein_activations


def _new_figure(figsize):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "keras_bernstein.plotting needs matplotlib: `pip install "
            "matplotlib` (or `pip install keras-bernstein[plots]`)."
        ) from error
    return Figure(figsize=figsize, layout="constrained")


def _save(figure, path):
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def plot_activations(
    layer_or_model,
    neurons_per_layer=4,
    margin=0.25,
    num_points=201,
    path=None,
    figsize=None,
):
    """Draws the learned activation curves of a sample of neurons.

    One row per Bernstein layer (`Bernstein`, or the activation of a
    `BernsteinDense`), one panel per sampled neuron: the curve `σ_j(x)`
    (with the layer's extrapolation outside `[l_j, u_j]`), the interval
    `[l_j, u_j]` shaded, and the control points `(l + (u - l) k / n, c_k)`.
    Works on a model loaded from a `.keras` file.

    Args:
        layer_or_model: A `Bernstein` or `BernsteinDense` layer, or a model
            that holds some, nested ones included (built).
        neurons_per_layer: Positive integer: how many neurons to draw per
            layer, evenly spread over the layer's neurons.
        margin: Nonnegative float: the plotted range extends `[l, u]` by this
            fraction of `u - l` on each side, to show the extrapolation.
        num_points: Positive integer: points per curve.
        path: Optional file name; the figure is also saved there (PNG for a
            `.png` name).
        figsize: Optional `(width, height)` in inches; default 2.6 inches per
            panel.

    Returns:
        A `matplotlib.figure.Figure`.

    Example:
        >>> model = keras.saving.load_model("model.keras")
        >>> plot_activations(model, path="activations.png")
    """
    layers = bernstein_activations(layer_or_model)
    if not layers:
        raise ValueError(
            "`layer_or_model` must be a Bernstein or BernsteinDense layer, or "
            "a model with such top-level layers. "
            f"Received: layer_or_model={layer_or_model!r}"
        )
    if any(not layer.built for _, layer in layers):
        raise ValueError(
            "`layer_or_model` must be built (call it on data or give the "
            f"model an `Input`). Received: layer_or_model={layer_or_model!r}"
        )
    neurons_per_layer = check_positive_integer(neurons_per_layer, "neurons_per_layer")
    num_points = check_positive_integer(num_points, "num_points")
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or margin < 0:
        raise ValueError(
            f"`margin` must be a nonnegative number. Received: margin={margin!r}"
        )
    columns = neurons_per_layer
    figure = _new_figure(figsize or (2.6 * columns, 2.3 * len(layers)))
    axes = figure.subplots(len(layers), columns, squeeze=False)
    for row, (name, layer) in enumerate(layers):
        coefficients = ops.convert_to_numpy(layer.coefficients)
        bounds = ops.convert_to_numpy(layer.bounds)
        degree = layer.degree
        coefficients = coefficients.reshape(-1, degree + 1)
        bounds = bounds.reshape(-1, 2)
        count = coefficients.shape[0]
        chosen = np.unique(
            np.linspace(0, count - 1, min(columns, count)).round().astype(int)
        )
        lower, upper = bounds[chosen, 0], bounds[chosen, 1]
        width = upper - lower
        # One column of `x` per chosen neuron, each over its own interval.
        steps = np.linspace(-margin, 1.0 + margin, num_points)[:, None]
        x = (lower + steps * width).astype("float32")
        y = ops.convert_to_numpy(
            bernstein_ops.bernstein_polynomial(
                ops.convert_to_tensor(x),
                ops.convert_to_tensor(coefficients[chosen]),
                ops.convert_to_tensor(bounds[chosen]),
                layer.extrapolation,
            )
        )
        nodes = bernstein_ops.bernstein_nodes(degree)
        for column in range(columns):
            ax = axes[row, column]
            if column >= len(chosen):
                ax.set_axis_off()
                continue
            ax.axvspan(lower[column], upper[column], color="tab:blue", alpha=0.08)
            ax.plot(x[:, column], y[:, column], color="tab:blue", lw=1.8)
            ax.plot(
                lower[column] + nodes * width[column],
                coefficients[chosen[column]],
                "o--",
                color="tab:orange",
                ms=3.5,
                lw=0.8,
            )
            ax.set_title(f"{name} · neuron {chosen[column]}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0, 0].legend(
        ["[l, u]", "σ(x)", "control points"], fontsize=7, loc="upper left"
    )
    return _save(figure, path)


def plot_dead_neuron_ratio(history, key="dead_neuron_ratio", path=None, figsize=(6.0, 3.6)):
    """Draws the per-layer dead-neuron ratio over the epochs.

    Reads the entries written by `keras_bernstein.callbacks.DeadNeuronRatio`
    (`"<key>/<layer>"` per layer, `"<key>"` overall); epochs on which the
    callback did not measure (NaN) are skipped.

    Args:
        history: The `History` returned by `model.fit`, or its `.history`
            dict (e.g. several runs merged by hand).
        key: The log key to plot; `"out_of_bounds_ratio"` plots the bounds
            coverage of `keras_bernstein.callbacks.BoundsCoverage`.
        path: Optional file name; the figure is also saved there.
        figsize: `(width, height)` in inches.

    Returns:
        A `matplotlib.figure.Figure`.

    Example:
        >>> history = model.fit(..., callbacks=[DeadNeuronRatio(x[:1024])])
        >>> plot_dead_neuron_ratio(history, path="dead.png")
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or key not in logs:
        raise ValueError(
            f"`history` must be a `History` or dict holding `{key}` (from the "
            "DeadNeuronRatio callback). Received: history with keys "
            f"{sorted(logs) if isinstance(logs, dict) else type(logs)}"
        )
    figure = _new_figure(figsize)
    ax = figure.subplots()
    per_layer = [name for name in logs if name.startswith(key + "/")]
    for name in per_layer + [key]:
        values = np.asarray(logs[name], dtype="float64")
        epochs = np.arange(1, len(values) + 1)
        measured = ~np.isnan(values)
        overall = name == key
        ax.plot(
            epochs[measured],
            values[measured],
            "o-" if not overall else "s--",
            label="all layers" if overall else name[len(key) + 1 :],
            color="black" if overall else None,
            lw=2.2 if overall else 1.4,
            ms=4,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(key.replace("_", " "))
    top = max(
        (float(np.nanmax(logs[n])) for n in per_layer + [key] if not np.all(np.isnan(logs[n]))),
        default=0.0,
    )
    ax.set_ylim(-0.02, max(0.1, math.ceil(top * 10 + 0.5) / 10))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(figure, path)
