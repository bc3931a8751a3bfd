"""Crash safety: atomic writes, SIGKILL at any moment leaves a loadable and resumable run, SIGINT stops cleanly."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import flowmatch
from flowmatch.api import fit
from flowmatch.engine.checkpoints import list_states, save_state
from flowmatch.errors import FlowmatchWarning
from flowmatch.storage import atomic_file

TRAIN = [sys.executable, "-m", "flowmatch", "train", "--width", "16", "--depth", "2", "--batch-size", "32", "--quiet", "--no-eval"]


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_keeps_last_k(tmp_path):
    for step in range(5):
        save_state(tmp_path, step, {"w": torch.zeros(1)}, {}, keep=2)
    assert [p.name for p in list_states(tmp_path)] == ["step-00000003", "step-00000004"]


def _wait_for(path, timeout=180.0):  # generous: a loaded CI machine, and a kill test is not a speed test
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


#: Where each kill lands: just after a training checkpoint of that step appears (early, middle, the last
#: steps), or just after a final file appears (the run's weights, its picture, its metrics). Events,
#: not sleeps, so a busy machine moves the moments no more than one step.
KILL_AFTER = [f"checkpoints/step-{step:08d}" for step in (2, 20, 60, 100, 140, 180, 198)] + [
    "checkpoint.safetensors",
    "samples.png",
    "metrics.json",
]


def _killed_and_loaded(run, data: list[str], steps: int, event: str):
    """Train ``run`` on ``data`` (the default data when empty) for ``steps`` steps with a checkpoint every 2, SIGKILL
    it just after ``run / event`` appears, and load what it left. Load says it takes a training checkpoint where the
    run has no final weights (also when killed between the weights and their metadata)."""
    proc = subprocess.Popen(
        [*TRAIN, *data, "--out", str(run), "--steps", str(steps), "--checkpoint-every", "2", "--keep-checkpoints", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(run / event)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    unfinished = not ((run / "checkpoint.safetensors").exists() and (run / "checkpoint.json").exists())
    with pytest.warns(FlowmatchWarning, match="loaded training checkpoint") if unfinished else contextlib.nullcontext():
        return flowmatch.load(run)  # a loadable checkpoint, whatever the moment


@pytest.mark.parametrize("event", KILL_AFTER)
def test_sigkill_at_ten_moments_leaves_a_resumable_run(event, tmp_path):
    run = tmp_path / "run"
    flow = _killed_and_loaded(run, [], 200, event)
    assert torch.isfinite(flow.sample(5, nfe=4, seed=0)).all()
    fit(None, out=run, resume=True, progress=False, n_eval=200, evaluate=False)
    assert list_states(run)[-1].name == "step-00000200"
    assert (run / "metrics.json").is_file() and (run / "checkpoint.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left beside it


def test_sigint_finishes_the_step_writes_a_checkpoint_and_exits_zero(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [*TRAIN, "--out", str(run), "--steps", "1000000", "--checkpoint-every", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(run)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Resume with: flowmatch train --resume" in out
    last = list_states(run)[-1]
    assert last.name != "step-00000000"  # a checkpoint at the step where it stopped
    with pytest.warns(FlowmatchWarning, match=f"training checkpoint step {int(last.name[5:])}"):
        flowmatch.load(run)


def _kind_data(folder, kind):
    """A small data file of ``kind`` and the flags that train it."""
    if kind == "tokens":
        (folder / "t.txt").write_text("the quick brown fox jumps over the lazy dog. " * 60)
        return ["--data", str(folder / "t.txt"), "--kind", "tokens", "--seq-len", "16"]
    if kind == "images":
        return ["--data", "digits"]
    if kind == "table":
        (folder / "t.csv").write_text("size,colour\n" + "".join(f"{i % 7}.5,{'red' if i % 3 else 'blue'}\n" for i in range(80)))
        return ["--data", str(folder / "t.csv"), "--kind", "table"]
    (folder / "p.csv").write_text("lat,lon\n" + "".join(f"{(i * 7) % 170 - 85},{(i * 13) % 350 - 175}\n" for i in range(80)))
    return ["--data", str(folder / "p.csv"), "--manifold", "sphere"]


@pytest.mark.parametrize(
    "kind, event",
    [
        ("images", "checkpoint.safetensors"),
        ("tokens", "checkpoints/step-00000020"),
        ("table", "checkpoint.safetensors"),
        ("sphere", "checkpoints/step-00000020"),
    ],
)
def test_sigkill_at_a_checkpoint_of_every_modality_leaves_a_resumable_run(kind, event, tmp_path):
    """Image, token, table and manifold runs write their checkpoints through the same engine as points (whose ten
    moments are above): killed just after a training checkpoint or the final weights appear, the run loads, samples and
    resumes to its last step."""
    run = tmp_path / "run"
    flow = _killed_and_loaded(run, _kind_data(tmp_path, kind), 40, event)
    assert len(flow.sample(3, nfe=4, seed=0)) == 3
    fit(None, out=run, resume=True, progress=False, evaluate=False)
    assert list_states(run)[-1].name == "step-00000040"
    assert (run / "metrics.json").is_file() and (run / "checkpoint.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
