"""`ops.bernstein_polynomial` for PyTorch as one autograd node of in-place kernels.

Eager PyTorch pays per kernel and per fresh allocation; plain autodiff of the
Horner loop launches about 10 kernels per degree and keeps `2 n` tensors alive
for the backward pass. This `torch.autograd.Function` runs the same Horner
recurrence in place (three kernels per degree, two buffers), saves only its
inputs, and recomputes in the backward pass. Where autograd records the
backward (`create_graph=True`, a gradient penalty), which in-place kernels
cannot, the backward is autodiff of the plain formula instead
(`differentiable_gradients`). `PRIMITIVES` holds PyTorch's form of the
formula's two clips (`_formula.Primitives`), whose derivatives autodiff of
`torch.clamp` would not give.
"""

import math

import torch

from keras_bernstein import _formula
from keras_bernstein._formula import _degree_of


_BINOMIALS = {}


def _binomials(degree, like):
    """`C(degree, k)` as a tensor like `like`, cached: rebuilding it is a
    host-to-device copy, three times a step. (A dict, not `lru_cache`, which
    torch.compile warns about.)"""
    key = (degree, like.dtype, like.device)
    if key not in _BINOMIALS:
        _BINOMIALS[key] = torch.as_tensor(
            _formula.binomials(degree), dtype=like.dtype, device=like.device
        )
    return _BINOMIALS[key]


def _last_axis_first(tensor):
    """`tensor` with its last axis moved to the front, contiguous.

    A broadcast operand whose elements are strided (a column of a
    `(units, n + 1)` table) makes each kernel several times slower on CPU
    than a contiguous one.
    """
    return torch.movedim(tensor, -1, 0).contiguous()


def _horner(t, s, scaled):
    """`sum_k a_k t^k s^(n-k)` for `a = scaled[..., k]`, in place on two buffers."""
    terms = _last_axis_first(scaled)
    degree = terms.shape[0] - 1
    if degree == 0:
        return torch.add(torch.zeros_like(t), terms[0])
    acc = torch.mul(s, terms[0])
    power = t.clone() if degree > 1 else t
    for k in range(1, degree):
        acc.addcmul_(power, terms[k])
        acc.mul_(s)
        power.mul_(t)
    return acc.addcmul_(power, terms[degree])


def _unit_points(x, bounds, extrapolation):
    """`(t, 1 - t, 1 / (u - l))`, `t` of the clamped input (of `x` itself for
    "polynomial")."""
    lower, upper = _last_axis_first(bounds)
    inverse_width = torch.reciprocal(upper - lower)
    inside = x if extrapolation == "polynomial" else torch.clamp(x, lower, upper)
    # (x - l) / (u - l), not x / w - l / w: that cancels when |l| >> u - l.
    t = torch.sub(inside, lower).mul_(inverse_width)
    return t, torch.rsub(t, 1.0), inverse_width


def _overshoot(x, bounds, inverse_width):
    """`t - clamp(t, 0, 1)` with `t = (x - l) / (u - l)` limited to `±T_LIMIT`:
    `_formula._overshoot`, so that huge and infinite inputs give the same finite
    linear extrapolation as on the other backends."""
    lower, _ = _last_axis_first(bounds)
    t = torch.sub(x, lower).mul_(inverse_width)
    limit = _t_limit(t.dtype)
    return torch.clamp(t, -limit, limit).sub_(t.clamp_(0.0, 1.0))


def _t_limit(dtype):
    """`_formula._T_LIMIT` where `dtype` holds it, else its largest value
    (float16: clamping to a bound the dtype cannot hold is an error)."""
    return min(_formula._T_LIMIT, torch.finfo(dtype).max)


class _LimitedOvershoot(torch.autograd.Function):
    """`_formula._overshoot`: `t - clamp(t, 0, 1)` from `t` limited to `±T_LIMIT`,
    whose derivative is that of the unlimited overshoot: 1 outside `[0, 1]`
    (beyond the limit and at ±inf too), 0 inside, NaN at NaN. Autodiff of
    the limit would leave huge inputs no slope, unlike the other paths'
    hand-written gradients."""

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        limit = _t_limit(t.dtype)
        return torch.clamp(t, -limit, limit) - torch.clamp(t, 0.0, 1.0)

    @staticmethod
    def backward(ctx, upstream):
        (t,) = ctx.saved_tensors
        # Not |sign(t - clamp(t, 0, 1))|: Inductor's sign gives 0 at NaN.
        outside = torch.logical_or(t < 0.0, t > 1.0).to(t.dtype)
        return upstream * torch.where(torch.isnan(t), t, outside)


