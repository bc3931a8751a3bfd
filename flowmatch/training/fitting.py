"""A whole run: train, measure, and write the finished run folder; resuming a run's saved config."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from flowmatch.errors import FlowmatchError
from flowmatch.leftovers import locks_run, tidy_parent, tidy_run
from flowmatch.storage import write_json
from flowmatch.training.config import TrainConfig, _posterior_obstacle, kind_defaults, resolve_kind
from flowmatch.training.distributed import _distributed_env
from flowmatch.training.loop import TrainResult, train
from flowmatch.training.objective import NonFiniteLoss
from flowmatch.training.threads import thread_scope

#: The fewest held-out test rows a run on finite data can be measured with: the quick evaluation's k-NN
#: precision and recall (k = 3) score two halves of at least 4 (a data file of 38 rows).
MIN_TEST_ROWS = 8


# -- a whole run ---------------------------------------------------------------------------------
@thread_scope
@locks_run("out")
def fit(
    config: TrainConfig | None = None,
    out: str | os.PathLike | None = None,
    *,
    model: Any = None,
    data: Any = None,
    path: Any = None,
    source: Any = None,
    reference: Any = None,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    n_eval: int = 2000,
    **overrides,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train, measure W2 against held-out data, and (with ``out``) write the finished run folder.

    ``model``, ``data``, ``path`` and ``source`` are as for :func:`train`. ``reference`` (held-out points
    in data coordinates) replaces the data's own test split; streamed data have none, so without it
    their run reports the training figures only. Other keywords override the config's fields
    (``fit(out="runs/x", data="moons", steps=2000)``).

    ``resume=True`` continues the run in ``out`` from its newest checkpoint with its saved config
    (``config`` may then only raise ``steps``). With ``evaluate`` (the default) a quick evaluation
    (``flowmatch.evaluation.evaluate(quick=True)``) writes ``report.json`` into the run folder.

    Metrics: the mean loss over the last 100 steps; exact W2 between ``n_eval`` rk4 (NFE 100)
    samples (a distilled student: Euler at its ``distill_nfe``; a MeanFlow model: one jump) and
    ``n_eval`` held-out points; and the floor, W2 between two disjoint held-out draws of the same size.
    Held-out sets smaller than 2 * n_eval are split in two halves.

    Token sequences and mixed-type tables (``kind`` tokens or table, or ``auto`` on a .txt file, the
    built-in corpus, or a CSV with text columns or empty cells) train by discrete flow matching:
    :func:`flowmatch.discrete.training.fit_discrete`, with the kind's defaults under what is given; it
    returns a :class:`~flowmatch.discrete.training.DiscreteResult` and its metrics. Points on a manifold
    (``kind`` manifold, or ``auto`` on a built-in manifold set or with ``manifold`` given) train by Riemannian
    flow matching: :func:`flowmatch.manifolds.training.fit_manifold`, likewise, returning a
    :class:`~flowmatch.manifolds.training.ManifoldResult`.
    """
    from flowmatch.runs import check_writable_run
    from flowmatch.training.inputs import check_arguments, split_objects

    check_arguments(out, "out", force=force, resume=resume, progress=progress, evaluate=evaluate)
    if isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 2:
        raise FlowmatchError(f"n_eval must be an integer >= 2, got {n_eval!r}")

    if out is not None and resume:  # what killed processes left (flowmatch.leftovers), the run folder locked
        tidy_run(out)
    elif out is not None:
        tidy_parent(out)
    given = {"model": model, "data": data, "path": path, "source": source}
    if (
        not resume
        and isinstance(data, (str, type(None)))
        and isinstance(model, (torch.nn.Module, type(None)))
        and path is None
        and source is None
    ):
        from flowmatch.discrete.training import fit_discrete

        probe = split_objects(config, overrides, **{**given, "model": None})[0]
        kind = resolve_kind(probe)
        if kind != "continuous":
            if config is None:  # the kind's network and batches under what was given
                base = TrainConfig.from_dict({**kind_defaults(kind, overrides), "kind": kind})
                probe = split_objects(base, overrides, **{**given, "model": None})[0]
            if kind == "manifold":
                from flowmatch.manifolds.training import fit_manifold

                return fit_manifold(probe, out, model=model, force=force, progress=progress, evaluate=evaluate)  # type: ignore[return-value]
            return fit_discrete(probe, out, model=model, force=force, progress=progress, evaluate=evaluate)  # type: ignore[return-value]
    if resume:
        if out is None:
            raise FlowmatchError("resume needs the run folder")
        if Path(out).is_dir():  # a read-only run: refused before any work
            from flowmatch.storage import check_writable

            check_writable(Path(out) / "config.json")
        if config is not None or overrides:  # the saved model may stay out: the checkpoint rebuilds it
            rebuilt = {"model": "python"} if model is None and _saved_value(Path(out), "model") == "python" else {}
            base = config if config is not None else resume_config(Path(out), None)  # fit(out, resume=True, steps=N)
            config = split_objects(base, {**rebuilt, **overrides}, resume=True, **given)[0]
        config = resume_config(Path(out), config)
        if config.kind in ("tokens", "table", "manifold"):
            raise FlowmatchError(f"'{out}' is a {config.kind} run, which cannot be resumed yet: train it again with more steps")
    else:
        config, _ = split_objects(config, overrides, **given)  # "python" where an object is given
        if out is not None:
            check_writable_run(Path(out), force)  # fail before spending time on training
    if resume or out is None:
        return _train_and_measure(config, out, resume, progress, evaluate, reference, n_eval, given)
    with _removed_on_failure(Path(out)):  # a new run that fails leaves no folder behind
        return _train_and_measure(config, out, resume, progress, evaluate, reference, n_eval, given)


