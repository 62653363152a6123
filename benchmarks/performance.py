"""Bernstein MLPs against ReLU MLPs: step, predict, degree, memory, bandwidth.

Prints Markdown tables for `docs/performance.md`. Every figure is a ratio
measured inside one process per backend (a Keras backend cannot change inside
a process), with the models timed interleaved (a new random order in every
repeat) and the median over repeats reported, so drifts of a shared machine
cancel. On CPU each child is single-threaded; peak memory is the median over
fresh processes, one per model and repeat (`--memory-repeats`).

Usage:
    python benchmarks/performance.py                         # CPU, 3 backends
    python benchmarks/performance.py --device gpu --backends jax torch \\
        --batch-size 4096 --width 2048
"""

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
}

# glibc: blocks of 64 KiB and more are mapped and unmapped one by one, so that
# a process' resident set is what it holds live (peak-memory children only).
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}

# Peak DRAM bandwidth of known GPUs, for the "fraction of peak" column.
PEAK_BANDWIDTH = {"H100 80GB HBM3": 3.35e12, "H100": 3.35e12, "H200": 4.8e12}


def mlp(args, hidden):
    import keras

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


def make_model(args, name, degree=None):
    import keras

    from keras_bernstein import BernsteinDense
    from power_form import PowerFormBernsteinDense

    width, degree = args.width, degree or args.degree
    hidden = {
        "relu": lambda: keras.layers.Dense(width, activation="relu"),
        "bernstein": lambda: BernsteinDense(width, degree=degree),
        "bernstein_no_bn": lambda: BernsteinDense(width, degree=degree, normalization=None),
        "power_form": lambda: PowerFormBernsteinDense(width, degree=degree),
    }[name]
    return mlp(args, hidden)


def data(args, batch_size):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size, 784)).astype("float32")
    y = rng.integers(0, 10, size=(batch_size,))
    return x, y


def interleaved(functions, repeats, steps):
    """Seconds per call of each function, one timing per repeat, timed
    round-robin in a new random order every repeat.

    A function runs slower right after one with large temporaries (timed
    always after the power form, the ReLU model's step is slower and every
    ratio to it too low; docs/design-notes.md). A shuffled order spreads
    that over every function.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    items = list(functions.items())
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for index in rng.permutation(len(items)):
            name, function = items[index]
            start = time.perf_counter()
            for _ in range(steps):
                function()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: np.array(t) for name, t in times.items()}


def train_times(models, x, y, repeats, steps):
    """Warms each model up, then times `train_on_batch` interleaved."""
    for model in models.values():
        for _ in range(3):
            model.train_on_batch(x, y)
    return interleaved(
        {n: (lambda m=m: m.train_on_batch(x, y)) for n, m in models.items()},
        repeats,
        steps,
    )


def run_backend_child(script, backend, argv, single_thread=True, extra_env=None):
    """Runs `script --child argv` under `backend`; returns its RESULT dict."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", **(extra_env or {}))
    # Steady state: PyTorch compiles at the first call, not once compiling
    # has paid (the default), which the warm-up steps would not reach.
    env.setdefault("KERAS_BERNSTEIN_TORCH_COMPILE", "always")
    if single_thread:
        env.update(SINGLE_THREAD_ENV)
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [sys.executable, os.path.abspath(script), "--child", *argv]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"benchmark child for {backend} {argv} failed")
    return json.loads(lines[0][len("RESULT "):])


def ratios(times, reference="relu"):
    import numpy as np

    return {
        name: {
            "ms": 1e3 * float(np.median(t)),
            "ratio": float(np.median(t / times[reference])),
        }
        for name, t in times.items()
    }


