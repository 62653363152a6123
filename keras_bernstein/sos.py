"""Globally optimal polynomial activations by the Moment-SOS hierarchy.

With the weights `W_1 ... W_{D+1}` of a network fixed, its output

`f(x; c) = W_{D+1} p_D(W_D ... p_1(W_1 x))`, `p_ℓ(t) = Σ_j c_{ℓ,j} t^j`
(elementwise),

is a polynomial in the activation coefficients `c`, so fitting them is a
polynomial optimisation problem. Following Zhang, Nie and Tang, the fit

`minimise θ  subject to  θ ± r_j(c) >= 0`,

with `r = (1/N) Σ_i (f(x_i; c) − y_i)` (`loss="mean"`, the paper's) or every
`r = f(x_i; c) − y_i` (`loss="per_sample"`), is relaxed into the order-`k`
moment problem over moments `w_α` of `(c, θ)`: `w_0 = 1`, the moment matrix
`M_k[w] ⪰ 0` and the localizing matrix of every constraint `⪰ 0`, minimising
`w_θ`. `θ` enters only linearly, so the matrices are indexed by the monomials
of `c` of degree `<= k` (respectively `<= k − ⌈deg r / 2⌉`) plus the single
monomial `θ`, not by every monomial of `(c, θ)`: still a relaxation (each
matrix is `L(g m mᵀ)` for a list `m` of monomials), with 85 rows instead of
120 for 6 coefficients at order 3. Its value is a lower bound of the true
minimum. The minimiser is read off the first moments `w_{c_i}`; the result is
certified when that point attains the bound (then it is a global minimiser).
Flat truncation (`rank M_t = rank M_{t−k0}` for some `t <= k`, `k0` the
largest half-degree of the residuals, ranks of the `c`-block) is reported
too; with rank 1 it implies the bound is attained. The order is raised until
one of the two holds.

The constant term of `p_ℓ` is fixed to 1 for `ℓ < D` (a scaling symmetry);
that of the last activation is free. The recovered power-basis coefficients
turn into Bernstein coefficients on an interval with `power_to_bernstein`, to
initialise a `keras_bernstein.Bernstein` layer.

Needs `cvxpy` and, for the default solver, `clarabel`
(`pip install keras-bernstein[sos]`). Nearly all the time is Clarabel's
factorisation of a dense block the size of the moment matrix's triangle;
relaxations whose moment matrix has more than `MAX_MOMENT_MATRIX_SIZE` rows
(6 coefficients at order 3, about half a minute on a shared 2-core machine)
are refused unless `force=True`. See `docs/sos.md` for measured times.

Reference:
    Zhang, Nie and Tang, "Learning Polynomial Activation Functions for Deep
    Neural Networks", PMLR 321:90-99, 2026 (arXiv:2510.03682); Lasserre,
    "Global optimization with polynomials and the problem of moments", SIAM
    J. Optim. 11 (2001); Curto and Fialkow, flat extensions (1996);
    Henrion and Lasserre, "Detecting global optimality and extracting
    solutions in GloptiPoly" (2005).
"""

import itertools
import math
import numbers
import time
import warnings

import numpy as np

from keras_bernstein._arguments import MAX_DEGREE

LOSSES = ("mean", "per_sample")
# Largest moment matrix solved without `force=True`: 6 coefficients at
# order 3 (monomials of degree <= 3 in 6 unknowns, plus θ); the solver's cost
# grows like the sixth power of the rows (timings in docs/sos.md).
MAX_MOMENT_MATRIX_SIZE = math.comb(6 + 3, 3) + 1
# Interior-point solutions lie in the relative interior of the optimal face:
# the spurious eigenvalues of a flat moment matrix shrink with the duality
# gap, so the rank test needs tighter tolerances than the solver defaults.
# Clarabel's KKT system holds a dense block of the moment matrix's triangle
# size; its supernodal, multithreaded `faer` factorisation is about 10 times
# faster on it than the default `qdldl` (measured at order 3, 6 coefficients).
SOLVER_OPTIONS = {
    "CLARABEL": {
        "tol_gap_abs": 1e-10,
        "tol_gap_rel": 1e-10,
        "tol_feas": 1e-10,
        "direct_solve_method": "faer",
    },
}


