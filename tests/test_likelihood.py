"""Likelihood by the instantaneous change of variables, checked against a flow known in closed form.

For data N(0, Sigma), Sigma = R diag(s^2) R^T, the linear path x_t = t x1 + (1 - t) x0 has Gaussian
marginals N(0, R diag(t^2 s^2 + (1 - t)^2) R^T), and the exact marginal velocity is linear:

    v(x, t) = A(t) x,   A(t) = R diag(a(t)) R^T,   a_i(t) = (t s_i^2 - (1 - t)) / (t^2 s_i^2 + (1 - t)^2),

(a_i = d/dt log of the i-th standard deviation). So the flow of v from N(0, I) has density
N(0, Sigma) at t = 1, div v = tr A(t), and int_0^1 A(t) dt = R diag(log s) R^T =: M. With Rademacher
probes held along a path, the Hutchinson log-density error is -(eps^T M eps - tr M): mean 0 and
variance sum_{i<j} (2 M_ij)^2 = 2 sum_{i != j} M_ij^2, divided by the number of probes.
"""

import math

import pytest
import torch

from flowmatch.data.standardize import Standardizer
from flowmatch.errors import FlowmatchError
from flowmatch.flows.continuous import Flow
from flowmatch.likelihood import EXACT_MAX_DIM, divergence, log_prob, resolve_divergence, sample_with_log_prob, summarize
from flowmatch.paths.affine import make_path


class GaussianField(torch.nn.Module):
    """v(x, t) = R diag(a(t)) R^T x: the exact flow-matching velocity for N(0, R diag(s^2) R^T) data."""

    def __init__(self, s, seed=0):
        super().__init__()
        dim = len(s)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
        self.rotation = torch.nn.Parameter(q, requires_grad=False)
        self.s = torch.nn.Parameter(torch.as_tensor(s, dtype=torch.float64), requires_grad=False)
        self.config = {"name": "gaussian-field"}

    def forward(self, x, t):
        s2 = self.s.to(x.dtype) ** 2
        t = torch.as_tensor(t, dtype=x.dtype)
        a = (t * s2 - (1 - t)) / (t**2 * s2 + (1 - t) ** 2)
        r = self.rotation.to(x.dtype)
        return ((x @ r) * a) @ r.T

    def covariance(self):
        return self.rotation @ torch.diag(self.s**2) @ self.rotation.T

    def log_density(self, x):
        """log N(x; 0, Sigma), float64."""
        dist = torch.distributions.MultivariateNormal(torch.zeros(len(self.s), dtype=torch.float64), self.covariance())
        return dist.log_prob(x.double())

    def draw(self, n, seed, scale=1.0):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, len(self.s), generator=g, dtype=torch.float64)
        return scale * (z * self.s) @ self.rotation.T

    def hutchinson_variance(self):
        m = self.rotation @ torch.diag(torch.log(self.s)) @ self.rotation.T
        off = m - torch.diag(torch.diag(m))
        return float(2 * (off**2).sum())


FIELD = GaussianField([0.5, 2.0, 1.3])


@pytest.mark.parametrize("solver, options", [("dopri5", {"atol": 1e-8, "rtol": 1e-8}), ("rk4", {"nfe": 100})])
def test_exact_divergence_matches_analytic_log_density(solver, options):
    # typical points and tail points (1.5 standard deviations out)
    x = torch.cat([FIELD.draw(150, seed=1), FIELD.draw(50, seed=2, scale=1.5)])
    res = log_prob(FIELD, x, solver=solver, divergence="exact", **options)
    err = (res.log_prob - FIELD.log_density(x)).abs().max().item()
    # float64 solves: measured 3.9e-8 (dopri5 at 1e-8) and 1.1e-6 (rk4, h^4 = 1e-8); a wrong divergence is O(1)
    assert err < 1e-3, err
    assert res.divergence == "exact" and res.probes == 0
    if solver == "rk4":
        assert res.nfe == 100