def ratios_apart_from_power_form(models, time):
    """`ratios` of `time(models)` (a function timing a dict of models), with
    the power form apart: every other model in one round; the power form in
    a round of its own with ReLU and the Bernstein model, whose times give
    its ratio and the speed-up over it. Its temporaries slow whatever runs
    after it. Returns `(ratios, speed-up over the power form)`."""
    import numpy as np

    result = ratios(time({n: m for n, m in models.items() if n != "power_form"}))
    power = time({n: models[n] for n in ("relu", "bernstein", "power_form")})
    result["power_form"] = ratios(power)["power_form"]
    return result, float(np.median(power["power_form"] / power["bernstein"]))


def time_models(args):
    names = ["relu", "bernstein", "bernstein_no_bn", "power_form"]
    models = {name: make_model(args, name) for name in names}
    x, y = data(args, args.batch_size)

    def predict_times(chosen):
        for model in chosen.values():  # compile and warm up
            model.predict_on_batch(x)
        return interleaved(
            {n: (lambda m=m: m.predict_on_batch(x)) for n, m in chosen.items()},
            args.repeats,
            args.steps,
        )

    train, speedup = ratios_apart_from_power_form(
        models, lambda chosen: train_times(chosen, x, y, args.repeats, args.steps)
    )
    predict, _ = ratios_apart_from_power_form(models, predict_times)
    return {"train": train, "predict": predict, "speedup_over_power_form": speedup}


def time_degrees(args):
    x, y = data(args, args.batch_size)
    models = {"relu": make_model(args, "relu")}
    for degree in args.degrees:
        models[f"degree {degree}"] = make_model(args, "bernstein", degree)
    return ratios(train_times(models, x, y, args.repeats, args.steps))


def peak_memory(args, name):
    """Peak memory of training steps at `--memory-batch-size`, in bytes.

    GPU: the framework's peak allocation. CPU: the process' peak resident
    set over the steps, less its resident set before them (Linux, glibc).
    """
    import keras

    model = make_model(args, name)
    x, y = data(args, args.memory_batch_size)
    backend = keras.backend.backend()
    if args.device == "gpu":
        if backend == "torch":
            import torch

            model.train_on_batch(x[:8], y[:8])
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            for _ in range(3):
                model.train_on_batch(x, y)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base
        import jax

        model.train_on_batch(x[:8], y[:8])
        device = jax.devices()[0]
        base = device.memory_stats()["bytes_in_use"]
        for _ in range(3):
            model.train_on_batch(x, y)
        return device.memory_stats()["peak_bytes_in_use"] - base
    # CPU. The resident set before the first full batch is the base; the
    # first full batch traces and compiles for its shape, then the peak is
    # reset (Linux: `clear_refs`), so the figure is the steps' own peak
    # (kept caches such as JAX's buffers included), not the compiler's. The
    # child runs with glibc returning freed blocks of 64 KiB and more to the
    # system (`MEMORY_ENV`), and smaller freed blocks are returned before the
    # base and after the compiling step (`malloc_trim`), so the resident set
    # follows what is live instead of what the allocator has kept.
    model.train_on_batch(x[:8], y[:8])
    release_free_memory = ctypes.CDLL("libc.so.6").malloc_trim
    release_free_memory(0)
    base = _resident_kib("VmRSS")
    model.train_on_batch(x, y)
    release_free_memory(0)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    for _ in range(3):
        model.train_on_batch(x, y)
    return 1024 * (_resident_kib("VmHWM") - base)


