"""Monitoring of activation health: dead neurons and bounds coverage.

Everything here reads a model through one probing helper, `_forward`, which
runs the model's graph in inference mode and, at every monitored layer, splits
the layer into its *pre-activation* `z` (the tensor fed to the elementwise
nonlinearity) and the nonlinearity `σ(z)`:

- `BernsteinDense`: `z = layer.pre_activation(inputs)`, `σ = layer.bernstein`;
- `Bernstein`, `Activation`, `ReLU`, `LeakyReLU`, `PReLU`, `ELU`: `z` is the
  layer's input, `σ` the layer itself;
- `Dense`, `Conv*` and any other layer with an `activation=`: `z` is the
  layer's output before the activation (computed by a weightless twin of the
  layer with a linear activation, on the layer's own variables; the layer is
  not modified), `σ = layer.activation`.

On top of it sit `collect_pre_activations` (the raw `z`, e.g. to fit bounds to
observed quantiles), `dead_units` / `dead_neuron_ratio` and
`out_of_bounds_ratio`, and the callbacks `DeadNeuronRatio` and
`BoundsCoverage` that write those figures into the `logs` of `model.fit`.

Probing never changes training: layers run with `training=False` (batch
normalization statistics are not updated, dropout draws no random numbers),
no variable is assigned, and gradients are taken with respect to the probe's
own tensors only (see `keras_bernstein._autodiff`).

A *unit* (neuron) is one feature along the channel axis (the last axis, or
axis 1 for `data_format="channels_first"` layers); the other axes (spatial
positions, time steps) count as further samples of the same unit. Layers with
per-neuron activation parameters (`Bernstein`, `PReLU`) use their own neuron
grid instead: one unit per set of coefficients (or `alpha`), with
`shared_axes` counting as samples.
"""

import functools
import inspect
import itertools
import numbers

import keras
import numpy as np
from keras import ops

from keras_bernstein import _autodiff
from keras_bernstein._arguments import check_nonnegative_number
from keras_bernstein._arguments import check_positive_integer
from keras_bernstein.layers.bernstein import Bernstein
from keras_bernstein.layers.bernstein_dense import BernsteinDense

CRITERIA = ("derivative", "gradient")

# Activations applied entry by entry (so that `d sum σ(z) / dz = σ'(z)`) and
# not linear. `linear`, `softmax`, `log_softmax`, `sparsemax` and `glu` are
# excluded: the first is not a nonlinearity, the others mix entries.
ELEMENTWISE_ACTIVATIONS = frozenset(
    {
        "celu",
        "elu",
        "exponential",
        "gelu",
        "hard_shrink",
        "hard_sigmoid",
        "hard_silu",
        "hard_swish",
        "hard_tanh",
        "leaky_relu",
        "log_sigmoid",
        "mish",
        "relu",
        "relu6",
        "selu",
        "sigmoid",
        "silu",
        "soft_shrink",
        "softplus",
        "softsign",
        "sparse_plus",
        "sparse_sigmoid",
        "squareplus",
        "swish",
        "tanh",
        "tanh_shrink",
        "threshold",
    }
)

# Activation layers that always apply an elementwise nonlinearity.
ACTIVATION_LAYERS = (
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
)

DEFAULT_BATCH_SIZE = 256
# Batches read from an iterable probe: it may be endless (a repeated dataset).
DEFAULT_MAX_BATCHES = 32


def _activation_name(activation):
    """The registered name of a Keras activation function, or `None`."""
    try:
        name = keras.activations.serialize(activation)
    except (ValueError, TypeError):
        return None
    return name if isinstance(name, str) else None


def _is_bernstein(layer):
    return isinstance(layer, (Bernstein, BernsteinDense))


def _has_elementwise_activation(layer):
    """Whether `layer` ends in a known elementwise nonlinearity."""
    if _is_bernstein(layer) or isinstance(layer, ACTIVATION_LAYERS):
        return True
    activation = getattr(layer, "activation", None)
    return callable(activation) and (
        _activation_name(activation) in ELEMENTWISE_ACTIVATIONS
    )


