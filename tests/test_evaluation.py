"""Evaluation: known densities and entropies, KL, the report, and the eval command's errors.

The end-to-end checks use a flow whose velocity is known in closed form. For data that is an equal
mixture of N(mu_k, s^2 I), the linear path x_t = t x1 + (1 - t) x0 has marginals that are mixtures of
N(t mu_k, sigma_t^2 I), sigma_t^2 = t^2 s^2 + (1 - t)^2, and the marginal velocity is

    v(x, t) = sum_k gamma_k(x, t) [mu_k + c(t) (x - t mu_k)],   c(t) = (t s^2 - (1 - t)) / sigma_t^2,

with gamma_k the posterior weight of component k at x under the time-t mixture. Its flow carries
N(0, I) exactly onto the data, so KL(data || model) is 0 up to solver error and the NLL is the entropy.
"""

import json
import math

import numpy as np
import pytest
import torch
from cli_checks import one_error_line as _one_error_line

from flowmatch.cli import main
from flowmatch.config import TrainConfig
from flowmatch.data import toy as data
from flowmatch.data.standardize import Standardizer
from flowmatch.errors import FlowmatchError
from flowmatch.evaluation.report import PICTURES, evaluate, format_report, known_density_report, summary_line
from flowmatch.flows.continuous import Flow
from flowmatch.models.registry import build_model
from flowmatch.paths.affine import make_path
from flowmatch.storage import write_json


class MixtureField(torch.nn.Module):
    """The exact flow-matching velocity for an equal mixture of N(mu_k, s^2 I) (module docstring)."""

    def __init__(self, means, s):
        super().__init__()
        self.means = torch.nn.Parameter(torch.as_tensor(means, dtype=torch.float64), requires_grad=False)
        self.s = s

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype)
        mu = self.means.to(x.dtype)
        var = t**2 * self.s**2 + (1 - t) ** 2
        c = (t * self.s**2 - (1 - t)) / var
        logits = -((x[:, None, :] - t * mu[None]) ** 2).sum(-1) / (2 * var)
        gamma = torch.softmax(logits, dim=1)  # (n, K)
        per_component = mu[None] + c * (x[:, None, :] - t * mu[None])  # (n, K, D)
        return (gamma[..., None] * per_component).sum(1)


def _flow(field, dim, config):
    return Flow(
        model=field, path=make_path("linear"), standardizer=Standardizer.identity(dim), config={"seed": 0, "source": "gaussian", **config}
    )


TWO_GAUSSIANS = MixtureField([[-4.0, 0.0], [4.0, 0.0]], 1.0)


# -- known densities ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["two-gaussians", "8gaussians", "checkerboard", "circles", "rings"])
def test_known_density_integrates_to_one_and_matches_the_entropy_table(name):
    """Midpoint rule on a 0.02 grid over [-8, 8]^2 (the mass beyond is < 1e-4), and a Monte-Carlo
    entropy from 200,000 fresh draws within 4 standard errors (~0.002) of data.ENTROPY."""
    h = 0.02
    g = torch.arange(-8, 8, h, dtype=torch.float64) + h / 2
    gx, gy = torch.meshgrid(g, g, indexing="ij")
    mass = data.log_prob(name, torch.stack([gx.ravel(), gy.ravel()], 1)).exp().sum().item() * h * h
    assert mass == pytest.approx(1.0, abs=1e-3)  # midpoint rule + the mass beyond (measured <= 3.2e-5 off)
    nll = -data.log_prob(name, data.sample_builtin(name, 200_000, 99))
    assert torch.isfinite(nll).all()  # every data point is on the support
    entropy, source = data.entropy(name)
    se = nll.std().item() / math.sqrt(len(nll))
    # 4 SE (measured <= 1.6 SE); + 1e-4 for the tabulated entropies' 4 digits (checkerboard: se 0, measured 2e-15)
    assert abs(nll.mean().item() - entropy) < 4 * se + 1e-4, (nll.mean().item(), entropy, se)
    assert source in ("exact", "quadrature", "monte-carlo")


