"""JAX's side of `cpu_kernels`: the kernels as XLA FFI custom calls.

`bernstein_cpu.cc` wraps the kernels of `bernstein_cpu.h` as FFI handlers,
one per kind (`KINDS`), registered with XLA as
`keras_bernstein_<kind>_<degree>` and called with `jax.ffi.ffi_call`, the
extrapolation mode the integer attribute `mode`. XLA-CPU itself runs the
backward's per-neuron sums as one scalar loop.

A traced kernel is one primitive (`_KERNEL_OR_REFERENCE`) holding both the
kernel and the portable function it stands for; its lowering picks one. A
program lowered for `jax.export` (`model.export`, through jax2tf) gets the
portable function: an exported program may call no custom call targets of
its own, which could not run where this library is not loaded (TF Serving).
Every other lowering (training, `predict`) gets the kernel.
"""

import ctypes
import pathlib

import jax
from jax.extend import core as jax_core
from jax.interpreters import batching
from jax.interpreters import mlir
import jax.numpy as jnp
import numpy as np

from keras_bernstein._fast import KINDS

SOURCE = pathlib.Path(__file__).with_name("bernstein_cpu.cc")
# What runs where the kernels cannot be built.
FALLBACK = "XLA's own loops"
# Why they do not run where `enabled` is False.
DISABLED = "the C++ kernels run on JAX's CPU backend, with FFI calls"
# How the handlers' shape errors begin (`Shapes::Into` in bernstein_cpu.cc).
_SHAPE_ERROR = "keras_bernstein kernel:"


def enabled():
    """JAX on CPU, with FFI calls (jax 0.5 and later)."""
    return jax.default_backend() == "cpu" and hasattr(jax, "ffi")


def build_arguments():
    """The compiler's arguments before and after the source, and the
    framework's version, for `cpu_kernels._build`."""
    include = jax.ffi.include_dir()
    return (f"-I{include}",), (), f"jax {jax.__version__} {include}"


def load(path, degree):
    """Registers the handlers of the library at `path` as FFI targets; their
    names by kind."""
    library = ctypes.cdll.LoadLibrary(str(path))
    names = {}
    for kind in KINDS:
        name = f"keras_bernstein_{kind}_{degree}"
        jax.ffi.register_ffi_target(
            name, jax.ffi.pycapsule(getattr(library, kind)), platform="cpu"
        )
        names[kind] = name
    return names


def target(names, degree, mode, kind):
    """`(name, mode)`: the handler of `kind` and the `mode` to call it with."""
    return names[kind], mode


def call(target, inputs, result_shapes, epsilon=None):
    """The kernel `target` of `inputs`: a list of float32 arrays of
    `result_shapes`. The handlers check every shape they read (and the
    mode): a wrong one raises ValueError here, or JaxRuntimeError from
    inside `jax.jit`."""
    target, mode = target
    results = [jax.ShapeDtypeStruct(tuple(shape), jnp.float32) for shape in result_shapes]
    attributes = {"mode": np.int32(mode)}
    if epsilon is not None:
        attributes["epsilon"] = np.float32(epsilon)
    try:
        outputs = jax.ffi.ffi_call(target, results, vmap_method="sequential")(
            *inputs, **attributes
        )
    except jax.errors.JaxRuntimeError as error:
        # A handler refused a buffer of the wrong shape (`Shapes` in
        # bernstein_cpu.cc); outside `jit` that surfaces here, at the call.
        problem = str(error).partition(_SHAPE_ERROR)[2]
        if not problem:
            raise
        raise ValueError(problem.strip()) from error
    return list(outputs)


def differentiable(kernel, reference):
    """`kernel` with the derivatives of `reference`, the same function in
    XLA (a `jax.custom_jvp`): the kernels have no derivative of their own.
    Lowered for `jax.export`, `reference` replaces it (`_kernel_or_reference`)."""
    kernel = _kernel_or_reference(kernel, reference)
    kernel = jax.custom_jvp(kernel)

    @kernel.defjvp
    def _(primals, tangents):
        _, changes = jax.jvp(reference, primals, tangents)
        return kernel(*primals), changes

    return kernel


def _kernel_or_reference(kernel, reference):
    """`kernel`, a function of arrays calling kernels, as one
    `_KERNEL_OR_REFERENCE` primitive that lowers to `reference` (a function
    of the same arrays, returning the same structure) for `jax.export`."""

    def function(*inputs):
        if not any(isinstance(value, jax.core.Tracer) for value in inputs):
            return kernel(*inputs)  # run at once: nothing is lowered
        jaxpr, shapes = jax.make_jaxpr(kernel, return_shape=True)(*inputs)
        structure = jax.tree.structure(shapes)
        outputs = _KERNEL_OR_REFERENCE.bind(
            *inputs, jaxpr=jaxpr, reference=_flat(reference)
        )
        return jax.tree.unflatten(structure, outputs)

    return function


def _flat(function):
    return lambda *inputs: jax.tree.leaves(function(*inputs))


def _abstract_outputs(*inputs, jaxpr, reference):
    return jaxpr.out_avals


def _run(*inputs, jaxpr, reference):
    return jax_core.jaxpr_as_fun(jaxpr)(*inputs)


def _lowering(context, *inputs, jaxpr, reference):
    # Set by jax.export (jax2tf, model.export) on exactly the lowerings it checks for custom calls.
    if getattr(context.module_context.lowering_parameters, "for_export", False):
        function = reference
    else:
        function = jax_core.jaxpr_as_fun(jaxpr)
    return mlir.lower_fun(function, multiple_results=True)(context, *inputs)


def _batched(inputs, axes, *, jaxpr, reference):
    """Both functions under `jax.vmap` (the kernels run one item at a time,
    `vmap_method="sequential"`), as one primitive again."""
    in_axes = tuple(axes)
    kernel = jax.vmap(_flat(jax_core.jaxpr_as_fun(jaxpr)), in_axes)
    outputs = _kernel_or_reference(kernel, jax.vmap(reference, in_axes))(*inputs)
    return outputs, [0] * len(outputs)


_KERNEL_OR_REFERENCE = jax_core.Primitive("keras_bernstein_cpu_kernel")
_KERNEL_OR_REFERENCE.multiple_results = True
_KERNEL_OR_REFERENCE.def_impl(_run)
_KERNEL_OR_REFERENCE.def_abstract_eval(_abstract_outputs)
mlir.register_lowering(_KERNEL_OR_REFERENCE, _lowering)
batching.primitive_batchers[_KERNEL_OR_REFERENCE] = _batched
