"""Depth sweep: plain deep MLPs, Bernstein vs ReLU-family, on MNIST and HIGGS.

Reproduces the depth study of the Deep Bernstein Networks paper: for every
data set, depth and activation, a plain stack of Dense -> BatchNorm ->
activation blocks (no skip connections) is trained, then measured:

- test accuracy (and exact ROC AUC for HIGGS);
- dead-neuron ratio under the `derivative` criterion (|σ'(z)| <= 1e-6 on every
  probe input) and the `gradient` criterion (|dL/dz| <= 1e-6 for every probe
  sample), on held-out probe inputs;
- gradient-norm ratio ||dL/dW_first|| / ||dL/dW_last|| of the kernels of the
  first and last hidden layers on a probe batch (far below 1: gradients
  vanish towards the input; far above 1: they explode).

    python examples/depth_sweep.py                       # everything (50 runs)
    python examples/depth_sweep.py --datasets mnist --depths 2,16 --activations bernstein,relu

Each run appends one JSON line to <output-dir>/results.jsonl; at the end (or
with --table-only) the file is turned into results.md and one PNG per data set.
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import higgs  # noqa: E402
import mnist  # noqa: E402

from keras_bernstein import _autodiff  # noqa: E402
from keras_bernstein import callbacks  # noqa: E402

DATASETS = ("mnist", "higgs")


def csv_list(cast):
    def parse(text):
        return [cast(item) for item in text.split(",") if item]
    return parse


def make_parser():
    parser = _common.make_parser(
        __doc__.splitlines()[0], depth=None, width=128, degree=8, dropout=0.0,
        epochs=None, batch_size=128, learning_rate=1e-3, weight_decay=0.0,
        output_dir="outputs/depth_sweep", verbose=0)
    parser.add_argument("--datasets", type=csv_list(str), default=list(DATASETS))
    parser.add_argument("--depths", type=csv_list(int), default=[2, 4, 8, 16, 32])
    parser.add_argument("--activations", type=csv_list(str),
                        default=list(_common.ACTIVATIONS))
    parser.add_argument("--mnist-epochs", type=int, default=10)
    parser.add_argument("--higgs-epochs", type=int, default=20)
    parser.add_argument("--mnist-data", default="sample",
                        help="as --data of mnist.py")
    parser.add_argument("--higgs-data", default=_common.SHARED_HIGGS_SAMPLE,
                        help="as --data of higgs.py")
    parser.add_argument("--max-rows", type=int, default=None,
                        help="HIGGS rows to read")
    parser.add_argument("--table-only", action="store_true",
                        help="only rebuild results.md and the plots from results.jsonl")
    return parser


def load(dataset, args):
    if dataset == "mnist":
        train, test, description = mnist.load_data(args.mnist_data, args.seed)
    else:
        train, test, description = higgs.load_data(args.higgs_data, args.max_rows, 0)
    return train, test, description


def build(dataset, args, x_train):
    if dataset == "mnist":
        model = mnist.build_model(args)
        model.compile(optimizer=_optimizer(args, len(x_train)),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    else:
        model = higgs.build_model(args, x_train, args.seed)
        model.compile(optimizer=_optimizer(args, len(x_train)),
                      loss="binary_crossentropy", metrics=["accuracy"])
    return model


def _optimizer(args, train_size):
    steps = args.epochs * int(np.ceil(train_size / args.batch_size))
    return keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(args.learning_rate, steps))


def gradient_norm_ratio(model, x, y):
    """||dL/dW|| of the first hidden kernel over that of the last one."""
    hidden = _common.hidden_layers(model)
    kernels = [_kernel(model, hidden[0]), _kernel(model, hidden[-1])]
    trainable = model.trainable_variables
    positions = [next(i for i, v in enumerate(trainable) if v is k) for k in kernels]
    non_trainable = [v.value for v in model.non_trainable_variables]
    values = [v.value for v in trainable]
    loss_fn = model.loss if callable(model.loss) else keras.losses.get(model.loss)
    y = keras.ops.convert_to_tensor(y)

    def loss(*chosen):
        current = list(values)
        for position, value in zip(positions, chosen):
            current[position] = value
        outputs, _ = model.stateless_call(current, non_trainable, x, training=False)
        return keras.ops.mean(loss_fn(y, outputs))

    first, last = _autodiff.gradients(loss, [values[p] for p in positions])
    norms = [float(keras.ops.convert_to_numpy(keras.ops.norm(g))) for g in (first, last)]
    return norms[0] / norms[1] if norms[1] > 0 else float("inf")


def _kernel(model, layer):
    if hasattr(layer, "dense"):  # BernsteinDense
        return layer.dense.kernel
    return model.get_layer(f"{layer.name}_dense").kernel


def run_one(dataset, depth, activation, args, data):
    (x_train, y_train), (x_test, y_test) = data
    run_args = argparse.Namespace(**vars(args))
    run_args.depth, run_args.activation = depth, activation
    run_args.epochs = args.mnist_epochs if dataset == "mnist" else args.higgs_epochs
    run_args.input_transform = "none"  # plain stacks: nothing but the blocks
    keras.utils.set_random_seed(args.seed)
    model = build(dataset, run_args, x_train)
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=run_args.epochs,
              verbose=args.verbose)
    seconds = time.perf_counter() - start
    results = model.evaluate(x_test, y_test, batch_size=1024, verbose=0,
                             return_dict=True)
    x_probe, y_probe = x_test[:_common.PROBE_SIZE], y_test[:_common.PROBE_SIZE]
    record = {
        "dataset": dataset, "depth": depth, "activation": activation,
        "test_accuracy": float(results["accuracy"]),
        "test_loss": float(results["loss"]),
        "dead_derivative": callbacks.dead_neuron_ratio(
            model, x_probe, criterion="derivative")["dead_neuron_ratio"],
        "dead_gradient": callbacks.dead_neuron_ratio(
            model, x_probe, y_probe, criterion="gradient")["dead_neuron_ratio"],
        "gradient_norm_ratio": gradient_norm_ratio(model, x_probe[:256], y_probe[:256]),
        "training_seconds": seconds,
        "epochs": run_args.epochs, "width": args.width, "degree": args.degree,
        "train_size": len(x_train), "test_size": len(x_test), "seed": args.seed,
        "backend": keras.backend.backend(),
    }
    if dataset == "higgs":
        record["test_roc_auc"] = _common.roc_auc(
            y_test, model.predict(x_test, batch_size=1024, verbose=0)[:, 0])
    return record


def read_records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_table(records, path):
    """Markdown table: one row per data set and depth, one column group per metric."""
    lines = []
    for dataset in DATASETS:
        rows = [r for r in records if r["dataset"] == dataset]
        if not rows:
            continue
        score = "test_roc_auc" if dataset == "higgs" else "test_accuracy"
        label = "ROC AUC" if dataset == "higgs" else "accuracy"
        first = rows[0]
        lines += [f"### {dataset.upper()}: {first['train_size']} training, "
                  f"{first['test_size']} test examples, width {first['width']}, "
                  f"{first['epochs']} epochs, seed {first['seed']}, "
                  f"backend {first['backend']}", "",
                  "| depth | activation | test " + label + " | dead (derivative) "
                  "| dead (gradient) | grad-norm ratio first/last | train s |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in sorted(rows, key=lambda r: (r["depth"], _order(r["activation"]))):
            lines.append(
                f"| {r['depth']} | {r['activation']} | {r[score]:.4f} | "
                f"{r['dead_derivative']:.1%} | {r['dead_gradient']:.1%} | "
                f"{r['gradient_norm_ratio']:.3g} | {r['training_seconds']:.0f} |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return "\n".join(lines)


def _order(activation):
    return _common.ACTIVATIONS.index(activation)


def plot(records, directory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("score", "test accuracy / ROC AUC"),
              ("dead_derivative", "dead ratio (derivative)"),
              ("dead_gradient", "dead ratio (gradient)"),
              ("gradient_norm_ratio", "||dL/dW_first|| / ||dL/dW_last||")]
    for dataset in DATASETS:
        rows = [r for r in records if r["dataset"] == dataset]
        if not rows:
            continue
        figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
        for activation in _common.ACTIVATIONS:
            mine = sorted((r for r in rows if r["activation"] == activation),
                          key=lambda r: r["depth"])
            if not mine:
                continue
            depths = [r["depth"] for r in mine]
            for axis, (key, title) in zip(axes, panels):
                if key == "score":
                    key = "test_roc_auc" if dataset == "higgs" else "test_accuracy"
                axis.plot(depths, [r[key] for r in mine], marker="o", label=activation)
                axis.set_xscale("log", base=2)
                axis.set_xlabel("depth")
                axis.set_title(title)
        axes[3].set_yscale("log")
        axes[0].legend()
        figure.suptitle(f"{dataset.upper()}: plain MLPs, no skip connections")
        figure.tight_layout()
        figure.savefig(os.path.join(directory, f"depth_sweep_{dataset}.png"), dpi=100)
        plt.close(figure)


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    for name in args.datasets:
        if name not in DATASETS:
            parser.error(f"--datasets takes {DATASETS}. Received: {name}")
    for name in args.activations:
        if name not in _common.ACTIVATIONS:
            parser.error(f"--activations takes {_common.ACTIVATIONS}. Received: {name}")
    os.makedirs(args.output_dir, exist_ok=True)
    results_path = os.path.join(args.output_dir, "results.jsonl")
    if not args.table_only:
        _common.configure_distribution(args.distribute, args.batch_size)
        for dataset in args.datasets:
            train, test, _ = load(dataset, args)
            for depth in args.depths:
                for activation in args.activations:
                    record = run_one(dataset, depth, activation, args, (train, test))
                    with open(results_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(json.dumps(record), flush=True)
    records = read_records(results_path)
    table = write_table(records, os.path.join(args.output_dir, "results.md"))
    plot(records, args.output_dir)
    print(table)
    return records


if __name__ == "__main__":
    main()
