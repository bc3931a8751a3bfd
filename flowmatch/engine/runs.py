"""Run folders, whatever their modality: the files, the format version, paths stored relative to the folder,
and the checks before a folder is written.

A run folder holds::

    config.json              the resolved training config (paths relative to the folder), and under
                             ``resolved`` what the run decided when it started: the precision ``auto``
                             chose and the measured bf16 speed ratio (:func:`config_record`)
    checkpoint.safetensors   the final weights (never pickled)
    checkpoint.json          what rebuilds the flow around them: its kind, the model's config or importable
                             factory and JSON arguments, and the modality's own (path, standardiser,
                             conditions, codec, manifold, ...)
    checkpoints/             training checkpoints (flowmatch.engine.checkpoints), for resume
    metrics.csv              the loss (and validation.csv the validation loss) as training goes
    metrics.json             the finished run's figures
    report.json              the quick evaluation
    samples.*                what it generates (samples.png; samples.txt for text; samples.csv for a table)

Folders are written to a staging directory next to the target and renamed into place, so a failed or
interrupted write never leaves a half-written run and an existing run is only replaced with ``force``.
:func:`flowmatch.load` rebuilds a run's flow in one call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowmatch.errors import FlowmatchError
from flowmatch.saving import CHECKPOINT, CHECKPOINT_META, CONFIG, RESOLVED, check_format, check_meta_digest, read_tensors
from flowmatch.storage import read_json, write_json


def final_step(folder: Path) -> int | None:
    """The step at which a finished run's weights were saved (``steps_run`` in metrics.json), None if unknown."""
    try:
        metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else None
    except FlowmatchError:
        return None
    value = metrics.get("steps_run") if isinstance(metrics, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


#: A finished run's files that describe its last step, removed when training continues (:func:`reopen_run`).
FINAL_FILES = (CHECKPOINT, CHECKPOINT_META, "metrics.json", "report.json")


def reopen_run(folder: str | os.PathLike) -> None:
    """Make a finished run that training continues (``--resume --steps N``) unfinished again: its final
    weights, metrics.json and report.json describe the old last step, so they are removed, the weights
    first (at no moment is the run finished with another step's figures). Until the new end is written,
    :func:`flowmatch.load` uses the newest training checkpoint and says which."""
    for name in FINAL_FILES:
        (Path(folder) / name).unlink(missing_ok=True)


#: config.json keys that name a file or folder: stored relative to the run folder (:func:`config_for_file`),
#: so that a run folder moved with what it names (its own pairs.npz; a teacher run beside it) still resumes.
PATH_KEYS = ("pairs", "init_from")


def config_for_file(values: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """A config (as a dict) as config.json in ``folder`` stores it: :data:`PATH_KEYS` relative to ``folder``
    (a path given relative to the working directory is taken from there first)."""
    out = dict(values)
    for key in PATH_KEYS:
        if isinstance(out.get(key), str) and out[key]:
            try:
                out[key] = os.path.relpath(os.path.abspath(out[key]), os.path.abspath(folder))
            except ValueError:  # another drive (Windows): no relative path
                out[key] = os.path.abspath(out[key])
    return out


def config_from_file(values: Any, folder: str | os.PathLike) -> Any:
    """config.json's values from ``folder`` with :data:`PATH_KEYS` as absolute paths, resolved against
    ``folder`` (absolute ones, which runs saved before paths were relative hold, as they are)."""
    if not isinstance(values, dict):
        return values
    out = dict(values)
    for key in PATH_KEYS:
        if isinstance(out.get(key), str) and out[key] and not os.path.isabs(out[key]):
            out[key] = os.path.normpath(os.path.join(os.path.abspath(folder), out[key]))
    return out


def config_values(values: dict[str, Any]) -> dict[str, Any]:
    """config.json's config keys: its values without the run's record (:data:`~flowmatch.saving.RESOLVED`),
    which is no option of a config."""
    return {k: v for k, v in values.items() if k != RESOLVED}


def config_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """What a run recorded in its config.json when it started (None for a run saved before runs recorded it)."""
    values = read_json(Path(folder) / CONFIG)
    record = values.get(RESOLVED) if isinstance(values, dict) else None
    return record if isinstance(record, dict) else None


def write_config(file: str | os.PathLike, values: dict[str, Any], record: dict[str, Any] | None, folder: str | os.PathLike) -> None:
    """config.json ``file`` of the run in ``folder``: a config's ``values`` (paths relative to ``folder``:
    :func:`config_for_file`) with the run's ``record`` beside them (where there is one)."""
    out = config_for_file(config_values(values), folder)
    if record is not None:
        out[RESOLVED] = record
    write_json(Path(file), out)


def check_writable_run(target: Path, force: bool) -> None:
    """Refuse, before any work, a run folder that cannot be written: a file, a folder that is not a run (or a
    run without ``force``), or a place where no folder can be made (:func:`~flowmatch.storage.check_writable`)."""
    from flowmatch.storage import check_writable, reading

    if target.exists() and not target.is_dir():
        raise FlowmatchError(f"output '{target}' exists and is not a folder")
    with reading(target):
        occupied = target.exists() and any(target.iterdir())
    if occupied:
        if not (target / CONFIG).is_file():
            raise FlowmatchError(f"output '{target}' exists and is not a flowmatch run folder; refusing to replace it")
        if not force:
            raise FlowmatchError(f"run folder '{target}' already exists; pass force=True to replace it")
    check_writable(target)


@dataclass
class SavedRun:
    """What a run folder holds of a flow (:func:`read_run`): its config, the checkpoint metadata and weights to
    rebuild it, where they were read, and why a training checkpoint was read in place of the final weights."""

    folder: Path
    config: dict[str, Any]
    meta: dict[str, Any]
    weights: dict[str, Any]
    where: Path
    note: str | None = None
    digest: str | None = None  # the weights' record of the metadata saved with them (checked by check_meta)

    def check_meta(self) -> None:
        """Refuse metadata changed after the weights were saved (:func:`flowmatch.saving.check_meta_digest`): called
        once the flow is built, so that metadata that contradicts itself or the weights' shapes is named first."""
        check_meta_digest(self.meta, self.digest, self.where)

    @property
    def kind(self) -> str:
        """The flow's kind, checkpoint.json's (runs of points and images saved before kinds were written there
        have none: ``continuous``)."""
        return self.meta.get("kind") or "continuous"


def read_run(run_dir: str | os.PathLike) -> SavedRun:
    """Read a run folder's flow (weights with safetensors, never unpickled): a finished run's final weights, or
    the newest training checkpoint (EMA weights where kept) of a run stopped during training, or of a finished
    run that was resumed with more steps and stopped again (its training checkpoints are newer than the final
    weights, by ``steps_run`` in metrics.json); ``note`` then says which step and why. Interrupted replacements
    are recovered and stale temporary files removed first (:func:`flowmatch.leftovers.tidy_run`)."""
    from safetensors import SafetensorError

    from flowmatch.engine.checkpoints import latest_state, list_states, step_of, unprefixed
    from flowmatch.leftovers import tidy_run
    from flowmatch.storage import read_json_object

    folder = Path(run_dir)
    tidy_run(folder)
    if not folder.is_dir():
        raise FlowmatchError(f"run folder '{folder}' does not exist")
    if not (folder / CONFIG).is_file():
        raise FlowmatchError(f"'{folder}' is not a flowmatch run folder: {CONFIG} is missing")
    config = config_from_file(read_json_object(folder / CONFIG), folder)
    finished = (folder / CHECKPOINT).is_file() and (folder / CHECKPOINT_META).is_file()
    states = list_states(folder)
    final = final_step(folder) if finished and states else None
    if final is not None and step_of(states[-1]) <= final:
        final = None  # the final weights are the newest state
    if (finished and final is None) or not states:
        for name in (CHECKPOINT, CHECKPOINT_META):
            if not (folder / name).is_file():
                raise FlowmatchError(f"'{folder}' is not a flowmatch run folder: {name} is missing")
        meta = read_json(folder / CHECKPOINT_META)
        check_format(meta, folder / CHECKPOINT_META)
        try:
            weights, digest = read_tensors(folder / CHECKPOINT)
        except (SafetensorError, OSError, ValueError) as exc:
            raise FlowmatchError(f"{folder / CHECKPOINT}: cannot read the weights (truncated or corrupt?): {exc}") from None
        return SavedRun(folder, config, meta, weights, folder / CHECKPOINT, digest=digest)
    where, tensors, state_meta = latest_state(folder)
    meta = state_meta.get("flow", {})
    check_format(meta, where)
    weights = {**unprefixed("model", tensors), **unprefixed("ema", tensors)}  # EMA parameters, the model's buffers
    why = (
        f"its {CHECKPOINT} is from step {final} and training went on"
        if final is not None
        else f"it has no {CHECKPOINT} (training did not finish)"
    )
    note = f"'{folder}': loaded training checkpoint step {step_of(Path(where))} (EMA weights where kept): {why}"
    return SavedRun(folder, config, meta, weights, Path(where), note)
