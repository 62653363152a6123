"""Monitoring of activation health during `fit`, and the bounds update.

The measures read the model through `keras_bernstein._probing`, which runs
the model's graph in inference mode and records, at every monitored layer,
the *pre-activation* `z` fed to its elementwise nonlinearity `σ(z)` (see
that module for how each kind of layer is split, and what a unit is).

On top of it sit `collect_pre_activations` (the raw `z`, e.g. to fit bounds to
observed quantiles), `dead_units` / `dead_neuron_ratio` and
`out_of_bounds_ratio`, and the callbacks `DeadNeuronRatio` and
`BoundsCoverage` that write those figures into the `logs` of `model.fit`.
`BoundsUpdate` widens the Bernstein intervals toward the probed `z` with
`keras_bernstein.transforms.rebound`; `DomainBounds` sets them from an input
domain with `keras_bernstein.transforms.bounds_from_domain`.

Probing never changes training: layers run with `training=False` (batch
normalization statistics are not updated, dropout draws no random numbers),
no variable is assigned, and gradients are taken with respect to the probe's
own tensors only.
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_bernstein import _autodiff
from keras_bernstein._arguments import check_interval
from keras_bernstein._arguments import check_nonnegative_number
from keras_bernstein._arguments import check_positive_integer
from keras_bernstein._arguments import describe
from keras_bernstein._probing import ACTIVATION_LAYERS  # noqa: F401
from keras_bernstein._probing import DEFAULT_BATCH_SIZE
from keras_bernstein._probing import DEFAULT_MAX_BATCHES
from keras_bernstein._probing import ELEMENTWISE_ACTIVATIONS  # noqa: F401
from keras_bernstein._probing import _check_layers
from keras_bernstein._probing import _compile
from keras_bernstein._probing import _forward
from keras_bernstein._probing import _pre_activations_in_batches
from keras_bernstein._probing import _resolve_layers
from keras_bernstein._probing import bernstein_layers
from keras_bernstein._probing import collect_pre_activations  # noqa: F401
from keras_bernstein._probing import monitored_layers
from keras_bernstein._probing import probe_batches
from keras_bernstein.transforms import _domain_bounds
from keras_bernstein.transforms import _widen_toward_data

CRITERIA = ("derivative", "gradient")


# --- Dead units -------------------------------------------------------------


def _check_criterion(criterion, threshold, tolerance):
    if criterion not in CRITERIA:
        raise ValueError(
            f"`criterion` must be one of {CRITERIA}. "
            f"Received: criterion={criterion!r}"
        )
    check_nonnegative_number(threshold, "threshold")
    if (
        isinstance(tolerance, bool)
        or not isinstance(tolerance, numbers.Real)
        or not 0 <= tolerance < 1
    ):
        raise ValueError(
            "`tolerance` must be a number in [0, 1). "
            f"Received: tolerance={tolerance!r}"
        )


def _per_sample_loss(model, loss):
    """`fn(y, y_pred)` returning unreduced per-sample losses."""
    if loss is None:
        loss = getattr(model, "loss", None)
    if loss is None:
        raise ValueError(
            "The `gradient` criterion needs a loss: compile the model with "
            "one or pass `loss=`. Received: loss=None"
        )
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError(
            "The `gradient` criterion supports single-output models with one "
            f"loss. Received: loss={loss!r}"
        )
    loss = keras.losses.get(loss)
    # `Loss.call` is the unreduced per-sample loss by Keras' contract.
    return loss.call if isinstance(loss, keras.losses.Loss) else loss


def _slopes_by_derivative(model, monitored, x_batch, y_batch, loss_fn):
    _, records = _forward(model, monitored, x_batch)
    return [(site, site.derivative(z)) for site, z in records]


def _slopes_by_gradient(model, monitored, x_batch, y_batch, loss_fn):
    if y_batch is None:
        raise ValueError(
            "The `gradient` criterion needs targets: pass `y` (or batches "
            "of `(x, y)`). Received: y=None"
        )
    _, records = _forward(model, monitored, x_batch)
    zeros = [ops.zeros_like(z) for _, z in records]
    y_batch = keras.tree.map_structure(ops.convert_to_tensor, y_batch)

    def total_loss(*perturbations):
        outputs, _ = _forward(model, monitored, x_batch, perturbations)
        if isinstance(outputs, (list, tuple, dict)):
            raise ValueError(
                "The `gradient` criterion supports single-output models. "
                f"Received: model with outputs {model.outputs}"
            )
        # Summed, not averaged: the gradient at sample i is then the
        # gradient of sample i's own loss, independent of the batch size.
        return ops.sum(loss_fn(y_batch, ops.cast(outputs, "float32")))

    grads = _autodiff.gradients(total_loss, zeros)
    return [(site, g) for (site, _), g in zip(records, grads)]


def dead_units(
    model,
    x,
    y=None,
    criterion="derivative",
    threshold=1e-6,
    tolerance=0.0,
    layers=None,
    batch_size=DEFAULT_BATCH_SIZE,
    loss=None,
    max_batches=DEFAULT_MAX_BATCHES,
):
    """Which units of the monitored layers are dead on probe inputs.

    With `criterion="derivative"` a unit is dead when the local derivative of
    its activation, `|σ'(z)|`, is `<= threshold` on (all but a `tolerance`
    fraction of) the probe samples: the classic dead-ReLU notion, extended to
    any elementwise activation and to Bernstein layers (where it depends on
    the extrapolation mode and the coefficients). For ReLU, `σ'(0) = 0`.

    With `criterion="gradient"` a unit is dead when the gradient of the loss
    of each probe sample with respect to the unit's pre-activation is
    `<= threshold` in magnitude: the vanishing-gradient notion, which needs
    targets `y`. The loss is the model's compiled loss (single output) or
    `loss`.

    Args:
        model: A built Sequential or functional Keras model.
        x: Probe inputs (array, list/dict of arrays, or iterable of batches;
            see `probe_batches`).
        y: Probe targets, for the `"gradient"` criterion.
        criterion: `"derivative"` or `"gradient"`.
        threshold: Nonnegative float; a derivative or gradient of magnitude
            `<= threshold` counts as zero.
        tolerance: Float in `[0, 1)`: a unit is dead when at most this
            fraction of its samples are alive. `0` (default): dead means dead
            on every sample.
        layers: Layers to monitor (names or layer objects); default
            `monitored_layers(model)`.
        batch_size: Batch size used to cut arrays.
        loss: Loss for the `"gradient"` criterion (name, function or
            `keras.losses.Loss`); default the model's compiled loss.
        max_batches: The most batches read from an iterable `x`.

    Returns:
        A dict `{layer name: boolean NumPy array}`, `True` for a dead unit,
        of shape `(units,)` (or the layer's neuron grid for `Bernstein` and
        `PReLU` layers with several non-shared axes).

    Example:
        >>> dead = dead_units(model, x_train[:1024])
        >>> {name: int(mask.sum()) for name, mask in dead.items()}
    """
    _check_criterion(criterion, threshold, tolerance)
    monitored = _resolve_layers(model, layers, monitored_layers)
    batches = probe_batches(x, y, batch_size=batch_size, max_batches=max_batches)
    counter = _dead_unit_counter(
        model, monitored, criterion, threshold, loss, jit=False
    )
    return _dead_units_in_batches(monitored, counter, batches, tolerance)


def _dead_unit_counter(model, monitored, criterion, threshold, loss, jit):
    """`(x_batch, y_batch) -> [(layer name, (alive counts, sample counts))]`.

    Counts are per unit, one entry per recorded call of a monitored layer.
    """
    loss_fn = _per_sample_loss(model, loss) if criterion == "gradient" else None
    slopes_of = (
        _slopes_by_derivative if criterion == "derivative" else _slopes_by_gradient
    )

    def count(x_batch, y_batch):
        results = []
        for site, slope in slopes_of(model, monitored, x_batch, y_batch, loss_fn):
            axes = site.sample_axes(len(slope.shape))
            alive = ops.cast(ops.greater(ops.abs(slope), threshold), "int32")
            results.append(
                (
                    site.name,
                    (ops.sum(alive, axis=axes), ops.sum(ops.ones_like(alive), axis=axes)),
                )
            )
        return results

    return _compile(model, monitored, count) if jit else count


def _dead_units_in_batches(monitored, counter, batches, tolerance):
    alive = {}
    samples = {}
    for x_batch, y_batch in batches:
        for name, (alive_count, sample_count) in counter(x_batch, y_batch):
            alive[name] = alive.get(name, 0) + np.asarray(
                ops.convert_to_numpy(alive_count)
            )
            samples[name] = samples.get(name, 0) + np.asarray(
                ops.convert_to_numpy(sample_count)
            )
    return {
        m.name: alive[m.name] <= tolerance * samples[m.name]
        for m in monitored
        if m.name in alive
    }


def _ratios(key, counts):
    """Log entries `key` (overall) and `key/<layer>` from `(hits, total)`."""
    hits = sum(h for h, _ in counts.values())
    total = sum(t for _, t in counts.values())
    logs = {key: float(hits / total) if total else 0.0}
    for name, (layer_hits, layer_total) in counts.items():
        logs[f"{key}/{name}"] = float(layer_hits / layer_total)
    return logs


def dead_neuron_ratio(
    model,
    x,
    y=None,
    criterion="derivative",
    threshold=1e-6,
    tolerance=0.0,
    layers=None,
    batch_size=DEFAULT_BATCH_SIZE,
    loss=None,
    max_batches=DEFAULT_MAX_BATCHES,
):
    """Fraction of dead units, overall and per monitored layer.

    The figures that `DeadNeuronRatio` writes into `logs`, for use outside
    `model.fit`. Arguments as in `dead_units`.

    Returns:
        A dict of Python floats: `"dead_neuron_ratio"` (dead units over
        monitored units, all layers together) and
        `"dead_neuron_ratio/<layer name>"` per layer.

    Example:
        >>> dead_neuron_ratio(model, x_train[:1024])
        {'dead_neuron_ratio': 0.31, 'dead_neuron_ratio/dense': 0.45, ...}
    """
    dead = dead_units(
        model, x, y, criterion, threshold, tolerance, layers, batch_size, loss, max_batches
    )
    return _dead_ratios(dead)


def _dead_ratios(dead):
    return _ratios(
        "dead_neuron_ratio",
        {name: (int(mask.sum()), int(mask.size)) for name, mask in dead.items()},
    )


# --- Bounds coverage --------------------------------------------------------


def out_of_bounds_ratio(
    model, x, layers=None, batch_size=DEFAULT_BATCH_SIZE, max_batches=DEFAULT_MAX_BATCHES
):
    """Fraction of probe pre-activations outside their neuron's `[l, u]`.

    The range and derivative guarantees of a Bernstein activation hold on
    `[l, u]`; a large fraction of pre-activations outside it means the bounds
    are too narrow (or the normalization is off).

    Args:
        model: A built Sequential or functional Keras model.
        x: Probe inputs; see `probe_batches`.
        layers: Bernstein layers to check (names or layer objects); default
            every top-level `Bernstein`/`BernsteinDense` layer.
        batch_size: Batch size used to cut arrays.
        max_batches: The most batches read from an iterable `x`.

    Returns:
        A dict of Python floats: `"out_of_bounds_ratio"` (all checked
        pre-activation entries together) and `"out_of_bounds_ratio/<layer>"`.

    Example:
        >>> out_of_bounds_ratio(model, x_train[:1024])
        {'out_of_bounds_ratio': 0.02, 'out_of_bounds_ratio/bernstein_dense': 0.02}
    """
    monitored = _bounds_monitored(model, layers)
    batches = probe_batches(x, batch_size=batch_size, max_batches=max_batches)
    counter = _out_of_bounds_counter(model, monitored, jit=False)
    return _out_of_bounds_in_batches(counter, batches)


def _bounds_monitored(model, layers):
    monitored = _resolve_layers(model, layers, bernstein_layers)
    for site in monitored:
        if site.bernstein is None:
            raise ValueError(
                "`layers` must name Bernstein or BernsteinDense layers for "
                f"bounds coverage. Received: layers=[..., {site.name!r}, ...]"
            )
    return monitored


def _out_of_bounds_counter(model, monitored, jit):
    """`(x_batch, y_batch) -> [(layer name, (entries outside, entries))]`."""

    def count(x_batch, y_batch):
        _, records = _forward(model, monitored, x_batch)
        return [
            (
                site.name,
                (
                    ops.sum(ops.cast(site.outside_bounds(z), "int32")),
                    ops.size(z),
                ),
            )
            for site, z in records
        ]

    return _compile(model, monitored, count) if jit else count


def _out_of_bounds_in_batches(counter, batches):
    counts = {}
    for x_batch, y_batch in batches:
        for name, (outside, entries) in counter(x_batch, y_batch):
            hits, total = counts.get(name, (0, 0))
            counts[name] = (
                hits + int(ops.convert_to_numpy(outside)),
                total + int(ops.convert_to_numpy(entries)),
            )
    return _ratios("out_of_bounds_ratio", counts)


# --- Callbacks --------------------------------------------------------------


def _check_frequency_and_verbose(frequency, verbose):
    """`(frequency, verbose)` as ints: a positive epoch count and 0 or 1."""
    frequency = check_positive_integer(frequency, "frequency")
    if not isinstance(verbose, numbers.Integral) or verbose not in (0, 1):
        raise ValueError(f"`verbose` must be 0 or 1. Received: verbose={verbose!r}")
    return frequency, int(verbose)


def _check_has_layers(callback, monitored, model):
    """Raises, in the user's terms, when `callback` finds nothing to watch."""
    if not monitored:
        needed = getattr(callback, "needs", "Bernstein or BernsteinDense layers")
        raise ValueError(
            f"`{type(callback).__name__}` needs a model with {needed}; model "
            f"{model.name!r} has none at its top level. Received: model with "
            f"layers {[layer.name for layer in model.layers]}"
        )
    return monitored


