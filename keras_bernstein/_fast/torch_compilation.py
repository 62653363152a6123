"""The PyTorch polynomial on CPU, compiled by TorchInductor.

Eager PyTorch runs every elementwise op of the Horner loop, and of its
backward pass, as its own pass over memory: about 30 kernels forward and 45
backward per layer at degree 8. `torch.compile` turns the plain formula
(`_formula._evaluate`, and the normalized ones) into one C++ loop
forward, and AOTAutograd's backward of it into one loop nest with the
per-neuron sums; the partitioner saves only the inputs and recomputes the
rest. No custom gradient is involved, so the gradients are autodiff of the
portable formula by construction. AOTAutograd's backward cannot be
differentiated again: where autograd records the backward (a gradient
penalty, `create_graph=True`), autodiff of the formula runs eagerly instead
(`_Recorded`).

Two things the speed depends on:

- the coefficient and bound tables reach the compiled function neuron axis
  contiguous (stored degree axis first): with `(units, n + 1)` rows Inductor
  loads each coefficient element by element;
- no boolean tensor crosses from the forward to the backward graph: Inductor
  stores a mask far slower than a float pass writes one (hence
  `_formula._evaluate_at`'s relu form of the linear extrapolation).

Used for CPU tensors when a C++ compiler works (probed once per process,
or by the first compile under `auto`); otherwise, and on accelerators, the
eager kernels of `torch_polynomial` and `torch_normalization` run instead.
Inside an enclosing `torch.compile` (Keras' `jit_compile=True`) the formula
is traced into that graph as plain ops, whatever the policy. Setting the environment variable
`KERAS_BERNSTEIN_TORCH_COMPILE` says when to compile (`policy`): by default
(`auto`) a signature runs the eager kernels until they have spent what
compiling it is expected to cost; `always` compiles at its first call, `0`
never. Compiling a polynomial (per degree, width, extrapolation, dtype,
training or inference, input shape but the batch size, and a single row
apart; shared by every layer and model; each its own code object, so Dynamo
never recompiles one up to its `recompile_limit`) takes a few
seconds, and runs its backward once, so that the backward is compiled then
too; Inductor caches the result on disk for later processes
(`$TORCHINDUCTOR_CACHE_DIR`, else a per-user folder in the system's temporary
folder), which must be the user's alone (`_private_inductor_cache`). Where
compiling or loading fails at a call (a damaged cache entry), that call and
every later one of the same signature run the formula eagerly, after one
warning.
"""

import functools
import os
import pathlib
import time
import types
import warnings
import weakref

import torch

from keras_bernstein import _formula
from keras_bernstein._fast import torch_normalization
from keras_bernstein._fast import torch_polynomial
from keras_bernstein._formula import _degree_of

_DISABLE_VARIABLE = "KERAS_BERNSTEIN_TORCH_COMPILE"
_CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"

_compiler_works = None
_compiled = {}
# Call signatures that have run (and so compiled) once, and those whose
# compiled function failed, which run eagerly from then on.
_ran = set()
_failed = set()
_failure_warned = False
# id(table) -> (weak reference, version, storage, static copy); see _static_table.
_static_tables = {}
# (tabulate, id(coefficients)) -> (weak reference, source snapshots, tables);
# see _kept_tables.
_tables = {}


# Compilation time grows faster than the degree, while the gain shrinks.
# Above this degree the eager kernels run.
MAX_DEGREE = 16


# Where compiling has not yet paid for itself ("auto"), a first guess of
# what compiling a polynomial's signature costs, in seconds, until one has
# been measured in this process (a cold cache's forward and backward at
# degree 8).
FIRST_COMPILE_ESTIMATE = 10.0
# The eager time of a training call's backward, in forward calls; only the
# forward is timed.
BACKWARD_FACTOR = 2.0

_POLICIES = {
    "0": "off", "false": "off", "no": "off", "off": "off",
    "auto": "auto", "": "auto",
    "1": "always", "true": "always", "yes": "always", "on": "always", "always": "always",
}
_unknown_policy_warned = False
# Per signature of `_rental_key`: the eager seconds spent, and those compiled.
_eager_seconds = {}
_bought = set()
# Seconds that compiling a signature took in this process (first calls).
_compile_seconds = []


