"""Run folders: one-call reload, faithful samples, and clear errors for damaged checkpoints."""

import json
import shutil

import pytest
import torch

import flowmatch
from flowmatch.api import fit
from flowmatch.config import TrainConfig
from flowmatch.errors import FlowmatchError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    result, metrics = fit(TrainConfig(steps=30, width=16, batch_size=32), out=str(out), progress=False)
    return out, result


def test_reload_samples_identically(run):
    out, result = run
    flow = flowmatch.load(out)
    # the same weights and computation (measured equal); assert_close's float32 default leaves round-off room
    torch.testing.assert_close(flow.sample(64, nfe=8, seed=3), result.flow.sample(64, nfe=8, seed=3))
    assert flow.config["steps"] == 30
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"final_loss", "w2", "w2_floor", "w2_ratio"} <= set(metrics)
    # what "auto" resolved to on this machine, as the run trained and as its config.json records it beside "auto"
    config = json.loads((out / "config.json").read_text())
    assert config["precision"] == "auto" and metrics["precision"] == result.precision == config["resolved"]["precision"]
    assert metrics.get("bf16_speedup") == config["resolved"]["bf16_speedup"] == result.bf16_speedup


def test_generate_reports_nfe_and_trajectory(run):
    flow = flowmatch.load(run[0])
    s = flow.generate(10, solver="heun", nfe=6, return_trajectory=True, seed=0)
    assert s.nfe == 6 and s.trajectory.shape == (4, 10, 2)
    torch.testing.assert_close(s.trajectory[-1], s.x)  # the same values (measured equal)
    adaptive = flow.generate(10, solver="dopri5", atol=1e-4, rtol=1e-4, seed=0)
    assert adaptive.nfe > 0


def test_generate_from_given_noise(run):
    """x0 replaces the seeded draw: the same noise gives the same samples, and a model's output is
    the Euler step x0 + v(x0, 0) at NFE 1 (in model coordinates)."""
    flow = flowmatch.load(run[0])
    noise = flow.draw_source(50, torch.Generator().manual_seed(4))
    torch.testing.assert_close(flow.sample(50, nfe=8, x0=noise), flow.sample(50, nfe=8, seed=4))  # measured equal
    one_step = flow.standardizer.forward(flow.sample(50, solver="euler", nfe=1, x0=noise)).float()
    with torch.no_grad():
        # a float32 round trip through the standardiser (~1e-7; measured equal) within the float32 default
        torch.testing.assert_close(one_step, noise + flow.model(noise, torch.tensor(0.0)))


def test_bad_sample_arguments(run):
    flow = flowmatch.load(run[0])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(FlowmatchError, match="positive integer"):
            flow.sample(bad)
    with pytest.raises(FlowmatchError, match="multiple of 4"):
        flow.sample(3, nfe=6)
    for bad in (torch.zeros(5, 2), torch.zeros(4, 3), torch.zeros(4, 2, dtype=torch.long), [[0.0, 0.0]] * 4):
        with pytest.raises(FlowmatchError, match=r"x0 must be a float tensor of shape \(4, 2\)"):
            flow.sample(4, x0=bad)
    with pytest.raises(FlowmatchError, match="non-finite"):
        flow.sample(2, x0=torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))


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


def test_bf16_samples_are_close_to_fp32(run):
    # the network runs in bfloat16, the state in float32; measured on this run with seed 0 (samples of
    # scale ~4): max |bf16 - fp32| 2.45e-3, RMS 3.8e-4 where the run trained in bf16, 2.38e-3 and 4.2e-4
    # where it trained in fp32 (Xeon without bf16 units, emulated with oneDNN capped at AVX512_CORE_VNNI
    # and at AVX2). The effect to rule out, a bf16 state, costs at least one bf16 rounding of the
    # samples: max 7.7e-3, RMS 1.9e-3. The bounds lie about halfway (geometrically) between: the max
    # keeps 4e-3; the RMS was 6e-4, only 1.4x above the fp32-trained run's, and is now 9e-4 (2.1x either way)
    flow = flowmatch.load(run[0])
    fp32 = flow.sample(500, nfe=8, seed=0)
    bf16 = flow.sample(500, nfe=8, seed=0, precision="bf16")
    assert bf16.dtype == fp32.dtype == torch.float32
    diff = (bf16 - fp32).abs()
    assert diff.max() > 1e-5  # bf16 really ran (float32 round-off alone is ~1e-7)
    assert diff.max() < 4e-3 and diff.pow(2).mean().sqrt() < 9e-4
    traj = flow.generate(20, nfe=8, seed=0, precision="bf16", return_trajectory=True, solver="heun")
    assert traj.trajectory.dtype == torch.float32 and traj.trajectory.shape == (5, 20, 2)