def limited_overshoot(t):
    """`_formula._overshoot` of a tensor `t` for autodiff (`_LimitedOvershoot`)."""
    return _LimitedOvershoot.apply(t)


class _UnitClamp(torch.autograd.Function):
    """`clamp(t, 0, 1)` whose derivative is NaN at NaN, as in the other
    paths' hand-written gradients (PyTorch's clamp passes no gradient there)."""

    @staticmethod
    def forward(ctx, t):
        ctx.save_for_backward(t)
        return torch.clamp(t, 0.0, 1.0)

    @staticmethod
    def backward(ctx, upstream):
        (t,) = ctx.saved_tensors
        inside = torch.logical_and(t >= 0.0, t <= 1.0).to(t.dtype)
        return upstream * torch.where(torch.isnan(t), t, inside)


def unit_clamp(t):
    """`_formula._unit_clip` of a tensor `t` for autodiff (`_UnitClamp`)."""
    return _UnitClamp.apply(t)


PRIMITIVES = _formula.PORTABLE._replace(unit_clip=unit_clamp, overshoot=limited_overshoot)


def forward(x, coefficients, bounds, extrapolation):
    """`_formula._evaluate`, in place."""
    degree = _degree_of(coefficients)
    t, s, inverse_width = _unit_points(x, bounds, extrapolation)
    values = _horner(t, s, coefficients * _binomials(degree, coefficients))
    if extrapolation == "linear":
        # slope_lower * min(d, 0) + slope_upper * max(d, 0) for the overshoot
        # d in t units, as slope_lower * d + (slope_upper - slope_lower) * relu(d).
        slope_lower, bend = _formula._linear_slopes(coefficients)
        overshoot = _overshoot(x, bounds, inverse_width)
        values.addcmul_(overshoot, slope_lower)
        values.addcmul_(overshoot.relu_(), bend)
    return values


def _reduce_to(tensor, shape):
    """`_formula._sum_to_shape` by PyTorch's own reductions."""
    leading = tensor.dim() - len(shape)
    if leading:
        tensor = tensor.sum(dim=tuple(range(leading)))
    return tensor.sum_to_size(shape)


class _BernsteinPolynomial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coefficients, bounds, extrapolation):
        ctx.save_for_backward(x, coefficients, bounds)
        ctx.extrapolation = extrapolation
        return forward(x, coefficients, bounds, extrapolation)

    @staticmethod
    def backward(ctx, upstream):
        x, coefficients, bounds = ctx.saved_tensors
        if torch.is_grad_enabled():
            # A graph of the gradient is wanted (`create_graph=True`), which
            # the in-place kernels cannot record.
            return differentiable_gradients(
                lambda x, coefficients, bounds: _formula._evaluate(
                    x, coefficients, bounds, ctx.extrapolation
                ),
                (x, coefficients, bounds),
                upstream,
                ctx.needs_input_grad[:3],
            ) + (None,)
        return gradients(
            upstream, x, coefficients, bounds, ctx.extrapolation, ctx.needs_input_grad[:3]
        ) + (None,)