def policy():
    """When the polynomial is compiled, from `$KERAS_BERNSTEIN_TORCH_COMPILE`:
    `"off"` (`0`), never; `"always"` (`1`, `always`), at the first call of
    each signature; `"auto"` (`auto`, the default), once the eager kernels'
    time spent on a signature exceeds what compiling it is expected to cost
    (a ski-rental rule: at most about twice the cost of the better choice
    made in advance)."""
    global _unknown_policy_warned
    value = os.environ.get(_DISABLE_VARIABLE, "auto").strip().lower()
    chosen = _POLICIES.get(value)
    if chosen is None:
        if not _unknown_policy_warned:
            _unknown_policy_warned = True
            warnings.warn(
                f"keras_bernstein: {_DISABLE_VARIABLE}={value!r} is none of 0, auto, "
                "always; auto is used.",
                stacklevel=4,
            )
        chosen = "auto"
    return chosen


_OFF_CPU = "not a CPU tensor"
_DEGREE_REFUSED = f"a degree outside 1 to {MAX_DEGREE}"
_TURNED_OFF = f"compiling is off ({_DISABLE_VARIABLE}=0)"
_BROKEN = "torch.compile does not work here"


def refusal(x, degree):
    """Why the compiled polynomial of `degree` may not take `x`, or None
    where it may: a CPU tensor, a degree of at most `MAX_DEGREE`, with
    compilation on and not found broken (`call` decides when to compile,
    by `policy`)."""
    if x.device.type != "cpu":
        return _OFF_CPU
    if not 0 < degree <= MAX_DEGREE:
        return _DEGREE_REFUSED
    if torch.compiler.is_compiling():
        # Traced inline into the enclosing graph (`call`), whatever the
        # policy: the eager kernels would only break that graph.
        return None
    chosen = policy()
    if chosen == "auto":
        # Probed when a signature is first compiled, not before.
        return _BROKEN if _compiler_works is False else None
    if chosen == "always":
        return None if _compilation_works() else _BROKEN
    return _TURNED_OFF


# Whether Dynamo traces the running code (an enclosing `torch.compile`).
tracing = torch.compiler.is_compiling


def supports(x, degree):
    """Whether the compiled polynomial of `degree` may take `x` (`refusal`)."""
    return refusal(x, degree) is None


def _compilation_works():
    global _compiler_works
    if _compiler_works is None:
        if policy() == "off":
            _compiler_works = False
            return False
        try:
            _private_inductor_cache()
            probe = torch.compile(lambda x: x * 2.0 + 1.0, fullgraph=True)
            probe(torch.ones(2))
            _compiler_works = True
        except Exception as error:  # The reasons are many: no compiler, old Python, ...
            _compiler_works = False
            warnings.warn(
                "keras_bernstein: torch.compile does not work here, so Bernstein "
                "activations run as eager PyTorch kernels (slower on CPU). "
                f"Set {_DISABLE_VARIABLE}=0 to skip this check. "
                f"The error was: {type(error).__name__}: {error}",
                stacklevel=3,
            )
    return _compiler_works


def _private_inductor_cache():
    """Points TorchInductor at a cache only this user can write to: the
    folder it would use (`$TORCHINDUCTOR_CACHE_DIR`, else
    `/tmp/torchinductor_<user>`, a name any local user could take first),
    made private where missing and used where it is this user's alone;
    else, after one warning, a private temporary folder for this process
    (`cpu_kernels.private_folder_or_temporary`). Inductor loads the
    libraries it finds there."""
    from keras_bernstein._fast import cpu_kernels

    if not hasattr(os, "geteuid"):  # no POSIX owners (Windows): Inductor's choice stands
        return
    folder = os.environ.get(_CACHE_VARIABLE)
    if not folder:
        try:
            from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        except ImportError:  # moved: Inductor's own choice stands
            return
        folder = default_cache_dir()
    folder = pathlib.Path(os.path.abspath(os.path.expanduser(folder)))
    os.environ[_CACHE_VARIABLE] = str(
        cpu_kernels.private_folder_or_temporary(folder, "TorchInductor's cache", _CACHE_VARIABLE)
    )