class _MonitoredLayer:
    """A layer seen as `σ(z)`: how to get its pre-activation `z` and `σ'(z)`."""

    def __init__(self, layer):
        self.layer = layer
        self.name = layer.name
        if isinstance(layer, BernsteinDense):
            self.bernstein = layer.bernstein
        elif isinstance(layer, Bernstein):
            self.bernstein = layer
        else:
            self.bernstein = None
        self._uses_own_input = self.bernstein is layer or isinstance(
            layer, (keras.layers.Activation,) + ACTIVATION_LAYERS
        )
        self._linear_twin = None
        if not (
            self.bernstein is not None
            or self._uses_own_input
            or callable(getattr(layer, "activation", None))
        ):
            raise ValueError(
                "`layers` must name layers with an activation (Bernstein, "
                "BernsteinDense, activation layers, or layers with an "
                "`activation` argument). "
                f"Received: layers=[..., {layer.name!r} "
                f"({layer.__class__.__name__}), ...]"
            )

    def _twin(self):
        """The layer with a linear activation and no weights of its own.

        It is called with `stateless_call` on the layer's variables, so it
        computes exactly the layer's pre-activation without touching the
        layer. Its initializers are zeros so that building it draws no random
        numbers.
        """
        if self._linear_twin is None:
            config = self.layer.get_config()
            config["activation"] = "linear"
            for key in config:
                if key.endswith("_initializer"):
                    config[key] = "zeros"
            twin = self.layer.__class__.from_config(config)
            twin.build_from_config(self.layer.get_build_config())
            if [v.shape for v in twin.variables] != [
                v.shape for v in self.layer.variables
            ]:
                raise ValueError(
                    "Cannot compute the pre-activation of layer "
                    f"{self.name!r}: its variables are not re-created from "
                    "its config. Monitor the layer's input instead, with a "
                    "separate `Activation` layer. "
                    f"Received: layers=[..., {self.name!r}, ...]"
                )
            self._linear_twin = twin
        return self._linear_twin

    def prepare(self):
        """Creates what `pre_activation` needs, before any tracing."""
        if not (self.bernstein is not None or self._uses_own_input):
            self._twin()

    def pre_activation(self, inputs):
        if isinstance(self.layer, BernsteinDense):
            return self.layer.pre_activation(inputs, training=False)
        if self._uses_own_input:
            return inputs
        twin = self._twin()
        outputs, _ = twin.stateless_call(
            [v.value for v in self.layer.trainable_variables],
            [v.value for v in self.layer.non_trainable_variables],
            inputs,
        )
        return outputs

    def activation(self, pre_activation):
        if self.bernstein is not None:
            return self.bernstein(pre_activation)
        if self._uses_own_input:
            return self.layer(pre_activation)
        return self.layer.activation(pre_activation)

    def derivative(self, pre_activation):
        """`σ'(z)` elementwise, in float32."""
        if self.bernstein is not None:
            return self.bernstein.derivative(pre_activation)
        z = ops.cast(pre_activation, "float32")
        (slope,) = _autodiff.gradients(
            lambda z: ops.sum(ops.cast(self.activation(z), "float32")), [z]
        )
        return slope

    def _parameter_shape(self):
        """Per-neuron parameter grid (without the batch axis), or `None`."""
        if self.bernstein is not None:
            return tuple(self.bernstein.coefficients.shape[:-1])
        if isinstance(self.layer, keras.layers.PReLU):
            return tuple(self.layer.alpha.shape)
        return None

    def sample_axes(self, ndim):
        """Axes of a `ndim`-D pre-activation that hold samples of one unit."""
        parameter_shape = self._parameter_shape()
        if parameter_shape is not None:
            return tuple(
                [0]
                + [
                    axis + 1
                    for axis, size in enumerate(parameter_shape)
                    if size == 1
                ]
            )
        channels_first = getattr(self.layer, "data_format", None) == (
            "channels_first"
        )
        channel_axis = 1 if channels_first and ndim > 2 else ndim - 1
        return tuple(axis for axis in range(ndim) if axis != channel_axis)

    def outside_bounds(self, pre_activation):
        """Boolean tensor: `z` outside its neuron's `[l, u]` (Bernstein only)."""
        z = ops.cast(pre_activation, self.bernstein.variable_dtype)
        bounds = self.bernstein.bounds
        return ops.logical_or(
            ops.less(z, bounds[..., 0]), ops.greater(z, bounds[..., 1])
        )


