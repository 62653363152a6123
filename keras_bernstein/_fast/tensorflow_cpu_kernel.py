"""TensorFlow's side of `cpu_kernels`: the kernels as TensorFlow CPU ops.

`bernstein_tensorflow.cc` wraps the kernels of `bernstein_cpu.h` as four
ops per degree n (`KerasBernsteinValues<n>`, `KerasBernsteinGradient<n>`,
`KerasBernsteinBatchNormalizedValues<n>`,
`KerasBernsteinBatchNormalizedGradient<n>`, the extrapolation mode the
integer attribute `mode`), built against the installed TensorFlow
(`tf.sysconfig.get_compile_flags()`) and loaded with `tf.load_op_library`.
Keras runs TensorFlow models without XLA on CPU, where an op costs what a
built-in op costs, far less than a call of the XLA functions of
`tensorflow_compilation`, which run otherwise. Inside an XLA computation
(`jit_compile=True`, or on a GPU) the ops cannot run, and the portable code
does; so it does while `tf.saved_model.save` traces (`model.export` too), so
that a SavedModel loads where the ops are not (TF Serving).
"""

import functools
import pathlib

import tensorflow as tf

SOURCE = pathlib.Path(__file__).with_name("bernstein_tensorflow.cc")
# What runs where the kernels cannot be built.
FALLBACK = "XLA functions"
# Why they do not run where `enabled` is False.
DISABLED = "the C++ kernels run on TensorFlow without a GPU, outside XLA and SavedModel tracing"
_OP_NAMES = {
    "Values": "values",
    "Gradient": "gradient",
    "BatchNormalizedValues": "batch_normalized_values",
    "BatchNormalizedGradient": "batch_normalized_gradient",
}


@functools.lru_cache(maxsize=None)
def _has_gpu():
    return bool(tf.config.list_logical_devices("GPU"))


def _in_xla_or_saving():
    """Whether the graph being built is compiled by XLA as a whole, or traced
    by `tf.saved_model.save` (a SavedModel with the ops would load only
    where their library is loaded; `tests/test_saving.py`)."""
    try:
        from tensorflow.python.ops import control_flow_util
        from tensorflow.python.saved_model import save_context
    except ImportError:  # moved: assume the safe answer
        return True
    graph = tf.compat.v1.get_default_graph()
    return save_context.in_save_context() or control_flow_util.GraphOrParentsInXlaContext(
        graph
    )


def enabled():
    """TensorFlow with no GPU, outside XLA computations and SavedModel
    tracing."""
    return not _has_gpu() and not _in_xla_or_saving()


def build_arguments():
    """The compiler's arguments before and after the source, and the
    framework's version, for `cpu_kernels._build`."""
    return (
        tuple(tf.sysconfig.get_compile_flags()),
        tuple(tf.sysconfig.get_link_flags()),
        f"tensorflow {tf.__version__}",
    )


def load(path, degree):
    """The op library at `path`."""
    return tf.load_op_library(str(path))


def target(library, degree, mode, kind):
    operation = getattr(library, f"keras_bernstein_{_OP_NAMES[kind]}{degree}")
    return functools.partial(operation, mode=mode)


def call(target, inputs, result_shapes, epsilon=None):
    """The op `target` of `inputs`: a list of float32 tensors (of
    `result_shapes`, which the ops' shape functions know)."""
    attributes = {} if epsilon is None else {"epsilon": float(epsilon)}
    outputs = target(*inputs, **attributes)
    return [outputs] if isinstance(outputs, tf.Tensor) else list(outputs)


def differentiable(kernel, reference):
    """`kernel` with the gradient of `reference`, the same function in
    TensorFlow ops (a `tf.custom_gradient`): the ops have no gradient of
    their own."""

    def function(*inputs):
        @tf.custom_gradient
        def run(*inputs):
            def gradient(*upstreams):
                with tf.GradientTape() as tape:
                    tape.watch(inputs)
                    outputs = tf.nest.flatten(reference(*inputs))
                # Outputs no loss depends on come without an upstream gradient.
                pairs = [(o, u) for o, u in zip(outputs, upstreams) if u is not None]
                return tape.gradient(
                    [o for o, _ in pairs],
                    inputs,
                    output_gradients=[u for _, u in pairs],
                    unconnected_gradients=tf.UnconnectedGradients.ZERO,
                )

            return kernel(*inputs), gradient

        return run(*inputs)

    return function