def _summary(epoch, key, logs):
    per_layer = ", ".join(
        f"{name[len(key) + 1:]} {value:.3f}"
        for name, value in logs.items()
        if name.startswith(key + "/")
    )
    return f"Epoch {epoch + 1}: {key} {logs[key]:.3f} ({per_layer})"


class _ProbeCallback(keras.callbacks.Callback):
    """A callback that probes the model every `frequency` epochs.

    Subclasses check their own arguments between `__init__` and
    `_read_probe`, which reads the probe data once, and name the layers
    they probe in `monitored`; attaching a built model without such layers
    raises.
    """

    def __init__(self, frequency, verbose):
        super().__init__()
        self.frequency, self.verbose = _check_frequency_and_verbose(frequency, verbose)

    def _read_probe(self, x, y, layers, batch_size, max_batches):
        # Layers are checked first: a one-shot iterable is read only once
        # every argument is known to be valid.
        self.layers = _check_layers(layers)
        self.batches = probe_batches(x, y, batch_size=batch_size, max_batches=max_batches)
        self.batch_size = int(batch_size)

    def monitored(self):
        """The `_MonitoredLayer`s probed on `self.model`."""
        raise NotImplementedError

    def _checked_monitored(self):
        return _check_has_layers(self, self.monitored(), self.model)

    def _is_due(self, epoch):
        return (epoch + 1) % self.frequency == 0

    def set_model(self, model):
        super().set_model(model)
        if getattr(model, "built", False):
            self._checked_monitored()


