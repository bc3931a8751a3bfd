"""Paths: the target velocity is d/dt x_t (autograd), and prediction conversions round-trip."""

import math

import pytest
import torch

from flowmatch.data.toy import GAUSSIAN_MIXTURES, GaussianMixture
from flowmatch.errors import FlowmatchError
from flowmatch.paths.affine import AffinePath, make_path
from flowmatch.paths.schedules import CustomSchedule

PATHS = [
    make_path("gaussian", sigma_min=0.1),
    make_path("gaussian"),
    make_path("linear"),
    make_path("cosine"),
    AffinePath(CustomSchedule(alpha=lambda t: t**2, sigma=lambda t: 1 - t**2)),
]
IDS = ["gaussian-0.1", "gaussian", "linear", "cosine", "custom"]


def _batch(seed=0, n=64, d=3):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    x1 = torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + 1
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.05
    return x0, x1, t


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_velocity_is_time_derivative_of_x_t(path):
    x0, x1, t = _batch()
    t = t.requires_grad_(True)
    x_t = path.sample(x0, x1, t).x_t
    # d x_t[:, j] / d t_i is diagonal in i, so the gradient of a coordinate's sum is that derivative
    autograd = torch.stack([torch.autograd.grad(x_t[:, j].sum(), t, retain_graph=True)[0] for j in range(x_t.shape[1])], dim=1)
    velocity = path.sample(x0, x1, t.detach()).velocity
    torch.testing.assert_close(velocity, autograd, rtol=1e-12, atol=1e-12)  # float64, a few operations (measured 9e-16)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_endpoints(path):
    x0, x1, _ = _batch()
    # float64, assert_close's default 1e-7 (measured 4e-16)
    torch.testing.assert_close(path.sample(x0, x1, torch.zeros(len(x0), dtype=x0.dtype)).x_t, x0)
    end = path.sample(x0, x1, torch.ones(len(x0), dtype=x0.dtype)).x_t
    sigma_min = getattr(path.schedule, "sigma_min", 0.0)
    torch.testing.assert_close(end, x1 + sigma_min * x0)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
@pytest.mark.parametrize("src", ["velocity", "x1", "x0"])
def test_conversions_round_trip(path, src):
    x0, x1, t = _batch(seed=1)
    s = path.sample(x0, x1, t)
    truth = {"velocity": s.velocity, "x1": x1, "x0": x0}
    for dst in ["velocity", "x1", "x0"]:
        got = path.convert(truth[src], s.x_t, t, src, dst)
        # float64, divisions by alpha or sigma >= ~0.05 (t in [0.05, 0.95]): measured 5.8e-15
        torch.testing.assert_close(got, truth[dst], rtol=1e-9, atol=1e-9)
        back = path.convert(got, s.x_t, t, dst, src)
        torch.testing.assert_close(back, truth[src], rtol=1e-9, atol=1e-9)


def test_scalar_time_broadcasts():
    x0, x1, _ = _batch()
    path = make_path("cosine")
    a = path.sample(x0, x1, torch.tensor(0.3, dtype=x0.dtype))
    b = path.sample(x0, x1, torch.full((len(x0),), 0.3, dtype=x0.dtype))
    torch.testing.assert_close(a.x_t, b.x_t)  # float64, default tolerances (as are those below)
    expected = math.sin(0.15 * math.pi) * x1 + math.cos(0.15 * math.pi) * x0
    torch.testing.assert_close(a.x_t, expected)


def test_custom_schedule_autograd_derivatives_match_closed_form():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    s = CustomSchedule(alpha=lambda t: t**2, sigma=lambda t: torch.cos(t))
    torch.testing.assert_close(s.d_alpha(t), 2 * t)  # float64 autograd: round-off only
    torch.testing.assert_close(s.d_sigma(t), -torch.sin(t))


def test_bad_names():
    with pytest.raises(FlowmatchError, match="unknown path"):
        make_path("straight")
    with pytest.raises(FlowmatchError, match="sigma_min"):
        make_path("gaussian", sigma_min=1.5)
    x0, x1, t = _batch()
    with pytest.raises(FlowmatchError, match="unknown prediction"):
        make_path("linear").convert(x0, x1, t, "velocity", "score")