def power_to_bernstein(power_coefficients, bounds, degree=None):
    """Bernstein coefficients on `[l, u]` of `p(x) = Σ_j a_j x^j` (NumPy float64).

    Substitutes `x = l + (u − l) t`, `q(t) = Σ_k b_k t^k` with
    `b_k = (u − l)^k Σ_{j>=k} a_j C(j, k) l^(j−k)`, then converts the monomials
    `t^k = Σ_{i>=k} C(i, k) / C(n, k) B_{n,i}(t)`.

    Args:
        power_coefficients: 1-D array `a_0 ... a_d`, constant term first.
        bounds: `(l, u)` with `l < u`.
        degree: Degree `n` of the Bernstein form, from `d` to 100 (default
            `d`); larger degrees elevate it.

    Returns:
        Float64 array `(n + 1,)`: with these as `coefficients` and `bounds`
        as the layer's interval, a `Bernstein` layer computes `p` on `[l, u]`
        (and everywhere with `extrapolation="polynomial"`).

    Example:
        >>> power_to_bernstein([0.0, 0.0, 1.0], (0.0, 1.0))   # x^2
        array([0., 0., 1.])
    """
    power = np.asarray(power_coefficients, dtype="float64")
    if power.ndim != 1 or power.size == 0:
        raise ValueError(
            "`power_coefficients` must be a non-empty 1-D array. "
            f"Received: power_coefficients={power_coefficients!r}"
        )
    lower, upper = (float(b) for b in bounds)
    if not (np.isfinite(lower) and np.isfinite(upper) and lower < upper):
        raise ValueError(
            f"`bounds` must be two finite numbers (l, u) with l < u. Received: bounds={bounds!r}"
        )
    power_degree = power.size - 1
    degree = power_degree if degree is None else degree
    if (
        isinstance(degree, bool)
        or not isinstance(degree, numbers.Integral)
        or not power_degree <= degree <= MAX_DEGREE
    ):
        raise ValueError(
            f"`degree` must be an integer from {power_degree}, the polynomial's "
            f"degree, to {MAX_DEGREE} (a layer's largest). Received: degree={degree!r}"
        )
    width = upper - lower
    shifted = np.array(
        [
            width**k
            * sum(power[j] * math.comb(j, k) * lower ** (j - k) for j in range(k, power_degree + 1))
            for k in range(power_degree + 1)
        ]
    )
    bernstein = np.zeros(degree + 1)
    for i in range(degree + 1):
        for k in range(min(i, power_degree) + 1):
            bernstein[i] += math.comb(i, k) / math.comb(degree, k) * shifted[k]
    return bernstein


def network_output(weights, activations, x):
    """`W_{D+1} p_D(... p_1(W_1 x))` for NumPy inputs (a reference forward pass).

    Args:
        weights: List of `D + 1` matrices `W_ℓ` of shape `(out, in)` (the
            transpose of a Keras `Dense` kernel).
        activations: List of `D` 1-D arrays of power coefficients, constant
            term first.
        x: Array `(N, in)` of samples.

    Returns:
        Array `(N, out)`.
    """
    hidden = np.asarray(x, dtype="float64").T
    for matrix, coefficients in zip(weights[:-1], activations):
        hidden = np.polynomial.polynomial.polyval(np.asarray(matrix) @ hidden, coefficients)
    return (np.asarray(weights[-1]) @ hidden).T


class _Polynomial:
    """A sparse polynomial: `{exponent tuple: coefficient}` over fixed variables."""

    def __init__(self, terms, num_variables):
        self.terms = {e: c for e, c in terms.items() if c != 0.0}
        self.num_variables = num_variables

    @classmethod
    def constant(cls, value, num_variables):
        return cls({(0,) * num_variables: float(value)}, num_variables)

    @classmethod
    def variable(cls, index, num_variables):
        exponent = [0] * num_variables
        exponent[index] = 1
        return cls({tuple(exponent): 1.0}, num_variables)

    def __add__(self, other):
        terms = dict(self.terms)
        for e, c in other.terms.items():
            terms[e] = terms.get(e, 0.0) + c
        return _Polynomial(terms, self.num_variables)

    def scale(self, factor):
        return _Polynomial(
            {e: c * float(factor) for e, c in self.terms.items()}, self.num_variables
        )

    def __mul__(self, other):
        terms = {}
        for (e1, c1), (e2, c2) in itertools.product(self.terms.items(), other.terms.items()):
            e = tuple(a + b for a, b in zip(e1, e2))
            terms[e] = terms.get(e, 0.0) + c1 * c2
        return _Polynomial(terms, self.num_variables)

    @property
    def degree(self):
        return max((sum(e) for e in self.terms), default=0)