def test_batch_size_splits_network_calls_only(run):
    flow = flowmatch.load(run[0])
    whole = flow.generate(50, nfe=8, seed=2, batch_size=50, return_trajectory=True)
    for batch_size in (1, 7, None):
        parts = flow.generate(50, nfe=8, seed=2, batch_size=batch_size, return_trajectory=True)
        # other matmul kernels per chunk: float32 round-off ~1e-7 a call over 8 calls (measured <= 2.4e-7,
        # also with AVX2 kernels)
        torch.testing.assert_close(parts.trajectory, whole.trajectory, rtol=1e-6, atol=1e-6)
    adaptive = flow.generate(30, solver="dopri5", seed=2, atol=1e-4, rtol=1e-4, batch_size=30)
    chunked = flow.generate(30, solver="dopri5", seed=2, atol=1e-4, rtol=1e-4, batch_size=4)
    assert chunked.nfe == adaptive.nfe
    # chunks of 4 rows run other matmul kernels than one of 30 (float32 rounding differs by ~1e-7 a call);
    # dopri5's step-size control turns that into differences bounded by its own tolerance, not by
    # rounding (measured 4.5e-5 on an Intel Xeon without bf16, under 1e-5 on an AMD EPYC, 1.4e-5 on the
    # EPYC with AVX2 kernels)
    torch.testing.assert_close(chunked.x, adaptive.x, rtol=1e-4, atol=1e-4)


def test_batch_size_splits_labels_and_guidance():
    from flowmatch.data.standardize import Standardizer
    from flowmatch.flows.continuous import Flow
    from flowmatch.models.mlp import MLP
    from flowmatch.paths.affine import make_path

    torch.manual_seed(0)
    identity = Standardizer(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    flow = Flow(MLP(2, width=16, num_classes=3).eval(), make_path("linear", 0.0, 0.0), identity, {"source": "gaussian", "seed": 0})
    labels = torch.arange(20) % 3
    for guidance in (1.0, 2.5):
        whole = flow.sample(20, nfe=8, seed=0, label=labels, guidance=guidance, batch_size=100)
        parts = flow.sample(20, nfe=8, seed=0, label=labels, guidance=guidance, batch_size=3)
        torch.testing.assert_close(parts, whole, rtol=1e-6, atol=1e-6)  # as above (measured 1.2e-7)


def test_bad_precision_and_batch_size(run):
    flow = flowmatch.load(run[0])
    for bad in ("fp16", "bfloat16", None):
        with pytest.raises(FlowmatchError, match="precision"):
            flow.sample(4, nfe=8, precision=bad)
    with pytest.raises(FlowmatchError, match="with_log_prob"):
        flow.generate(4, nfe=8, precision="bf16", with_log_prob=True)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(FlowmatchError, match="batch_size"):
            flow.sample(4, nfe=8, batch_size=bad)


def test_sampling_under_another_schedule_and_a_shifted_grid(run, tmp_path, capsys):
    import numpy as np

    from flowmatch.cli import main

    flow = flowmatch.load(run[0])
    plain = flow.sample(200, nfe=20, seed=5)
    # the trained schedule rewritten for itself is the identity map (t_r = r to float64 resolution)
    torch.testing.assert_close(flow.sample(200, nfe=20, seed=5, schedule="linear"), plain, rtol=1e-5, atol=1e-5)  # measured equal
    # another schedule moves the samples: measured 0.0096, 10x the bound
    assert not torch.allclose(flow.sample(200, nfe=20, seed=5, schedule="cosine"), plain, atol=1e-3)
    out = tmp_path / "s.npy"
    assert (
        main(["sample", "--run", str(run[0]), "-n", "50", "--nfe", "8", "--schedule", "cosine", "--grid", "shift:3", "--out", str(out)])
        == 0
    )
    assert np.load(out).shape == (50, 2) and np.isfinite(np.load(out)).all()
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:  # argparse's own error exit: usage line aside, one line
        main(["sample", "--run", str(run[0]), "-n", "5", "--grid", "shift:x", "--out", str(tmp_path / "t.npy")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error" in line] == [
        "flowmatch sample: error: argument --grid: time grid 'shift:x': the shift must be a positive number, as in 'shift:3'"
    ]
    assert not (tmp_path / "t.npy").exists()
