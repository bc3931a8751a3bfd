"""Crash-safe training checkpoints inside a run folder.

A training checkpoint is a folder ``RUN/checkpoints/step-00001234/`` holding ``state.safetensors``
(every tensor: weights, EMA weights, optimiser moments, random-number-generator states) and
``state.json`` (step, optimiser hyper-parameters and other plain values). It is written to a
staging folder, each file flushed with fsync, and renamed into place, so at any moment each
checkpoint folder is either complete or absent; after a crash the newest complete one is used.
The last ``keep`` checkpoints are kept.

Files that replace another (the final ``checkpoint.safetensors``, ``metrics.json``) go through
:func:`atomic_write`: a temporary file in the same folder, fsync, then rename.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import FlowmatchError

STATE_TENSORS = "state.safetensors"
STATE_META = "state.json"
FOLDER = "checkpoints"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike, value: Any) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def save_tensors_atomic(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    with atomic_write(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def save_state(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step`` atomically and delete all but the newest ``keep``."""
    root = Path(run_dir) / FOLDER
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=root))
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(staging / STATE_TENSORS))
        (staging / STATE_META).write_text(json.dumps({**meta, "step": step}, indent=2, sort_keys=True))
        for name in (STATE_TENSORS, STATE_META):
            with open(staging / name, "rb+") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(staging)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for old in list_states(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_states(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(run_dir) / FOLDER
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / STATE_TENSORS).is_file() and (p / STATE_META).is_file()]
    return sorted(found, key=lambda p: p.name)


def load_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        tensors = load_file(str(folder / STATE_TENSORS))
        meta = json.loads((folder / STATE_META).read_text())
    except (SafetensorError, OSError, ValueError) as exc:
        raise FlowmatchError(f"{folder}: cannot read checkpoint ({exc})") from None
    return tensors, meta


def latest_state(run_dir: str | os.PathLike) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]]:
    """The newest readable checkpoint of a run (older ones are tried if the newest is damaged)."""
    states = list_states(run_dir)
    if not states:
        raise FlowmatchError(f"'{run_dir}' has no training checkpoint to resume from")
    error: FlowmatchError | None = None
    for folder in reversed(states):
        try:
            return (folder, *load_state(folder))
        except FlowmatchError as exc:
            error = exc
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
