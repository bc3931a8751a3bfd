"""Reflow and distillation: a new run trained on the (source, sample) pairs of a teacher run.

The pairs and the measurements are the points modality's (:mod:`flowmatch.modalities.points.rectify`, whose
docstring has the math); here a teacher run is loaded, its pairs made and kept, and the new run trained with
:func:`flowmatch.fit`. Runs of other modalities are refused by name (their modality's ``rectify`` says why).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from flowmatch.engine.threads import positions_of, thread_scope, use_threads
from flowmatch.errors import FlowmatchError
from flowmatch.leftovers import locks_run, owner
from flowmatch.modalities.points.rectify import (
    FIXED_KEYS,
    PAIR_SEED_OFFSET,
    check_positive_int,
    few_step_w2,
    make_pairs,
    save_pairs,
    straightness,
)
from flowmatch.storage import atomic_file, make_folder, write_json


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
    ``(TrainResult, metrics)`` as :func:`flowmatch.engine.fit` does; ``metrics`` also has
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
    if isinstance(teacher_nfe, int) and not isinstance(teacher_nfe, bool) and nfe >= teacher_nfe:
        raise FlowmatchError(
            f"the student's nfe {nfe} must be below its teacher's ({teacher_nfe}): distillation makes a sampler of fewer steps "
            "(each of the student's steps is unrolled and backpropagated through in training)"
        )
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
    from flowmatch.api import fit
    from flowmatch.config import TrainConfig, modality
    from flowmatch.engine.runs import check_writable_run
    from flowmatch.flows.continuous import CPU_BATCH_SIZE
    from flowmatch.runs import load
    from flowmatch.storage import read_json

    run_dir, out = Path(run_dir), Path(out)
    n_pairs = check_positive_int("the number of pairs", n_pairs)
    steps = check_positive_int("steps", steps)
    fixed = sorted(set(options) & set(FIXED_KEYS))
    if fixed:
        raise FlowmatchError(f"{', '.join(fixed)} cannot be set here: they come from the teacher run and its pairs")
    teacher = load(run_dir)  # a missing or broken run folder is the first error
    why = modality(teacher.kind).rectify
    if why is not None:
        command = "reflow" if objective == "flow-matching" else "distill"
        raise FlowmatchError(f"{command} does not apply to '{run_dir}', {modality(teacher.kind).label}: {why}")
    from flowmatch.memory import require_memory

    # x0 and x1, their concatenation and the file's copy: four float32 arrays of n_pairs x dim
    require_memory(16 * n_pairs * teacher.dim, f"{n_pairs} teacher pairs of dimension {teacher.dim}", "ask for fewer pairs")
    if out.resolve() == run_dir.resolve():
        raise FlowmatchError(f"the new run folder must differ from the teacher run '{run_dir}'")
    check_writable_run(out, force)  # fail before generating pairs
    from flowmatch.engine.runs import config_values

    saved = read_json(run_dir / "config.json")
    old = TrainConfig.from_dict(config_values(saved) if isinstance(saved, dict) else saved, source=str(run_dir / "config.json"))
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
    from flowmatch.engine.runs import config_for_file, config_from_file
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
