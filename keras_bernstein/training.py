"""Certified training with interval bound propagation (IBP), in Keras idioms.

`CertifiedTraining` wraps a built classifier and trains it, through the usual
`compile` and `fit`, on a mix of its clean loss and a *robust* loss that
bounds the worst case over an L∞ ball of radius `epsilon` around each input
(Gowal et al. 2018):

    loss = (1 - w) · clean_loss + w · robust_loss

`clean_loss` is the compiled loss on the model's predictions. `robust_loss`
is the specification-margin form of Gowal et al.: with
`m_j <= z_y - z_j` the certified lower bounds of the logit margins over the
ball (`keras_bernstein.verification.margin_bounds`, Bern-IBP for Bernstein
activations as in DeepBern-Nets), it is the sparse categorical
cross-entropy of the worst-case logits `-m` (whose column `y` is 0) with
label `y`. It is never below the clean cross-entropy, equals it at
`epsilon = 0`, and is small only when every margin bound is large and
positive, i.e. when the whole ball is certified.

Both `epsilon` and the robust weight `w` may follow a schedule of the
training step: Gowal et al. warm up on the clean loss, then ramp `epsilon`
and `w` linearly (`LinearRamp`), which they found needed for stable
training; they also train at a somewhat larger ε than they certify. The step is a variable of the wrapper
(`schedule_step`) that counts training batches; evaluation reads the
schedules at the current step without advancing it.

Everything runs on `keras.ops` inside the wrapper's `compute_loss`, so the
same code trains on JAX, TensorFlow and PyTorch.

Batch normalization: the bounds use its inference form (moving statistics),
the model that is certified after training, while the clean loss uses the
batch statistics. The robust term therefore optimizes a network whose
statistics lag the batches' (BernsteinDense's normalization has momentum
0.9, Keras' `BatchNormalization` 0.99) and passes no gradient to the
statistics themselves. A warm-up on the clean loss lets them settle first;
certified training is simplest and its bounds tightest without batch
normalization (e.g. `BernsteinDense(..., normalization=None)`).

References:
    Gowal et al., On the Effectiveness of Interval Bound Propagation for
    Training Verifiably Robust Models, arXiv:1810.12715, 2018.

    Khedr and Shoukry, DeepBern-Nets: Taming the Complexity of Certifying
    Neural Networks using Bernstein Polynomial Activations and Precise Bound
    Propagation, AAAI 2024.
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_bernstein import verification
from keras_bernstein._arguments import check_interval
from keras_bernstein._arguments import is_finite_real
from keras_bernstein._model_layers import check_model


def _check_nonnegative_integer(value, name):
    """`value` as an `int >= 0`, or a `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(
            f"`{name}` must be an integer >= 0. Received: {name}={value!r}"
        )
    return int(value)


def _check_finite_number(value, name):
    """`value` as a finite `float`, or a `ValueError` naming `name`."""
    if not is_finite_real(value):
        raise ValueError(f"`{name}` must be a finite number. Received: {name}={value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="keras_bernstein")
class LinearRamp(keras.optimizers.schedules.LearningRateSchedule):
    """A constant, then a linear ramp, then a constant: Gowal et al.'s schedule.

    The value is `start_value` up to `start_step` (the warm-up), moves
    linearly to `end_value` over the next `ramp_steps` steps, and stays at
    `end_value` afterwards:

        value(step) = start_value + (end_value - start_value)
                      * clip((step - start_step) / ramp_steps, 0, 1)

    With `ramp_steps=0` it jumps to `end_value` at `start_step`. It is a
    `LearningRateSchedule`, so it also serves as a learning rate, and
    `CertifiedTraining` takes it for `epsilon` and `robust_weight`.

    Args:
        end_value: Finite number, the value after the ramp.
        ramp_steps: Integer `>= 0`, the length of the ramp in steps.
        start_value: Finite number, the value during the warm-up. Defaults
            to `0.0`.
        start_step: Integer `>= 0`, the first step of the ramp (the number
            of warm-up steps). Defaults to `0`.
        name: Name of the schedule. Defaults to `"LinearRamp"`.

    Returns:
        Called with a step (integer scalar or tensor), a float32 scalar
        tensor.

    Example:
        >>> weight = LinearRamp(end_value=0.5, ramp_steps=1000, start_step=200)
        >>> float(weight(0)), float(weight(700)), float(weight(5000))
        (0.0, 0.25, 0.5)
    """

    def __init__(self, end_value, ramp_steps, start_value=0.0, start_step=0, name="LinearRamp"):
        super().__init__()
        self.end_value = _check_finite_number(end_value, "end_value")
        self.ramp_steps = _check_nonnegative_integer(ramp_steps, "ramp_steps")
        self.start_value = _check_finite_number(start_value, "start_value")
        self.start_step = _check_nonnegative_integer(start_step, "start_step")
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.ramp_steps == 0:
            fraction = ops.cast(step >= self.start_step, "float32")
        else:
            fraction = ops.clip((step - self.start_step) / self.ramp_steps, 0.0, 1.0)
        return self.start_value + (self.end_value - self.start_value) * fraction

    def get_config(self):
        return {
            "end_value": self.end_value,
            "ramp_steps": self.ramp_steps,
            "start_value": self.start_value,
            "start_step": self.start_step,
            "name": self.name,
        }


def _check_schedule(value, name, low, high=None):
    """A number in `[low, high]` as a float, or a callable `schedule(step)`.

    A `LinearRamp`'s two values are checked too; other callables are trusted.
    """
    if callable(value) and not isinstance(value, type):
        if isinstance(value, LinearRamp):
            for endpoint in (value.start_value, value.end_value):
                if endpoint < low or (high is not None and endpoint > high):
                    raise ValueError(_range_message(name, low, high, value, endpoint))
        return value
    if not is_finite_real(value) or value < low or (high is not None and value > high):
        raise ValueError(_range_message(name, low, high, value))
    return float(value)


def _range_message(name, low, high, value, endpoint=None):
    interval = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
    what = f"a number {interval} or a callable schedule(step)"
    if endpoint is not None:
        what += f" whose values are {interval} (a LinearRamp reaches {endpoint:g})"
    return f"`{name}` must be {what}. Received: {name}={value!r}"


def _serialize_schedule(value):
    if callable(value):
        return keras.saving.serialize_keras_object(value)
    return value


def _deserialize_schedule(value):
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    return value


def _check_classifier(model):
    """Raises unless `model` is a built Sequential or functional model with one
    input and one output of shape `(batch, classes)`, classes >= 2."""
    check_model(model)
    graph = model._functional if isinstance(model, keras.Sequential) else model
    if not hasattr(graph, "_run_through_graph"):
        raise ValueError(
            "`model` must be a Sequential or functional model (the bounds walk "
            f"its graph of layers); subclassed models are not supported. "
            f"Received: model={model!r}"
        )
    inputs = keras.tree.flatten(model.inputs)
    if len(inputs) != 1:
        raise ValueError(
            "`model` must have exactly one input. Received: model with "
            f"{len(inputs)} inputs"
        )
    return tuple(inputs[0].shape), verification._num_classes(model)


@keras.saving.register_keras_serializable(package="keras_bernstein")
class CertifiedTraining(keras.Model):
    """Trains a classifier on its clean loss and its IBP worst-case loss.

    A `keras.Model` that wraps a built classifier (`model`, also the `.model`
    attribute). Calling it calls `model`; `compile` and `fit` work as for any
    Keras model, and its `compute_loss` returns

        (1 - w) · clean_loss + w · robust_loss

    where `clean_loss` is the compiled loss (plus any regularization losses,
    which keep their full weight), `w` is `robust_weight` and `robust_loss`
    is the sparse categorical cross-entropy, with label `y`, of the
    worst-case logits `-m`: `m = keras_bernstein.verification.margin_bounds`
    of the box `clip(x - ε, input_range) <= x' <= clip(x + ε,
    input_range)`, the certified lower bounds of `z_y - z_j` (Gowal et al.'s
    specification form; see the module docstring). For a model that ends in
    a softmax `Dense`, the margins are those of its logits, so compile with
    `from_logits=False` there and `True` for a model ending in logits.

    `epsilon` and `robust_weight` may be schedules of the training step,
    `schedule_step`, a non-trainable variable the wrapper increments once
    per training batch (it is saved with the weights, so a reloaded wrapper
    resumes its schedules). `evaluate` reads the schedules at the current
    step without incrementing it.

    Besides `loss` (the total above) and the compiled metrics, the logs of
    `fit` and `evaluate` hold, averaged over the epoch's batches (so under a
    ramp `epsilon` is the epoch's mean ε):

    - `robust_loss`: the robust cross-entropy above;
    - `certified_fraction`: the fraction of inputs whose margin bounds are
      all positive at the current ε (every input in the ball is classified
      as `y`; this is `verification.certified_accuracy` in float32, with the
      training batch's weights);
    - `epsilon`: the ε used.

    Labels are integers `(batch,)` or `(batch, 1)`; one-hot `(batch,
    classes)` labels are also accepted (the robust loss reads their argmax;
    the compiled loss must then be a categorical one).

    Batch normalization inside `model` enters the bounds in its inference
    form (moving statistics); see the module docstring.

    The wrapped model alone is what serves inference: after `fit`,
    `wrapper.model.save("classifier.keras")` saves it without the training
    wrapper, and `keras_bernstein.verification.certified_accuracy(
    wrapper.model, ...)` certifies it in float64.

    Args:
        model: A built Sequential or functional `keras.Model` with one input
            and one output of shape `(batch, classes)`, `classes >= 2`, made
            of layers the certified bounds support (see
            `verification.output_bounds`; checked here on a box of zeros
            where the input shape is known).
        epsilon: Radius of the L∞ ball, a number `>= 0` or a callable
            `schedule(step)` such as `LinearRamp` or any
            `keras.optimizers.schedules.LearningRateSchedule`.
        robust_weight: Weight `w` of the robust loss, a number in `[0, 1]`
            or a schedule. Defaults to `0.5`, the final weight of Gowal et
            al. (their `κ` ends at 0.5); ramp it from 0 with `LinearRamp`
            for their warm-up.
        input_range: `(min, max)` with `min < max`, the range of valid
            inputs the ball is clipped to (pixels scaled to `[0, 1]` by
            default), or `None` for no clipping.
        **kwargs: Passed on to `keras.Model` (`name`, ...).

    Input shape:
        That of `model`.

    Output shape:
        That of `model`: `(batch, classes)`.

    Raises:
        ValueError: for an unsupported `model` or an invalid `epsilon`,
            `robust_weight` or `input_range`; in `fit`/`evaluate`, for
            missing or malformed labels.

    Example:
        >>> from keras_bernstein.training import CertifiedTraining, LinearRamp
        >>> classifier = keras.Sequential([
        ...     keras.Input((784,)),
        ...     keras_bernstein.BernsteinDense(64, degree=4, normalization=None),
        ...     keras.layers.Dense(10),
        ... ])
        >>> ramp = dict(ramp_steps=2000, start_step=500)  # warm-up, then ramp
        >>> trainer = CertifiedTraining(
        ...     classifier,
        ...     epsilon=LinearRamp(end_value=0.1, **ramp),
        ...     robust_weight=LinearRamp(end_value=0.5, **ramp),
        ... )
        >>> trainer.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy(
        ...     from_logits=True), metrics=["accuracy"])
        >>> history = trainer.fit(x_train, y_train, batch_size=100, epochs=20)
        >>> history.history["certified_fraction"][-1]
        >>> trainer.model.save("classifier.keras")
    """

    def __init__(self, model, epsilon, robust_weight=0.5, input_range=(0.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        input_shape, self.num_classes = _check_classifier(model)
        self.epsilon = _check_schedule(epsilon, "epsilon", 0.0)
        self.robust_weight = _check_schedule(robust_weight, "robust_weight", 0.0, 1.0)
        self.input_range = (
            None if input_range is None else check_interval(input_range, "input_range")
        )
        self.model = model
        self.schedule_step = self.add_weight(
            shape=(),
            # "int" is int64, or int32 on JAX without x64, like the optimizer's.
            dtype="int",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="schedule_step",
        )
        self.robust_loss_tracker = keras.metrics.Mean(name="robust_loss")
        self.certified_fraction_tracker = keras.metrics.Mean(name="certified_fraction")
        self.epsilon_tracker = keras.metrics.Mean(name="epsilon")
        self._robust_cross_entropy = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True
        )
        self.built = True
        self._check_bounds_supported(input_shape)

    def _check_bounds_supported(self, input_shape):
        """Bounds one zero box so that an unsupported layer fails here, not in
        `fit`; in NumPy, which costs no backend compilation."""
        if any(size is None for size in input_shape[1:]):
            return
        zeros = np.zeros((1,) + input_shape[1:], dtype="float64")
        verification.output_bounds(self.model, zeros, zeros)

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def _current(self, schedule):
        """A schedule's float32 value at the current step, or the constant."""
        if callable(schedule):
            return ops.cast(schedule(self.schedule_step.value), "float32")
        return ops.convert_to_tensor(schedule, dtype="float32")

    def _integer_labels(self, y):
        if y is None:
            raise ValueError(
                "Certified training needs labels: pass `y` to `fit` and "
                "`evaluate` (or yield `(x, y)` from the dataset). Received: y=None"
            )
        rank = len(y.shape)
        if rank == 2 and y.shape[-1] == self.num_classes:
            y = ops.argmax(y, axis=-1)
        elif rank == 2 and y.shape[-1] == 1:
            y = ops.squeeze(y, axis=-1)
        elif rank != 1:
            raise ValueError(
                "Labels must be integers of shape (batch,) or (batch, 1), or "
                f"one-hot of shape (batch, {self.num_classes}). "
                f"Received: y.shape={tuple(y.shape)}"
            )
        return ops.cast(y, "int32")

    def robust_logits(self, x, y, epsilon):
        """The worst-case logits `-margin_bounds` over the clipped ball.

        Args:
            x: Inputs of the wrapped model's input shape, batch first.
            y: Integer labels `(batch,)`.
            epsilon: Radius of the L∞ ball (number or scalar tensor).

        Returns:
            Float32 tensor `(batch, classes)`: entry `j` is minus the
            certified lower bound of `z_y - z_j`, an upper bound of
            `z_j - z_y` over the ball; column `y` is 0.
        """
        x = ops.cast(x, "float32")
        lower, upper = x - epsilon, x + epsilon
        if self.input_range is not None:
            lower = ops.clip(lower, *self.input_range)
            upper = ops.clip(upper, *self.input_range)
        return -verification.margin_bounds(self.model, lower, upper, y)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss mixed with the robust loss; updates the trackers.

        Runs inside Keras' train and test steps on every backend (on JAX in a
        stateless scope that records the step's increment and the trackers'
        updates).

        Args:
            x: Input batch.
            y: Labels.
            y_pred: The wrapped model's predictions on `x`.
            sample_weight: Optional sample weights, applied to both losses
                and to `certified_fraction`.
            training: Whether this is a training step; only training steps
                advance `schedule_step`.

        Returns:
            The total loss, a scalar tensor.
        """
        labels = self._integer_labels(y)
        inputs = keras.tree.flatten(x)
        if len(inputs) != 1:
            raise ValueError(
                f"The wrapped model takes one input. Received: {len(inputs)} inputs"
            )
        clean_loss = super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )
        (x,) = inputs
        epsilon = self._current(self.epsilon)
        robust_weight = self._current(self.robust_weight)
        if training:
            self.schedule_step.assign_add(1)

        worst_logits = self.robust_logits(x, labels, epsilon)
        robust_loss = self._robust_cross_entropy(
            labels, worst_logits, sample_weight=sample_weight
        )
        # The largest `z_j - z_y` bound over j != y; column y is 0, so mask it.
        own_class = ops.one_hot(labels, self.num_classes) > 0
        worst_other = ops.max(ops.where(own_class, -float("inf"), worst_logits), axis=-1)
        certified = ops.cast(worst_other < 0.0, "float32")

        batch_size = ops.shape(x)[0]
        self.robust_loss_tracker.update_state(robust_loss, sample_weight=batch_size)
        self.certified_fraction_tracker.update_state(certified, sample_weight=sample_weight)
        self.epsilon_tracker.update_state(epsilon)

        # Regularization losses (inside `clean_loss`) keep their full weight.
        regularization = sum(ops.sum(loss) for loss in self.losses) if self.losses else 0.0
        clean_loss = ops.cast(clean_loss, "float32")
        return (1.0 - robust_weight) * clean_loss + robust_weight * (
            robust_loss + regularization
        )

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.model),
            "epsilon": _serialize_schedule(self.epsilon),
            "robust_weight": _serialize_schedule(self.robust_weight),
            "input_range": None if self.input_range is None else list(self.input_range),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        epsilon = _deserialize_schedule(config.pop("epsilon"))
        robust_weight = _deserialize_schedule(config.pop("robust_weight"))
        return cls(model, epsilon=epsilon, robust_weight=robust_weight, **config)