@contextmanager
def _removed_on_failure(folder: Path) -> Iterator[None]:
    """On an error in the body, remove the run folder the body put at ``folder`` (one that was there before
    is left alone: nothing replaced it yet). A non-finite loss is not such an error: the run keeps its last
    good checkpoint (as a Ctrl-C keeps a resumable one)."""

    def identity() -> tuple[int, int] | None:
        try:
            stat = folder.stat()
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    before = identity()
    try:
        yield
    except NonFiniteLoss:
        raise
    except Exception:
        now = identity()
        if now is not None and now != before:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _train_and_measure(config, out, resume, progress, evaluate, reference, n_eval, given) -> tuple[TrainResult, dict[str, Any]]:
    """:func:`fit` from its resolved config on: train, measure, and write the finished run folder."""
    from flowmatch.plots.figures import plot_samples

    needed = 0 if reference is not None else MIN_TEST_ROWS  # the test split is what the measurements score
    result = train(config, run_dir=out, resume=resume, progress=progress, min_test_rows=needed, **given)
    if result.interrupted or _distributed_env()[1] != 0:
        return result, {}

    flow = result.flow
    if reference is None and flow._dataset is None:  # streamed data: nothing held out to measure against
        return result, _unmeasured(result, out)
    test = flow.dataset.test if reference is None else _reference_points(reference, flow.dim)
    samples, held, metrics = _measure(result, test, n_eval)
    report = None
    if out is not None:
        folder = Path(out)
        flow.save_checkpoint(folder)
        name = "data from Python" if config.data == "python" else config.data
        title = f"{name}: W2 {metrics['w2']:.3f} (floor {metrics['w2_floor']:.3f})"
        image_shape = getattr(flow.dataset, "image_shape", None) if reference is None else None
        if image_shape is not None:  # images are looked at, not scattered by their first two pixels
            from flowmatch.plots.images import save_image_grid

            save_image_grid(samples[:64], tuple(image_shape), folder / "samples.png", nrow=8, title=title)
        else:
            plot_samples(samples, held, folder / "samples.png", title=title)
        if evaluate:
            from flowmatch.evaluation.report import evaluate as quick_evaluation

            report = quick_evaluation(flow, folder, quick=True, seed=config.seed, reference=reference)
    if report is not None:
        memo = report.get("memorisation")
    elif reference is None:  # the same figures the quick evaluation reports (same samples), for a run without it
        from flowmatch.evaluation.report import memorisation_report

        memo = memorisation_report(flow, quick=True, seed=config.seed)
    else:
        memo = None
    if memo is not None:
        metrics["memorisation"] = memo
    if out is not None:
        write_json(Path(out) / "metrics.json", metrics)
    if report is not None:
        metrics["report"] = report
    return result, metrics


