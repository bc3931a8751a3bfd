"""Manifold runs as users meet them: built-in sets and files on the sphere, the torus and SO(3) through
train, sample (.npy and .csv), load, eval and plot, the Euclidean comparison, fit() in Python, and bad input
as one line (flowmatch.manifolds.training, flowmatch.evaluation.manifolds, the CLI). Tiny networks and step
counts: these check the plumbing; bench/manifolds.py measures quality."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from cli_checks import one_error_line

import flowmatch
from flowmatch.cli import main
from flowmatch.config import MANIFOLD_SET_NAMES, TrainConfig, kind_defaults, resolve_kind
from flowmatch.data.manifolds import MANIFOLD_SETS, load_manifold_data, manifold_set, points_to_columns
from flowmatch.errors import FlowmatchError
from flowmatch.flows.riemannian import RiemannianFlow
from flowmatch.manifolds import (
    SO3,
    Euclidean,
    FlatTorus,
    GeodesicPath,
    Sphere,
    quaternion_multiply,
)
from flowmatch.models.registry import build_model, from_config, to_config
from flowmatch.models.tangent import TangentMLP
from flowmatch.storage import read_json

TINY = ["--steps", "30", "--width", "32", "--depth", "2", "--batch-size", "64", "--quiet"]

RUN_FILES = (
    "config.json",
    "checkpoint.safetensors",
    "checkpoint.json",
    "metrics.csv",
    "metrics.json",
    "report.json",
    "samples.npy",
    "samples.png",
)


def off_manifold(x: np.ndarray, name: str) -> float:
    """The largest distance of points from their manifold: | |x| - 1 | (sphere, quaternions), or how far
    angles lie outside [-pi, pi] (torus)."""
    if name == "torus":
        return float(np.abs(x - np.clip(x, -math.pi, math.pi)).max())
    return float(np.abs(np.linalg.norm(x.astype(np.float64), axis=1) - 1).max())


# -- kinds, configs and the model ---------------------------------------------------------------------
def test_manifold_kind_is_picked_from_the_data_or_the_flag(tmp_path):
    assert MANIFOLD_SET_NAMES == tuple(MANIFOLD_SETS)
    assert resolve_kind(TrainConfig(data="S2-vmf")) == "manifold"
    assert resolve_kind(TrainConfig(data="moons")) == "continuous"
    assert resolve_kind(TrainConfig(data=str(tmp_path / "angles.csv"), manifold="torus")) == "manifold"
    assert resolve_kind(TrainConfig(data="S2-vmf", kind="continuous")) == "continuous"


@pytest.mark.parametrize("manifold", [Sphere(2), FlatTorus(2), SO3(), Euclidean(3)], ids=lambda m: m.name)
def test_the_tangent_mlp_round_trips_through_the_model_registry(manifold):
    model = build_model("tangent-mlp", manifold.ambient_dim, manifold=manifold.to_config(), width=16, depth=2)
    assert isinstance(model, TangentMLP) and model.manifold == manifold
    rebuilt = from_config(to_config(model), manifold.ambient_dim)
    rebuilt.load_state_dict(model.state_dict())
    x = manifold.projx(torch.randn(7, manifold.ambient_dim, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(rebuilt(x, 0.3), model(x, 0.3), rtol=0, atol=0)
    with pytest.raises(FlowmatchError, match="coordinates, not"):
        build_model("tangent-mlp", manifold.ambient_dim + 1, manifold=manifold.to_config())


# -- the posterior target ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, euclidean", [("S2-vmf", False), ("T2-wrapped", False), ("SO3-multimodal", False), ("S2-vmf", True)])
def test_the_posterior_target_has_the_conditional_velocity_as_its_mean(name, euclidean):
    """E[T | x_t] = E[u_t | x_t], so E<a, T> = E<a, u_t> for any vector a: checked on 51,200 pairs at three times
    (on SO(3) for the angular velocity 2 Im(q* u), which is the same for q and -q), and T varies less than u_t."""
    law = manifold_set(name)
    m = Euclidean(law.manifold.ambient_dim) if euclidean else law.manifold
    path = GeodesicPath(m)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m.ambient_dim, generator=g, dtype=torch.float64)
    for t in (0.3, 0.6, 0.9):
        dots_t, dots_u = [], []
        for _ in range(200):
            x1 = law.sample(256, g, dtype=torch.float64)
            x0 = (
                torch.randn(256, m.ambient_dim, generator=g, dtype=torch.float64)
                if euclidean
                else m.random_uniform(256, g, dtype=torch.float64)
            )
            sample = path.sample(x0, x1, t)
            target = path.posterior_velocity(sample, x1, "gaussian" if euclidean else "uniform")
            if m.name == "so3":  # the body angular velocity, the same for q and -q
                conj = sample.x_t * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=torch.float64)
                target, velocity = (2 * quaternion_multiply(conj, v)[:, 1:] for v in (target, sample.velocity))
            else:
                velocity = sample.velocity
            dots_t.append(target @ a[: target.shape[1]])
            dots_u.append(velocity @ a[: target.shape[1]])
        dt, du = torch.cat(dots_t), torch.cat(dots_u)
        se = ((dt - du).std() / math.sqrt(len(dt))).item()
        assert abs((dt - du).mean().item()) < 4 * se, (t, dt.mean().item(), du.mean().item(), se)
        assert dt.var() < 0.75 * du.var()


@pytest.mark.parametrize("m", [Sphere(2), Sphere(3), FlatTorus(2), SO3(), Euclidean(3)], ids=lambda m: m.label)
def test_the_posterior_target_over_the_own_point_alone_is_the_path_velocity(m):
    path, g = GeodesicPath(m, "cosine"), torch.Generator().manual_seed(1)
    x0, x1 = (m.canonical(m.projx(torch.randn(32, m.ambient_dim, generator=g, dtype=torch.float64))) for _ in range(2))
    sample = path.sample(x0, x1, 0.99 * torch.rand(32, generator=g, dtype=torch.float64))
    source = "gaussian" if m.name == "euclidean" else "uniform"
    for i in range(32):
        one = type(sample)(sample.x_t[i : i + 1], sample.velocity[i : i + 1], sample.t[i : i + 1])
        torch.testing.assert_close(path.posterior_velocity(one, x1[i : i + 1], source), sample.velocity[i : i + 1], atol=1e-12, rtol=0)
    with pytest.raises(FlowmatchError, match="the posterior target is computed from"):
        path.posterior_velocity(sample, x1, "uniform" if m.name == "euclidean" else "gaussian")


# -- built-in sets through the CLI ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, manifold, header",
    [("S2-vmf", "sphere", "lat,lon"), ("T2-wrapped", "torus", "theta1,theta2"), ("SO3-multimodal", "so3", "w,x,y,z")],
)
def test_a_built_in_set_trains_samples_loads_evaluates_and_plots(tmp_path, capsys, name, manifold, header):
    run = tmp_path / "run"
    assert main(["train", "--data", name, "--out", str(run), *TINY]) == 0
    assert "geodesic W2" in capsys.readouterr().out
    for file in RUN_FILES:
        assert (run / file).is_file(), file
    config, meta = read_json(run / "config.json"), read_json(run / "checkpoint.json")
    assert config["kind"] == "manifold" and config["model"] == "tangent-mlp" and config["source"] == "uniform"
    assert meta["kind"] == "manifold" and meta["manifold"]["name"] == manifold and meta["model"]["name"] == "tangent-mlp"
    assert off_manifold(np.load(run / "samples.npy"), manifold) < 1e-6
    flow = flowmatch.load(run)
    assert isinstance(flow, RiemannianFlow) and flow.manifold.name == manifold and flow.config == config

    out = tmp_path / "x.npy"
    assert main(["sample", "--run", str(run), "-n", "300", "--out", str(out), "--solver", "midpoint", "--nfe", "8", "--seed", "3"]) == 0
    assert "NFE 8 (exactly 8 velocity evaluations)" in capsys.readouterr().out
    x = np.load(out)
    assert x.shape == (300, flow.manifold.ambient_dim) and off_manifold(x, manifold) < 1e-6
    np.testing.assert_array_equal(x, flow.generate(300, solver="midpoint", nfe=8, seed=3).numpy())
    calls = []
    model = flow.model
    flow.model = lambda x, t: calls.append(1) or model(x, t)
    flow.generate(10, solver="heun", nfe=6)
    assert len(calls) == 6  # exactly the NFE asked for
    flow.model = model

    csv = tmp_path / "x.csv"
    assert main(["sample", "--run", str(run), "-n", "300", "--out", str(csv), "--solver", "midpoint", "--nfe", "8", "--seed", "3"]) == 0
    assert csv.read_text().splitlines()[0] == header
    units = {"sphere": None, "torus": "radians", "so3": None}[manifold]
    back = load_manifold_data(csv, manifold, units=units).points  # the file reads back onto the same points
    torch.testing.assert_close(
        flow.manifold.dist(back, torch.from_numpy(x).double()), torch.zeros(300, dtype=torch.float64), atol=1e-6, rtol=0
    )

    assert main(["eval", "--run", str(run), "--quick", "-n", "200", "--n-likelihood", "100"]) == 0
    printed = capsys.readouterr().out
    assert "W2 (geodesic)" in printed and "KL(p || model)" in printed
    report = read_json(run / "report.json")
    assert report["kind"] == "manifold" and report["n_sets"] == 3 and report["sizes"]["samples"] == [200] * 3
    assert report["w2"]["floor"]["median"] > 0 and report["likelihood"]["n"] == 100
    assert (
        math.isfinite(report["likelihood"]["nll"])
        and abs(report["likelihood"]["entropy_reference"] - report["likelihood"]["entropy"]) < 0.5
    )
    assert report["on_manifold"]["max_distance"] < 1e-6 and report["sampler"] == {"solver": "rk4", "nfe": 100}
    assert main(["plot", "--run", str(run), "--out", str(tmp_path / "p.png"), "-n", "300"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 1000

    capsys.readouterr()
    for argv, needle in (
        (["sample", "--run", str(run), "--out", str(tmp_path / "y.npy"), "--solver", "dopri5"], "--solver dopri5: a manifold run"),
        (["sample", "--run", str(run), "--out", str(tmp_path / "y.npy"), "--nfe", "6"], "--nfe 6 is not a multiple of 4"),
        (["sample", "--run", str(run), "--out", str(tmp_path / "y.txt")], "writes .npy or .csv"),
        (["sample", "--run", str(run), "--out", str(tmp_path / "y.npy"), "--label", "1"], "trained without labels"),
        (["eval", "--run", str(run), "--quick", "--likelihood-solver", "dopri5"], "--likelihood-solver dopri5"),
        (["plot", "--run", str(run), "--what", "density"], "draws samples, not density"),
        (
            ["sample", "--run", str(run), "--out", str(tmp_path / "y.npy"), "--schedule", "cosine"],
            "--schedule cosine does not apply to a manifold run",
        ),
    ):
        one_error_line(capsys, main(argv), needle)
    assert not (tmp_path / "y.npy").exists()


def test_the_euclidean_comparison_trains_on_ambient_coordinates_and_is_projected(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "S2-vmf", "--manifold", "euclidean", "--out", str(run), *TINY]) == 0
    assert "off the manifold" in capsys.readouterr().out
    assert read_json(run / "config.json")["source"] == "gaussian"
    flow = flowmatch.load(run)
    assert flow.manifold == Euclidean(3) and flow.data_manifold == Sphere(2) and flow.source == "gaussian"
    raw = flow.generate(500, nfe=8)
    assert (raw.norm(dim=1) - 1).abs().mean() > 1e-3  # an untrained straight-line flow lands off the sphere
    report = flowmatch.evaluate(flow, quick=True, n=200, n_likelihood=50)
    assert report["on_manifold"]["projected"] and report["on_manifold"]["mean_distance"] > 1e-3
    assert "nll" not in report["likelihood"] and "entropy" in report["likelihood"]  # a density in R^3 has no NLL on S^2


def test_a_built_in_set_is_a_source_on_its_own_manifold(tmp_path, capsys):
    """From one law on the sphere to another: x0 ~ S2-vmf, whose density the log-likelihood starts from."""
    run = tmp_path / "run"
    assert main(["train", "--data", "S2-checkerboard", "--source", "S2-vmf", "--out", str(run), *TINY]) == 0
    flow = flowmatch.load(run)
    assert flow.source == "S2-vmf" and read_json(run / "config.json")["target"] == "auto"
    x0 = flow.draw_source(2000, torch.Generator().manual_seed(0))
    law = manifold_set("S2-vmf")
    torch.testing.assert_close(flow.source_log_prob(x0), law.log_prob(x0).float())
    # the draws are the set's, not uniform: their mean log-density is the set's -entropy, not -log(4 pi)
    assert abs(float(law.log_prob(x0).mean()) + law.entropy()[0]) < 0.1 < abs(float(law.log_prob(x0).mean()) + math.log(4 * math.pi))
    samples = flow.generate(300, nfe=8)
    assert off_manifold(samples.numpy(), "sphere") < 1e-6
    assert torch.isfinite(flow.log_prob(samples[:20], nfe=8)).all()


@pytest.mark.parametrize("data", ["S2-vmf", "T2-wrapped", "SO3-multimodal"])
def test_a_wrapped_gaussian_is_a_source(tmp_path, data):
    """--source wrapped-gaussian:0.7: x0 = exp_o(0.7 z) around the manifold's origin, its exact density in the
    log-likelihood, the conditional target (the posterior is the uniform source's), samples on the manifold."""
    run = tmp_path / "run"
    assert main(["train", "--data", data, "--source", "wrapped-gaussian:0.7", "--out", str(run), *TINY]) == 0
    flow = flowmatch.load(run)
    assert flow.source == "wrapped-gaussian:0.7" and read_json(run / "metrics.json")["target"] == "conditional"
    m = flow.manifold
    origin = {"sphere": [0.0, 0.0, 1.0], "torus": [0.0, 0.0], "so3": [1.0, 0.0, 0.0, 0.0]}[m.name]
    x0 = flow.draw_source(4000, torch.Generator().manual_seed(0))
    assert off_manifold(x0.numpy(), m.name) < 1e-6
    torch.testing.assert_close(flow.source_log_prob(x0), m.wrapped_normal_log_prob(x0, torch.tensor(origin), 0.7))
    if m.name != "so3":  # the draws spread as 0.7 z: E|log_o(x0)|^2 = 0.49 dim (SO(3)'s log reaches the nearer sign only)
        spread = float(m.log(torch.tensor([origin]).expand_as(x0), x0).pow(2).sum(1).mean())
        assert abs(spread / (0.49 * m.dim) - 1) < 0.06
    samples = flow.generate(300, nfe=8)
    assert off_manifold(samples.numpy(), m.name) < 1e-6
    assert torch.isfinite(flow.log_prob(samples[:20], nfe=8)).all()


def test_a_short_run_from_a_wrapped_gaussian_learns():
    """300 steps on S2-vmf: the NLL of held-out points falls well below the source's own cross-entropy."""
    from flowmatch.flows.riemannian import source_law

    given = {"data": "S2-vmf", "source": "wrapped-gaussian", "steps": 300, "width": 64, "depth": 2, "batch_size": 128}
    config = TrainConfig.from_dict({**kind_defaults("manifold", given), "kind": "manifold", **given})
    result, metrics = flowmatch.fit(config, progress=False)
    law = manifold_set("S2-vmf")
    source = source_law("wrapped-gaussian", law.manifold)
    assert source.scale == 1.0 and metrics["target"] == "conditional"
    cross_entropy = -float(source.log_prob(law.sample(5000, generator=0, dtype=torch.float64)).mean())  # 2.68 nats
    assert metrics["nll"] < cross_entropy - 0.7  # measured 1.56 (the entropy is 1.12)


def test_fit_in_python_trains_a_manifold_run(tmp_path):
    result, metrics = flowmatch.fit(data="T2-wrapped", steps=20, width=16, depth=1, batch_size=32, out=tmp_path / "run", progress=False)
    assert metrics["kind"] == "manifold" and result.step == 20 and isinstance(result.flow, RiemannianFlow)
    assert result.config.model == "tangent-mlp" and "w2" in metrics and "nll" in metrics
    flow = flowmatch.load(tmp_path / "run")
    assert flowmatch.evaluate(flow, quick=True, n=100, n_likelihood=20)["kind"] == "manifold"
    trained = flowmatch.train(data="S2-vmf", steps=5, width=16, depth=1, batch_size=32, progress=False)  # the one loop trains every kind
    assert isinstance(trained.flow, RiemannianFlow) and trained.config.kind == "manifold"
    result, metrics = flowmatch.fit(out=tmp_path / "run", resume=True, steps=30, progress=False)  # and resumes it
    assert result.step == 30 and metrics["steps_run"] == 30 and isinstance(flowmatch.load(tmp_path / "run"), RiemannianFlow)


# -- user files ---------------------------------------------------------------------------------------------
def _places(path, n=300, lat_name="lat", lon_name="lon"):
    rng = np.random.default_rng(0)
    lat = np.clip(rng.normal(45, 10, n), -90, 90)
    lon = rng.normal(-100, 20, n)
    pd.DataFrame({"city": [f"c{i}" for i in range(n)], lat_name: lat.round(4), lon_name: lon.round(4)}).to_csv(path, index=False)


def test_a_lat_lon_file_round_trips(tmp_path, capsys):
    data, run = tmp_path / "places.csv", tmp_path / "run"
    _places(data)
    assert main(["train", "--manifold", "sphere", "--data", str(data), "--out", str(run), *TINY, "--val-every", "10"]) == 0
    metrics = read_json(run / "metrics.json")
    assert metrics["validation"]["best_step"] > 0 and "entropy" not in metrics
    out = tmp_path / "new.csv"
    assert main(["sample", "--run", str(run), "-n", "200", "--out", str(out)]) == 0
    assert "(lat, lon in degrees)" in capsys.readouterr().out
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["lat", "lon"] and len(frame) == 200
    assert frame["lat"].between(-90, 90).all() and frame["lon"].between(-180, 180).all()
    assert main(["eval", "--run", str(run), "--quick"]) == 0
    report = read_json(run / "report.json")
    assert report["sizes"]["heldout"] == [15] * 4 and report["sizes"]["train"] == 216  # 60 test points in 4 blocks
    assert "nll" in report["likelihood"] and "kl" not in report["likelihood"]


def test_an_angle_file_in_degrees_and_a_quaternion_array_round_trip(tmp_path, capsys):
    rng = np.random.default_rng(1)
    angles = tmp_path / "angles.csv"
    pd.DataFrame({"phi": rng.normal(-60, 15, 200), "psi": rng.normal(150, 30, 200)}).to_csv(angles, index=False)
    run = tmp_path / "torus"
    assert main(["train", "--manifold", "torus", "--units", "degrees", "--data", str(angles), "--out", str(run), *TINY]) == 0
    out = tmp_path / "angles-out.csv"
    assert main(["sample", "--run", str(run), "-n", "100", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["theta1", "theta2"] and frame.abs().max().max() <= 180  # degrees, as the file

    q = rng.normal(size=(200, 4)) + np.array([4.0, 0, 0, 0])
    quats = tmp_path / "quats.npy"
    np.save(quats, q / np.linalg.norm(q, axis=1, keepdims=True))
    run = tmp_path / "so3"
    assert main(["train", "--manifold", "so3", "--data", str(quats), "--out", str(run), *TINY]) == 0
    out = tmp_path / "q.csv"
    assert main(["sample", "--run", str(run), "-n", "100", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["w", "x", "y", "z"] and (frame["w"] >= 0).all()
    assert off_manifold(frame.to_numpy(), "so3") < 1e-6
    flow = flowmatch.load(run)
    assert flow.manifold == SO3() and flow.config["data"] == str(quats)


def test_bad_manifold_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    pd.DataFrame({"a": range(10), "b": range(10)}).to_csv(tmp_path / "ab.csv", index=False)
    _places(tmp_path / "high.csv", n=20)
    frame = pd.read_csv(tmp_path / "high.csv")
    frame.loc[3, "lat"] = 91
    frame.to_csv(tmp_path / "high.csv", index=False)
    np.save(tmp_path / "q.npy", np.tile([[1.0, 0.1, 0.0, 0.0]], (10, 1)))
    pd.DataFrame({"phi": np.linspace(-170, 170, 10), "psi": np.linspace(0, 90, 10)}).to_csv(tmp_path / "angles.csv", index=False)
    run = tmp_path / "run"
    for args, needles in (
        (["--manifold", "sphere", "--data", str(tmp_path / "ab.csv")], ["no latitude column"]),
        (["--data", str(tmp_path / "high.csv"), "--manifold", "sphere"], ["row 4", "latitude 91 degrees is outside [-90, 90]"]),
        (["--manifold", "so3", "--data", str(tmp_path / "q.npy")], ["quaternion norm 1.005"]),
        (["--manifold", "torus", "--data", str(tmp_path / "angles.csv")], ["--units degrees"]),
        (["--manifold", "torus", "--data", "S2-vmf"], ["lives on the sphere S^2"]),
        (["--manifold", "euclidean", "--data", str(tmp_path / "angles.csv")], ["ordinary continuous run"]),
        (["--data", "S2-vmf", "--units", "degrees"], ["built-in set"]),
        (["--data", "S2-vmf", "--source", "gaussian"], ["the source is 'uniform'"]),
        (["--data", "S2-vmf", "--manifold", "euclidean", "--source", "uniform"], ["R^3 has no uniform distribution"]),
        (["--data", "S2-vmf", "--coupling", "ot"], ["--coupling ot does not apply to a manifold run"]),
        (["--data", "S2-vmf", "--model", "unet"], ["model unet does not apply to a manifold run: it builds tangent-mlp"]),
        (["--data", "S2-vmf", "--source", "T2-wrapped"], ["source 'T2-wrapped' lies on the flat torus T^2", "not on the sphere S^2"]),
        (["--data", "S2-vmf", "--source", "moons"], ["kind manifold starts from --source uniform", "not 'moons'"]),
        (["--data", "S2-vmf", "--source", "wrapped-gaussian:0"], ["source 'wrapped-gaussian:0'", "a number in (0, 10], got '0'"]),
        (["--data", "S2-vmf", "--source", "wrapped-gaussian:x"], ["a number in (0, 10], got 'x'"]),
        (
            ["--data", "S2-vmf", "--source", "wrapped-gaussian", "--target", "posterior"],
            ["target posterior needs", "not 'wrapped-gaussian'"],
        ),
    ):
        code = main(["train", *args, "--out", str(run), *TINY])
        one_error_line(capsys, code, *needles)
        assert not run.exists() and not any(p.name.startswith(".run") for p in tmp_path.iterdir())


def test_points_to_columns_inverts_the_file_readers():
    torus = FlatTorus(2)
    names, values = points_to_columns(torch.tensor([[math.pi / 2, -math.pi]], dtype=torch.float64), torus, units="degrees")
    assert names == ["theta1", "theta2"] and np.allclose(values, [[90.0, -180.0]])
    names, values = points_to_columns(torch.tensor([[0.0, 0.0, 1.0]]), Sphere(2), columns="latitude,longitude")
    assert names == ["latitude", "longitude"] and np.allclose(values, [[90.0, 0.0]])
    with pytest.raises(FlowmatchError, match="2 column names"):
        points_to_columns(torch.tensor([[-0.5, 0.5, 0.5, 0.5]]), SO3(), columns="a,b")