def test_checkerboard_density_is_minus_infinity_off_the_squares():
    x = torch.tensor([[-3.0, -3.0], [-1.0, -3.0], [1.0, 1.0], [-4.0, 0.0], [4.0, 3.0], [0.0, 5.0], [2.5, 1.5]])
    lp = data.log_prob("checkerboard", x)
    on = lp == -math.log(32)
    assert on.tolist() == [True, False, True, True, False, False, False]
    assert torch.isneginf(lp[~on]).all()


def test_sets_without_a_closed_form():
    for name in ("moons", "swissroll", "2spirals"):
        assert not data.has_log_prob(name)
        with pytest.raises(FlowmatchError, match="no closed-form density"):
            data.log_prob(name, torch.zeros(3, 2))
        assert data.entropy(name)[1] == "reference"
    assert data.entropy("checkerboard") == (math.log(32), "exact")


# -- KL --------------------------------------------------------------------------------------------
def test_kl_is_zero_for_the_true_density_and_skips_points_off_the_support():
    x = data.sample_builtin("checkerboard", 1000, 5).double()
    exact = data.log_prob("checkerboard", x)
    nll = {"nll": float(-exact.mean()), "nll_se": 0.0}
    assert known_density_report("checkerboard", x, exact, nll)["kl"] == pytest.approx(0.0, abs=1e-12)  # float64 (measured 0)
    # three points in the empty squares: p = 0 there, so they carry no weight in E_p
    outside = torch.tensor([[-1.0, -3.0], [1.0, -1.0], [3.0, 1.0]], dtype=torch.float64)
    model = torch.full((1003,), -math.log(32) - 0.1, dtype=torch.float64)
    rep = known_density_report("checkerboard", torch.cat([x, outside]), model, nll)
    assert rep["n_off_support"] == 3
    # float64 mean of 1000 equal differences: ~1e-16 (measured 1e-16)
    assert rep["kl"] == pytest.approx(0.1, abs=1e-12) and rep["kl_se"] == pytest.approx(0.0, abs=1e-12)
    # a model with zero density at a data point: the KL is infinite, reported as None with a note
    model[0] = -math.inf
    rep = known_density_report("checkerboard", torch.cat([x, outside]), model, nll)
    assert rep["kl"] is None and "infinite" in rep["kl_note"]
    # no closed form: NLL - H with the tabulated entropy
    rep = known_density_report("moons", x, exact, {"nll": 2.5, "nll_se": 0.01})
    assert rep["kl"] == pytest.approx(2.5 - 2.394) and rep["kl_se"] == 0.01  # one float64 subtraction


