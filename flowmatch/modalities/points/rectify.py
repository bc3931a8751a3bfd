"""Few-step generation from a trained flow: reflow (rectified flow), distillation and straightness.

A trained flow defines a deterministic map Phi: x0 -> x1 by integrating dx/dt = v(x, t) from the
source at t = 0 to t = 1. Its pairs (x0, Phi(x0)) are a coupling of the source and (the model's
version of) the data, so they can be trained on again:

- **Reflow** (Liu et al. 2023, rectified flow): train a new velocity model with flow matching on
  the fixed pairs (x0, Phi(x0)) instead of independent ones, on the straight path
  x_t = (1 - t) x0 + t Phi(x0). The new flow keeps the endpoint marginals (the pairs' marginals
  are the source and the old flow's output) and does not raise any convex transport cost
  E c(x1 - x0) (Liu et al.), and it is straighter: the pairs are a deterministic,
  already non-crossing coupling, so the segments between them rarely cross and the marginal
  field has little to average. Repeating it (reflow of a reflow run) straightens further;
  straight flows are integrated accurately with very few steps.
- **Distillation**: train a student whose ``nfe``-step Euler solve reaches the teacher's endpoint,

      L(theta) = E_x0 || Phi_theta^nfe(x0) - Phi(x0) ||^2,
      Phi_theta^nfe: x <- x + (1/nfe) v_theta(x, k / nfe),  k = 0 .. nfe - 1,

  (``objective = "distill"`` of :mod:`flowmatch.engine`), warm-started from the teacher.

Both build a normal run folder through :func:`flowmatch.engine.fit`: the new run's config is the
old run's ``config.json`` with ``pairs`` set to the pairs file, ``init_from`` to the old run
(stored relative to the new run folder, so that it can be moved), ``coupling = "independent"`` and ``bridge_sigma = 0`` (the pairs are fixed; no
re-pairing, no path noise), and the training options given. The pairs, in model coordinates, are
kept in the run folder as ``pairs.npz`` (arrays ``x0`` and ``x1``) and ``config.json`` refers to
that file, so ``flowmatch train --resume NEW_DIR`` finds them. While the first training runs, the
file sits next to the run folder as ``.NEW_DIR.pairs-PID-HOST.npz`` (the run folder itself appears
atomically, with its config, only when training starts); it is moved in when training ends or stops
(left there by a killed process, it is removed by the next training into that folder if no run names it:
:mod:`flowmatch.leftovers`).
Resuming also needs the old run folder (``init_from``) to still exist.

**Straightness** of a flow (:func:`straightness`):

    S = E_x0 int_0^1 || v(x_t, t) - (x_1 - x_0) ||^2 dt,

the mean squared deviation of the velocity along each trajectory x_t (the ODE solution from x0)
from its straight displacement x_1 - x_0, in model coordinates (summed over dimensions). S = 0
exactly when every trajectory is a straight line traversed at constant speed, which is when one
Euler step is exact. It is computed on the solver's grid t_0 .. t_N: the trajectory is solved with
the given solver and NFE, v is evaluated at the N + 1 grid points, and the integral is the
trapezoidal rule. ``relative`` divides by E ||x_1 - x_0||^2.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from flowmatch.errors import FlowmatchError
from flowmatch.solvers.integration import integrate
from flowmatch.storage import atomic_file

#: Offset between a run's training seed and the seed of its pair draws, so that the x0 of the
#: pairs differ from the noise that ``fit`` evaluates with (seed + 1).
PAIR_SEED_OFFSET = 1_000_003


#: Options a reflow or distillation may not change: they are fixed by the teacher run and its pairs.
FIXED_KEYS = (
    "data",
    "source",
    "seed",
    "standardize",
    "model",
    "width",
    "depth",
    "activation",
    "conditional",
    "pairs",
    "init_from",
    "objective",
    "distill_nfe",
)


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise FlowmatchError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@torch.no_grad()
def make_pairs(
    flow,
    n: int,
    *,
    solver: str = "rk4",
    nfe: int = 100,
    seed: int = 0,
    batch_size: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n pairs (x0, x1) in MODEL coordinates: x0 drawn with ``flow.draw_source``, x1 its endpoint.

    x1 = Phi(x0) solves dx/dt = flow.model(x, t) from t = 0 to 1 with ``solver`` and ``nfe``
    (in model coordinates; ``Flow.sample`` would return data coordinates). Float32 CPU tensors.
    """
    n = check_positive_int("the number of pairs", n)
    batch_size = check_positive_int("batch_size", batch_size)
    generator = torch.Generator().manual_seed(int(seed))
    x0 = flow.draw_source(n, generator).to(torch.float32)
    velocity = flow.velocity()
    was_training = flow.model.training
    flow.model.eval()
    try:
        x1 = torch.cat([integrate(velocity, chunk.to(flow.device), solver=solver, nfe=nfe).x.cpu() for chunk in x0.split(batch_size)])
    finally:
        flow.model.train(was_training)
    return x0, x1.to(torch.float32)


