"""keras-bernstein: learnable Bernstein-polynomial activations for Keras 3."""

from keras_bernstein import attacks
from keras_bernstein import callbacks
from keras_bernstein import compositional
from keras_bernstein import constraints
from keras_bernstein import datasets
from keras_bernstein import initializers
from keras_bernstein import layers
from keras_bernstein import ops
from keras_bernstein import sos
from keras_bernstein import training
from keras_bernstein import transforms
from keras_bernstein import verification
from keras_bernstein.layers import Bernstein
from keras_bernstein.layers import BernsteinDense

__version__ = "0.1.0"

__all__ = [
    "Bernstein",
    "BernsteinDense",
    "attacks",
    "callbacks",
    "compositional",
    "constraints",
    "datasets",
    "initializers",
    "layers",
    "ops",
    "sos",
    "training",
    "transforms",
    "verification",
]
