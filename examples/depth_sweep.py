"""Depth sweep: plain deep MLPs, Bernstein vs ReLU-family, on MNIST and HIGGS.

Reproduces the depth study of the Deep Bernstein Networks paper: for every
data set, depth, activation, normalization, learning rate and seed, a plain
stack of Dense -> [BatchNorm ->] activation blocks (no skip connections) is
trained, then measured:

- test accuracy (and exact ROC AUC for HIGGS);
- dead-neuron ratio under the `derivative` criterion (|σ'(z)| <= 1e-6 on every
  probe input) and the `gradient` criterion (|dL/dz| <= 1e-6 for every probe
  sample), on held-out probe inputs, after every epoch;
- gradient-norm ratio ||dL/dW_first|| / ||dL/dW_last|| of the kernels of the
  first and last hidden layers on a probe batch, at initialization and after
  training (far below 1: gradients vanish towards the input; far above 1:
  they explode);
- for Bernstein networks, the certified minimum slope of every activation
  (`verification.derivative_certificate`): positive for `monotone_bernstein`,
  whose coefficients are constrained by `MonotonicCoefficients(--min-gap)`.

    python examples/depth_sweep.py                       # the BatchNorm sweep (50 runs)
    python examples/depth_sweep.py --normalizations none --depths 8,16,32 \
        --activations relu,leaky_relu,selu,gelu,bernstein,monotone_bernstein \
        --learning-rates 1e-3,1e-2 --seeds 0,1

Each run appends one JSON line to <output-dir>/results.jsonl; at the end (or
with --table-only) the file is turned into results.md (mean and range over
seeds) and one PNG per data set.
"""

import argparse
import json
import math
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
from keras_bernstein import verification  # noqa: E402

DATASETS = ("mnist", "higgs")
ACTIVATIONS = _common.ACTIVATIONS + ("monotone_bernstein",)
NORMALIZATIONS = {"batch": "batch", "none": None}


def csv_list(cast, choices=None):
    def parse(text):
        values = [cast(item) for item in text.split(",") if item]
        for value in values:
            if choices is not None and value not in choices:
                raise argparse.ArgumentTypeError(
                    f"takes values in {tuple(choices)}. Received: {value}")
        if not values:
            raise argparse.ArgumentTypeError(f"needs at least one value. Received: {text!r}")
        return values
    return parse


def make_parser():
    parser = _common.make_parser(
        __doc__.splitlines()[0],
        omit=("activation", "depth", "epochs", "learning_rate", "seed"),
        width=128, degree=8, dropout=0.0, batch_size=128, weight_decay=0.0,
        output_dir="outputs/depth_sweep", verbose=0)
    parser.add_argument("--datasets", type=csv_list(str, DATASETS),
                        default=list(DATASETS))
    parser.add_argument("--depths", type=csv_list(int), default=[2, 4, 8, 16, 32])
    parser.add_argument("--activations", type=csv_list(str, ACTIVATIONS),
                        default=list(_common.ACTIVATIONS),
                        help=f"comma-separated, from {ACTIVATIONS}")
    parser.add_argument("--normalizations", type=csv_list(str, NORMALIZATIONS),
                        default=["batch"],
                        help="comma-separated: 'batch' (Dense -> BatchNorm -> "
                        "activation) and/or 'none' (Dense -> activation)")
    parser.add_argument("--learning-rates", type=csv_list(float), default=[1e-3],
                        help="comma-separated peak learning rates of Adam "
                        "(cosine decay to 0)")
    parser.add_argument("--seeds", type=csv_list(int), default=[0],
                        help="comma-separated seeds of the weights and shuffles "
                        "(the data split is the same for every seed)")
    parser.add_argument("--min-gap", type=float, default=0.075,
                        help="MonotonicCoefficients(min_gap) of monotone_bernstein: "
                        "slope >= degree * min_gap / (u - l) everywhere")
    parser.add_argument("--coefficient-initializer", choices=("relu", "identity"),
                        default="relu",
                        help="initial shape of the Bernstein activations "
                        "(BernsteinDense's default: relu)")
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


def check_args(parser, args):
    """Rejects values that would fail later with a less helpful message."""
    for name in ("width", "degree", "batch_size", "mnist_epochs", "higgs_epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1. "
                         f"Received: {getattr(args, name)}")
    for name in ("depths", "learning_rates"):
        if min(getattr(args, name)) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0. "
                         f"Received: {getattr(args, name)}")
    if not (args.min_gap >= 0 and math.isfinite(args.min_gap)):
        parser.error(f"--min-gap must be a finite number >= 0. Received: {args.min_gap}")