def _resident_kib(field):
    """`VmRSS` (now) or `VmHWM` (peak) of this process, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def activation_bandwidth(args):
    """Forward + backward of one `(batch, width)` Bernstein activation alone.

    The least traffic such a pass can cause is 20 bytes per element in
    float32: the forward reads x and writes y, the backward reads x and the
    upstream gradient and writes dx (the coefficient gradient is a reduction
    of the same passes). Achieved bandwidth = 20 * elements / time.
    """
    import keras
    import numpy as np

    from keras_bernstein import ops as bernstein_ops

    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    shape = (args.batch_size, args.width)
    x = rng.normal(size=shape).astype("float32")
    g = rng.normal(size=shape).astype("float32")
    c = np.sort(rng.normal(size=(args.width, args.degree + 1)), -1).astype("float32")
    b = np.tile(np.array([-3.0, 3.0], "float32"), (args.width, 1))
    if backend == "jax":
        import jax

        def loss(x, c, relu=False):
            y = jax.nn.relu(x) if relu else bernstein_ops.bernstein_polynomial(x, c, b)
            return (y * g).sum()

        bern = jax.jit(jax.grad(loss, argnums=(0, 1)))
        relu = jax.jit(jax.grad(lambda x, c: loss(x, c, True), argnums=(0, 1)))
        x, c = jax.device_put(x), jax.device_put(c)

        def run(f):
            return lambda: jax.block_until_ready(f(x, c))

        functions = {"relu": run(relu), "bernstein": run(bern)}
    else:
        import torch

        device = "cuda" if args.device == "gpu" else "cpu"
        xt = torch.tensor(x, device=device, requires_grad=True)
        ct = torch.tensor(c, device=device, requires_grad=True)
        bt, gt = torch.tensor(b, device=device), torch.tensor(g, device=device)

        def bern():
            grads = torch.autograd.grad(
                bernstein_ops.bernstein_polynomial(xt, ct, bt), (xt, ct), gt
            )
            if device == "cuda":
                torch.cuda.synchronize()
            return grads

        def relu():
            grads = torch.autograd.grad(torch.relu(xt), (xt,), gt)
            if device == "cuda":
                torch.cuda.synchronize()
            return grads

        functions = {"relu": relu, "bernstein": bern}
    for f in functions.values():
        f()
        f()
    times = interleaved(functions, args.repeats, args.steps)
    elements = args.batch_size * args.width
    result = {}
    for name, t in times.items():
        seconds = float(np.median(t))
        result[name] = {"ms": 1e3 * seconds, "bytes_per_second": 20 * elements / seconds}
    return result


def one_torch_thread():
    """One intra-op thread for torch on CPU, as the other backends get from the env."""
    import keras

    if keras.backend.backend() == "torch":
        import torch

        torch.set_num_threads(1)


def child(args):
    import keras

    if args.device == "cpu":
        one_torch_thread()
    result = {"backend": keras.backend.backend(), "keras": keras.__version__}
    if args.memory_model:
        result["peak_bytes"] = peak_memory(args, args.memory_model)
    else:
        result["models"] = time_models(args)
        result["degrees"] = time_degrees(args)
        if args.device == "gpu":
            result["activation"] = activation_bandwidth(args)
            result["gpu"] = gpu_name(keras.backend.backend())
    print("RESULT " + json.dumps(result))


def gpu_name(backend):
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0)
    import jax

    return jax.devices()[0].device_kind


def run_child(args, backend, extra=(), extra_env=None):
    argv = []
    for key in ("device", "depth", "width", "degree", "batch_size", "memory_batch_size",
                "steps", "repeats"):
        argv += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    argv += ["--degrees"] + [str(d) for d in args.degrees] + list(extra)
    return run_backend_child(
        __file__, backend, argv, single_thread=args.device == "cpu", extra_env=extra_env
    )


def peak_memories(args, backend):
    """`{model: [peak bytes, one per repeat]}`, each from a fresh process, the
    models taken in turn in every repeat.

    One process per figure is noisy: the same model's peak varies between
    processes (most on TensorFlow), enough to move a ratio by more than the
    differences being measured.
    """
    names = ("relu", "bernstein", "bernstein_no_bn")
    peaks = {name: [] for name in names}
    for _ in range(args.memory_repeats):
        for name in names:
            child = run_child(args, backend, ["--memory-model", name], MEMORY_ENV)
            peaks[name].append(child["peak_bytes"])
    return peaks


def report(args, rows, memory):
    print(
        f"784 → {args.depth}×{args.width} → 10 MLP, batch {args.batch_size}, degree "
        f"{args.degree}, {args.device.upper()}"
        + (", single-threaded" if args.device == "cpu" else "")
        + f", median of {args.repeats} interleaved repeats of {args.steps} calls; "
        "ratios to the same MLP with Dense(activation='relu')\n"
    )
    if rows:
        print("| backend | ReLU train step | BernsteinDense (BN) | no BN | power form | "
              "speed-up over power form | ReLU predict | predict (BN) | predict (no BN) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            t, p = r["models"]["train"], r["models"]["predict"]
            print(
                f"| {r['backend']} | {t['relu']['ms']:.1f} ms | {t['bernstein']['ratio']:.2f}× | "
                f"{t['bernstein_no_bn']['ratio']:.2f}× | {t['power_form']['ratio']:.2f}× | "
                f"{r['models']['speedup_over_power_form']:.1f}× | {p['relu']['ms']:.1f} ms | "
                f"{p['bernstein']['ratio']:.2f}× | {p['bernstein_no_bn']['ratio']:.2f}× |"
            )
        print("\nTraining-step ratio to ReLU by degree (BernsteinDense with BN):\n")
        print("| backend | " + " | ".join(f"degree {d}" for d in args.degrees) + " |")
        print("|---|" + "---|" * len(args.degrees))
        for r in rows:
            cells = [f"{r['degrees'][f'degree {d}']['ratio']:.2f}×" for d in args.degrees]
            print(f"| {r['backend']} | " + " | ".join(cells) + " |")
    if memory:
        import numpy as np

        print(
            f"\nPeak memory of a training step, batch {args.memory_batch_size}, median of "
            f"{args.memory_repeats} fresh processes per model (range in brackets):\n"
        )
        print("| backend | ReLU | BernsteinDense (BN) | ratio | no BN | ratio |")
        print("|---|---|---|---|---|---|")

        for backend, peaks in memory.items():
            median = {name: np.median(p) for name, p in peaks.items()}
            cells = {
                name: f"{median[name] / 2**20:.0f} MiB"
                + (f" [{min(p) / 2**20:.0f}–{max(p) / 2**20:.0f}]" if len(p) > 1 else "")
                for name, p in peaks.items()
            }
            print(
                f"| {backend} | {cells['relu']} | {cells['bernstein']} | "
                f"{median['bernstein'] / median['relu']:.2f}× | {cells['bernstein_no_bn']} | "
                f"{median['bernstein_no_bn'] / median['relu']:.2f}× |"
            )
    if args.device == "gpu":
        print(f"\nActivation alone, forward + backward, ({args.batch_size}, {args.width}) "
              "float32; achieved bandwidth counts the minimum 20 bytes per element:\n")
        print("| backend | GPU | ReLU | Bernstein | Bernstein bandwidth | fraction of peak |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            a, name = r["activation"], r["gpu"]
            peak = next((v for k, v in PEAK_BANDWIDTH.items() if k in name), None)
            fraction = a["bernstein"]["bytes_per_second"] / peak if peak else float("nan")
            print(
                f"| {r['backend']} | {name} | {a['relu']['ms']:.3f} ms | "
                f"{a['bernstein']['ms']:.3f} ms | "
                f"{a['bernstein']['bytes_per_second'] / 1e9:.0f} GB/s | {fraction:.0%} |"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--degree", type=int, default=8)
    parser.add_argument("--degrees", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--memory-batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5, help="calls per timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-repeats", type=int, default=3,
                        help="fresh processes per model for peak memory (median)")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the peak-memory table")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_repeats < 1:
        parser.error(f"--memory-repeats must be at least 1. Received: {args.memory_repeats}")
    if args.child:
        child(args)
        return
    rows, memory = [], {}
    for backend in args.backends:
        if not args.memory_only:
            rows.append(run_child(args, backend))
        if not args.no_memory:
            memory[backend] = peak_memories(args, backend)
    report(args, rows, memory)
    print("\nRAW " + json.dumps({"rows": rows, "memory": memory}))


if __name__ == "__main__":
    main()
