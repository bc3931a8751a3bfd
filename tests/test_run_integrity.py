"""What a run folder's loader accepts: checked weights (names, shapes, dtypes, finite values) and format
version, a note naming the training checkpoint it falls back to, and samples that are finite or an error."""

import json
import os
import shutil
import warnings

import pytest
import torch
from cli_checks import one_error_line
from safetensors.torch import load_file, save_file

import flowmatch
from flowmatch.api import fit
from flowmatch.cli import main
from flowmatch.config import TrainConfig
from flowmatch.errors import FlowmatchError, FlowmatchWarning


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("integrity") / "run"
    fit(TrainConfig(steps=20, width=16, batch_size=32), out=str(out), progress=False, evaluate=False, n_eval=200)
    return out


def _finished_copy(run, dst, change=None):
    """A copy of the run with only its final checkpoint; ``change(state)`` edits the weights in place."""
    shutil.copytree(run, dst)
    shutil.rmtree(dst / "checkpoints")
    if change is not None:
        state = load_file(str(dst / "checkpoint.safetensors"))
        change(state)
        save_file(state, str(dst / "checkpoint.safetensors"))
    return dst


def _sample(run, out, capsys):
    capsys.readouterr()
    return main(["sample", "--run", str(run), "-n", "5", "--nfe", "4", "--out", str(out)])


def _nan_bias(state):
    state["body.1.bias"] = torch.full_like(state["body.1.bias"], float("nan"))


def _as_int64(state):
    for key in state:
        state[key] = state[key].round().long()


def _as_float64(state):
    for key in state:
        state[key] = state[key].double()


def _wrong_shape(state):
    state["body.1.bias"] = torch.zeros(17)


@pytest.mark.parametrize(
    "change, words",
    [
        (_nan_bias, ["weights hold non-finite values (body.1.bias)"]),
        (_as_int64, ["weights do not match the model", "is int64, the model's float32 (weights are not cast)"]),
        (_as_float64, ["is float64, the model's float32 (weights are not cast)"]),
        (_wrong_shape, ["body.1.bias has shape (17,), the model's (16,)"]),
    ],
)
def test_sample_refuses_weights_that_do_not_fit(run, tmp_path, capsys, change, words):
    bad = _finished_copy(run, tmp_path / "bad", change)
    out = tmp_path / "s.npy"
    one_error_line(capsys, _sample(bad, out, capsys), "flowmatch sample: error:", str(bad / "checkpoint.safetensors"), *words)
    assert not out.exists()
    with pytest.raises(FlowmatchError, match=words[-1].replace("(", r"\(").replace(")", r"\)")):
        flowmatch.load(bad)


def test_a_refused_checkpoint_leaves_the_given_model_untouched(run, tmp_path):
    from flowmatch.models.mlp import MLP

    bad = _finished_copy(run, tmp_path / "bad", _as_int64)
    torch.manual_seed(0)
    mine = MLP(2, width=16, depth=3)
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    with pytest.raises(FlowmatchError, match="int64"):
        flowmatch.load(bad, model=mine)
    for key, value in mine.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(
    "version, words",
    [
        (2, "checkpoint format version 2 was written by a newer flowmatch; this one reads version 1: upgrade flowmatch"),
        (None, "unknown checkpoint format version None"),
        ("1", "unknown checkpoint format version '1'"),
        (True, "unknown checkpoint format version True"),
    ],
)
def test_checkpoint_format_version(run, tmp_path, capsys, version, words):
    bad = _finished_copy(run, tmp_path / "bad")
    meta = json.loads((bad / "checkpoint.json").read_text())
    assert meta["version"] == 1  # what every run writes
    if version is None:
        del meta["version"]
    else:
        meta["version"] = version
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    one_error_line(capsys, _sample(bad, tmp_path / "s.npy", capsys), str(bad / "checkpoint.json"), words)
    assert not (tmp_path / "s.npy").exists()


def test_a_newer_version_of_a_discrete_or_manifold_checkpoint_is_refused_too(run, tmp_path):
    bad = _finished_copy(run, tmp_path / "bad")
    for kind in ("tokens", "manifold"):
        (bad / "checkpoint.json").write_text(json.dumps({"format": "flowmatch-checkpoint", "version": 3, "kind": kind}))
        with pytest.raises(FlowmatchError, match="version 3 was written by a newer flowmatch"):
            flowmatch.load(bad)
    (bad / "checkpoint.json").write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(FlowmatchError, match="not a flowmatch checkpoint"):
        flowmatch.load(bad)


