"""Atomic writes: a file or a folder is either there complete or not there at all.

Every file flowmatch writes (weights, JSON, pictures, sample arrays) goes through :func:`atomic_file`:
a temporary file in the same folder, flushed to disk, then renamed over the target, so a crash or
an error midway leaves the old file (or none), never half of one. Folders (a training checkpoint,
a run folder) go through :func:`atomic_folder`: staged next to the target and renamed into place.
Temporary names carry their owner's PID and host, so that what a killed process leaves is provably stale
(:mod:`flowmatch.leftovers`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from flowmatch.errors import FlowmatchError
from flowmatch.leftovers import owner


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file or a folder's entries to disk (where the platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); when the body succeeds, flush it, give it
    the permissions a new file gets, and rename it over ``path``. On error ``path`` is untouched."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-{owner()}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder next to ``target``; when the body succeeds, flush its files and
    rename it to ``target``, replacing a folder already there (removed only once the new one is in
    place). On error the staging folder is removed and ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{owner()}.", dir=target.parent))
    try:
        yield staging
        for item in staging.rglob("*"):
            if item.is_file():
                _fsync(item)
        _fsync(staging)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{owner()}")
            os.replace(target, old)
        os.replace(staging, target)
        _fsync(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str | os.PathLike, value: Any) -> None:
    """``value`` as indented JSON with sorted keys, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; an unreadable or malformed file is a :class:`FlowmatchError` naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FlowmatchError(f"{path}: cannot read JSON ({exc})") from None


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Tensors as safetensors (on the CPU, contiguous), atomically."""
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