def call(formula, *tensors, tabulated=None, **constants):
    """`formula(*tensors, **constants)`, compiled; the last two tensors are
    the `(..., n + 1)` coefficient and `(..., 2)` bound tables, and the
    constants (the extrapolation, an epsilon) are Python values.

    `tabulated`, a pair `(formula_from_tables, tabulate)`, serves inference:
    where no gradient is taken, `formula_from_tables(tensors[0],
    *tabulate(*tensors[1:]), **constants)` runs instead, the same values
    from per-neuron tables computed once and kept while their sources keep
    their values (`_kept_tables`). Inductor's loop would otherwise compute
    the scaled coefficients, the end slopes and the normalization's factor
    again for every element.

    Inside an enclosing `torch.compile` (a Keras model compiled with
    `jit_compile=True`) the formula is traced into that graph instead.
    """
    if torch.compiler.is_compiling():
        return formula(*tensors, **constants)
    if policy() == "auto":
        rental = _rental_key(formula, tensors, constants)
        if rental not in _bought:
            return _rent(rental, formula, tensors, constants)
        if _compiler_works is False:
            return _eager(formula, tensors, constants)
        # No probe: the first compile is one (`_portable_after`).
        _private_inductor_cache()
    *inputs, coefficients, bounds = tensors
    degree = _degree_of(coefficients)
    if tabulated is not None and not (
        torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)
    ):
        formula, tabulate = tabulated
        inputs, tables = inputs[:1], _kept_tables(tabulate, tensors[1:])
    else:
        tables = (_static_table(coefficients), _static_table(bounds))
    batched = inputs[0].dim() >= coefficients.dim()
    # Per table shape too: Dynamo would otherwise make a second layer's
    # table sizes symbolic, the degree among them.
    key = (formula,) + tuple(tuple(table.shape) for table in tables)
    key += tuple(sorted(constants.items()))
    # What Dynamo's guards tell apart, each its own compiled function (and
    # code object), so that no mix of models, modes and batch sizes reaches
    # Dynamo's limit of compiled graphs per code object (`recompile_limit`):
    # a single row is a static size of its own.
    signature = key + (
        torch.is_grad_enabled(),
        inputs[0].dtype,
        tuple(inputs[0].shape[1:]) if batched else tuple(inputs[0].shape),
        batched and inputs[0].shape[0] <= 1,
    )
    signature += tuple(tensor.requires_grad for tensor in (*inputs, *tables))
    function = _compiled.get(signature)
    if function is None:
        function = _compiled[signature] = _compile(formula, constants, degree)
    if batched:
        # One compiled graph for every batch size, not one per size.
        torch._dynamo.maybe_mark_dynamic(inputs[0], 0)
    if signature in _failed:
        return formula(*inputs, *tables, **constants)
    try:
        if signature in _ran:
            return _run(function, formula, constants, (*inputs, *tables))
        start = time.perf_counter()
        with warnings.catch_warnings():
            # Compiling traces Keras' dtype helpers, whose `functools` caches
            # Dynamo reports, and imports Inductor modules that use TorchScript.
            warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools")
            warnings.filterwarnings("ignore", message="`torch.jit.script_method` is deprecated")
            _differentiate_once(function, (*inputs, *tables))
            values = _run(function, formula, constants, (*inputs, *tables))
    except Exception as error:  # A failed compile, a damaged cache entry, ...
        return _portable_after(error, signature, formula, inputs, tables, constants)
    _ran.add(signature)
    _compile_seconds.append(time.perf_counter() - start)
    return values


def _rental_key(formula, tensors, constants):
    """What the eager time is counted per: the formula, the table shapes,
    the constants, the dtype, and whether a gradient is taken (training and
    inference compile apart). Not the batch size, which the compiled
    function takes as dynamic, nor the layer or the model."""
    *inputs, coefficients, bounds = tensors
    gradient = torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)
    return (
        formula, tuple(coefficients.shape), tuple(bounds.shape), inputs[0].dtype, gradient
    ) + tuple(sorted(constants.items()))


def _rent(rental, formula, tensors, constants):
    """The eager kernels' values for a signature not yet worth compiling;
    marks it for compiling once its eager time exceeds the expected cost."""
    start = time.perf_counter()
    values = _eager(formula, tensors, constants)
    seconds = time.perf_counter() - start
    if rental[4]:
        seconds *= 1.0 + BACKWARD_FACTOR
    spent = _eager_seconds[rental] = _eager_seconds.get(rental, 0.0) + seconds
    if spent >= expected_compile_seconds():
        _bought.add(rental)
    return values


def expected_compile_seconds():
    """What compiling one more signature is expected to cost: the longest
    compile measured in this process, else `FIRST_COMPILE_ESTIMATE`."""
    return max(_compile_seconds) if _compile_seconds else FIRST_COMPILE_ESTIMATE


