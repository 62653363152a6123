"""Keras layers with learnable Bernstein-polynomial activations."""

from keras_bernstein.layers.bernstein import Bernstein
from keras_bernstein.layers.bernstein_dense import BernsteinDense

__all__ = ["Bernstein", "BernsteinDense"]
