"""Projected gradient descent (PGD) attacks under the L∞ norm.

`pgd_attack` searches each input's L∞ ball of radius `epsilon` (clipped to
the range of valid inputs) for a misclassified point: from a random start in
the ball it takes `steps` steps of size `step_size` along the sign of the
loss gradient, projecting back onto the ball after each step, and repeats
from new random starts (`restarts`) for the inputs not yet broken. It gives
an upper bound on the robust accuracy, where `keras_bernstein.verification`
gives a lower bound:

    certified_accuracy <= pgd_accuracy <= clean accuracy,

and no input with a positive `verification.certified_margins` can be broken
by the attack (up to the float32 rounding of the model, about `1e-6`
relative to its outputs). A gap between the two bounds measures how loose the
certificate is or how weak the attack is.

The model runs in inference mode (`training=False`); the attack reads its
weights and changes no weight, optimizer or metric state. The gradient step
is compiled once per model, loss and batch shape (`jax.jit` on JAX, a
`tf.function` on TensorFlow; PyTorch runs eagerly) and reads the weights as
arguments, so a model trained between two attacks is attacked with its new
weights.

Reference:
    Madry, Makelov, Schmidt, Tsipras and Vladu, Towards Deep Learning Models
    Resistant to Adversarial Attacks, ICLR 2018.
    Carlini and Wagner, Towards Evaluating the Robustness of Neural
    Networks, IEEE S&P 2017 (the margin loss).
"""

import weakref

import keras
import numpy as np
from keras import ops

from keras_bernstein import _autodiff
from keras_bernstein._arguments import check_interval
from keras_bernstein._arguments import check_nonnegative_number
from keras_bernstein._arguments import check_positive_integer
from keras_bernstein._model_layers import activation_name
from keras_bernstein._model_layers import check_model
from keras_bernstein._model_layers import output_layers
from keras_bernstein.verification import _check_inputs
from keras_bernstein.verification import _check_labels
from keras_bernstein.verification import _num_classes

LOSSES = ("margin", "cross_entropy")
DEFAULT_STEPS = 50
DEFAULT_RESTARTS = 1
DEFAULT_BATCH_SIZE = 256
# Probabilities are clipped here before their logarithm: the smallest
# normal float32, so log keeps their order wherever float32 can tell them apart.
_TINY_PROBABILITY = float(np.finfo("float32").tiny)

# model -> {(loss, probabilities): (forward, step)}; compiled traces die with the model.
_compiled_functions = weakref.WeakKeyDictionary()


