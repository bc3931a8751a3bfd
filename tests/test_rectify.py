"""Reflow and distillation: the pairs are the teacher's own endpoints, the CLI runs end to end,
a distilled student approaches its teacher in one step, and straightness measures curvature."""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import one_error_line as _one_error_line

from flowmatch.api import fit
from flowmatch.cli import main
from flowmatch.config import TrainConfig
from flowmatch.data.toy import sample_builtin
from flowmatch.errors import FlowmatchError
from flowmatch.modalities.points.rectify import PAIR_SEED_OFFSET, make_pairs, straightness
from flowmatch.rectify import distill, reflow
from flowmatch.runs import load
from flowmatch.solvers.integration import integrate

SMALL = dict(width=32, depth=2, batch_size=128)
FAST = ["--pairs", "512", "--steps", "30", "--teacher-nfe", "8", "--batch-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A small flow (300 steps) on 1,000 two-gaussians points in a file: curved enough that one Euler
    step is poor. A file keeps the held-out set (20%) small, so each run's W2 evaluation is cheap."""
    folder = tmp_path_factory.mktemp("rectify")
    np.save(folder / "tg.npy", sample_builtin("two-gaussians", 1000, 0).numpy())
    run = folder / "teacher"
    fit(TrainConfig(data=str(folder / "tg.npy"), steps=300, lr=3e-3, **SMALL), out=run, progress=False)
    return run


def test_pairs_are_the_teachers_own_endpoints(teacher):
    flow = load(teacher)
    x0, x1 = make_pairs(flow, 300, solver="rk4", nfe=12, seed=5, batch_size=128)  # three chunks
    torch.testing.assert_close(x0, flow.draw_source(300, torch.Generator().manual_seed(5)), rtol=0, atol=0)
    with torch.no_grad():
        expected = integrate(flow.model, x0, solver="rk4", nfe=12).x
    # chunks of 128 against one batch of 300 may take other float32 matmul kernels: round-off ~1e-7 per
    # evaluation, 12 evaluations, |x1| < 4 (measured equal)
    torch.testing.assert_close(x1, expected, rtol=1e-6, atol=1e-6)
    # model coordinates: for a data source the x0 are the source set's points, not N(0, I)


def test_reflow_cli_end_to_end_resume_and_repeat(teacher, tmp_path, capsys):
    out = tmp_path / "reflow-1"
    assert main(["reflow", "--run", str(teacher), "--out", str(out), *FAST]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["pairs"] == "pairs.npz"  # paths relative to the run folder, which may be moved
    assert os.path.normpath(os.path.join(out, config["init_from"])) == str(teacher.resolve())
    assert (config["coupling"], config["objective"], config["bridge_sigma"], config["steps"]) == ("independent", "flow-matching", 0.0, 30)
    assert not list(tmp_path.glob(".*pairs*"))  # the pending pairs file was moved in
    # the saved pairs are the teacher's endpoints of the documented x0 draws
    with np.load(out / "pairs.npz") as archive:
        x0, x1 = torch.from_numpy(archive["x0"]), torch.from_numpy(archive["x1"])
    flow = load(teacher)
    seed = TrainConfig().seed + PAIR_SEED_OFFSET
    torch.testing.assert_close(x0, flow.draw_source(512, torch.Generator().manual_seed(seed)), rtol=0, atol=0)  # the same draws
    with torch.no_grad():
        torch.testing.assert_close(x1, integrate(flow.model, x0, solver="rk4", nfe=8).x, rtol=1e-6, atol=1e-6)  # as above
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["few_step"]) == {"euler-1", "euler-2", "floor"} and metrics["straightness"] >= 0
    assert (config["target"], metrics["target"]) == ("auto", "conditional")  # fixed pairs: their own velocity
    # resume (more steps) finds the pairs through config.json; reflow of the reflow run works
    assert main(["train", "--resume", str(out), "--steps", "40", "--quiet"]) == 0
    again = tmp_path / "reflow-2"
    assert main(["reflow", "--run", str(out), "--out", str(again), *FAST]) == 0
    assert json.loads((again / "config.json").read_text())["init_from"] == "../reflow-1"
    assert load(again).sample(10, solver="euler", nfe=1).shape == (10, 2)


def test_distill_cli_end_to_end(teacher, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["distill", "--run", str(teacher), "--out", str(out), "--nfe", "2", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "euler-2 W2" in printed and "(euler NFE 2; floor" in printed  # scored with its own sampler
    assert json.loads((out / "metrics.json").read_text())["sampler"] == {"solver": "euler", "nfe": 2}
    config = json.loads((out / "config.json").read_text())
    assert (config["objective"], config["distill_nfe"]) == ("distill", 2)
    assert load(out).sample(10, solver="euler", nfe=2).shape == (10, 2)
    # a student samples with its own Euler NFE unless told otherwise; a plain flow with rk4 at 100
    student, plain = load(out), load(teacher)
    assert (student.resolve_sampler(), student.resolve_sampler("rk4"), student.resolve_sampler(nfe=4)) == (
        ("euler", 2),
        ("rk4", 100),
        ("euler", 4),
    )
    assert (plain.resolve_sampler(), plain.resolve_sampler("euler"), plain.resolve_sampler(nfe=8)) == (
        ("rk4", 100),
        ("euler", 100),
        ("rk4", 8),
    )
    assert torch.equal(student.sample(50, seed=3), student.sample(50, solver="euler", nfe=2, seed=3))
    assert main(["sample", "--run", str(out), "-n", "20", "--out", str(tmp_path / "s.npy")]) == 0
    assert "solver euler, NFE 2" in capsys.readouterr().out


def test_bad_input_is_one_line_and_exit_2(teacher, tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    _one_error_line(
        capsys, main(["reflow", "--run", str(tmp_path / "notarun"), "--out", str(tmp_path / "x"), *FAST]), "config.json is missing"
    )
    _one_error_line(capsys, main(["reflow", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), *FAST]), "does not exist")
    _one_error_line(
        capsys,
        main(["distill", "--run", str(teacher), "--out", str(tmp_path / "x"), "--nfe", "0", *FAST]),
        "nfe must be a positive integer",
    )
    _one_error_line(capsys, main(["reflow", "--run", str(teacher), "--out", str(teacher), *FAST]), "must differ from the teacher")
    _one_error_line(
        capsys, main(["reflow", "--run", str(teacher), "--out", str(tmp_path / "x"), "--pairs", "0"]), "number of pairs must be a positive"
    )
    _one_error_line(
        capsys,
        main(["reflow", "--run", str(teacher), "--out", str(tmp_path / "x"), "--lr-schedule", "wavy", *FAST]),
        "lr_schedule must be one of",
    )
    _one_error_line(capsys, main(["reflow", "--run", str(teacher), "--out", str(tmp_path.parent), *FAST]), "not a flowmatch run folder")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".*"))
    with pytest.raises(FlowmatchError, match="seed cannot be set here"):
        reflow(teacher, tmp_path / "y", seed=3)
    conditional = tmp_path / "conditional"
    shutil.copytree(teacher, conditional)
    config = json.loads((conditional / "config.json").read_text())
    (conditional / "config.json").write_text(json.dumps({**config, "conditional": True}))
    with pytest.raises(FlowmatchError, match="class-conditional run"):
        distill(conditional, tmp_path / "y")


def test_distilled_student_approaches_the_teacher_in_one_step(teacher, tmp_path):
    n = 1000
    _, metrics = distill(
        teacher, tmp_path / "d", nfe=1, n_pairs=n, steps=150, teacher_nfe=20, lr=3e-3, ema=0.0, progress=False, evaluate=False
    )
    with np.load(tmp_path / "d" / "pairs.npz") as archive:
        x0, x1 = torch.from_numpy(archive["x0"]), torch.from_numpy(archive["x1"])

    def one_step_error(run):
        with torch.no_grad():
            return (integrate(load(run).model, x0, solver="euler", nfe=1).x - x1).pow(2).sum(1).mean().item()

    before, after = one_step_error(teacher), one_step_error(tmp_path / "d")
    # measured: 1.63 for the teacher's own Euler step, 0.00056 for the student after 150 steps (fp32 and bf16
    # teachers alike); the final loss 0.0005 x before / 2
    assert after < 0.25 * before
    assert metrics["final_loss"] < 0.25 * before / 2  # the loss is per dimension (mean over 2)


def test_straightness_of_exact_fields():
    x0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # a constant field is a straight flow: 0 up to rounding (float64: measured 6.6e-31 and 4.2e-31)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert straightness(lambda x, t: c.expand_as(x), x0=x0, solver="euler", nfe=10) < 1e-25
    assert straightness(lambda x, t: c.expand_as(x), x0=x0, solver="rk4", nfe=20) < 1e-25
    # v = (cos pi t, sin pi t): x1 - x0 = (0, 2 / pi), S = int cos^2 + (sin - 2/pi)^2 dt = 1 - 4 / pi^2

    def turning(x, t):
        return torch.stack([torch.cos(math.pi * t), torch.sin(math.pi * t)]).expand_as(x).to(x.dtype)

    x0 = torch.zeros(8, 2, dtype=torch.float64)
    s = straightness(turning, x0=x0, solver="rk4", nfe=200)
    assert s == pytest.approx(1 - 4 / math.pi**2, rel=1e-3)  # trapezoid on 51 grid points (measured 4.5e-4 relative)
    assert straightness(turning, x0=x0, solver="rk4", nfe=200, relative=True) == pytest.approx(
        (1 - 4 / math.pi**2) / (4 / math.pi**2), rel=1e-3
    )
    with pytest.raises(FlowmatchError, match="needs the starting points"):
        straightness(turning)


def test_reflow_straightens_the_teacher(teacher, tmp_path):
    _, metrics = reflow(teacher, tmp_path / "r", n_pairs=2000, steps=200, teacher_nfe=20, lr=3e-3, progress=False)
    before = straightness(load(teacher), n=500)
    # measured: 0.86 for the 300-step teacher, 0.0011 after 200 reflow steps (fp32 and bf16 teachers alike)
    assert metrics["straightness"] < 0.1 * before


def test_resume_of_a_warm_started_run_needs_no_teacher(teacher, tmp_path, capsys):
    copy = tmp_path / "teacher-copy"
    shutil.copytree(teacher, copy)
    out = tmp_path / "reflow"
    assert main(["reflow", "--run", str(copy), "--out", str(out), *FAST]) == 0
    shutil.rmtree(copy)  # the teacher is gone; the run's checkpoint has the architecture and weights
    assert main(["train", "--resume", str(out), "--steps", "40", "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 40


def test_reflow_of_a_run_trained_on_the_posterior_target(teacher, tmp_path):
    # the teacher's explicit target (posterior) does not apply to fixed pairs; the reflow run resets it
    copy = tmp_path / "teacher"
    shutil.copytree(teacher, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "target": "posterior"}))
    out = tmp_path / "reflow"
    assert main(["reflow", "--run", str(copy), "--out", str(out), *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text())["target"] == "conditional"
