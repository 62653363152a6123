"""Tests of `keras_bernstein.training`: certified (IBP) training on every backend."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_bernstein import BernsteinDense
from keras_bernstein import verification
from keras_bernstein.training import CertifiedTraining
from keras_bernstein.training import LinearRamp

# float32 logits against float32/float64 references.
TOLERANCE = 1e-5


def _classifier(hidden=8, classes=2, inputs=2, activation="relu"):
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation=activation),
            keras.layers.Dense(classes),
        ]
    )


def _toy_problem(count=128, gap=0.2, seed=0):
    """Points of [0, 1]^2 labelled by `x0 > x1`, at least `gap` from the diagonal
    (in x0 - x1), so a ball of radius below `gap / 2` can be certified."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(4 * count, 2))
    x = x[np.abs(x[:, 0] - x[:, 1]) > gap][:count].astype("float32")
    return x, (x[:, 0] > x[:, 1]).astype("int32")


def _compiled(trainer, learning_rate=0.01, jit_compile=None):
    """Compiled with Adam and logits cross-entropy. By default XLA only on JAX
    (where it is `jax.jit`): on TensorFlow XLA compiles the bounds for
    seconds, and `tf.function` alone already runs them as a graph."""
    if jit_compile is None:
        jit_compile = keras.backend.backend() == "jax"
    trainer.compile(
        keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return trainer


def _clean_cross_entropy(model, x, y):
    """Per-sample cross-entropy of the model's logits, in float64."""
    logits = np.asarray(ops.convert_to_numpy(model(x)), "float64")
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -log_softmax[np.arange(len(y)), y]


def _robust_cross_entropy(trainer, x, y, epsilon):
    logits = np.asarray(
        ops.convert_to_numpy(trainer.robust_logits(x, ops.convert_to_tensor(y), epsilon)),
        "float64",
    )
    peak = logits.max(axis=-1, keepdims=True)
    log_sum = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=-1))
    return log_sum - logits[np.arange(len(y)), y]


# --- LinearRamp --------------------------------------------------------------


def test_linear_ramp_warms_up_ramps_and_holds():
    ramp = LinearRamp(end_value=0.4, ramp_steps=4, start_value=0.2, start_step=2)
    values = [float(ramp(step)) for step in range(9)]
    np.testing.assert_allclose(
        values, [0.2, 0.2, 0.2, 0.25, 0.3, 0.35, 0.4, 0.4, 0.4], rtol=1e-6
    )
    jump = LinearRamp(end_value=1.0, ramp_steps=0, start_step=3)
    assert [float(jump(step)) for step in range(5)] == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert isinstance(ramp, keras.optimizers.schedules.LearningRateSchedule)


def test_linear_ramp_serializes():
    ramp = LinearRamp(end_value=0.1, ramp_steps=10, start_value=0.01, start_step=5)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(ramp)
    )
    assert isinstance(restored, LinearRamp)
    assert restored.get_config() == ramp.get_config()
    assert float(restored(12)) == pytest.approx(float(ramp(12)))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"end_value": float("nan"), "ramp_steps": 3}, "end_value"),
        ({"end_value": "0.1", "ramp_steps": 3}, "end_value"),
        ({"end_value": 0.1, "ramp_steps": -1}, "ramp_steps"),
        ({"end_value": 0.1, "ramp_steps": 2.5}, "ramp_steps"),
        ({"end_value": 0.1, "ramp_steps": 3, "start_step": True}, "start_step"),
        ({"end_value": 0.1, "ramp_steps": 3, "start_value": float("inf")}, "start_value"),
    ],
)
def test_linear_ramp_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        LinearRamp(**kwargs)


# --- Construction -------------------------------------------------------------


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


def _two_input_model():
    first, second = keras.Input((2,)), keras.Input((2,))
    outputs = keras.layers.Dense(2)(keras.layers.Concatenate()([first, second]))
    return keras.Model([first, second], outputs)


def _built_subclassed():
    model = _Subclassed()
    model(np.zeros((1, 2), "float32"))
    return model