def test_falling_back_to_a_training_checkpoint_says_so(run, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "checkpoint.safetensors").unlink()
    with pytest.warns(FlowmatchWarning) as caught:
        flowmatch.load(unfinished)
    assert [str(w.message) for w in caught] == [
        f"'{unfinished}': loaded training checkpoint step 20 (EMA weights where kept): "
        "it has no checkpoint.safetensors (training did not finish)"
    ]
    capsys.readouterr()
    out = tmp_path / "s.npy"
    assert _sample(unfinished, out, capsys) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"flowmatch sample: note: '{unfinished}': loaded training checkpoint step 20 (EMA weights where kept): "
        "it has no checkpoint.safetensors (training did not finish)"
    ]
    assert out.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finished run loads without a word
        flowmatch.load(run)


def _huge_output_layer(state):
    state["body.5.weight"] = state["body.5.weight"] * 1e37  # finite weights whose velocity overflows


def test_non_finite_samples_are_an_error_not_a_file(run, tmp_path, capsys):
    big = _finished_copy(run, tmp_path / "big", _huge_output_layer)
    out = tmp_path / "s.npy"
    one_error_line(capsys, _sample(big, out, capsys), "sampling gave non-finite values in 5 of 5 samples (solver rk4, NFE 4)", "overflows")
    assert not out.exists()
    flow = flowmatch.load(big)
    with pytest.raises(FlowmatchError, match="non-finite values in 3 of 3 samples"):
        flow.sample(3, nfe=4)
    with pytest.raises(FlowmatchError, match="dopri5: the step size underflowed after .* velocity evaluations"):
        flow.generate(3, solver="dopri5")


# -- the last good checkpoint after a non-finite loss ------------------------------------------------
def test_a_diverged_run_keeps_step_0_not_the_exploded_weights(tmp_path, capsys):
    """--lr 1e6 writes weights of about 1e6 at step 1, whose loss is infinite: that checkpoint goes."""
    from flowmatch.engine.checkpoints import list_states

    run = tmp_path / "run"
    args = ["--steps", "50", "--width", "16", "--lr", "1e6", "--checkpoint-every", "1", "--precision", "fp32", "--quiet", "--no-eval"]
    code = main(["train", "--out", str(run), *args])
    one_error_line(
        capsys,
        code,
        "training stopped: the loss is inf at step 1; try a smaller lr or --grad-clip 1.0; the run keeps its last good checkpoint, "
        f"step 0 ({run / 'checkpoints' / 'step-00000000'}): finite weights whose loss was finite",
    )
    assert [p.name for p in list_states(run)] == ["step-00000000"]
    with pytest.warns(FlowmatchWarning, match="loaded training checkpoint step 0"):
        assert torch.isfinite(flowmatch.load(run).sample(100, nfe=4, seed=0)).all()


class _Exploding(torch.nn.Module):
    """v(x, t) = A [x, t] + b whose training calls give an infinite velocity from step ``explode`` on, and
    whose unused buffer becomes infinite at step ``spoil`` (so the checkpoint after that step holds it)."""

    def __init__(self, explode: int, spoil: int):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.register_buffer("unused", torch.zeros(1))
        self.explode, self.spoil, self.calls = explode, spoil, 0

    def forward(self, x, t):
        out = self.linear(torch.cat([x, torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(len(x), 1)], 1))
        if not self.training:
            return out
        step, self.calls = self.calls, self.calls + 1
        if step == self.spoil:
            self.unused.fill_(float("inf"))
        return out * float("inf") if step >= self.explode else out


def test_the_last_good_checkpoint_has_finite_weights_and_a_finite_loss(tmp_path):
    from flowmatch.api import train
    from flowmatch.engine.checkpoints import list_states

    run = tmp_path / "run"
    with pytest.raises(FlowmatchError) as error:
        train(
            data="two-gaussians", model=_Exploding(explode=6, spoil=4), run_dir=run, steps=50, checkpoint_every=1,
            keep_checkpoints=3, progress=False, precision="fp32", time_strata=0,
        )  # fmt: skip
    # step-6 (loss inf) and step-5 (written after step 4 spoiled the buffer) are deleted; step-4 is kept
    assert str(error.value) == (
        "training stopped: the loss is inf at step 6; try a smaller lr or grad_clip=1.0; the run keeps its last good checkpoint, "
        f"step 4 ({run / 'checkpoints' / 'step-00000004'}): finite weights whose loss was finite"
    )
    assert [p.name for p in list_states(run)] == ["step-00000004"]  # keep 3: steps 4, 5 and 6 were on disk


