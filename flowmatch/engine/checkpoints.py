"""Crash-safe training checkpoints inside a run folder.

A training checkpoint is a folder ``RUN/checkpoints/step-00001234/`` holding ``state.safetensors``
(every tensor: weights, EMA weights, optimiser moments, random-number-generator states) and
``state.json`` (step, optimiser hyper-parameters and other plain values). It is written to a
staging folder, each file flushed with fsync, and renamed into place, so at any moment each
checkpoint folder is either complete or absent; after a crash the newest complete one is used.
The last ``keep`` checkpoints are kept.

Both go through :mod:`flowmatch.storage`, as do the files that replace another (the final
``checkpoint.safetensors``, ``metrics.json``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from flowmatch.errors import FlowmatchError
from flowmatch.saving import META_DIGEST, STATE_META, check_meta_digest, meta_digest, read_tensors
from flowmatch.storage import atomic_folder, save_tensors

STATE_TENSORS = "state.safetensors"


FOLDER = "checkpoints"


def save_state(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the newest ``keep``, except the newest one
    before ``step``: the loss of step ``step``'s weights is only known at the next training step, so until
    then that one is the last checkpoint known to be good (:func:`drop_states_from`)."""
    root = Path(run_dir) / FOLDER
    final = root / f"step-{step:08d}"
    with atomic_folder(final) as staging:
        header = {META_DIGEST: meta_digest(meta["flow"])} if meta.get("flow") is not None else None
        save_tensors(staging / STATE_TENSORS, tensors, header)  # a full disk: one error naming the checkpoint
        (staging / STATE_META).write_text(json.dumps({**meta, "step": step}, indent=2, sort_keys=True))
    states = list_states(run_dir)
    before = [p for p in states if step_of(p) < step][-1:]
    for old in states[:-keep]:
        if old not in before:
            shutil.rmtree(old, ignore_errors=True)
    return final


def step_of(folder: Path) -> int:
    """The step of a checkpoint folder ``step-00001234``."""
    return int(folder.name.removeprefix("step-"))


def drop_states_from(run_dir: str | os.PathLike, step: int, start: int = 0) -> Path | None:
    """After a non-finite loss at ``step`` (of the weights after ``step`` updates): delete the checkpoints
    from ``step`` on, and those after ``start`` (where training started) that hold a NaN or an infinity;
    returns the newest one left, the last good checkpoint (None if there is none). The checkpoint at
    ``start`` is kept whatever its loss: it is what the run was before this training began."""
    for folder in reversed(list_states(run_dir)):
        if step_of(folder) <= start:
            return folder
        if step_of(folder) < step:
            try:
                tensors, _ = load_state(folder)
            except FlowmatchError:
                continue  # unreadable: loading skips it as well
            if all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()):
                return folder
        shutil.rmtree(folder, ignore_errors=True)
    return None


def list_states(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(run_dir) / FOLDER
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_TENSORS).is_file() and (p / STATE_META).is_file()]
    return sorted(found, key=lambda p: p.name)


def load_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A checkpoint's tensors and metadata."""
    tensors, meta, _ = _read_state(folder)
    return tensors, meta


def _read_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str | None]:
    """A checkpoint's tensors, metadata, and the digest of the metadata's ``flow`` entry that the tensors were
    saved with."""
    try:
        tensors, digest = read_tensors(folder / STATE_TENSORS)
        meta = json.loads((folder / STATE_META).read_text())
    except (SafetensorError, OSError, ValueError) as exc:
        raise FlowmatchError(f"{folder}: cannot read checkpoint ({exc})") from None
    if not isinstance(meta, dict):
        raise FlowmatchError(f"{folder / STATE_META}: not a training checkpoint's metadata (a JSON object)")
    return tensors, meta, digest


def check_newest_state(run_dir: str | os.PathLike) -> None:
    """Refuse a run whose newest training checkpoint's ``flow`` entry was changed after its tensors were saved,
    reading only the metadata (a resumed run checks this before it rewrites anything); a damaged or missing
    checkpoint is left to :func:`latest_state`."""
    from safetensors import safe_open

    states = list_states(run_dir)
    if not states:
        return
    try:
        with safe_open(os.fspath(states[-1] / STATE_TENSORS), framework="pt") as f:
            digest = (f.metadata() or {}).get(META_DIGEST)
        meta = json.loads((states[-1] / STATE_META).read_text())
    except (SafetensorError, OSError, ValueError):
        return
    if isinstance(meta, dict):
        check_meta_digest(meta.get("flow"), digest, states[-1])


def latest_state(run_dir: str | os.PathLike) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The newest readable checkpoint of a run (older ones are tried if the newest is damaged). Its ``flow``
    entry must be the one its tensors were saved with (:func:`~flowmatch.saving.check_meta_digest`): metadata
    changed by hand is refused, not passed over for an older checkpoint."""
    states = list_states(run_dir)
    if not states:
        raise FlowmatchError(f"'{run_dir}' has no training checkpoint to resume from")
    error: FlowmatchError | None = None
    for folder in reversed(states):
        try:
            tensors, meta, digest = _read_state(folder)
        except FlowmatchError as exc:
            error = exc
            continue
        check_meta_digest(meta.get("flow"), digest, folder)
        return folder, tensors, meta
    raise error  # type: ignore[misc]


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = prefix + "."
    return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimiser's state dict as flat tensors plus JSON-able parameter groups."""
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            tensors[f"{index}.{name}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return tensors, state["param_groups"]


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
