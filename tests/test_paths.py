"""Paths: the target velocity is d/dt x_t (autograd), and prediction conversions round-trip."""

import math

import pytest
import torch

from flowmatch.errors import FlowmatchError
from flowmatch.paths import AffinePath, CustomSchedule, make_path

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
    autograd = torch.stack(
        [torch.autograd.grad(x_t[:, j].sum(), t, retain_graph=True)[0] for j in range(x_t.shape[1])], dim=1
    )
    velocity = path.sample(x0, x1, t.detach()).velocity
    torch.testing.assert_close(velocity, autograd, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=IDS)
def test_endpoints(path):
    x0, x1, _ = _batch()
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
        torch.testing.assert_close(got, truth[dst], rtol=1e-9, atol=1e-9)
        back = path.convert(got, s.x_t, t, dst, src)
        torch.testing.assert_close(back, truth[src], rtol=1e-9, atol=1e-9)


def test_scalar_time_broadcasts():
    x0, x1, _ = _batch()
    path = make_path("cosine")
    a = path.sample(x0, x1, torch.tensor(0.3, dtype=x0.dtype))
    b = path.sample(x0, x1, torch.full((len(x0),), 0.3, dtype=x0.dtype))
    torch.testing.assert_close(a.x_t, b.x_t)
    expected = math.sin(0.15 * math.pi) * x1 + math.cos(0.15 * math.pi) * x0
    torch.testing.assert_close(a.x_t, expected)


def test_custom_schedule_autograd_derivatives_match_closed_form():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    s = CustomSchedule(alpha=lambda t: t**2, sigma=lambda t: torch.cos(t))
    torch.testing.assert_close(s.d_alpha(t), 2 * t)
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
    autograd = torch.stack(
        [torch.autograd.grad(x_t[:, j].sum(), t, retain_graph=True)[0] for j in range(x_t.shape[1])], dim=1
    )
    s = path.sample(x0, x1, t.detach(), noise=eps)
    torch.testing.assert_close(s.velocity, autograd, rtol=1e-10, atol=1e-10)
    # the bridge noise has standard deviation 0.5 sqrt(t (1 - t)) around the straight line
    plain = make_path("linear").sample(x0, x1, t.detach()).x_t
    torch.testing.assert_close(s.x_t - plain, 0.5 * torch.sqrt(t.detach() * (1 - t.detach()))[:, None] * eps)
    with pytest.raises(FlowmatchError, match="needs the noise"):
        path.sample(x0, x1, t.detach())


# -- the posterior (batch-averaged) target --------------------------------------------------------
MIXTURE = [(0.5, (-4.0, 0.0), 1.0), (0.5, (4.0, 0.0), 1.0)]  # two-gaussians: (weight, mean, std) each
POSTERIOR_PATHS = {
    "linear": make_path("linear"),
    "gaussian-0.1": make_path("gaussian", sigma_min=0.1),
    "cosine": make_path("cosine"),
    "bridge-0.5": make_path("linear", bridge_sigma=0.5),
}


def _mixture_draw(n, g):
    k = torch.multinomial(torch.tensor([w for w, _, _ in MIXTURE], dtype=torch.float64), n, replacement=True, generator=g)
    means = torch.tensor([m for _, m, _ in MIXTURE], dtype=torch.float64)[k]
    stds = torch.tensor([s for _, _, s in MIXTURE], dtype=torch.float64)[k, None]
    return means + stds * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _mixture_velocity(path, x_t, t):
    """The marginal velocity of a Gaussian mixture (x1 ~ sum_k w_k N(m_k, s_k^2 I), x0 ~ N(0, I)), closed form.

    Given component k, (x1, x_t) is jointly Gaussian: x_t ~ N(a m_k, (a^2 s_k^2 + S) I) with
    S = sigma^2 + g^2, and E[x1 | x_t, k] = m_k + a s_k^2 / (a^2 s_k^2 + S) (x_t - a m_k); then
    v = sum_k P(k | x_t) (a' - c a) E[x1 | x_t, k] + c x_t with c = (sigma sigma' + g g') / S.
    """
    tt = torch.full((1,), t, dtype=torch.float64)
    s = path.schedule
    a, sg, da, ds = s.alpha(tt), s.sigma(tt), s.d_alpha(tt), s.d_sigma(tt)
    b2 = path.bridge_sigma**2
    var, cov = sg**2 + b2 * t * (1 - t), sg * ds + b2 * (1 - 2 * t) / 2
    c = cov / var
    log_r, means = [], []
    for w, m, sd in MIXTURE:
        m = torch.tensor(m, dtype=torch.float64)
        spread = a**2 * sd**2 + var
        log_r.append(math.log(w) - ((x_t - a * m) ** 2).sum(1) / (2 * spread) - x_t.shape[1] / 2 * torch.log(spread))
        means.append(m + a * sd**2 / spread * (x_t - a * m))
    r = torch.softmax(torch.stack(log_r, 1), 1)
    mean_x1 = (r[:, :, None] * torch.stack(means, 1)).sum(1)
    return (da - c * a) * mean_x1 + c * x_t


