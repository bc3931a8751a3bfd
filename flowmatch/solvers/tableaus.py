"""Explicit Runge-Kutta tableaus of the fixed-step solvers, the adaptive solvers' names, and the steps an NFE buys."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from flowmatch.errors import FlowmatchError


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
        # Kutta's 3/8 rule, the other fourth-order method of four stages: what torchdiffeq's and Meta's
        # flow_matching's method "rk4" is. The two agree to fourth order, not to the bit: at NFE 8 on a
        # learned velocity their samples can differ visibly, so flowmatch names them apart
        Tableau(
            "rk38",
            a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
            b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
            c=(0.0, 1 / 3, 2 / 3, 1.0),
            order=4,
        ),
    )
}


FIXED_SOLVERS: tuple[str, ...] = tuple(TABLEAUS)


ADAPTIVE_SOLVERS: tuple[str, ...] = ("dopri5",)


SOLVERS: tuple[str, ...] = FIXED_SOLVERS + ADAPTIVE_SOLVERS


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise FlowmatchError(f"unknown solver {solver!r}; choose from {', '.join(SOLVERS)}")


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
        raise FlowmatchError(f"{solver} uses {stages} velocity evaluations per step; nfe={nfe} is not a multiple of {stages} (try {hint})")
    return nfe // stages
