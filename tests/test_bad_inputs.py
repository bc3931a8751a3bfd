"""Bad inputs, table-driven (issue 22): every entry point answers a bad flag, data file, TOML config,
checkpoint, file-system condition or Python argument with ONE error and changes nothing.

Each row of :data:`CASES` is one distinct bad input:

- ``argv`` runs ``flowmatch.cli.main(argv)`` in this process (fast: the imports and the small runs are
  shared), or ``call`` makes a Python call;
- ``expect`` is the exit code (2 for bad input) or the exception the call raises (``FlowmatchError``);
- ``words`` must all be in the one error line (or the exception's message);
- ``unchanged`` paths keep their bytes (a file) or their whole tree (a folder), ``absent`` paths do not exist
  afterwards.

Strings in ``argv``, ``unchanged`` and ``absent`` are templates: ``{run}`` is a small trained run shared
by the module (no case may change it: checked after every case), ``{data}`` the folder of shared data
files (:func:`_data_files`), ``{dir}`` the case's own empty folder, where ``setup(env)`` may first make
the case's own files (a corrupted copy of the run, say). ``patch(monkeypatch, env)`` simulates what a
test running as root cannot produce for real (a permission error, a full disk).

Every case also checks: nothing under ``{data}`` and ``{run}`` changed, no hidden partial file
(``.name.*``) appeared in the case's folder, and no Python warning escaped the command (it would print
lines of its own beside the error line). To add a case, append a row: ``Case("id", argv=(...), words=(...))``.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import flowmatch
from flowmatch.cli import main
from flowmatch.data.files import load_array
from flowmatch.errors import FlowmatchError
from flowmatch.paths.schedules import CustomSchedule

#: The module's tiny runs: a few steps of a 16-unit MLP (about a second each).
TINY = ("--steps", "20", "--width", "16", "--depth", "1", "--batch-size", "64", "--batch-warmup", "0", "--quiet", "--no-eval")


@dataclass
class Env:
    """Where a case runs: the shared run and data files, and the case's own folder."""

    base: Path
    dir: Path

    @property
    def run(self) -> Path:
        return self.base / "run"

    @property
    def data(self) -> Path:
        return self.base / "data"

    def fill(self, text: str) -> str:
        return text.format(run=self.run, data=self.data, dir=self.dir, base=self.base)


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...] = ()
    call: Callable[[Env], Any] | None = None
    expect: int | type[BaseException] = 2
    words: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    setup: Callable[[Env], None] | None = None
    patch: Callable[[pytest.MonkeyPatch, Env], None] | None = None


# -- shared files ----------------------------------------------------------------------------------
def _data_files(folder: Path) -> None:
    """The shared data files: good ones and bad ones, each named for what it holds."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    good = rng.normal(size=(200, 2))
    np.save(folder / "good.npy", good)
    np.savez(folder / "good.npz", data=good)
    np.savetxt(folder / "good.csv", good, delimiter=",", header="a,b", comments="")
    constant = rng.normal(size=(200, 3))
    constant[:, 1] = 3.0
    np.save(folder / "constant.npy", constant)
    np.save(folder / "same.npy", np.tile([[0.5, 3.0]], (50, 1)))
    (folder / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 60)
    (folder / "table.csv").write_text("size,colour\n" + "".join(f"{i % 7}.5,{'red' if i % 3 else 'blue'}\n" for i in range(60)))
    (folder / "covariate.csv").write_text("a,b,c\n" + "".join(f"{v:.3f},{-v:.3f},{i % 5 / 4}\n" for i, v in enumerate(good[:80, 0])))
    (folder / "places.csv").write_text("lat,lon\n" + "".join(f"{(i * 7) % 170 - 85},{(i * 13) % 350 - 175}\n" for i in range(60)))
    np.savez(folder / "images.npz", images=rng.random((20, 8, 8)))
    for label in ("a", "b"):
        (folder / "images" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((rng.random((8, 8)) * 255).astype("uint8")).save(folder / "images" / label / f"{i}.png")
    (folder / "train.toml").write_text("steps = 5\nwidth = 8\n")


def _tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` (or ``path`` itself) by relative name, with its content's hash."""
    if path.is_file():
        return {".": hashlib.sha1(path.read_bytes()).hexdigest()}
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("bad_inputs")
    _data_files(base / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "--data", "two-gaussians", "--out", str(base / "run"), *TINY]) == 0
        data = base / "data"
        for kind, args in (
            ("tokens", ("--data", str(data / "text.txt"), "--kind", "tokens", "--seq-len", "16")),
            ("table", ("--data", str(data / "table.csv"), "--kind", "table")),
            ("sphere", ("--data", str(data / "places.csv"), "--manifold", "sphere")),
            ("covariate", ("--data", str(data / "covariate.csv"), "--condition-columns", "c")),
        ):
            assert main(["train", *args, "--out", str(base / "kinds" / kind), *TINY]) == 0
    return base


# -- helpers for rows --------------------------------------------------------------------------------
def _link_metrics(run: Path) -> None:
    """The run's metrics.csv replaced by a link to a file of the user's beside the run."""
    mine = run.parent / "mine.csv"
    mine.write_text("the user's own file\n")
    (run / "metrics.csv").unlink()
    (run / "metrics.csv").symlink_to(mine)


def copied_run(edit: Callable[[Path], None] | None = None) -> Callable[[Env], None]:
    """A setup that copies the shared run to ``{dir}/run`` and applies ``edit`` to the copy."""

    def setup(env: Env) -> None:
        shutil.copytree(env.run, env.dir / "run")
        if edit is not None:
            edit(env.dir / "run")

    return setup


def _edit_newest_state(run: Path) -> None:
    """An edit of a copied run: its final weights removed (so that its newest training checkpoint is read) and that
    checkpoint's record of the flow given another model width, which still fits the weights' shapes nowhere."""
    (run / "checkpoint.safetensors").unlink()
    state = sorted((run / "checkpoints").glob("step-*"))[-1] / "state.json"
    meta = json.loads(state.read_text())
    meta["flow"]["model"]["width"] = 8
    state.write_text(json.dumps(meta))


def copied_kind(kind: str) -> Callable[[Env], None]:
    """A setup that copies the shared run of ``kind`` (tokens, table, sphere) to ``{dir}/run``."""
    return lambda env: shutil.copytree(env.base / "kinds" / kind, env.dir / "run") and None


def _meta(factory: Callable[..., torch.nn.Module], *args: Any) -> torch.nn.Module:
    """A module built on the meta device: shapes, no values."""
    with torch.device("meta"):
        return factory(*args)


def _meta_like(run: Path) -> torch.nn.Module:
    """The model of ``run``, built on the meta device from its checkpoint.json."""
    from flowmatch.models.registry import from_config

    meta = json.loads((run / "checkpoint.json").read_text())
    with torch.device("meta"):
        return from_config(meta["model"], meta["length"] or meta["dim"])


def kind_run(kind: str, *keys: str | int, value: Any, digest: bool = True) -> Callable[[Env], None]:
    """A setup that copies the shared run of ``kind`` (points, tokens, table, sphere) to ``{dir}/run`` and sets
    its checkpoint.json entry at ``keys`` to ``value`` (a callable: to the characters it makes of the entry); without ``digest``, its weights are saved again without
    the metadata digest of their header (as weights written before they carried one), so that only the
    metadata's own checks can catch the edit."""

    def setup(env: Env) -> None:
        run = env.dir / "run"
        shutil.copytree(env.run if kind == "points" else env.base / "kinds" / kind, run)
        meta = json.loads((run / "checkpoint.json").read_text())
        entry = meta
        for key in keys[:-1]:
            entry = entry[key]
        entry[keys[-1]] = "".join(value(entry[keys[-1]])) if callable(value) else value
        (run / "checkpoint.json").write_text(json.dumps(meta))
        if not digest:
            from safetensors.torch import load_file, save_file

            save_file(load_file(run / "checkpoint.safetensors"), run / "checkpoint.safetensors")

    return setup


def fault(target: str, code: int = errno.EACCES, *, reads: bool = False, name: str = "") -> Callable[[pytest.MonkeyPatch, Env], None]:
    """A ``patch`` that makes the file system fail under ``target`` (a template) with ``code``, as it would for
    a user without permission, on a read-only or full disk (the tests run as root, where chmod stops nothing).

    With ``reads``: opening a file under ``target`` for reading fails. Otherwise writes fail: creating a file or
    a folder there (EACCES, EROFS), or for ENOSPC writing into a file there (the file itself is created).
    ``name``: only files whose name holds it (a temporary ``.report.json.x1y2.json`` holds ``report.json``)."""

    def patch(monkeypatch: pytest.MonkeyPatch, env: Env) -> None:
        root = os.path.abspath(env.fill(target))
        real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

        def hit(path) -> bool:
            if not isinstance(path, (str, os.PathLike)):
                return False
            full = os.path.abspath(os.fspath(path))
            return full.startswith(root) and name in os.path.basename(full)

        def error(path) -> OSError:
            return OSError(code, os.strerror(code), os.fspath(path))

        class Full(io.BufferedWriter):  # a file whose writes find the disk full
            def write(self, data):
                raise error(self.name)

        def fake_open(path, mode="r", *args, **kwargs):
            writes = any(c in mode for c in "wax+")
            if hit(path) and writes != reads:
                if writes and code == errno.ENOSPC:
                    handle = real_open(path, mode, *args, **kwargs)
                    handle.write = Full.write.__get__(handle)  # type: ignore[method-assign]
                    return handle
                raise error(path)
            return real_open(path, mode, *args, **kwargs)

        def fake_os_open(path, flags, *args, **kwargs):
            creates = bool(flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR))
            if hit(path) and (creates != reads) and not (creates and code == errno.ENOSPC):
                raise error(path)
            return real_os_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            if hit(path) and not reads and code != errno.ENOSPC:
                raise error(path)
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)

    return patch


def _edit_meta(**values: Any) -> Callable[[Path], None]:
    """An edit of a copied run: these keys of its checkpoint.json replaced."""

    def edit(run: Path) -> None:
        meta = json.loads((run / "checkpoint.json").read_text())
        (run / "checkpoint.json").write_text(json.dumps({**meta, **values}))

    return edit


def _edit_config(**values: Any) -> Callable[[Path], None]:
    """An edit of a copied run: these keys of its config.json replaced."""

    def edit(run: Path) -> None:
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, **values}))

    return edit


def _write_json(name: str, value: Any) -> Callable[[Path], None]:
    return lambda run: (run / name).write_text(json.dumps(value))


def _write_text(name: str, text: str) -> Callable[[Path], None]:
    return lambda run: (run / name).write_text(text)


def _warning_from_torch(monkeypatch: pytest.MonkeyPatch, env: Env) -> None:
    """Reading weights warns as torch does (a UserWarning from torch's own module) before the command goes on."""
    import flowmatch.engine.checkpoints
    import flowmatch.engine.runs
    import flowmatch.saving

    real = flowmatch.saving.read_tensors

    def read_tensors(*args, **kwargs):
        warnings.warn_explicit("TypedStorage is deprecated", UserWarning, "torch/storage.py", 414, module="torch.storage")
        return real(*args, **kwargs)

    for module in (flowmatch.engine.runs, flowmatch.engine.checkpoints):
        monkeypatch.setattr(module, "read_tensors", read_tensors)


def _toml(text: str | bytes) -> Callable[[Env], None]:
    """A setup writing ``{dir}/c.toml``."""
    data = text.encode() if isinstance(text, str) else text
    return lambda env: (env.dir / "c.toml").write_bytes(data)