def pgd_attack(
    model,
    x,
    y,
    epsilon,
    steps=DEFAULT_STEPS,
    step_size=None,
    restarts=DEFAULT_RESTARTS,
    input_range=(0.0, 1.0),
    loss="margin",
    batch_size=DEFAULT_BATCH_SIZE,
    seed=None,
):
    """Adversarial examples in L∞ balls by projected gradient descent (PGD).

    For each input `x_i` PGD maximizes `loss` over the ball
    `{x' : max|x' - x_i| <= epsilon}` intersected with `input_range`: it
    starts at a uniformly random point of the ball and takes `steps` steps
    `x' <- project(x' + step_size * sign(grad loss(x')))`. Every iterate is
    checked: the first misclassified one found is kept (an input misclassified
    clean keeps itself); for an input never misclassified, the iterate of
    highest loss is kept (the clean input included). With `restarts > 1` the
    inputs not yet broken are attacked again from new random starts.

    Reference:
        Madry et al., Towards Deep Learning Models Resistant to Adversarial
        Attacks, ICLR 2018.

    Args:
        model: A built Keras `Model` with one input and one output of shape
            `(batch, classes)`, `classes >= 2`: logits, or probabilities when
            its output layer ends in a softmax (a `Dense` or `Activation`
            with `activation="softmax"`, or a `Softmax` layer), whose
            logarithms are then taken as logits (for the margin only their
            order matters).
        x: Inputs, batch first, inside `input_range`.
        y: Integer labels in `[0, classes)`, `(batch,)` or `(batch, 1)`, or
            one-hot `(batch, classes)`.
        epsilon: Nonnegative radius of the L∞ ball around each input. With
            `0` the clean inputs are returned.
        steps: Positive integer, gradient steps per restart (default 50).
        step_size: Positive size of each signed step, or `None` (default)
            for `2.5 * epsilon / steps`, which lets a walk cross the ball
            from a face to the opposite one (Madry et al.).
        restarts: Positive integer, random starts per input (default 1).
        input_range: `(min, max)` with `min < max`, the range of valid
            inputs the ball is clipped to (default `(0, 1)`, pixels), or
            `None` for none. Every entry of `x` must lie inside it.
        loss: What each step increases: `"margin"` (default), the margin loss
            `max_{j != y} z_j - z_y` of Carlini and Wagner, positive exactly
            when the input is misclassified, which does not saturate once
            the softmax is confident as cross-entropy does; or
            `"cross_entropy"`, `logsumexp(z) - z_y`.
        batch_size: Positive integer, inputs attacked together (default
            256). The last batch is padded, so every batch has one shape and
            the compiled step is reused.
        seed: Integer seed of the random starts, or `None`; the same seed
            gives the same result on a backend.

    Returns:
        A float32 NumPy array of `x`'s shape: adversarial inputs, each
        within `epsilon` of its `x` in L∞ and inside `input_range` (the
        bounds are rounded inward to float32).

    Raises:
        ValueError: for a model that is not built or has no single
            `(batch, classes)` output, inputs that are not finite or lie
            outside `input_range`, labels that are not integers in
            `[0, classes)`, or an invalid `epsilon`, `steps`, `step_size`,
            `restarts`, `input_range`, `loss`, `batch_size` or `seed`.

    Example:
        >>> x_adv = pgd_attack(model, x_test, y_test, epsilon=0.1, seed=0)
        >>> robust = np.argmax(model.predict(x_adv), axis=-1) == y_test
    """
    adversarial, _ = _attack(
        model, x, y, epsilon, steps, step_size, restarts, input_range, loss,
        batch_size, seed,
    )
    return adversarial


def pgd_accuracy(
    model,
    x,
    y,
    epsilon,
    steps=DEFAULT_STEPS,
    step_size=None,
    restarts=DEFAULT_RESTARTS,
    input_range=(0.0, 1.0),
    loss="margin",
    batch_size=DEFAULT_BATCH_SIZE,
    seed=None,
):
    """Empirical robust accuracy: the fraction of inputs PGD does not break.

    An input counts when it is classified correctly (`argmax` of the output
    equal to its label) and so is every point `pgd_attack` reached in its
    ball; an input misclassified clean counts as broken. This is an upper
    bound on the robust accuracy, and at least
    `verification.certified_accuracy` with the same `epsilon` and
    `input_range`.

    Reference:
        Madry et al., Towards Deep Learning Models Resistant to Adversarial
        Attacks, ICLR 2018.

    Args:
        model: See `pgd_attack`.
        x: Inputs, batch first, inside `input_range`.
        y: Integer labels `(batch,)` or `(batch, 1)`, or one-hot.
        epsilon: Nonnegative radius of the L∞ ball; `0` gives the clean
            accuracy.
        steps: Gradient steps per restart (default 50).
        step_size: Size of each signed step, or `None` for
            `2.5 * epsilon / steps`.
        restarts: Random starts per input (default 1).
        input_range: `(min, max)` the ball is clipped to, or `None`.
        loss: `"margin"` (default) or `"cross_entropy"`.
        batch_size: Inputs attacked together (default 256).
        seed: Integer seed of the random starts, or `None`.

    Returns:
        A float in `[0, 1]`.

    Raises:
        ValueError: as `pgd_attack`.

    Example:
        >>> certified = verification.certified_accuracy(model, x, y, 0.05)
        >>> empirical = pgd_accuracy(model, x, y, 0.05, seed=0)
        >>> certified <= empirical
        True
    """
    _, robust = _attack(
        model, x, y, epsilon, steps, step_size, restarts, input_range, loss,
        batch_size, seed,
    )
    return float(np.mean(robust))


