"""What compiling costs a PyTorch user on CPU, from a fresh process and cache.

Each case runs in a child process of its own with empty TorchInductor and
keras-bernstein caches (`TORCHINDUCTOR_CACHE_DIR`, `KERAS_BERNSTEIN_CACHE`),
so the figures include every compile a new user pays:

- `readme`: the first `fit` epoch of README.md's quick-start model (784 ->
  8 x BernsteinDense(256, degree=8) -> 10) on 60000 random rows, batch 32,
  against the same model with Dense + ReLU;
- `sweep`: ten small models in one process (Input(20) -> BernsteinDense(32)
  -> BernsteinDense(32) -> Dense(1)), each fit 3 epochs on 512 rows.

Usage:
    python benchmarks/torch_compile_cost.py --cases readme sweep \\
        --policies 0 auto always
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def readme_epoch(activation):
    import keras
    import numpy as np

    from keras_bernstein import BernsteinDense

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60000, 784)).astype("float32")
    y = rng.integers(0, 10, size=60000)
    if activation == "relu":
        hidden = [keras.layers.Dense(256, activation="relu") for _ in range(8)]
    else:
        hidden = [BernsteinDense(256, degree=8) for _ in range(8)]
    model = keras.Sequential(
        [keras.Input((784,))] + hidden + [keras.layers.Dense(10, activation="softmax")]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return time.perf_counter() - start


def sweep():
    import keras
    import numpy as np

    from keras_bernstein import BernsteinDense

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 20)).astype("float32")
    y = rng.normal(size=(512, 1)).astype("float32")
    start = time.perf_counter()
    for _ in range(10):
        model = keras.Sequential(
            [keras.Input((20,)), BernsteinDense(32), BernsteinDense(32), keras.layers.Dense(1)]
        )
        model.compile("adam", "mse")
        model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return time.perf_counter() - start


def child(case, activation):
    seconds = readme_epoch(activation) if case == "readme" else sweep()
    print(json.dumps({"seconds": seconds}))


def run(case, policy, activation="bernstein"):
    with tempfile.TemporaryDirectory() as inductor, tempfile.TemporaryDirectory() as kernels:
        env = dict(
            os.environ,
            KERAS_BACKEND="torch",
            KERAS_BERNSTEIN_TORCH_COMPILE=policy,
            TORCHINDUCTOR_CACHE_DIR=inductor,
            KERAS_BERNSTEIN_CACHE=kernels,
        )
        command = [sys.executable, __file__, "--child", case, activation]
        start = time.perf_counter()
        output = subprocess.run(
            command, env=env, capture_output=True, text=True, check=True
        ).stdout
        process = time.perf_counter() - start
    seconds = json.loads(output.strip().splitlines()[-1])["seconds"]
    return seconds, process


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["readme", "sweep"])
    parser.add_argument("--policies", nargs="+", default=["0", "auto", "always"])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    for case in args.cases:
        if case == "readme":
            seconds, process = run(case, "0", "relu")
            print(f"readme relu: first epoch {seconds:.1f} s (process {process:.1f} s)")
        for policy in args.policies:
            seconds, process = run(case, policy)
            label = "first epoch" if case == "readme" else "10 models"
            print(
                f"{case} KERAS_BERNSTEIN_TORCH_COMPILE={policy}: {label} {seconds:.1f} s "
                f"(process {process:.1f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