def _bytes(name: str, content: bytes) -> Callable[[Env], None]:
    """A setup writing ``{dir}/<name>`` with these bytes."""
    return lambda env: (env.dir / name).write_bytes(content)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _small_file(rows: int, ext: str) -> Callable[[Env], None]:
    """A setup writing ``{dir}/small.<ext>``: ``rows`` distinct 2-D points."""

    def setup(env: Env) -> None:
        x = np.random.default_rng(rows).normal(size=(rows, 2))
        _save(env.dir / f"small.{ext}", x)

    return setup


def _overflowing_file(ext: str) -> Callable[[Env], None]:
    """A setup writing ``{dir}/big.<ext>``: 100 finite float64 points, one of them beyond float32 (1e39)."""

    def setup(env: Env) -> None:
        x = np.random.default_rng(0).normal(size=(100, 2))
        x[7, 1] = 1e39
        _save(env.dir / f"big.{ext}", x)

    return setup


def _save(path: Path, x: np.ndarray) -> None:
    if path.suffix == ".npy":
        np.save(path, x)
    elif path.suffix == ".npz":
        np.savez(path, data=x)
    else:
        np.savetxt(path, x, delimiter=",", fmt="%.17g")


def _disk(free: int) -> Callable[[Any], Any]:
    """shutil.disk_usage of a disk with ``free`` bytes left (of 1 TiB)."""
    return lambda path: shutil._ntuple_diskusage(2**40, 2**40 - free, free)  # type: ignore[attr-defined]


def unreadable(target: str) -> Callable[[pytest.MonkeyPatch, Env], None]:
    """``target`` (a file or a folder, a template) cannot be read: permission denied."""
    return fault(target, errno.EACCES, reads=True)