class _RatioCallback(_ProbeCallback):
    """Logs `key` and `key/<layer>` when due, NaN on the epochs in between."""

    key = None

    def __init__(self, frequency, verbose):
        super().__init__(frequency, verbose)
        self._keys = None
        self._monitored = None
        self._counter = None

    def _make_counter(self):
        """The compiled per-batch count of `self._monitored`."""
        raise NotImplementedError

    def _figures(self):
        """The `logs` entries, from `self._counter` on the probe batches."""
        raise NotImplementedError

    def measure(self):
        """Probes the model now; returns the entries written into `logs`."""
        if self._keys is None:
            self.on_train_begin()
        if self._counter is None:
            self._counter = self._make_counter()
        return self._figures()

    def on_train_begin(self, logs=None):
        # Known before the first measurement, so that every epoch (measured
        # or not) carries the same keys.
        self._monitored = self._checked_monitored()
        self._keys = [self.key] + [f"{self.key}/{site.name}" for site in self._monitored]
        self._counter = None  # Compiled on first use, then reused.

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self._keys is None:
            self.on_train_begin()
        if self._is_due(epoch):
            figures = self.measure()
            if self.verbose:
                print(_summary(epoch, self.key, figures))
        else:
            # Unmeasured epochs get NaN, so that `History` stays aligned with
            # the epochs and `CSVLogger` keeps its columns.
            figures = {key: float("nan") for key in self._keys}
        logs.update(figures)


