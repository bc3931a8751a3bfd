"""The CLI: help on every subcommand, bad input answered with one line and exit code 2."""

import subprocess
import sys

import numpy as np
import pytest
from cli_checks import one_error_line as _one_error_line

from flowmatch.cli import build_parser, main

FAST = ["--steps", "30", "--width", "16", "--batch-size", "32", "--quiet", "--no-eval"]


def _subcommands():
    parser = build_parser()
    return sorted(parser._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("command", _subcommands())
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: flowmatch " + command in capsys.readouterr().out


def test_python_dash_m_is_the_same_program():
    out = subprocess.run([sys.executable, "-m", "flowmatch", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train" in out.stdout and "sample" in out.stdout


def _bad_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    np.save(tmp_path / "nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0]] * 5))
    np.save(tmp_path / "inf.npy", np.array([[0.0, 1.0], [np.inf, 2.0]] * 5))
    (tmp_path / "text.csv").write_text("1,2\n3,x\n5,6\n7,8\n9,10\n")
    np.save(tmp_path / "flat.npy", np.arange(10.0))
    return {
        "missing": (tmp_path / "nope.npy", "nope.npy"),
        "empty": (tmp_path / "empty.csv", "empty"),
        "nan": (tmp_path / "nan.npy", "NaN"),
        "inf": (tmp_path / "inf.npy", "infinite"),
        "non-numeric": (tmp_path / "text.csv", "non-numeric"),
        "1-D": (tmp_path / "flat.npy", "2-D"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "nan", "inf", "non-numeric", "1-D"])
def test_train_bad_data_file(case, tmp_path, capsys):
    path, needle = _bad_files(tmp_path)[case]
    out = tmp_path / "run"
    code = main(["train", "--data", str(path), "--out", str(out), *FAST])
    _one_error_line(capsys, code, needle)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]  # no staging left


def test_bad_flags_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", "x", "--steps", "many"])
    _one_error_line(capsys, exc.value.code, "--steps")
    code = main(["train", "--out", "x", "--steps", "0", "--quiet"])
    _one_error_line(capsys, code, "steps")
    code = main(["train", "--out", "x", "--device", "cuda:7", "--quiet"])
    _one_error_line(capsys, code, "cuda")


def test_existing_run_is_not_overwritten_without_force(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *FAST]) == 0
    before = (out / "checkpoint.safetensors").read_bytes()
    code = main(["train", "--out", str(out), *FAST, "--seed", "3"])
    _one_error_line(capsys, code, "--force")
    assert (out / "checkpoint.safetensors").read_bytes() == before
    assert main(["train", "--out", str(out), *FAST, "--seed", "3", "--force"]) == 0
    assert (out / "checkpoint.safetensors").read_bytes() != before


def test_force_never_replaces_a_folder_that_is_not_a_run(tmp_path, capsys):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    code = main(["train", "--out", str(precious), *FAST, "--force"])
    _one_error_line(capsys, code, "not a flowmatch run folder")
    assert (precious / "thesis.tex").read_text() == "years of work"


def test_train_then_sample_npy_and_csv(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *FAST[:-1]]) == 0  # with the quick evaluation
    for name in [
        "run/config.json",
        "run/checkpoint.safetensors",
        "run/checkpoint.json",
        "run/metrics.json",
        "run/samples.png",
        "run/report.json",
    ]:
        assert (tmp_path / name).stat().st_size > 0
    assert main(["sample", "--run", str(run), "-n", "50", "--nfe", "8", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (50, 2)
    assert main(["sample", "--run", str(run), "-n", "7", "--solver", "euler", "--nfe", "3", "--out", str(tmp_path / "s.csv")]) == 0
    assert np.loadtxt(tmp_path / "s.csv", delimiter=",").shape == (7, 2)
    assert main(["sample", "--run", str(run), "-n", "5", "--nfe", "8", "--trajectory", "--out", str(tmp_path / "traj.npy")]) == 0
    assert np.load(tmp_path / "traj.npy").shape == (3, 5, 2)
    assert main(["sample", "--run", str(run), "-n", "50", "--nfe", "8", "--precision", "bf16", "--out", str(tmp_path / "b.npy")]) == 0
    bf16, fp32 = np.load(tmp_path / "b.npy"), np.load(tmp_path / "s.npy")
    # the flag reaches the network: bf16 changes the samples (fp32 repeats them exactly), by measured 1.6e-3
    # here and with fp32 training (tests/test_runs.py bounds the bf16 error itself more tightly)
    assert bf16.dtype == np.float32 and 0 < np.abs(bf16 - fp32).max() < 1e-2
    capsys.readouterr()


def test_sample_errors(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *FAST]) == 0
    capsys.readouterr()
    code = main(["sample", "--run", str(run), "--nfe", "10", "--out", str(tmp_path / "s.npy")])
    _one_error_line(capsys, code, "multiple of 4")
    assert not (tmp_path / "s.npy").exists()
    code = main(["sample", "--run", str(tmp_path), "--out", str(tmp_path / "s.npy")])
    _one_error_line(capsys, code, "not a flowmatch run folder")
    code = main(["sample", "--run", str(run), "--out", str(tmp_path / "s.txt")])
    _one_error_line(capsys, code, ".npy or .csv")
    (tmp_path / "keep.npy").write_bytes(b"mine")
    code = main(["sample", "--run", str(run), "--out", str(tmp_path / "keep.npy")])
    _one_error_line(capsys, code, "--force")
    assert (tmp_path / "keep.npy").read_bytes() == b"mine"
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--run", str(run), "--precision", "fp16", "--out", str(tmp_path / "s.npy")])
    _one_error_line(capsys, exc.value.code, "--precision", "fp16")
    assert not (tmp_path / "s.npy").exists()


def test_bad_image_input_and_label_out_of_range(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    Image.new("L", (8, 8)).save(folder / "one.png")
    Image.new("L", (6, 6)).save(folder / "two.png")
    unet = [f for f in FAST if f not in ("--width", "16")]  # the U-Net's size is --channels
    code = main(["train", "--data", str(tmp_path / "imgs"), "--model", "unet", "--out", str(tmp_path / "r"), *unet])
    _one_error_line(capsys, code, "size")
    (tmp_path / "empty").mkdir()
    code = main(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), *FAST])
    _one_error_line(capsys, code, "no images")
    assert not (tmp_path / "r").exists()
    run = tmp_path / "c8"
    assert main(["train", "--data", "8gaussians", "--conditional", "--out", str(run), *FAST]) == 0
    capsys.readouterr()
    code = main(["sample", "--run", str(run), "--label", "9", "--nfe", "4", "--out", str(tmp_path / "s.npy")])
    _one_error_line(capsys, code, "label out of range")
    assert main(["sample", "--run", str(run), "--label", "0,3", "-n", "5", "--nfe", "4", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (10, 2)


def test_library_errors_are_told_in_flags(tmp_path, capsys):
    """The library speaks in API terms (nfe=50, force=True); the CLI says them as its flags."""
    from flowmatch.cli import as_flags, build_parser

    parser = build_parser()
    assert as_flags("nfe=50 is not a multiple of 4; pass force=True; weight_decay=1e-4", parser) == (
        "--nfe 50 is not a multiple of 4; pass --force; --weight-decay 1e-4"
    )
    assert as_flags("x0 must be (n, D); unknown=3", parser) == "x0 must be (n, D); unknown=3"  # not flags: left alone
    run = tmp_path / "run"
    assert main(["train", "--steps", "5", "--width", "8", "--depth", "1", "--no-eval", "--quiet", "--out", str(run)]) == 0
    assert main(["sample", "--run", str(run), "--nfe", "50", "--solver", "rk4", "--out", str(tmp_path / "x.npy")]) == 2
    assert "--nfe 50 is not a multiple of 4" in capsys.readouterr().err