def differentiable_gradients(formula, inputs, upstream, needs, create_graph=True):
    """The gradients of `formula(*inputs)` for the upstream gradient(s), by
    autodiff of the formula with a graph of their own, so that they can be
    differentiated again: the backward of a fast path when autograd records
    it (`create_graph=True`, a gradient penalty). `needs` says which inputs
    want one (the others get `None`); an output whose upstream gradient is
    `None` is left out. (`create_graph=False`: the same gradients, without
    a graph.)"""
    if not isinstance(upstream, (tuple, list)):
        upstream = (upstream,)
    if not any(needs):
        return (None,) * len(inputs)
    with torch.enable_grad():
        # Aliases, nodes of their own: the gradient for an input must not
        # take the paths through another input that depends on it (batch
        # statistics of `x`), which the caller's graph adds.
        inputs = [tensor.view_as(tensor) for tensor in inputs]
        wanted = [tensor for tensor, need in zip(inputs, needs) if need]
        outputs = formula(*inputs)
        if not isinstance(outputs, (tuple, list)):
            outputs = (outputs,)
        pairs = [(output, grad) for output, grad in zip(outputs, upstream) if grad is not None]
        if not pairs:
            return (None,) * len(inputs)
        found = iter(
            torch.autograd.grad(
                [output for output, _ in pairs],
                wanted,
                [grad for _, grad in pairs],
                create_graph=create_graph,
                allow_unused=True,
            )
        )
    grads = []
    for tensor, need in zip(inputs, needs):
        grad = next(found) if need else None
        grads.append(torch.zeros_like(tensor) if need and grad is None else grad)
    return tuple(grads)


def gradients(upstream, x, coefficients, bounds, extrapolation, needs):
    """`(dL/dx, dL/dc, dL/d bounds)` of the polynomial at `x` for the upstream
    gradient; `needs` says which are wanted (the others are `None`)."""
    need_x, need_coefficients, need_bounds = needs
    degree = _degree_of(coefficients)
    t, s, inverse_width = _unit_points(x, bounds, extrapolation)
    grad_x = grad_coefficients = grad_bounds = None

    if need_coefficients or need_bounds:
        # The input gradient comes from the same basis products.
        slope_table = _slope_table(coefficients, inverse_width) if need_x else None
        sums, slope_rows = _basis_sums(
            upstream, t, s, degree, coefficients.shape[:-1], slope_table
        )
        grad_coefficients, grad_bounds = _parameter_gradients(
            sums, upstream, x, inverse_width, coefficients, bounds, extrapolation
        )
    elif need_x:
        # dσ/dt; at a clamped t it is the end slope, the linear
        # extrapolation's slope.
        difference = _formula.derivative_coefficients(coefficients)
        slope = _horner(t, s, difference * _binomials(degree - 1, coefficients))
        slope_rows = slope.mul_(upstream).mul_(inverse_width)
    if need_x:
        if extrapolation == "clip":
            # No slope outside; NaN inputs keep their NaN slope.
            lower, upper = _last_axis_first(bounds)
            slope_rows.masked_fill_(torch.lt(x, lower).logical_or_(x > upper), 0.0)
        grad_x = _reduce_to(slope_rows, x.shape)
    return grad_x, grad_coefficients, grad_bounds


def _slope_table(coefficients, inverse_width):
    """`dσ/dx` in the degree-`n` basis, degree axis first: `w_j` with
    `dσ/dx = sum_j w_j t^j (1 - t)^(n - j)`.

    The derivative's coefficients `n (c_{k+1} - c_k)` elevated to degree `n`
    are `e_j = j Δ_{j-1} + (n - j) Δ_j` (`Δ_k = c_{k+1} - c_k`, zero outside
    `0 ... n-1`), so `w_j = e_j C(n, j) / (u - l)`: the input gradient is a
    combination of the products the coefficient gradient sums anyway.
    """
    degree = _degree_of(coefficients)
    steps = coefficients[..., 1:] - coefficients[..., :-1]
    zero = torch.zeros_like(steps[..., :1])
    j = torch.arange(degree + 1, dtype=coefficients.dtype, device=coefficients.device)
    elevated = j * torch.cat([zero, steps], -1) + (degree - j) * torch.cat([steps, zero], -1)
    scaled = elevated * _binomials(degree, coefficients) * inverse_width.unsqueeze(-1)
    return _last_axis_first(scaled)


# Largest (degree + 1) x batch x neurons buffer built at once; bigger batches
# are summed in row chunks, so the backward pass needs a bounded amount of
# extra memory, not degree + 1 activations' worth. On CPU larger chunks gain
# nothing. On an accelerator each chunk costs a dozen kernel launches, so the
# limit is larger there.
_MAX_BUFFER_ELEMENTS = 1 << 22
_MAX_ACCELERATOR_BUFFER_ELEMENTS = 1 << 25