# --- Model inspection -------------------------------------------------------


def _check_model(model):
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(
            "`model` must be a built Keras `Model` (Sequential or functional; "
            f"call it once or give it an `Input`). Received: model={model!r}"
        )


def _output_layers(model):
    """The top-level layers whose outputs are outputs of `model`."""
    if isinstance(model, keras.Sequential):
        return {id(model.layers[-1])} if model.layers else set()
    try:
        model_outputs = keras.tree.flatten(model.outputs)
    except (AttributeError, ValueError):
        return set()
    result = set()
    for layer in model.layers:
        try:
            layer_outputs = keras.tree.flatten(layer.output)
        except (AttributeError, ValueError):
            continue
        if any(o is t for o in layer_outputs for t in model_outputs):
            result.add(id(layer))
    return result


def monitored_layers(model):
    """The layers monitored by default: hidden layers with a nonlinearity.

    These are the top-level layers of `model` that apply an elementwise
    nonlinear activation: every `Bernstein` and `BernsteinDense` layer, every
    layer with a nonlinear elementwise `activation=` (relu, leaky_relu, elu,
    selu, gelu, silu, tanh, sigmoid, softplus, ...), and the activation layers
    `Activation` (with such an activation), `ReLU`, `LeakyReLU`, `PReLU`,
    `ELU`. The layers producing the model's outputs are left out.

    Args:
        model: A built Sequential or functional Keras model.

    Returns:
        A list of layers, in the order of `model.layers`.

    Example:
        >>> model = keras.Sequential([keras.Input((4,)),
        ...     keras.layers.Dense(8, activation="relu"),
        ...     keras.layers.Dense(2, activation="softmax")])
        >>> [layer.name for layer in monitored_layers(model)] == ["dense"]
        True
    """
    _check_model(model)
    outputs = _output_layers(model)
    return [
        layer
        for layer in model.layers
        if id(layer) not in outputs and _has_elementwise_activation(layer)
    ]


def _check_layers(layers):
    """`layers` as `None` or a non-empty list of layer names or objects."""
    if layers is None:
        return None
    if isinstance(layers, (str, keras.layers.Layer)):
        return [layers]
    try:
        items = list(layers)
    except TypeError:
        items = []
    if not items or not all(isinstance(i, (str, keras.layers.Layer)) for i in items):
        raise ValueError(
            "`layers` must be None or a non-empty list of layer names or "
            f"layer objects. Received: layers={layers!r}"
        )
    return items


def _resolve_layers(model, layers, default):
    """`_MonitoredLayer`s for `layers` (names or layer objects) or `default`."""
    _check_model(model)
    if layers is None:
        return [_MonitoredLayer(layer) for layer in default(model)]
    if isinstance(layers, (str, keras.layers.Layer)):
        layers = [layers]
    by_name = {layer.name: layer for layer in model.layers}
    by_id = {id(layer) for layer in model.layers}
    resolved = []
    for item in layers:
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError(
                    f"`layers` names a layer that is not in the model "
                    f"(top-level layers: {sorted(by_name)}). "
                    f"Received: layers={layers!r}"
                )
            item = by_name[item]
        elif not isinstance(item, keras.layers.Layer) or id(item) not in by_id:
            raise ValueError(
                "`layers` must hold names or top-level layer objects of the "
                f"model. Received: layers={layers!r}"
            )
        resolved.append(_MonitoredLayer(item))
    if not resolved:
        raise ValueError(f"`layers` must not be empty. Received: layers={layers!r}")
    return resolved


# --- Probe data -------------------------------------------------------------


def _to_numpy(structure):
    return keras.tree.map_structure(
        lambda value: np.asarray(ops.convert_to_numpy(value)), structure
    )


def _num_samples(structure):
    leaves = keras.tree.flatten(structure)
    if not leaves:
        return 0
    return int(np.shape(leaves[0])[0]) if np.ndim(leaves[0]) else 0


