"""Training-step time of Bernstein MLPs relative to ReLU MLPs, per backend.

The training-step rows of docs/performance.md: one child process per
backend (a Keras backend cannot change inside a process), each
single-threaded; inside a child the models are timed interleaved (a new random order in every repeat,
the power form in a round of its own) and the median over repeats of the
per-repeat ratio to the ReLU MLP is reported, so slow drifts of a shared
machine cancel. `benchmarks/performance.py` adds predict, degree,
memory and GPU tables with the same machinery.

Usage:
    python benchmarks/step_time.py                      # all three backends
    python benchmarks/step_time.py --backends jax --repeats 5
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from performance import data  # noqa: E402
from performance import make_model  # noqa: E402
from performance import ratios_apart_from_power_form  # noqa: E402
from performance import one_torch_thread  # noqa: E402
from performance import run_backend_child  # noqa: E402
from performance import train_times  # noqa: E402

MODELS = ("relu", "bernstein", "bernstein_no_bn", "power_form")


def child(args):
    import keras

    one_torch_thread()
    models = {name: make_model(args, name) for name in MODELS}
    x, y = data(args, args.batch_size)
    step_ratios, speedup = ratios_apart_from_power_form(
        models, lambda chosen: train_times(chosen, x, y, args.repeats, args.steps)
    )
    result = {"backend": keras.backend.backend(), "models": step_ratios}
    result["speedup_over_power_form"] = speedup
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
    argv = []
    for key in ("depth", "width", "degree", "batch_size", "steps", "repeats"):
        argv += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    rows = [run_backend_child(__file__, backend, argv) for backend in args.backends]
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
