"""A model's layers as the rest of the package reads them.

One place answers: is this a built model, which of its layers are Bernstein
layers (and which `Bernstein` holds each one's coefficients and bounds),
which layers produce its outputs, and what a layer's activation is called.
"""

import keras

from keras_bernstein._coefficient_algebra import _as_float64 as as_float64  # noqa: F401
from keras_bernstein.layers.bernstein import Bernstein
from keras_bernstein.layers.bernstein_dense import BernsteinDense


def check_model(model):
    """Raises unless `model` is a built Keras `Model`."""
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(
            "`model` must be a built Keras `Model` (Sequential or functional; "
            f"call it once or give it an `Input`). Received: model={model!r}"
        )


def activation_name(activation):
    """The name of a Keras activation function, or `None`.

    Only Keras' own functions (`keras.activations.*`, `keras.ops.*`) have a
    name here: Keras serializes a function by its `__name__`, so a user's
    function called `relu` would otherwise pass for ReLU.
    """
    if not getattr(activation, "__module__", "").startswith("keras."):
        return None
    try:
        name = keras.activations.serialize(activation)
    except (ValueError, TypeError):
        return None
    return name if isinstance(name, str) else None


def is_bernstein(layer):
    """Whether `layer` is a `Bernstein` or `BernsteinDense` layer."""
    return isinstance(layer, (Bernstein, BernsteinDense))


def bernstein_activation(layer):
    """The `Bernstein` layer holding `layer`'s coefficients and bounds, or `None`."""
    if isinstance(layer, BernsteinDense):
        return layer.bernstein
    if isinstance(layer, Bernstein):
        return layer
    return None


def _sublayers(layer):
    """A model's `layers`; the layers a custom layer tracks as attributes."""
    if isinstance(layer, keras.Model):
        return layer.layers
    return layer._flatten_layers(include_self=False, recursive=False)


def find_bernstein_layers(layer_or_model, nested=False):
    """The `Bernstein` and `BernsteinDense` layers of `layer_or_model`.

    A Bernstein layer is its own list. Of a model: its top-level Bernstein
    layers in the order of `model.layers`; with `nested`, also those inside
    its other layers (nested models, custom layers), depth first. The
    `Bernstein` inside a `BernsteinDense` is not listed apart from it.
    Anything else has none.
    """
    if is_bernstein(layer_or_model):
        return [layer_or_model]
    if not isinstance(layer_or_model, keras.Model):
        return []
    found = []
    seen = set()

    def visit(layer):
        for sublayer in _sublayers(layer):
            if id(sublayer) in seen:
                continue
            seen.add(id(sublayer))
            if is_bernstein(sublayer):
                found.append(sublayer)
            elif nested:
                visit(sublayer)

    visit(layer_or_model)
    return found


def bernstein_activations(layer_or_model):
    """`(layer name, Bernstein)` for each Bernstein layer, nested ones included.

    The name is the `Bernstein` or `BernsteinDense` layer's; the `Bernstein`
    holds its coefficients and bounds.
    """
    return [
        (layer.name, bernstein_activation(layer))
        for layer in find_bernstein_layers(layer_or_model, nested=True)
    ]


def output_layers(model):
    """The top-level layers of `model` whose outputs are outputs of `model`."""
    if isinstance(model, keras.Sequential):
        return model.layers[-1:]
    try:
        model_outputs = keras.tree.flatten(model.outputs)
    except (AttributeError, ValueError):
        return []
    result = []
    for layer in model.layers:
        try:
            layer_outputs = keras.tree.flatten(layer.output)
        except (AttributeError, ValueError):
            continue
        if any(o is t for o in layer_outputs for t in model_outputs):
            result.append(layer)
    return result
