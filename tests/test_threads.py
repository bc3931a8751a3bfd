"""flowmatch.engine.threads: which intra-op thread count a call chooses, and that it is applied and undone.

The rule's decisions are checked with explicit environments, core counts and torch counts (no timing)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from flowmatch.api import fit
from flowmatch.cli import main
from flowmatch.config import TrainConfig
from flowmatch.engine import threads
from flowmatch.engine.threads import (
    WORK_PER_THREAD,
    auto_threads,
    call_work,
    choose_threads,
    positions_of,
    thread_scope,
    usable_cores,
    use_threads,
)
from flowmatch.errors import FlowmatchError
from flowmatch.models.registry import build_model

NO_VARS: dict[str, str] = {}


def test_explicit_threads_win_over_the_variables_and_the_rule():
    choice = choose_threads(3, 1.0, environ={"OMP_NUM_THREADS": "1"}, cores=2, current=2, torch_default=2)
    assert (choice.count, choice.chosen_by, choice.set) == (3, "threads", True)


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_a_thread_variable_leaves_torch_alone(name):
    choice = choose_threads(0, 1e12, environ={name: "4"}, cores=16, current=4, torch_default=16)
    assert (choice.count, choice.chosen_by, choice.set) == (4, name, False)
    # an empty variable is no setting: the rule chooses
    assert choose_threads(0, 1.0, environ={name: " "}, cores=16, current=16, torch_default=16).chosen_by == "auto"


def test_a_count_the_program_set_is_kept_and_torchs_own_default_is_not():
    kept = choose_threads(0, 1.0, environ=NO_VARS, cores=8, current=3, torch_default=8)
    assert (kept.count, kept.chosen_by, kept.set) == (3, "torch.set_num_threads", False)
    chosen = choose_threads(0, 1.0, environ=NO_VARS, cores=8, current=8, torch_default=8)
    assert (chosen.count, chosen.chosen_by, chosen.set) == (1, "auto", True)
    # where torch's starting count cannot be read, nothing is detected: the rule chooses
    assert choose_threads(0, 1.0, environ=NO_VARS, cores=8, current=3, torch_default=None).chosen_by == "auto"


def test_small_models_get_one_thread_and_large_work_the_cores():
    torch.manual_seed(0)
    mlp = build_model("mlp", 2, width=128, depth=3, activation="silu")
    work = call_work(mlp, 256)
    assert work == 58_498 * 256  # parameters x rows
    assert choose_threads(0, work, environ=NO_VARS, cores=64, current=64, torch_default=64).count == 1
    demo = build_model("mlp", 2, width=256, depth=3, activation="silu")  # the demo's model: training and sampling chunks
    assert auto_threads(call_work(demo, 512), 64) == 1 and auto_threads(call_work(demo, 2048), 64) == 1
    assert auto_threads(3.5 * WORK_PER_THREAD, 64) == 3 and auto_threads(3.5 * WORK_PER_THREAD, 2) == 2
    assert auto_threads(100 * WORK_PER_THREAD, 1) == 1 and auto_threads(0.0, 4) == 1
    assert call_work(lambda x, t: x, 100) == 0.0  # not a module: no estimate, one thread


def test_positions_of_images_and_rows():
    assert positions_of((1, 8, 8)) == 64 and positions_of((3, 32, 32)) == 1024
    assert positions_of(None) == 1 and positions_of((5,)) == 1
    unet = build_model("unet", 64, image_shape=[1, 8, 8], channels=16, channel_mult=[1, 2], num_res_blocks=1,
                       attention_resolutions=[], dropout=0.0, num_classes=0)  # fmt: skip
    params = sum(p.numel() for p in unet.parameters())
    assert call_work(unet, 128, 64) == params * 128 * 64
    assert auto_threads(call_work(unet, 128, 64), 2) == 2  # the digits U-Net at batch 128 uses both cores


def test_usable_cores_come_from_the_affinity_the_quota_and_torchrun(monkeypatch):
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert usable_cores(NO_VARS) == 3
    assert usable_cores({"LOCAL_WORLD_SIZE": "2"}) == 1  # two processes of this machine share them
    assert usable_cores({"LOCAL_WORLD_SIZE": "8"}) == 1 and usable_cores({"LOCAL_WORLD_SIZE": "x"}) == 3
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 2)
    assert usable_cores(NO_VARS) == 2

    def no_affinity(pid):
        raise AttributeError("sched_getaffinity")

    monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
    monkeypatch.setattr(os, "sched_getaffinity", no_affinity, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cores(NO_VARS) == 6
    assert choose_threads(0, 100 * WORK_PER_THREAD, environ=NO_VARS, current=6, torch_default=6).count == 6


def test_the_cgroup_quota_is_read_rounded_up(monkeypatch, tmp_path):
    files = {"150000 100000": 2, "max 100000": None, "50000 100000": 1, "garbage": None}
    for text, expected in files.items():
        path = tmp_path / "cpu.max"
        path.write_text(text + "\n")
        monkeypatch.setattr(threads, "Path", lambda p, _path=path: _path if p == "/sys/fs/cgroup/cpu.max" else threads.Path(p))
        assert threads._cgroup_quota() == expected, text


@pytest.mark.parametrize("bad", [-1, 1025, "2", 2.0, True, None])
def test_a_bad_thread_count_is_one_error(bad):
    with pytest.raises(FlowmatchError, match=r"threads must be an integer from 1 to 1024, or 0 to choose, got"):
        choose_threads(bad, 1.0, environ=NO_VARS, cores=2, current=2, torch_default=2)


def test_the_scope_applies_the_count_and_restores_torchs(monkeypatch):
    before = torch.get_num_threads()
    model = torch.nn.Linear(2, 2)

    @thread_scope
    def outer():
        use_threads(2, model, 10)
        assert torch.get_num_threads() == 2
        inner()
        assert torch.get_num_threads() == 3  # an inner call does not restore: the outermost does
        raise RuntimeError("boom")

    @thread_scope
    def inner():
        use_threads(3, model, 10)

    with pytest.raises(RuntimeError, match="boom"):
        outer()
    assert torch.get_num_threads() == before  # restored after an error too


def test_the_scope_compares_with_the_count_before_the_outermost_call(monkeypatch):
    """A count flowmatch set in an outer call is not taken for the program's own."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    start = torch.get_num_threads()
    monkeypatch.setattr(threads, "torch_default_threads", lambda: start)  # the program has not changed it
    seen = []

    @thread_scope
    def outer():
        use_threads(2, None, 1)
        seen.append(choose_threads(0, 1.0, cores=4))

    outer()
    assert (seen[0].chosen_by, seen[0].count) == ("auto", 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torch's starting count is read from Linux's /sys")
def test_torchs_starting_count_is_predicted():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    code = "import torch; from flowmatch.engine.threads import torch_default_threads as d; print(torch.get_num_threads(), d())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == out[1]


def test_the_config_refuses_a_bad_count_and_runs_record_theirs(tmp_path, capsys):
    with pytest.raises(FlowmatchError, match="config: threads must be >= 0, got -2"):
        TrainConfig.from_dict({"threads": -2})
    with pytest.raises(FlowmatchError, match="threads must be a int"):
        TrainConfig.from_dict({"threads": "4"})
    assert main(["train", "--out", str(tmp_path / "bad"), "--threads", "-1"]) == 2
    assert capsys.readouterr().err == "flowmatch train: error: flags: threads must be >= 0, got -1\n"
    assert not (tmp_path / "bad").exists()
    run = tmp_path / "run"
    fit(TrainConfig(steps=4, width=8, batch_size=16, threads=2), out=run, progress=False, evaluate=False, n_eval=100)
    recorded = json.loads((run / "metrics.json").read_text())["threads"]
    assert {k: recorded[k] for k in ("count", "chosen_by", "set")} == {"count": 2, "chosen_by": "threads", "set": True}
    assert torch.get_num_threads() == 1  # the test-wide count is back
    # the tests run with OMP_NUM_THREADS=1 (conftest): torch's count is left as it is and recorded so
    fit(TrainConfig(steps=4, width=8, batch_size=16), out=tmp_path / "auto", progress=False, evaluate=False, n_eval=100)
    recorded = json.loads((tmp_path / "auto" / "metrics.json").read_text())["threads"]
    assert {k: recorded[k] for k in ("count", "chosen_by", "set")} == {"count": 1, "chosen_by": "OMP_NUM_THREADS", "set": False}
    # a resumed run may take another count (a machine's setting), not other options
    assert main(["train", "--resume", str(run), "--steps", "6", "--threads", "1", "--quiet", "--no-eval"]) == 0
    assert json.loads((run / "config.json").read_text())["threads"] == 1
    out = tmp_path / "x.npy"
    assert main(["sample", "--run", str(run), "-n", "5", "--out", str(out), "--threads", "-1"]) == 2
    assert capsys.readouterr().err.endswith("error: threads must be an integer from 1 to 1024, or 0 to choose, got -1\n")
    assert not out.exists()
    assert main(["sample", "--run", str(run), "-n", "5", "--out", str(out), "--threads", "2"]) == 0
    assert torch.get_num_threads() == 1