@pytest.mark.parametrize(
    "make_model, match",
    [
        (lambda: keras.Sequential([keras.layers.Dense(2)]), "built Keras `Model`"),
        (_built_subclassed, "Sequential or functional"),
        (_two_input_model, "exactly one input"),
        (lambda: _classifier(classes=1), "at least 2 classes"),
        (
            lambda: keras.Sequential([keras.Input((3, 2)), keras.layers.Dense(2)]),
            r"shape \(batch, classes\)",
        ),
        (
            lambda: keras.Sequential(
                [keras.Input((2,)), keras.layers.LayerNormalization(), keras.layers.Dense(2)]
            ),
            "LayerNormalization|layer_normalization",
        ),
    ],
)
def test_rejects_unsupported_models(make_model, match):
    with pytest.raises(ValueError, match=match):
        CertifiedTraining(make_model(), epsilon=0.1)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"epsilon": -0.1}, "epsilon"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"epsilon": "0.1"}, "epsilon"),
        ({"epsilon": LinearRamp(end_value=-0.1, ramp_steps=3)}, "epsilon"),
        ({"epsilon": 0.1, "robust_weight": 1.5}, "robust_weight"),
        ({"epsilon": 0.1, "robust_weight": LinearRamp(end_value=2.0, ramp_steps=3)},
         "robust_weight"),
        ({"epsilon": 0.1, "input_range": (1.0, 0.0)}, "input_range"),
        ({"epsilon": 0.1, "input_range": 1.0}, "input_range"),
    ],
)
def test_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`.*Received: {name}="):
        CertifiedTraining(_classifier(), **kwargs)


# --- Fit, schedules and metrics ----------------------------------------------------

EPSILON = 0.08
EPSILON_RAMP = LinearRamp(end_value=EPSILON, ramp_steps=16, start_step=4)
EPOCHS = 12
STEPS_PER_EPOCH = 4


@pytest.fixture(scope="module")
def fitted():
    """A classifier trained with ramped epsilon and weight on the toy problem
    (default `jit_compile`: XLA on TensorFlow too), and its certified
    accuracy before training."""
    keras.utils.set_random_seed(1337)
    x, y = _toy_problem(count=32 * STEPS_PER_EPOCH, gap=0.3)
    trainer = _compiled(
        CertifiedTraining(
            _classifier(hidden=16),
            epsilon=EPSILON_RAMP,
            robust_weight=LinearRamp(end_value=0.5, ramp_steps=16, start_step=4),
        ),
        learning_rate=0.03,
        jit_compile="auto",
    )
    before = verification.certified_accuracy(trainer.model, x, y, EPSILON)
    history = trainer.fit(x, y, batch_size=32, epochs=EPOCHS, verbose=0)
    return trainer, history.history, x, y, before


def test_fit_logs_metrics_and_raises_the_certified_fraction(fitted):
    trainer, history, x, y, before = fitted
    names = [metric.name for metric in trainer.metrics]
    assert {"robust_loss", "certified_fraction", "epsilon"} <= set(names)
    for key in ("loss", "accuracy", "robust_loss", "certified_fraction", "epsilon"):
        assert len(history[key]) == EPOCHS, key
    after = verification.certified_accuracy(trainer.model, x, y, EPSILON)
    assert after >= 0.95 and after > before, (before, after)
    assert history["certified_fraction"][-1] >= 0.9


def test_step_counts_training_batches_and_drives_epsilon(fitted):
    trainer, history, x, y, _ = fitted
    steps = EPOCHS * STEPS_PER_EPOCH
    assert int(ops.convert_to_numpy(trainer.schedule_step)) == steps
    expected = [
        np.mean([float(EPSILON_RAMP(step)) for step in range(first, first + STEPS_PER_EPOCH)])
        for first in range(0, steps, STEPS_PER_EPOCH)
    ]
    np.testing.assert_allclose(history["epsilon"], expected, atol=1e-6)

    logs = trainer.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    assert int(ops.convert_to_numpy(trainer.schedule_step)) == steps
    assert logs["epsilon"] == pytest.approx(EPSILON, rel=1e-6)
    # The float32 fraction is the float64 certificate, but for margins at rounding level.
    certified = verification.certified_accuracy(trainer.model, x, y, EPSILON)
    assert abs(logs["certified_fraction"] - certified) <= 2 / len(x)


def test_schedules_read_the_step_and_weigh_the_losses():
    x, y = _toy_problem(count=32)
    trainer = _compiled(
        CertifiedTraining(
            _classifier(),
            epsilon=lambda step: 0.01 * ops.cast(step, "float32"),
            robust_weight=keras.optimizers.schedules.PiecewiseConstantDecay(
                [3], [0.0, 0.75]
            ),
        )
    )
    clean = _clean_cross_entropy(trainer.model, x, y).mean()
    for step, epsilon, weight in [(0, 0.0, 0.0), (3, 0.03, 0.0), (5, 0.05, 0.75)]:
        trainer.schedule_step.assign(step)
        logs = trainer.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
        assert logs["epsilon"] == pytest.approx(epsilon, abs=1e-7)
        expected = (1 - weight) * clean + weight * logs["robust_loss"]
        assert logs["loss"] == pytest.approx(expected, rel=1e-5)
        if step == 0:
            assert logs["robust_loss"] == pytest.approx(clean, rel=1e-5)
        else:
            assert logs["robust_loss"] > clean
    assert int(ops.convert_to_numpy(trainer.schedule_step)) == 5


# --- The robust loss ------------------------------------------------------------


def test_robust_margins_bound_the_true_margins_and_the_clean_loss():
    x, y = _toy_problem(count=32)
    model = _classifier(hidden=6, classes=3)
    trainer = CertifiedTraining(model, epsilon=0.05)
    epsilon = 0.05
    worst = np.asarray(
        ops.convert_to_numpy(trainer.robust_logits(x, ops.convert_to_tensor(y), epsilon))
    )
    np.testing.assert_array_equal(worst[np.arange(len(y)), y], 0.0)
    rng = np.random.default_rng(1)
    for _ in range(5):
        shifted = np.clip(x + rng.uniform(-epsilon, epsilon, x.shape), 0, 1).astype("float32")
        logits = np.asarray(ops.convert_to_numpy(model(shifted)))
        # worst[j] bounds z_j - z_y from above anywhere in the ball.
        excess = logits - logits[np.arange(len(y)), y][:, None]
        assert np.all(excess <= worst + TOLERANCE)
    robust = _robust_cross_entropy(trainer, x, y, epsilon)
    assert np.all(robust >= _clean_cross_entropy(model, x, y) - TOLERANCE)


def test_zero_epsilon_robust_loss_is_the_clean_cross_entropy():
    x, y = _toy_problem(count=48)
    trainer = _compiled(CertifiedTraining(_classifier(classes=3), epsilon=0.0))
    clean = _clean_cross_entropy(trainer.model, x, y)
    np.testing.assert_allclose(
        _robust_cross_entropy(trainer, x, y, 0.0), clean, rtol=TOLERANCE, atol=TOLERANCE
    )
    logs = trainer.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    assert logs["robust_loss"] == pytest.approx(clean.mean(), rel=TOLERANCE)
    assert logs["loss"] == pytest.approx(clean.mean(), rel=TOLERANCE)


def test_sample_weights_and_regularization():
    x, y = _toy_problem(count=32)
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(8, activation="relu", kernel_regularizer="l2"),
            keras.layers.Dense(2),
        ]
    )
    # Only the robust loss: at epsilon 0 it is the weighted clean cross-entropy.
    trainer = _compiled(CertifiedTraining(model, epsilon=0.0, robust_weight=1.0))
    weights = np.repeat(np.array([1.0, 0.0], "float32"), len(x) // 2)
    logs = trainer.evaluate(
        x, y, sample_weight=weights, batch_size=len(x), return_dict=True, verbose=0
    )
    logits = model(x)
    weighted = float(
        ops.convert_to_numpy(
            keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
                y, logits, sample_weight=weights
            )
        )
    )
    assert logs["robust_loss"] == pytest.approx(weighted, rel=TOLERANCE)
    # Regularization keeps its full weight even with no clean loss.
    regularization = sum(float(ops.convert_to_numpy(loss)) for loss in model.losses)
    assert regularization > 0
    assert logs["loss"] == pytest.approx(weighted + regularization, rel=TOLERANCE)
    # At epsilon 0 the certified inputs are the correctly classified ones.
    correct = np.argmax(ops.convert_to_numpy(logits), axis=-1) == y
    assert logs["certified_fraction"] == pytest.approx(correct[: len(x) // 2].mean())


def test_softmax_head_margins_are_those_of_its_logits():
    x, y = _toy_problem(count=16)
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    trainer = CertifiedTraining(model, epsilon=0.0)
    # Differences of log-probabilities are those of the logits: z_j - z_y.
    log_p = np.log(np.asarray(ops.convert_to_numpy(model(x)), "float64"))
    expected = log_p - log_p[np.arange(len(y)), y][:, None]
    worst = ops.convert_to_numpy(trainer.robust_logits(x, ops.convert_to_tensor(y), 0.0))
    np.testing.assert_allclose(worst, expected, atol=1e-5)


def test_input_range_clips_the_ball():
    x = np.array([[0.0, 1.0], [0.02, 0.5]], "float32")
    y = ops.convert_to_tensor(np.array([0, 1], "int32"))
    model = _classifier()
    clipped = CertifiedTraining(model, epsilon=0.1)
    unclipped = CertifiedTraining(model, epsilon=0.1, input_range=None)
    tight = ops.convert_to_numpy(clipped.robust_logits(x, y, 0.1))
    loose = ops.convert_to_numpy(unclipped.robust_logits(x, y, 0.1))
    # A smaller box has no looser bounds, and here strictly tighter ones.
    assert np.all(tight <= loose + TOLERANCE)
    assert np.any(tight < loose - TOLERANCE)


def test_label_shapes_give_the_same_robust_loss():
    x, y = _toy_problem(count=32)
    trainer = CertifiedTraining(_classifier(classes=2), epsilon=0.05)
    results = []
    for labels, loss in [
        (y, keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
        (y[:, None], keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
        (np.eye(2, dtype="float32")[y], keras.losses.CategoricalCrossentropy(from_logits=True)),
    ]:
        trainer.compile("sgd", loss=loss)
        logs = trainer.evaluate(x, labels, batch_size=len(x), return_dict=True, verbose=0)
        results.append((logs["loss"], logs["robust_loss"], logs["certified_fraction"]))
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6)
    np.testing.assert_allclose(results[2], results[0], rtol=1e-6)


def test_missing_or_malformed_labels_raise():
    x, y = _toy_problem(count=16)
    trainer = _compiled(CertifiedTraining(_classifier(), epsilon=0.05))
    with pytest.raises(ValueError, match="needs labels.*Received: y=None"):
        trainer.compute_loss(x, None, trainer(x), training=False)
    with pytest.raises(ValueError, match=r"Received: y.shape=\((16|None), 3\)"):
        trainer.fit(x, np.zeros((16, 3), "int32"), epochs=1, verbose=0)


# --- Training -------------------------------------------------------------------


def test_trains_bernstein_layers_through_the_bounds():
    x, y = _toy_problem(count=32)
    model = keras.Sequential(
        [keras.Input((2,)), BernsteinDense(4, degree=2, normalization=None), keras.layers.Dense(2)]
    )
    # With the weight 1 only the robust loss, through the bounds, moves them.
    trainer = _compiled(CertifiedTraining(model, epsilon=0.05, robust_weight=1.0))
    coefficients = ops.convert_to_numpy(model.layers[0].bernstein.coefficients).copy()
    history = trainer.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["robust_loss"][0])
    assert not np.allclose(
        ops.convert_to_numpy(model.layers[0].bernstein.coefficients), coefficients
    )


# --- Saving -----------------------------------------------------------------------


def test_save_and_load_round_trip(fitted, tmp_path):
    trainer, _, x, _, _ = fitted
    path = str(tmp_path / "trainer.keras")
    trainer.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, CertifiedTraining)
    assert isinstance(loaded.epsilon, LinearRamp)
    for key in ("epsilon", "robust_weight", "input_range"):
        assert loaded.get_config()[key] == trainer.get_config()[key], key
    assert [type(layer) for layer in loaded.model.layers] == [
        type(layer) for layer in trainer.model.layers
    ]
    # The step is saved with the weights, so the schedules resume.
    assert int(ops.convert_to_numpy(loaded.schedule_step)) == EPOCHS * STEPS_PER_EPOCH
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(trainer(x))
    )

    classifier_path = str(tmp_path / "classifier.keras")
    trainer.model.save(classifier_path)
    classifier = keras.saving.load_model(classifier_path)
    assert isinstance(classifier, keras.Sequential)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(classifier(x)), ops.convert_to_numpy(trainer(x))
    )


def test_config_round_trip_with_constant_schedules():
    trainer = CertifiedTraining(
        _classifier(), epsilon=0.1, robust_weight=0.25, input_range=(-1, 2), name="ibp"
    )
    config = trainer.get_config()
    rebuilt = CertifiedTraining.from_config(config)
    assert rebuilt.get_config() == config
    assert rebuilt.name == "ibp" and rebuilt.input_range == (-1.0, 2.0)
    assert rebuilt.epsilon == 0.1 and rebuilt.robust_weight == 0.25
    unclipped = CertifiedTraining.from_config({**config, "input_range": None})
    assert unclipped.input_range is None


def test_the_guides_ten_lines_run():
    """The code of docs/certified-training.md, on a few images."""
    import os
    import re

    path = os.path.join(os.path.dirname(__file__), "..", "docs", "certified-training.md")
    with open(path) as file:
        code = re.search(r"```python\n(.*?)```", file.read(), re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 14
    rng = np.random.default_rng(0)
    namespace = {
        "x_train": rng.uniform(size=(20, 28, 28, 1)).astype("float32"),
        "y_train": rng.integers(0, 10, 20),
        "x_test": rng.uniform(size=(4, 28, 28, 1)).astype("float32"),
        "y_test": rng.integers(0, 10, 4),
    }
    code = code.replace("epochs=30", "epochs=2, verbose=0")
    exec(code, namespace)
    trainer = namespace["trainer"]
    assert int(ops.convert_to_numpy(trainer.schedule_step)) == 2
    assert {"robust_loss", "certified_fraction", "epsilon"} <= set(
        trainer.history.history
    )
