"""One-dimensional function approximation: compositional ReLU vs Bernstein.

The experiment of Milkert, Hyde and Laine (ICML 2025, arXiv:2311.18022):
500 evenly spaced points on [0, 1], width-4 ReLU networks with 5 hidden
layers, Adam on the mean squared error, many seeds per method, for the targets
x^3, x^11, sin and tanh(3x). Methods:

- `default`: a plain `Dense(4, relu)` stack with Keras' default (Glorot
  uniform) initialisation;
- `no pretraining`: the same stack built from a `TriangleWaveNetwork` with
  random peaks and trained directly as an ordinary network;
- `pretrain, free scales`: stage 1 trains peaks and every scale, stage 2 all
  weights;
- `pretrain, diff. rule`: stage 1 trains the peaks and `s_0` under the
  differentiability rule, stage 2 all weights;
- `Bernstein`: `BernsteinDense(2, degree=5)` layers (no normalization) of
  about the same parameter count.

Then the error versus depth (1...8) of the rule-pretrained compositional and
the Bernstein networks.

Every run is full batch. For speed all seeds of one method train at once:
`jax.vmap` over seeds of a `jax.lax.scan` over steps of Keras' stateless
model call and optimizer update, so this script needs the JAX backend (the
two stages are the same as `keras_bernstein.compositional.train_two_stage`,
which uses `fit` and runs on any backend, slowly here: one `fit` epoch per
step).

    KERAS_BACKEND=jax OMP_NUM_THREADS=1 python examples/approximation.py \
        --seeds 30 --output outputs/approximation.md

Writes a Markdown report (tables of min / mean MSE and collapse counts) and
the raw per-seed results next to it as JSON.
"""

import argparse
import json
import math
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_bernstein.compositional import TriangleWaveNetwork  # noqa: E402
from keras_bernstein.layers import BernsteinDense  # noqa: E402

# name: (function on [0, 1], sign σ of the compositional network). sin is
# taken on [0, π] and rescaled to [0, 1], where it is concave like tanh(3x).
TARGETS = {
    "x^3": (lambda x: x**3, -1),
    "x^11": (lambda x: x**11, -1),
    "sin": (lambda x: np.sin(np.pi * x), 1),
    "tanh(3x)": (lambda x: np.tanh(3 * x), 1),
}
METHODS = (
    "default",
    "no pretraining",
    "pretrain, free scales",
    "pretrain, diff. rule",
    "Bernstein",
)
WIDTH = 4
BERNSTEIN_WIDTH = 2
BERNSTEIN_DEGREE = 5


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--max-depth", type=int, default=8,
                        help="error versus depth for depths 1..max-depth (0 skips)")
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=4000,
                        help="steps of stage 2; one-stage methods train for "
                             "pretrain-steps + steps")
    parser.add_argument("--pretrain-learning-rate", type=float, default=1e-2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--output", default="outputs/approximation.md")
    return parser.parse_args()


# ---------------------------------------------------------------- models


def dense_relu(depth):
    return keras.Sequential(
        [keras.Input((1,))]
        + [keras.layers.Dense(WIDTH, activation="relu") for _ in range(depth)]
        + [keras.layers.Dense(1)]
    )


def bernstein(depth):
    return keras.Sequential(
        [keras.Input((1,))]
        + [
            BernsteinDense(BERNSTEIN_WIDTH, degree=BERNSTEIN_DEGREE,
                           normalization=None)
            for _ in range(depth)
        ]
        + [keras.layers.Dense(1)]
    )


def triangle(depth, sign, scale_rule, y):
    # Peaks drawn at random so that seeds differ; the linear part starts at
    # the chord through the target's end values.
    network = TriangleWaveNetwork(
        depth,
        sign=sign,
        scale_rule=scale_rule,
        peak_initializer=keras.initializers.RandomUniform(0.25, 0.75),
        intercept=float(y[0, 0]),
        slope=float(y[-1, 0] - y[0, 0]),
    )
    return keras.Sequential([keras.Input((1,)), network])


def trainable_count(model):
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


# ---------------------------------------------------------------- training


def values_of(model):
    return (
        [np.asarray(v.value) for v in model.trainable_variables],
        [np.asarray(v.value) for v in model.non_trainable_variables],
    )


def stack(per_seed):
    """Per-seed lists of arrays -> list of arrays with a leading seed axis."""
    return [np.stack(column) for column in zip(*per_seed)]


def train_all_seeds(template, trainable, non_trainable, x, y, steps, learning_rate):
    """Trains one copy of `template` per seed at once; returns values and MSE.

    `trainable`, `non_trainable`: lists of arrays with a leading seed axis.
    Adam with a cosine decay of the learning rate to 1% over `steps`.
    """
    import jax

    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.01)
    optimizer = keras.optimizers.Adam(schedule)
    optimizer.build(template.trainable_variables)
    optimizer_values = [np.asarray(v.value) for v in optimizer.variables]

    def loss_of(train_values, fixed_values):
        prediction, fixed_values = template.stateless_call(train_values, fixed_values, x)
        return keras.ops.mean((prediction - y) ** 2), fixed_values

    value_and_grad = jax.value_and_grad(loss_of, has_aux=True)

    def one_seed(train_values, fixed_values):
        def step(carry, _):
            train_values, fixed_values, optimizer_values = carry
            (loss, fixed_values), grads = value_and_grad(train_values, fixed_values)
            train_values, optimizer_values = optimizer.stateless_apply(
                optimizer_values, grads, train_values)
            return (train_values, fixed_values, optimizer_values), loss

        (train_values, fixed_values, _), _ = jax.lax.scan(
            step, (train_values, fixed_values, optimizer_values), None, length=steps)
        loss, _ = loss_of(train_values, fixed_values)
        return train_values, fixed_values, loss

    run = jax.jit(jax.vmap(one_seed))
    train_values, fixed_values, losses = run(trainable, non_trainable)
    return ([np.asarray(v) for v in train_values],
            [np.asarray(v) for v in fixed_values],
            np.asarray(losses, "float64"))