def load(dataset, args):
    # The same split for every seed: the seeds vary the weights and shuffles.
    if dataset == "mnist":
        train, test, description = mnist.load_data(args.mnist_data, 0)
    else:
        train, test, description = higgs.load_data(args.higgs_data, args.max_rows, 0)
    return train, test, description


def build(dataset, args, x_train):
    if dataset == "mnist":
        model = mnist.build_model(args)
        loss = "sparse_categorical_crossentropy"
    else:
        model = higgs.build_model(args, x_train, args.seed)
        loss = "binary_crossentropy"
    _common.compile_model(model, args, len(x_train), loss, ["accuracy"])
    return model


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
    if not all(math.isfinite(n) for n in norms):
        return float("nan")  # a diverged network
    return norms[0] / norms[1] if norms[1] > 0 else float("inf")


def _kernel(model, layer):
    if hasattr(layer, "dense"):  # BernsteinDense
        return layer.dense.kernel
    return model.get_layer(f"{layer.name}_dense").kernel


class DeadUnitsPerEpoch(keras.callbacks.Callback):
    """Measures the dead ratio under both criteria after every epoch.

    Two `DeadNeuronRatio` monitors (one per criterion) are probed directly,
    so that both figures are kept under keys of their own:
    `dead_derivative` and `dead_gradient`, one float per epoch.
    """

    def __init__(self, x, y):
        super().__init__()
        self.monitors = {
            "dead_derivative": callbacks.DeadNeuronRatio(x, criterion="derivative"),
            "dead_gradient": callbacks.DeadNeuronRatio(x, y, criterion="gradient"),
        }
        self.history = {key: [] for key in self.monitors}

    def set_model(self, model):
        super().set_model(model)
        for monitor in self.monitors.values():
            monitor.set_model(model)

    def measure(self):
        return {key: monitor.measure()["dead_neuron_ratio"]
                for key, monitor in self.monitors.items()}

    def on_epoch_end(self, epoch, logs=None):
        for key, value in self.measure().items():
            self.history[key].append(value)
            if logs is not None:
                logs[key] = value


def certified_min_slope(model):
    """The smallest certified slope of all Bernstein activations (float64)."""
    certificates = verification.derivative_certificate(model)
    return {
        "certified_min_slope": min(c.min_slope for c in certificates),
        "monotone_fraction": float(np.mean([c.monotone_fraction for c in certificates])),
        "certificate_domain": certificates[0].domain,
    }


def run_one(dataset, depth, activation, normalization, learning_rate, seed, args, data):
    (x_train, y_train), (x_test, y_test) = data
    run_args = argparse.Namespace(**vars(args))
    run_args.depth, run_args.activation = depth, activation
    run_args.normalization = NORMALIZATIONS[normalization]
    run_args.learning_rate, run_args.seed = learning_rate, seed
    run_args.epochs = args.mnist_epochs if dataset == "mnist" else args.higgs_epochs
    run_args.input_transform = "none"  # plain stacks: nothing but the blocks
    keras.utils.set_random_seed(seed)
    model = build(dataset, run_args, x_train)
    x_probe, y_probe = x_test[:_common.PROBE_SIZE], y_test[:_common.PROBE_SIZE]
    initial_ratio = gradient_norm_ratio(model, x_probe[:256], y_probe[:256])
    dead_units = DeadUnitsPerEpoch(x_probe, y_probe)
    dead_units.set_model(model)
    initial_dead = dead_units.measure()
    start = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=args.batch_size,
                        epochs=run_args.epochs, callbacks=[dead_units],
                        verbose=args.verbose)
    seconds = time.perf_counter() - start
    results = model.evaluate(x_test, y_test, batch_size=1024, verbose=0,
                             return_dict=True)
    record = {
        "dataset": dataset, "depth": depth, "activation": activation,
        "normalization": normalization, "learning_rate": learning_rate,
        "test_accuracy": float(results["accuracy"]),
        "test_loss": float(results["loss"]),
        "train_loss": [float(v) for v in history.history["loss"]],
        "dead_derivative": dead_units.history["dead_derivative"][-1],
        "dead_gradient": dead_units.history["dead_gradient"][-1],
        "dead_derivative_initial": initial_dead["dead_derivative"],
        "dead_gradient_initial": initial_dead["dead_gradient"],
        "dead_derivative_per_epoch": dead_units.history["dead_derivative"],
        "dead_gradient_per_epoch": dead_units.history["dead_gradient"],
        "gradient_norm_ratio_initial": initial_ratio,
        "gradient_norm_ratio": gradient_norm_ratio(model, x_probe[:256], y_probe[:256]),
        "training_seconds": seconds,
        "epochs": run_args.epochs, "width": args.width, "degree": args.degree,
        "min_gap": args.min_gap if activation == "monotone_bernstein" else None,
        "coefficient_initializer": (args.coefficient_initializer
                                    if activation in _common.BERNSTEIN_ACTIVATIONS
                                    else None),
        "train_size": len(x_train), "test_size": len(x_test), "seed": seed,
        "backend": keras.backend.backend(),
    }
    record["diverged"] = diverged(record)
    if activation in _common.BERNSTEIN_ACTIVATIONS:
        record.update(certified_min_slope(model))
    if dataset == "higgs":
        scores = model.predict(x_test, batch_size=1024, verbose=0)[:, 0]
        record["test_roc_auc"] = (_common.roc_auc(y_test, scores)
                                  if np.all(np.isfinite(scores)) else float("nan"))
    return record