def test_keep_1_still_holds_the_checkpoint_before_the_newest(tmp_path):
    """With --keep-checkpoints 1 the newest checkpoint's loss is not known yet: the one before it stays."""
    from flowmatch.api import train
    from flowmatch.engine.checkpoints import list_states

    run = tmp_path / "run"
    with pytest.raises(FlowmatchError, match="the loss is inf at step 6; .* last good checkpoint, step 5 "):
        train(
            data="two-gaussians", model=_Exploding(explode=6, spoil=-1), run_dir=run, steps=50, checkpoint_every=1,
            keep_checkpoints=1, progress=False, precision="fp32", time_strata=0,
        )  # fmt: skip
    assert [p.name for p in list_states(run)] == ["step-00000005"]


# -- a finished run trained further ----------------------------------------------------------------------
def _interrupt_at(monkeypatch, at: int) -> None:
    """SIGINT during training step ``at``: the loop finishes that step, checkpoints step at + 1 and stops."""
    import os
    import signal

    from flowmatch.engine import loop

    original = loop.learning_rate

    def rate(config, step):
        if step == at:
            os.kill(os.getpid(), signal.SIGINT)
        return original(config, step)

    monkeypatch.setattr(loop, "learning_rate", rate)


def test_a_finished_run_resumed_for_more_steps_and_stopped_loads_its_newest_state(run, tmp_path, monkeypatch, capsys):
    from flowmatch.engine.checkpoints import list_states, load_state, unprefixed

    extended = tmp_path / "extended"
    shutil.copytree(run, extended)
    _interrupt_at(monkeypatch, 39)
    result, _ = fit(out=extended, resume=True, steps=100, progress=False, evaluate=False)  # as --resume --steps 100
    assert result.interrupted and result.step == 40
    assert list_states(extended)[-1].name == "step-00000040"
    # the old end's weights and figures are gone: nothing names step 20 as the run's result
    for name in ("checkpoint.safetensors", "checkpoint.json", "metrics.json", "report.json"):
        assert not (extended / name).exists(), name
    assert json.loads((extended / "config.json").read_text())["steps"] == 100
    with pytest.warns(FlowmatchWarning, match=r"loaded training checkpoint step 40 .*no checkpoint.safetensors"):
        flow = flowmatch.load(extended)
    ema = unprefixed("ema", load_state(list_states(extended)[-1])[0])
    assert all(torch.equal(flow.model.state_dict()[k], v) for k, v in ema.items())

    # a folder extended before this rule (its old final files kept) loads the newer state too, and says why
    for name in ("checkpoint.safetensors", "checkpoint.json", "metrics.json"):
        shutil.copy(run / name, extended / name)
    with pytest.warns(FlowmatchWarning, match=r"step 40 .*: its checkpoint.safetensors is from step 20 and training went on"):
        flow = flowmatch.load(extended)
    assert all(torch.equal(flow.model.state_dict()[k], v) for k, v in ema.items())

    monkeypatch.undo()
    fit(None, out=extended, resume=True, progress=False, evaluate=False, n_eval=200)  # finishing writes the new end
    assert json.loads((extended / "metrics.json").read_text())["steps_run"] == 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flowmatch.load(extended)


# -- leftovers of killed processes, and the run folder's lock ------------------------------------------
TINY = ["--steps", "20", "--width", "16", "--batch-size", "32", "--quiet", "--no-eval"]