def build_per_seed(build, seeds):
    models = []
    for seed in range(seeds):
        keras.utils.set_random_seed(seed)
        models.append(build())
    return models


def run_method(method, depth, target, x, y, args):
    """MSE per seed (array) and the trainable parameter count of the model trained last."""
    sign = TARGETS[target][1]
    total = args.pretrain_steps + args.steps
    if method in ("default", "Bernstein"):
        build = (lambda: dense_relu(depth)) if method == "default" else (
            lambda: bernstein(depth))
        models = build_per_seed(build, args.seeds)
        values = [values_of(m) for m in models]
        _, _, losses = train_all_seeds(
            models[0], stack([v[0] for v in values]), stack([v[1] for v in values]),
            x, y, total, args.learning_rate)
        return losses, trainable_count(models[0])

    scale_rule = "free" if method == "pretrain, free scales" else "differentiable"
    wrappers = build_per_seed(lambda: triangle(depth, sign, scale_rule, y), args.seeds)
    if method == "no pretraining":
        plain_steps = total
    else:
        plain_steps = args.steps
        values = [values_of(m) for m in wrappers]
        trained, _, _ = train_all_seeds(
            wrappers[0], stack([v[0] for v in values]), stack([v[1] for v in values]),
            x, y, args.pretrain_steps, args.pretrain_learning_rate)
        for seed, wrapper in enumerate(wrappers):
            for variable, value in zip(wrapper.trainable_variables, trained):
                variable.assign(value[seed])
    plains = [w.layers[0].to_sequential() for w in wrappers]
    values = [values_of(m) for m in plains]
    _, _, losses = train_all_seeds(
        plains[0], stack([v[0] for v in values]), stack([v[1] for v in values]),
        x, y, plain_steps, args.learning_rate)
    return losses, trainable_count(plains[0])


# ---------------------------------------------------------------- report


