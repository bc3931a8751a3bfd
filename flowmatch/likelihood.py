"""Exact log-likelihood of a flow by the instantaneous change of variables.

Along a solution of dx/dt = v(x, t) the density of the flowed distribution obeys (Chen et al. 2018)

    d/dt log p_t(x_t) = -div v(x_t, t),   div v = sum_i dv_i / dx_i = tr(dv/dx),

so a data point x_1 at t = 1 has

    log p_1(x_1) = log p_0(x_0) - int_0^1 div v(x_t, t) dt,    p_0 = N(0, I).

**Scoring** (:func:`log_prob`) integrates the augmented state [x, a] *backward* from t = 1 to t = 0,

    dx/dt = v(x, t),   da/dt = div v(x, t),   x(1) = x_1,   a(1) = 0,

so that a(0) = -int_0^1 div v dt and log p_1(x_1) = log N(x(0); 0, I) + a(0).
**Sampling with densities** (:func:`sample_with_log_prob`) runs the same ODE *forward* from
x(0) = x_0 ~ N(0, I), a(0) = 0, with da/dt = -div v: log p_1(x(1)) = log N(x_0; 0, I) + a(1).

The divergence is computed one of two ways:

- ``exact``: div v = sum_i e_i^T (dv/dx) e_i, one vector-Jacobian product (backward pass) per
  dimension, so a velocity evaluation costs D backward passes. Exact up to rounding.
- ``hutchinson``: div v = E_eps[eps^T (dv/dx) eps] for any probe with E[eps eps^T] = I (Hutchinson
  1989); with Rademacher probes (eps_i = +-1) the estimate eps^T J eps = tr J + sum_{i<j} (J_ij + J_ji)
  eps_i eps_j has variance sum_{i<j} (J_ij + J_ji)^2, the smallest of all such probes. Each of the K
  probes costs one backward pass and their mean is used. The probes are drawn once per point and held
  fixed along its trajectory (as in FFJORD), so the augmented ODE stays smooth for adaptive solvers
  and, because x(t) does not depend on eps, the log-density estimate is unbiased with variance
  sum_{i<j} (M_ij + M_ji)^2 / K, M = int_0^1 (dv/dx)(x_t, t) dt.

``divergence="auto"`` takes ``exact`` up to :data:`EXACT_MAX_DIM` dimensions and ``hutchinson`` above.

Everything here works in the coordinates of the velocity field (the model's standardised
coordinates for a trained flow); ``Flow.log_prob`` adds log |dz/dx| of the standardisation
(:meth:`flowmatch.data.Standardizer.log_abs_det`) to report densities in data coordinates.

Example::

    res = log_prob(model, z, solver="dopri5", atol=1e-5, rtol=1e-5)    # z: (n, D) model coordinates
    res.log_prob, res.nfe, res.divergence
    summary = summarize(res.log_prob, dim=D)                            # NLL in nats and bits/dim
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from flowmatch.errors import FlowmatchError
from flowmatch.solvers.integration import integrate
from flowmatch.solvers.tableaus import SOLVERS

#: ``divergence="auto"`` uses the exact divergence up to this many dimensions, Hutchinson above.
EXACT_MAX_DIM = 16
DIVERGENCES = ("auto", "exact", "hutchinson")

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class LogDensity:
    """Per-point log-densities (float64, shape (n,)) and how they were computed.

    ``nfe`` is the number of velocity evaluations of the solve (for dopri5 the largest count over
    the batches; each evaluation also costs ``D`` (exact) or ``probes`` (hutchinson) backward passes).
    """

    log_prob: torch.Tensor
    nfe: int
    divergence: str
    probes: int


@dataclass
class NLL:
    """Mean negative log-likelihood over n points, in nats and in bits per dimension, with standard errors.

    nll = -(1/n) sum_i log p(x_i);  nll_se = std_i(log p(x_i)) / sqrt(n) (sample std, ddof = 1);
    bpd = nll / (D ln 2) and bpd_se = nll_se / (D ln 2).
    """

    n: int
    dim: int
    nll: float
    nll_se: float
    bpd: float
    bpd_se: float

    def to_dict(self) -> dict:
        return asdict(self)


def log_normal(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) per row: -|x|^2 / 2 - (D / 2) log(2 pi)."""
    return -0.5 * x.pow(2).sum(dim=1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def resolve_divergence(divergence: str, dim: int) -> str:
    """``exact`` or ``hutchinson``: ``auto`` is exact for dim <= EXACT_MAX_DIM."""
    if divergence not in DIVERGENCES:
        raise FlowmatchError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if divergence == "auto":
        return "exact" if dim <= EXACT_MAX_DIM else "hutchinson"
    return divergence


def rademacher(shape: tuple[int, ...], generator: torch.Generator, *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Independent +-1 entries with probability 1/2 each."""
    bits = torch.randint(0, 2, shape, generator=generator)
    return (bits * 2 - 1).to(dtype=dtype, device=device)


def divergence(velocity: Velocity, x: torch.Tensor, t: torch.Tensor, probes: torch.Tensor | None = None, *, grad: bool = False):
    """(v(x, t), div_x v(x, t)) for x (n, D), both detached; with ``grad`` both stay in the autograd
    graph (of x and of the field's parameters), the divergence built with ``create_graph``.

    ``probes`` None: the exact divergence sum_i [d v_i / d x_i], one backward pass per dimension.
    ``probes`` (K, n, D): the Hutchinson estimate (1/K) sum_k eps_k^T (dv/dx) eps_k, one backward pass
    per probe (a vector-Jacobian product eps_k^T dv/dx, then a dot product with eps_k).
    """
    with torch.enable_grad():
        if not (grad and x.requires_grad):
            x = x.detach().requires_grad_(True)
        v = velocity(x, t)
        if v.shape != x.shape:
            raise FlowmatchError(f"the velocity field returned shape {tuple(v.shape)} for points of shape {tuple(x.shape)}")
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        if not v.requires_grad:  # a field that does not depend on x has zero divergence
            return (v if grad else v.detach()), div
        if probes is None:
            dim = x.shape[1]
            for i in range(dim):
                (g,) = torch.autograd.grad(v[:, i].sum(), x, retain_graph=grad or i < dim - 1, create_graph=grad, allow_unused=True)
                if g is not None:
                    div = div + g[:, i]
        else:
            k = probes.shape[0]
            for j in range(k):
                (g,) = torch.autograd.grad(v, x, probes[j], retain_graph=grad or j < k - 1, create_graph=grad, allow_unused=True)
                if g is not None:
                    div = div + (g * probes[j]).sum(dim=1)
            div = div / k
    if grad:
        return v, div
    return v.detach(), div.detach()


def _augmented(velocity: Velocity, probes: torch.Tensor | None, sign: float, grad: bool = False) -> Velocity:
    """f([x, a], t) = [v(x, t), sign * div v(x, t)] for the solvers (state shape (n, D + 1))."""

    def f(state: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v, div = divergence(velocity, state[:, :-1], t, probes, grad=grad)
        return torch.cat([v, sign * div[:, None]], dim=1)

    return f


def _check_points(x, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise FlowmatchError(f"{what} must be a tensor or array of numbers of shape (n, D), got {type(x).__name__} {x!r:.60}") from None
    if x.dtype == torch.bool or x.is_complex():
        raise FlowmatchError(f"{what} must be real numbers, got {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise FlowmatchError(f"{what} must have shape (n, D) with n, D >= 1, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise FlowmatchError(f"{what} contain NaN or infinite values")
    return x


def _check_options(solver: str, probes: int, batch_size: int, seed: int = 0) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise FlowmatchError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise FlowmatchError(f"unknown solver {solver!r}; choose from {', '.join(SOLVERS)}")
    for name, value in (("probes", probes), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FlowmatchError(f"{name} must be a positive integer, got {value!r}")


def log_prob(
    velocity: Velocity,
    x: torch.Tensor,
    *,
    solver: str = "dopri5",
    nfe: int = 100,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    divergence: str = "auto",
    probes: int = 1,
    seed: int = 0,
    batch_size: int = 4096,
    progress: bool = False,
    grad: bool = False,
) -> LogDensity:
    """log p_1(x) of the flow of ``velocity`` from N(0, I) at t = 0, for points x (n, D) at t = 1.

    ``grad=True`` keeps log p in the autograd graph of x and of the field's parameters (the solve is
    backpropagated through, the divergence built with ``create_graph``): for training on the
    likelihood or for d log p / dx.

    Integrates [x, a] from t = 1 back to t = 0 with da/dt = div v (see the module docstring) and
    returns log N(x(0); 0, I) + a(0). ``solver``/``nfe``/``atol``/``rtol`` are as for
    :func:`flowmatch.solvers.integrate` (dopri5 adapts its steps to the augmented state; fixed-step
    solvers make exactly ``nfe`` evaluations). Points are processed in batches of ``batch_size``
    (``progress=True`` shows a bar over them); Hutchinson probes come from a generator seeded with
    ``seed``, so results are reproducible. The state keeps x's dtype (pass float64 points and a
    float64 field for tight checks).
    """
    x = _check_points(x, "points to score")
    _check_options(solver, probes, batch_size, seed)
    kind = resolve_divergence(divergence, x.shape[1])
    generator = torch.Generator().manual_seed(seed)
    out, used = [], 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(x), desc=f"log-likelihood ({solver}, {kind})", unit="pt", leave=False)
    for chunk in x.split(batch_size):
        eps = None
        if kind == "hutchinson":
            eps = rademacher((probes, *chunk.shape), generator, dtype=chunk.dtype, device=chunk.device)
        state = torch.cat([chunk, torch.zeros_like(chunk[:, :1])], dim=1)
        with torch.set_grad_enabled(grad):
            sol = integrate(_augmented(velocity, eps, +1.0, grad), state, solver=solver, nfe=nfe, t0=1.0, t1=0.0, atol=atol, rtol=rtol)
        z, a = sol.x[:, :-1], sol.x[:, -1]
        out.append((log_normal(z.double()) + a.double()).cpu())
        used = max(used, sol.nfe)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return LogDensity(log_prob=torch.cat(out), nfe=used, divergence=kind, probes=probes if kind == "hutchinson" else 0)


def flow_log_prob(
    flow,
    x,
    *,
    solver: str = "dopri5",
    nfe: int = 100,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    divergence: str = "auto",
    probes: int = 1,
    seed: int = 0,
    batch_size: int = 4096,
    progress: bool = False,
    grad: bool = False,
) -> LogDensity:
    """:func:`log_prob` of a trained :class:`~flowmatch.flows.continuous.Flow` at points x (n, D) in *data* coordinates.

    The model works in z = (x - mean) / std, so log p_x(x) = log p_z(z) + log |dz/dx|, with
    log |dz/dx| = -sum(log std) (:meth:`~flowmatch.data.Standardizer.log_abs_det`). Needs the N(0, I)
    source (a data-set source has no known density). Options as for :func:`log_prob`.
    """
    flow._require_gaussian_source()
    x = _check_points(x, "points to score")
    if x.ndim != 2 or x.shape[-1] != flow.dim:
        raise FlowmatchError(f"expected points of shape (n, {flow.dim}), got {tuple(x.shape)}")
    dtype = next(flow.model.parameters()).dtype
    z = flow.standardizer.forward(x.to(dtype)).to(flow.device)
    result = log_prob(
        flow.velocity(grad=True), z, solver=solver, nfe=nfe, atol=atol, rtol=rtol, divergence=divergence,
        probes=probes, seed=seed, batch_size=batch_size, progress=progress, grad=grad,
    )  # fmt: skip
    result.log_prob = result.log_prob + flow.standardizer.log_abs_det()
    return result


@dataclass
class SampledLogDensity:
    """Samples at t = 1 with their log-densities; ``trajectory`` (times, n, D) when asked for."""

    x: torch.Tensor
    log_prob: torch.Tensor
    nfe: int
    divergence: str
    times: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None


def sample_with_log_prob(
    velocity: Velocity,
    x0: torch.Tensor,
    *,
    solver: str = "rk4",
    nfe: int = 100,
    grid="uniform",
    atol: float = 1e-5,
    rtol: float = 1e-5,
    divergence: str = "auto",
    probes: int = 1,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
    progress: bool = False,
    grad: bool = False,
) -> SampledLogDensity:
    """Carry noise x0 ~ N(0, I) from t = 0 to t = 1 and track each sample's log-density.

    Integrates [x, a] forward with da/dt = -div v and a(0) = 0, so log p_1(x(1)) = log N(x0; 0, I) + a(1)
    (module docstring). The samples are exactly those :func:`~flowmatch.solvers.integrate` gives for the
    same solver settings, up to rounding (with dopri5 the steps also see the log-density column).
    """
    x0 = _check_points(x0, "initial points")
    _check_options(solver, probes, 1)
    kind = resolve_divergence(divergence, x0.shape[1])
    eps = None
    if kind == "hutchinson":
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        eps = rademacher((probes, *x0.shape), g, dtype=x0.dtype, device=x0.device)
    state = torch.cat([x0, torch.zeros_like(x0[:, :1])], dim=1)
    with torch.set_grad_enabled(grad):
        sol = integrate(
            _augmented(velocity, eps, -1.0, grad),
            state,
            solver=solver,
            nfe=nfe,
            grid=grid,
            atol=atol,
            rtol=rtol,
            return_trajectory=return_trajectory,
            progress=progress,
        )
    lp = log_normal(x0.double()) + sol.x[:, -1].double()
    trajectory = sol.trajectory[..., :-1] if sol.trajectory is not None else None
    return SampledLogDensity(x=sol.x[:, :-1], log_prob=lp.cpu(), nfe=sol.nfe, divergence=kind, times=sol.times, trajectory=trajectory)


def summarize(log_p: torch.Tensor, dim: int) -> NLL:
    """Mean NLL (nats and bits/dim) with standard errors from per-point log-densities (see :class:`NLL`)."""
    lp = torch.as_tensor(log_p, dtype=torch.float64).flatten()
    n = lp.numel()
    if n == 0:
        raise FlowmatchError("no log-densities to summarise")
    nll = float(-lp.mean())
    se = float(lp.std() / math.sqrt(n)) if n > 1 else float("nan")
    scale = dim * math.log(2)
    return NLL(n=n, dim=dim, nll=nll, nll_se=se, bpd=nll / scale, bpd_se=se / scale)
