"""`run_layer_test`: the checks every keras-bernstein layer must pass.

In the spirit of Keras' own `TestCase.run_layer_test`, written for this
package: configuration round trip, build and weight counts, symbolic and eager
calls, one training step, mixed precision and `.keras` saving.
"""

import json
import os
import tempfile

import keras
import numpy as np
from keras import ops

# Largest deviation from the float32 output, relative to max |float32 output|,
# accepted for each mixed policy. Inputs and outputs are rounded to the
# compute dtype (float16: 11 significant bits, bfloat16: 8), and the Dense in
# `BernsteinDense` multiplies in it; the polynomial itself runs in float32.
MIXED_PRECISION_TOLERANCE = {"mixed_float16": 2e-3, "mixed_bfloat16": 1.6e-2}


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def _check_config_round_trip(layer_cls, init_kwargs):
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    revived = layer_cls.from_config(config)
    assert type(revived) is layer_cls
    assert revived.get_config() == config

    # JSON (what `.keras` files hold) turns tuples into lists and so on.
    revived = layer_cls.from_config(json.loads(json.dumps(config)))
    assert revived.get_config() == config

    # Registered serialization, without custom_objects.
    serialized = keras.saving.serialize_keras_object(layer)
    revived = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(serialized))
    )
    assert type(revived) is layer_cls
    assert revived.get_config() == config


def _check_weights(
    layer,
    expected_num_trainable_weights,
    expected_num_non_trainable_weights,
    expected_weight_shapes,
):
    assert layer.built
    assert len(layer.trainable_weights) == expected_num_trainable_weights, [
        v.path for v in layer.trainable_weights
    ]
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights, [
        v.path for v in layer.non_trainable_weights
    ]
    assert len(layer.weights) == (
        expected_num_trainable_weights + expected_num_non_trainable_weights
    )
    for variable in layer.weights:
        assert variable.dtype == "float32", (variable.path, variable.dtype)
    if expected_weight_shapes is not None:
        shapes = {v.path.split("/")[-1]: tuple(v.shape) for v in layer.weights}
        for name, shape in expected_weight_shapes.items():
            assert shapes[name] == tuple(shape), (name, shapes)