def _is_array_like(value):
    leaves = keras.tree.flatten(value)
    return bool(leaves) and all(
        isinstance(leaf, np.ndarray) or ops.is_tensor(leaf) for leaf in leaves
    )


def probe_batches(
    x, y=None, batch_size=DEFAULT_BATCH_SIZE, max_batches=DEFAULT_MAX_BATCHES
):
    """The probe data as a list of `(x_batch, y_batch)` NumPy pairs.

    Args:
        x: Inputs: an array or tensor (or a list/dict of them for a
            multi-input model), or an iterable of batches such as a
            `tf.data.Dataset`, each batch `x` or `(x, y)` (Keras' usual
            `(x, y, sample_weight)` unpacking). The iterable is read once,
            at most `max_batches` batches of it (it may be endless).
        y: Targets for array inputs (needed only by the `"gradient"`
            criterion); must be `None` when `x` yields batches.
        batch_size: Positive integer, size of the batches cut from arrays.
        max_batches: Positive integer, the most batches read from an
            iterable `x` (arrays are used whole).

    Returns:
        A non-empty list of `(x_batch, y_batch)`, `y_batch` `None` when there
        are no targets.
    """
    batch_size = check_positive_integer(batch_size, "batch_size")
    max_batches = check_positive_integer(max_batches, "max_batches")
    if _is_array_like(x):
        x = _to_numpy(x)
        count = _num_samples(x)
        if count == 0:
            raise ValueError(
                "`x` must hold at least one probe sample. "
                f"Received: x with {count} samples"
            )
        if y is not None:
            y = _to_numpy(y)
            if _num_samples(y) != count:
                raise ValueError(
                    f"`y` must have as many samples as `x` ({count}). "
                    f"Received: y with {_num_samples(y)} samples"
                )
        batches = []
        for start in range(0, count, batch_size):
            window = slice(start, start + batch_size)
            x_batch = keras.tree.map_structure(lambda v: v[window], x)
            y_batch = (
                None if y is None else keras.tree.map_structure(lambda v: v[window], y)
            )
            batches.append((x_batch, y_batch))
        return batches
    if y is not None:
        raise ValueError(
            "`y` must be None when `x` is a dataset or iterable of batches "
            f"(give `(x, y)` batches instead). Received: y of type {type(y)}"
        )
    if x is None or isinstance(x, (str, bytes, numbers.Number)):
        raise ValueError(
            "`x` must be an array, a tensor or an iterable of batches. "
            f"Received: x={x!r}"
        )
    iterator = x.as_numpy_iterator() if hasattr(x, "as_numpy_iterator") else x
    batches = []
    for data in itertools.islice(iterator, max_batches):
        x_batch, y_batch, _ = keras.utils.unpack_x_y_sample_weight(data)
        x_batch = _to_numpy(x_batch)
        if _num_samples(x_batch) == 0:
            continue
        batches.append((x_batch, None if y_batch is None else _to_numpy(y_batch)))
    if not batches:
        raise ValueError(
            "`x` must hold at least one probe sample. Received: x yielding "
            "no samples"
        )
    return batches


# --- The probing helper -----------------------------------------------------


@functools.lru_cache(maxsize=None)
def _call_accepts_training(layer_class):
    return "training" in inspect.signature(layer_class.call).parameters


def _run_graph(model, inputs, call_layer):
    """Runs `model` on `inputs`, calling each top-level layer via `call_layer`."""
    graph = model
    if isinstance(model, keras.Sequential) and model._functional is not None:
        graph = model._functional
    if hasattr(graph, "_run_through_graph"):
        # A functional graph: the same traversal as `Functional.call`, with
        # our own call for each node (Keras has no public hook for that).
        outputs = graph._run_through_graph(
            graph._standardize_inputs(inputs),
            operation_fn=lambda layer: functools.partial(call_layer, layer),
        )
    elif isinstance(model, keras.Sequential):
        outputs = keras.tree.map_structure(ops.convert_to_tensor, inputs)
        for layer in model.layers:
            outputs = call_layer(layer, outputs)
    else:
        raise ValueError(
            "`model` must be a Sequential or functional model; subclassed "
            f"models have no inspectable graph. Received: model={model!r}"
        )
    flat = keras.tree.flatten(outputs)
    return flat[0] if len(flat) == 1 else outputs


