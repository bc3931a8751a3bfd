"""Atomic writes: a file or a folder is either there complete or not there at all.

Every file flowmatch writes (weights, JSON, pictures, sample arrays) goes through :func:`atomic_file`:
a temporary file in the same folder, flushed to disk, then renamed over the target, so a crash or
an error midway leaves the old file (or none), never half of one. Folders (a training checkpoint,
a run folder) go through :func:`atomic_folder`: staged next to the target and renamed into place.
Temporary names carry their owner's PID and host, so that what a killed process leaves is provably stale
(:mod:`flowmatch.leftovers`).

Operating-system errors are the user's to fix (a read-only folder, a full disk, a file where a folder
should be), so they come out as one :class:`~flowmatch.errors.FlowmatchError` naming the path and the
cause in the system's words: :class:`WriteError` from every write here (and from :func:`writing` around
the few writes that are not atomic), :func:`os_error` from :func:`reading` around the reading of a
user's files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowmatch.errors import FlowmatchError
from flowmatch.leftovers import owner


class WriteError(FlowmatchError):
    """An operating-system error while writing ``path``: ``"{path}: cannot {action} ({cause})"``."""

    def __init__(self, path: str | os.PathLike, cause: str, action: str = "write"):
        self.path, self.cause, self.action = Path(path), cause, action
        super().__init__(f"{os.fspath(path)}: cannot {action} ({cause})")


def _cause(exc: OSError) -> str:
    """An OSError's cause in the system's words ("Permission denied", "No space left on device")."""
    return exc.strerror or str(exc) or type(exc).__name__


def os_error(path: str | os.PathLike, exc: OSError, action: str = "read") -> FlowmatchError:
    """The one-line error for ``exc`` raised while ``action``-ing ``path``: the path, the action and the cause;
    a file inside ``path`` (a folder of images, say) that the error names is named too."""
    inner = exc.filename if isinstance(exc.filename, str) and exc.filename != os.fspath(path) else None
    where = f"{os.fspath(path)}: cannot {action}" + (f" {inner}" if inner else "")
    return FlowmatchError(f"{where} ({_cause(exc)})")


@contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Around the reading of a user's file or folder: an OSError (no permission, an I/O error) becomes
    :func:`os_error`'s one line naming ``path``."""
    try:
        yield
    except OSError as exc:
        raise os_error(path, exc) from None


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Around a write to ``path`` that is not atomic (a log appended to as training goes): an OSError
    becomes a :class:`WriteError` naming ``path``."""
    try:
        yield
    except OSError as exc:
        raise WriteError(path, _cause(exc)) from None


def make_folder(folder: str | os.PathLike) -> Path:
    """``folder`` and its missing parents; a :class:`WriteError` naming it and the cause (a parent that is a
    file says so) when it cannot be made."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        cause = f"'{blocker}' is a file, not a folder" if blocker is not None else _cause(exc)
        raise WriteError(folder, cause, "create the folder") from None
    return folder


