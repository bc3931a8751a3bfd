"""What a killed process leaves behind, cleaned when it is provably stale, and the lock that keeps two
processes from writing one run folder.

Every temporary name flowmatch writes carries its owner, ``PID-HOST`` (:data:`OWNER`; HOST is a short
hash of the host name):

    .NAME.tmp-PID-HOST.XXXX.SUFFIX     a file being written (:func:`flowmatch.storage.atomic_file`)
    .NAME.partial-PID-HOST.XXXX        a folder being staged: a run folder, a training checkpoint
                                       (:func:`flowmatch.storage.atomic_folder`)
    .NAME.old-PID-HOST                 a folder being replaced (a run replaced with ``force``), kept until
                                       the new one is in place
    .NAME.pairs-PID-HOST.npz           reflow / distillation pairs before their run folder exists
    .NAME.lock                         the lock of run folder NAME (:func:`run_lock`)

An entry is *stale* when its owner is provably gone: the host is this one and no process has that PID.
A live PID (perhaps a reused one) or another host's entry is never touched. Stale entries are cleaned
when a run is next opened (:func:`tidy_run`: ``load``, and so ``sample``, ``eval`` and ``plot``, and a
resumed training) and when a new run is trained into the same parent folder (:func:`tidy_parent`).
A replaced run's ``.NAME.old-...`` is *recovered*: renamed back to NAME if the replacement never
arrived (the process died between the two renames), removed if it did. Entries named before owners
were recorded (without ``PID-HOST``) cannot be proven stale and are left alone.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from flowmatch.errors import FlowmatchError

try:  # POSIX; elsewhere run folders are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: This host, as temporary names record it: 8 hex digits of the host name's SHA-1.
HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def owner() -> str:
    """``PID-HOST`` of this process, as temporary names carry it (a fork gets its own)."""
    return f"{os.getpid()}-{HOST}"


_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|partial|old|pairs)-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})(?:\..*)?$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):  # another user's process (or a PID the OS cannot name)
        return True
    return True


def stale(entry: Path) -> tuple[str, str] | None:
    """(kind, name) of a temporary entry whose owner is provably gone; None for anything else."""
    match = _NAME.match(entry.name)
    if match is None or match["host"] != HOST or _alive(int(match["pid"])):
        return None
    return match["kind"], match["name"]


def _remove(entry: Path) -> None:
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    except OSError:
        pass  # a read-only folder keeps it; nothing depends on it


def clean_stale(folder: Path, kinds: tuple[str, ...] = ("tmp", "partial")) -> list[Path]:
    """Remove the stale temporary files and staging folders (of ``kinds``) in ``folder``; returns them."""
    removed = []
    try:
        entries = list(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return []
    for entry in entries:
        found = stale(entry)
        if found is not None and found[0] in kinds:
            _remove(entry)
            removed.append(entry)
    return removed


def recover(target: Path) -> Path | None:
    """Finish a replacement of ``target`` that a dead process left half done: its ``.NAME.old-...`` sibling
    is renamed back to ``target`` where nothing took its place (returned), and removed where something did."""
    restored = None
    try:
        siblings = sorted(target.parent.glob(f".{glob_escape(target.name)}.old-*")) if target.parent.is_dir() else []
    except OSError:
        return None
    for old in siblings:
        if stale(old) is None:
            continue
        try:
            if not target.exists() and not target.is_symlink():
                os.replace(old, target)
                restored = target
            else:
                _remove(old)
        except OSError:
            pass
    return restored


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def tidy_run(folder: str | os.PathLike) -> None:
    """Before a run folder is opened: recover an interrupted replacement of it, remove its own stale staging
    folders beside it, and the stale temporary files and staging folders inside it (its own files, its
    checkpoints, its progress pictures)."""
    folder = Path(folder)
    recover(folder)
    try:
        beside = list(folder.parent.glob(f".{glob_escape(folder.name)}.partial-*")) if folder.parent.is_dir() else []
    except OSError:
        beside = []
    for entry in beside:
        if stale(entry) is not None:
            _remove(entry)
    for inside in (folder, folder / "checkpoints", folder / "progress"):
        clean_stale(inside)


def tidy_parent(target: str | os.PathLike) -> None:
    """Before a new run is written to ``target``: in its parent folder, recover interrupted replacements,
    remove stale staging folders, temporary files, pairs files whose run never appeared, and lock files
    that no process holds."""
    target = Path(target)
    parent = target.parent
    try:
        entries = list(parent.iterdir()) if parent.is_dir() else []
    except OSError:
        return
    for entry in entries:
        found = stale(entry)
        if found is not None and found[0] == "old":
            recover(parent / found[1])
        elif found is not None and found[0] == "pairs":
            if not (parent / found[1] / "config.json").is_file():  # a run that names them resumes with them
                _remove(entry)
        elif found is not None:
            _remove(entry)
        elif entry.name.startswith(".") and entry.name.endswith(".lock") and entry.is_file():
            _remove_unheld_lock(entry)


# -- the run folder's lock ---------------------------------------------------------------------------
_held: dict[Path, int] = {}  # lock file -> how many times this process holds it


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of run folder ``target``: ``.NAME.lock`` beside it (it must outlive the folder's
    replacement, so it cannot be inside)."""
    target = Path(os.path.abspath(target))
    return target.parent.resolve() / f".{target.name}.lock"


@contextmanager
def run_lock(target: str | os.PathLike | None) -> Iterator[None]:
    """Hold the lock of run folder ``target`` (None: nothing to lock) for the body.

    An exclusive ``flock`` on :func:`lock_path`, taken without waiting: a second process that wants the
    same run folder gets a :class:`FlowmatchError` naming the holder's PID. The operating system releases
    it when the holder exits, killed or not. The holder removes the lock file while still holding it;
    whoever then locks the removed file sees that the path no longer names it and tries again, so a
    removed lock file never lets two holders in. Re-entrant within a process; only torchrun's rank 0
    locks (the other ranks write nothing). Where the lock file cannot be made (a read-only parent
    folder), the run is not locked, and its own writes report the folder.
    """
    if target is None or fcntl is None or os.environ.get("RANK", "0") != "0":
        yield
        return
    path = lock_path(target)
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    fd = _acquire(path, Path(target))
    if fd is None:
        yield
        return
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        try:
            path.unlink(missing_ok=True)  # still held: see the docstring
        except OSError:
            pass
        os.close(fd)


def _acquire(path: Path, target: Path) -> int | None:
    assert fcntl is not None
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 100, 0).decode(errors="replace").split()
            os.close(fd)
            who = f" (pid {holder[0]})" if holder else ""
            raise FlowmatchError(
                f"run folder '{target}' is in use by another flowmatch process{who}; wait for it to finish or stop it"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            return fd
        os.close(fd)  # its holder removed it as we locked it: take the new one


def _remove_unheld_lock(path: Path) -> None:
    """Remove a lock file that no process holds (left by a killed one), by locking it first."""
    if fcntl is None:
        return
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            path.unlink()
    except OSError:
        pass  # held: in use
    finally:
        os.close(fd)


F = TypeVar("F", bound=Callable[..., Any])


def locks_run(argument: str) -> Callable[[F], F]:
    """Decorate a function that writes the run folder given as its ``argument`` to hold :func:`run_lock`
    on it for the whole call."""

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def call(*args, **kwargs):
            target = signature.bind_partial(*args, **kwargs).arguments.get(argument)
            with run_lock(target if isinstance(target, (str, os.PathLike)) else None):
                return function(*args, **kwargs)

        return call  # type: ignore[return-value]

    return decorate
