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

import hashlib
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import flowmatch
from flowmatch.cli import main
from flowmatch.errors import FlowmatchError

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
    folder.mkdir()
    rng = np.random.default_rng(0)
    good = rng.normal(size=(200, 2))
    np.save(folder / "good.npy", good)
    np.savetxt(folder / "good.csv", good, delimiter=",", header="a,b", comments="")
    constant = rng.normal(size=(200, 3))
    constant[:, 1] = 3.0
    np.save(folder / "constant.npy", constant)
    np.save(folder / "same.npy", np.tile([[0.5, 3.0]], (50, 1)))


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
    return base


# -- helpers for rows --------------------------------------------------------------------------------
def copied_run(edit: Callable[[Path], None] | None = None) -> Callable[[Env], None]:
    """A setup that copies the shared run to ``{dir}/run`` and applies ``edit`` to the copy."""

    def setup(env: Env) -> None:
        shutil.copytree(env.run, env.dir / "run")
        if edit is not None:
            edit(env.dir / "run")

    return setup


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
]


# -- the runner ---------------------------------------------------------------------------------------
def _run(case: Case, env: Env, capsys) -> None:
    if case.setup is not None:
        case.setup(env)
    before = {p: _tree(Path(env.fill(p))) for p in case.unchanged}
    shared = _tree(env.base)
    made = set(env.dir.rglob("*"))
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        if case.argv:
            try:
                code = main([env.fill(a) for a in case.argv])
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code
            err = capsys.readouterr().err
            lines = [line for line in err.splitlines() if line.strip()]
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
    env = Env(base, tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch, env)
    _run(case, env, capsys)


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
