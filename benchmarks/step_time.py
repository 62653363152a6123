"""Training-step time of Bernstein MLPs relative to ReLU MLPs, per backend.

Runs one child process per backend (a Keras backend cannot change inside a
process), each single-threaded, and prints a Markdown table. Inside a child,
the models are timed interleaved (ReLU, Bernstein, ...) in every repeat, and
the reported figure is the median over repeats of the per-repeat ratio, so
slow drifts of a shared machine cancel.

Usage:
    python benchmarks/step_time.py                      # all three backends
    python benchmarks/step_time.py --backends jax --repeats 5
"""

import argparse
import json
import os
import subprocess
import sys
import time

SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}


def build_models(args):
    import keras

    from keras_bernstein import BernsteinDense

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from power_form import PowerFormBernsteinDense

    def mlp(hidden):
        keras.utils.set_random_seed(0)
        layers = [keras.Input((784,))]
        layers += [hidden() for _ in range(args.depth)]
        layers += [keras.layers.Dense(10)]
        model = keras.Sequential(layers)
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return model

    w, n = args.width, args.degree
    return {
        "relu": mlp(lambda: keras.layers.Dense(w, activation="relu")),
        "bernstein": mlp(lambda: BernsteinDense(w, degree=n)),
        "bernstein_no_bn": mlp(
            lambda: BernsteinDense(w, degree=n, normalization=None)
        ),
        "power_form": mlp(lambda: PowerFormBernsteinDense(w, degree=n)),
    }


def child(args):
    import keras
    import numpy as np

    torch_threads = None
    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(1)
        torch_threads = torch.get_num_threads()
    models = build_models(args)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch_size, 784)).astype("float32")
    y = rng.integers(0, 10, size=(args.batch_size,))
    for model in models.values():  # compile and warm up
        for _ in range(3):
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / args.steps)
    relu = np.array(times["relu"])
    result = {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "torch_threads": torch_threads,
        "relu_ms": 1e3 * float(np.median(relu)),
    }
    for name in models:
        t = np.array(times[name])
        result[name + "_ms"] = 1e3 * float(np.median(t))
        result[name + "_ratio"] = float(np.median(t / relu))
    result["speedup_over_power_form"] = float(
        np.median(np.array(times["power_form"]) / np.array(times["bernstein"]))
    )
    print("RESULT " + json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--degree", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, **SINGLE_THREAD_ENV)
        command = [sys.executable, os.path.abspath(__file__), "--child",
                   "--depth", str(args.depth), "--width", str(args.width),
                   "--degree", str(args.degree), "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--repeats", str(args.repeats)]
        out = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"benchmark child for {backend} failed")
        rows.append(json.loads(lines[0][len("RESULT "):]))
    print(
        f"784 → {args.depth}×{args.width} → 10 MLP, batch {args.batch_size}, "
        f"degree {args.degree}, single-threaded CPU, train_on_batch (fit's compiled "
        f"step), median of {args.repeats} interleaved repeats of {args.steps} steps\n"
    )
    print("| backend | ReLU step (ms) | BernsteinDense (BN) | BernsteinDense (no BN) | power form (BN) | speed-up over power form |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['relu_ms']:.1f} | {r['bernstein_ratio']:.2f}× "
            f"({r['bernstein_ms']:.1f} ms) | {r['bernstein_no_bn_ratio']:.2f}× | "
            f"{r['power_form_ratio']:.2f}× | {r['speedup_over_power_form']:.1f}× |"
        )


if __name__ == "__main__":
    main()
