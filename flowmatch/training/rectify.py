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

  (``objective = "distill"`` of :mod:`flowmatch.training`), warm-started from the teacher.

Both build a normal run folder through :func:`flowmatch.training.fit`: the new run's config is the
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
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowmatch.errors import FlowmatchError
from flowmatch.leftovers import locks_run, owner
from flowmatch.solvers.integration import integrate
from flowmatch.storage import atomic_file, make_folder, write_json
from flowmatch.training.threads import positions_of, thread_scope, use_threads

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


def _check_positive_int(name: str, value) -> int:
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
    n = _check_positive_int("the number of pairs", n)
    batch_size = _check_positive_int("batch_size", batch_size)
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


# -- reflow and distillation -----------------------------------------------------------------------
def reflow(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    n_pairs: int = 20_000,
    steps: int = 3000,
    teacher_solver: str = "rk4",
    teacher_nfe: int = 100,
    pair_seed: int | None = None,
    force: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    **options: Any,
):
    """Train a rectified flow on the pairs of the flow in ``run_dir``; write the run to ``out``.

    ``options`` are further training options (``lr``, ``batch_size``, ``ema``, ``lr_schedule``,
    ``warmup``, ``path``, ...); the data, source, seed and architecture are the old run's. Returns
    ``(TrainResult, metrics)`` as :func:`flowmatch.training.fit` does; ``metrics`` also has
    ``few_step`` (W2 with 1 and 2 Euler steps), ``straightness`` and ``pair_seconds``.
    """
    return _retrain(
        run_dir, out, n_pairs=n_pairs, steps=steps, teacher_solver=teacher_solver, teacher_nfe=teacher_nfe,
        pair_seed=pair_seed, force=force, progress=progress, evaluate=evaluate, objective="flow-matching",
        student_nfe=None, options=options,
    )  # fmt: skip


def distill(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    nfe: int = 1,
    n_pairs: int = 20_000,
    steps: int = 3000,
    teacher_solver: str = "rk4",
    teacher_nfe: int = 100,
    pair_seed: int | None = None,
    force: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    **options: Any,
):
    """Distil the flow in ``run_dir`` into a student that samples with ``nfe`` Euler steps.

    The student starts from the teacher's weights and minimises || Phi_student^nfe(x0) - x1 ||^2
    over the teacher's pairs. Sample it with ``solver="euler", nfe=nfe`` (other solvers or NFEs
    are not what it was trained for). ``metrics["few_step"]`` holds its W2 at that setting.
    """
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise FlowmatchError(f"the student's nfe must be a positive integer, got {nfe!r}")
    return _retrain(
        run_dir, out, n_pairs=n_pairs, steps=steps, teacher_solver=teacher_solver, teacher_nfe=teacher_nfe,
        pair_seed=pair_seed, force=force, progress=progress, evaluate=evaluate, objective="distill",
        student_nfe=int(nfe), options=options,
    )  # fmt: skip


