"""Log-densities of flows on manifolds by the Riemannian instantaneous change of variables.

Along a solution of dx/dt = v(x, t) on a Riemannian manifold M, the density p_t of the flowed
distribution, taken with respect to the Riemannian volume, obeys

    d/dt log p_t(x_t) = -div_M v(x_t, t),

so a point x_1 at t = 1 has log p_1(x_1) = log p_0(x_0) - int_0^1 div_M v(x_t, t) dt.
:func:`manifold_log_prob` integrates the augmented state backward from t = 1 to t = 0 with the
manifold solver (:mod:`flowmatch.manifolds.solvers`), the divergence accumulated by the same tableau.

**The Riemannian divergence** of a tangent field on a manifold embedded in R^D with the induced metric
(or on the flat torus) is the trace of its covariant derivative, and the Levi-Civita connection of an
embedded manifold is the tangential part of the ambient derivative, so

    div_M v(x) = sum_i <e_i, J e_i> = tr(P J P),

where e_1..e_dim is an orthonormal basis of T_x, P = sum_i e_i e_i^T the projection onto T_x, and J the
ambient Jacobian of any smooth extension of v. The field is first projected onto the tangent space,
v <- proj_x v(x, t), and the projection is differentiated too: a normal component of the raw output
would otherwise go uncounted (on S^d it contributes -d <x, v>).
:func:`manifold_divergence` computes it

- exactly: one vector-Jacobian product per basis vector, ``dim`` backward passes;
- by Hutchinson's estimator: probes p with E[p p^T] = I (Rademacher) are projected to eps = P p, so
  E[eps eps^T] = P and E[eps^T J eps] = tr(J P) = tr(P J P): unbiased with no rescaling, one backward
  pass per probe. As in FFJORD, :func:`manifold_log_prob` draws the probes once per point and holds
  them along the trajectory (they are re-projected at every point it visits); since the trajectory does
  not depend on them, the log-density estimate is unbiased.

On SO(3) the divergence is that of S^3 in quaternion coordinates, consistent with the uniform
density 1 / pi^2 of :class:`flowmatch.manifolds.SO3`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from flowmatch.errors import FlowmatchError
from flowmatch.likelihood import rademacher
from flowmatch.manifolds.manifolds import Manifold
from flowmatch.manifolds.solvers import _plan, _solve
from flowmatch.solvers.integration import Velocity


def manifold_divergence(
    velocity: Velocity, x: torch.Tensor, t: torch.Tensor, manifold: Manifold, probes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, div_M v) at the points x (n, ambient_dim) and time t, both detached, for the projected field
    v = proj_x velocity(x, t).

    ``probes`` None: the exact divergence over an orthonormal tangent basis (``dim`` backward passes).
    ``probes`` (K, n, ambient_dim) ambient vectors with E[p p^T] = I: the Hutchinson estimate
    (1/K) sum_k eps_k^T J eps_k with eps_k = proj_x p_k (K backward passes).
    """
    if probes is not None and (probes.dim() != 3 or probes.shape[1:] != x.shape):
        raise FlowmatchError(f"probes must have shape (K, {x.shape[0]}, {x.shape[1]}), got {tuple(probes.shape)}")
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        raw = velocity(x, t)
        if raw.shape != x.shape:
            raise FlowmatchError(f"the velocity field returned shape {tuple(raw.shape)} for points of shape {tuple(x.shape)}")
        v = manifold.proj(x, raw)
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        if not v.requires_grad:  # a field that does not depend on x has zero divergence
            return v.detach(), div
        if probes is None:
            directions = manifold.tangent_basis(x.detach()).unbind(dim=1)
        else:
            directions = tuple(manifold.proj(x.detach(), p.to(dtype=x.dtype, device=x.device)) for p in probes)
        for i, e in enumerate(directions):
            (g,) = torch.autograd.grad(v, x, e, retain_graph=i < len(directions) - 1, allow_unused=True)
            if g is not None:
                div = div + (g * e).sum(dim=1)
        if probes is not None:
            div = div / len(directions)
    return v.detach(), div.detach()


def manifold_log_prob(
    velocity: Velocity,
    x1: torch.Tensor,
    manifold: Manifold,
    *,
    base_log_prob: Callable[[torch.Tensor], torch.Tensor],
    solver: str = "rk4",
    nfe: int = 64,
    probes: int = 0,
    seed: int = 0,
) -> torch.Tensor:
    """log p_1(x1) per row, shape (n,), for the flow of ``velocity`` from a base density at t = 0.

    Solves dx/dt = v, da/dt = div_M v backward from x(1) = x1, a(1) = 0 to t = 0 (``nfe`` velocity
    evaluations with ``solver``), and returns base_log_prob(x(0)) + a(0), a(0) = -int_0^1 div_M v dt.
    ``base_log_prob(x0)`` gives the log-density of the source w.r.t. the Riemannian volume, shape (n,)
    (e.g. ``manifold.uniform_log_prob``). ``probes = 0`` uses the exact divergence; ``probes = K > 0``
    the Hutchinson estimate with K Rademacher probes per point, drawn from ``seed``.
    ``x1`` is checked with ``manifold.check``. No autograd graph is kept.
    """
    tableau, times = _plan(solver, nfe, 1.0, 0.0)
    x1 = manifold.check(x1, "points")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
        raise FlowmatchError(f"probes must be a non-negative integer (0 for the exact divergence), got {probes!r}")
    eps = None
    if probes:
        generator = torch.Generator().manual_seed(seed)
        eps = rademacher((probes, *x1.shape), generator, dtype=x1.dtype, device=x1.device)

    def augmented(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return manifold_divergence(velocity, x, t, manifold, eps)

    with torch.no_grad():
        x0, _, integral = _solve(augmented, x1, manifold, tableau, times, integrand=True)
        assert integral is not None
        base = base_log_prob(x0)
    if not isinstance(base, torch.Tensor) or base.shape != (x1.shape[0],):
        got = tuple(base.shape) if isinstance(base, torch.Tensor) else type(base).__name__
        raise FlowmatchError(f"base_log_prob must return one log-density per point, shape ({x1.shape[0]},), got {got}")
    return base.to(integral.dtype) + integral