# -- the report ------------------------------------------------------------------------------------
def test_evaluate_the_exact_two_gaussians_flow(tmp_path):
    """KL(data || model) of the exact flow is 0 up to solver error (measured 5e-5 +- 2e-5 with dopri5 at
    1e-5); the NLL equals the entropy 3.5309 within 4 standard errors (~0.05 at 300 points)."""
    flow = _flow(TWO_GAUSSIANS, 2, {"data": "two-gaussians"})
    rep = evaluate(flow, tmp_path, n=300, n_likelihood=300, seed=1)
    known, lik = rep["known_density"], rep["likelihood"]
    assert abs(known["kl"]) < 1e-3 and known["kl_se"] < 1e-3  # 20x the measured KL and its SE
    assert known["n_off_support"] == 0
    assert abs(lik["nll"] - 3.5309) < 4 * lik["nll_se"]  # measured 0.8 SE
    assert lik["bpd"] == pytest.approx(lik["nll"] / (2 * math.log(2)))  # the same float64 division (measured equal)
    assert lik["solver"] == "dopri5" and lik["divergence"] == "exact"
    q = rep["quality"]
    assert q["n"] == 300
    # measured: W2 0.50 x its floor (two held-out sets' W2), recall 0.943 and precision 0.973 at 300 points
    # (binomial SE 0.013)
    assert q["w2"]["value"] < 1.5 * q["w2"]["floor"] and q["recall"]["value"] > 0.9 and q["precision"]["value"] > 0.9
    sweep = rep["nfe_sweep"]
    euler = dict(sweep["w2"]["solvers"]["euler"])
    assert euler[1] > 3 * sweep["w2"]["floor"]  # one Euler step lands everything near the mean (measured 4.7x)
    assert euler[100] < 1.5 * sweep["w2"]["floor"]  # Euler's O(h) error at h = 0.01 (measured 0.50x)
    # report.json and every 2-D picture, non-empty, no temporary files left
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["known_density"]["kl"] == pytest.approx(known["kl"])  # a JSON round trip of a float64: exact
    assert sorted(rep["pictures"]) == sorted(PICTURES.values())
    for file in PICTURES.values():
        assert (tmp_path / file).stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*PICTURES.values(), "report.json"])
    table = format_report(rep)
    assert "KL(data || model)" in table and "bits/dim" in table and "floor" in table


def test_quick_evaluation_is_small(tmp_path):
    flow = _flow(TWO_GAUSSIANS, 2, {"data": "two-gaussians"})
    rep = evaluate(flow, tmp_path, quick=True)
    assert rep["quick"] and rep["quality"]["n"] == 1000
    assert rep["likelihood"]["n"] == 500 and rep["likelihood"]["solver"] == "rk4" and rep["likelihood"]["nfe"] == 40
    assert "nfe_sweep" not in rep and rep["pictures"] == []
    assert abs(rep["known_density"]["kl"]) < 0.01  # rk4 at NFE 40 on the exact flow (measured 8.6e-4 +- 1.3e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    line = summary_line(rep)
    assert line.startswith("eval (quick): shape ") and " W2 " in line and "NLL" in line and "KL(data || model)" in line
    # the exact field: the shape within each mode at its floor (measured 1.07x, median of 3 sets of 1,000
    # points; each set's ratio of two W2s at 500 points a mode varies by about 10%), the shares too
    shape = rep["quality"]["shape"]
    assert shape["kind"] == "modes" and shape["sets"] == 3 and shape["n"] == 1000 and 0.8 < shape["ratio"] < 1.25
    assert shape["shares"]["value"] < 0.05 and shape["missing"] == []


def test_evaluate_file_data_in_three_dimensions(tmp_path):
    """D = 3 data N(0, 0.7^2 I) from a file: pairwise plots instead of the 2-D-only pictures, and the NLL
    matches the entropy 1.5 log(2 pi e 0.49) = 3.188 within 4 standard errors."""
    s = 0.7
    file = tmp_path / "gauss3.npy"
    np.save(file, np.random.default_rng(0).standard_normal((2000, 3)) * s)
    run = tmp_path / "run"
    run.mkdir()
    flow = _flow(MixtureField([[0.0, 0.0, 0.0]], s), 3, {"data": str(file), "standardize": "no"})
    rep = evaluate(flow, run, n=200, n_likelihood=400, likelihood_solver="rk4", likelihood_nfe=40)
    assert rep["quality"]["n"] == 200  # the 400 held-out rows, halved
    entropy = 1.5 * math.log(2 * math.pi * math.e * s**2)
    assert abs(rep["likelihood"]["nll"] - entropy) < 4 * rep["likelihood"]["nll_se"]  # measured 1.4 SE
    assert "known_density" not in rep
    assert sorted(rep["pictures"]) == ["animation.gif", "nfe.png", "samples.png", "trajectories.png"]
    # the exact field draws fresh rows: copy share 0.05 up to the 400 test rows' quantile error (sd 0.011)
    # and the 1,600 samples' (sd 0.0055), 3 sd each; the DCR ratio 1 to within 0.1 (measured 0.05 and 0.995)
    memo = rep["memorisation"]
    assert (memo["n"], memo["n_train"], memo["n_test"]) == (1600, 1600, 400)
    assert memo["copy_share"]["value"] == pytest.approx(0.05, abs=0.05) and memo["warning"] == ""
    assert memo["dcr_ratio"]["value"] == pytest.approx(1.0, abs=0.1)
    assert "copy share" in format_report(rep) and "copy share" in summary_line(rep)