def _eager(formula, tensors, constants):
    """`formula(*tensors, **constants)` by the eager kernels
    (`torch_polynomial`, `torch_normalization`): the same values, and
    gradients, differentiable twice."""
    if formula is _formula._evaluate:
        return torch_polynomial.bernstein_polynomial(*tensors, constants["extrapolation"])
    if formula is _formula._evaluate_normalized:
        x, mean, inverse_deviation, scale, offset, coefficients, bounds = tensors
        normalized = torch.addcmul(offset, x - mean, inverse_deviation * scale)
        return torch_polynomial.bernstein_polynomial(
            normalized, coefficients, bounds, constants["extrapolation"]
        )
    if formula is _formula._evaluate_batch_normalized and torch_normalization.supports(
        tensors[0]
    ):
        return torch_normalization.batch_normalized_polynomial(*tensors, **constants)
    return formula(*tensors, **constants)


def _run(function, formula, constants, tensors):
    """`function(*tensors)`, the compiled `formula`; where a gradient is
    taken, inside one autograd node (`_Recorded`) whose backward is the
    compiled one, unless autograd records it."""
    if not (torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)):
        return function(*tensors)
    formula = functools.partial(formula, **constants)
    return _Recorded.apply(function, formula, _marked_copies(tensors), *tensors)


class _Recorded(torch.autograd.Function):
    """The compiled function, run on detached copies of the inputs, as one
    node of the caller's graph.

    Its backward is AOTAutograd's compiled one, which cannot be
    differentiated again; where autograd records the backward
    (`create_graph=True`: a gradient penalty) it is autodiff of the formula
    instead (`torch_polynomial.differentiable_gradients`), as is a second
    backward through a retained graph (the compiled graph runs once).
    The node keeps the inputs, and of the compiled graph its output edges,
    not its outputs.
    """

    @staticmethod
    def forward(ctx, function, formula, copies, *tensors):
        ctx.set_materialize_grads(False)
        with torch.enable_grad():
            outputs = function(*copies)
        single = isinstance(outputs, torch.Tensor)
        outputs = (outputs,) if single else tuple(outputs)
        ctx.formula = formula
        ctx.copies = copies
        ctx.edges = [
            torch.autograd.graph.get_gradient_edge(output) if output.requires_grad else None
            for output in outputs
        ]
        ctx.save_for_backward(*tensors)
        outputs = tuple(output.detach() for output in outputs)
        return outputs[0] if single else outputs

    @staticmethod
    def backward(ctx, *upstream):
        tensors = ctx.saved_tensors
        needs = ctx.needs_input_grad[3:]
        copies, ctx.copies = ctx.copies, None
        if torch.is_grad_enabled() or copies is None:
            grads = torch_polynomial.differentiable_gradients(
                ctx.formula, tensors, upstream, needs, create_graph=torch.is_grad_enabled()
            )
            return (None, None, None) + grads
        pairs = [
            (edge, grad) for edge, grad in zip(ctx.edges, upstream)
            if edge is not None and grad is not None
        ]
        wanted = [copy for copy, need in zip(copies, needs) if need]
        if not pairs or not wanted:
            return (None, None, None) + (None,) * len(tensors)
        found = iter(
            torch.autograd.grad(
                [edge for edge, _ in pairs], wanted, [grad for _, grad in pairs],
                allow_unused=True,
            )
        )
        return (None, None, None) + tuple(next(found) if need else None for need in needs)


def _marked_copies(tensors):
    """Detached copies of `tensors` that require a gradient where they do,
    with the marks `call` gives the originals, so that they hit the same
    compiled graph."""
    copies = [tensor.detach().requires_grad_(tensor.requires_grad) for tensor in tensors]
    if tensors[0].dim() >= tensors[-2].dim():
        torch._dynamo.maybe_mark_dynamic(copies[0], 0)
    for table in copies[-2:]:
        torch._dynamo.mark_static(table)
    return copies


def _differentiate_once(function, tensors):
    """Runs `function`'s backward once, on detached copies of `tensors`:
    AOTAutograd compiles (or loads) the backward on first use, and a failure
    there would otherwise surface in the caller's `backward()`, past any
    fallback. Copies, because a compiled backward may donate its buffers and
    so cannot keep the caller's graph for a second pass."""
    if not torch.is_grad_enabled() or not any(tensor.requires_grad for tensor in tensors):
        return
    copies = _marked_copies(tensors)
    wanted = [copy for copy in copies if copy.requires_grad]
    values = function(*copies)
    outputs = [value for value in torch.utils._pytree.tree_leaves(values) if value.requires_grad]
    if outputs:
        torch.autograd.grad(
            outputs, wanted, [torch.ones_like(output) for output in outputs], allow_unused=True
        )