def _measure(result: TrainResult, test: torch.Tensor, n_eval: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(samples, held-out points, metrics): exact W2 of min(n_eval, N/2) samples against as many held-out
    points, and its floor against the next as many; the run's training figures beside them."""
    from flowmatch.evaluation.metrics import w2_exact

    config, flow = result.config, result.flow
    m = min(n_eval, len(test) // 2)
    held_a, held_b = test[:m], test[m : 2 * m]
    solver, nfe = flow.resolve_sampler()  # rk4 at NFE 100; a student's own Euler NFE; MeanFlow's one jump
    samples = flow.sample(m, solver=solver, nfe=nfe, seed=config.seed + 1)
    w2, floor = w2_exact(samples, held_a), w2_exact(held_b, held_a)
    metrics = {
        "final_loss": result.final_loss, "w2": w2, "w2_floor": floor, "w2_ratio": w2 / floor if floor > 0 else math.nan, "n_eval": m,
        "sampler": {"solver": solver, "nfe": nfe}, "train_seconds": result.seconds, "steps": config.steps,
        "steps_run": result.step, "precision": result.precision, "target": result.target, "threads": result.threads,
    }  # fmt: skip
    if result.validation is not None:
        metrics["validation"] = result.validation
    return samples, held_a, metrics


def _saved_value(run: Path, key: str) -> Any:
    from flowmatch.storage import read_json

    values = read_json(run / "config.json") if (run / "config.json").is_file() else {}
    return values.get(key) if isinstance(values, dict) else None


def _reference_points(reference: Any, dim: int) -> torch.Tensor:
    from flowmatch.evaluation.report import _points

    points = _points(reference, dim, "reference")
    if len(points) < 4:
        raise FlowmatchError(f"reference must hold at least 4 points, got {len(points)}")
    return points


def _unmeasured(result: TrainResult, out) -> dict[str, Any]:
    """The metrics of a run with no held-out data: the training figures, the weights saved."""
    metrics = {
        "final_loss": result.final_loss, "train_seconds": result.seconds, "steps": result.config.steps,
        "steps_run": result.step, "precision": result.precision, "target": result.target, "threads": result.threads,
        "w2": None, "note": "no held-out data: pass reference= to measure the samples",
    }  # fmt: skip
    if out is not None:
        result.flow.save_checkpoint(Path(out))
        write_json(Path(out) / "metrics.json", metrics)
    return metrics


#: Keys added to TrainConfig after runs were first saved, with the value that reproduces a run saved
#: without them (its config.json lacks the key): resuming such a run continues it as it started.
ADDED_KEYS = {"batch_warmup": 0, "time_strata": 0, "target": "conditional", "val_fraction": 0.0, "select": "last", "early_stop": 0}


def resume_config(run: Path, config: TrainConfig | None) -> TrainConfig:
    """The saved config of a run to resume; ``config`` may differ from it only by more steps and its
    ``threads`` (a machine's setting: a different count may change float rounding, not what is trained)."""
    from flowmatch.runs import config_for_file, config_from_file
    from flowmatch.storage import read_json

    if not (run / "config.json").is_file():
        raise FlowmatchError(f"cannot resume: '{run}' is not a flowmatch run folder (config.json is missing)")
    values = config_from_file(read_json(run / "config.json"), run)  # paths relative to the run folder resolved
    if isinstance(values, dict):
        old = "val_fraction" not in values  # saved before the finite-data rules (target auto by data size)
        values = {**ADDED_KEYS, **values}
        if old and values["target"] == "auto":  # auto then meant the posterior wherever it applies
            probe = TrainConfig.from_dict({**values, "target": "conditional"}, source=f"{run / 'config.json'}")
            values["target"] = "conditional" if _posterior_obstacle(probe) else "posterior"
    saved = TrainConfig.from_dict(values, source=f"{run / 'config.json'}")
    if config is None:
        return saved
    changed = [k for k, v in config.to_dict().items() if k not in ("steps", "threads") and saved.to_dict()[k] != v]
    if changed:
        raise FlowmatchError(f"cannot change {', '.join(changed)} when resuming; only steps may be raised (and threads set)")
    if config.steps < saved.steps:
        raise FlowmatchError(f"cannot resume with fewer steps ({config.steps}) than the run had ({saved.steps})")
    if config.steps != saved.steps or config.threads != saved.threads:
        write_json(run / "config.json", config_for_file(config.to_dict(), run))
    return config