@pytest.fixture(scope="module")
def dead_pid():
    """The PID of a process that has exited (and been reaped): nothing runs under it."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _owned(pid) -> str:
    from flowmatch.leftovers import HOST

    return f"{pid}-{HOST}"


def test_the_next_train_into_a_parent_cleans_what_is_provably_stale_there(tmp_path, capsys, dead_pid):
    from flowmatch.leftovers import HOST

    dead, alive = _owned(dead_pid), _owned(os.getpid())
    stale = [f".a.partial-{dead}.x1y2", f".b.tmp-{dead}.q9.json", f".gone.pairs-{dead}.npz", ".c.lock"]
    kept = [
        f".d.partial-{alive}.x1y2",  # its owner is running (this process)
        f".e.partial-{dead_pid}-{'0' * 8 if HOST != '0' * 8 else '1' * 8}.x1y2",  # another host's: cannot be checked
        ".f.partial-x1y2",  # named before owners were recorded
        f".kept.pairs-{dead}.npz",  # the run 'kept' names them: it resumes with them
    ]
    for name in stale + kept:
        if "partial" in name:
            (tmp_path / name).mkdir()
            (tmp_path / name / "config.json").write_text("{}")
        else:
            (tmp_path / name).write_text("x")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "config.json").write_text("{}")
    assert main(["train", "--out", str(tmp_path / "new"), *TINY]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "kept", "new"])


def test_stale_temporary_files_in_a_run_are_cleaned_when_it_is_opened(run, tmp_path, capsys, dead_pid):
    opened = tmp_path / "run"
    shutil.copytree(run, opened)
    dead, alive = _owned(dead_pid), _owned(os.getpid())
    stale = [
        opened / f".checkpoint.safetensors.tmp-{dead}.ab12.safetensors",
        opened / f".samples.png.tmp-{dead}.cd34.png",
        opened / "checkpoints" / f".step-00000030.partial-{dead}.ef56",
        tmp_path / f".run.partial-{dead}.gh78",  # its own staging folder beside it
    ]
    live = opened / f".metrics.json.tmp-{alive}.ij90.json"
    for path in [*stale, live]:
        path.mkdir() if "partial" in path.name else path.write_text("x")
    assert _sample(opened, tmp_path / "s.npy", capsys) == 0
    assert [p for p in stale if p.exists()] == [] and live.exists()


def test_a_sigkilled_run_leaves_nothing_that_loading_and_the_next_train_do_not_clean(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "flowmatch", "train", "--out", str(run), "--steps", "100000", "--width", "16", "--batch-size", "32"]
    proc = subprocess.Popen([*cmd, "--checkpoint-every", "1", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (run / "checkpoints" / "step-00000005").exists():  # writing a checkpoint a step
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    with pytest.warns(FlowmatchWarning):
        flowmatch.load(run)
    hidden = [p.name for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.name.startswith(".")]
    assert hidden == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".run.lock"]  # no process holds it
    assert main(["train", "--out", str(tmp_path / "next"), *TINY]) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_run_folder_in_use_is_locked(tmp_path, capsys):
    import signal
    import subprocess
    import sys

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time; from flowmatch.leftovers import run_lock\nwith run_lock({str(run)!r}):\n print('held', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        for args in (["train", "--out", str(run), *TINY], ["train", "--out", str(run), "--force", *TINY]):
            capsys.readouterr()
            code = main(args)
            one_error_line(capsys, code, f"run folder '{run}' is in use by another flowmatch process (pid {holder.pid})")
            assert not run.exists()
        holder.send_signal(signal.SIGKILL)  # the operating system releases its lock
        holder.wait(timeout=30)
    finally:
        holder.kill()
    assert (tmp_path / ".run.lock").exists()
    assert main(["train", "--out", str(run), *TINY]) == 0
    assert not (tmp_path / ".run.lock").exists()  # released and removed


def test_the_same_process_may_hold_a_run_lock_twice(tmp_path):
    from flowmatch.leftovers import run_lock

    with run_lock(tmp_path / "run"):
        with run_lock(str(tmp_path / "run")):
            assert (tmp_path / ".run.lock").read_text().split()[0] == str(os.getpid())
        assert (tmp_path / ".run.lock").exists()
    assert not (tmp_path / ".run.lock").exists()


@pytest.mark.parametrize(
    "moment",
    ["staged", "old moved aside", "new in place", "old half removed"],
)
def test_a_force_replacement_is_recoverable_at_every_moment(run, tmp_path, capsys, dead_pid, moment):
    """A kill at each moment of atomic_folder replacing a run (staging built; the old run renamed to
    .X.old-PID-HOST; the new one renamed into place; the old one being removed) leaves a folder that the
    next command restores or cleans: X is the old run until the new one is in place, the new one after."""
    dead = _owned(dead_pid)
    target, old, staged = tmp_path / "X", tmp_path / f".X.old-{dead}", tmp_path / f".X.partial-{dead}.ab12"
    shutil.copytree(run, staged)
    (staged / "which").write_text("new")
    shutil.copytree(run, target if moment == "staged" else old)
    (target if moment == "staged" else old).joinpath("which").write_text("old")
    if moment in ("new in place", "old half removed"):
        os.replace(staged, target)
    if moment == "old half removed":
        shutil.rmtree(old / "checkpoints")
        (old / "checkpoint.safetensors").unlink()
    assert _sample(target, tmp_path / "s.npy", capsys) == 0
    assert (target / "which").read_text() == ("new" if moment in ("new in place", "old half removed") else "old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X", "s.npy"]


# -- paths in config.json -----------------------------------------------------------------------------------
def test_a_moved_reflow_run_resumes(run, tmp_path, monkeypatch, capsys):
    """config.json names the pairs and the teacher relative to the run folder: moved (with its teacher
    beside it), a stopped reflow run resumes; a teacher left behind is not needed to resume."""
    from flowmatch.rectify import reflow

    teacher = tmp_path / "a" / "teacher"
    shutil.copytree(run, teacher)
    _interrupt_at(monkeypatch, 19)
    result, _ = reflow(teacher, tmp_path / "a" / "reflow", n_pairs=256, teacher_nfe=8, steps=40, progress=False, evaluate=False)
    assert result.interrupted and result.step == 20
    monkeypatch.undo()
    saved = json.loads((tmp_path / "a" / "reflow" / "config.json").read_text())
    assert (saved["pairs"], saved["init_from"]) == ("pairs.npz", "../teacher")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["reflow", "teacher"]  # the pairs moved in, no lock left

    os.rename(tmp_path / "a", tmp_path / "b")
    os.rename(tmp_path / "b" / "reflow", tmp_path / "b" / "moved")
    moved = tmp_path / "b" / "moved"
    with pytest.warns(FlowmatchWarning):
        flow = flowmatch.load(moved)
    assert (flow.config["pairs"], flow.config["init_from"]) == (str(moved / "pairs.npz"), str(tmp_path / "b" / "teacher"))
    capsys.readouterr()
    assert main(["train", "--resume", str(moved), "--quiet", "--no-eval"]) == 0, capsys.readouterr().err
    assert json.loads((moved / "metrics.json").read_text())["steps_run"] == 40
    assert json.loads((moved / "config.json").read_text())["pairs"] == "pairs.npz"


def test_absolute_paths_of_older_runs_still_read(tmp_path):
    from flowmatch.engine.runs import config_for_file, config_from_file

    pairs = str(tmp_path / "elsewhere" / "pairs.npz")
    assert config_from_file({"pairs": pairs, "init_from": ""}, tmp_path / "run") == {"pairs": pairs, "init_from": ""}
    stored = config_for_file({"pairs": pairs, "init_from": str(tmp_path / "teacher"), "data": "moons"}, tmp_path / "run")
    assert stored == {"pairs": "../elsewhere/pairs.npz", "init_from": "../teacher", "data": "moons"}
    assert config_from_file(stored, tmp_path / "run") == {"pairs": pairs, "init_from": str(tmp_path / "teacher"), "data": "moons"}


# -- checkpoint safety: nothing is ever unpickled ------------------------------------------------------------
class _Payload:
    """Unpickling this object creates the file ``marker``: what a malicious checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_payload(kind: str, path, marker) -> None:
    """A file at ``path`` whose unpickling runs the payload: raw pickle bytes, a torch.save archive (pickle in
    a zip), a .npy of objects, an .npz whose every array (data, x, x0, x1, images, labels) holds objects."""
    import pickle

    import numpy as np

    objects = np.array([_Payload(marker)] * 4, dtype=object)
    if kind == "pickle":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    elif kind == "torch.save":
        torch.save({"weights": _Payload(marker)}, path)
    elif kind == "npy of objects":
        with open(path, "wb") as fh:
            np.save(fh, objects, allow_pickle=True)
    else:
        with open(path, "wb") as fh:
            np.savez(fh, **{k: objects for k in ("data", "x", "x0", "x1", "images", "labels")})