def _single_layer_model(layer, input_shape):
    return keras.Sequential([keras.Input(input_shape[1:]), layer])


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shape,
    expected_output_shape,
    expected_num_trainable_weights,
    expected_num_non_trainable_weights,
    expected_weight_shapes=None,
    input_data=None,
    tmp_path=None,
    run_training_check=True,
    run_mixed_precision_check=True,
    run_saving_check=True,
):
    """Runs the standard layer checks; fails with an assertion on any.

    Args:
        layer_cls: The layer class.
        init_kwargs: Keyword arguments for `layer_cls`.
        input_shape: Full input shape including the batch size.
        expected_output_shape: Full output shape for `input_shape`.
        expected_num_trainable_weights: Count after building.
        expected_num_non_trainable_weights: Count after building.
        expected_weight_shapes: Optional `{variable name: shape}`.
        input_data: Optional float32 array of `input_shape`; default
            normal with standard deviation 2 (mostly inside the default
            bounds `(-3, 3)`, partly outside, so extrapolation is exercised).
        tmp_path: Folder for the `.keras` file; a temporary one if `None`.
        run_training_check: Whether to fit one step.
        run_mixed_precision_check: Whether to check the mixed policies.
        run_saving_check: Whether to save and load a model.
    """
    input_shape = tuple(input_shape)
    expected_output_shape = tuple(expected_output_shape)
    if input_data is None:
        rng = np.random.default_rng(0)
        input_data = (2.0 * rng.standard_normal(input_shape)).astype("float32")
    assert input_data.shape == input_shape

    # Configuration.
    _check_config_round_trip(layer_cls, init_kwargs)

    # Build.
    layer = layer_cls(**init_kwargs)
    layer.build(input_shape)
    _check_weights(
        layer,
        expected_num_trainable_weights,
        expected_num_non_trainable_weights,
        expected_weight_shapes,
    )
    assert tuple(layer.compute_output_shape(input_shape)) == expected_output_shape

    # Symbolic call, with a known and with an unknown batch size.
    layer = layer_cls(**init_kwargs)
    symbolic = layer(keras.KerasTensor(input_shape, dtype="float32"))
    assert tuple(symbolic.shape) == expected_output_shape
    assert _dtype(symbolic) == "float32"
    _check_weights(
        layer,
        expected_num_trainable_weights,
        expected_num_non_trainable_weights,
        expected_weight_shapes,
    )
    unknown_batch = (None,) + input_shape[1:]
    symbolic = layer(keras.KerasTensor(unknown_batch, dtype="float32"))
    assert tuple(symbolic.shape) == (None,) + expected_output_shape[1:]
    assert tuple(layer.compute_output_shape(unknown_batch)) == (
        (None,) + expected_output_shape[1:]
    )

    # Eager call.
    layer = layer_cls(**init_kwargs)
    outputs = layer(input_data)
    assert tuple(outputs.shape) == expected_output_shape
    assert _dtype(outputs) == "float32"
    reference = _numpy(outputs)
    assert np.all(np.isfinite(reference))
    _check_weights(
        layer,
        expected_num_trainable_weights,
        expected_num_non_trainable_weights,
        expected_weight_shapes,
    )

    if run_mixed_precision_check:
        for policy, tolerance in MIXED_PRECISION_TOLERANCE.items():
            compute_dtype = policy.split("_")[1]
            mixed = layer_cls(**{**init_kwargs, "dtype": policy})
            symbolic = mixed(keras.KerasTensor(input_shape, dtype="float32"))
            assert _dtype(symbolic) == compute_dtype
            mixed.set_weights(layer.get_weights())
            for variable in mixed.weights:
                assert variable.dtype == "float32", (policy, variable.path)
            mixed_outputs = mixed(input_data)
            assert _dtype(mixed_outputs) == compute_dtype, policy
            assert tuple(mixed_outputs.shape) == expected_output_shape
            values = _numpy(ops.cast(mixed_outputs, "float32"))
            scale = max(1.0, float(np.max(np.abs(reference))))
            error = float(np.max(np.abs(values - reference)))
            assert error <= tolerance * scale, (policy, error, scale)

    model = None
    if run_training_check:
        rng = np.random.default_rng(1)
        targets = rng.standard_normal(expected_output_shape).astype("float32")
        model = _single_layer_model(layer_cls(**init_kwargs), input_shape)
        model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
        before = [_numpy(v).copy() for v in model.trainable_weights]
        frozen_before = {
            v.path: _numpy(v).copy()
            for v in model.non_trainable_weights
            if not v.path.endswith(("moving_mean", "moving_variance"))
        }
        history = model.fit(
            input_data, targets, batch_size=input_shape[0], epochs=1, verbose=0
        )
        assert len(history.history["loss"]) == 1
        assert np.isfinite(history.history["loss"][0])
        for old, variable in zip(before, model.trainable_weights):
            assert np.any(_numpy(variable) != old), (
                f"{variable.path} did not change in a training step"
            )
        # Non-trainable weights (the bounds when `trainable_bounds=False`)
        # stay put; batch-normalization statistics are expected to move.
        for variable in model.non_trainable_weights:
            if variable.path in frozen_before:
                np.testing.assert_array_equal(
                    _numpy(variable), frozen_before[variable.path]
                )

    if run_saving_check:
        if model is None:
            model = _single_layer_model(layer_cls(**init_kwargs), input_shape)
        with tempfile.TemporaryDirectory() as scratch:
            folder = str(tmp_path) if tmp_path is not None else scratch
            path = os.path.join(folder, f"{layer_cls.__name__}.keras")
            model.save(path)
            loaded = keras.saving.load_model(path)
        loaded_layer = loaded.layers[-1]
        assert type(loaded_layer) is layer_cls
        assert loaded_layer.get_config() == model.layers[-1].get_config()
        for original, revived in zip(model.weights, loaded.weights):
            np.testing.assert_array_equal(_numpy(original), _numpy(revived))
        np.testing.assert_array_equal(
            loaded.predict(input_data, verbose=0),
            model.predict(input_data, verbose=0),
        )