def test_hutchinson_is_unbiased_with_the_predicted_variance():
    """Tolerance: the mean error within 4 standard errors; the measured variance within 10% of the theory
    (a sample variance over 20,000 points has relative SE sqrt((kurtosis - 1) / n), ~1%: 10% is ~10 SE).
    Measured: mean 0.2 and 1.3 SE off, variance 0.2% and 0.7% off."""
    n = 20_000
    x = FIELD.draw(n, seed=3)
    exact = FIELD.log_density(x)
    var_one = FIELD.hutchinson_variance()  # 0.873 for this field (measured: 0.871, and 0.217 for 4 probes)
    for probes in (1, 4):
        res = log_prob(FIELD, x, solver="rk4", nfe=20, divergence="hutchinson", probes=probes, seed=11)
        err = res.log_prob - exact
        predicted = var_one / probes
        se = math.sqrt(predicted / n)
        assert abs(err.mean().item()) < 4 * se, (probes, err.mean().item(), se)
        assert err.var().item() == pytest.approx(predicted, rel=0.10)
        # the mean log-density is the quantity eval reports: within 4 se of the analytic one
        assert abs(res.log_prob.mean().item() - exact.mean().item()) < 4 * se


def test_hutchinson_is_exact_for_a_diagonal_jacobian():
    """eps^T J eps = tr J when J is diagonal (eps_i^2 = 1): no variance at all."""
    field = GaussianField([0.5, 2.0, 1.3, 0.8])
    with torch.no_grad():
        field.rotation.copy_(torch.eye(4, dtype=torch.float64))
    x = field.draw(100, seed=4)
    res = log_prob(field, x, solver="rk4", nfe=40, divergence="hutchinson", seed=0)
    assert (res.log_prob - field.log_density(x)).abs().max().item() < 1e-3  # rk4 at h = 1/40 (measured 2.8e-5)


def test_auto_choice_of_divergence():
    assert resolve_divergence("auto", 2) == "exact"
    assert resolve_divergence("auto", EXACT_MAX_DIM) == "exact"
    assert resolve_divergence("auto", EXACT_MAX_DIM + 1) == "hutchinson"
    assert resolve_divergence("exact", 100) == "exact"
    with pytest.raises(FlowmatchError, match="unknown divergence"):
        resolve_divergence("trace", 2)


def test_high_dimensional_field_uses_hutchinson_and_stays_unbiased():
    s = torch.linspace(0.6, 1.6, 24)
    field = GaussianField(s, seed=5)
    n = 4000
    x = field.draw(n, seed=6)
    res = log_prob(field, x, solver="rk4", nfe=20, seed=2)
    assert res.divergence == "hutchinson" and res.probes == 1
    err = res.log_prob - field.log_density(x)
    se = math.sqrt(field.hutchinson_variance() / n)
    assert abs(err.mean().item()) < 4 * se  # measured 1.2 SE
    # relative SE of a variance over 4,000 points ~ sqrt(2 / n) = 2.2%: 15% is ~7 SE (measured 3.1%)
    assert err.var().item() == pytest.approx(field.hutchinson_variance(), rel=0.15)


def test_divergence_helper_exact_and_probe_estimates():
    x = FIELD.draw(5, seed=7)
    t = torch.tensor(0.3, dtype=torch.float64)
    v, div = divergence(FIELD, x, t)
    a = FIELD(torch.eye(3, dtype=torch.float64), t)  # rows: A e_i, so the trace is the diagonal sum
    # float64, assert_close's default rtol 1e-7 (measured exactly equal)
    torch.testing.assert_close(div, torch.full((5,), float(torch.trace(a)), dtype=torch.float64))
    torch.testing.assert_close(v, FIELD(x, t))