def test_bridge_noise_velocity_is_time_derivative():
    x0, x1, t = _batch(seed=2)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=x0.dtype)
    path = make_path("linear", bridge_sigma=0.5)
    t = t.requires_grad_(True)
    x_t = path.sample(x0, x1, t, noise=eps).x_t
    autograd = torch.stack([torch.autograd.grad(x_t[:, j].sum(), t, retain_graph=True)[0] for j in range(x_t.shape[1])], dim=1)
    s = path.sample(x0, x1, t.detach(), noise=eps)
    torch.testing.assert_close(s.velocity, autograd, rtol=1e-10, atol=1e-10)  # float64 (measured 2.2e-16)
    # the bridge noise has standard deviation 0.5 sqrt(t (1 - t)) around the straight line
    plain = make_path("linear").sample(x0, x1, t.detach()).x_t
    torch.testing.assert_close(s.x_t - plain, 0.5 * torch.sqrt(t.detach() * (1 - t.detach()))[:, None] * eps)
    with pytest.raises(FlowmatchError, match="needs the noise"):
        path.sample(x0, x1, t.detach())


# -- the posterior (batch-averaged) target --------------------------------------------------------
DATA = GAUSSIAN_MIXTURES["two-gaussians"]
SOURCES = {  # N(0, I) (the default, None), and an unequal mixture with unequal spreads
    "normal": None,
    "mixture": GaussianMixture(
        torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64),
        torch.tensor([[-2.0, 1.0], [1.0, 1.0], [0.0, -2.0]], dtype=torch.float64),
        torch.tensor([0.3, 0.6, 1.0], dtype=torch.float64),
    ),
}
NORMAL = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
POSTERIOR_PATHS = {
    "linear": make_path("linear"),
    "gaussian-0.1": make_path("gaussian", sigma_min=0.1),
    "cosine": make_path("cosine"),
    "bridge-0.5": make_path("linear", bridge_sigma=0.5),
}