def _linear_combination(matrix, polynomials, num_variables):
    rows = []
    for row in np.asarray(matrix, dtype="float64"):
        total = _Polynomial.constant(0.0, num_variables)
        for weight, polynomial in zip(row, polynomials):
            if weight != 0.0:
                total = total + polynomial.scale(weight)
        rows.append(total)
    return rows


def _monomials(num_variables, max_degree):
    """Exponents of all monomials of degree <= `max_degree`, graded order."""
    result = []
    for degree in range(max_degree + 1):
        for combination in itertools.combinations_with_replacement(
            range(num_variables), degree
        ):
            exponent = [0] * num_variables
            for index in combination:
                exponent[index] += 1
            result.append(tuple(exponent))
    return result


def _unknowns(degrees):
    """`{(layer, power): variable index}`: `c_{l,1..d}` for `l < D`, `c_{D,0..d}`."""
    variable_of = {}
    for layer, degree in enumerate(degrees):
        first = 0 if layer == len(degrees) - 1 else 1
        for power in range(first, degree + 1):
            variable_of[layer, power] = len(variable_of)
    return variable_of


def _constraint_polynomials(weights, x, y, degrees, loss, variable_of):
    """The polynomials `θ ± r_j(c)` over the variables `(c, θ)`."""
    num_variables = len(variable_of) + 1

    def activation(layer, argument):
        result = _Polynomial.constant(0.0, num_variables)
        term = _Polynomial.constant(1.0, num_variables)
        for power in range(degrees[layer] + 1):
            if power:
                term = term * argument
            if (layer, power) in variable_of:
                coefficient = _Polynomial.variable(variable_of[layer, power], num_variables)
            else:
                coefficient = _Polynomial.constant(1.0, num_variables)
            result = result + coefficient * term
        return result

    outputs = []
    for sample in x:
        hidden = [_Polynomial.constant(v, num_variables) for v in weights[0] @ sample]
        for layer in range(len(degrees)):
            hidden = [activation(layer, h) for h in hidden]
            hidden = _linear_combination(weights[layer + 1], hidden, num_variables)
        outputs.append(hidden)
    residuals = []
    if loss == "mean":
        for j in range(y.shape[1]):
            total = _Polynomial.constant(-y[:, j].mean(), num_variables)
            for sample_outputs in outputs:
                total = total + sample_outputs[j].scale(1.0 / len(outputs))
            residuals.append(total)
    else:
        for sample_outputs, targets in zip(outputs, y):
            for output, target in zip(sample_outputs, targets):
                residuals.append(output + _Polynomial.constant(-target, num_variables))
    theta = _Polynomial.variable(num_variables - 1, num_variables)
    polynomials = []
    for residual in residuals:
        polynomials.append(theta + residual)
        polynomials.append(theta + residual.scale(-1.0))
    return polynomials


class MomentSOSResult:
    """What `fit_polynomial_activations` found.

    Attributes:
        order: Relaxation order `k` of the last relaxation solved.
        certified: Whether the first moments attain the relaxation's bound
            (to `optimality_tolerance`), so they are a global minimiser and
            `objective` the global minimum.
        objective: Optimal value of the order-`k` relaxation: a lower bound
            of the minimum of `‖r(c)‖_∞`, equal to it when certified.
        coefficients: Per activation, float64 power coefficients (constant
            first, including the fixed 1s), read off the first moments;
            `None` unless certified.
        rank: Rank of the flat moment matrix (`None` if not flat).
        history: One dict per order tried: `order`, `objective`, `attained`
            (`‖r‖_∞` at the first moments), `ranks` (of `M_0 ... M_k`),
            `flat`, `certified`, `status`, `iterations`, `seconds`.
    """

    def __init__(self, order, certified, objective, coefficients, rank, history):
        self.order = order
        self.certified = certified
        self.objective = objective
        self.coefficients = coefficients
        self.rank = rank
        self.history = history

    def __repr__(self):
        return (
            f"MomentSOSResult(order={self.order}, certified={self.certified}, "
            f"objective={self.objective:.3g}, rank={self.rank})"
        )


