"""Tests of `keras_bernstein.attacks`: PGD stays in its ball, finds what is
analytically there, and sits between the certificate and the clean accuracy."""

import re

import keras
import numpy as np
import pytest

from keras_bernstein import Bernstein
from keras_bernstein import BernsteinDense
from keras_bernstein import attacks
from keras_bernstein import verification


def _relu_model(inputs=10, classes=3, activation=None):
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(classes, activation=activation),
        ]
    )


def _bernstein_model():
    return keras.Sequential(
        [
            keras.Input((10,)),
            BernsteinDense(12, degree=3, normalization=None),
            Bernstein(degree=4),
            keras.layers.Dense(3),
        ]
    )


def _softmax_model():
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(12, activation="tanh")(inputs)
    outputs = keras.layers.Dense(4, activation="softmax")(hidden)
    return keras.Model(inputs, outputs)


def _conv_model():
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )


MODELS = {
    "relu": _relu_model,
    "bernstein": _bernstein_model,
    "softmax": _softmax_model,
    "conv": _conv_model,
}


def _data(model, count=60, seed=0):
    """Inputs in [0, 1] and labels: the model's own prediction for most, so
    that there is something to break, a random one for the rest."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(count,) + tuple(model.input_shape[1:])).astype("float32")
    y = np.argmax(model.predict(x, verbose=0), axis=-1)
    flipped = rng.uniform(size=count) < 0.2
    y[flipped] = rng.integers(0, model.output_shape[-1], size=flipped.sum())
    return x, y


def _predictions(model, x):
    return np.argmax(model.predict(x, verbose=0), axis=-1)


@pytest.mark.parametrize("epsilon", [0.02, 0.3])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_adversarial_inputs_stay_in_ball_and_range(name, epsilon):
    model = MODELS[name]()
    x, y = _data(model)
    adversarial = attacks.pgd_attack(model, x, y, epsilon, steps=10, batch_size=16, seed=0)
    assert adversarial.dtype == np.float32 and adversarial.shape == x.shape
    distance = np.abs(adversarial.astype("float64") - x.astype("float64"))
    assert distance.max() <= epsilon
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    # The attack moves inputs: the ball is searched, not only its centre.
    assert distance.max() > 0.5 * epsilon


def test_without_input_range_the_ball_is_not_clipped():
    model = _relu_model()
    x, y = _data(model)
    x = 4.0 * x - 2.0
    adversarial = attacks.pgd_attack(model, x, y, 0.5, steps=10, input_range=None, seed=0)
    assert np.abs(adversarial - x).max() <= 0.5
    assert adversarial.min() < -2.0 or adversarial.max() > 2.0


def test_bounds_are_rounded_inward_to_float32():
    model = _relu_model()
    x, y = _data(model)
    epsilon = 0.1 + 1e-9  # no float32: x - epsilon rounds either way
    adversarial = attacks.pgd_attack(model, x, y, epsilon, steps=30, seed=0)
    assert np.abs(adversarial.astype("float64") - x.astype("float64")).max() <= epsilon


@pytest.mark.parametrize("name", sorted(MODELS))
def test_epsilon_zero_gives_clean_accuracy(name):
    model = MODELS[name]()
    x, y = _data(model)
    clean = np.mean(_predictions(model, x) == y)
    assert 0.5 < clean < 1.0
    assert attacks.pgd_accuracy(model, x, y, 0.0) == clean
    np.testing.assert_array_equal(attacks.pgd_attack(model, x, y, 0.0), x)


@pytest.mark.parametrize("epsilon", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_certified_at_most_pgd_at_most_clean(name, epsilon):
    model = MODELS[name]()
    x, y = _data(model)
    margins = verification.certified_margins(model, x, y, epsilon)
    adversarial = attacks.pgd_attack(model, x, y, epsilon, steps=20, seed=0)
    robust = _predictions(model, adversarial) == y
    clean = _predictions(model, x) == y
    accuracy = attacks.pgd_accuracy(model, x, y, epsilon, steps=20, seed=0)
    assert np.mean(margins > 0) <= accuracy <= np.mean(clean)
    # No certified input is broken; every broken input is counted.
    assert np.all(robust[margins > 0])
    assert accuracy == np.mean(robust & clean)


def test_attack_breaks_inputs_as_the_certificate_allows():
    # A trained Bernstein network: PGD should come close to the certificate.
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(200, 2)).astype("float32")
    y = (x[:, 1] > 0.5 + 0.25 * np.sin(6 * x[:, 0])).astype("int32")
    model = keras.Sequential(
        [
            keras.Input((2,)),
            BernsteinDense(8, degree=3, normalization=None, bounds=(-2, 2)),
            keras.layers.Dense(2),
        ]
    )
    model.compile(keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(x, y, epochs=20, batch_size=100, verbose=0)
    epsilon = 0.05
    certified = verification.certified_accuracy(model, x, y, epsilon)
    empirical = attacks.pgd_accuracy(model, x, y, epsilon, steps=20, seed=0)
    clean = np.mean(_predictions(model, x) == y)
    assert clean > 0.8
    assert certified <= empirical < clean
    assert empirical - certified < 0.1


def _linear_model(weights, bias, activation=None):
    model = keras.Sequential(
        [
            keras.Input((weights.shape[0],)),
            keras.layers.Dense(weights.shape[1], activation=activation),
        ]
    )
    model.layers[0].set_weights([weights, bias])
    return model


@pytest.mark.parametrize("loss", ["margin", "cross_entropy"])
def test_linear_classifier_broken_exactly_where_the_margin_allows(loss):
    """For two classes the worst point of the ball is the corner
    `x + epsilon * sign(w_j - w_y)`, where the margin drops by
    `epsilon * ||w_y - w_j||_1`."""
    rng = np.random.default_rng(2)
    weights = rng.normal(size=(6, 2)).astype("float32")
    bias = np.array([0.1, -0.1], "float32")
    model = _linear_model(weights, bias)
    x = rng.normal(size=(300, 6)).astype("float32")
    y = rng.integers(0, 2, size=300)
    epsilon = 0.2
    logits = x.astype("float64") @ weights + bias
    margin = logits[np.arange(300), y] - logits[np.arange(300), 1 - y]
    difference = weights[:, y].T - weights[:, 1 - y].T  # w_y - w_j per input
    worst = margin - epsilon * np.abs(difference).sum(axis=1)
    clear = np.abs(worst) > 1e-4
    assert 0.2 < np.mean(worst[clear] > 0) < 0.8

    adversarial = attacks.pgd_attack(
        model, x, y, epsilon, steps=50, input_range=None, loss=loss, seed=0
    )
    robust = _predictions(model, adversarial) == y
    np.testing.assert_array_equal(robust[clear], worst[clear] > 0)
    # An input never broken keeps the point of highest loss: the corner.
    corner = x - epsilon * np.sign(difference)
    np.testing.assert_allclose(adversarial[robust], corner[robust], atol=1e-6)


def test_softmax_output_attacked_like_its_logits():
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(5, 4)).astype("float32")
    bias = rng.normal(size=4).astype("float32")
    x = rng.uniform(size=(80, 5)).astype("float32")
    y = rng.integers(0, 4, size=80)
    logits = _linear_model(weights, bias)
    probabilities = _linear_model(weights, bias, activation="softmax")
    for loss in attacks.LOSSES:
        options = dict(steps=20, loss=loss, seed=0)
        from_logits = attacks.pgd_attack(logits, x, y, 0.1, **options)
        from_probabilities = attacks.pgd_attack(probabilities, x, y, 0.1, **options)
        assert np.all(np.isfinite(from_probabilities))
        np.testing.assert_allclose(from_probabilities, from_logits, atol=1e-6)


def test_restarts_only_break_more_and_a_seed_repeats():
    model = _bernstein_model()
    x, y = _data(model)
    once = attacks.pgd_attack(model, x, y, 0.05, steps=5, seed=7)
    np.testing.assert_array_equal(attacks.pgd_attack(model, x, y, 0.05, steps=5, seed=7), once)
    assert not np.array_equal(attacks.pgd_attack(model, x, y, 0.05, steps=5, seed=8), once)
    one = attacks.pgd_accuracy(model, x, y, 0.05, steps=5, seed=7)
    three = attacks.pgd_accuracy(model, x, y, 0.05, steps=5, restarts=3, seed=7)
    assert three <= one


def test_labels_as_integers_columns_or_one_hot():
    model = _relu_model()
    x, y = _data(model)
    options = dict(epsilon=0.1, steps=5, seed=0)
    expected = attacks.pgd_attack(model, x, y, **options)
    np.testing.assert_array_equal(attacks.pgd_attack(model, x, y[:, None], **options), expected)
    np.testing.assert_array_equal(attacks.pgd_attack(model, x, np.eye(3)[y], **options), expected)


def test_model_state_is_untouched_and_new_weights_are_attacked():
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.5),
            BernsteinDense(6, degree=3),
            keras.layers.Dense(3),
        ]
    )
    x, y = _data(model)
    before = [np.array(keras.ops.convert_to_numpy(v)) for v in model.variables]
    attacks.pgd_attack(model, x, y, 0.1, steps=3, seed=0)
    for value, variable in zip(before, model.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)
    # The compiled step reads the weights at each call, not those it was traced with.
    kernel = model.layers[-1].kernel
    kernel.assign(-kernel)
    clean = np.mean(_predictions(model, x) == y)
    assert attacks.pgd_accuracy(model, x, y, 0.0) == clean
    assert attacks.pgd_accuracy(model, x, y, 0.1, steps=3, seed=0) <= clean


def _raises(message, *args, **kwargs):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        attacks.pgd_attack(*args, **kwargs)


def test_argument_errors():
    model = _relu_model()
    x, y = _data(model, count=4)
    _raises("`epsilon` must be a finite number >= 0. Received: epsilon=-0.1", model, x, y, -0.1)
    _raises("`steps` must be a positive integer. Received: steps=0", model, x, y, 0.1, steps=0)
    _raises("`steps` must be a positive integer. Received: steps=2.0", model, x, y, 0.1, steps=2.0)
    _raises(
        "`step_size` must be a finite number > 0. Received: step_size=0",
        model, x, y, 0.1, step_size=0,
    )
    _raises(
        "`restarts` must be a positive integer. Received: restarts=0",
        model, x, y, 0.1, restarts=0,
    )
    _raises(
        "`batch_size` must be a positive integer. Received: batch_size=None",
        model, x, y, 0.1, batch_size=None,
    )
    _raises(
        "`input_range` must be a pair (low, high) of finite numbers with low < high. "
        "Received: input_range=(1, 0)",
        model, x, y, 0.1, input_range=(1, 0),
    )
    _raises(
        "`loss` must be one of ('margin', 'cross_entropy'). Received: loss='hinge'",
        model, x, y, 0.1, loss="hinge",
    )
    _raises(
        "`seed` must be a nonnegative integer or None. Received: seed=-1",
        model, x, y, 0.1, seed=-1,
    )
    with pytest.raises(ValueError, match=r"^`x` must lie inside `input_range`"):
        attacks.pgd_attack(model, x + 1.0, y, 0.1)
    with pytest.raises(ValueError, match=r"^`y` must hold labels in \[0, 2\]"):
        attacks.pgd_accuracy(model, x, y + 3, 0.1)
    with pytest.raises(ValueError, match=r"^`model` must have one output of shape"):
        attacks.pgd_accuracy(_relu_model(classes=1), x, np.zeros(4, int), 0.1)
    with pytest.raises(ValueError, match=r"^`model` must be a built Keras `Model`"):
        attacks.pgd_accuracy(keras.Sequential([keras.layers.Dense(3)]), x, y, 0.1)