def _draw(mixture, n, g):
    k = torch.multinomial(mixture.weights, n, replacement=True, generator=g)
    return mixture.means[k] + mixture.stds[k, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _marginal_velocity(path, x_t, t, source=None):
    """The marginal velocity between two Gaussian mixtures (x0 ~ sum_k pi_k N(mu_k, tau_k^2 I) drawn
    independently of x1 ~ sum_l rho_l N(m_l, s_l^2 I)), closed form.

    Given the components (k, l), (x0, x1, x_t, u_t) are jointly Gaussian: x_t ~ N(a m_l + sigma mu_k, V I)
    with V = a^2 s_l^2 + sigma^2 tau_k^2 + g^2, and E[u_t | x_t, k, l] = a' m_l + sigma' mu_k
    + (a a' s_l^2 + sigma sigma' tau_k^2 + g g') / V (x_t - a m_l - sigma mu_k); v is their mean
    under P(k, l | x_t).
    """
    source = NORMAL if source is None else source
    tt = torch.full((1,), t, dtype=torch.float64)
    s = path.schedule
    a, sg, da, ds = s.alpha(tt), s.sigma(tt), s.d_alpha(tt), s.d_sigma(tt)
    b2 = path.bridge_sigma**2
    g2, ggd = b2 * t * (1 - t), b2 * (1 - 2 * t) / 2
    log_r, means = [], []
    for pi, mu, tau in zip(source.weights, source.means, source.stds):
        for rho, m, sd in zip(DATA.weights, DATA.means, DATA.stds):
            centre = a * m + sg * mu
            var = a**2 * sd**2 + sg**2 * tau**2 + g2
            log_r.append(torch.log(pi * rho) - ((x_t - centre) ** 2).sum(1) / (2 * var) - torch.log(var))
            means.append(da * m + ds * mu + (a * da * sd**2 + sg * ds * tau**2 + ggd) / var * (x_t - centre))
    r = torch.softmax(torch.stack(log_r, 1), 1)
    return (r[:, :, None] * torch.stack(means, 1)).sum(1)


def _targets(path, t, batches, batch=256, seed=0, source=None):
    """(x_t, conditional u_t, posterior T) over ``batches`` batches at time t; each batch is its own reference."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batches):
        x1 = _draw(DATA, batch, g)
        x0 = _draw(NORMAL if source is None else source, batch, g)
        eps = torch.randn(batch, 2, generator=g, dtype=torch.float64)
        s = path.sample(x0, x1, torch.full((batch,), t, dtype=torch.float64), noise=eps)
        rows.append((s.x_t, s.velocity, path.posterior_velocity(s, x1, x1, source=source)))
    return [torch.cat(column) for column in zip(*rows)]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("name", POSTERIOR_PATHS)
def test_posterior_target_is_unbiased_for_the_marginal_velocity(name, t, source):
    # E[T - v(x_t) | x_t] = 0 tested against functions of x_t: for each f, the mean of (T - v) f(x_t)
    # is within 4.5 standard errors of 0. The rows of a batch share their reference points, so the
    # standard error is taken over the 160 batch means, which are independent.
    path = POSTERIOR_PATHS[name]
    x_t, _, posterior = _targets(path, t, batches=160, source=SOURCES[source])
    residual = posterior - _marginal_velocity(path, x_t, t, SOURCES[source])
    for f in (torch.ones_like(x_t[:, 0]), x_t[:, 0], x_t[:, 1], torch.tanh(x_t[:, 0])):
        # (measured: the largest |z| over all 192 cases is 2.4)
        per_batch = (residual * f[:, None]).reshape(160, -1, 2).mean(1)
        z = per_batch.mean(0) / (per_batch.std(0) / math.sqrt(160))
        assert z.abs().max() < 4.5, (name, t, z)


def test_posterior_target_has_far_less_variance_early():
    # At t = 0.2 the conditional target's error around v is dominated by which mode x1 came from;
    # the posterior averages it out over the batch of 256: measured 0.022 against 6.7 (ratio ~300;
    # 300 at t = 0.1, 48 at t = 0.5, 7 at t = 0.8; this draw 276).
    path = make_path("linear")
    x_t, conditional, posterior = _targets(path, 0.2, batches=40, seed=1)
    v = _marginal_velocity(path, x_t, 0.2)
    assert ((posterior - v) ** 2).mean() < ((conditional - v) ** 2).mean() / 200


def test_posterior_target_at_the_ends():
    path = make_path("linear")
    g = torch.Generator().manual_seed(4)
    x1 = _draw(DATA, 64, g)
    x0 = torch.randn(64, 2, generator=g, dtype=torch.float64)
    # t = 0: every point is equally likely, so T = mean(x1) - x0 (the exact field's batch estimate)
    s = path.sample(x0, x1, torch.zeros(64, dtype=torch.float64))
    # float64 mean of 64 points: round-off ~1e-15 (measured 1e-15)
    torch.testing.assert_close(path.posterior_velocity(s, x1, x1), x1.mean(0) - x0, rtol=0, atol=1e-12)
    # t -> 1 (down to sigma_t = 0): the weights fall on the own point, T = u_t, finite
    for t in (1 - 1e-6, 1.0):
        s = path.sample(x0, x1, torch.full((64,), t, dtype=torch.float64))
        torch.testing.assert_close(path.posterior_velocity(s, x1, x1), s.velocity, rtol=0, atol=1e-9)  # measured 0
    # float32 (training's precision) against float64 over 512 points: measured 0.0067 and 0.022 apart at
    # most on two draws (at t = 0.99, where the weights between neighbours are most delicate and the
    # correction is multiplied by 1 / (1 - t)), against targets of ~5; bf16 training rounds more. This draw:
    # 0.0096 at t = 0.99, 1.2e-4 at t = 0.9, the same with AVX2 and with scalar kernels
    x1b, x0b = _draw(DATA, 512, g), torch.randn(512, 2, generator=g, dtype=torch.float64)
    for t in (0.3, 0.9, 0.99, 0.999, 0.9999):
        t = torch.full((512,), t, dtype=torch.float64)
        exact = path.posterior_velocity(path.sample(x0b, x1b, t), x1b, x1b)
        single = path.posterior_velocity(path.sample(x0b.float(), x1b.float(), t.float()), x1b.float(), x1b.float())
        assert (single.double() - exact).abs().max() < 0.05
    # a mask that allows only the own point gives u_t at any time; float32 in, float32 out
    s = path.sample(x0.float(), x1.float(), torch.full((64,), 0.3))
    own = torch.eye(64, dtype=torch.bool)
    out = path.posterior_velocity(s, x1.float(), x1.float(), allowed=own, chunk=10)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, s.velocity)  # float32 default tolerance (measured equal)


@pytest.mark.parametrize("source", SOURCES)
def test_posterior_target_matches_the_weighted_sum_of_conditional_velocities(source):
    # T = u_t + sum_jk w_jk u(x_t | z_j, k) - sum_k r_k u(x_t | x1, k) written out term by term, for a
    # bridge path, per-pair times, a mask, and a reference that holds the own point of half the pairs
    # (own = its row) but not of the other half (own = -1: it joins their set), as training does with
    # the global batch's first points. (Any function in place of u here would leave T unbiased; this
    # pins down the u of the docstring.)
    path, mixture = make_path("linear", bridge_sigma=0.7), SOURCES[source]
    comps = NORMAL if mixture is None else mixture
    g = torch.Generator().manual_seed(5)
    z = _draw(DATA, 50, g)
    x1 = torch.cat([z[:10], _draw(DATA, 10, g)])
    own = torch.tensor(list(range(10)) + [-1] * 10)
    x0, eps = _draw(comps, 20, g), torch.randn(20, 2, generator=g, dtype=torch.float64)
    t = torch.rand(20, generator=g, dtype=torch.float64)
    allowed = torch.rand(20, 50, generator=g) < 0.5
    allowed[torch.arange(10), torch.arange(10)] = True
    s = path.sample(x0, x1, t, noise=eps)
    expected = []
    for i in range(20):
        ti, x_t = t[i], s.x_t[i]
        a, sg, g2, ggd = ti, 1 - ti, 0.49 * ti * (1 - ti), 0.49 * (1 - 2 * ti) / 2
        points = z[allowed[i]] if own[i] >= 0 else torch.cat([z[allowed[i]], x1[i : i + 1]])

        def terms(points):  # (log-weight, u(x_t | z, k)) of every (point, component)
            logw, u = [], []
            for pi, mu, tau in zip(comps.weights, comps.means, comps.stds):
                var, cov = sg**2 * tau**2 + g2, -sg * tau**2 + ggd
                centre = a * points + sg * mu
                logw.append(torch.log(pi) - torch.log(var) - ((x_t - centre) ** 2).sum(1) / (2 * var))
                u.append(points - mu + cov / var * (x_t - centre))
            return torch.softmax(torch.cat(logw), 0), torch.cat(u)

        w, u = terms(points)
        r, u_own = terms(x1[i : i + 1])
        expected.append((w[:, None] * u).sum(0) + s.velocity[i] - (r[:, None] * u_own).sum(0))
    out = path.posterior_velocity(s, x1, z, own, allowed, source=mixture, chunk=7)
    torch.testing.assert_close(out, torch.stack(expected))  # float64, default 1e-7: round-off of a softmax of <= 150 terms


# -- sampling under another schedule -----------------------------------------------------------------
MU, S = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.6


def _gaussian_field(schedule):
    """The exact marginal velocity of the path to data N(MU, S^2 I): x_t ~ N(alpha_t MU, std_t^2 I),
    std_t^2 = alpha_t^2 S^2 + sigma_t^2, v = alpha'_t MU + (d log std_t / dt)(x - alpha_t MU); its
    flow map is x_t = alpha_t MU + std_t z from x_0 = z."""

    def v(x, t):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
        a, s, da, ds = schedule.alpha(t), schedule.sigma(t), schedule.d_alpha(t), schedule.d_sigma(t)
        var = a**2 * S**2 + s**2
        return da * MU + (a * da * S**2 + s * ds) / var * (x - a * MU)

    return v


@pytest.mark.parametrize("trained, target", [("linear", "cosine"), ("cosine", "linear"), ("linear", "linear")])
def test_a_schedule_transform_keeps_an_exact_fields_endpoints_and_follows_the_target_path(trained, target):
    from flowmatch.paths.transform import transform_schedule
    from flowmatch.solvers.integration import integrate

    trained_s, target_s = make_path(trained).schedule, make_path(target).schedule
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    field = transform_schedule(_gaussian_field(trained_s), trained, target)
    solution = integrate(field, z, solver="rk4", nfe=400, return_trajectory=True)
    # the endpoint is the trained flow's, sample for sample: MU + S z (rk4 at 100 steps: error ~1e-9;
    # measured <= 1.0e-9 at the end and 4.1e-10 halfway, float64)
    torch.testing.assert_close(solution.x, MU + S * z, rtol=0, atol=1e-7)
    # and on the way the state is the target path's own Gaussian flow, xbar_r = alphabar_r MU + stdbar_r z
    r = solution.times[50].to(torch.float64)
    a, s = target_s.alpha(r), target_s.sigma(r)
    torch.testing.assert_close(solution.trajectory[50], a * MU + torch.sqrt(a**2 * S**2 + s**2) * z, rtol=0, atol=1e-7)


def test_transform_schedule_refuses_what_is_not_a_schedule():
    from flowmatch.paths.schedules import CosineSchedule
    from flowmatch.paths.transform import transform_schedule

    with pytest.raises(FlowmatchError, match="unknown path 'curvy-path'"):
        transform_schedule(lambda x, t: x, "linear", "curvy-path")
    with pytest.raises(FlowmatchError, match="a schedule must be a Schedule, an AffinePath or a path name"):
        transform_schedule(lambda x, t: x, "linear", 3)
    assert callable(transform_schedule(lambda x, t: x, make_path("linear"), CosineSchedule()))


def test_affine_geodesic_and_mixture_paths_follow_one_protocol():
    """path.sample(x0, x1, t, *, generator=) -> PathSample for every kind of path: x_t at t = 0 is x0, at t = 1 x1;
    continuous paths give their conditional velocity, the discrete path none (it has rates)."""
    from flowmatch.discrete.paths import MixturePath
    from flowmatch.discrete.schedulers import LinearScheduler
    from flowmatch.manifolds.manifolds import Sphere
    from flowmatch.manifolds.paths import GeodesicPath
    from flowmatch.paths.affine import make_path
    from flowmatch.paths.base import PathSample, ProbabilityPath

    g = torch.Generator().manual_seed(0)
    sphere = Sphere(2)
    tokens = torch.randint(0, 5, (64, 3), generator=g)
    cases = [
        (make_path("linear"), torch.randn(64, 2, generator=g), torch.randn(64, 2, generator=g)),
        (GeodesicPath(sphere), sphere.random_uniform(64, g), sphere.random_uniform(64, g)),
        (MixturePath(LinearScheduler(), 5, "mask"), torch.full((64, 3), 5), tokens),
    ]
    for path, x0, x1 in cases:
        assert isinstance(path, ProbabilityPath)
        for t, end in ((0.0, x0), (1.0, x1)):
            s = path.sample(x0, x1, torch.full((64,), t), generator=torch.Generator().manual_seed(1))
            assert isinstance(s, PathSample) and s.x_t.shape == x0.shape
            assert torch.allclose(s.x_t.to(torch.float64), end.to(torch.float64), atol=1e-6)
        middle = path.sample(x0, x1, torch.full((64,), 0.5), generator=torch.Generator().manual_seed(1))
        assert (middle.velocity is None) == isinstance(path, MixturePath)
    middle = cases[2][0].sample(cases[2][1], tokens, torch.full((64,), 0.5), generator=torch.Generator().manual_seed(1)).x_t
    assert ((middle == tokens) | (middle == 5)).all() and 0.3 < (middle == tokens).double().mean() < 0.7  # x1 kept with kappa = 0.5
