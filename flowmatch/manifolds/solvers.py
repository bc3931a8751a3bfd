"""Fixed-step Runge-Kutta solvers for dx/dt = v(x, t) on a manifold, stepping through the exponential map.

A step of size h from (t_n, x_n) applies an explicit Runge-Kutta tableau (a, b, c) of
:mod:`flowmatch.solvers.tableaus` to the ODE written in *normal coordinates at x_n*,
z(t) = log_{x_n}(x(t)), which is an ODE on the vector space T_{x_n}:

    z' = dlog_{x_n}(x)[v(x, t)],   x = exp_{x_n}(z),   z(t_n) = 0.

So, with s stages,

    y_i = exp_{x_n}(h sum_{j<i} a_ij k_j)                          (y_1 = x_n)
    k_i = dlog_{x_n}(y_i)[proj_{y_i} v(y_i, t_n + c_i h)]          (a vector of T_{x_n})
    x_{n+1} = projx(exp_{x_n}(h sum_i b_i k_i)).

Each stage evaluates the field at a point of the manifold and carries its velocity back to the base
tangent space T_{x_n} by the derivative of the logarithm map (:meth:`Manifold.dlog`), where the
stages are combined linearly. Because this is exactly the tableau applied to a smooth ODE on a vector
space (while |z| stays below the injectivity radius), every method keeps its classical order: euler 1,
midpoint and heun 2, rk4 4. Replacing dlog_{x_n}(y) by the orthogonal projection onto T_{x_n} (the
simplest "RK with projection to the base tangent space") agrees with it to O(|z|^2) = O(h^2), which
costs an O(h^3) local error and caps every method at order 2; dlog is closed-form and costs no
velocity evaluation. On R^d and the flat torus dlog is the identity and the scheme is the ordinary
Runge-Kutta method (with angles wrapped).

A solve makes exactly ``nfe`` velocity evaluations: ``nfe / stages`` uniform steps, so ``nfe`` must be
a multiple of the stage count (1 for euler, 2 for midpoint and heun, 4 for rk4). The field is called
as ``velocity(x, t)`` with x an (n, ambient_dim) batch of points on the manifold and t a 0-dim tensor
of x's dtype and device, as :func:`flowmatch.solvers.integrate` calls it. After every step the state is
put back on the manifold with ``projx`` (normalisation, or wrapping the angles), which is continuous:
SO(3) quaternions are not sign-canonicalised along the way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from flowmatch.errors import FlowmatchError
from flowmatch.manifolds.manifolds import Manifold
from flowmatch.solvers.grids import check_interval, time_grid
from flowmatch.solvers.integration import Solution, Velocity
from flowmatch.solvers.tableaus import TABLEAUS, Tableau, steps_for

#: The solvers :func:`integrate_manifold` offers (the fixed-step tableaus; adaptive solvers are Euclidean only).
MANIFOLD_SOLVERS: tuple[str, ...] = tuple(TABLEAUS)


def integrate_manifold(
    velocity: Velocity,
    x0: torch.Tensor,
    manifold: Manifold,
    *,
    solver: str = "rk4",
    nfe: int = 100,
    t0: float = 0.0,
    t1: float = 1.0,
    return_trajectory: bool = False,
) -> Solution:
    """Solve dx/dt = velocity(x, t) on ``manifold`` from x(t0) = x0 to t1 (t1 < t0 runs backward).

    ``x0`` is an (n, ambient_dim) float tensor of points (put on the manifold with ``projx`` first);
    the velocity's output is projected onto the tangent space. Returns a
    :class:`flowmatch.solvers.Solution`: ``x`` at t1, ``nfe`` the number of velocity calls, and with
    ``return_trajectory`` the uniform ``times`` (float64) and the states there,
    ``trajectory`` of shape (steps + 1, n, ambient_dim). Gradients are neither forced on nor off.
    """
    tableau, times = _plan(solver, nfe, t0, t1)
    x0 = _check_start(x0, manifold)
    x, trajectory, _ = _solve(velocity, x0, manifold, tableau, times, return_trajectory=return_trajectory)
    return Solution(x=x, nfe=nfe, times=times if return_trajectory else None, trajectory=trajectory)


def _plan(solver: str, nfe: int, t0: float, t1: float) -> tuple[Tableau, torch.Tensor]:
    """The tableau and the uniform time grid of a solve, after checking the arguments."""
    if solver not in TABLEAUS:
        raise FlowmatchError(f"unknown manifold solver {solver!r}; choose one of {', '.join(MANIFOLD_SOLVERS)}")
    steps = steps_for(solver, nfe)
    t0, t1 = check_interval(t0, t1)
    return TABLEAUS[solver], time_grid("uniform", steps, t0, t1)


def _check_start(x0: torch.Tensor, manifold: Manifold) -> torch.Tensor:
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        got = x0.dtype if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise FlowmatchError(f"x0 must be a floating-point tensor, got {got}")
    if x0.dim() != 2 or x0.shape[1] != manifold.ambient_dim:
        raise FlowmatchError(f"x0 on {manifold.label} must have shape (n, {manifold.ambient_dim}), got {tuple(x0.shape)}")
    return manifold.projx(x0)


def _solve(
    field: Callable,
    x0: torch.Tensor,
    manifold: Manifold,
    tableau: Tableau,
    times: torch.Tensor,
    *,
    return_trajectory: bool = False,
    integrand: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The Runge-Kutta loop in normal coordinates (module docstring). Returns (x, trajectory, integral).

    With ``integrand``, ``field(x, t)`` returns (v, g) with g an (n,) scalar per point, and the third
    result is the same tableau's quadrature of int_{t0}^{t1} g(x(t), t) dt along the solution (the
    augmented state of the likelihood, whose derivative does not depend on itself).
    """
    h = times.diff().tolist()
    c = torch.tensor(tableau.c, dtype=torch.float64)
    stage_times = ((1 - c) * times[:-1, None] + c * times[1:, None]).to(device=x0.device, dtype=x0.dtype)
    a = [[(j, a_ij) for j, a_ij in enumerate(row) if a_ij != 0.0] for row in tableau.a]
    b = [(i, b_i) for i, b_i in enumerate(tableau.b) if b_i != 0.0]

    x = x0
    integral = x0.new_zeros(x0.shape[0]) if integrand else None
    states = [x0] if return_trajectory else None
    for n in range(len(h)):
        k: list[torch.Tensor] = []
        g: list[torch.Tensor] = []
        for i in range(tableau.stages):
            z = _combine(k, a[i], h[n])
            y = x if z is None else manifold.projx(manifold.exp(x, z))
            out = field(y, stage_times[n, i])
            v = out[0] if integrand else out
            if v.shape != y.shape:
                raise FlowmatchError(f"the velocity field returned shape {tuple(v.shape)} for points of shape {tuple(y.shape)}")
            v = manifold.proj(y, v)
            k.append(v if z is None else manifold.dlog(x, y, v))
            if integrand:
                g.append(out[1])
        step = _combine(k, b, h[n])
        if step is not None:
            x = manifold.projx(manifold.exp(x, step))
        if integral is not None:
            integral = integral + sum(h[n] * b_i * g[i] for i, b_i in b)
        if states is not None:
            states.append(x)
    trajectory = torch.stack(states) if states is not None else None
    return x, trajectory, integral


def _combine(k: list[torch.Tensor], weights: list[tuple[int, float]], h: float) -> torch.Tensor | None:
    """h * sum_j w_j k_j over the (j, w_j) in ``weights``; None when there are none (the base point itself)."""
    out = None
    for j, w in weights:
        out = h * w * k[j] if out is None else out + h * w * k[j]
    return out