def affine_mse(x, y):
    """MSE of the best straight line: what a network with no kink reaches."""
    design = np.concatenate([np.ones_like(x), x], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(np.mean((design @ coefficients - y) ** 2))


def summarize(losses, linear_mse):
    finite = losses[np.isfinite(losses)]
    return {
        "min": float(finite.min()) if finite.size else math.nan,
        "mean": float(finite.mean()) if finite.size else math.nan,
        "collapsed": int(np.sum(~np.isfinite(losses) | (losses >= 0.99 * linear_mse))),
        "runs": int(losses.size),
    }


def main():
    args = parse_args()
    if keras.backend.backend() != "jax":
        raise SystemExit("examples/approximation.py trains all seeds at once with "
                         "jax.vmap: run it with KERAS_BACKEND=jax.")
    targets = args.targets.split(",")
    x = np.linspace(0.0, 1.0, args.points, dtype="float32")[:, None]
    results = {"settings": vars(args), "main": {}, "depth": {}}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    raw_path = os.path.splitext(args.output)[0] + ".json"
    started = time.time()

    def save():
        with open(raw_path, "w") as f:
            json.dump(results, f, indent=1)
        with open(args.output, "w") as f:
            f.write(report(results, targets, args))

    for target in targets:
        y = TARGETS[target][0](x).astype("float32")
        linear_mse = affine_mse(x, y)
        for method in METHODS:
            losses, params = run_method(method, args.depth, target, x, y, args)
            entry = summarize(losses, linear_mse)
            entry.update(params=params, linear_mse=linear_mse, losses=losses.tolist())
            results["main"].setdefault(target, {})[method] = entry
            print(f"[{time.time() - started:7.0f} s] {target:9s} {method:22s} "
                  f"params {params:3d} min {entry['min']:.3e} mean {entry['mean']:.3e} "
                  f"collapsed {entry['collapsed']}/{entry['runs']}", flush=True)
            save()
    for depth in range(1, args.max_depth + 1):
        for target in targets:
            y = TARGETS[target][0](x).astype("float32")
            linear_mse = affine_mse(x, y)
            for method in ("pretrain, diff. rule", "Bernstein"):
                losses, params = run_method(method, depth, target, x, y, args)
                entry = summarize(losses, linear_mse)
                entry.update(params=params, losses=losses.tolist())
                results["depth"].setdefault(target, {}).setdefault(method, {})[
                    depth] = entry
                print(f"[{time.time() - started:7.0f} s] depth {depth} {target:9s} "
                      f"{method:22s} params {params:3d} min {entry['min']:.3e} "
                      f"mean {entry['mean']:.3e}", flush=True)
                save()
    results["seconds"] = time.time() - started
    save()
    print(f"wrote {args.output} and {raw_path}")


def report(results, targets, args):
    lines = [
        f"Settings: {args.points} points on [0, 1], full batch, {args.seeds} seeds, "
        f"depth {args.depth}; two-stage methods: {args.pretrain_steps} steps of "
        f"stage 1 (Adam, lr {args.pretrain_learning_rate:g}) + {args.steps} of stage 2 "
        f"(lr {args.learning_rate:g}); one-stage methods: "
        f"{args.pretrain_steps + args.steps} steps (lr {args.learning_rate:g}); "
        "cosine decay to 1% in every stage; float32.",
        "",
        "Training MSE over the seeds, min / mean; *collapsed*: runs no better than "
        "the best straight line (within 1%).",
        "",
        "| target | " + " | ".join(METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
    ]
    for target in targets:
        row = results["main"].get(target, {})
        cells = []
        for method in METHODS:
            e = row.get(method)
            cells.append("" if e is None else
                         f"{e['min']:.2e} / {e['mean']:.2e} ({e['collapsed']}/{e['runs']})")
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    params = {m: e["params"] for row in results["main"].values() for m, e in row.items()}
    lines += ["", "Trainable parameters: " + ", ".join(
        f"{m} {p}" for m, p in params.items()) + "."]
    if results["depth"]:
        depths = sorted({d for row in results["depth"].values()
                         for per in row.values() for d in per}, key=int)
        lines += ["", "Error versus depth, min / mean MSE over the seeds:", "",
                  "| target | method | " + " | ".join(f"L={d}" for d in depths) + " |",
                  "|---|---|" + "---|" * len(depths)]
        for target in targets:
            for method, per in results["depth"].get(target, {}).items():
                cells = [f"{per[d]['min']:.1e} / {per[d]['mean']:.1e}" if d in per else ""
                         for d in depths]
                lines.append(f"| {target} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
