"""ODE solvers that carry samples along a learned velocity field.

Generation integrates the flow ODE

    dx/dt = v(x, t)

forward from t = 0 (noise) to t = 1 (data); the likelihood code integrates an augmented state
backward from t = 1 to t = 0. The velocity is any callable ``f(x, t)``: ``x`` is a tensor of any
shape (batch first), ``t`` a 0-dim tensor with ``x``'s dtype and device that the model broadcasts.

Fixed-step solvers are explicit Runge-Kutta methods given as data, a Butcher :class:`Tableau`
(a, b, c), all driven by one loop. On a step of size h from (t_n, x_n), with s stages,

    k_i     = f(x_n + h * sum_{j<i} a_ij k_j,  t_n + c_i h)        i = 1..s
    x_{n+1} = x_n + h * sum_i b_i k_i

so a step costs s velocity evaluations (NFE) and a solve of N steps costs N * s. Adding a method
is adding a table to :data:`TABLEAUS`. The steps lie on a time grid (:func:`time_grid`): uniform,
cosine (smaller steps at both ends) or an explicit sequence of times.

The adaptive solver ``dopri5`` (Dormand-Prince 5(4)) goes through ``torchdiffeq.odeint`` with
absolute and relative tolerances; it picks its own steps, so it ignores ``nfe`` and ``grid``, and
reports the number of evaluations it actually used.

Example::

    sol = integrate(model, torch.randn(512, 2), solver="rk4", nfe=40)   # 10 RK4 steps
    sol.x, sol.nfe                                                       # samples at t = 1, 40
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flowmatch.errors import FlowmatchError
from flowmatch.solvers.grids import GridSpec, _explicit_times, check_interval, time_grid
from flowmatch.solvers.tableaus import ADAPTIVE_SOLVERS, TABLEAUS, Tableau, _check_solver, steps_for

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


#: Number of times at which dopri5 reports the trajectory when one is asked for.
ADAPTIVE_TRAJECTORY_POINTS = 101


def check_tolerance(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise FlowmatchError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise FlowmatchError(f"{name} must be a positive number, got {value}")
    return value


@dataclass
class Solution:
    """The result of :func:`integrate`.

    ``x`` is the state at t1 and ``nfe`` the number of velocity evaluations actually used. With
    ``return_trajectory=True``, ``times`` (1-D float64 CPU tensor) holds the trajectory's times,
    starting at t0 and ending at t1, and ``trajectory`` the states there, shape
    ``(len(times), *x.shape)`` with ``trajectory[0] = x0`` and ``trajectory[-1] = x``;
    otherwise both are None.
    """

    x: torch.Tensor
    nfe: int
    times: torch.Tensor | None = None
    trajectory: torch.Tensor | None = None


def integrate(
    f: Velocity,
    x0: torch.Tensor,
    *,
    solver: str = "rk4",
    nfe: int = 100,
    t0: float = 0.0,
    t1: float = 1.0,
    grid: GridSpec = "uniform",
    atol: float = 1e-5,
    rtol: float = 1e-5,
    return_trajectory: bool = False,
    progress: bool = False,
) -> Solution:
    """Solve dx/dt = f(x, t) from x(t0) = x0 to t1 (t1 < t0 integrates backward in time).

    Fixed-step solvers (``euler``, ``midpoint``, ``heun``, ``rk4``) call ``f`` exactly ``nfe``
    times: ``nfe / stages`` steps on ``grid`` (a :data:`TIME_GRIDS` name or an explicit sequence
    of times from t0 to t1, whose length must then match). ``atol``/``rtol`` are ignored.

    ``dopri5`` adapts its steps to meet ``atol + rtol * |x|`` per step; it ignores ``nfe`` and
    ``grid`` and returns in ``Solution.nfe`` the number of evaluations it used. Its trajectory,
    if asked for, is reported at 101 uniform times from t0 to t1.

    Gradients are neither forced off nor on: wrap the call in ``torch.no_grad()`` for sampling;
    without it autograd records the solve (and ``f`` may use autograd internally). ``x0`` is
    never modified. ``progress=True`` shows a tqdm bar over the steps (fixed-step solvers).
    """
    _check_solver(solver)
    t0, t1 = check_interval(t0, t1)
    atol = check_tolerance("atol", atol)
    rtol = check_tolerance("rtol", rtol)
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        got = x0.dtype if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise FlowmatchError(f"x0 must be a floating-point tensor, got {got}")

    if solver in ADAPTIVE_SOLVERS:
        if isinstance(grid, str):
            time_grid(grid, 1, t0, t1)  # still reject unknown grid names
        return _integrate_adaptive(f, x0, solver, t0, t1, atol, rtol, return_trajectory)

    tableau = TABLEAUS[solver]
    steps = steps_for(solver, nfe)
    if not isinstance(grid, str):
        given = len(_explicit_times(grid)) - 1
        if given != steps:
            raise FlowmatchError(f"the explicit time grid has {given} steps, so {solver} needs nfe={given * tableau.stages} (got {nfe})")
    times = time_grid(grid, steps, t0, t1)
    x, trajectory = _integrate_fixed(f, x0, tableau, times, return_trajectory, progress)
    return Solution(
        x=x,
        nfe=steps * tableau.stages,
        times=times if return_trajectory else None,
        trajectory=trajectory,
    )


def _integrate_fixed(
    f: Velocity,
    x0: torch.Tensor,
    tableau: Tableau,
    times: torch.Tensor,
    return_trajectory: bool,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The Runge-Kutta loop: x_{n+1} = x_n + h sum_i b_i k_i on the steps of ``times``.

    All stage times t_n + c_i h are computed once up front (as (1 - c_i) t_n + c_i t_{n+1}, which
    stays inside [t_n, t_{n+1}] in floating point) and moved to x's device and dtype in a single
    transfer; each step then allocates only the stage inputs and the new state. Updates are
    out of place, so autograd can differentiate through the solve; zero coefficients are skipped.
    """
    steps = len(times) - 1
    h = times.diff().tolist()  # Python floats: scaling by them needs no device sync
    c = torch.tensor(tableau.c, dtype=torch.float64)
    stage_times = ((1 - c) * times[:-1, None] + c * times[1:, None]).to(device=x0.device, dtype=x0.dtype)
    a = [[(j, a_ij) for j, a_ij in enumerate(row) if a_ij != 0.0] for row in tableau.a]
    b = [(i, b_i) for i, b_i in enumerate(tableau.b) if b_i != 0.0]

    x = x0
    states = [x0] if return_trajectory else None
    step_range = range(steps)
    if progress:
        from tqdm.auto import tqdm

        step_range = tqdm(step_range, desc=tableau.name, unit="step", leave=False)

    for n in step_range:
        k: list[torch.Tensor] = []
        for i in range(tableau.stages):
            k.append(f(_add_scaled(x, k, a[i], h[n]), stage_times[n, i]))
        x = _add_scaled(x, k, b, h[n])
        if states is not None:
            states.append(x)

    trajectory = torch.stack(states) if states is not None else None
    return x, trajectory