class DeadNeuronRatio(_RatioCallback):
    """Logs the fraction of dead units of the hidden activations during `fit`.

    At the end of every `frequency`-th epoch the callback probes the model on
    `x` (in inference mode, without changing any weight or random state) and
    writes Python floats into `logs`: `dead_neuron_ratio` (dead units over
    monitored units, all monitored layers together) and
    `dead_neuron_ratio/<layer name>`. They appear in the progress bar,
    `History`, `CSVLogger` and `TensorBoard`, and in the `logs` of every
    callback listed after this one. On the epochs in between the entries
    are NaN.

    To stop training when units die, compare `logs["dead_neuron_ratio"]`
    with a limit in a callback listed after this one (see
    docs/monitoring.md). `EarlyStopping(monitor="dead_neuron_ratio",
    mode="min")` stops when the ratio has not fallen for `patience` epochs,
    so it also stops a run whose ratio stays at 0.0.

    The criteria (see `dead_units`): `"derivative"`, a unit is dead when
    `|σ'(z)| <= threshold` on every probe sample (the dead-ReLU notion, for
    any activation and for Bernstein layers); `"gradient"`, a unit is dead
    when the gradient of each sample's loss with respect to its
    pre-activation is `<= threshold` (vanishing gradients; needs `y`).

    Reference:
        Deep Bernstein Networks, arXiv:2602.04264 (dead-neuron ratio of
        Bernstein vs. ReLU-family networks).

    Args:
        x: Probe inputs: an array (or list/dict of arrays), or a small
            iterable of batches such as a `tf.data.Dataset` (read once, at
            construction). About 1,000 samples is plenty.
        y: Probe targets, needed by `criterion="gradient"`.
        criterion: `"derivative"` (default) or `"gradient"`.
        threshold: Nonnegative float; magnitudes `<= threshold` count as zero.
        tolerance: Float in `[0, 1)`: fraction of alive samples still
            counted as dead. Default `0`: dead on every sample.
        layers: Layers to monitor, as names or layer objects; default
            `monitored_layers(model)` (hidden layers with an elementwise
            nonlinearity, Bernstein layers included).
        batch_size: Batch size of the probe passes.
        frequency: Positive integer: measure every `frequency` epochs.
        verbose: `1` prints a one-line per-layer summary when measuring.
        max_batches: Positive integer, the most batches read from an
            iterable `x` (it may be endless); default 32.

    Example:
        >>> history = model.fit(
        ...     x_train, y_train, epochs=10,
        ...     callbacks=[DeadNeuronRatio(x_train[:1024], verbose=1)],
        ... )
        >>> history.history["dead_neuron_ratio"]  # one float per epoch
    """

    key = "dead_neuron_ratio"
    needs = "hidden layers with an elementwise nonlinearity"

    def __init__(
        self,
        x,
        y=None,
        criterion="derivative",
        threshold=1e-6,
        tolerance=0.0,
        layers=None,
        batch_size=DEFAULT_BATCH_SIZE,
        frequency=1,
        verbose=0,
        max_batches=DEFAULT_MAX_BATCHES,
    ):
        super().__init__(frequency, verbose)
        _check_criterion(criterion, threshold, tolerance)
        self._read_probe(x, y, layers, batch_size, max_batches)
        if criterion == "gradient" and self.batches[0][1] is None:
            raise ValueError(
                "`criterion='gradient'` needs probe targets: pass `y` (or "
                "batches of `(x, y)`). Received: y=None"
            )
        self.criterion = criterion
        self.threshold = float(threshold)
        self.tolerance = float(tolerance)

    def monitored(self):
        return _resolve_layers(self.model, self.layers, monitored_layers)

    def _make_counter(self):
        return _dead_unit_counter(
            self.model,
            self._monitored,
            self.criterion,
            self.threshold,
            loss=None,
            jit=True,
        )

    def _figures(self):
        return _dead_ratios(
            _dead_units_in_batches(
                self._monitored, self._counter, self.batches, self.tolerance
            )
        )


