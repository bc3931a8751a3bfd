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
import operator
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

from .errors import FlowmatchError

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GridSpec = Union[str, Sequence[float], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Butcher tableaus
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tableau:
    """An explicit Runge-Kutta method: k_i = f(x + h sum_j a_ij k_j, t + c_i h), x += h sum_i b_i k_i.

    ``a[i]`` holds the i coefficients a_i0 .. a_i(i-1) of stage i (so ``a[0]`` is empty);
    ``b`` are the weights (summing to 1) and ``c`` the stage times as fractions of the step
    (c_i = sum_j a_ij for the methods here). ``order`` is the global order of accuracy: halving
    the step divides the error by about 2**order.
    """

    name: str
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int

    def __post_init__(self) -> None:
        s = len(self.b)
        if len(self.a) != s or len(self.c) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"tableau {self.name!r}: a must be strictly lower-triangular with len(b) = len(c) rows")
        if not math.isclose(sum(self.b), 1.0):
            raise ValueError(f"tableau {self.name!r}: the weights b must sum to 1")

    @property
    def stages(self) -> int:
        """Velocity evaluations per step."""
        return len(self.b)


TABLEAUS: dict[str, Tableau] = {
    t.name: t
    for t in (
        # x_{n+1} = x_n + h f(x_n, t_n)
        Tableau("euler", a=((),), b=(1.0,), c=(0.0,), order=1),
        # explicit midpoint: one Euler half step, then the full step with the midpoint slope
        Tableau("midpoint", a=((), (0.5,)), b=(0.0, 1.0), c=(0.0, 0.5), order=2),
        # Heun (explicit trapezoidal): average the slopes at both ends of an Euler step
        Tableau("heun", a=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2),
        # the classic fourth-order Runge-Kutta method
        Tableau(
            "rk4",
            a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
            b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
            c=(0.0, 0.5, 0.5, 1.0),
            order=4,
        ),
    )
}

FIXED_SOLVERS: tuple[str, ...] = tuple(TABLEAUS)
ADAPTIVE_SOLVERS: tuple[str, ...] = ("dopri5",)
SOLVERS: tuple[str, ...] = FIXED_SOLVERS + ADAPTIVE_SOLVERS

#: Named time grids for the fixed-step solvers (an explicit sequence of times is also accepted);
#: ``shift:K`` (any K > 0; ``shift:3`` stands for them here) is the uniform grid with its noise levels
#: shifted by K (see :func:`time_grid`).
TIME_GRIDS: tuple[str, ...] = ("uniform", "cosine", "shift:3")

#: Number of times at which dopri5 reports the trajectory when one is asked for.
ADAPTIVE_TRAJECTORY_POINTS = 101


# --------------------------------------------------------------------------------------------
# Argument checks and time grids
# --------------------------------------------------------------------------------------------


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise FlowmatchError(f"unknown solver {solver!r}; choose from {', '.join(SOLVERS)}")


def _check_interval(t0: float, t1: float) -> tuple[float, float]:
    try:
        t0, t1 = float(t0), float(t1)
    except (TypeError, ValueError):
        raise FlowmatchError(f"t0 and t1 must be numbers, got {t0!r} and {t1!r}") from None
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise FlowmatchError(f"t0 and t1 must be finite, got {t0} and {t1}")
    if t0 == t1:
        raise FlowmatchError(f"t0 and t1 must differ, both are {t0}")
    return t0, t1