def _max_buffer_elements(device):
    if device.type == "cpu":
        return _MAX_BUFFER_ELEMENTS
    return _MAX_ACCELERATOR_BUFFER_ELEMENTS


def _basis_sums(upstream, t, s, degree, neuron_shape, slope_table=None):
    """`sum over the batch of upstream * t^k s^(n-k)`, shape `(n + 1,) + neuron_shape`.

    With a `slope_table` (`_slope_table`) also `upstream * dσ/dx` at every
    point, from the same products: `(sums, slope_rows)`, else `(sums, None)`.
    """
    output_shape = torch.broadcast_shapes(upstream.shape, t.shape)
    batch_rank = len(output_shape) - len(neuron_shape)
    rows = output_shape[0] if batch_rank else 1
    per_row = (degree + 1) * math.prod(output_shape[1:] if batch_rank else output_shape)
    chunk = max(1, min(rows, _max_buffer_elements(t.device) // max(per_row, 1)))
    slope_rows = None
    if slope_table is not None:
        slope_rows = torch.empty(output_shape, dtype=t.dtype, device=t.device)

    def row_slice(tensor, start):
        if batch_rank and tensor.dim() == len(output_shape) and tensor.shape[0] == rows:
            return tensor[start : start + chunk]
        return tensor

    total = None
    for start in range(0, rows, chunk):
        g, t_rows, s_rows = (row_slice(v, start) for v in (upstream, t, s))
        shape = torch.broadcast_shapes(g.shape, t_rows.shape)
        # weighted[k] = g t^k, then times s^(n - k), all in one buffer.
        weighted = torch.empty((degree + 1,) + shape, dtype=t.dtype, device=t.device)
        weighted[0] = g
        for k in range(1, degree + 1):
            torch.mul(weighted[k - 1], t_rows, out=weighted[k])
        s_power = s_rows.clone()
        for k in range(degree - 1, -1, -1):
            weighted[k].mul_(s_power)
            if k:
                s_power.mul_(s_rows)
        if slope_rows is not None:
            slope_chunk = row_slice(slope_rows, start)
            torch.mul(weighted[0], slope_table[0], out=slope_chunk)
            for k in range(1, degree + 1):
                slope_chunk.addcmul_(weighted[k], slope_table[k])
        # Reduce with the degree axis in front (contiguous rows); a moved-axis
        # reduction is much slower on CPU.
        batch_axes = tuple(range(1, 1 + batch_rank))
        if batch_axes:
            weighted = weighted.sum(dim=batch_axes)
        sums = weighted.sum_to_size((degree + 1,) + tuple(neuron_shape))
        total = sums if total is None else total.add_(sums)
    return total, slope_rows


def _parameter_gradients(sums, upstream, x, inverse_width, coefficients, bounds, extrapolation):
    """Gradients of the coefficients and the bounds (`_formula._parameter_gradients`)
    from the basis sums (`_basis_sums`) and the two sums outside the interval."""
    degree = _degree_of(coefficients)
    neuron_shape = coefficients.shape[:-1]
    basis_sums = torch.movedim(sums, 0, -1) * _binomials(degree, coefficients)
    outside = ()
    if extrapolation == "clip":
        lower, upper = _last_axis_first(bounds)
        outside = (
            _reduce_to(torch.where(x < lower, upstream, 0.0), neuron_shape),
            _reduce_to(torch.where(x > upper, upstream, 0.0), neuron_shape),
        )
    elif extrapolation == "linear":
        # The overshoot, summed below and above the interval, in t units.
        overshoot = _overshoot(x, bounds, inverse_width)
        overshoot_sum = _reduce_to(upstream * overshoot, neuron_shape)
        above = _reduce_to(upstream * overshoot.relu_(), neuron_shape)
        outside = (overshoot_sum - above, above)
    return _formula._parameter_gradients(
        basis_sums, coefficients, bounds, extrapolation, *outside
    )


def bernstein_polynomial(x, coefficients, bounds, extrapolation):
    """Same contract as `keras_bernstein.ops.bernstein_polynomial` (degree >= 1)."""
    return _BernsteinPolynomial.apply(x, coefficients, bounds, extrapolation)