def _forward(model, monitored, inputs, perturbations=None):
    """One inference pass of `model` that records pre-activations.

    Args:
        model: A built Sequential or functional model.
        monitored: List of `_MonitoredLayer`.
        inputs: One batch of model inputs.
        perturbations: Optional list of tensors added to the pre-activations
            in the order they are recorded (zeros, to differentiate at them).

    Returns:
        `(outputs, records)`: the model outputs and a list of
        `(monitored_layer, pre_activation)` in call order (a layer called
        twice appears twice).
    """
    by_id = {id(m.layer): m for m in monitored}
    records = []
    remaining = None if perturbations is None else iter(perturbations)

    def call_layer(layer, *args, **kwargs):
        site = by_id.get(id(layer))
        if site is None:
            if _call_accepts_training(type(layer)):
                kwargs["training"] = False
            return layer(*args, **kwargs)
        z = site.pre_activation(args[0])
        if remaining is not None:
            z = ops.add(z, next(remaining))
        records.append((site, z))
        return site.activation(z)

    outputs = _run_graph(model, inputs, call_layer)
    return outputs, records


def _compile(model, monitored, batch_function):
    """`batch_function(x, y) -> [(name, tensors)]`, compiled for the backend.

    JAX: `jax.jit` of a stateless version (the model's variable values are
    arguments, mapped in with `keras.StatelessScope`, so each call sees the
    current weights). TensorFlow: `tf.function`. PyTorch: eager, which is
    fast there. The names are plain Python, recorded while tracing.
    """
    for site in monitored:
        site.prepare()  # Builds twin layers outside any trace.
    names = []

    def tensors_only(x, y):
        results = batch_function(x, y)
        names[:] = [name for name, _ in results]
        return [tensors for _, tensors in results]

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        variables = list(model.variables)

        @jax.jit
        def stateless(values, x, y):
            mapping = list(zip(variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                return tensors_only(x, y)

        def run(x, y):
            return stateless([v.value for v in variables], x, y)

    elif backend == "tensorflow":
        import tensorflow as tf

        run = tf.function(tensors_only, reduce_retracing=True)
    else:
        run = tensors_only

    def call(x, y):
        outputs = run(x, y)
        return list(zip(names, outputs))

    return call


def collect_pre_activations(
    model, x, layers=None, batch_size=DEFAULT_BATCH_SIZE, max_batches=DEFAULT_MAX_BATCHES
):
    """The pre-activations of monitored layers on probe inputs.

    The pre-activation of a layer is the tensor its elementwise nonlinearity
    is applied to: `layer.pre_activation(inputs)` for `BernsteinDense`, the
    input of a `Bernstein` or activation layer, the output before the
    activation for a `Dense`/`Conv` layer with `activation=`. The model runs
    in inference mode (`training=False`) batch by batch; nothing in the model
    changes.

    Args:
        model: A built Sequential or functional Keras model.
        x: Probe inputs: an array (or a list/dict of arrays), or an iterable
            of batches such as a `tf.data.Dataset`; see `probe_batches`.
        layers: Layers to probe, as names or layer objects of `model`;
            default `monitored_layers(model)`.
        batch_size: Batch size used to cut arrays.
        max_batches: The most batches read from an iterable `x`.

    Returns:
        A dict `{layer name: NumPy float32 array}`, each of shape
        `(num_samples, ...)` like the layer's output (batches concatenated;
        a layer called several times contributes each call in turn).

    Example:
        >>> z = collect_pre_activations(model, x_train[:1024])
        >>> np.quantile(z["bernstein_dense"], [0.01, 0.99], axis=0)
    """
    monitored = _resolve_layers(model, layers, monitored_layers)
    batches = probe_batches(x, batch_size=batch_size, max_batches=max_batches)
    return _pre_activations_in_batches(model, monitored, batches)


def _pre_activations_in_batches(model, monitored, batches):
    """`collect_pre_activations` on batches from `probe_batches`."""
    collected = {m.name: [] for m in monitored}
    for x_batch, _ in batches:
        _, records = _forward(model, monitored, x_batch)
        for site, z in records:
            collected[site.name].append(
                np.asarray(ops.convert_to_numpy(ops.cast(z, "float32")))
            )
    return {
        name: np.concatenate(parts, axis=0)
        for name, parts in collected.items()
        if parts
    }


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
        model,
        x,
        y=y,
        criterion=criterion,
        threshold=threshold,
        tolerance=tolerance,
        layers=layers,
        batch_size=batch_size,
        loss=loss,
        max_batches=max_batches,
    )
    return _dead_ratios(dead)


def _dead_ratios(dead):
    return _ratios(
        "dead_neuron_ratio",
        {name: (int(mask.sum()), int(mask.size)) for name, mask in dead.items()},
    )


# --- Bounds coverage --------------------------------------------------------


def bernstein_layers(model):
    """The top-level `Bernstein` and `BernsteinDense` layers of `model`."""
    _check_model(model)
    return [layer for layer in model.layers if _is_bernstein(layer)]


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
    """Shared epoch logic: measure every `frequency` epochs, NaN otherwise."""

    key = None

    def __init__(self, frequency, verbose):
        super().__init__()
        self.frequency, self.verbose = _check_frequency_and_verbose(frequency, verbose)
        self._keys = None
        self._monitored = None
        self._counter = None

    def measure(self):
        raise NotImplementedError

    def monitored(self):
        """The `_MonitoredLayer`s measured on `self.model`."""
        raise NotImplementedError

    def set_model(self, model):
        super().set_model(model)
        if getattr(model, "built", False):
            _check_has_layers(self, self.monitored(), model)

    def on_train_begin(self, logs=None):
        # Known before the first measurement, so that every epoch (measured
        # or not) carries the same keys.
        self._monitored = _check_has_layers(self, self.monitored(), self.model)
        self._keys = [self.key] + [f"{self.key}/{site.name}" for site in self._monitored]
        self._counter = None  # Compiled on first use, then reused.

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self._keys is None:
            self.on_train_begin()
        if (epoch + 1) % self.frequency == 0:
            figures = self.measure()
            if self.verbose:
                print(_summary(epoch, self.key, figures))
        else:
            # Unmeasured epochs get NaN, so that `History` stays aligned with
            # the epochs and `CSVLogger` keeps its columns.
            figures = {key: float("nan") for key in self._keys}
        logs.update(figures)


class DeadNeuronRatio(_ProbeCallback):
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
        layers = _check_layers(layers)
        self.batches = probe_batches(
            x, y, batch_size=batch_size, max_batches=max_batches
        )
        if criterion == "gradient" and self.batches[0][1] is None:
            raise ValueError(
                "`criterion='gradient'` needs probe targets: pass `y` (or "
                "batches of `(x, y)`). Received: y=None"
            )
        self.criterion = criterion
        self.threshold = float(threshold)
        self.tolerance = float(tolerance)
        self.layers = layers
        self.batch_size = int(batch_size)

    def monitored(self):
        return _resolve_layers(self.model, self.layers, monitored_layers)

    def measure(self):
        if self._keys is None:
            self.on_train_begin()
        if self._counter is None:
            self._counter = _dead_unit_counter(
                self.model,
                self._monitored,
                self.criterion,
                self.threshold,
                loss=None,
                jit=True,
            )
        return _dead_ratios(
            _dead_units_in_batches(
                self._monitored, self._counter, self.batches, self.tolerance
            )
        )


class BoundsCoverage(_ProbeCallback):
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
        layers = _check_layers(layers)
        self.batches = probe_batches(x, batch_size=batch_size, max_batches=max_batches)
        self.layers = layers
        self.batch_size = int(batch_size)

    def monitored(self):
        return _bounds_monitored(self.model, self.layers)

    def measure(self):
        if self._keys is None:
            self.on_train_begin()
        if self._counter is None:
            self._counter = _out_of_bounds_counter(
                self.model, self._monitored, jit=True
            )
        return _out_of_bounds_in_batches(self._counter, self.batches)


# The bounds-widening callback lives beside `rebound`, the transform it
# applies; it is re-exported here so every callback has one home to import from.
from keras_bernstein.transforms import BoundsUpdate  # noqa: E402,F401
