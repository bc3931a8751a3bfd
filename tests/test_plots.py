"""Pictures: every kind is written as a real PNG/GIF, atomically, from the API and from `flowmatch plot`."""

import json

import numpy as np
import pytest
import torch
from cli_checks import one_error_line as _one_error_line
from PIL import Image

from flowmatch.cli import main
from flowmatch.config import TrainConfig
from flowmatch.data.standardize import Standardizer
from flowmatch.evaluation.report import PICTURES
from flowmatch.flows.continuous import Flow
from flowmatch.models.registry import build_model
from flowmatch.paths.affine import make_path
from flowmatch.plots import figures as plots
from flowmatch.storage import write_json

PNG = b"\x89PNG\r\n\x1a\n"


def _png(path, min_size=(200, 200)):
    assert path.read_bytes()[:8] == PNG
    with Image.open(path) as im:
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        # a picture, not a blank canvas: many distinct colours
        assert len(im.convert("RGB").getcolors(maxcolors=1_000_000) or []) > 20


def _no_temporaries(folder):
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _points(n, seed, shift=0.0, dim=2):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)) + shift


def test_samples_and_pairs(tmp_path):
    plots.plot_samples(_points(300, 0), _points(300, 1), tmp_path / "s.png", title="t")
    plots.plot_pairs(_points(300, 0, dim=5), _points(300, 1, dim=5), tmp_path / "p.png", max_dims=3)
    _png(tmp_path / "s.png")
    _png(tmp_path / "p.png")
    _no_temporaries(tmp_path)


def test_density_with_minus_infinity(tmp_path):
    xs = ys = torch.linspace(-4, 4, 40)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    log_q = -(gx**2 + gy**2) / 2
    true = torch.where((gx > 0) == (gy > 0), torch.tensor(-3.0), torch.tensor(-float("inf")))
    plots.plot_density(xs, ys, log_q, tmp_path / "d.png", true_log_p=true, data=_points(100, 2))
    _png(tmp_path / "d.png")


def test_trajectories_field_and_animation(tmp_path):
    times = torch.linspace(0, 1, 11)
    x0, x1 = _points(50, 3), _points(50, 4, shift=3.0)
    traj = (1 - times)[:, None, None] * x0 + times[:, None, None] * x1  # straight lines
    plots.plot_trajectories(traj, times, tmp_path / "t.png", data=x1)
    xs = ys = torch.linspace(-2, 2, 8)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    vel = torch.stack([torch.stack([-gy * (1 + t), gx], -1) for t in (0.0, 0.5, 1.0)])
    plots.plot_field(xs, ys, vel, [0.0, 0.5, 1.0], tmp_path / "f.png", particles=traj[[0, 5, 10]])
    plots.animate_flow(traj, times, tmp_path / "a.gif", data=x1, fps=10, hold=4)
    _png(tmp_path / "t.png")
    _png(tmp_path / "f.png")
    with Image.open(tmp_path / "a.gif") as im:
        assert im.format == "GIF" and im.n_frames == len(times)  # the held frames merge into the last
        im.seek(im.n_frames - 1)
        assert im.info["duration"] == 5 * 100  # last frame shown 1 + hold frames long
    _no_temporaries(tmp_path)


def test_nfe_plot_uses_a_symmetric_log_axis_for_negative_values(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, out: figures.append(fig))
    sweeps = {
        "W2": ({"euler": [(1, 3.0), (10, 0.5)], "rk4": [(4, 0.4), (100, 0.3)]}, 0.3),
        "MMD^2": ({"euler": [(1, 0.2), (10, -1e-4)]}, -2e-4),
    }
    plots.plot_nfe(sweeps, tmp_path / "n.png")
    axes = figures[0].axes
    assert axes[0].get_yscale() == "log" and axes[1].get_yscale() == "symlog"
    assert axes[0].get_xscale() == "log"


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "s.png"
    out.write_bytes(b"old picture")

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.plot_samples(_points(10, 0), _points(10, 1), out)
    assert out.read_bytes() == b"old picture"
    _no_temporaries(tmp_path)


# -- flowmatch plot ----------------------------------------------------------------------------------
def _run(folder, dim=2, data="two-gaussians"):
    """A run folder holding an untrained small MLP (enough to draw every picture)."""
    config = TrainConfig(data=data, width=8, depth=1).to_dict()
    folder.mkdir()
    write_json(folder / "config.json", config)
    torch.manual_seed(0)
    model = build_model("mlp", dim, width=8, depth=1)
    Flow(model=model.eval(), path=make_path("linear"), standardizer=Standardizer.identity(dim), config=config).save_checkpoint(folder)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("plot") / "run")


@pytest.mark.parametrize("what", list(PICTURES))
def test_plot_command_draws_each_picture(what, run, tmp_path, capsys):
    suffix = ".gif" if what == "animation" else ".png"
    out = tmp_path / f"{what}{suffix}"
    assert main(["plot", "--run", str(run), "--what", what, "-n", "100", "--out", str(out), "--quiet"]) == 0
    assert str(out) in capsys.readouterr().out
    if suffix == ".png":
        _png(out)
    else:
        assert out.read_bytes()[:6] == b"GIF89a"
    _no_temporaries(tmp_path)


def test_plot_command_default_output_goes_into_the_run(run, capsys):
    assert main(["plot", "--run", str(run), "--what", "samples", "-n", "50", "--quiet"]) == 0
    _png(run / "samples.png")
    capsys.readouterr()


def test_plot_command_errors(run, tmp_path, capsys):
    code = main(["plot", "--run", str(run), "--what", "animation", "--out", str(tmp_path / "a.png")])
    _one_error_line(capsys, code, "must end in .gif")
    code = main(["plot", "--run", str(tmp_path), "--what", "samples"])
    _one_error_line(capsys, code, "not a flowmatch run folder")
    code = main(["plot", "--run", str(run), "--what", "samples", "--out", str(tmp_path / "no" / "s.png")])
    _one_error_line(capsys, code, "does not exist")
    truncated = _run(tmp_path / "truncated")
    weights = (truncated / "checkpoint.safetensors").read_bytes()
    (truncated / "checkpoint.safetensors").write_bytes(weights[:100])
    code = main(["plot", "--run", str(truncated), "--what", "samples"])
    _one_error_line(capsys, code, "cannot read the weights")
    mismatched = _run(tmp_path / "mismatched")
    meta = json.loads((mismatched / "checkpoint.json").read_text())
    meta["dim"] = 3
    (mismatched / "checkpoint.json").write_text(json.dumps(meta))
    code = main(["plot", "--run", str(mismatched), "--what", "samples"])
    _one_error_line(capsys, code, "checkpoint.json", "dim is 3")  # the metadata contradicts itself, named before the weights load


def test_two_d_pictures_refuse_higher_dimensions(tmp_path, capsys):
    file = tmp_path / "d4.npy"
    np.save(file, np.random.default_rng(0).standard_normal((100, 4)))
    run4 = _run(tmp_path / "run4", dim=4, data=str(file))
    for what in ("density", "field"):
        code = main(["plot", "--run", str(run4), "--what", what])
        _one_error_line(capsys, code, "needs 2-D data")
    assert main(["plot", "--run", str(run4), "--what", "samples", "-n", "20", "--quiet"]) == 0
    _png(run4 / "samples.png")  # pairwise plots of the first dimensions
    capsys.readouterr()