def _add_scaled(x: torch.Tensor, k: list[torch.Tensor], weights: list[tuple[int, float]], h: float) -> torch.Tensor:
    """x + h * sum_j w_j k_j for the (j, w_j) in ``weights``; x itself when there are none.

    The first term allocates the result and later ones add into it in place, so ``x`` is never
    modified (autograd may still need it) and no temporaries are made.
    """
    out = x
    for j, w in weights:
        out = x.add(k[j], alpha=h * w) if out is x else out.add_(k[j], alpha=h * w)
    return out


def _integrate_adaptive(
    f: Velocity,
    x0: torch.Tensor,
    solver: str,
    t0: float,
    t1: float,
    atol: float,
    rtol: float,
    return_trajectory: bool,
) -> Solution:
    """dopri5 through torchdiffeq.odeint, counting the velocity evaluations it makes."""
    from torchdiffeq import odeint

    count = 0

    def counted(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # torchdiffeq keeps time in float64 and calls func(t, x); hand f (x, t) in x's dtype
        nonlocal count
        count += 1
        return f(x, t.to(dtype=x.dtype, device=x.device))

    points = ADAPTIVE_TRAJECTORY_POINTS if return_trajectory else 2
    times = torch.linspace(t0, t1, points, dtype=torch.float64)
    times[0], times[-1] = t0, t1
    # step_t = t1 makes the last step end exactly at t1 instead of overshooting it and
    # interpolating back, so f is only evaluated between t0 and t1 (as the model was trained)
    options = {"step_t": torch.tensor([t1], dtype=torch.float64)}
    try:
        states = odeint(counted, x0, times.to(x0.device), method=solver, atol=atol, rtol=rtol, options=options)
    except AssertionError as exc:  # torchdiffeq's step-size control gives up (a NaN or overflowing velocity)
        if "underflow in dt" not in str(exc):
            raise
        raise FlowmatchError(
            f"{solver}: the step size underflowed after {count} velocity evaluations (atol {atol}, rtol {rtol}): "
            "the velocity is non-finite or overflows; its weights may have diverged in training"
        ) from None
    return Solution(
        x=states[-1],
        nfe=count,
        times=times if return_trajectory else None,
        trajectory=states if return_trajectory else None,
    )


def require_finite(x: torch.Tensor, solver: str, nfe: int) -> None:
    """Samples hold no NaN or infinity: a draw that does (a diverged model or solver) is an error, not a result."""
    finite = torch.isfinite(x.detach().reshape(len(x), -1)).all(1)
    if not bool(finite.all()):
        raise FlowmatchError(
            f"sampling gave non-finite values in {int((~finite).sum())} of {len(x)} samples (solver {solver}, NFE {nfe}): "
            "the model's velocity overflows; its weights may have diverged in training"
        )