def _check_arguments(epsilon, steps, step_size, restarts, input_range, loss, batch_size, seed):
    epsilon = check_nonnegative_number(epsilon, "epsilon")
    steps = check_positive_integer(steps, "steps")
    if step_size is None:
        step_size = 2.5 * epsilon / steps
    else:
        step_size = check_nonnegative_number(step_size, "step_size", positive=True)
    restarts = check_positive_integer(restarts, "restarts")
    if input_range is not None:
        input_range = check_interval(input_range, "input_range")
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}. Received: loss={loss!r}")
    batch_size = check_positive_integer(batch_size, "batch_size")
    if seed is not None and (
        isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0
    ):
        raise ValueError(
            f"`seed` must be a nonnegative integer or None. Received: seed={seed!r}"
        )
    return epsilon, steps, step_size, restarts, input_range, batch_size


def _outputs_probabilities(model):
    """Whether the model's output layer ends in a softmax."""
    layers = output_layers(model)
    if len(layers) != 1:
        return False
    (layer,) = layers
    if isinstance(layer, keras.Model):
        return _outputs_probabilities(layer)
    if isinstance(layer, keras.layers.Softmax):
        return True
    return activation_name(getattr(layer, "activation", None)) == "softmax"


def _round_inward(lower, upper, x32):
    """Float32 bounds inside the float64 interval `[lower, upper]`.

    Where no float32 lies inside (a radius below the float32 spacing around
    an input that float32 cannot represent), both bounds are `x32`.
    """
    lower32 = lower.astype("float32")
    upper32 = upper.astype("float32")
    lower32 = np.where(lower32 < lower, np.nextafter(lower32, np.float32(np.inf)), lower32)
    upper32 = np.where(upper32 > upper, np.nextafter(upper32, np.float32(-np.inf)), upper32)
    empty = lower32 > upper32
    return np.where(empty, x32, lower32), np.where(empty, x32, upper32)


def _scores(outputs, probabilities):
    """Float64 NumPy logits (log-probabilities for a softmax output)."""
    outputs = np.asarray(outputs, "float64")
    if probabilities:
        return np.log(np.clip(outputs, _TINY_PROBABILITY, 1.0))
    return outputs


def _losses(scores, labels, loss):
    """The attack's loss per input, in NumPy float64, to keep the worst iterate."""
    rows = np.arange(len(labels))
    true = scores[rows, labels]
    if loss == "margin":
        others = scores.copy()
        others[rows, labels] = -np.inf
        return others.max(axis=-1) - true
    peak = scores.max(axis=-1)
    return peak + np.log(np.exp(scores - peak[:, None]).sum(axis=-1)) - true


def _compiled(model, loss, probabilities):
    """`(forward, step)` for the model, compiled by `_autodiff.compiled`.

    `forward(trainable, non_trainable, x)` gives the outputs;
    `step(trainable, non_trainable, x, lower, upper, one_hot, step_size)`
    gives the outputs at `x` and the next iterate.
    """
    cache = _compiled_functions.setdefault(model, {})
    key = (loss, probabilities)
    if key in cache:
        return cache[key]
    # A weak reference: the traces are cached per model and must not keep it alive.
    model_reference = weakref.ref(model)

    def forward(trainable, non_trainable, x):
        outputs, _ = model_reference().stateless_call(
            trainable, non_trainable, x, training=False
        )
        return outputs

    def step(trainable, non_trainable, x, lower, upper, one_hot, step_size):
        def objective(x):
            outputs = forward(trainable, non_trainable, x)
            scores = ops.cast(outputs, "float32")
            if probabilities:
                scores = ops.log(ops.clip(scores, _TINY_PROBABILITY, 1.0))
            true = ops.sum(scores * one_hot, axis=-1)
            if loss == "margin":
                others = ops.where(one_hot > 0, ops.full_like(scores, -np.inf), scores)
                value = ops.max(others, axis=-1) - true
            else:
                value = ops.logsumexp(scores, axis=-1) - true
            # Summed: each input's gradient is that of its own loss.
            return ops.sum(value), outputs

        (gradient,), outputs = _autodiff.gradients_and_aux(objective, [x])
        moved = x + step_size * ops.sign(gradient)
        return outputs, ops.minimum(ops.maximum(moved, lower), upper)

    cache[key] = (_autodiff.compiled(forward), _autodiff.compiled(step))
    return cache[key]