@thread_scope
@locks_run("out")
def _retrain(
    run_dir, out, *, n_pairs, steps, teacher_solver, teacher_nfe, pair_seed, force, progress, evaluate, objective, student_nfe, options
):
    from flowmatch.flow import CPU_BATCH_SIZE
    from flowmatch.runs import check_writable_run, load
    from flowmatch.storage import read_json
    from flowmatch.training.config import TrainConfig
    from flowmatch.training.fitting import fit

    run_dir, out = Path(run_dir), Path(out)
    n_pairs = _check_positive_int("the number of pairs", n_pairs)
    steps = _check_positive_int("steps", steps)
    fixed = sorted(set(options) & set(FIXED_KEYS))
    if fixed:
        raise FlowmatchError(f"{', '.join(fixed)} cannot be set here: they come from the teacher run and its pairs")
    teacher = load(run_dir)  # a missing or broken run folder is the first error
    if out.resolve() == run_dir.resolve():
        raise FlowmatchError(f"the new run folder must differ from the teacher run '{run_dir}'")
    check_writable_run(out, force)  # fail before generating pairs
    old = TrainConfig.from_dict(read_json(run_dir / "config.json"), source=str(run_dir / "config.json"))
    if old.to_dict().get("conditional"):
        raise FlowmatchError(
            f"'{run_dir}' is a class-conditional run; reflow and distillation of those are not supported (the pairs carry no labels)"
        )
    pending = out.parent.resolve() / f".{out.name}.pairs-{owner()}.npz"
    values = {
        **old.to_dict(),
        "coupling": "independent",
        "bridge_sigma": 0.0,
        "target": "auto",  # fixed pairs: their own velocity
        "objective": objective,
        "steps": steps,
        "init_from": str(run_dir.resolve()),
        "pairs": str(pending),
        **options,
    }
    if student_nfe is not None:
        values["distill_nfe"] = student_nfe
    if values["warmup"] >= steps:
        values["warmup"] = 0
    config = TrainConfig.from_dict(values, source="options")  # checks the options before any work
    if pair_seed is None:
        pair_seed = old.seed + PAIR_SEED_OFFSET

    use_threads(config.threads, teacher.model, min(n_pairs, CPU_BATCH_SIZE), positions_of(teacher.shape))  # the pairs' solves
    started = time.perf_counter()
    x0, x1 = make_pairs(teacher, n_pairs, solver=teacher_solver, nfe=teacher_nfe, seed=pair_seed)
    pair_seconds = time.perf_counter() - started
    make_folder(out.parent)
    save_pairs(pending, x0, x1)
    try:
        result, metrics = fit(config, out=out, force=force, progress=progress, evaluate=evaluate)
    finally:
        _adopt_pairs(out, pending)
    if not metrics:  # interrupted (or not the main process): the run folder is resumable as it is
        return result, metrics
    metrics = {
        **metrics,
        "teacher": str(run_dir.resolve()),
        "pairs": {"n": n_pairs, "solver": teacher_solver, "nfe": teacher_nfe, "seed": pair_seed},
        "pair_seconds": pair_seconds,
    }
    if evaluate:
        nfes = [student_nfe] if student_nfe is not None else [1, 2]
        metrics["few_step"] = {f"euler-{k}": few_step_w2(result.flow, solver="euler", nfe=k, seed=config.seed + 1) for k in nfes}
        if student_nfe is None:
            metrics["straightness"] = straightness(result.flow, n=1000, seed=config.seed + 2)
        metrics["few_step"]["floor"] = metrics["w2_floor"]
        write_json(out / "metrics.json", metrics)
    return result, metrics


def _adopt_pairs(out: Path, pending: Path) -> None:
    """Move the pairs file into the run folder and point its config.json there (crash-safe order).

    Link (or copy) first, then rewrite the config, then remove the old name: at every moment the
    config names a file that exists. If the run folder never appeared, the file is just removed.
    """
    from flowmatch.runs import config_for_file, config_from_file
    from flowmatch.storage import read_json

    config_path = out / "config.json"
    try:
        if not pending.exists():
            return
        if not config_path.is_file() or config_from_file(read_json(config_path), out).get("pairs") != os.path.normpath(pending):
            return
        final = out / "pairs.npz"
        try:
            final.unlink(missing_ok=True)
            os.link(pending, final)
        except OSError:
            with atomic_file(final) as tmp:
                shutil.copyfile(pending, tmp)
        write_json(config_path, config_for_file({**config_from_file(read_json(config_path), out), "pairs": str(final)}, out))
    finally:
        pending.unlink(missing_ok=True)


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

    ``flow`` is a :class:`flowmatch.flow.Flow` (x0: n draws of its source with ``seed``) or any
    velocity callable ``v(x, t)``, which then needs ``x0``. ``relative=True`` returns
    S / E ||x_1 - x_0||^2 instead. 0 for a perfectly straight flow.
    """
    velocity: Callable
    if hasattr(flow, "velocity") and hasattr(flow, "draw_source"):
        velocity = flow.velocity()
        if x0 is None:
            n = _check_positive_int("n", n)
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