# -- the table ---------------------------------------------------------------------------------------
CASES: list[Case] = [
    # -- data files ---------------------------------------------------------------------------------
    Case(
        "data-every-row-the-same-point",
        argv=("train", "--data", "{data}/same.npy", "--out", "{dir}/new", *TINY),
        words=("same.npy", "all 50 rows are the same point"),
        absent=("{dir}/new",),
    ),
    Case(
        "py-fit-every-row-the-same-point",
        call=lambda env: flowmatch.fit(data=str(env.data / "same.npy"), out=str(env.dir / "new"), steps=5, progress=False),
        expect=FlowmatchError,
        words=("all 50 rows are the same point",),
        absent=("{dir}/new",),
    ),
    # -- files that cannot be read (item 1: one line naming the path and the cause) ------------------
    *[
        Case(
            f"unreadable-{name}" + "".join(more[:1]),
            argv=("train", "--data", "{data}/" + name, *more, "--out", "{dir}/new", *TINY),
            words=("{data}/" + shown, "cannot read", "Permission denied"),
            absent=("{dir}/new",),
            patch=unreadable("{data}/" + name),
        )
        for name, shown, more in (
            ("good.npy", "good.npy", ()),
            ("good.npz", "good.npz", ()),
            ("good.csv", "good.csv", ()),
            ("good.npy", "good.npy", ("--mmap", "yes")),
            ("good.csv", "good.csv", ("--label-column", "a")),
            ("good.csv", "good.csv", ("--condition-columns", "a")),
            ("text.txt", "text.txt", ()),
            ("table.csv", "table.csv", ("--kind", "table")),
            ("places.csv", "places.csv", ()),
            ("images.npz", "images.npz", ()),
            ("images", "images", ()),
        )
    ],
    Case(
        "unreadable-source-file",
        argv=("train", "--data", "two-gaussians", "--source", "{data}/good.npy", "--out", "{dir}/new", *TINY),
        words=("good.npy", "cannot read", "Permission denied"),
        absent=("{dir}/new",),
        patch=unreadable("{data}/good.npy"),
    ),
    Case(
        "unreadable-toml-config",
        argv=("train", "--config", "{data}/train.toml", "--out", "{dir}/new"),
        words=("train.toml", "Permission denied"),
        absent=("{dir}/new",),
        patch=unreadable("{data}/train.toml"),
    ),
    Case(
        "unreadable-condition-file",
        argv=("sample", "--run", "{run}", "--condition", "{data}/good.csv", "--out", "{dir}/x.npy"),
        words=("good.csv", "cannot read", "Permission denied"),
        absent=("{dir}/x.npy",),
        patch=unreadable("{data}/good.csv"),
    ),
    *[
        Case(
            f"unreadable-run-{command}",
            argv=(command, "--run", "{run}", *more),
            words=("config.json", "cannot read", "Permission denied"),
            absent=("{dir}/x.npy", "{dir}/new"),
            patch=unreadable("{run}/config.json"),
        )
        for command, more in (
            ("sample", ("--out", "{dir}/x.npy")),
            ("eval", ("--quick",)),
            ("plot", ("--out", "{dir}/x.png")),
            ("reflow", ("--out", "{dir}/new", "--steps", "5", "--pairs", "100")),
            ("distill", ("--out", "{dir}/new", "--steps", "5", "--pairs", "100")),
        )
    ],
    Case(
        "unreadable-run-resume",
        argv=("train", "--resume", "{run}", "--steps", "30"),
        words=("config.json", "cannot read", "Permission denied"),
        patch=unreadable("{run}/config.json"),
    ),
    Case(
        "unreadable-run-init-from",
        argv=("train", "--init-from", "{run}", "--out", "{dir}/new", *TINY),
        words=("config.json", "cannot read", "Permission denied"),
        absent=("{dir}/new",),
        patch=unreadable("{run}/config.json"),
    ),
    Case(
        "py-unreadable-data-file",
        call=lambda env: flowmatch.fit(data=str(env.data / "good.npy"), out=str(env.dir / "new"), steps=5, progress=False),
        expect=FlowmatchError,
        words=("good.npy: cannot read (Permission denied)",),
        absent=("{dir}/new",),
        patch=unreadable("{data}/good.npy"),
    ),
    Case(
        "py-unreadable-load",
        call=lambda env: flowmatch.load(env.run),
        expect=FlowmatchError,
        words=("config.json: cannot read (Permission denied)",),
        patch=unreadable("{run}/config.json"),
    ),
    # -- sizes beyond memory (item 1): refused before allocating, with what it needs and what there is ----
    Case(  # streamed to the file in blocks (bounded memory): the disk is what cannot hold it
        "sample-n-beyond-disk",
        argv=("sample", "--run", "{run}", "-n", "100000000000", "--out", "{dir}/x.npy"),
        words=("x.npy: cannot write (it needs about 745.1 GiB on disk, 50.0 GiB is free)",),
        absent=("{dir}/x.npy",),
        patch=lambda monkeypatch, env: monkeypatch.setattr(shutil, "disk_usage", _disk(50 * 2**30)),
    ),
    Case(
        "sample-csv-n-beyond-disk",
        argv=("sample", "--run", "{run}", "-n", "100000000000", "--out", "{dir}/x.csv"),
        words=("x.csv: cannot write (it needs about 372.5 GiB on disk",),
        absent=("{dir}/x.csv",),
        patch=lambda monkeypatch, env: monkeypatch.setattr(shutil, "disk_usage", _disk(50 * 2**30)),
    ),
    Case(
        "sample-euler-nfe-beyond-memory",
        argv=("sample", "--run", "{run}", "--solver", "euler", "--nfe", "100000000000", "--out", "{dir}/x.npy"),
        words=("a time grid of 100000000000 steps", "GiB of memory", "ask for a smaller nfe"),
        absent=("{dir}/x.npy",),
    ),
    Case(
        "sample-rk4-nfe-beyond-memory",
        argv=("sample", "--run", "{run}", "--nfe", "100000000000", "--out", "{dir}/x.npy"),
        words=("a time grid of 25000000000 steps", "is available"),
        absent=("{dir}/x.npy",),
    ),
    Case(
        "sample-trajectory-beyond-memory",
        argv=("sample", "--run", "{run}", "-n", "1000000000", "--trajectory", "--out", "{dir}/x.npy"),
        words=("a trajectory of 26 states", "GiB of memory"),
        absent=("{dir}/x.npy",),
    ),
    Case(
        "sample-small-n-beyond-disk",
        argv=("sample", "--run", "{run}", "-n", "100000", "--out", "{dir}/x.npy"),
        words=("x.npy: cannot write (it needs about 781.4 KiB on disk, 1000 bytes is free)",),
        absent=("{dir}/x.npy",),
        patch=lambda monkeypatch, env: monkeypatch.setattr(shutil, "disk_usage", _disk(1000)),
    ),
    Case(
        "eval-n-beyond-memory",
        argv=("eval", "--run", "{run}", "--quick", "-n", "100000000000"),
        words=("100000000000 points", "is available"),
        unchanged=("{run}",),
    ),
    Case(
        "eval-nfe-beyond-memory",
        argv=("eval", "--run", "{run}", "--quick", "--nfe", "100000000000"),
        words=("a time grid of 25000000000 steps", "is available"),
    ),
    Case(
        "eval-likelihood-nfe-beyond-memory",
        argv=("eval", "--run", "{run}", "--quick", "--likelihood-nfe", "100000000000"),
        words=("a time grid of 25000000000 steps", "is available"),
    ),
    Case(
        "plot-n-beyond-memory",
        argv=("plot", "--run", "{run}", "-n", "100000000000", "--out", "{dir}/x.png"),
        words=("100000000000 points", "is available"),
        absent=("{dir}/x.png",),
    ),
    Case(
        "py-sample-beyond-memory",
        call=lambda env: flowmatch.load(env.run).sample(10**11),
        expect=FlowmatchError,
        words=("sampling 100000000000 points of dimension 2 (rk4) needs about",),
    ),
    Case(
        "py-integrate-nfe-beyond-memory",
        call=lambda env: flowmatch.integrate(lambda x, t: x, torch.zeros(3, 2), solver="euler", nfe=10**11),
        expect=FlowmatchError,
        words=("a time grid of 100000000000 steps",),
    ),
    # -- writes that fail (item 1): one line naming the path and the cause, no partial file ------------
    *[
        Case(
            f"{command}-into-read-only-folder",
            argv=(command, *args),
            words=(shown + ": cannot write (Permission denied)",),
            absent=(shown,),
            setup=lambda env: (env.dir / "ro").mkdir(),
            patch=fault("{dir}/ro"),
        )
        for command, args, shown in (
            ("train", ("--out", "{dir}/ro/new", *TINY), "{dir}/ro/new"),
            ("sample", ("--run", "{run}", "--out", "{dir}/ro/x.npy"), "{dir}/ro/x.npy"),
            ("plot", ("--run", "{run}", "--out", "{dir}/ro/x.png"), "{dir}/ro/x.png"),
            ("reflow", ("--run", "{run}", "--out", "{dir}/ro/new", "--steps", "5", "--pairs", "100"), "{dir}/ro/new"),
            ("distill", ("--run", "{run}", "--out", "{dir}/ro/new", "--steps", "5", "--pairs", "100"), "{dir}/ro/new"),
        )
    ],
    Case(
        "train-into-read-only-file-system",
        argv=("train", "--out", "{dir}/ro/new", *TINY),
        words=("{dir}/ro/new: cannot write (Read-only file system)",),
        absent=("{dir}/ro/new",),
        setup=lambda env: (env.dir / "ro").mkdir(),
        patch=fault("{dir}/ro", errno.EROFS),
    ),
    *[
        Case(
            f"{command}-read-only-run",
            argv=args,
            words=(f"{{run}}/{name}: cannot write (Permission denied)",),
            unchanged=("{run}",),
            patch=fault("{run}"),
        )
        for command, args, name in (
            ("eval", ("eval", "--run", "{run}", "--quick"), "report.json"),
            ("plot", ("plot", "--run", "{run}"), "samples.png"),
            ("resume", ("train", "--resume", "{run}", "--steps", "40"), "config.json"),
            ("resume-same-steps", ("train", "--resume", "{run}"), "config.json"),
        )
    ],
    *[
        Case(
            f"{command}-out-under-a-file" + ("-deep" if "/a/b/" in args[1] else ""),
            argv=(command, *args),
            words=words,
            unchanged=("{data}/good.npy",),
        )
        for command, args, words in (
            (
                "train",
                ("--out", "{data}/good.npy/new", *TINY),
                ("{data}/good.npy/new: cannot write ('{data}/good.npy' is a file, not a folder)",),
            ),
            ("train", ("--out", "{data}/good.npy/a/b/new", *TINY), ("'{data}/good.npy' is a file, not a folder",)),
            ("sample", ("--run", "{run}", "--out", "{data}/good.npy/x.npy"), ("output folder '{data}/good.npy' is a file, not a folder",)),
            ("plot", ("--run", "{run}", "--out", "{data}/good.npy/x.png"), ("output folder '{data}/good.npy' is a file, not a folder",)),
            (
                "reflow",
                ("--run", "{run}", "--out", "{data}/good.npy/new", "--pairs", "100"),
                ("'{data}/good.npy' is a file, not a folder",),
            ),
            (
                "distill",
                ("--run", "{run}", "--out", "{data}/good.npy/new", "--pairs", "100"),
                ("'{data}/good.npy' is a file, not a folder",),
            ),
        )
    ],
    *[
        Case(
            f"{command}-out-under-proc{'-self' if 'self' in out else ''}",
            argv=(command, *args, "--out", out),
            words=(out + ": cannot write (",),
        )
        for command, args, out in (
            ("train", TINY, "/proc/flowmatch-run"),
            ("train", TINY, "/proc/self/flowmatch-run"),
            ("sample", ("--run", "{run}"), "/proc/flowmatch.npy"),
            ("sample", ("--run", "{run}"), "/proc/self/flowmatch.csv"),
            ("plot", ("--run", "{run}"), "/proc/flowmatch.png"),
            ("reflow", ("--run", "{run}", "--pairs", "100"), "/proc/flowmatch-run"),
        )
    ],
    Case(
        "sample-out-an-existing-folder-with-force",
        argv=("sample", "--run", "{run}", "--out", "{dir}/x.npy", "--force"),
        words=("output '{dir}/x.npy' is a folder; only a file can be replaced",),
        unchanged=("{dir}/x.npy",),
        setup=lambda env: (env.dir / "x.npy" / "kept").mkdir(parents=True),
    ),
    Case(
        "sample-out-an-existing-folder",
        argv=("sample", "--run", "{run}", "--out", "{dir}/x.csv"),
        words=("is a folder",),
        unchanged=("{dir}/x.csv",),
        setup=lambda env: (env.dir / "x.csv").mkdir(),
    ),
    Case(
        "plot-out-an-existing-folder",
        argv=("plot", "--run", "{run}", "--out", "{dir}/x.png"),
        words=("output '{dir}/x.png' is a folder",),
        unchanged=("{dir}/x.png",),
        setup=lambda env: (env.dir / "x.png").mkdir(),
    ),
    Case(
        "train-out-a-folder-that-is-not-a-run-with-force",
        argv=("train", "--out", "{data}", "--force", *TINY),
        words=("is not a flowmatch run folder; refusing to replace it",),
    ),
    Case(
        "train-out-an-existing-file-with-force",
        argv=("train", "--out", "{data}/good.npy", "--force", *TINY),
        words=("exists and is not a folder",),
    ),
    Case(
        "sample-out-an-existing-file",
        argv=("sample", "--run", "{run}", "--out", "{data}/good.npy"),
        words=("already exists; pass --force",),
    ),
    *[
        Case(
            f"full-disk-{what}",
            argv=argv,
            words=(shown + ": cannot write (No space left on device)",),
            absent=absent,
            setup=setup,
            patch=fault(target, errno.ENOSPC) if isinstance(target, str) else fault(target[0], errno.ENOSPC, name=target[1]),
        )
        for what, argv, shown, target, absent, setup in (
            ("sample-npy", ("sample", "--run", "{run}", "--out", "{dir}/x.npy"), "{dir}/x.npy", "{dir}", ("{dir}/x.npy",), None),
            ("sample-csv", ("sample", "--run", "{run}", "--out", "{dir}/x.csv"), "{dir}/x.csv", "{dir}", ("{dir}/x.csv",), None),
            ("run-folder", ("train", "--out", "{dir}/new", *TINY), "{dir}/new/config.json", "{dir}", ("{dir}/new",), None),
            (
                "checkpoint",
                ("train", "--out", "{dir}/new", *TINY, "--checkpoint-every", "10"),
                "{dir}/new/checkpoints/step-00000010/state.safetensors",
                "{dir}/new/checkpoints",
                ("{dir}/new",),
                None,
            ),
            (
                "metrics-log",
                ("train", "--out", "{dir}/new", *TINY, "--log-every", "5"),
                "{dir}/new/metrics.csv",
                "{dir}/new/metrics.csv",
                ("{dir}/new",),
                None,
            ),
            (
                "final-weights",
                ("train", "--out", "{dir}/new", *TINY),
                "{dir}/new/checkpoint.safetensors",
                ("{dir}/new", "checkpoint.safetensors"),
                ("{dir}/new",),
                None,
            ),
            (
                "report",
                ("eval", "--run", "{dir}/run", "--quick", "--quiet"),
                "{dir}/run/report.json",
                "{dir}/run",
                ("{dir}/run/report.json",),
                copied_run(),
            ),
            (
                "picture",
                ("plot", "--run", "{dir}/run", "--out", "{dir}/run/x.png"),
                "{dir}/run/x.png",
                "{dir}/run",
                ("{dir}/run/x.png",),
                copied_run(),
            ),
        )
    ],
    # -- issue 29 item 9: a full disk while sampling, evaluating and drawing a token, table or manifold run -----
    *[
        Case(
            f"full-disk-{kind}-{command}",
            argv=argv,
            words=(shown, ": cannot write (No space left on device)"),  # eval names its first file (report, picture)
            absent=(f"{{dir}}/x.{suffix}", "{dir}/x.png", "{dir}/run/report.json"),
            setup=copied_kind(kind),
            patch=fault("{dir}", errno.ENOSPC),
        )
        for kind, suffix in (("tokens", "txt"), ("table", "csv"), ("sphere", "npy"))
        for command, argv, shown in (
            ("sample", ("sample", "--run", "{dir}/run", "-n", "8", "--nfe", "4", "--out", f"{{dir}}/x.{suffix}"), f"{{dir}}/x.{suffix}"),
            ("eval", ("eval", "--run", "{dir}/run", "--quiet"), "{dir}/run/"),
            ("plot", ("plot", "--run", "{dir}/run", "--out", "{dir}/x.png"), "{dir}/x.png"),
        )
        if (kind, command) != ("tokens", "plot")
    ],
    Case(
        "plot-a-tokens-run",
        argv=("plot", "--run", "{base}/kinds/tokens", "--out", "{dir}/x.png"),
        words=("a tokens run has no picture: its samples are text",),
        absent=("{dir}/x.png",),
    ),
    Case(
        "full-disk-train-report",
        argv=("train", "--out", "{dir}/new", *TINY[:-1]),  # with its quick evaluation
        words=("{dir}/new/report.json: cannot write (No space left on device)",),
        absent=("{dir}/new",),
        patch=fault("{dir}/new", errno.ENOSPC, name="report.json"),
    ),
    Case(
        "py-fit-into-read-only-folder",
        call=lambda env: flowmatch.fit(out=str(env.dir / "ro" / "new"), steps=5, width=8, progress=False),
        expect=FlowmatchError,
        words=("ro/new: cannot write (Permission denied)",),
        absent=("{dir}/ro/new",),
        setup=lambda env: (env.dir / "ro").mkdir(),
        patch=fault("{dir}/ro"),
    ),
    Case(
        "py-save-checkpoint-full-disk",
        call=lambda env: flowmatch.load(env.run).save_checkpoint(env.dir),
        expect=FlowmatchError,
        words=("checkpoint.safetensors: cannot write (No space left on device)",),
        absent=("{dir}/checkpoint.safetensors", "{dir}/checkpoint.json"),
        patch=fault("{dir}", errno.ENOSPC),
    ),
    Case(
        "py-evaluate-read-only-run",
        call=lambda env: flowmatch.evaluate(flowmatch.load(env.run), env.run, quick=True),
        expect=FlowmatchError,
        words=("report.json: cannot write (Permission denied)",),
        patch=fault("{run}"),
    ),
    # -- late failures (item 3): refused before the first step, the minimum named, no run folder ------------
    *[
        Case(
            f"train-{rows}-rows-{ext}",
            argv=("train", "--data", f"{{dir}}/small.{ext}", "--out", "{dir}/new", *TINY),
            words=(f"small.{ext}: {rows} rows are too few", "at least 38 rows"),
            absent=("{dir}/new",),
            setup=_small_file(rows, ext),
        )
        for rows, ext in ((4, "npy"), (8, "npy"), (10, "npy"), (10, "csv"), (37, "npy"), (20, "npz"))
    ],
    *[
        Case(
            f"train-small-{what}",
            argv=("train", "--data", "{dir}/" + name, "--out", "{dir}/new", *TINY),
            words=words,
            absent=("{dir}/new",),
            setup=_bytes(name, content),
        )
        for what, name, content, words in (
            (
                "table",
                "t.csv",
                ("size,colour\n" + "".join(f"{i}.5,{'red' if i % 2 else 'blue'}\n" for i in range(10))).encode(),
                ("t.csv: 10 rows are too few", "at least 18 rows"),
            ),
            (
                "places",
                "p.csv",
                ("lat,lon\n" + "".join(f"{i * 7 - 30},{i * 13 - 60}\n" for i in range(10))).encode(),
                ("p.csv: 10 rows are too few", "at least 38 rows"),
            ),
            ("text", "t.txt", b"ab" * 40, ("t.txt: 80 tokens are too few",)),
        )
    ],
    Case(
        "train-10-rows-no-validation",
        argv=("train", "--data", "{dir}/small.npy", "--out", "{dir}/new", "--val-fraction", "0", *TINY),
        words=("10 rows are too few", "at least 38 rows"),
        absent=("{dir}/new",),
        setup=_small_file(10, "npy"),
    ),
    Case(
        "train-10-rows-memory-mapped",
        argv=("train", "--data", "{dir}/small.npy", "--mmap", "yes", "--out", "{dir}/new", *TINY),
        words=("10 rows are too few", "at least 38 rows"),
        absent=("{dir}/new",),
        setup=_small_file(10, "npy"),
    ),
    Case(
        "py-fit-10-rows",
        call=lambda env: flowmatch.fit(data=np.zeros((10, 2)) + np.arange(10)[:, None], steps=5, progress=False),
        expect=FlowmatchError,
        words=("the data given in Python: 10 rows are too few", "at least 38 rows"),
    ),
    *[
        Case(
            f"train-float32-overflow-{what}",
            argv=("train", "--data", f"{{dir}}/big.{ext}", *more, "--out", "{dir}/new", *TINY),
            words=(f"big.{ext}: column 1 (counting from 0) holds 1e+39 at row index 7", "beyond float32's range"),
            absent=("{dir}/new",),
            setup=_overflowing_file(ext),
        )
        for what, ext, more in (("npy", "npy", ()), ("csv", "csv", ()), ("npz", "npz", ()), ("mmap", "npy", ("--mmap", "yes")))
    ],
    Case(
        "py-fit-float32-overflow",
        call=lambda env: flowmatch.fit(data=np.full((50, 2), 1e39), steps=5, progress=False),
        expect=FlowmatchError,
        words=("holds 1e+39 at row index 0", "beyond float32's range"),
    ),
    *[
        Case(f"eval-{name}", argv=("eval", "--run", "{run}", *args), words=words, unchanged=("{run}",))
        for name, args, words in (
            ("n-0", ("-n", "0"), ("n must be an integer >= 2, got 0",)),
            ("n-1", ("-n", "1"), ("n must be an integer >= 2, got 1",)),
            ("n-negative", ("-n", "-5"), ("n must be an integer >= 2, got -5",)),
            ("n-likelihood-0", ("--n-likelihood", "0"), ("n_likelihood must be an integer >= 2, got 0",)),
            ("probes-0", ("--probes", "0"), ("probes must be a positive integer, got 0",)),
            ("probes-0-hutchinson", ("--probes", "0", "--divergence", "hutchinson"), ("probes must be a positive integer",)),
            ("likelihood-nfe-3", ("--likelihood-nfe", "3"), ("--likelihood-nfe 3 does not apply", "dopri5", "--likelihood-solver rk4")),
            ("likelihood-nfe-0", ("--likelihood-nfe", "0"), ("--likelihood-nfe 0 does not apply",)),
            ("likelihood-rk4-nfe-0", ("--likelihood-solver", "rk4", "--likelihood-nfe", "0"), ("nfe must be a positive integer, got 0",)),
            (
                "likelihood-dopri5-nfe-8",
                ("--likelihood-solver", "dopri5", "--likelihood-nfe", "8"),
                ("--likelihood-nfe 8 does not apply to --likelihood-solver dopri5",),
            ),
            ("dopri5-nfe-8", ("--solver", "dopri5", "--nfe", "8"), ("--nfe 8 does not apply to --solver dopri5",)),
            ("likelihood-nfe-3-quick", ("--likelihood-nfe", "3", "--quick"), ("not a multiple of 4",)),
            ("likelihood-heun-nfe-3", ("--likelihood-solver", "heun", "--likelihood-nfe", "3"), ("heun", "not a multiple of 2")),
            ("nfe-3", ("--nfe", "3"), ("--nfe 3 is not a multiple of 4",)),
            ("nfe-0", ("--nfe", "0"), ("nfe must be a positive integer, got 0",)),
            ("midpoint-nfe-5", ("--solver", "midpoint", "--nfe", "5"), ("not a multiple of 2",)),
            ("atol-0", ("--atol", "0"), ("atol must be a positive number",)),
            ("rtol-negative", ("--rtol", "-1"), ("rtol must be a positive number",)),
            ("atol-nan", ("--atol", "nan"), ("atol must be a positive number",)),
            ("seed-negative", ("--seed", "-5"), ("seed must be an integer in [0, 2**32 - 1], got -5",)),
            ("seed-too-large", ("--seed", str(2**40)), ("seed must be an integer in",)),
            ("sets-on-a-continuous-run", ("--sets", "3"), ("--sets 3 does not apply to a continuous run",)),
            ("temperature-on-a-continuous-run", ("--temperature", "0.5"), ("--temperature 0.5 does not apply",)),
            ("corrector-and-target", ("--corrector", "1", "--target", "x"), ("--corrector 1.0, --target x do not apply",)),
        )
    ],
    Case(
        "py-evaluate-n-0",
        call=lambda env: flowmatch.evaluate(flowmatch.load(env.run), n=0),
        expect=FlowmatchError,
        words=("n must be an integer >= 2, got 0",),
    ),
    Case(
        "py-evaluate-pictures-not-bool",
        call=lambda env: flowmatch.evaluate(flowmatch.load(env.run), pictures="yes"),
        expect=FlowmatchError,
        words=("pictures must be True or False",),
    ),
    Case(
        "py-evaluate-likelihood-solver-unknown",
        call=lambda env: flowmatch.evaluate(flowmatch.load(env.run), likelihood_solver="rk5"),
        expect=FlowmatchError,
        words=("unknown likelihood_solver 'rk5'",),
    ),
    # -- checkpoints and configs that contradict themselves (item 1) -------------------------------------
    *[
        Case(
            f"{command}-{what}",
            argv=(command, "--run", "{dir}/run", *more),
            words=words,
            unchanged=("{dir}/run",),
            setup=copied_run(edit),
        )
        for what, edit, words in (
            (
                "standardizer-of-another-size",
                _edit_meta(standardizer={"mean": [0.0] * 3, "std": [1.0] * 3}),
                ("run/checkpoint.json: checkpoint metadata's standardizer has 3 columns but its dim is 2",),
            ),
            (
                "dim-of-another-size",
                _edit_meta(dim=3),
                ("checkpoint.json: checkpoint metadata's standardizer has 2 columns but its dim is 3",),
            ),
            ("dim-a-string", _edit_meta(dim="2"), ("checkpoint.json: checkpoint metadata's dim must be a positive integer, got '2'",)),
            ("model-missing", _edit_meta(model=None), ("checkpoint.json: malformed checkpoint metadata",)),
            ("shape-that-does-not-hold-dim", _edit_meta(shape=[1, 3, 3]), ("row shape [1, 3, 3] does not hold dim = 2 values",)),
            (
                "config-a-list",
                _write_json("config.json", [1, 2]),
                ("config.json: expected a JSON object of keys and values, got an array",),
            ),
            ("config-a-string", _write_json("config.json", "moons"), ("config.json: expected a JSON object", "got a string")),
            ("config-a-number", _write_json("config.json", 3), ("config.json", "got a number")),
            ("config-null", _write_json("config.json", None), ("config.json", "got null")),
            ("config-seed-a-string", _edit_config(seed="x"), ("config.json: seed must be a int",)),
            ("config-data-a-number", _edit_config(data=5), ("config.json: data must be a str",)),
            ("checkpoint-json-a-list", _write_json("checkpoint.json", []), ("checkpoint.json: not a flowmatch checkpoint",)),
            ("checkpoint-json-not-json", _write_text("checkpoint.json", "{"), ("checkpoint.json: cannot read JSON",)),
            ("config-json-empty", _write_text("config.json", ""), ("config.json: cannot read JSON",)),
        )
        for command, more in (("sample", ("--out", "{dir}/x.npy")), ("eval", ("--quick", "--quiet")), ("plot", ("--out", "{dir}/x.png")))
        if command == "sample" or what in ("standardizer-of-another-size", "config-a-list", "config-seed-a-string")
    ],
    # -- issue 29 item 2: metadata that would drive an allocation, or that no longer matches its weights -------
    *[
        Case(
            f"{kind}-checkpoint-{name}",
            argv=(
                "sample",
                "--run",
                "{dir}/run",
                "-n",
                "4",
                "--out",
                f"{{dir}}/x.{'txt' if kind == 'tokens' else 'csv' if kind == 'table' else 'npy'}",
            ),
            words=words,
            unchanged=("{dir}/run",),
            absent=("{dir}/x.txt", "{dir}/x.csv", "{dir}/x.npy"),
            setup=kind_run(kind, *keys, value=value, digest=digest),
        )
        for kind, name, keys, value, digest, words in (
            (
                "points",
                "width-1e9",
                ("model", "width"),
                10**9,
                True,
                ("checkpoint.json: checkpoint metadata's model.width = 1e+09 cannot fit the weights",),
            ),
            ("points", "depth-1e9", ("model", "depth"), 10**9, True, ("model.depth = 1e+09 cannot fit the weights",)),
            ("tokens", "length-1e15", ("length",), 10**15, True, ("checkpoint metadata's length = 1e+15 cannot fit the weights",)),
            ("tokens", "width-1e9", ("model", "width"), 10**9, True, ("model.width = 1e+09 cannot fit the weights",)),
            ("tokens", "depth-1e9", ("model", "depth"), 10**9, True, ("model.depth = 1e+09 cannot fit the weights",)),
            ("table", "dim-1e12", ("dim",), 10**12, True, ("checkpoint metadata's dim = 1e+12 cannot fit the weights",)),
            ("table", "depth-1e9", ("model", "depth"), 10**9, True, ("model.depth = 1e+09 cannot fit the weights",)),
            ("sphere", "width-1e9", ("model", "width"), 10**9, True, ("model.width = 1e+09 cannot fit the weights",)),
            ("sphere", "depth-1e9", ("model", "depth"), 10**9, True, ("model.depth = 1e+09 cannot fit the weights",)),
            # edits that fit the weights' shapes and agree with the rest of the metadata: the digest in the
            # weights' header refuses them
            (
                "tokens",
                "chars-reversed",
                ("codec", "chars"),
                reversed,
                True,
                ("checkpoint.json is not the metadata saved with the weights",),
            ),
            (
                "table",
                "std-changed",
                ("codec", "columns", 0, "std"),
                1.5,
                True,
                ("checkpoint.json is not the metadata saved with the weights",),
            ),
            (
                "sphere",
                "scheduler-changed",
                ("scheduler", "name"),
                "cosine",
                True,
                ("checkpoint.json is not the metadata saved with the weights",),
            ),
            # edits the metadata's own checks catch, with or without a digest
            ("tokens", "source-uniform", ("discrete_path", "source"), "uniform", True, ("vocabularies disagree", "model.states 29")),
            ("table", "std-1e308", ("codec", "columns", 0, "std"), 1e308, True, ("std 1e+308 cannot be those of values in [0.5, 6.5]",)),
            ("table", "mean-outside-range-no-digest", ("codec", "columns", 0, "mean"), 99.0, False, ("mean 99 and std",)),
            (
                "table",
                "source-uniform-no-digest",
                ("discrete_path", "source"),
                "uniform",
                False,
                ("discrete_path.source is 'uniform'; a table's is 'mask'",),
            ),
            (
                "tokens",
                "path-vocabulary-no-digest",
                ("discrete_path", "vocab_size"),
                40,
                False,
                ("vocabularies disagree: discrete_path.vocab_size 40",),
            ),
        )
    ],
    *[
        Case(
            f"train-{name}",
            argv=("train", *data, "--out", "{dir}/new", "--steps", "2", "--quiet", "--no-eval", *flags),
            words=words,
            absent=("{dir}/new",),
        )
        for name, data, flags, words in (
            (
                "width-1e9",
                ("--data", "two-gaussians"),
                ("--width", "1000000000"),
                ("a mlp model of 3,000,000,073,000,000,002 parameters needs about",),
            ),
            ("depth-1e9", ("--data", "two-gaussians"), ("--depth", "1000000000"), ("a mlp model of 65,792,000,017,922 parameters",)),
            (
                "tokens-depth-1e9",
                ("--data", "{data}/text.txt", "--kind", "tokens", "--seq-len", "16"),
                ("--depth", "1000000000"),
                ("a transformer model of", "choose a smaller width or depth"),
            ),
            (
                "table-width-1e9",
                ("--data", "{data}/table.csv"),
                ("--width", "1000000000"),
                ("a mixed-mlp model of", "parameters needs about"),
            ),
            (
                "sphere-depth-1e9",
                ("--data", "{data}/places.csv", "--manifold", "sphere"),
                ("--depth", "1000000000"),
                ("a tangent-mlp model of", "parameters needs about"),
            ),
        )
    ],
    *[
        Case(
            f"resume-a-run-whose-config-asks-for-width-{width}",
            argv=("train", "--resume", "{dir}/run", "--steps", "40"),
            words=words,
            unchanged=("{dir}/run",),
            setup=copied_run(_edit_config(width=width)),
        )
        for width, words in (
            (8, ("config.json asks for a model with width 8; the run's checkpoint holds one with width 16",)),
            (10**9, ("config.json: a mlp model of", "parameters needs about")),
        )
    ],
    # -- issue 29 item 4: condition files and columns -------------------------------------------------------
    *[
        Case(
            f"condition-file-{name}",
            argv=("sample", "--run", "{base}/kinds/covariate", "-n", "3", "--condition", f"{{dir}}/{file}", "--out", "{dir}/x.npy"),
            words=words,
            absent=("{dir}/x.npy",),
            setup=_bytes(file, content),
        )
        for name, file, content, words in (
            ("of-no-rows", "c.npy", _npy_bytes(np.zeros((0, 1))), ("c.npy': expected rows of numbers", "got shape (0, 1)")),
            ("of-three-dimensions", "c.npy", _npy_bytes(np.zeros((2, 1, 1))), ("c.npy': expected rows of numbers", "got shape (2, 1, 1)")),
            ("of-two-columns", "c.npy", _npy_bytes(np.zeros((3, 2))), ("c.npy' has rows of 2 values; the model's condition c takes 1",)),
            ("csv-one-row-of-two", "c.csv", b"0.5,0.7\n", ("c.csv' has rows of 2 values; the model's condition c takes 1",)),
        )
    ],
    *[
        Case(
            f"condition-columns-{name}",
            argv=("train", "--data", "{data}/covariate.csv", "--condition-columns", columns, "--out", "{dir}/new", *TINY),
            words=(f"condition_columns {columns!r} has an empty column name",),
            absent=("{dir}/new",),
        )
        for name, columns in (("a-lone-comma", ","), ("a-trailing-comma", "c,"), ("an-empty-name-between", "a,,c"))
    ],
    Case(
        "torus-angle-of-1e30-degrees",
        argv=("train", "--data", "{dir}/angles.csv", "--manifold", "torus", "--units", "degrees", "--out", "{dir}/new", *TINY),
        words=("angles.csv: row 4, angle column 2 is 1e+30 degrees, more than 1e+06 turns",),
        absent=("{dir}/new",),
        setup=_bytes("angles.csv", ("a,b\n" + "".join(f"{i * 37 % 360},{1e30 if i == 3 else i * 53 % 360}\n" for i in range(60))).encode()),
    ),
    # -- issue 29 item 8: the Python API of the newer flows -------------------------------------------------
    *[
        Case(f"py-{name}", call=call, expect=FlowmatchError, words=words)
        for name, call, words in (
            (
                "sphere-sample-0",
                lambda env: flowmatch.load(env.base / "kinds" / "sphere").sample(0),
                ("number of samples must be a positive integer, got 0",),
            ),
            (
                "sphere-sample-noise",
                lambda env: flowmatch.load(env.base / "kinds" / "sphere").sample(3, noise=1.0),
                ("RiemannianFlow.sample() takes no option 'noise'", "solver, nfe"),
            ),
            (
                "tokens-sample-solver",
                lambda env: flowmatch.load(env.base / "kinds" / "tokens").sample(3, solver="rk4"),
                ("DiscreteFlow.sample() takes no option 'solver'", "temperature"),
            ),
            (
                "table-sample-solver",
                lambda env: flowmatch.load(env.base / "kinds" / "table").sample(3, solver="rk4", label=1),
                ("DiscreteFlow.sample() takes no option 'solver'",),
            ),
            (
                "points-sample-an-unknown-option",
                lambda env: flowmatch.load(env.run).sample(3, steps=4),
                ("Flow.sample() takes no option 'steps'", "nfe"),
            ),
            (
                "points-sample-a-float-count",
                lambda env: flowmatch.load(env.run).sample(3.0),
                ("number of samples must be a positive integer, got 3.0",),
            ),
            (
                "bits-per-token-of-floats",
                lambda env: flowmatch.load(env.base / "kinds" / "tokens").bits_per_token(np.zeros((2, 16)) + 0.5),
                ("tokens must be integers, got torch.float64",),
            ),
            (
                "bits-per-token-of-a-string",
                lambda env: flowmatch.load(env.base / "kinds" / "tokens").bits_per_token("the quick"),
                ("tokens must be an array of token ids, got a str",),
            ),
            (
                "train-a-custom-schedule-that-is-not-a-path",
                lambda env: flowmatch.train(
                    data="two-gaussians", path=CustomSchedule(lambda t: 0.5 + 0 * t, lambda t: 0.5 + 0 * t), steps=2, progress=False
                ),
                ("path is not a path from the source to the data: alpha(0) = 0.5, sigma(0) = 0.5",),
            ),
            (
                "train-a-meta-device-model",
                lambda env: flowmatch.train(data="two-gaussians", model=_meta(torch.nn.Linear, 2, 2), steps=2, progress=False),
                ("model Linear: weight is on the meta device and holds no values",),
            ),
            (
                "train-on-a-meta-device-tensor",
                lambda env: flowmatch.train(data=torch.empty(300, 2, device="meta"), steps=2, progress=False),
                ("data: a tensor on the meta device holds no values",),
            ),
            (
                "train-on-meta-device-batches",
                lambda env: flowmatch.train(data=iter([torch.empty(64, 2, device="meta")] * 50), steps=2, progress=False),
                ("a batch holds tensors on the meta device",),
            ),
            (
                "load-into-a-meta-model-with-unsaved-buffers",
                lambda env: flowmatch.load(env.base / "kinds" / "tokens", model=_meta_like(env.base / "kinds" / "tokens")),
                ("is on the meta device and the weights at", "do not hold it"),
            ),
            (
                "train-a-custom-schedule-that-fails",
                lambda env: flowmatch.train(
                    data="two-gaussians", path=CustomSchedule(lambda t: t.foo, lambda t: 1 - t), steps=2, progress=False
                ),
                ("path: its schedule fails at t = 0 and 1 (AttributeError",),
            ),
        )
    ],
    Case(
        "training-checkpoint-flow-entry-edited",
        argv=("sample", "--run", "{dir}/run", "-n", "4", "--out", "{dir}/x.npy"),
        words=("state.json is not the metadata saved with the weights",),
        unchanged=("{dir}/run",),
        absent=("{dir}/x.npy",),
        setup=copied_run(_edit_newest_state),
    ),
    Case(
        "resume-a-training-checkpoint-whose-flow-entry-is-edited",
        argv=("train", "--resume", "{dir}/run", "--steps", "40"),
        words=("state.json is not the metadata saved with the weights",),
        unchanged=("{dir}/run",),
        setup=copied_run(_edit_newest_state),
    ),
    Case(
        "py-load-a-token-run-of-length-1e15",
        call=lambda env: flowmatch.load(env.dir / "run"),
        expect=FlowmatchError,
        words=("length = 1e+15 cannot fit the weights",),
        setup=kind_run("tokens", "length", value=10**15),
    ),
    Case(
        "resume-config-a-list",
        argv=("train", "--resume", "{dir}/run", "--steps", "40"),
        words=("config.json: a config must be a mapping of keys to values, got list",),
        unchanged=("{dir}/run",),
        setup=copied_run(_write_json("config.json", [1, 2])),
    ),
    Case(
        "resume-a-run-whose-metrics-csv-is-a-link",
        argv=("train", "--resume", "{dir}/run", "--steps", "40"),
        words=("holds a symbolic link (metrics.csv)", "writes no file through a link"),
        unchanged=("{dir}/run", "{dir}/mine.csv"),
        setup=copied_run(_link_metrics),
    ),
    Case(
        "init-from-a-run-whose-config-is-a-list",
        argv=("train", "--init-from", "{dir}/run", "--out", "{dir}/new", *TINY),
        words=("config.json: expected a JSON object",),
        absent=("{dir}/new",),
        setup=copied_run(_write_json("config.json", [1, 2])),
    ),
    Case(
        "py-load-standardizer-of-another-size",
        call=lambda env: flowmatch.load(env.dir / "run"),
        expect=FlowmatchError,
        words=("standardizer has 3 columns but its dim is 2",),
        setup=copied_run(_edit_meta(standardizer={"mean": [0.0] * 3, "std": [1.0] * 3})),
    ),
    # -- a library's warning before an error (item 1): the answer stays one line --------------------------
    Case(
        "torch-warning-then-a-bad-checkpoint",
        argv=("sample", "--run", "{dir}/run", "--out", "{dir}/x.npy"),
        words=("standardizer has 3 columns",),
        absent=("{dir}/x.npy",),
        setup=copied_run(_edit_meta(standardizer={"mean": [0.0] * 3, "std": [1.0] * 3})),
        patch=_warning_from_torch,
    ),
    Case(
        "torch-warning-then-a-bad-flag-value",
        argv=("eval", "--run", "{run}", "--probes", "0"),
        words=("probes must be a positive integer",),
        patch=_warning_from_torch,
    ),
    # -- the Python API (item 1): FlowmatchError, never a raw exception -------------------------------
    *[
        Case(f"py-{name}", call=call, expect=FlowmatchError, words=words, absent=("{dir}/new",))
        for name, call, words in (
            ("fit-a-name-as-config", lambda env: flowmatch.fit("moons"), ("config must be a TrainConfig or None, got str", "data='moons'")),
            ("train-a-name-as-config", lambda env: flowmatch.train("moons"), ("config must be a TrainConfig or None, got str",)),
            ("fit-a-dict-as-config", lambda env: flowmatch.fit({"steps": 5}), ("config must be a TrainConfig or None, got dict",)),
            (
                "train-config-steps-a-string",
                lambda env: flowmatch.TrainConfig(steps="10"),
                ("TrainConfig: steps must be a int, got str '10'",),
            ),
            ("train-config-steps-a-float", lambda env: flowmatch.TrainConfig(steps=10.5), ("steps must be a int, got float 10.5",)),
            ("train-config-lr-a-string", lambda env: flowmatch.TrainConfig(lr="1e-3"), ("lr must be a float, got str",)),
            ("train-config-lr-infinite", lambda env: flowmatch.TrainConfig(lr=float("inf")), ("lr must be finite",)),
            ("train-config-conditional-a-string", lambda env: flowmatch.TrainConfig(conditional="yes"), ("conditional must be a bool",)),
            ("train-config-data-a-number", lambda env: flowmatch.TrainConfig(data=3), ("data must be a str, got int 3",)),
            ("train-config-width-none", lambda env: flowmatch.TrainConfig(width=None), ("width must be a int, got NoneType",)),
            ("train-config-seed-true", lambda env: flowmatch.TrainConfig(seed=True), ("seed must be a int, got bool",)),
            ("fit-out-a-number", lambda env: flowmatch.fit(out=123, steps=5), ("out must be a path to a run folder or None, got int 123",)),
            ("fit-out-a-list", lambda env: flowmatch.fit(out=["runs"], steps=5), ("out must be a path",)),
            (
                "fit-force-a-string",
                lambda env: flowmatch.fit(out=str(env.dir / "new"), force="yes", steps=5),
                ("force must be True or False",),
            ),
            ("fit-progress-a-number", lambda env: flowmatch.fit(progress=1, steps=5), ("progress must be True or False",)),
            ("fit-n-eval-0", lambda env: flowmatch.fit(n_eval=0, steps=5), ("n_eval must be an integer >= 2, got 0",)),
            ("fit-steps-a-string", lambda env: flowmatch.fit(steps="10"), ("steps must be a int, got str '10'",)),
            ("fit-unknown-option", lambda env: flowmatch.fit(stepz=10), ("unknown key 'stepz'",)),
            ("train-run-dir-a-number", lambda env: flowmatch.train(run_dir=5, steps=5), ("run_dir must be a path",)),
            (
                "train-callback-not-callable",
                lambda env: flowmatch.train(steps=5, callback=5, callback_steps=[1]),
                ("callback must be callable", "got int 5"),
            ),
            ("train-callback-a-string", lambda env: flowmatch.train(steps=5, callback="print"), ("callback must be callable",)),
            (
                "train-callback-steps-not-iterable",
                lambda env: flowmatch.train(steps=5, callback=print, callback_steps=3),
                ("callback_steps must be an iterable",),
            ),
            (
                "train-callback-steps-floats",
                lambda env: flowmatch.train(steps=5, callback=print, callback_steps=[1.5]),
                ("callback_steps must hold integers, got 1.5",),
            ),
            (
                "train-model-a-number",
                lambda env: flowmatch.train(steps=5, model=3),
                ("model must be a name or a torch.nn.Module, got int",),
            ),
            ("train-path-a-number", lambda env: flowmatch.train(steps=5, path=3), ("path must be a name, an AffinePath or a Schedule",)),
            ("load-a-number", lambda env: flowmatch.load(123), ("run_dir must be a path to a run folder, got int 123",)),
            ("load-none", lambda env: flowmatch.load(None), ("run_dir must be a path to a run folder, got NoneType",)),
            ("load-device-tpu", lambda env: flowmatch.load(env.run, device="tpu"), ("unknown device 'tpu'",)),
            ("load-device-a-number", lambda env: flowmatch.load(env.run, device=0), ("device must be a name",)),
            ("load-device-cuda-9", lambda env: flowmatch.load(env.run, device="cuda:9"), ("cuda:9",)),
            ("load-a-missing-folder", lambda env: flowmatch.load(env.dir / "nope"), ("does not exist",)),
            ("load-model-a-string", lambda env: flowmatch.load(env.run, model="mlp"), ("model= must be a torch.nn.Module",)),
            (
                "sample-seed-a-string",
                lambda env: flowmatch.load(env.run).sample(5, seed="a"),
                ("seed must be a non-negative integer or None, got str 'a'",),
            ),
            ("sample-seed-negative", lambda env: flowmatch.load(env.run).sample(5, seed=-1), ("seed must be a non-negative integer",)),
            ("sample-seed-a-float", lambda env: flowmatch.load(env.run).sample(5, seed=1.5), ("seed must be",)),
            (
                "sample-n-a-string",
                lambda env: flowmatch.load(env.run).sample("5"),
                ("number of samples must be a positive integer, got '5'",),
            ),
            ("sample-n-0", lambda env: flowmatch.load(env.run).sample(0), ("number of samples must be a positive integer, got 0",)),
            ("sample-solver-unknown", lambda env: flowmatch.load(env.run).sample(5, solver="rk5"), ("rk5",)),
            ("sample-nfe-a-string", lambda env: flowmatch.load(env.run).sample(5, nfe="8"), ("nfe must be a positive integer, got '8'",)),
            ("sample-grid-unknown", lambda env: flowmatch.load(env.run).sample(5, grid="log"), ("unknown time grid 'log'",)),
            ("sample-precision-fp16", lambda env: flowmatch.load(env.run).sample(5, precision="fp16"), ("unknown precision 'fp16'",)),
            (
                "sample-guidance-a-string",
                lambda env: flowmatch.load(env.run).sample(5, guidance="2"),
                ("guidance must be a finite number",),
            ),
            (
                "sample-batch-size-0",
                lambda env: flowmatch.load(env.run).sample(5, batch_size=0),
                ("batch_size must be a positive integer",),
            ),
            ("sample-label-on-an-unconditional-run", lambda env: flowmatch.load(env.run).sample(5, label=1), ("trained without labels",)),
            (
                "sample-x0-of-another-shape",
                lambda env: flowmatch.load(env.run).sample(5, x0=torch.zeros(4, 2)),
                ("x0 must be a float tensor of shape (5, 2)",),
            ),
            ("sample-atol-0", lambda env: flowmatch.load(env.run).sample(5, solver="dopri5", atol=0), ("atol must be a positive number",)),
            (
                "log-prob-a-string",
                lambda env: flowmatch.load(env.run).log_prob("abc"),
                ("points to score must be a tensor or array of numbers",),
            ),
            ("log-prob-none", lambda env: flowmatch.load(env.run).log_prob(None), ("points to score must be a tensor or array",)),
            (
                "log-prob-of-another-dimension",
                lambda env: flowmatch.load(env.run).log_prob(torch.zeros(3, 5)),
                ("expected points of shape (n, 2), got (3, 5)",),
            ),
            (
                "log-prob-nan",
                lambda env: flowmatch.load(env.run).log_prob(torch.full((3, 2), float("nan"))),
                ("contain NaN or infinite values",),
            ),
            ("log-prob-booleans", lambda env: flowmatch.load(env.run).log_prob([[True, False]]), ("must be real numbers",)),
            (
                "log-prob-seed-a-string",
                lambda env: flowmatch.load(env.run).log_prob(torch.zeros(3, 2), seed="a"),
                ("seed must be a non-negative integer",),
            ),
            (
                "log-prob-probes-0",
                lambda env: flowmatch.load(env.run).log_prob(torch.zeros(3, 2), probes=0),
                ("probes must be a positive integer",),
            ),
            (
                "log-prob-solver-unknown",
                lambda env: flowmatch.load(env.run).log_prob(torch.zeros(3, 2), solver="rk5"),
                ("unknown solver 'rk5'",),
            ),
            (
                "evaluate-a-run-folder",
                lambda env: flowmatch.evaluate(str(env.run)),
                ("evaluate takes a flow, not its run folder", "flowmatch.load("),
            ),
            ("evaluate-a-path", lambda env: flowmatch.evaluate(env.run), ("evaluate takes a flow, not its run folder",)),
            ("evaluate-a-number", lambda env: flowmatch.evaluate(3), ("evaluate takes a Flow", "got int")),
            ("evaluate-run-dir-a-number", lambda env: flowmatch.evaluate(flowmatch.load(env.run), 5), ("run_dir must be a path",)),
            (
                "evaluate-reference-of-another-dimension",
                lambda env: flowmatch.evaluate(flowmatch.load(env.run), reference=torch.zeros(10, 3)),
                ("reference must have shape (N, 2)",),
            ),
            ("evaluate-seed-negative", lambda env: flowmatch.evaluate(flowmatch.load(env.run), seed=-1), ("seed must be an integer in",)),
        )
    ],
    # -- the ones that already answered well (issue 22's 177): kept answering so --------------------------
    *[
        Case(f"flag-{name}", argv=argv, words=words, absent=("{dir}/new", "{dir}/x.npy"))
        for name, argv, words in (
            ("steps-not-a-number", ("train", "--out", "{dir}/new", "--steps", "many"), ("argument --steps: invalid int value: 'many'",)),
            ("steps-0", ("train", "--out", "{dir}/new", "--steps", "0"), ("steps must be >= 1, got 0",)),
            ("lr-negative", ("train", "--out", "{dir}/new", "--lr", "-1"), ("lr must be >= 0.0, got -1.0",)),
            ("lr-nan", ("train", "--out", "{dir}/new", "--lr", "nan"), ("lr must be finite",)),
            (
                "seed-beyond-numpy",
                ("train", "--out", "{dir}/new", "--seed", str(2**32), *TINY),
                ("seed must be <= 4294967295, got 4294967296",),
            ),
            ("seed-negative", ("train", "--out", "{dir}/new", "--seed", "-1", *TINY), ("seed must be >= 0, got -1",)),
            ("ema-above-1", ("train", "--out", "{dir}/new", "--ema", "1.5"), ("ema must be <= 0.99999",)),
            ("unknown-choice", ("train", "--out", "{dir}/new", "--path", "spiral"), ("argument --path: invalid choice: 'spiral'",)),
            ("unknown-flag", ("train", "--out", "{dir}/new", "--stepz", "5"), ("unrecognized arguments: --stepz 5",)),
            ("unknown-command", ("fit", "--out", "{dir}/new"), ("invalid choice: 'fit'",)),
            ("no-out", ("train", "--steps", "5"), ("--out RUN_DIR is required",)),
            (
                "warmup-past-steps",
                ("train", "--out", "{dir}/new", "--steps", "10", "--warmup", "10"),
                ("warmup (10) must be smaller than steps (10)",),
            ),
            ("channel-mult-text", ("train", "--out", "{dir}/new", "--channel-mult", "a,b"), ("channel_mult must be positive integers",)),
            (
                "distill-objective-without-pairs",
                ("train", "--out", "{dir}/new", "--objective", "distill"),
                ("objective distill needs teacher pairs",),
            ),
            (
                "posterior-with-ot",
                ("train", "--out", "{dir}/new", "--target", "posterior", "--coupling", "ot"),
                ("target posterior needs independent pairs",),
            ),
            ("device-cuda-7", ("train", "--out", "{dir}/new", "--device", "cuda:7", *TINY), ("cuda:7",)),
            ("device-tpu", ("train", "--out", "{dir}/new", "--device", "tpu", *TINY), ("unknown device 'tpu'",)),
            ("unknown-data", ("train", "--out", "{dir}/new", "--data", "moonz", *TINY), ("unknown data 'moonz'", "moons")),
            ("missing-data-file", ("train", "--out", "{dir}/new", "--data", "{dir}/nope.npy", *TINY), ("nope.npy: no such file",)),
            (
                "conditional-without-labels",
                ("train", "--out", "{dir}/new", "--data", "{data}/good.npy", "--conditional", *TINY),
                ("has no class labels",),
            ),
            ("unet-on-points", ("train", "--out", "{dir}/new", "--model", "unet", *TINY[:2], *TINY[6:]), ("needs image data",)),
            ("width-for-the-unet", ("train", "--out", "{dir}/new", "--model", "unet", *TINY), ("--width 16 does not apply to model unet",)),
            (
                "label-column-on-npy",
                ("train", "--out", "{dir}/new", "--data", "{data}/good.npy", "--label-column", "a", *TINY),
                ("a label column applies to .csv files",),
            ),
            (
                "missing-label-column",
                ("train", "--out", "{dir}/new", "--data", "{data}/good.csv", "--label-column", "z", *TINY),
                ("no label column 'z'",),
            ),
            (
                "resume-with-out",
                ("train", "--resume", "{run}", "--out", "{dir}/new"),
                ("--resume continues a run with its saved config; only --steps",),
            ),
            (
                "resume-with-lr",
                ("train", "--resume", "{run}", "--lr", "0.1"),
                ("--resume continues a run with its saved config; only --steps",),
            ),
            (
                "resume-fewer-steps",
                ("train", "--resume", "{run}", "--steps", "5"),
                ("cannot resume with fewer steps (5) than the run had (20)",),
            ),
            ("resume-not-a-run", ("train", "--resume", "{data}"), ("is not a flowmatch run folder",)),
            ("resume-missing", ("train", "--resume", "{dir}/nope"), ("nope",)),
            ("init-from-missing", ("train", "--out", "{dir}/new", "--init-from", "{dir}/nope", *TINY), ("nope",)),
            ("sample-bad-suffix", ("sample", "--run", "{run}", "--out", "{dir}/x.txt"), ("a continuous run writes .npy or .csv",)),
            ("sample-bad-suffix-json", ("sample", "--run", "{run}", "--out", "{dir}/x.json"), ("must end in .npy, .csv or .txt",)),
            (
                "sample-trajectory-csv",
                ("sample", "--run", "{run}", "--out", "{dir}/x.csv", "--trajectory"),
                ("--trajectory needs a .npy output",),
            ),
            (
                "sample-missing-folder",
                ("sample", "--run", "{run}", "--out", "{dir}/no/x.npy"),
                ("output folder '{dir}/no' does not exist",),
            ),
            ("sample-missing-run", ("sample", "--run", "{dir}/nope", "--out", "{dir}/x.npy"), ("run folder '{dir}/nope' does not exist",)),
            (
                "sample-not-a-run",
                ("sample", "--run", "{data}", "--out", "{dir}/x.npy"),
                ("is not a flowmatch run folder: config.json is missing",),
            ),
            ("sample-n-0", ("sample", "--run", "{run}", "-n", "0", "--out", "{dir}/x.npy"), ("-n must be a positive integer, got 0",)),
            (
                "sample-n-negative",
                ("sample", "--run", "{run}", "-n", "-3", "--out", "{dir}/x.npy"),
                ("-n must be a positive integer, got -3",),
            ),
            ("sample-nfe-3-rk4", ("sample", "--run", "{run}", "--nfe", "3", "--out", "{dir}/x.npy"), ("--nfe 3 is not a multiple of 4",)),
            (
                "sample-nfe-0",
                ("sample", "--run", "{run}", "--nfe", "0", "--out", "{dir}/x.npy"),
                ("nfe must be a positive integer, got 0",),
            ),
            ("sample-grid-unknown", ("sample", "--run", "{run}", "--grid", "log", "--out", "{dir}/x.npy"), ("unknown time grid 'log'",)),
            (
                "sample-grid-shift-0",
                ("sample", "--run", "{run}", "--grid", "shift:0", "--out", "{dir}/x.npy"),
                ("the shift must be a positive number",),
            ),
            (
                "sample-label-unconditional",
                ("sample", "--run", "{run}", "--label", "1", "--out", "{dir}/x.npy"),
                ("trained without labels",),
            ),
            (
                "sample-label-text",
                ("sample", "--run", "{run}", "--label", "a,b", "--out", "{dir}/x.npy"),
                ("labels must be integers separated by commas",),
            ),
            (
                "sample-guidance-nan",
                ("sample", "--run", "{run}", "--guidance", "nan", "--out", "{dir}/x.npy"),
                ("guidance must be a finite number",),
            ),
            (
                "sample-noise-negative",
                ("sample", "--run", "{run}", "--noise", "-1", "--out", "{dir}/x.npy"),
                ("noise must be a finite number >= 0",),
            ),
            (
                "sample-noise-with-rk4",
                ("sample", "--run", "{run}", "--noise", "1", "--solver", "rk4", "--out", "{dir}/x.npy"),
                ("Euler-Maruyama",),
            ),
            (
                "sample-temperature",
                ("sample", "--run", "{run}", "--temperature", "0.5", "--out", "{dir}/x.npy"),
                ("--temperature 0.5 does not apply to a continuous run",),
            ),
            (
                "sample-condition-missing",
                ("sample", "--run", "{run}", "--condition", "{dir}/c.npy", "--out", "{dir}/x.npy"),
                ("condition file '{dir}/c.npy' does not exist",),
            ),
            (
                "sample-condition-unconditional",
                ("sample", "--run", "{run}", "--condition", "{data}/good.npy", "--out", "{dir}/x.npy"),
                ("takes no condition 'c'",),
            ),
            (
                "sample-seed-negative",
                ("sample", "--run", "{run}", "--seed", "-1", "--out", "{dir}/x.npy"),
                ("seed must be a non-negative integer",),
            ),
            (
                "sample-atol-0",
                ("sample", "--run", "{run}", "--solver", "dopri5", "--atol", "0", "--out", "{dir}/x.npy"),
                ("atol must be a positive number",),
            ),
            ("sample-device-tpu", ("sample", "--run", "{run}", "--device", "tpu", "--out", "{dir}/x.npy"), ("unknown device 'tpu'",)),
            (
                "sample-schedule-unknown",
                ("sample", "--run", "{run}", "--schedule", "sigmoid", "--out", "{dir}/x.npy"),
                ("invalid choice: 'sigmoid'",),
            ),
            ("plot-wrong-suffix", ("plot", "--run", "{run}", "--out", "{dir}/x.jpg"), ("must end in .png for --what samples",)),
            ("plot-animation-png", ("plot", "--run", "{run}", "--what", "animation", "--out", "{dir}/x.png"), ("must end in .gif",)),
            ("plot-n-3", ("plot", "--run", "{run}", "-n", "3", "--out", "{dir}/x.png"), ("n must be an integer >= 4, got 3",)),
            ("plot-missing-folder", ("plot", "--run", "{run}", "--out", "{dir}/no/x.png"), ("output folder '{dir}/no' does not exist",)),
            ("plot-unknown-picture", ("plot", "--run", "{run}", "--what", "heatmap"), ("invalid choice: 'heatmap'",)),
            ("reflow-into-itself", ("reflow", "--run", "{run}", "--out", "{run}"), ("must differ from the teacher run",)),
            (
                "reflow-pairs-0",
                ("reflow", "--run", "{run}", "--out", "{dir}/new", "--pairs", "0"),
                ("the number of pairs must be a positive integer",),
            ),
            ("reflow-steps-0", ("reflow", "--run", "{run}", "--out", "{dir}/new", "--steps", "0"), ("steps must be a positive integer",)),
            (
                "reflow-pairs-past-memory",
                ("reflow", "--run", "{run}", "--out", "{dir}/new", "--pairs", "100000000000"),
                ("100000000000 teacher pairs of dimension 2 needs about", "ask for fewer pairs"),
            ),
            (
                "distill-nfe-past-the-teacher",
                ("distill", "--run", "{run}", "--out", "{dir}/new", "--nfe", "1000000"),
                ("the student's nfe 1000000 must be below its teacher's (100)",),
            ),
            (
                "reflow-teacher-nfe-3",
                ("reflow", "--run", "{run}", "--out", "{dir}/new", "--teacher-nfe", "3", "--pairs", "10"),
                ("not a multiple of 4",),
            ),
            (
                "distill-nfe-0",
                ("distill", "--run", "{run}", "--out", "{dir}/new", "--nfe", "0"),
                ("the student's nfe must be a positive integer",),
            ),
            ("distill-existing-run", ("distill", "--run", "{run}", "--out", "{run}"), ("must differ from the teacher run",)),
            ("eval-missing-run", ("eval", "--run", "{dir}/nope"), ("run folder '{dir}/nope' does not exist",)),
            ("eval-divergence-unknown", ("eval", "--run", "{run}", "--divergence", "approx"), ("invalid choice: 'approx'",)),
        )
    ],
    *[
        Case(
            f"toml-{name}",
            argv=("train", "--config", "{dir}/c.toml", "--out", "{dir}/new"),
            words=words,
            absent=("{dir}/new",),
            setup=_toml(text),
        )
        for name, text, words in (
            ("unknown-key", "stepz = 5\n", ("unknown key 'stepz'",)),
            ("wrong-type", 'steps = "many"\n', ("steps must be a int, got str 'many'",)),
            ("float-for-int", "steps = 5.5\n", ("steps must be a int, got float 5.5",)),
            ("bool-for-int", "steps = true\n", ("steps must be a int, got bool",)),
            ("out-of-range", "lr = -1.0\n", ("lr must be >= 0.0",)),
            ("bad-choice", 'optimizer = "sgd"\n', ("optimizer must be one of adam, adamw, got 'sgd'",)),
            ("malformed", "steps = = 5\n", ("c.toml",)),
            ("table-value", "[steps]\nx = 1\n", ("steps must be a int, got dict",)),
            ("unknown-preset", 'preset = "fast"\n', ("unknown preset 'fast'",)),
            ("preset-not-a-string", "preset = 3\n", ("preset must be a string",)),
            ("not-utf8", b"steps = 5 \xff\n", ("c.toml",)),
            ("nan", "lr = nan\n", ("lr must be finite",)),
        )
    ],
    Case(
        "toml-missing",
        argv=("train", "--config", "{dir}/none.toml", "--out", "{dir}/new"),
        words=("config file '{dir}/none.toml' does not exist",),
    ),
    *[
        Case(
            f"data-{name}",
            argv=("train", "--data", "{dir}/" + file, "--out", "{dir}/new", *TINY),
            words=words,
            absent=("{dir}/new",),
            setup=_bytes(file, content),
        )
        for name, file, content, words in (
            ("empty-csv", "d.csv", b"", ("d.csv", "the file is empty")),
            ("empty-npy", "d.npy", b"", ("d.npy: the file is empty",)),
            ("not-npy", "d.npy", b"hello, this is not numpy", ("d.npy: not a valid .npy file or corrupt",)),
            ("truncated-npy", "d.npy", _npy_bytes(np.zeros((50, 2)))[:100], ("d.npy: not a valid .npy file or corrupt",)),
            ("pickled-npy", "d.npy", _npy_bytes(np.array([{"a": 1}] * 50, dtype=object)), ("d.npy: holds Python objects", "refused")),
            ("text-csv", "d.csv", b"1,2\n3,x\n" * 30, ("non-numeric value 'x'",)),
            ("semicolon-csv", "d.csv", b"1;2\n3;4\n" * 30, ("values must be separated by commas",)),
            ("ragged-csv", "d.csv", b"1,2\n3\n" * 30, ("ragged rows",)),
            ("nan-csv", "d.csv", b"1,2\nnan,4\n" * 30, ("contain NaN or infinite values",)),
            ("inf-npy", "d.npy", _npy_bytes(np.array([[1.0, np.inf]] * 50)), ("contain NaN or infinite values",)),
            ("one-d-npy", "d.npy", _npy_bytes(np.arange(50.0)), ("expected a 2-D array of shape (N, D), got shape (50,)",)),
            ("three-d-npy", "d.npy", _npy_bytes(np.zeros((50, 2, 2))), ("expected a 2-D array",)),
            ("string-npy", "d.npy", _npy_bytes(np.array([["a", "b"]] * 50)), ("expected a numeric array",)),
            ("complex-npy", "d.npy", _npy_bytes(np.ones((50, 2), dtype=complex)), ("expected a numeric array",)),
            ("zero-columns", "d.npy", _npy_bytes(np.zeros((50, 0))), ("0 dimensions",)),
            ("no-rows", "d.npy", _npy_bytes(np.zeros((0, 2))), ("no data rows",)),
            ("header-only-csv", "d.csv", b"a,b\n", ("d.csv: 0 data rows; a table needs at least 4",)),
            (
                "semicolon-table",
                "d.csv",
                b"size;colour\n" + b"".join(b"%d.5;%s\n" % (i, b"red" if i % 3 else b"blue") for i in range(60)),
                ("d.csv: the header is one column 'size;colour'", "separated by semicolons", "sep=';'"),
            ),
            (
                "tab-table",
                "d.csv",
                b"size\tcolour\n" + b"".join(b"%d.5\t%s\n" % (i, b"red" if i % 3 else b"blue") for i in range(60)),
                ("separated by tabs",),
            ),
            ("unknown-extension", "d.parquet", b"PAR1", ("d.parquet: unsupported file type '.parquet'",)),
            ("npz-without-data", "d.npz", _npz_bytes(a=np.zeros((50, 2)), b=np.zeros((50, 2))), ("several arrays",)),
            (
                "npz-bad-labels",
                "d.npz",
                _npz_bytes(data=np.random.default_rng(0).normal(size=(50, 2)), labels=np.full(50, -1)),
                ("'labels' must be 50 non-negative integers",),
            ),
        )
    ],
    Case(
        "manifold-columns-named-twice",
        argv=("train", "--data", "{data}/places.csv", "--manifold", "sphere", "--columns", "lat,lat", "--out", "{dir}/new", *TINY),
        words=("lat,lat: lat named twice",),
        absent=("{dir}/new",),
    ),
    Case(
        "images-every-one-the-same",
        argv=("train", "--data", "{dir}/same.npz", "--out", "{dir}/new", *TINY),
        words=("same.npz: all 40 images are the same image",),
        absent=("{dir}/new",),
        setup=_bytes("same.npz", _npz_bytes(images=np.full((40, 4, 4), 7, dtype=np.uint8))),
    ),
    Case(
        "labels-numbered-past-the-rows",
        argv=("train", "--data", "{dir}/d.npz", "--conditional", "--out", "{dir}/new", *TINY),
        words=("d.npz: 'labels' go up to 1000000000000", "more than the 50 rows", "numpy.unique"),
        absent=("{dir}/new",),
        setup=_bytes("d.npz", _npz_bytes(data=np.random.default_rng(0).normal(size=(50, 2)), labels=np.array([10**12] + [0] * 49))),
    ),
    Case(
        "token-ids-past-the-vocabulary",
        argv=("train", "--data", "{dir}/ids.npy", "--kind", "tokens", "--out", "{dir}/new", *TINY),
        words=("ids.npy: token ids go up to 6000000000000", "at most 1,000,000"),
        absent=("{dir}/new",),
        setup=_bytes("ids.npy", _npy_bytes((np.arange(5000) % 7 * 10**12).astype(np.int64))),
    ),
    Case(
        "data-a-folder",
        argv=("train", "--data", "{dir}/folder.npy", "--out", "{dir}/new", *TINY),
        words=("folder.npy",),
        absent=("{dir}/new",),
        setup=lambda env: (env.dir / "folder.npy").mkdir(),
    ),
    Case(
        "py-unreadable-load-array",
        call=lambda env: load_array(env.data / "good.csv"),
        expect=FlowmatchError,
        words=("good.csv: cannot read (Permission denied)",),
        patch=unreadable("{data}/good.csv"),
    ),
]


