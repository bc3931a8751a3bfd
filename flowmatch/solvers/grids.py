"""Time grids of the fixed-step solvers: uniform, cosine, a shifted grid (shift:K) or explicit times."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from flowmatch.errors import FlowmatchError

GridSpec = str | Sequence[float] | torch.Tensor


def check_interval(t0: float, t1: float) -> tuple[float, float]:
    try:
        t0, t1 = float(t0), float(t1)
    except (TypeError, ValueError):
        raise FlowmatchError(f"t0 and t1 must be numbers, got {t0!r} and {t1!r}") from None
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise FlowmatchError(f"t0 and t1 must be finite, got {t0} and {t1}")
    if t0 == t1:
        raise FlowmatchError(f"t0 and t1 must differ, both are {t0}")
    return t0, t1


#: Named time grids for the fixed-step solvers (an explicit sequence of times is also accepted);
#: ``shift:K`` (any K > 0; ``shift:3`` stands for them here) is the uniform grid with its noise levels
#: shifted by K (see :func:`time_grid`).
TIME_GRIDS: tuple[str, ...] = ("uniform", "cosine", "shift:3")


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
    t0, t1 = check_interval(t0, t1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise FlowmatchError(f"the number of steps must be a positive integer, got {steps!r}")

    if isinstance(name_or_times, str):
        from flowmatch.memory import require_memory

        require_memory(4 * 8 * (steps + 1), f"a time grid of {steps} steps", "ask for a smaller nfe")  # u, g and their temporaries
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
        raise FlowmatchError(f"the explicit time grid must run from t0 = {t0} to t1 = {t1}, got {grid[0].item()} to {grid[-1].item()}")
    sign = 1.0 if t1 > t0 else -1.0
    if not (sign * grid.diff() > 0).all():
        direction = "increasing" if sign > 0 else "decreasing (t1 < t0)"
        raise FlowmatchError(f"the explicit time grid must be strictly {direction}")
    grid = grid.clone()
    grid[0], grid[-1] = t0, t1
    return grid
