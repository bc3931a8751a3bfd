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
