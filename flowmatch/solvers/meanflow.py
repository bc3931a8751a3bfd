"""Sampling with an average-velocity model (MeanFlow): one jump per interval instead of an ODE solve.

A MeanFlow model u(x, r, t) (:func:`flowmatch.losses.meanflow_loss`) is the flow's average velocity
over [r, t] from the point x at time r, so the flow map is one evaluation:

    x_t = x_r + (t - r) u(x_r, r, t).

:func:`mean_flow_sample` chains it over a grid 0 = t_0 < t_1 < ... < t_K = 1,

    x_{k+1} = x_k + (t_{k+1} - t_k) u(x_k, t_k, t_{k+1}),

K calls of the model (NFE = K): exact for the exact u at any K, so K buys robustness to the
model's error, not accuracy of a discretisation. With r = t the model is the instantaneous
velocity, u(x, t, t) = v(x, t): :func:`instantaneous_velocity` hands it to the ODE solvers and the
likelihood (the built-in models need no adapter: called as ``model(x, t)`` they take r = t).

The model is called as ``model(x, t, r=r, **condition)`` with t and r 0-dim tensors of x's dtype and
device, as :func:`flowmatch.solvers.integrate` passes its times.

Example::

    sol = mean_flow_sample(model, torch.randn(512, 2))            # one step
    sol = mean_flow_sample(model, torch.randn(512, 2), steps=2)   # t = 0, 0.5, 1
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from flowmatch.errors import FlowmatchError
from flowmatch.solvers.grids import _explicit_times, time_grid
from flowmatch.solvers.integration import Solution, Velocity


def instantaneous_velocity(model: Callable[..., torch.Tensor], condition: dict[str, torch.Tensor] | None = None) -> Velocity:
    """v(x, t) = u(x, t, t): a two-time model as the ODE solvers call a velocity, ``f(x, t)``."""
    kwargs = condition or {}
    return lambda x, t: model(x, t, r=t, **kwargs)


def mean_flow_sample(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    *,
    steps: int = 1,
    times: Sequence[float] | torch.Tensor | None = None,
    condition: dict[str, torch.Tensor] | None = None,
    return_trajectory: bool = False,
) -> Solution:
    """From the source sample ``x0`` at t = 0 to t = 1 in ``steps`` jumps of an average-velocity model
    (module docstring) on a uniform grid, or on explicit ``times`` (strictly increasing, in [0, 1];
    then ``steps`` is ignored and the NFE is ``len(times) - 1``). ``condition``: the model's keyword
    conditions. Gradients are neither forced off nor on (wrap in ``torch.no_grad()`` to sample);
    ``x0`` is never modified. Returns a :class:`~flowmatch.solvers.Solution` (``nfe`` = the steps).
    """
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise FlowmatchError("x0 must be a floating-point tensor")
    if times is None:
        grid = time_grid("uniform", steps, 0.0, 1.0)
    else:
        grid = _explicit_times(times)
        grid = time_grid(grid, len(grid) - 1, float(grid[0]), float(grid[-1]))
        if not (grid[0] >= 0.0 and grid[-1] <= 1.0 and grid[-1] > grid[0]):
            raise FlowmatchError(f"mean_flow_sample needs increasing times in [0, 1], got {grid.tolist()}")
    at = grid.to(device=x0.device, dtype=x0.dtype)
    h = grid.diff().tolist()
    kwargs = condition or {}
    x = x0
    states = [x0] if return_trajectory else None
    for k in range(len(h)):
        x = x + h[k] * model(x, at[k + 1], r=at[k], **kwargs)
        if states is not None:
            states.append(x)
    return Solution(
        x=x, nfe=len(h), times=grid if return_trajectory else None, trajectory=torch.stack(states) if states is not None else None
    )