class BoundsCoverage(_RatioCallback):
    """Logs the fraction of Bernstein pre-activations outside `[l, u]`.

    At the end of every `frequency`-th epoch writes `out_of_bounds_ratio`
    (all Bernstein layers together) and `out_of_bounds_ratio/<layer name>`
    into `logs` (see `out_of_bounds_ratio`): the signal that the bounds are
    too narrow for the pre-activations the network produces. Uses the same
    probing as `DeadNeuronRatio`; NaN on the epochs in between.

    Args:
        x: Probe inputs; see `DeadNeuronRatio`.
        layers: Bernstein layers to check (names or layer objects); default
            every top-level `Bernstein`/`BernsteinDense` layer.
        batch_size: Batch size of the probe passes.
        frequency: Positive integer: measure every `frequency` epochs.
        verbose: `1` prints a one-line per-layer summary when measuring.
        max_batches: Positive integer, the most batches read from an
            iterable `x` (it may be endless); default 32.

    Example:
        >>> model.fit(x_train, y_train, epochs=10,
        ...           callbacks=[BoundsCoverage(x_train[:1024])])
    """

    key = "out_of_bounds_ratio"

    def __init__(
        self,
        x,
        layers=None,
        batch_size=DEFAULT_BATCH_SIZE,
        frequency=1,
        verbose=0,
        max_batches=DEFAULT_MAX_BATCHES,
    ):
        super().__init__(frequency, verbose)
        self._read_probe(x, None, layers, batch_size, max_batches)

    def monitored(self):
        return _bounds_monitored(self.model, self.layers)

    def _make_counter(self):
        return _out_of_bounds_counter(self.model, self._monitored, jit=True)

    def _figures(self):
        return _out_of_bounds_in_batches(self._counter, self.batches)


