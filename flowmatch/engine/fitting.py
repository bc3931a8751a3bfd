"""A whole run, for every modality: train, measure, and write the finished run folder.

:func:`run` trains with the one loop (:func:`flowmatch.engine.loop.train`), then, on the main process of a
run that was not interrupted, asks the modality to measure it (:meth:`~flowmatch.engine.seam.Modality.finish`:
its quality figures, the memorisation figures of finite data, its samples and pictures, report.json) and
writes the final weights and metrics.json beside the engine's training figures. A new run that fails leaves
no folder; one stopped by Ctrl-C or SIGTERM keeps a resumable checkpoint; one stopped by a NaN loss keeps its
last good checkpoint. The public entry is :func:`flowmatch.fit`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flowmatch.engine.distributed import distributed_env
from flowmatch.engine.loop import TrainResult, train
from flowmatch.engine.seam import Modality, NonFiniteLoss, Objects
from flowmatch.saving import save_flow
from flowmatch.storage import write_json

#: The fewest held-out test rows a run on finite data can be measured with: the quick evaluation's k-NN
#: precision and recall (k = 3) score two halves of at least 4 (a data file of 38 rows).
MIN_TEST_ROWS = 8


def run(
    config: Any, modality: Modality, objects: Objects, out: Path | None, *, resume: bool, progress: bool, evaluate: bool,
    reference: Any, n_eval: int,
) -> tuple[TrainResult, dict[str, Any]]:  # fmt: skip
    """Train ``config`` on ``modality`` and, unless interrupted, measure the run and write its folder ``out``
    whole (the checks of ``out`` are the caller's, before any work). A new run that fails leaves no folder."""
    if resume or out is None:
        return _train_and_measure(config, modality, objects, out, resume, progress, evaluate, reference, n_eval)
    with _removed_on_failure(out):  # a new run that fails leaves no folder behind
        return _train_and_measure(config, modality, objects, out, resume, progress, evaluate, reference, n_eval)


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


def _train_and_measure(config, modality, objects, out, resume, progress, evaluate, reference, n_eval) -> tuple[TrainResult, dict[str, Any]]:
    needed = 0 if reference is not None else MIN_TEST_ROWS  # the test split is what the measurements score
    result = train(config, modality, objects, run_dir=out, resume=resume, progress=progress, min_test_rows=needed)
    if result.interrupted or distributed_env()[1] != 0:
        return result, {}
    folder = Path(out) if out is not None else None
    if folder is not None:  # the final weights first: a run killed from here on loads them
        save_flow(result.flow, folder)
    measured = modality.finish(result, folder, evaluate=evaluate, reference=reference, n_eval=n_eval)
    report = measured.pop("report", None)
    metrics: dict[str, Any] = {"kind": modality.kind, "final_loss": result.final_loss, **measured, **training_figures(result)}
    if folder is not None:  # last: a run folder with metrics.json is finished
        write_json(folder / "metrics.json", metrics)
    if report is not None:
        metrics["report"] = report
    return result, metrics


def training_figures(result: TrainResult) -> dict[str, Any]:
    """What every finished run's metrics.json holds about its training, whatever its modality."""
    figures: dict[str, Any] = {
        "train_seconds": result.seconds, "steps": result.config.steps, "steps_run": result.step, "precision": result.precision,
        "target": result.target, "threads": result.threads,
    }  # fmt: skip
    if result.bf16_speedup is not None:  # precision auto's start-up micro-benchmark: fp32 time over bf16 time
        figures["bf16_speedup"] = result.bf16_speedup
    if result.validation is not None:
        figures["validation"] = result.validation
    if result.data_exhausted:
        figures["data_exhausted"] = True
    return figures