def _gaussian_flow(mean, std):
    return Flow(
        model=FIELD,
        path=make_path("linear"),
        standardizer=Standardizer(torch.tensor(mean), torch.tensor(std)),
        config={"data": "x.npy", "source": "gaussian", "seed": 0},
    )


def test_flow_log_prob_is_in_data_coordinates():
    """x = mean + std * z with z ~ N(0, Sigma): log p(x) = log N(z; 0, Sigma) - sum(log std)."""
    mean, std = [1.0, -2.0, 0.5], [3.0, 0.5, 2.0]
    flow = _gaussian_flow(mean, std)
    z = FIELD.draw(100, seed=8)
    x = z * torch.tensor(std, dtype=torch.float64) + torch.tensor(mean, dtype=torch.float64)
    expected = FIELD.log_density(z) - math.log(3.0 * 0.5 * 2.0)
    got = flow.log_prob(x, solver="dopri5", atol=1e-8, rtol=1e-8)
    assert got.dtype == torch.float64 and got.shape == (100,)
    assert (got - expected).abs().max().item() < 1e-3  # dopri5 at 1e-8, float64 (measured 2.2e-8)


def test_sampling_with_log_prob():
    mean, std = [1.0, -2.0, 0.5], [3.0, 0.5, 2.0]
    flow = _gaussian_flow(mean, std)
    out = flow.generate(300, solver="rk4", nfe=100, seed=1, with_log_prob=True)
    plain = flow.generate(300, solver="rk4", nfe=100, seed=1)
    # the log-density column does not change the samples: the same elementwise steps (measured exactly
    # equal); assert_close's default tolerance leaves room for round-off
    torch.testing.assert_close(out.x, plain.x)
    assert plain.log_prob is None
    z = (out.x.double() - torch.tensor(mean, dtype=torch.float64)) / torch.tensor(std, dtype=torch.float64)
    expected = FIELD.log_density(z) - math.log(3.0)
    # float32 noise (the flow's source), so the tolerance is float32 rounding over 25 steps (measured 8.6e-7)
    assert (out.log_prob - expected).abs().max().item() < 1e-3
    # forward (sampling) and backward (scoring) agree on the same points: two rk4 solves (measured 4.6e-7)
    back = flow.log_prob(out.x, solver="rk4", nfe=100)
    assert (back - out.log_prob).abs().max().item() < 1e-3


def test_forward_trajectory_with_log_prob_drops_the_density_column():
    x0 = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sample_with_log_prob(FIELD, x0, solver="heun", nfe=10, return_trajectory=True)
    assert res.trajectory.shape == (6, 20, 3) and res.x.shape == (20, 3)
    torch.testing.assert_close(res.trajectory[-1], res.x)  # the same tensor's values (measured equal)


def test_summary_in_nats_and_bits_per_dimension():
    lp = torch.tensor([-1.0, -2.0, -3.0, -4.0], dtype=torch.float64)
    s = summarize(lp, dim=2)  # float64 arithmetic: approx's default 1e-6 relative
    assert s.nll == pytest.approx(2.5)
    assert s.nll_se == pytest.approx(lp.std().item() / 2)
    assert s.bpd == pytest.approx(2.5 / (2 * math.log(2)))
    assert s.bpd_se == pytest.approx(s.nll_se / (2 * math.log(2)))


def test_bad_input_is_a_flowmatch_error():
    flow = _gaussian_flow([0.0] * 3, [1.0] * 3)
    with pytest.raises(FlowmatchError, match="shape"):
        flow.log_prob(torch.zeros(4, 2))
    with pytest.raises(FlowmatchError, match="NaN"):
        log_prob(FIELD, torch.full((2, 3), float("nan")))
    with pytest.raises(FlowmatchError, match="probes"):
        log_prob(FIELD, torch.zeros(2, 3), probes=0)
    flow.config["source"] = "moons"
    with pytest.raises(FlowmatchError, match="source"):
        flow.log_prob(torch.zeros(2, 3))