def _check_quantiles(quantiles):
    try:
        low, high = check_interval(quantiles, "quantiles")
    except ValueError:
        low = high = None
    if low is None or not 0.0 <= low < high <= 1.0:
        raise ValueError(
            "`quantiles` must be (low, high) with 0 <= low < high <= 1. "
            f"Received: quantiles={quantiles!r}"
        )
    return low, high


class BoundsUpdate(_ProbeCallback):
    """Widens Bernstein intervals toward the observed pre-activation range during `fit`.

    Every `frequency` epochs the callback runs the model (inference mode) on
    the probe data, takes per-neuron quantiles `quantiles` of each Bernstein
    layer's pre-activations and, where they fall outside a neuron's
    `[l, u]`, widens that neuron's interval toward them (plus `margin` ×
    the quantile range) with `rebound`. Intervals are never narrowed.
    The Bernstein answer to KAN's grid update: the basis follows the data.

    One update extends each side of an interval by at most its width, and
    less where needed: each side's extension is halved until it passes (up
    to 12 times, else that side stays), so that for every neuron:

    - on its old interval the output changes by at most `REBOUND_TOLERANCE`
      (`1e-4`) times the neuron's coefficient range `max c - min c`, plus
      float32 rounding (the guarantee of `rebound`);
    - between the smallest and largest probe pre-activation the output
      changes by at most `max_change` times that range, plus float32
      rounding (inputs the old layer extrapolated now see the polynomial's
      continuation, see `rebound`), so the probe loss moves by at most what
      such a change of each activation can cause;
    - the coefficients satisfy the layer's coefficient constraint (it is
      applied to them, e.g. `MonotonicCoefficients`), and a positive
      derivative certificate (`verification.derivative_certificate`) stays
      positive.

    Both changes are measured in float64 on 257 points spanning each range.
    A capped widening warns, naming the layer; later updates widen further
    as training adapts. The probe data is read once, at construction.

    Args:
        probe_x: Probe inputs: an array (or list/dict of arrays), or an
            iterable of batches (read once, at most `max_batches` of them),
            e.g. 1,000 training samples.
        frequency: Positive integer: update after every `frequency`-th epoch.
        quantiles: `(low, high)` with `0 <= low < high <= 1`, the per-neuron
            quantiles of the pre-activations to cover; `(0, 1)` covers the
            observed min and max.
        margin: Finite number `>= 0`: the fraction of the covered range added
            on each widened side.
        layers: Names or layer objects of the `Bernstein`/`BernsteinDense`
            layers to update; default all top-level ones.
        batch_size: Positive integer, the batch size for probing.
        verbose: 0 or 1 (one line per update).
        max_batches: Positive integer, the most batches read from an
            iterable `probe_x` (it may be endless); default 32.
        max_change: Finite number `>= 0`: the largest change of an activation
            on the probe range allowed by one update, relative to its
            coefficient range; default `0.05`.

    Attributes:
        updates: A list with one dict per update: `epoch`, per layer name
            the number of neurons whose interval was widened, and
            `"capped"`: per layer name the number of neurons widened less
            than asked.

    Raises:
        ValueError: at construction for invalid arguments; when the model is
            set, for a model without Bernstein layers to update; at an
            update, for probe pre-activations that are NaN or infinite.

    Example:
        >>> model.fit(x, y, epochs=20,
        ...           callbacks=[BoundsUpdate(x[:1000], frequency=5)])
    """

    def __init__(
        self,
        probe_x,
        frequency=1,
        quantiles=(0.001, 0.999),
        margin=0.0,
        layers=None,
        batch_size=DEFAULT_BATCH_SIZE,
        verbose=0,
        max_batches=DEFAULT_MAX_BATCHES,
        max_change=0.05,
    ):
        super().__init__(frequency, verbose)
        self.quantiles = _check_quantiles(quantiles)
        self.margin = check_nonnegative_number(margin, "margin")
        self.max_change = check_nonnegative_number(max_change, "max_change")
        self._read_probe(probe_x, None, layers, batch_size, max_batches)
        self.updates = []

    def monitored(self):
        return _bounds_monitored(self.model, self.layers)

    def on_epoch_end(self, epoch, logs=None):
        if self._is_due(epoch):
            self.update(epoch)

    def update(self, epoch=None):
        """Probes the model and widens the intervals now; returns the update's dict."""
        monitored = self._checked_monitored()
        pre_activations = _pre_activations_in_batches(
            self.model, monitored, self.batches
        )
        record = {"epoch": epoch}
        capped = {}
        for site in monitored:
            if site.name in pre_activations and site.name not in record:
                record[site.name], capped[site.name] = _widen_toward_data(
                    site.layer,
                    pre_activations[site.name],
                    self.quantiles,
                    self.margin,
                    self.max_change,
                )
        record["capped"] = capped
        self.updates.append(record)
        if self.verbose:
            widened = ", ".join(
                f"{name}: {record[name]} ({capped[name]} capped)" for name in capped
            )
            print(f"BoundsUpdate (epoch {epoch}): widened neurons {widened}")
        return record


