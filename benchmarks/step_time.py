"""Training-step time of Bernstein MLPs relative to ReLU MLPs, per backend.

The headline table of the README: one child process per backend (a Keras
backend cannot change inside a process), each single-threaded; inside a
child the models are timed interleaved in every repeat and the median over
repeats of the per-repeat ratio to the ReLU MLP is reported, so slow drifts
of a shared machine cancel. `benchmarks/performance.py` adds predict, degree,
memory and GPU tables with the same machinery.

Usage:
    python benchmarks/step_time.py                      # all three backends
    python benchmarks/step_time.py --backends jax --repeats 5
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from performance import SINGLE_THREAD_ENV  # noqa: E402
from performance import data  # noqa: E402
from performance import interleaved  # noqa: E402
from performance import make_model  # noqa: E402
from performance import ratios  # noqa: E402

MODELS = ("relu", "bernstein", "bernstein_no_bn", "power_form")


def child(args):
    import keras
    import numpy as np

    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(1)
    models = {name: make_model(args, name) for name in MODELS}
    x, y = data(args, args.batch_size)
    for model in models.values():  # compile and warm up
        for _ in range(3):
            model.train_on_batch(x, y)
    times = interleaved(
        {n: (lambda m=m: m.train_on_batch(x, y)) for n, m in models.items()},
        args.repeats,
        args.steps,
    )
    result = {"backend": keras.backend.backend(), "models": ratios(times)}
    result["speedup_over_power_form"] = float(
        np.median(times["power_form"] / times["bernstein"])
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
        command = [sys.executable, os.path.abspath(__file__), "--child"]
        for key in ("depth", "width", "degree", "batch_size", "steps", "repeats"):
            command += ["--" + key.replace("_", "-"), str(getattr(args, key))]
        out = subprocess.run(command, env=env, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"benchmark child for {backend} failed")
        rows.append(json.loads(lines[0][len("RESULT "):]))
    print(
        f"784 → {args.depth}×{args.width} → 10 MLP, batch {args.batch_size}, "
        f"degree {args.degree}, single-threaded CPU, train_on_batch (fit's compiled "
        f"step), median of {args.repeats} interleaved repeats of {args.steps} steps\n"
    )
    print("| backend | ReLU step (ms) | BernsteinDense (BN) | BernsteinDense (no BN) "
          "| power form (BN) | speed-up over power form |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        m = r["models"]
        print(
            f"| {r['backend']} | {m['relu']['ms']:.1f} | {m['bernstein']['ratio']:.2f}× "
            f"({m['bernstein']['ms']:.1f} ms) | {m['bernstein_no_bn']['ratio']:.2f}× | "
            f"{m['power_form']['ratio']:.2f}× | {r['speedup_over_power_form']:.1f}× |"
        )


if __name__ == "__main__":
    main()