def _check_tolerance(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise FlowmatchError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise FlowmatchError(f"{name} must be a positive number, got {value}")
    return value


def steps_for(solver: str, nfe: int) -> int:
    """Number of steps a fixed-step solver takes for a budget of ``nfe`` velocity evaluations.

    ``nfe`` must be a positive multiple of the solver's stage count (never rounded), e.g. rk4
    takes nfe / 4 steps.
    """
    _check_solver(solver)
    if solver not in TABLEAUS:
        raise FlowmatchError(f"{solver} is adaptive: it chooses its own steps, so nfe does not set them")
    stages = TABLEAUS[solver].stages
    try:
        if isinstance(nfe, bool):
            raise TypeError
        nfe = operator.index(nfe)
    except TypeError:
        raise FlowmatchError(f"nfe must be a positive integer, got {nfe!r}") from None
    if nfe <= 0:
        raise FlowmatchError(f"nfe must be a positive integer, got {nfe}")
    if nfe % stages:
        below = nfe // stages * stages
        hint = f"{below} or {below + stages}" if below else f"{stages}"
        raise FlowmatchError(
            f"{solver} uses {stages} velocity evaluations per step; "
            f"--nfe {nfe} is not a multiple of {stages} (try {hint})"
        )
    return nfe // stages


def _explicit_times(times: Sequence[float] | torch.Tensor) -> torch.Tensor:
    try:
        grid = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise FlowmatchError("a time grid must be a grid name or a 1-D sequence of numbers") from None
    if grid.dim() != 1 or len(grid) < 2:
        raise FlowmatchError(f"an explicit time grid must be 1-D with at least 2 times, got shape {tuple(grid.shape)}")
    if not torch.isfinite(grid).all():
        raise FlowmatchError("an explicit time grid must hold finite times")
    return grid


def _grid_shift(name: str) -> float:
    try:
        k = float(name.split(":", 1)[1])
    except ValueError:
        k = math.nan
    if not math.isfinite(k) or k <= 0:
        raise FlowmatchError(f"time grid {name!r}: the shift must be a positive number, as in 'shift:3'")
    return k


def time_grid(name_or_times: GridSpec, steps: int, t0: float = 0.0, t1: float = 1.0) -> torch.Tensor:
    """``steps + 1`` times from t0 to t1 (float64, CPU), strictly monotone, endpoints exact.

    With ``u_i = i / steps`` and ``t_i = t0 + (t1 - t0) * g(u_i)``:

    - ``"uniform"``: g(u) = u, equal steps;
    - ``"cosine"``: g(u) = (1 - cos(pi u)) / 2, steps shrinking towards both ends (the step
      near an end is about (pi^2 / 4) / steps^2 of the interval instead of 1 / steps).
    - ``"shift:K"`` (K > 0): the noise level r = 1 - u shifted as diffusers' flow-match schedulers
      shift theirs, r -> K r / (1 + (K - 1) r): K > 1 puts more steps near the noise end (t = 0),
      K < 1 near the data end; K = 1 is uniform.

    An explicit 1-D sequence or tensor of times is checked and returned as is: it must have
    ``steps + 1`` entries, start at t0, end at t1 and be strictly increasing (strictly
    decreasing when t1 < t0, i.e. integrating backward in time).
    """
    t0, t1 = _check_interval(t0, t1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise FlowmatchError(f"the number of steps must be a positive integer, got {steps!r}")

    if isinstance(name_or_times, str):
        u = torch.arange(steps + 1, dtype=torch.float64) / steps
        if name_or_times == "uniform":
            g = u
        elif name_or_times == "cosine":
            g = (1 - torch.cos(math.pi * u)) / 2
        elif name_or_times.startswith("shift:"):
            k = _grid_shift(name_or_times)
            r = 1 - u
            g = 1 - k * r / (1 + (k - 1) * r)
        else:
            raise FlowmatchError(
                f"unknown time grid {name_or_times!r}; choose from uniform, cosine, shift:K (K > 0, e.g. shift:3) or pass a sequence of times"
            )
        grid = t0 + (t1 - t0) * g
        grid[0], grid[-1] = t0, t1
        return grid

    grid = _explicit_times(name_or_times)
    if len(grid) != steps + 1:
        raise FlowmatchError(f"the explicit time grid has {len(grid)} times but {steps} steps need {steps + 1}")
    scale = max(1.0, abs(t0), abs(t1))
    if abs(grid[0].item() - t0) > 1e-6 * scale or abs(grid[-1].item() - t1) > 1e-6 * scale:
        raise FlowmatchError(
            f"the explicit time grid must run from t0 = {t0} to t1 = {t1}, "
            f"got {grid[0].item()} to {grid[-1].item()}"
        )
    sign = 1.0 if t1 > t0 else -1.0
    if not (sign * grid.diff() > 0).all():
        direction = "increasing" if sign > 0 else "decreasing (t1 < t0)"
        raise FlowmatchError(f"the explicit time grid must be strictly {direction}")
    grid = grid.clone()
    grid[0], grid[-1] = t0, t1
    return grid


# --------------------------------------------------------------------------------------------
# Integration
# --------------------------------------------------------------------------------------------


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
    t0, t1 = _check_interval(t0, t1)
    atol = _check_tolerance("atol", atol)
    rtol = _check_tolerance("rtol", rtol)
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
            raise FlowmatchError(
                f"the explicit time grid has {given} steps, so {solver} needs --nfe {given * tableau.stages} "
                f"(got {nfe})"
            )
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
    states = odeint(counted, x0, times.to(x0.device), method=solver, atol=atol, rtol=rtol, options=options)
    return Solution(
        x=states[-1],
        nfe=count,
        times=times if return_trajectory else None,
        trajectory=states if return_trajectory else None,
    )