def _portable_after(error, signature, formula, inputs, tables, constants):
    """`formula` run eagerly, for this call and every later one of
    `signature`, after the compiled function raised `error`; one warning per
    process."""
    global _compiler_works, _failure_warned
    _failed.add(signature)
    if _compiler_works is None and not _ran:
        # The first compile of an unprobed process ("auto"): later
        # signatures would fail alike, so they run eagerly without trying.
        _compiler_works = False
    if not _failure_warned:
        _failure_warned = True
        warnings.warn(
            "keras_bernstein: a Bernstein polynomial compiled by TorchInductor failed "
            "to compile or load, so it runs as eager PyTorch code (slower on CPU). "
            "A damaged TorchInductor cache is cleared by deleting its folder "
            f"(TORCHINDUCTOR_CACHE_DIR); set {_DISABLE_VARIABLE}=0 to skip compiling. "
            f"The error was: {type(error).__name__}: {str(error)[:2000]}",
            stacklevel=4,
        )
    return formula(*inputs, *tables, **constants)


def _compile(formula, constants, degree):
    def polynomial(*tensors):
        return formula(*tensors, **constants)

    # A code object of its own per polynomial: Dynamo keeps at most 8
    # compiled graphs per code object, and a model with several degrees and
    # extrapolations, each trained and evaluated, would exceed that.
    name = f"bernstein_{formula.__name__.strip('_')}_degree_{degree}"
    code = polynomial.__code__.replace(co_name=name, co_qualname=name)
    return torch.compile(
        types.FunctionType(code, polynomial.__globals__, name, None, polynomial.__closure__),
        fullgraph=True,
    )


def _static_table(table):
    """`table` with the same shape and values, stored last axis first, its
    sizes marked static: the degree must stay a Python int in the trace, and
    Dynamo would otherwise tie a table size that equals the batch size to the
    batch's symbol.

    Where no gradient is taken (`predict`, evaluation) the copy is kept until
    the table is written to or freed: a layer's tables do not change between
    its inference calls.
    """
    keep = not (torch.is_grad_enabled() and table.requires_grad)
    if keep:
        kept = _static_tables.get(id(table))
        if (
            kept is not None
            and kept[0]() is table
            and kept[1:3] == (table._version, table.data_ptr())
        ):
            return kept[3]
    static = torch.movedim(torch.movedim(table, -1, 0).contiguous(), 0, -1)
    torch._dynamo.mark_static(static)
    if keep:
        key = id(table)
        forget = lambda _, key=key: _static_tables.pop(key, None)  # noqa: E731
        _static_tables[key] = (
            weakref.ref(table, forget), table._version, table.data_ptr(), static
        )
    return static


def _kept_tables(tabulate, sources):
    """`tabulate(*sources)`, contiguous and marked static, kept between calls.

    One entry per `tabulate` and coefficient table (`sources[-2]`, a layer's
    variable), reused while every source is the same tensor unchanged (its
    version counter) or holds the same values (`torch.equal`: a layer passes
    a new `rsqrt` of its moving variance to every call). The entry goes
    with the coefficient table.
    """
    coefficients = sources[-2]
    key = (tabulate, id(coefficients))
    kept = _tables.get(key)
    if kept is not None and kept[0]() is coefficients and all(
        _unchanged(source, *snapshot) for source, snapshot in zip(sources, kept[1])
    ):
        return kept[2]
    tables = tuple(table.detach().contiguous() for table in tabulate(*sources))
    for table in tables:
        torch._dynamo.mark_static(table)
    snapshots = tuple(
        (weakref.ref(source), source._version, source.data_ptr(), source.detach().clone())
        for source in sources
    )
    forget = lambda _, key=key: _tables.pop(key, None)  # noqa: E731
    _tables[key] = (weakref.ref(coefficients, forget), snapshots, tables)
    return tables


def _unchanged(source, reference, version, address, values):
    if reference() is source and source._version == version and source.data_ptr() == address:
        return True
    return (
        source.shape == values.shape
        and source.dtype == values.dtype
        and torch.equal(source, values)
    )