def test_evaluate_argument_errors(tmp_path):
    flow = _flow(TWO_GAUSSIANS, 2, {"data": "two-gaussians"})
    with pytest.raises(FlowmatchError, match="does not exist"):
        evaluate(flow, tmp_path / "missing", quick=True)
    with pytest.raises(FlowmatchError, match="n must be"):
        evaluate(flow, None, n=1)


# -- the eval command --------------------------------------------------------------------------------
def make_run(folder, width=8, data_name="two-gaussians"):
    """A run folder holding an untrained small MLP (no training needed to exercise the commands)."""
    config = TrainConfig(data=data_name, width=width, depth=1).to_dict()
    folder.mkdir()
    write_json(folder / "config.json", config)
    torch.manual_seed(0)
    model = build_model("mlp", 2, width=width, depth=1)
    Flow(model=model.eval(), path=make_path("linear"), standardizer=Standardizer.identity(2), config=config).save_checkpoint(folder)
    return folder


def test_eval_command_writes_the_report_and_prints_a_table(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    args = [
        "eval",
        "--run",
        str(run),
        "-n",
        "200",
        "--n-likelihood",
        "100",
        "--likelihood-solver",
        "rk4",
        "--likelihood-nfe",
        "8",
        "--no-pictures",
        "--quiet",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "W2 (exact)" in out and "NLL (nats)" in out and "KL(data || model)" in out
    report = json.loads((run / "report.json").read_text())
    assert report["quality"]["n"] == 200 and report["likelihood"]["n"] == 100
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary files


def test_eval_command_bad_run_folders(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    code = main(["eval", "--run", str(tmp_path / "nothing"), "--quiet"])
    _one_error_line(capsys, code, "does not exist")
    (tmp_path / "plain").mkdir()
    code = main(["eval", "--run", str(tmp_path / "plain"), "--quiet"])
    _one_error_line(capsys, code, "not a flowmatch run folder")

    truncated = make_run(tmp_path / "truncated")
    weights = (truncated / "checkpoint.safetensors").read_bytes()
    (truncated / "checkpoint.safetensors").write_bytes(weights[: len(weights) // 2])
    code = main(["eval", "--run", str(truncated), "--quiet"])
    _one_error_line(capsys, code, "cannot read the weights")

    mismatched = make_run(tmp_path / "mismatched")
    meta = json.loads((mismatched / "checkpoint.json").read_text())
    meta["model"]["width"] = 32
    (mismatched / "checkpoint.json").write_text(json.dumps(meta))
    code = main(["eval", "--run", str(mismatched), "--quiet"])
    _one_error_line(capsys, code, "do not match")
    assert not (run / "report.json").exists()


def test_image_report_on_a_tiny_conditional_digits_run(tmp_path):
    from flowmatch.api import train
    from flowmatch.evaluation.report import image_report

    flow = train(data="digits", model="unet", conditional=True, channels=8, steps=20, batch_size=32, progress=False).flow
    report = image_report(flow, tmp_path, nfe=4, guidance=(1.0, 2.0))
    assert report["image_shape"] == [1, 8, 8]
    # the cached classifier is trained deterministically on the training split: measured 0.99 on the test split
    assert report["classifier_test_accuracy"] > 0.9
    assert set(report["by_guidance"]) == {"1.0", "2.0"}
    for entry in report["by_guidance"].values():
        assert entry["frechet"] > 0 and 0 <= entry["class_accuracy"] <= 1
    for name in report["pictures"]:
        assert (tmp_path / name).stat().st_size > 1000
    assert (tmp_path / "classifier.safetensors").is_file()
    from flowmatch.evaluation.report import memorisation_report

    memo = memorisation_report(flow, quick=True, nfe=4, folder=tmp_path)
    assert memo["pictures"] == ["nearest.png"] and (tmp_path / "nearest.png").stat().st_size > 1000
    assert memo["n_train"] == len(flow.dataset.train) and 0 <= memo["copy_share"]["value"] <= 1


def test_any_flow_is_evaluated_against_reference_data_of_ones_own(tmp_path):
    """A hand-built flow names no data set: evaluate asks for reference data, then scores against it;
    train= adds the memorisation figures. The exact two-gaussians field draws fresh points, so its
    copy share against 1,000 other draws is 0.05 up to their sampling errors (3 sd each: 0.021 + 0.021)."""
    flow = _flow(TWO_GAUSSIANS, 2, {})
    with pytest.raises(FlowmatchError, match="pass reference="):
        evaluate(flow, quick=True)
    reference, train = data.sample_builtin("two-gaussians", 1000, 1), data.sample_builtin("two-gaussians", 1000, 2)
    rep = evaluate(flow, quick=True, reference=reference, train=train)
    # a W2 of the mixture at 500 points is set by how many land in each mode (measured 1.03x or 1.34x its
    # floor by the order of the rows); the shape score against reference rows is the energy distance
    # (no components known), three sets of 166 points, the exact field near its floor
    assert rep["quality"]["n"] == 500 and rep["quality"]["shape"]["kind"] == "energy" and rep["quality"]["shape"]["sets"] == 3
    assert rep["quality"]["shape"]["ratio"] < 1.5
    assert "nll" in rep["likelihood"]
    assert rep["memorisation"]["copy_share"]["value"] == pytest.approx(0.05, abs=0.045)  # measured 0.035
    assert "memorisation" not in evaluate(flow, quick=True, reference=reference)  # no training points, no figure
    with pytest.raises(FlowmatchError, match=r"reference must have shape \(N, 2\)"):
        evaluate(flow, quick=True, reference=torch.zeros(10, 3))
    with pytest.raises(FlowmatchError, match="train= goes with reference="):
        evaluate(_flow(TWO_GAUSSIANS, 2, {"data": "two-gaussians"}), quick=True, train=train)


def test_reference_rows_sorted_by_class_are_shuffled_before_they_are_split():
    """Reference points sorted by class: without a shuffle the two held-out halves hold different modes
    and the floor (W2 between them) is the distance between the modes, 8 here. Shuffled with the seed,
    each half holds both modes in shares near 1/2 (200 points each: share sd 0.035), and the floor is
    the finite-sample W2 of two draws of the same mixture, measured 0.5; 2.0 is far from both."""
    from flowmatch.evaluation.report import held_out

    flow = _flow(TWO_GAUSSIANS, 2, {})
    sorted_rows = data.sample_builtin("two-gaussians", 400, 3)
    sorted_rows = sorted_rows[torch.argsort(sorted_rows[:, 0])]  # the left mode's points first
    a, b, _ = held_out(flow, 200, 10, seed=0, reference=sorted_rows)
    assert 0.35 < float((a[:, 0] < 0).double().mean()) < 0.65 and 0.35 < float((b[:, 0] < 0).double().mean()) < 0.65
    from flowmatch.evaluation.metrics import w2_exact

    assert w2_exact(a, b) < 2.0
    again, _, _ = held_out(flow, 200, 10, seed=0, reference=sorted_rows)
    other, _, _ = held_out(flow, 200, 10, seed=1, reference=sorted_rows)
    assert torch.equal(a, again) and not torch.equal(a, other)  # the order is the seed's, and only the seed's