def _relative_change(old, new):
    """Largest `max(|l' - l|, |u' - u|) / (u - l)` over the neurons."""
    width = old[..., 1] - old[..., 0]
    return float(np.max(np.max(np.abs(new - old), axis=-1) / width))


class DomainBounds(keras.callbacks.Callback):
    """Keeps every Bernstein interval covering its inputs over an input domain during `fit`.

    Calls `keras_bernstein.transforms.bounds_from_domain(model, lower,
    upper, margin, min_width)` at the start of training and then after every
    epoch (`frequency="epoch"`) or every `frequency` training batches: each
    neuron's `[l, u]` becomes the certified interval of its inputs when the
    model's input lies in the box `lower <= x <= upper` (plus `margin`), so
    that in-domain inputs never leave their intervals, as in DeepBern-Nets.
    Training moves the weights, and with them the pre-activations, which
    may leave their intervals between updates; each update brings the
    intervals back over them. Intervals shrink as well as widen, and each
    update keeps each neuron's function on the overlap of its old and new
    intervals (`rebound`). With `frequency="epoch"` the model ends `fit`
    with intervals that cover the domain.

    After each epoch it writes `"domain_bounds_change"` into `logs`: the
    largest relative move `max(|l' - l|, |u' - u|) / (u - l)` of any
    interval end over that epoch's updates (NaN for an epoch without one),
    a measure of how far training drifts from the intervals.

    Args:
        lower: Array of the model's input shape, batch first (a list for
            several inputs): the lower corners of the domain's boxes, e.g.
            `np.zeros((1, 784))` for pixels in `[0, 1]`.
        upper: Same shape, with `upper >= lower`.
        frequency: `"epoch"` (default) to update after every epoch, or a
            positive integer: update after every `frequency`-th training
            batch, counted across epochs.
        margin: Finite number `>= 0`: the fraction of each interval's width
            added on each side; see `bounds_from_domain`.
        min_width: Positive number, the smallest width of an interval; see
            `bounds_from_domain`.
        verbose: 0 or 1 (one line per epoch with an update).

    Attributes:
        updates: A list with one dict per update: `epoch`, `batch` (`None`
            for an update at an epoch's end or before training), and
            `"change"`: per layer name the largest relative move of its
            intervals' ends.

    Raises:
        ValueError: at construction for invalid arguments; at an update when
            a layer cannot take its new intervals (see
            `bounds_from_domain`), naming the layer.

    Example:
        >>> domain = DomainBounds(np.zeros((1, 784)), np.ones((1, 784)), margin=0.05)
        >>> model.fit(x, y, epochs=5, callbacks=[domain])
    """

    key = "domain_bounds_change"

    def __init__(self, lower, upper, frequency="epoch", margin=0.0, min_width=1e-3, verbose=0):
        super().__init__()
        if frequency != "epoch":
            try:
                check_positive_integer(frequency, "frequency")
            except ValueError:
                raise ValueError(
                    '`frequency` must be "epoch" or a positive integer number of '
                    f"batches. Received: frequency={frequency!r}"
                ) from None
            frequency = int(frequency)
        self.frequency = frequency
        _, self.verbose = _check_frequency_and_verbose(1, verbose)
        self.margin = check_nonnegative_number(margin, "margin")
        self.min_width = check_nonnegative_number(min_width, "min_width", positive=True)
        self.lower, self.upper = _check_domain(lower, upper)
        self.updates = []
        self._epoch = None
        self._epoch_change = None
        self._batches = 0

    def update(self, epoch=None, batch=None):
        """Sets the intervals from the domain now; returns the update's dict."""
        changes = _domain_bounds(
            self.model, self.lower, self.upper, self.margin, self.min_width
        )
        record = {
            "epoch": epoch,
            "batch": batch,
            "change": {name: _relative_change(old, new) for name, old, new in changes},
        }
        self.updates.append(record)
        if record["change"]:
            largest = max(record["change"].values())
            self._epoch_change = max(largest, self._epoch_change or 0.0)
        return record

    def on_train_begin(self, logs=None):
        self._batches = 0
        self.update()
        self._epoch_change = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_change = None

    def on_train_batch_end(self, batch, logs=None):
        # Counted across epochs, so that a frequency above the epoch's
        # length still updates.
        self._batches += 1
        if self.frequency != "epoch" and self._batches % self.frequency == 0:
            self.update(self._epoch, batch)

    def on_epoch_end(self, epoch, logs=None):
        if self.frequency == "epoch":
            self.update(epoch)
        change = float("nan") if self._epoch_change is None else self._epoch_change
        if self.verbose and self._epoch_change is not None:
            print(f"Epoch {epoch + 1}: {self.key} {change:.3g}")
        if logs is not None:
            logs[self.key] = change