# Cross-entropy of the uniform prediction: ln(classes).
CHANCE_LOSS = {"mnist": math.log(10), "higgs": math.log(2)}


def diverged(record):
    """Whether training blew up: a final training loss that is not finite or
    is more than twice the loss of predicting every class equally likely.

    Such networks sit at saturated outputs (cross-entropy at its clipping
    value, zero gradient at the head), so their other figures mean nothing.
    """
    if "train_loss" not in record:
        return False  # records that keep only the final figures
    final = record["train_loss"][-1]
    return not math.isfinite(final) or final > 2 * CHANCE_LOSS[record["dataset"]]


def read_records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _score_key(dataset):
    return "test_roc_auc" if dataset == "higgs" else "test_accuracy"


def _score_name(dataset):
    return "ROC AUC" if dataset == "higgs" else "accuracy"


def _condition(record):
    """(normalization, learning rate) of a record; old records: BatchNorm, 1e-3."""
    return record.get("normalization", "batch"), record.get("learning_rate", 1e-3)


def _spread(values, form):
    """`mean [min, max]` over seeds, or one figure when they all print alike."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if any(not math.isfinite(v) for v in values):
        finite = [v for v in values if math.isfinite(v)]
        note = f"{len(values) - len(finite)}/{len(values)} not finite"
        return note if not finite else f"{_spread(finite, form)} ({note})"
    mean = float(np.mean(values))
    if len(set(form(v) for v in values)) == 1:
        return form(mean)  # the same figure for every seed
    return f"{form(mean)} [{form(min(values))}, {form(max(values))}]"


def _percent(value):
    return f"{value:.1%}"


def _three_digits(value):
    return f"{value:.3g}"


def _four_decimals(value):
    return f"{value:.4f}"


def _label(record):
    """The activation, and the initial shape of a Bernstein one when not the default."""
    initializer = record.get("coefficient_initializer") or "relu"
    if initializer == "relu":
        return record["activation"]
    return f"{record['activation']} ({initializer} init)"


def _order(label):
    activation, _, initializer = label.partition(" ")
    return ACTIVATIONS.index(activation), initializer


def _cells(records):
    """Records grouped by (dataset, normalization, rate, depth, activation label)."""
    cells = {}
    for r in records:
        key = (r["dataset"], *_condition(r), r["depth"], _label(r))
        cells.setdefault(key, []).append(r)
    return cells


def write_table(records, path):
    """Markdown tables: one per data set and condition, one row per depth and activation.

    Cells are the mean over the seeds whose training did not diverge (see
    `diverged`), with the range `[min, max]` when there are several; the
    `diverged` column counts the others.
    """
    cells = _cells(records)
    lines = []
    conditions = sorted({key[:3] for key in cells},
                        key=lambda k: (DATASETS.index(k[0]), k[1] != "batch", k[2]))
    for dataset, normalization, rate in conditions:
        keys = sorted((k for k in cells if k[:3] == (dataset, normalization, rate)),
                      key=lambda k: (k[3], _order(k[4])))
        first = cells[keys[0]][0]
        seeds = sorted({r["seed"] for k in keys for r in cells[k]})
        label = _score_name(dataset)
        block = ("Dense → BatchNorm → activation" if normalization == "batch"
                 else "Dense → activation, no normalization")
        lines += [f"### {dataset.upper()}, {block}, learning rate {rate:g}", "",
                  f"{first['train_size']} training, {first['test_size']} test "
                  f"examples, width {first['width']}, {first['epochs']} epochs, "
                  f"seeds {', '.join(map(str, seeds))}, backend {first['backend']}.", "",
                  f"| depth | activation | test {label} | dead (derivative) "
                  "| dead (gradient) | grad-norm ratio at init | grad-norm ratio "
                  "trained | certified min slope | diverged | train s |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for key in keys:
            runs = cells[key]
            rows = [r for r in runs if not diverged(r)]

            def cell(name, form):
                return _spread([r.get(name) for r in rows], form)

            # In inference mode a fresh BatchNorm is the identity (moving
            # statistics 0 and 1), so its ratio at initialization would be
            # the unnormalized network's: not shown.
            initial_ratio = ("–" if normalization == "batch"
                             else cell("gradient_norm_ratio_initial", _three_digits))

            lines.append(
                f"| {key[3]} | {key[4]} | {cell(_score_key(dataset), _four_decimals)} | "
                f"{cell('dead_derivative', _percent)} | {cell('dead_gradient', _percent)} | "
                f"{initial_ratio} | "
                f"{cell('gradient_norm_ratio', _three_digits)} | "
                f"{cell('certified_min_slope', _three_digits)} | "
                f"{len(runs) - len(rows)}/{len(runs)} | "
                f"{np.mean([r['training_seconds'] for r in runs]):.0f} |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return "\n".join(lines)


def plot(records, directory):
    """Per data set: dead ratios and score against depth, one column per condition.

    Points are the mean over the seeds that did not diverge, error bars the
    range; a cell where every seed diverged has no point.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _cells(records)
    panels = [("dead_derivative", "dead ratio (derivative)"),
              ("dead_gradient", "dead ratio (gradient)"),
              ("score", None)]
    for dataset in DATASETS:
        conditions = sorted({k[1:3] for k in cells if k[0] == dataset},
                            key=lambda c: (c[0] != "batch", c[1]))
        if not conditions:
            continue
        # One colour per activation across the columns.
        every_label = sorted({k[4] for k in cells if k[0] == dataset}, key=_order)
        handles = {}
        figure, axes = plt.subplots(len(panels), len(conditions), squeeze=False,
                                    figsize=(4.2 * len(conditions), 2.8 * len(panels)),
                                    sharey="row")
        for column, (normalization, rate) in enumerate(conditions):
            labels = sorted({k[4] for k in cells if k[:3] == (dataset, normalization, rate)},
                            key=_order)
            column_depths = sorted({k[3] for k in cells
                                    if k[:3] == (dataset, normalization, rate)})
            for label in labels:
                keys = sorted((k for k in cells
                               if k[:3] == (dataset, normalization, rate)
                               and k[4] == label), key=lambda k: k[3])
                depths = [k[3] for k in keys]
                for row, (name, title) in enumerate(panels):
                    name = _score_key(dataset) if name == "score" else name
                    values = [np.array([r[name] for r in cells[k]
                                        if not diverged(r)], dtype=float)
                              for k in keys]
                    means = np.array([np.nanmean(v) if np.isfinite(v).any() else np.nan
                                      for v in values])
                    low = np.array([np.nanmin(v) if np.isfinite(v).any() else np.nan
                                    for v in values])
                    high = np.array([np.nanmax(v) if np.isfinite(v).any() else np.nan
                                     for v in values])
                    axis = axes[row, column]
                    handles[label] = axis.errorbar(
                        depths, means, yerr=[means - low, high - means], marker="o",
                        capsize=3, color=f"C{every_label.index(label) % 10}",
                        # A non-default initial shape: dashed, beside its solid twin.
                        linestyle="--" if "(" in label else "-")
                    axis.set_xscale("log", base=2)
                    axis.set_xticks(column_depths, [str(d) for d in column_depths])
                    if column == 0:
                        axis.set_ylabel(title or f"test {_score_name(dataset)}")
                    if row == len(panels) - 1:
                        axis.set_xlabel("depth")
            block = "BatchNorm" if normalization == "batch" else "no normalization"
            axes[0, column].set_title(f"{block}, learning rate {rate:g}")
        figure.legend([handles[label] for label in every_label], every_label,
                      loc="lower center", ncol=min(len(every_label), 4), fontsize=9)
        figure.suptitle(f"{dataset.upper()}: plain MLPs, no skip connections "
                        "(mean and range over seeds)")
        rows_of_legend = -(-len(every_label) // 4)
        figure.tight_layout(rect=(0, 0.035 * rows_of_legend, 1, 1))
        figure.savefig(os.path.join(directory, f"depth_sweep_{dataset}.png"), dpi=100)
        plt.close(figure)


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    os.makedirs(args.output_dir, exist_ok=True)
    results_path = os.path.join(args.output_dir, "results.jsonl")
    if not args.table_only:
        _common.configure_distribution(args.distribute, args.batch_size)
        for dataset in args.datasets:
            train, test, _ = load(dataset, args)
            for normalization in args.normalizations:
                for learning_rate in args.learning_rates:
                    for depth in args.depths:
                        for activation in args.activations:
                            for seed in args.seeds:
                                record = run_one(dataset, depth, activation,
                                                 normalization, learning_rate, seed,
                                                 args, (train, test))
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