def _numerical_rank(matrix, tolerance):
    eigenvalues = np.linalg.eigvalsh((matrix + matrix.T) / 2)
    return int(np.sum(eigenvalues > tolerance * max(1.0, eigenvalues[-1])))


def fit_polynomial_activations(
    weights,
    x,
    y,
    degrees,
    loss="mean",
    max_order=3,
    solver="CLARABEL",
    rank_tolerance=1e-3,
    optimality_tolerance=1e-5,
    force=False,
    verbose=False,
):
    """Globally optimal activation coefficients for fixed weights (Moment-SOS).

    Solves the order-`k` moment relaxation of
    `min_c ‖r(c)‖_∞` for `k = k0, k0 + 1, ... max_order` until its first
    moments attain its bound (a certified global minimiser) or flat
    truncation holds; see the module docstring.

    Reference:
        Zhang, Nie and Tang, PMLR 321:90-99, 2026 (arXiv:2510.03682).

    Args:
        weights: List of `D + 1` matrices `W_ℓ`, shape `(out, in)` each (the
            paper's orientation, the transpose of a Keras `Dense` kernel).
        x: Array `(N, in)` of input samples.
        y: Array `(N, out)` of outputs.
        degrees: List of `D` positive integers, the degree of each `p_ℓ`.
        loss: `"mean"` (the paper's: ∞-norm of the sample-averaged residual)
            or `"per_sample"` (∞-norm over every sample's residual).
        max_order: Highest relaxation order tried.
        solver: A `cvxpy` solver name; default Clarabel.
        rank_tolerance: Eigenvalues below this times `max(1, largest)` count
            as zero in the rank test.
        optimality_tolerance: The first moments are certified optimal when
            their loss exceeds the relaxation's bound by at most this times
            `max(1, max |y|)`.
        force: Solve relaxations whose moment matrix exceeds
            `MAX_MOMENT_MATRIX_SIZE` rows (6 coefficients at order 3)
            instead of refusing.
        verbose: Print one line per order.

    Returns:
        A `MomentSOSResult`.

    Raises:
        ImportError: if `cvxpy` is missing.
        ValueError: on inconsistent shapes or a problem that is too large.

    Example:
        >>> result = fit_polynomial_activations([W1, W2, W3], x, y, degrees=[2, 1])
        >>> result.certified, result.coefficients
        (True, [array([1., 1., -2.]), array([1., -1.])])
    """
    try:
        import cvxpy as cp
    except ImportError as error:
        raise ImportError(
            "`fit_polynomial_activations` needs cvxpy: "
            "`pip install keras-bernstein[sos]`."
        ) from error
    weights = [np.asarray(w, dtype="float64") for w in weights]
    x = np.atleast_2d(np.asarray(x, dtype="float64"))
    y = np.atleast_2d(np.asarray(y, dtype="float64"))
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}. Received: loss={loss!r}")
    if solver not in cp.installed_solvers():
        raise ValueError(
            f"`solver` must be an installed cvxpy solver, one of "
            f"{cp.installed_solvers()}. Received: solver={solver!r}"
        )
    if len(weights) < 2 or any(w.ndim != 2 for w in weights):
        raise ValueError(
            "`weights` must be a list of at least two matrices. "
            f"Received: shapes={[w.shape for w in weights]}"
        )
    if len(degrees) != len(weights) - 1 or any(
        isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1
        for d in degrees
    ):
        raise ValueError(
            f"`degrees` must hold {len(weights) - 1} positive integers, one per "
            f"activation. Received: degrees={degrees!r}"
        )
    for previous, matrix in zip(weights[:-1], weights[1:]):
        if matrix.shape[1] != previous.shape[0]:
            raise ValueError(
                "Consecutive weights must chain: `W_{l+1}.shape[1] == "
                f"W_l.shape[0]`. Received: shapes={[w.shape for w in weights]}"
            )
    if x.shape[1] != weights[0].shape[1] or y.shape != (x.shape[0], weights[-1].shape[0]):
        raise ValueError(
            "`x` must be (N, W_1.shape[1]) and `y` (N, W_{D+1}.shape[0]). "
            f"Received: x.shape={x.shape}, y.shape={y.shape}"
        )

    variable_of = _unknowns(degrees)
    num_coefficients = len(variable_of)
    constraints_polynomials = _constraint_polynomials(
        weights, x, y, degrees, loss, variable_of
    )
    half_degree = max(1, max(math.ceil(g.degree / 2) for g in constraints_polynomials))

    if isinstance(max_order, bool) or not isinstance(max_order, numbers.Integral) or (
        max_order < half_degree
    ):
        raise ValueError(
            f"`max_order` must be at least {half_degree}, half the degree of the "
            f"residuals (here {2 * half_degree - 1} or {2 * half_degree}). "
            f"Received: max_order={max_order}"
        )
    data_scale = max(1.0, float(np.max(np.abs(y))))
    history = []
    for order in range(half_degree, max_order + 1):
        size = math.comb(num_coefficients + order, order) + 1
        if size > MAX_MOMENT_MATRIX_SIZE and not force:
            raise ValueError(
                f"The order-{order} relaxation with {num_coefficients} unknown "
                f"coefficients has a {size}-row moment matrix, more than "
                f"MAX_MOMENT_MATRIX_SIZE={MAX_MOMENT_MATRIX_SIZE} (6 coefficients "
                "at order 3, about 30 s on 2 cores; the time grows like the "
                "sixth power of the rows). Lower `max_order` or the degrees, or "
                "pass force=True to solve it anyway. "
                f"Received: max_order={max_order}"
            )
        entry = _solve_relaxation(
            cp, constraints_polynomials, num_coefficients, order, half_degree,
            solver, rank_tolerance,
        )
        first_moments = entry.pop("first_moments")
        candidate = None
        entry["attained"] = math.nan
        if first_moments is not None:
            candidate = _activations(first_moments, degrees, variable_of)
            entry["attained"] = _loss(weights, candidate, x, y, loss)
        # The relaxation's value is a lower bound of the minimum, so a point
        # attaining it is a global minimiser, flat or not.
        entry["certified"] = bool(
            entry["attained"] - entry["objective"] <= optimality_tolerance * data_scale
        )
        history.append(entry)
        if verbose:
            print(
                f"order {order}: objective {entry['objective']:.6g}, attained "
                f"{entry['attained']:.6g}, ranks {entry['ranks']}, flat "
                f"{entry['flat']}, {entry['status']}, {entry['iterations']} "
                f"iterations, {entry['seconds']:.1f} s"
            )
        if entry["certified"] or entry["flat"]:
            break
    last = history[-1]
    return MomentSOSResult(
        order=last["order"],
        certified=last["certified"],
        objective=last["objective"],
        coefficients=candidate if last["certified"] else None,
        rank=last["rank"],
        history=history,
    )


