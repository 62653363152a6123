"""A model seen as its pre-activations: the probing behind monitoring.

`_forward` runs the model's graph in inference mode and, at every monitored
layer, splits the layer into its *pre-activation* `z` (the tensor fed to the
elementwise nonlinearity) and the nonlinearity `σ(z)`:

- `BernsteinDense`: `z = layer.pre_activation(inputs)`, `σ = layer.bernstein`;
- `Bernstein`, `Activation`, `ReLU`, `LeakyReLU`, `PReLU`, `ELU`: `z` is the
  layer's input, `σ` the layer itself;
- `Dense`, `Conv*` and any other layer with an `activation=`: `z` is the
  layer's output before the activation (computed by a weightless twin of the
  layer with a linear activation, on the layer's own variables; the layer is
  not modified), `σ = layer.activation`.

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

The public names are re-exported by `keras_bernstein.callbacks`.
"""

import functools
import inspect
import itertools
import numbers

import keras
import numpy as np
from keras import ops

from keras_bernstein import _autodiff
from keras_bernstein._arguments import check_positive_integer
from keras_bernstein._model_layers import activation_name
from keras_bernstein._model_layers import bernstein_activation
from keras_bernstein._model_layers import check_model
from keras_bernstein._model_layers import find_bernstein_layers
from keras_bernstein._model_layers import is_bernstein
from keras_bernstein._model_layers import output_layers
from keras_bernstein.layers.bernstein_dense import BernsteinDense

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

def _has_elementwise_activation(layer):
    """Whether `layer` ends in a known elementwise nonlinearity."""
    if is_bernstein(layer) or isinstance(layer, ACTIVATION_LAYERS):
        return True
    activation = getattr(layer, "activation", None)
    return callable(activation) and (
        activation_name(activation) in ELEMENTWISE_ACTIVATIONS
    )


class _MonitoredLayer:
    """A layer seen as `σ(z)`: how to get its pre-activation `z` and `σ'(z)`."""

    def __init__(self, layer):
        self.layer = layer
        self.name = layer.name
        self.bernstein = bernstein_activation(layer)
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


# --- Layers to probe -------------------------------------------------------


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
    check_model(model)
    outputs = {id(layer) for layer in output_layers(model)}
    return [
        layer
        for layer in model.layers
        if id(layer) not in outputs and _has_elementwise_activation(layer)
    ]


def bernstein_layers(model):
    """The top-level `Bernstein` and `BernsteinDense` layers of `model`."""
    check_model(model)
    return find_bernstein_layers(model)


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
    check_model(model)
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


# --- The probing pass -------------------------------------------------------


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