PAYLOADS = ["pickle", "torch.save", "npy of objects", "npz of objects"]


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """The check below can fail: loading these files with pickle allowed creates the marker."""
    import pickle

    import numpy as np

    for kind in PAYLOADS:
        marker = tmp_path / f"marker-{kind}"
        _write_payload(kind, tmp_path / "evil", marker)
        if kind == "pickle":
            pickle.loads((tmp_path / "evil").read_bytes())
        elif kind == "torch.save":
            torch.load(tmp_path / "evil", weights_only=False)
        elif kind == "npy of objects":
            np.load(tmp_path / "evil", allow_pickle=True)
        else:
            with np.load(tmp_path / "evil", allow_pickle=True) as archive:
                archive["x"]
        assert marker.exists(), kind


@pytest.fixture(scope="module")
def python_source_run(tmp_path_factory):
    """A run whose source was rows given in Python: its folder keeps them in source.safetensors."""
    out = tmp_path_factory.mktemp("source") / "run"
    rows = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    fit(TrainConfig(steps=5, width=16, batch_size=32), out=str(out), source=rows, progress=False, evaluate=False, n_eval=100)
    return out


def _replace_every(folder, name, kind, marker) -> None:
    found = list(folder.rglob(name))
    assert found, name
    for path in found:
        _write_payload(kind, path, marker)