def check_no_links(folder: str | os.PathLike) -> None:
    """Refuse a folder flowmatch is about to write into (a run to resume) that holds a symbolic link: its logs are
    appended in place, and a link a user placed there would have flowmatch write into the file it points at."""
    with reading(folder):
        links = sorted(entry.name for entry in os.scandir(os.fspath(folder)) if entry.is_symlink())
    if links:
        raise FlowmatchError(
            f"'{folder}' holds a symbolic link ({', '.join(links[:3])}{', ...' if len(links) > 3 else ''}); flowmatch writes no file "
            "through a link it did not make: replace the link with a copy of its file, or remove it"
        )


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, before any work, a ``path`` that cannot be written: a :class:`WriteError` naming it and the
    cause when its nearest existing folder is a file, or when a probe folder cannot be made there (no
    permission, a read-only file system, ``/proc``). The probe is removed at once; nothing else is made."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise WriteError(path, f"'{folder}' is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".flowmatch-probe-", dir=folder))
    except OSError as exc:
        raise WriteError(path, _cause(exc)) from None


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
    the permissions a new file gets, and rename it over ``path``. On error ``path`` is untouched and the
    temporary file is gone; an OSError (in the body too: a full disk) is a :class:`WriteError` naming
    ``path``, and so is a ``path`` that is a folder (a file never replaces one)."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(path, "it is a folder; only a file is replaced")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-{owner()}.", suffix=path.suffix, dir=path.parent)
    except OSError as exc:
        raise WriteError(path, _cause(exc)) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
        _fsync(path.parent)
    except OSError as exc:
        raise WriteError(path, _cause(exc)) from None
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder next to ``target``; when the body succeeds, flush its files and
    rename it to ``target``, replacing a folder already there (removed only once the new one is in
    place). On error the staging folder is removed and ``target`` is untouched; an OSError (a parent that
    cannot be made, a full disk while the body writes) is a :class:`WriteError` naming ``target`` (and the
    file in it that failed)."""
    target = Path(target)
    make_folder(target.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{owner()}.", dir=target.parent))
    except OSError as exc:
        raise WriteError(target, _cause(exc)) from None
    try:
        try:
            yield staging
        except WriteError as exc:  # a file written in the staging folder: named as it will be in the target
            if not exc.path.is_relative_to(staging):
                raise
            raise WriteError(target / exc.path.relative_to(staging), exc.cause, exc.action) from None
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
    except OSError as exc:
        raise WriteError(target, _cause(exc)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def atomic_rows(path: str | os.PathLike, shape: tuple[int, int]) -> Iterator[Callable[[np.ndarray], None]]:
    """Write a float32 array of ``shape`` (rows, columns) to ``path`` (.npy, or .csv with ``%.8g`` values) in
    blocks of rows, atomically (:func:`atomic_file`): the body calls ``write(block)`` with consecutive blocks
    until ``shape[0]`` rows are written. Only a block is ever in memory; a .npy is the same file
    ``numpy.save`` writes of the whole array. Fewer or more rows than ``shape`` says is an error, and then
    ``path`` is untouched."""
    path = Path(path)
    written = 0

    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        if path.suffix == ".npy":
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": tuple(shape)}
            np.lib.format.write_array_header_1_0(fh, header)

        def write(block: np.ndarray) -> None:
            nonlocal written
            block = np.ascontiguousarray(block, dtype=np.float32)
            if block.ndim != 2 or block.shape[1] != shape[1] or written + len(block) > shape[0]:
                raise ValueError(f"block of shape {block.shape} does not fit rows {written}.. of {shape}")
            if path.suffix == ".npy":
                fh.write(block.tobytes())
            else:
                np.savetxt(fh, block, delimiter=",", fmt="%.8g")
            written += len(block)

        yield write
        if written != shape[0]:
            raise ValueError(f"{path}: {written} rows written of {shape[0]}")


def require_disk(path: str | os.PathLike, nbytes: int) -> None:
    """Refuse, before any work, a file of ``nbytes`` at ``path`` that the disk has no room for: a
    :class:`WriteError` with both figures."""
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return
    if nbytes > free:
        from flowmatch.memory import gib

        raise WriteError(path, f"it needs about {gib(nbytes)} on disk, {gib(free)} is free")


def write_json(path: str | os.PathLike, value: Any) -> None:
    """``value`` as indented JSON with sorted keys, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; an unreadable or malformed file is a :class:`FlowmatchError` naming it."""
    with reading(path):
        text = Path(path).read_bytes()
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FlowmatchError(f"{path}: cannot read JSON ({exc})") from None


_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "true or false", int: "a number", float: "a number"}


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`read_json` of a file that must hold a JSON object (a config, checkpoint metadata): anything else
    (an array, a string, a number) is a :class:`FlowmatchError` naming the file and what it holds."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise FlowmatchError(f"{path}: expected a JSON object of keys and values, got {_JSON_KINDS.get(type(value), 'null')}")
    return value


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], header: dict[str, str] | None = None) -> None:
    """Tensors as safetensors (on the CPU, contiguous), atomically, with ``header`` as the file's string
    metadata; serialised in memory and written by Python, so that a full disk is an OSError (a
    :class:`WriteError`) like any other write."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=header)  # bytes: written below
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