def _targets(path, t, batches, batch=256, seed=0):
    """(x_t, conditional u_t, posterior T) over ``batches`` batches at time t; each batch is its own reference."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batches):
        x1 = _mixture_draw(batch, g)
        x0 = torch.randn(batch, 2, generator=g, dtype=torch.float64)
        eps = torch.randn(batch, 2, generator=g, dtype=torch.float64)
        s = path.sample(x0, x1, torch.full((batch,), t, dtype=torch.float64), noise=eps)
        rows.append((s.x_t, s.velocity, path.posterior_velocity(s, x1, x1)))
    return [torch.cat(column) for column in zip(*rows)]


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("name", POSTERIOR_PATHS)
def test_posterior_target_is_unbiased_for_the_marginal_velocity(name, t):
    # E[T - v(x_t) | x_t] = 0 tested against functions of x_t: for each f, the mean of (T - v) f(x_t)
    # is within 4.5 standard errors of 0. The rows of a batch share their reference points, so the
    # standard error is taken over the 160 batch means, which are independent.
    path = POSTERIOR_PATHS[name]
    x_t, _, posterior = _targets(path, t, batches=160)
    residual = posterior - _mixture_velocity(path, x_t, t)
    for f in (torch.ones_like(x_t[:, 0]), x_t[:, 0], x_t[:, 1], torch.tanh(x_t[:, 0])):
        per_batch = (residual * f[:, None]).reshape(160, -1, 2).mean(1)
        z = per_batch.mean(0) / (per_batch.std(0) / math.sqrt(160))
        assert z.abs().max() < 4.5, (name, t, z)


def test_posterior_target_has_far_less_variance_early():
    # At t = 0.2 the conditional target's error around v is dominated by which mode x1 came from;
    # the posterior averages it out over the batch of 256: measured 0.022 against 6.7 (ratio ~300;
    # 300 at t = 0.1, 48 at t = 0.5, 7 at t = 0.8).
    path = make_path("linear")
    x_t, conditional, posterior = _targets(path, 0.2, batches=40, seed=1)
    v = _mixture_velocity(path, x_t, 0.2)
    assert ((posterior - v) ** 2).mean() < ((conditional - v) ** 2).mean() / 200


def test_posterior_target_at_the_ends():
    path = make_path("linear")
    g = torch.Generator().manual_seed(4)
    x1 = _mixture_draw(64, g)
    x0 = torch.randn(64, 2, generator=g, dtype=torch.float64)
    # t = 0: every point is equally likely, so T = mean(x1) - x0 (the exact field's batch estimate)
    s = path.sample(x0, x1, torch.zeros(64, dtype=torch.float64))
    torch.testing.assert_close(path.posterior_velocity(s, x1, x1), x1.mean(0) - x0, rtol=0, atol=1e-12)
    # t -> 1 (down to sigma_t = 0): the weights fall on the own point, T = u_t, finite
    for t in (1 - 1e-6, 1.0):
        s = path.sample(x0, x1, torch.full((64,), t, dtype=torch.float64))
        torch.testing.assert_close(path.posterior_velocity(s, x1, x1), s.velocity, rtol=0, atol=1e-9)
    # float32 (training's precision) against float64 over 512 points: measured 0.0067 and 0.022 apart at
    # most on two draws (at t = 0.99, where the weights between neighbours are most delicate and the
    # correction is multiplied by 1 / (1 - t)), against targets of ~5; bf16 training rounds more
    x1b, x0b = _mixture_draw(512, g), torch.randn(512, 2, generator=g, dtype=torch.float64)
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
    torch.testing.assert_close(out, s.velocity)


def test_posterior_target_matches_the_weighted_sum_of_conditional_velocities():
    # T = sum_j w_j u(x_t | z_j) written out term by term, for a bridge path, per-pair times, a mask,
    # and a reference that holds the own point of half the pairs (own = its row) but not of the
    # other half (own = -1: it joins their set), as training does with the global batch's first points.
    path = make_path("linear", bridge_sigma=0.7)
    g = torch.Generator().manual_seed(5)
    z = _mixture_draw(50, g)
    x1 = torch.cat([z[:10], _mixture_draw(10, g)])
    own = torch.tensor(list(range(10)) + [-1] * 10)
    x0, eps = torch.randn(20, 2, generator=g, dtype=torch.float64), torch.randn(20, 2, generator=g, dtype=torch.float64)
    t = torch.rand(20, generator=g, dtype=torch.float64)
    allowed = torch.rand(20, 50, generator=g) < 0.5
    allowed[torch.arange(10), torch.arange(10)] = True
    s = path.sample(x0, x1, t, noise=eps)
    expected = []
    for i in range(20):
        ti = t[i]
        a, sg = ti, 1 - ti
        var, cov = sg**2 + 0.49 * ti * (1 - ti), -sg + 0.49 * (1 - 2 * ti) / 2
        points = z[allowed[i]] if own[i] >= 0 else torch.cat([z[allowed[i]], x1[i : i + 1]])
        w = torch.softmax(-((s.x_t[i] - a * points) ** 2).sum(1) / (2 * var), 0)
        u = points + cov / var * (s.x_t[i] - a * points)  # u(x_t | z_j) for every point of the set
        # the pair's own noise stays: u_t - u(x_t | x1_i) is zero-mean given x_t and x1
        expected.append((w[:, None] * u).sum(0) + s.velocity[i] - (x1[i] + cov / var * (s.x_t[i] - a * x1[i])))
    torch.testing.assert_close(path.posterior_velocity(s, x1, z, own, allowed, chunk=7), torch.stack(expected))