# -- the runner ---------------------------------------------------------------------------------------
def _run(case: Case, env: Env, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.setup is not None:
        case.setup(env)
    before = {p: _tree(Path(env.fill(p))) for p in case.unchanged}
    shared = _tree(env.base)
    made = set(env.dir.rglob("*"))
    capsys.readouterr()
    with monkeypatch.context() as patched, warnings.catch_warnings(record=True) as escaped:
        if case.patch is not None:
            case.patch(patched, env)
        warnings.simplefilter("always")
        if case.argv:
            try:
                code = main([env.fill(a) for a in case.argv])
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code
            err = capsys.readouterr().err
            # the lines a terminal shows: a progress bar that cleared itself ("\r" then spaces) leaves nothing
            shown = [line.rsplit("\r", 1)[-1] for line in err.split("\n")]
            lines = [line for line in shown if line.strip()]
            assert code == case.expect, err
            if case.expect != 0:
                assert len(lines) == 1 and "Traceback" not in err, err
                for word in case.words:
                    assert env.fill(word) in lines[0], lines[0]
                assert not escaped, [str(w.message) for w in escaped]
        else:
            assert case.call is not None
            with pytest.raises(case.expect) as raised:  # type: ignore[call-overload]
                case.call(env)
            for word in case.words:
                assert env.fill(word) in str(raised.value), str(raised.value)
    for path, tree in before.items():
        assert _tree(Path(env.fill(path))) == tree, f"{path} changed"
    for path in case.absent:
        assert not Path(env.fill(path)).exists(), f"{path} exists"
    assert _tree(env.base) == shared, "the shared run or data files changed"
    partial = [p for p in set(env.dir.rglob("*")) - made if p.name.startswith(".")]
    assert not partial, f"partial files left: {partial}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, base: Path, tmp_path: Path, capsys, monkeypatch):
    _run(case, Env(base, tmp_path), capsys, monkeypatch)


def test_a_numpy_integer_is_a_sample_count(base: Path):
    """A count computed with numpy (np.int64) samples as a Python int does, on every kind of flow."""
    assert flowmatch.load(base / "run").sample(np.int64(3)).shape == (3, 2)
    assert flowmatch.load(base / "kinds" / "sphere").sample(np.int64(3)).shape == (3, 3)
    assert len(flowmatch.load(base / "kinds" / "tokens").sample(np.int64(3))) == 3


def test_weights_fill_a_model_built_on_the_meta_device(base: Path):
    """load(run, model=...) of a model built without memory (torch.device("meta")): the weights become its values."""
    from flowmatch.models.registry import from_config

    spec = json.loads((base / "run" / "checkpoint.json").read_text())["model"]
    with torch.device("meta"):
        model = from_config(spec, 2)
    flow = flowmatch.load(base / "run", model=model)
    assert not any(p.is_meta for p in flow.model.parameters())
    assert torch.equal(flow.sample(4, seed=1), flowmatch.load(base / "run").sample(4, seed=1))


def test_case_ids_are_distinct():
    assert len({c.id for c in CASES}) == len(CASES)


# -- item by item: what the table cannot say in one row --------------------------------------------
def test_constant_column_is_held_fixed(base: Path, tmp_path: Path, capsys):
    """A data column that is one value throughout trains and samples back as exactly that value."""
    run, out = tmp_path / "run", tmp_path / "x.npy"
    assert main(["train", "--data", str(base / "data" / "constant.npy"), "--out", str(run), *TINY]) == 0
    assert main(["sample", "--run", str(run), "-n", "300", "--nfe", "8", "--out", str(out)]) == 0
    x = np.load(out)
    assert x.shape == (300, 3) and (x[:, 1] == 3.0).all()
    assert x[:, 0].std() > 0.1 and x[:, 2].std() > 0.1  # the other columns are generated
    assert "the same point" not in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_large_n_is_streamed_to_the_file_in_blocks(base: Path, tmp_path: Path, monkeypatch, suffix: str):
    """flowmatch sample writes -n in blocks of rows (memory bounded by STREAM_BYTES, not by -n), and the
    file equals what one Flow.generate call of all the rows gives."""
    import flowmatch.modalities.points.modality as cli
    from flowmatch.flows.continuous import Flow

    calls: list[int] = []
    generate = Flow.generate

    def counted(self, n, **options):
        calls.append(n)
        return generate(self, n, **options)

    monkeypatch.setattr(Flow, "generate", counted)
    monkeypatch.setattr(cli, "STREAM_BYTES", 16 * 4 * 2 * 7 * 10)  # 160 rows of an rk4 block
    out = tmp_path / f"x{suffix}"
    assert main(["sample", "--run", str(base / "run"), "-n", "1000", "--nfe", "8", "--out", str(out)]) == 0
    assert calls == [160] * 6 + [40]
    x = np.load(out) if suffix == ".npy" else np.loadtxt(out, delimiter=",")
    whole = generate(flowmatch.load(base / "run"), 1000, nfe=8, seed=0).x.numpy()
    assert x.shape == (1000, 2)
    np.testing.assert_allclose(x, whole, rtol=0, atol=0 if suffix == ".npy" else 5e-7 * np.abs(whole).max())  # csv: %.8g


def test_a_library_warning_is_shown_once_the_command_succeeds(base: Path, tmp_path: Path, monkeypatch):
    """Warnings other than flowmatch's own notes wait for the command's end: shown after a success (here), dropped
    after a failure (the rows torch-warning-then-*), whose answer is its one error line."""
    _warning_from_torch(monkeypatch, Env(base, tmp_path))
    with pytest.warns(UserWarning, match="TypedStorage is deprecated"):
        assert main(["sample", "--run", str(base / "run"), "-n", "5", "--nfe", "4", "--out", str(tmp_path / "x.npy")]) == 0


def test_a_table_of_categories_only_trains_and_samples(tmp_path: Path):
    """A CSV whose every column is categorical (no numbers) is a table with no continuous features: it trains and
    samples (it once fed the network no x and failed)."""
    (tmp_path / "t.csv").write_text("colour,size\n" + "".join(f"{'red' if i % 3 else 'blue'},{'S' if i % 2 else 'L'}\n" for i in range(60)))
    assert main(["train", "--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "run"), *TINY]) == 0
    assert main(["sample", "--run", str(tmp_path / "run"), "-n", "20", "--nfe", "4", "--out", str(tmp_path / "x.csv")]) == 0
    lines = (tmp_path / "x.csv").read_text().splitlines()
    assert lines[0] == "colour,size" and len(lines) == 21
    assert {line.split(",")[0] for line in lines[1:]} <= {"red", "blue"} and {line.split(",")[1] for line in lines[1:]} <= {"S", "L"}


def test_a_table_column_of_one_category_trains_and_samples_it(tmp_path: Path):
    """A categorical column holding one value everywhere (the path's mask then lay past the network's embedding)."""
    (tmp_path / "t.csv").write_text("size,kind\n" + "".join(f"{i % 7}.5,same\n" for i in range(60)))
    assert main(["train", "--data", str(tmp_path / "t.csv"), "--out", str(tmp_path / "run"), *TINY]) == 0
    assert main(["sample", "--run", str(tmp_path / "run"), "-n", "20", "--nfe", "4", "--out", str(tmp_path / "x.csv")]) == 0
    lines = (tmp_path / "x.csv").read_text().splitlines()
    assert lines[0] == "size,kind" and len(lines) == 21 and {line.split(",")[1] for line in lines[1:]} == {"same"}


def test_a_token_run_refuses_sizes_past_memory_before_allocating(tmp_path: Path):
    """n and nfe of a token (and table) flow's sampler are checked against memory, as a continuous flow's are."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "ids.npy", rng.integers(0, 5, size=4000))
    flow = flowmatch.train(data=str(tmp_path / "ids.npy"), kind="tokens", seq_len=8, steps=2, progress=False).flow
    with pytest.raises(FlowmatchError, match="sampling 100000000000 rows of 8 tokens needs about"):
        flow.sample(10**11)
    with pytest.raises(FlowmatchError, match="a time grid of 100000000000 jump steps needs about"):
        flow.sample(2, nfe=10**11)
    for bad in (0, 2.5, True):
        with pytest.raises(FlowmatchError, match="nfe must be a positive integer"):
            flow.sample(2, nfe=bad)
