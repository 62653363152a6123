"""Command line, model building, training and reporting shared by the examples.

`mnist.py`, `higgs.py` and `depth_sweep.py` differ only in their data, their
input preprocessing and their output head; everything else lives here, so
that a Bernstein network and its baselines are built and trained the same way.
"""

import argparse
import json
import os
import re
import time

import keras
import numpy as np

import keras_bernstein

ACTIVATIONS = ("bernstein", "relu", "leaky_relu", "selu", "gelu")
# Activations of the dense blocks that are BernsteinDense layers.
BERNSTEIN_ACTIVATIONS = ("bernstein", "monotone_bernstein")
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The offline data of the project, next to the repository (absent in a fresh
# clone; the examples then say what they use instead).
SHARED_DATA = os.path.join(os.path.dirname(REPOSITORY), "shared", "data")
SHARED_MNIST_TEST = os.path.join(SHARED_DATA, "mnist", "mnist_test_first5k.npz")
SHARED_HIGGS_SAMPLE = os.path.join(SHARED_DATA, "higgs", "higgs_sample_11k.csv.gz")
# Weights that AdamW's decoupled decay leaves alone (names of variables).
NOT_DECAYED = ["coefficients", "bounds", "bias", "gamma", "beta"]
# Held-out inputs on which the dead-neuron ratio is measured.
PROBE_SIZE = 1024


def make_parser(description, omit=(), **defaults):
    """The options common to the examples; `defaults` sets per-task defaults.

    `omit` names options (by destination, e.g. `"learning_rate"`) that a
    script replaces by its own, such as the sweep's lists of values.
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def add(flag, *args, **kwargs):
        if flag[2:].replace("-", "_") not in omit:
            parser.add_argument(flag, *args, **kwargs)

    add("--activation", choices=ACTIVATIONS, default="bernstein",
        help="hidden activation; the baselines keep the same "
        "Dense -> BatchNorm -> activation blocks")
    add("--depth", type=int, help="number of hidden layers")
    add("--width", type=int, help="units per hidden layer "
        "(MNIST CNN: channels of the first block)")
    add("--degree", type=int, help="Bernstein polynomial degree")
    add("--dropout", type=float, help="dropout after each hidden "
        "layer (MNIST CNN: before the head)")
    add("--epochs", type=int)
    add("--batch-size", type=int)
    add("--learning-rate", type=float,
        help="peak learning rate of Adam (cosine decay to 0)")
    add("--weight-decay", type=float,
        help="decoupled weight decay (AdamW); 0 for Adam")
    add("--output-dir")
    add("--seed", type=int, default=0,
        help="seed of the weights, the shuffles and the splits")
    add("--distribute", action="store_true",
        help="data parallel over all local devices "
        "(keras.distribution.DataParallel; JAX backend only)")
    add("--verbose", type=int, default=1, choices=(0, 1, 2),
        help="Keras fit verbosity (1: progress bar)")
    parser.set_defaults(**defaults)
    return parser


def check_args(parser, args):
    """Rejects values that would fail later with a less helpful message."""
    for name in ("depth", "width", "degree", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1. "
                         f"Received: {getattr(args, name)}")
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout must be in [0, 1). Received: {args.dropout}")
    if args.learning_rate <= 0 or args.weight_decay < 0:
        parser.error("--learning-rate must be > 0 and --weight-decay >= 0. "
                     f"Received: {args.learning_rate}, {args.weight_decay}")


def configure_distribution(distribute, batch_size):
    """Sets `keras.distribution.DataParallel` when asked; returns the devices.

    Keras' distribution API is implemented for JAX only, so `--distribute`
    on another backend is an error rather than a silent single-device run.
    """
    if not distribute:
        return [_default_device()]
    backend = keras.backend.backend()
    if backend != "jax":
        raise SystemExit(
            f"--distribute uses keras.distribution.DataParallel, which Keras "
            f"implements for the JAX backend only. Received: KERAS_BACKEND={backend}. "
            "Run with KERAS_BACKEND=jax, or without --distribute."
        )
    devices = keras.distribution.list_devices()
    if batch_size % len(devices):
        raise SystemExit(
            f"--batch-size must be a multiple of the {len(devices)} devices for "
            f"data parallelism. Received: --batch-size {batch_size}"
        )
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return [str(device) for device in devices]


def _default_device():
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return str(jax.devices()[0])
    if backend == "torch":
        from keras.src.backend.torch.core import get_device

        return str(get_device())
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return gpus[0].name if gpus else "CPU:0"
    return "cpu"


def hidden_block(activation, width, degree, dropout, name, normalization="batch",
                 min_gap=0.0, coefficient_initializer="relu"):
    """One hidden layer: Dense -> [BatchNorm] -> activation (-> Dropout).

    The Bernstein block is `BernsteinDense` (the paper's block); a baseline
    is the same steps with a fixed activation, so only the activation
    differs between the networks compared. `"monotone_bernstein"` is the
    Bernstein block with `MonotonicCoefficients(min_gap)`, whose slope is
    at least `degree * min_gap / (u - l)` on the whole line (the
    non-vanishing gradient theorem). `normalization=None` drops the
    BatchNorm, and the matmul then has a bias. `coefficient_initializer`
    is that of the Bernstein blocks.
    """
    if activation in BERNSTEIN_ACTIVATIONS:
        constraint = (keras_bernstein.constraints.MonotonicCoefficients(min_gap)
                      if activation == "monotone_bernstein" else None)
        block = [keras_bernstein.BernsteinDense(
            width, degree=degree, normalization=normalization,
            coefficient_initializer=coefficient_initializer,
            coefficient_constraint=constraint, name=name)]
    else:
        block = [keras.layers.Dense(width, name=f"{name}_dense")]
        if normalization == "batch":
            block.append(keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn"))
        block.append(keras.layers.Activation(activation, name=name))
    if dropout:
        block.append(keras.layers.Dropout(dropout, name=f"{name}_dropout"))
    return block


def build_mlp(inputs, preprocessing, args, head):
    """`inputs -> preprocessing -> depth x hidden_block -> head`, functional.

    Args:
        inputs: A `keras.Input` of the raw data.
        preprocessing: Layers applied to the raw inputs (scaling,
            normalization, flattening); they are saved with the model, so
            the saved model takes raw data.
        args: Parsed options (`activation`, `depth`, `width`, `degree`,
            `dropout`, and optionally `normalization`, `min_gap`,
            `coefficient_initializer`).
        head: The output layer.
    """
    x = inputs
    for layer in preprocessing:
        x = layer(x)
    for index in range(args.depth):
        for layer in hidden_block(args.activation, args.width, args.degree,
                                  args.dropout, name=f"hidden_{index + 1}",
                                  normalization=getattr(args, "normalization", "batch"),
                                  min_gap=getattr(args, "min_gap", 0.0),
                                  coefficient_initializer=getattr(
                                      args, "coefficient_initializer", "relu")):
            x = layer(x)
    name = f"{args.activation}_mlp_depth{args.depth}"
    return keras.Model(inputs, head(x), name=name)


def conv_block(activation, filters, degree, name, pool_first=True):
    """One convolutional block: Conv2D -> BatchNorm -> MaxPool -> activation.

    The Bernstein activation is `Bernstein(shared_axes=[1, 2])`, one learned
    curve per channel shared over the image (as a per-neuron curve per pixel
    would tie the network to the image size); a baseline swaps only the
    activation. Pooling first (`pool_first`) runs the activation on a quarter
    of the positions; for a non-decreasing activation (ReLU) the order is
    immaterial, for a learned curve it is not.
    """
    if activation == "bernstein":
        nonlinearity = keras_bernstein.Bernstein(degree, shared_axes=[1, 2], name=name)
    else:
        nonlinearity = keras.layers.Activation(activation, name=name)
    pooling = keras.layers.MaxPooling2D(2, name=f"{name}_pool")
    return [
        # No bias: the batch normalization's offset takes its place.
        keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                            name=f"{name}_conv"),
        keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn"),
        *([pooling, nonlinearity] if pool_first else [nonlinearity, pooling]),
    ]


def max_cnn_depth(image_size):
    """The most conv blocks an image of `image_size` pixels a side allows.

    Each block's 2x2 max pooling halves the image, rounding down, and needs
    at least 2 pixels: 28 allows 4 blocks (28, 14, 7, 3, 1).
    """
    depth = 0
    while image_size >= 2:
        image_size //= 2
        depth += 1
    return depth


def build_cnn(inputs, preprocessing, args, head):
    """`inputs -> preprocessing -> depth x conv_block -> [hidden] -> head`.

    Block `i` (from 0) has `width * 2**i` channels and halves the image size;
    the last block's feature map is flattened, optionally passed through one
    hidden dense block of `head_width` units (`hidden_block`), and dropped
    out into the head.

    Args:
        inputs: A `keras.Input` of the raw images.
        preprocessing: Layers applied to the raw inputs, ending in a
            `(height, width, channels)` image; saved with the model.
        args: Parsed options (`activation`, `depth`, `width`, `degree`,
            `dropout`, and optionally `head_width`, `pool_first`).
        head: The output layer.
    """
    x = inputs
    for layer in preprocessing:
        x = layer(x)
    height, width = x.shape[1:3]
    limit = max_cnn_depth(min(height, width))
    if args.depth > limit:
        raise ValueError(
            f"`depth` must be at most {limit} for a CNN on {height}x{width} "
            "images: each conv block halves the image. Build an MLP for "
            f"deeper networks. Received: depth={args.depth}")
    for index in range(args.depth):
        for layer in conv_block(args.activation, args.width * 2**index,
                                args.degree, name=f"conv_{index + 1}",
                                pool_first=getattr(args, "pool_first", True)):
            x = layer(x)
    x = keras.layers.Flatten(name="features")(x)
    if getattr(args, "head_width", 0):
        for layer in hidden_block(args.activation, args.head_width, args.degree,
                                  0.0, name="hidden_1"):
            x = layer(x)
    if args.dropout:
        x = keras.layers.Dropout(args.dropout, name="features_dropout")(x)
    name = f"{args.activation}_cnn_depth{args.depth}"
    return keras.Model(inputs, head(x), name=name)


def hidden_layers(model):
    """The layers whose output is a hidden activation, input to output."""
    return [layer for layer in model.layers
            if re.fullmatch(r"hidden_\d+", layer.name)]


def compile_model(model, args, train_size, loss, metrics):
    """Adam(W) with a cosine-decayed learning rate over the whole run."""
    steps = args.epochs * int(np.ceil(train_size / args.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
    if args.weight_decay:
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay)
        # Decay shrinks toward 0: right for weight matrices, wrong for
        # activation shapes, normalization scales and offsets.
        optimizer.exclude_from_weight_decay(var_names=NOT_DECAYED)
    else:
        optimizer = keras.optimizers.Adam(schedule)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


def split(x, y, fraction, seed):
    """Shuffles with `seed`, returns `(x_a, y_a), (x_b, y_b)` with `fraction` in b."""
    order = np.random.default_rng(seed).permutation(len(x))
    cut = len(x) - int(round(fraction * len(x)))
    first, second = order[:cut], order[cut:]
    return (x[first], y[first]), (x[second], y[second])


def train(model, args, train_data, test_data, extra_callbacks=(),
          history_file="history.csv"):
    """Fits with the dead-neuron monitor; returns `(history, seconds)`."""
    from keras_bernstein.callbacks import DeadNeuronRatio

    (x_train, y_train), (x_test, y_test) = train_data, test_data
    os.makedirs(args.output_dir, exist_ok=True)
    # Dead units are counted on held-out inputs, derivative criterion.
    monitor = DeadNeuronRatio(x_test[:PROBE_SIZE], criterion="derivative")
    callbacks = [
        monitor,
        keras.callbacks.CSVLogger(os.path.join(args.output_dir, history_file)),
        *extra_callbacks,
    ]
    start = time.perf_counter()
    history = model.fit(
        x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
        validation_data=(x_test, y_test), callbacks=callbacks,
        verbose=args.verbose,
    )
    return history, time.perf_counter() - start


def evaluate(model, x, y, batch_size):
    """`model.evaluate` as a `{"test_<metric>": float}` dict."""
    results = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    return {f"test_{name}": float(value) for name, value in results.items()}


def roc_auc(labels, scores):
    """Exact area under the ROC curve (Mann-Whitney U, ties counted half)."""
    labels = np.asarray(labels).reshape(-1).astype(bool)
    scores = np.asarray(scores, dtype="float64").reshape(-1)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average rank of each group of tied scores.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    return float((ranks[labels].sum() - positives * (positives + 1) / 2)
                 / (positives * negatives))


def write_outputs(model, args, history, metrics, plotted_model=None):
    """Writes `model.keras`, `metrics.json` and the PNG plots to `--output-dir`.

    The learned activations are plotted from `plotted_model` (default
    `model`), e.g. one member of an ensemble.
    """
    directory = args.output_dir
    os.makedirs(directory, exist_ok=True)
    model.save(os.path.join(directory, "model.keras"))
    with open(os.path.join(directory, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    plot_training(history.history, os.path.join(directory, "training_curves.png"))
    from keras_bernstein import plotting

    figures = {"dead_neuron_ratio.png": plotting.plot_dead_neuron_ratio(history)}
    if args.activation == "bernstein":
        figures["activations.png"] = plotting.plot_activations(plotted_model or model)
    import matplotlib.pyplot as plt

    for name, figure in figures.items():
        figure.savefig(os.path.join(directory, name), dpi=100)
        plt.close(figure)


def plot_training(history, path):
    """Loss and every other metric per epoch, training and held-out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in history if not k.startswith(("val_", "dead_neuron_ratio",
                                                     "out_of_bounds", "learning_rate"))]
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2),
                                squeeze=False)
    epochs = np.arange(1, len(history[names[0]]) + 1)
    for axis, name in zip(axes[0], names):
        axis.plot(epochs, history[name], label="train")
        if f"val_{name}" in history:
            axis.plot(epochs, history[f"val_{name}"], label="test")
        axis.set_xlabel("epoch")
        axis.set_title(name)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def report(args, metrics_by_name, seconds, devices, data):
    """The `metrics.json` record: results, timing, backend, data, configuration."""
    return {
        **metrics_by_name,
        "training_seconds": seconds,
        "backend": keras.backend.backend(),
        "devices": devices,
        "data": data,
        "config": vars(args),
    }