def _activations(first_moments, degrees, variable_of):
    """Per-layer power coefficients with the unknowns set to `first_moments`."""
    activations = []
    for layer, degree in enumerate(degrees):
        values = np.ones(degree + 1)
        for power in range(degree + 1):
            if (layer, power) in variable_of:
                values[power] = first_moments[variable_of[layer, power]]
        activations.append(values)
    return activations


def _loss(weights, activations, x, y, loss):
    """`‖r(c)‖_∞` at given activations (the value the relaxation bounds)."""
    residuals = network_output(weights, activations, x) - y
    if loss == "mean":
        residuals = residuals.mean(axis=0)
    return float(np.max(np.abs(residuals)))


def _solve_relaxation(
    cp, constraint_polynomials, num_coefficients, order, half_degree, solver,
    rank_tolerance,
):
    """Solves one order of the moment relaxation and runs the flat-truncation test.

    The matrices are indexed by the monomials of `c` and the single monomial
    `θ`: `θ` enters the problem linearly, and the full `(c, θ)` basis
    (120 rows instead of 85 for 6 coefficients at order 3) costs about
    `(7260 / 3655)^3 ≈ 8` times more per solver iteration. The `θ` row is
    what forces `w_{θ c^δ} = 0` when the bound is 0 (through `w_{θ²}`), so
    noise-free residuals vanish against every multiplier, as in the full
    relaxation; without it the paper's example is not flat at order 2.
    """
    from scipy import sparse

    theta = num_coefficients
    theta_exponent = tuple(int(i == theta) for i in range(num_coefficients + 1))
    # Moments are numbered as the matrices first need them (`w_0` first).
    position = {(0,) * (num_coefficients + 1): 0, theta_exponent: 1}

    def basis(max_degree, with_theta=True):
        monomials = [alpha + (0,) for alpha in _monomials(num_coefficients, max_degree)]
        return monomials + [theta_exponent] if with_theta else monomials

    def localizing(polynomial, size_degree):
        """`L[α, β] = Σ_γ g_γ w_{α+β+γ}` as a sparse operator on the moments."""
        rows_basis = basis(size_degree)
        size = len(rows_basis)
        rows, columns, values = [], [], []
        for b, beta in enumerate(rows_basis):
            for a, alpha in enumerate(rows_basis):
                for gamma, coefficient in polynomial.terms.items():
                    exponent = tuple(p + q + r for p, q, r in zip(alpha, beta, gamma))
                    rows.append(a + size * b)
                    columns.append(position.setdefault(exponent, len(position)))
                    values.append(coefficient)
        return size, rows, columns, values

    one = _Polynomial.constant(1.0, num_coefficients + 1)
    operators = [localizing(one, order)]
    for polynomial in constraint_polynomials:
        operators.append(localizing(polynomial, order - math.ceil(polynomial.degree / 2)))
    w = cp.Variable(len(position))
    constraints = [w[0] == 1]
    for size, rows, columns, values in operators:
        operator = sparse.csr_matrix(
            (values, (rows, columns)), shape=(size * size, len(position))
        )
        constraints.append(cp.reshape(operator @ w, (size, size), order="F") >> 0)
    problem = cp.Problem(cp.Minimize(w[position[theta_exponent]]), constraints)
    started = time.time()
    status = None
    with warnings.catch_warnings():
        # "Solution may be inaccurate": the status is returned in `history`.
        warnings.simplefilter("ignore", UserWarning)
        try:
            problem.solve(solver=solver, **SOLVER_OPTIONS.get(solver, {}))
        except cp.error.SolverError as error:
            # A failed order certifies nothing; report it instead of raising.
            status = f"solver_error: {error}"
    seconds = time.time() - started
    iterations = getattr(problem.solver_stats, "num_iters", None)
    if status is not None or w.value is None:
        return {
            "order": order, "objective": math.nan, "ranks": [], "flat": False,
            "rank": None, "status": status or problem.status, "seconds": seconds,
            "iterations": iterations, "first_moments": None,
        }
    values = w.value
    rows_basis = basis(order, with_theta=False)
    # Leading principal blocks of M_k are the M_t, t < k (graded order).
    full = np.array(
        [[values[position[tuple(p + q for p, q in zip(a, b))]] for b in rows_basis]
         for a in rows_basis]
    )
    ranks = [
        _numerical_rank(full[:n, :n], rank_tolerance)
        for n in (math.comb(num_coefficients + t, t) for t in range(order + 1))
    ]
    flat_orders = [
        t for t in range(half_degree, order + 1) if ranks[t] == ranks[t - half_degree]
    ]
    flat = bool(flat_orders)
    return {
        "order": order,
        "objective": float(problem.value),
        "ranks": ranks,
        "flat": flat,
        "rank": ranks[flat_orders[-1]] if flat else None,
        "status": problem.status,
        "seconds": seconds,
        "iterations": iterations,
        "first_moments": full[0, 1 : 1 + num_coefficients],
    }