def _attack(model, x, y, epsilon, steps, step_size, restarts, input_range, loss, batch_size, seed):
    """`(adversarial, robust)`: `pgd_attack`'s inputs and, per input, whether
    it and every iterate found were classified correctly."""
    check_model(model)
    epsilon, steps, step_size, restarts, input_range, batch_size = _check_arguments(
        epsilon, steps, step_size, restarts, input_range, loss, batch_size, seed
    )
    x64 = _check_inputs(x, input_range)
    labels = _check_labels(y, len(x64), _num_classes(model))
    probabilities = _outputs_probabilities(model)
    x32 = x64.astype("float32")
    lower, upper = x64 - epsilon, x64 + epsilon
    if input_range is not None:
        lower = np.maximum(lower, input_range[0])
        upper = np.minimum(upper, input_range[1])
    lower, upper = _round_inward(lower, upper, x32)
    # The clean input is the start of the search, so where it sits outside
    # the rounded ball (float32 could not represent it) it is moved inside.
    x32 = np.clip(x32, lower, upper)

    forward, step = _compiled(model, loss, probabilities)
    # Cut from autodiff: only the gradient with respect to the input is wanted.
    trainable = [ops.stop_gradient(v.value) for v in model.trainable_variables]
    non_trainable = [ops.stop_gradient(v.value) for v in model.non_trainable_variables]
    count = len(x32)
    size = min(batch_size, count)
    eye = np.eye(_num_classes(model), dtype="float32")

    def batches(indices):
        for start in range(0, len(indices), size):
            rows = indices[start : start + size]
            # Padded by repetition to one shape, so the compiled step is reused.
            yield rows, np.resize(rows, size)

    def evaluate(outputs, rows):
        scores = _scores(ops.convert_to_numpy(outputs)[: len(rows)], probabilities)
        return scores.argmax(axis=-1) != labels[rows], _losses(scores, labels[rows], loss)

    adversarial = x32.copy()
    robust = np.ones(count, dtype=bool)
    best_loss = np.empty(count)
    for rows, padded in batches(np.arange(count)):
        outputs = forward(trainable, non_trainable, ops.convert_to_tensor(x32[padded]))
        wrong, best_loss[rows] = evaluate(outputs, rows)
        robust[rows] = ~wrong
    if epsilon == 0.0:
        return adversarial, robust

    rng = np.random.default_rng(seed)
    step_size = ops.convert_to_tensor(np.float32(step_size))
    for _ in range(restarts):
        for rows, padded in batches(np.flatnonzero(robust)):
            low, high = lower[padded], upper[padded]
            start = x32[padded] + rng.uniform(-epsilon, epsilon, low.shape).astype("float32")
            current = ops.convert_to_tensor(np.clip(start, low, high))
            low, high = ops.convert_to_tensor(low), ops.convert_to_tensor(high)
            one_hot = ops.convert_to_tensor(eye[labels[padded]])
            for iteration in range(steps + 1):
                if iteration < steps:
                    outputs, following = step(
                        trainable, non_trainable, current, low, high, one_hot, step_size
                    )
                else:
                    outputs = forward(trainable, non_trainable, current)
                wrong, losses = evaluate(outputs, rows)
                wrong &= robust[rows]
                better = robust[rows] & ~wrong & (losses > best_loss[rows])
                if wrong.any() or better.any():
                    values = ops.convert_to_numpy(current)[: len(rows)]
                    keep = wrong | better
                    adversarial[rows[keep]] = values[keep]
                    best_loss[rows[better]] = losses[better]
                    robust[rows[wrong]] = False
                if not robust[rows].any():
                    break
                if iteration < steps:
                    current = following
    return adversarial, robust
