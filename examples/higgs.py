"""Train a deep Bernstein MLP (or a ReLU-family baseline) on HIGGS.

Runs unchanged under KERAS_BACKEND=jax|tensorflow|torch, on CPU or any
accelerator present:

    python examples/higgs.py                          # the 11k sample in ../shared
    python examples/higgs.py --activation relu        # same network, ReLU
    python examples/higgs.py --data HIGGS.csv.gz --max-rows 1000000
    python examples/higgs.py --data auto              # full UCI file (downloads 2.8 GB)

With the full file the standard split is used (the last 500,000 rows are the
test set); otherwise the rows are shuffled with --split-seed and 20% are held
out. Writes model.keras (raw features (N, 28) in, signal probability (N, 1)
out; the normalization is adapted on the training rows only), metrics.json,
history.csv and PNG plots to --output-dir.
"""

import os
import sys

import keras

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import keras_bernstein  # noqa: E402
from keras_bernstein import datasets  # noqa: E402

DEFAULTS = dict(
    depth=3, width=256, degree=8, dropout=0.3, epochs=60, batch_size=128,
    learning_rate=1e-3, weight_decay=0.0, output_dir="outputs/higgs",
)
TEST_FRACTION = 0.2


def load_data(data, max_rows, split_seed):
    """Returns `(train, test, description)` for `--data` and `--max-rows`."""
    if data == "auto":
        train, test = datasets.load_higgs(max_rows=max_rows)
        source = "UCI HIGGS.csv.gz (downloaded, SHA-256 checked)"
    elif data == "tfds":
        train, test = datasets.load_higgs(source="tfds", max_rows=max_rows)
        source = "tensorflow-datasets higgs"
    else:
        train, test = datasets.load_higgs(data, max_rows=max_rows)
        source = data
    # Labels as (N, 1), the shape of the model's output.
    train = (train[0], train[1].reshape(-1, 1))
    if test is not None:
        test = (test[0], test[1].reshape(-1, 1))
        return train, test, {"source": source,
                             "split": "standard: last 500,000 rows are the test set"}
    train, test = _common.split(*train, TEST_FRACTION, split_seed)
    return train, test, {
        "source": source,
        "split": f"rows shuffled with seed {split_seed}, "
                 f"{TEST_FRACTION:.0%} held out as the test set",
    }


def build_model(args, x_train):
    """Raw features `(N, 28)` in, signal probability `(N, 1)` out.

    The inputs are standardized (statistics of the training rows, stored in
    the model), then optionally passed through a per-feature Bernstein
    transform: a learned monotone-or-not reshaping of each feature, which
    tames the heavy tails of the momentum and mass features. It is the same
    for every `--activation`; only the hidden activations differ.
    """
    normalization = keras.layers.Normalization(name="standardize")
    normalization.adapt(x_train)
    preprocessing = [normalization]
    if args.input_transform == "bernstein":
        preprocessing.append(keras_bernstein.Bernstein(
            degree=args.input_degree or args.degree,
            coefficient_initializer="identity",
            trainable_bounds=args.input_trainable_bounds,
            name="feature_transform"))
    inputs = keras.Input((datasets.HIGGS_FEATURES,), name="features")
    head = keras.layers.Dense(1, activation="sigmoid", name="signal_probability")
    return _common.build_mlp(inputs, preprocessing, args, head)


def main(argv=None):
    parser = _common.make_parser(__doc__.splitlines()[0], **DEFAULTS)
    parser.add_argument(
        "--data", default=_common.SHARED_HIGGS_SAMPLE,
        help="a .csv/.csv.gz in the UCI layout, 'auto' (download the UCI "
        "file) or 'tfds' (tensorflow-datasets)")
    parser.add_argument("--max-rows", type=int, default=None,
                        help="read only the first rows of the file")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the shuffle before the 80/20 split")
    parser.add_argument("--input-transform", choices=("bernstein", "none"),
                        default="bernstein",
                        help="per-feature Bernstein transform after the "
                        "standardization (same for every --activation)")
    parser.add_argument("--input-degree", type=int, default=None,
                        help="degree of the per-feature Bernstein transform "
                        "(None: the same as --degree)")
    parser.add_argument("--input-trainable-bounds", action="store_true",
                        help="learn the interval of the per-feature transform")
    args = parser.parse_args(argv)
    _common.check_args(parser, args)
    if args.input_degree is not None and args.input_degree < 1:
        parser.error(f"--input-degree must be >= 1. Received: {args.input_degree}")

    keras.utils.set_random_seed(args.seed)
    devices = _common.configure_distribution(args.distribute, args.batch_size)
    (x_train, y_train), (x_test, y_test), description = load_data(
        args.data, args.max_rows, args.split_seed)
    print(f"backend {keras.backend.backend()} on {', '.join(devices)}; "
          f"train {len(x_train)}, test {len(x_test)} rows of "
          f"{description['source']} ({description['split']})")

    model = build_model(args, x_train)
    _common.compile_model(model, args, len(x_train), loss="binary_crossentropy",
                          metrics=["accuracy", keras.metrics.AUC(name="auc")])
    history, seconds = _common.train(model, args, (x_train, y_train), (x_test, y_test))
    metrics = _common.evaluate(model, x_test, y_test, args.batch_size)
    # Exact ROC AUC (keras.metrics.AUC, kept for the curves, bins thresholds).
    metrics["test_roc_auc"] = _common.roc_auc(
        y_test, model.predict(x_test, batch_size=1024, verbose=0)[:, 0])
    metrics["test_auc_keras"] = metrics.pop("test_auc")
    metrics["dead_neuron_ratio"] = history.history["dead_neuron_ratio"][-1]
    data = {**description, "train_size": len(x_train), "test_size": len(x_test),
            "signal_fraction_test": float(y_test.mean())}
    record = _common.report(args, metrics, seconds, devices, data)
    _common.write_outputs(model, args, history, record)
    print(f"test ROC AUC {metrics['test_roc_auc']:.4f}  "
          f"accuracy {metrics['test_accuracy']:.4f}  "
          f"dead neurons {metrics['dead_neuron_ratio']:.1%}  "
          f"({args.activation}, depth {args.depth}, {seconds:.0f} s training; "
          f"outputs in {args.output_dir})")
    return record


if __name__ == "__main__":
    main()