@pytest.mark.parametrize("kind", PAYLOADS)
def test_a_payload_in_place_of_any_file_flowmatch_reads_is_refused_and_never_run(run, python_source_run, tmp_path, capsys, kind):
    from flowmatch.data.dataset import load_dataset
    from flowmatch.evaluation.images import ImageClassifier, load_classifier, save_classifier
    from flowmatch.modalities.points.pairs import load_pairs

    marker = tmp_path / "marker"
    finished = _finished_copy(run, tmp_path / "finished")
    _replace_every(finished, "checkpoint.safetensors", kind, marker)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    (unfinished / "checkpoint.safetensors").unlink()
    _replace_every(unfinished, "state.safetensors", kind, marker)  # every training checkpoint
    source = tmp_path / "source"
    shutil.copytree(python_source_run, source)
    _replace_every(source, "source.safetensors", kind, marker)
    classifier = tmp_path / "classifier"
    save_classifier(ImageClassifier((1, 8, 8), 10, width=4, feature_dim=4), classifier)
    _replace_every(classifier, "classifier.safetensors", kind, marker)
    files = {}
    for suffix in (".npy", ".npz", ".pt", ".safetensors"):
        files[suffix] = tmp_path / f"evil{suffix}"
        _write_payload(kind, files[suffix], marker)
    out = tmp_path / "out"

    commands = [
        *(["train", "--data", str(files[s]), "--out", str(out), *TINY] for s in (".npy", ".npz", ".pt")),
        ["train", "--data", str(files[".npy"]), "--kind", "tokens", "--out", str(out), *TINY],
        ["train", "--data", "two-gaussians", "--pairs", str(files[".npz"]), "--out", str(out), *TINY],
        ["sample", "--run", str(finished), "-n", "4", "--out", str(tmp_path / "s.npy")],
        ["sample", "--run", str(unfinished), "-n", "4", "--out", str(tmp_path / "s.npy")],
        ["sample", "--run", str(source), "-n", "4", "--out", str(tmp_path / "s.npy")],
        ["sample", "--run", str(run), "-n", "4", "--condition", str(files[".npy"]), "--out", str(tmp_path / "s.npy")],
        ["eval", "--run", str(finished), "--quick", "--quiet"],
        ["train", "--resume", str(unfinished), "--quiet", "--no-eval"],
    ]
    for command in commands:
        capsys.readouterr()
        code = main(command)
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (command, err)
        assert not marker.exists(), command
    assert not out.exists() and not (tmp_path / "s.npy").exists()

    calls = [
        lambda: flowmatch.load(finished),
        lambda: flowmatch.load(unfinished),
        lambda: flowmatch.load(source),
        lambda: load_pairs(str(files[".npz"]), 2),
        lambda: load_dataset(str(files[".npy"])),
        lambda: load_dataset(str(files[".npz"])),
        lambda: load_classifier(classifier),
        lambda: fit(TrainConfig(steps=5, data=str(files[".npz"])), progress=False),
    ]
    for number, call in enumerate(calls):
        with pytest.raises(FlowmatchError):
            call()
        assert not marker.exists(), number


def test_the_package_has_no_way_to_unpickle():
    """No pickle, no torch.load, and every np.load with allow_pickle=False (safetensors and JSON for the rest)."""
    import re
    from pathlib import Path

    sources = {p: p.read_text() for p in Path(flowmatch.__file__).parent.rglob("*.py")}
    assert len(sources) > 50
    for path, text in sources.items():
        assert not re.search(r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib|shelve|marshal)\b", text, re.M), path
        assert "torch.load(" not in text and "read_pickle" not in text, path
        for call in re.finditer(r"np\.load\(([^)]*)\)", text):
            assert "allow_pickle=False" in call.group(1), (path, call.group(0))
    assert sum(len(re.findall(r"np\.load\(", text)) for text in sources.values()) >= 6  # the calls checked above
