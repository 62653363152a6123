"""Writes the golden model files for the cross-backend loading test.

Run once per backend, from the repository root:

    for b in jax tensorflow torch; do
        KERAS_BACKEND=$b python tests/data/make_golden.py
    done

Each run trains a small fixed-seed functional model (Input(6) ->
BernsteinDense(8) -> Dense(4) -> Bernstein(degree=5, extrapolation="clip") ->
Dense(3)) for two steps on the Auto MPG data (six numeric features -> region
of origin), then saves `golden_<backend>.keras` and `golden_<backend>.npz`
(the fixed inputs and the model's predictions for them) next to this script.
`tests/test_saving.py` loads every file under every backend.
"""

import os
import sys

import keras
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for conftest.load_autompg

from conftest import load_autompg  # noqa: E402

from keras_bernstein import Bernstein  # noqa: E402
from keras_bernstein import BernsteinDense  # noqa: E402


def golden_inputs(x):
    """Every 16th car, plus the same rows scaled by 3 (outside the bounds)."""
    rows = x[::16]
    return np.concatenate([rows, 3.0 * rows]).astype("float32")


def build_model():
    inputs = keras.Input((6,), name="features")
    hidden = BernsteinDense(8, degree=4, name="bernstein_dense")(inputs)
    hidden = keras.layers.Dense(4, name="dense")(hidden)
    hidden = Bernstein(degree=5, extrapolation="clip", name="bernstein")(hidden)
    outputs = keras.layers.Dense(3, name="logits")(hidden)
    return keras.Model(inputs, outputs, name="golden")


def main():
    backend = keras.backend.backend()
    keras.utils.set_random_seed(2024)
    x, _, origin = load_autompg()
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x[:128], origin[:128], batch_size=64, epochs=1, shuffle=False, verbose=0)
    inputs = golden_inputs(x)
    predictions = model.predict(inputs, verbose=0)
    model.save(os.path.join(HERE, f"golden_{backend}.keras"))
    np.savez(
        os.path.join(HERE, f"golden_{backend}.npz"),
        inputs=inputs,
        predictions=predictions,
        backend=backend,
        keras_version=keras.__version__,
    )
    print(f"wrote golden_{backend}.keras/.npz: predictions {predictions.shape}")


if __name__ == "__main__":
    main()
