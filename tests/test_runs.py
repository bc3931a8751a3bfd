"""Run folders: one-call reload, faithful samples, and clear errors for damaged checkpoints."""

import json
import shutil

import pytest
import torch

import flowmatch
from flowmatch.errors import FlowmatchError
from flowmatch.training import TrainConfig, fit


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    result, metrics = fit(TrainConfig(steps=30, width=16, batch_size=32), out=str(out), progress=False)
    return out, result


def test_reload_samples_identically(run):
    out, result = run
    flow = flowmatch.load(out)
    torch.testing.assert_close(flow.sample(64, nfe=8, seed=3), result.flow.sample(64, nfe=8, seed=3))
    assert flow.config["steps"] == 30
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"final_loss", "w2", "w2_floor", "w2_ratio"} <= set(metrics)


def test_generate_reports_nfe_and_trajectory(run):
    flow = flowmatch.load(run[0])
    s = flow.generate(10, solver="heun", nfe=6, return_trajectory=True, seed=0)
    assert s.nfe == 6 and s.trajectory.shape == (4, 10, 2)
    torch.testing.assert_close(s.trajectory[-1], s.x)
    adaptive = flow.generate(10, solver="dopri5", atol=1e-4, rtol=1e-4, seed=0)
    assert adaptive.nfe > 0


def test_bad_sample_arguments(run):
    flow = flowmatch.load(run[0])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(FlowmatchError, match="positive integer"):
            flow.sample(bad)
    with pytest.raises(FlowmatchError, match="multiple of 4"):
        flow.sample(3, nfe=6)


def _copy(src, dst):
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints")  # only the final checkpoint
    return dst


def test_truncated_checkpoint(run, tmp_path):
    bad = _copy(run[0], tmp_path / "bad")
    data = (bad / "checkpoint.safetensors").read_bytes()
    (bad / "checkpoint.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FlowmatchError, match="cannot read the weights"):
        flowmatch.load(bad)


def test_config_that_does_not_match_weights(run, tmp_path):
    bad = _copy(run[0], tmp_path / "bad")
    meta = json.loads((bad / "checkpoint.json").read_text())
    meta["model"]["width"] = 32
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(FlowmatchError, match="do not match"):
        flowmatch.load(bad)


def test_not_a_run_folder(tmp_path):
    with pytest.raises(FlowmatchError, match="does not exist"):
        flowmatch.load(tmp_path / "nothing")
    with pytest.raises(FlowmatchError, match="not a flowmatch run folder"):
        flowmatch.load(tmp_path)