def save_pairs(path: str | os.PathLike, x0: torch.Tensor, x1: torch.Tensor) -> Path:
    """Write (x0, x1) to an .npz with arrays ``x0`` and ``x1``, atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, x0=x0.detach().cpu().numpy(), x1=x1.detach().cpu().numpy())
    return path


# -- measurements ------------------------------------------------------------------------------------
def few_step_w2(flow, *, solver: str = "euler", nfe: int = 1, n: int = 2000, seed: int = 1) -> float:
    """Exact W2 between n samples (``solver``, ``nfe``) and n held-out points, as ``fit`` measures."""
    from flowmatch.evaluation.metrics import w2_exact

    test = flow.dataset.test
    m = min(n, len(test) // 2)
    return w2_exact(flow.sample(m, solver=solver, nfe=nfe, seed=seed), test[:m])


@torch.no_grad()
def straightness(
    flow,
    n: int = 1000,
    *,
    solver: str = "rk4",
    nfe: int = 100,
    seed: int = 0,
    x0: torch.Tensor | None = None,
    relative: bool = False,
) -> float:
    """S = E_x0 int_0^1 ||v(x_t, t) - (x_1 - x_0)||^2 dt on the solver grid (see the module doc).

    ``flow`` is a :class:`flowmatch.flows.continuous.Flow` (x0: n draws of its source with ``seed``) or any
    velocity callable ``v(x, t)``, which then needs ``x0``. ``relative=True`` returns
    S / E ||x_1 - x_0||^2 instead. 0 for a perfectly straight flow.
    """
    velocity: Callable
    if hasattr(flow, "velocity") and hasattr(flow, "draw_source"):
        velocity = flow.velocity()
        if x0 is None:
            n = check_positive_int("n", n)
            x0 = flow.draw_source(n, torch.Generator().manual_seed(int(seed))).to(flow.device)
    elif callable(flow):
        velocity = flow
        if x0 is None:
            raise FlowmatchError("straightness of a velocity callable needs the starting points x0")
    else:
        raise FlowmatchError(f"straightness needs a Flow or a velocity callable, got {type(flow).__name__}")
    solution = integrate(velocity, x0, solver=solver, nfe=nfe, return_trajectory=True)
    times, trajectory = solution.times, solution.trajectory  # (N + 1,), (N + 1, n, ...)
    assert times is not None and trajectory is not None  # return_trajectory=True
    displacement = trajectory[-1] - trajectory[0]
    deviation = torch.stack(
        [(velocity(x, t.to(device=x.device, dtype=x.dtype)) - displacement).pow(2).flatten(1).sum(1) for x, t in zip(trajectory, times)]
    ).double()  # (N + 1, n)
    h = times.diff().to(deviation.device)
    integral = (0.5 * h[:, None] * (deviation[1:] + deviation[:-1])).sum(0)  # trapezoid per trajectory
    value = integral.mean().item()
    if relative:
        value /= displacement.flatten(1).pow(2).sum(1).double().mean().item()
    return value