def _check_domain(lower, upper):
    """`lower` and `upper` as float64 NumPy arrays (lists of them for several
    inputs) of the same shapes, finite, with `lower <= upper`."""
    if isinstance(lower, (list, tuple)) or isinstance(upper, (list, tuple)):
        if not (
            isinstance(lower, (list, tuple))
            and isinstance(upper, (list, tuple))
            and len(lower) == len(upper)
        ):
            raise ValueError(
                "For several inputs pass `lower` and `upper` as lists of arrays of "
                f"the same length. Received: lower={lower!r}, upper={upper!r}"
            )
        pairs = [_check_domain(low, high) for low, high in zip(lower, upper)]
        return [low for low, _ in pairs], [high for _, high in pairs]
    lower = np.asarray(ops.convert_to_numpy(lower), dtype="float64")
    upper = np.asarray(ops.convert_to_numpy(upper), dtype="float64")
    if lower.shape != upper.shape or lower.ndim < 2:
        raise ValueError(
            "`lower` and `upper` must be arrays of the same shape, the model's "
            f"input shape, batch first. Received: lower.shape={lower.shape}, "
            f"upper.shape={upper.shape}"
        )
    if not (np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)) and np.all(lower <= upper)):
        raise ValueError(
            "`lower` and `upper` must be finite with `lower <= upper`. Received: "
            f"lower={describe(lower)}, upper={describe(upper)}"
        )
    return lower, upper
