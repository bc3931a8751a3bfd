"""Tests for flowmatch.manifolds: geometry, geodesic paths, the Riemannian solvers, divergences and
log-densities, and the flow wrapper.

Every quantity is checked against a closed form, in float64 unless the test is about float32:

- geometry: exp(x, log(x, y)) = y, log(x, exp(x, v)) = v inside the injectivity radius,
  |log(x, y)| = d(x, y) (half of it on SO(3), whose dist is the rotation angle), dlog against
  torch.func.jvp of log, the uniform samplers' moments (E[x x^T] = I / (d + 1) on S^d,
  E[q q^T] = I / 4 and E[R] = 0 on SO(3), angles of variance pi^2 / 3 on the torus) with tolerances of
  5 standard errors measured on the sample, and the volumes 2 pi, 4 pi, 2 pi^2, (2 pi)^2 and pi^2;
- paths: endpoints, d(x0, x_t) = kappa_t d(x0, x1), and the closed-form velocity against the jvp of
  x_t in t, for every manifold and scheduler;
- solvers: on S^2 the rotation field v(x) = A x (A skew) has x(t) = expm(t A) x0 and v = 3 t^2 A x has
  x(t) = expm(t^3 A) x0. Measured log2(error ratio) from 16 to 32 steps on the first, and with the
  stages' velocities carried to T_{x_n} by orthogonal projection instead of dlog (not what the solver
  does, shown for contrast):

      solver      dlog (as implemented)   projection
      euler            1.00                  1.00
      midpoint         2.00                  2.00
      rk4              4.00                  2.00

  so the tests assert |log2 ratio - order| < 0.2;
- likelihood: on S^2, v(x) = c (e_z - z x) gives z_t = tanh(c t + atanh z0) with the longitude fixed,
  so from the uniform source p_1(x) = (1 / 4 pi) (1 - z0^2) / (1 - z1^2) and div v = -2 c z; on the
  circle, v = a sin(theta) gives tan(theta_t / 2) = e^(a t) tan(theta_0 / 2); on SO(3) the left-invariant
  field q (0, w) is divergence-free. Measured: exact log-density error 5e-7 at rk4 nfe 64 (c = 1.5).
"""

from __future__ import annotations

import math
import time

import pytest
import torch

import flowmatch.manifolds as fm
from flowmatch.discrete.schedulers import make_scheduler
from flowmatch.errors import FlowmatchError
from flowmatch.flows.riemannian import RiemannianFlow
from flowmatch.manifolds import (
    SO3,
    Euclidean,
    FlatTorus,
    GeodesicPath,
    Manifold,
    Sphere,
    integrate_manifold,
    make_manifold,
    manifold_divergence,
    manifold_from_config,
    manifold_log_prob,
    matrix_to_quaternion,
    quaternion_multiply,
    quaternion_to_axis_angle,
    quaternion_to_matrix,
    riemannian_loss,
    sinc,
)
from flowmatch.models.tangent import FeatureMLP, TangentModel, tangent_mlp

F64 = torch.float64
COMPACT = [Sphere(2), Sphere(3), FlatTorus(2), SO3()]
ALL = [*COMPACT, Euclidean(3)]


def ids(m: Manifold) -> str:
    return repr(m)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def points(m: Manifold, n: int, seed: int) -> torch.Tensor:
    """n points in float64: uniform on compact manifolds, standard normal on R^d."""
    if isinstance(m, Euclidean):
        return torch.randn(n, m.dim, generator=gen(seed), dtype=F64)
    return m.random_uniform(n, gen(seed), dtype=F64)


def tangents(m: Manifold, x: torch.Tensor, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * m.proj(x, torch.randn(x.shape, generator=gen(seed), dtype=F64))


def within_se(samples: torch.Tensor, expected, k: float = 5.0) -> None:
    """The mean of ``samples`` (first dimension) is within k measured standard errors of ``expected``."""
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    expected = torch.as_tensor(expected, dtype=samples.dtype)
    assert ((mean - expected).abs() <= k * se + 1e-12).all(), (mean, expected, se)


# -- manifolds ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", ALL, ids=ids)
def test_exp_of_log_is_the_target_and_dist_is_the_log_length(m):
    x, y = points(m, 200, 0), points(m, 200, 1)
    v = m.log(x, y)
    assert torch.allclose(m.proj(x, v), v, atol=1e-14)
    assert m.dist(m.projx(m.exp(x, v)), y).max() < 1e-12
    length = v.norm(dim=1) * (2 if isinstance(m, SO3) else 1)  # SO(3): dist is the rotation angle, twice the S^3 arc
    assert torch.allclose(m.dist(x, y), length, atol=1e-13)
    assert torch.allclose(m.dist(x, y), m.dist(y, x), atol=1e-13)
    assert torch.allclose(
        m.cdist(x[:7], y[:5]),
        m.dist(x[:7, None].expand(7, 5, -1).reshape(35, -1), y[None, :5].expand(7, 5, -1).reshape(35, -1)).reshape(7, 5),
        atol=1e-13,
    )


@pytest.mark.parametrize("m", ALL, ids=ids)
def test_log_of_exp_is_the_tangent_vector_inside_the_injectivity_radius(m):
    x = points(m, 200, 2)
    v = tangents(m, x, 3)
    # the largest |v| for which exp_x(v) is reached by no shorter geodesic: pi on S^d, pi/2 on S^3/+-1,
    # pi per coordinate on the torus; R^d has none
    radius = {"sphere": math.pi, "so3": math.pi / 2, "torus": math.pi, "euclidean": 10.0}[m.name]
    if isinstance(m, FlatTorus):
        v = 0.99 * radius * torch.tanh(v)
    else:
        v = v / v.norm(dim=1, keepdim=True) * 0.99 * radius * torch.rand(200, 1, generator=gen(4), dtype=F64)
    assert torch.allclose(m.log(x, m.exp(x, v)), v, atol=1e-12)


@pytest.mark.parametrize("m", COMPACT, ids=ids)
def test_exp_stays_on_the_manifold_and_projections_are_orthogonal(m):
    x = points(m, 300, 5)
    y = m.exp(x, tangents(m, x, 6, scale=10.0))
    u = torch.randn(x.shape, generator=gen(7), dtype=F64)
    p = m.proj(x, u)
    assert torch.allclose(m.proj(x, p), p, atol=1e-15)
    assert ((u - p) * p).sum(1).abs().max() < 1e-13
    basis = m.tangent_basis(x)
    assert basis.shape == (300, m.dim, m.ambient_dim)
    assert torch.allclose(basis @ basis.transpose(1, 2), torch.eye(m.dim, dtype=F64).expand(300, -1, -1), atol=1e-14)
    assert torch.allclose(torch.einsum("nia,nib->nab", basis, basis) @ u[:, :, None], p[:, :, None], atol=1e-13)
    if isinstance(m, FlatTorus):
        assert ((y >= -math.pi) & (y < math.pi)).all()
    else:
        assert (y.norm(dim=1) - 1).abs().max() < 1e-14
        assert (x * p).sum(1).abs().max() < 1e-14
        assert torch.allclose(m.projx(3.0 * x), x, atol=1e-15)


def test_sphere_degenerate_cases_are_finite_and_exact():
    s = Sphere(2)
    x = points(s, 50, 8)
    assert s.log(x, x).abs().max() < 1e-15
    assert torch.allclose(s.exp(x, torch.zeros_like(x)), x)
    anti = s.log(x, -x)  # every direction is shortest: one is picked, of length pi, tangent
    assert torch.allclose(anti.norm(dim=1), torch.full((50,), math.pi, dtype=F64), atol=1e-14)
    assert (anti * x).sum(1).abs().max() < 1e-14
    assert torch.allclose(anti, math.pi * s.tangent_basis(x)[:, 0], atol=1e-14)  # a fixed choice
    assert torch.allclose(s.dist(x, -x), torch.full((50,), math.pi, dtype=F64), atol=1e-14)
    assert s.dist(s.exp(s.exp(x, anti), torch.zeros_like(x)), -x).max() < 1e-14
    # the half-angle distance is accurate far below sqrt(eps), where arccos <x, y> returns 0
    y = s.projx(s.exp(x, tangents(s, x, 9, 1.0) * 1e-9 / tangents(s, x, 9).norm(dim=1, keepdim=True)))
    assert torch.allclose(s.dist(x, y), torch.full((50,), 1e-9, dtype=F64), rtol=1e-6)
    r = torch.tensor([0.0, 1e-8, 0.02, 0.04, 1.0], dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(sinc(r).sum(), r)
    assert torch.allclose(sinc(r), torch.where(r == 0, 1.0, torch.sin(r) / r), rtol=1e-15, atol=0)
    # d sinc / dr = (r cos r - sin r) / r^2, which cancels for small r: there its series -r/3 + r^3/30 - r^5/840
    closed = (r * torch.cos(r) - torch.sin(r)) / r.clamp_min(1e-300) ** 2
    series = -r / 3 + r**3 / 30 - r**5 / 840
    assert torch.allclose(grad, torch.where(r < 0.05, series, closed), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("m", [Sphere(2), SO3(), FlatTorus(3), Euclidean(2)], ids=ids)
@pytest.mark.parametrize("distance", [1.0, 1e-3, 1e-7, 0.0])
def test_dlog_is_the_derivative_of_log(m, distance):
    x = points(m, 100, 10)
    v = tangents(m, x, 11)
    y = m.projx(m.exp(x, distance * v / v.norm(dim=1, keepdim=True)))
    w = tangents(m, y, 12)
    _, expected = torch.func.jvp(lambda p: m.log(x, p), (y,), (w,))
    assert torch.allclose(m.dlog(x, y, w), expected, atol=1e-11)


def test_so3_distance_is_the_rotation_angle_and_ignores_the_sign():
    so3 = SO3()
    axis = torch.nn.functional.normalize(torch.randn(50, 3, generator=gen(13), dtype=F64), dim=1)
    angle = math.pi * torch.rand(50, 1, generator=gen(14), dtype=F64)
    q = torch.cat((torch.cos(angle / 2), torch.sin(angle / 2) * axis), dim=1)
    identity = torch.tensor([[1.0, 0, 0, 0]], dtype=F64).expand(50, -1)
    assert torch.allclose(so3.dist(identity, q), angle[:, 0], atol=1e-13)
    assert torch.allclose(so3.dist(identity, -q), angle[:, 0], atol=1e-13)
    assert torch.allclose(so3.cdist(identity[:1], -q)[0], angle[:, 0], atol=1e-13)
    assert so3.dist(q, -q).max() < 1e-15 and so3.log(q, -q).abs().max() < 1e-15
    assert torch.allclose(quaternion_to_axis_angle(-q), angle * axis, atol=1e-13)
    # a relative rotation: dist(p, p q) = angle of q, whatever p
    p = points(so3, 50, 15)
    assert torch.allclose(so3.dist(p, quaternion_multiply(p, q)), angle[:, 0], atol=1e-12)


def test_quaternion_helpers_round_trip():
    so3 = SO3()
    q = points(so3, 500, 16)
    # include rotations by almost exactly pi (w ~ 0), where the other Shepperd pivots are needed
    q[:20, 0] = 1e-9
    q = so3.canonical(q)
    r = quaternion_to_matrix(q)
    eye = torch.eye(3, dtype=F64).expand(500, -1, -1)
    assert torch.allclose(r @ r.transpose(1, 2), eye, atol=1e-14)
    assert torch.allclose(torch.linalg.det(r), torch.ones(500, dtype=F64), atol=1e-14)
    assert torch.allclose(quaternion_to_matrix(-q), r)
    back = matrix_to_quaternion(r)
    assert so3.dist(back, q).max() < 1e-7 and (back[:, 0] >= 0).all()
    assert torch.allclose(back[20:], q[20:], atol=1e-14)
    # R v = q (0, v) q^*, and R(p q) = R(p) R(q)
    v = torch.randn(500, 3, generator=gen(17), dtype=F64)
    conj = q * torch.tensor([1.0, -1, -1, -1], dtype=F64)
    rotated = quaternion_multiply(quaternion_multiply(q, torch.cat((torch.zeros(500, 1, dtype=F64), v), 1)), conj)
    assert torch.allclose(rotated[:, 1:], (r @ v[:, :, None])[:, :, 0], atol=1e-14)
    p = points(so3, 500, 18)
    assert torch.allclose(quaternion_to_matrix(quaternion_multiply(p, q)), quaternion_to_matrix(p) @ r, atol=1e-14)
    # the rotation vector's matrix exponential is R
    omega = quaternion_to_axis_angle(q)
    zero = torch.zeros(500, dtype=F64)
    skew = torch.stack(
        (
            torch.stack((zero, -omega[:, 2], omega[:, 1]), -1),
            torch.stack((omega[:, 2], zero, -omega[:, 0]), -1),
            torch.stack((-omega[:, 1], omega[:, 0], zero), -1),
        ),
        dim=1,
    )
    assert torch.allclose(torch.linalg.matrix_exp(skew), r, atol=1e-12)
    assert (omega.norm(dim=1) <= math.pi + 1e-12).all()
    with pytest.raises(FlowmatchError, match=r"shape \(n, 3, 3\)"):
        matrix_to_quaternion(torch.eye(3))


def second_moments(x: torch.Tensor) -> torch.Tensor:
    """Per-sample outer products, flattened: (n, D * D)."""
    return (x[:, :, None] * x[:, None, :]).reshape(x.shape[0], -1)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_uniform_sphere_has_mean_zero_and_isotropic_second_moment(d):
    x = Sphere(d).random_uniform(20_000, gen(20 + d), dtype=F64)
    assert x.shape == (20_000, d + 1) and (x.norm(dim=1) - 1).abs().max() < 1e-15
    within_se(x, torch.zeros(d + 1))
    within_se(second_moments(x), (torch.eye(d + 1, dtype=F64) / (d + 1)).reshape(-1))


def test_uniform_torus_and_so3_moments():
    angles = FlatTorus(2).random_uniform(20_000, gen(24), dtype=F64)
    assert ((angles >= -math.pi) & (angles < math.pi)).all()
    within_se(angles, [0.0, 0.0])
    within_se(angles**2, [math.pi**2 / 3] * 2)  # the variance of U[-pi, pi)
    within_se(torch.cat((torch.cos(angles), torch.sin(angles)), 1), [0.0] * 4)
    q = SO3().random_uniform(20_000, gen(25), dtype=F64)
    assert (q[:, 0] >= 0).all()
    within_se(second_moments(q), (torch.eye(4, dtype=F64) / 4).reshape(-1))
    within_se(SO3().features(q), [0.0] * 9)  # Haar measure: E[R] = 0


def test_uniform_densities_are_the_inverse_volumes():
    x = torch.zeros(3, 2, dtype=F64)
    assert torch.allclose(FlatTorus(2).uniform_log_prob(x), torch.full((3,), -math.log(4 * math.pi**2), dtype=F64))
    for d, volume in [(1, 2 * math.pi), (2, 4 * math.pi), (3, 2 * math.pi**2)]:
        assert math.isclose(math.exp(-Sphere(d).uniform_log_prob(torch.zeros(1, d + 1))[0].item()), volume, rel_tol=1e-6)
    assert math.isclose(SO3().volume, math.pi**2)  # S^3 / {+-1}: half of 2 pi^2
    with pytest.raises(FlowmatchError, match="no uniform distribution"):
        Euclidean(2).random_uniform(3)
    with pytest.raises(FlowmatchError, match="no uniform distribution"):
        Euclidean(2).uniform_log_prob(torch.zeros(3, 2))


@pytest.mark.parametrize("m", ALL, ids=ids)
def test_wrapped_normal_is_a_standard_normal_in_the_tangent_space(m):
    mean = points(m, 1, 26)[0]
    scale = 0.3
    x = m.random_wrapped_normal(20_000, mean, scale, generator=gen(27))
    z = m.log(mean.expand(20_000, -1), x) / scale  # log inverts exp inside the injectivity radius
    assert torch.allclose(m.proj(mean.expand(20_000, -1), z), z, atol=1e-12)
    # in an orthonormal basis of T_mean the coordinates are N(0, I)
    coords = z @ m.tangent_basis(mean[None])[0].T
    within_se(coords, torch.zeros(m.dim))
    within_se(second_moments(coords), torch.eye(m.dim, dtype=F64).reshape(-1))
    if isinstance(m, SO3):
        assert (x[:, 0] >= 0).all()  # canonical


def _radial_integral(m: Manifold, mean: torch.Tensor, scale: float, upto: float = math.pi, nodes: int = 400) -> float:
    """The wrapped normal's mass within distance ``upto`` of ``mean``, by Gauss-Legendre in the distance theta
    (the S^d arc, whose volume element is vol(S^(d-1)) sin^(d-1)(theta) dtheta; on SO(3) the S^3 arc to the
    nearer of +-q, which is at most pi / 2: upto = pi / 2 holds every rotation once)."""
    import numpy as np

    x_, w_ = np.polynomial.legendre.leggauss(nodes)
    theta = torch.tensor((x_ + 1) * upto / 2, dtype=F64)
    weight = torch.tensor(w_ * upto / 2, dtype=F64)
    d = 3 if isinstance(m, SO3) else m.dim
    basis = m.tangent_basis(mean[None])[0, 0]  # a unit tangent at the mean: the points run along its geodesic
    x = torch.cos(theta)[:, None] * mean + torch.sin(theta)[:, None] * basis
    shell = 2 * math.pi ** (d / 2) / math.gamma(d / 2) * torch.sin(theta) ** (d - 1)
    return float((m.wrapped_normal_log_prob(x, mean, scale).exp() * shell * weight).sum())


def test_wrapped_normal_density_integrates_to_one_on_s2_and_t2():
    """A grid over the whole manifold, not aligned with the mean: equal-area cells (longitude x sin
    latitude) on S^2, a square grid on T^2 with the mean beside the seam."""
    n = 600
    lon = (torch.arange(n, dtype=F64) + 0.5) / n * 2 * math.pi - math.pi
    z = (torch.arange(n, dtype=F64) + 0.5) / n * 2 - 1
    lon, z = (g.reshape(-1) for g in torch.meshgrid(lon, z, indexing="ij"))
    r = (1 - z**2).sqrt()
    x = torch.stack((r * lon.cos(), r * lon.sin(), z), dim=1)
    mean = torch.tensor([0.3, -0.5, 0.8], dtype=F64)
    mean = mean / mean.norm()
    # at scale 1 the antipode's integrable singularity (mass e^(-pi^2 / 2) near it) costs the midpoint rule 2e-4
    for scale, tolerance in ((0.5, 1e-6), (1.0, 1e-3)):
        mass = float(Sphere(2).wrapped_normal_log_prob(x, mean, scale).exp().mean() * 4 * math.pi)
        assert abs(mass - 1) < tolerance, (scale, mass)
    angles = (torch.arange(400, dtype=F64) + 0.5) / 400 * 2 * math.pi - math.pi
    grid = torch.stack([g.reshape(-1) for g in torch.meshgrid(angles, angles, indexing="ij")], dim=1)
    for scale in (0.3, 1.0, 3.0):  # 3.0: the density sums 4 images a side, nearly uniform
        p = FlatTorus(2).wrapped_normal_log_prob(grid, torch.tensor([3.0, -1.0], dtype=F64), scale).exp()
        assert abs(float(p.mean()) * 4 * math.pi**2 - 1) < 1e-9, scale


@pytest.mark.parametrize("m", [Sphere(1), Sphere(2), Sphere(3), SO3()], ids=ids)
@pytest.mark.parametrize("scale", [0.3, 1.0, 2.5])
def test_wrapped_normal_density_integrates_to_one_radially(m, scale):
    """Several sheets of the exponential map at scale 2.5 (|v| beyond pi and 2 pi), with their Jacobian."""
    mean = points(m, 1, 60)[0]
    assert abs(_radial_integral(m, mean, scale, math.pi / 2 if isinstance(m, SO3) else math.pi) - 1) < 1e-9


def test_wrapped_normal_on_the_circle_is_the_same_on_s1_and_t1():
    a = torch.linspace(-math.pi, math.pi - 1e-3, 101, dtype=F64)
    circle = Sphere(1).wrapped_normal_log_prob(torch.stack((a.cos(), a.sin()), 1), torch.tensor([0.0, 1.0], dtype=F64), 1.7)
    torus = FlatTorus(1).wrapped_normal_log_prob(a[:, None], torch.tensor([math.pi / 2], dtype=F64), 1.7)
    torch.testing.assert_close(circle, torus, atol=1e-12, rtol=0)


@pytest.mark.parametrize("m", [Sphere(2), SO3(), FlatTorus(2)], ids=ids)
def test_wrapped_normal_samples_follow_the_density(m):
    """P(d(mean, x) <= rho) of 40,000 draws against the density's mass in that ball, within 4 binomial
    standard errors (the torus: |angle 1 - mean 1| <= rho, whose mass is a 1-D grid sum)."""
    mean, scale = points(m, 1, 61)[0], 0.8
    x = m.random_wrapped_normal(40_000, mean, scale, generator=gen(62))
    assert (m.check(x) - x).abs().max() < 1e-12  # on the manifold, canonical
    for rho in (0.4, 1.0, 2.0):
        if isinstance(m, FlatTorus):
            drawn = float((FlatTorus(1).log(mean[None, :1], x[:, :1]).abs() <= rho).double().mean())
            a = (torch.arange(20_000, dtype=F64) + 0.5) / 20_000 * 2 * rho - rho
            mass = float(FlatTorus(1).wrapped_normal_log_prob(mean[0] + a[:, None], mean[:1], scale).exp().mean() * 2 * rho)
        else:
            arc = m.dist(mean.expand_as(x), x) / (2 if isinstance(m, SO3) else 1)  # SO(3): the S^3 arc to the nearer sign
            drawn = float((arc <= rho / 2 if isinstance(m, SO3) else arc <= rho).double().mean())
            mass = _radial_integral(m, mean, scale, rho / 2 if isinstance(m, SO3) else rho)
        assert abs(drawn - mass) < 4 * math.sqrt(mass * (1 - mass) / len(x)), (rho, drawn, mass)


def test_wrapped_normal_density_refuses_bad_input():
    s, mean = Sphere(2), torch.tensor([0.0, 0.0, 1.0])
    for scale in (0, -1.0, float("nan"), "a"):
        with pytest.raises(FlowmatchError, match="scale must be a positive number"):
            s.wrapped_normal_log_prob(mean[None], mean, scale)
    with pytest.raises(FlowmatchError, match="points row 0 has norm 2, not 1"):
        s.wrapped_normal_log_prob(2 * mean[None], mean, 1.0)
    with pytest.raises(FlowmatchError, match=r"mean must be one point or one per sample \(1\), got 2 rows"):
        s.wrapped_normal_log_prob(mean[None], torch.stack((mean, mean)), 1.0)
    with pytest.raises(FlowmatchError, match="scale 1000.0 is too large"):
        FlatTorus(2).wrapped_normal_log_prob(torch.zeros(1, 2), torch.zeros(2), 1000.0)
    lp = s.wrapped_normal_log_prob(torch.stack((mean, -mean)).double(), mean, 1.0)
    assert lp[0] == math.inf and lp[1] > 30  # the shells |v| = 2 pi and pi collapse onto the mean and the antipode
    torch.testing.assert_close(  # R^d: the normal itself
        Euclidean(2).wrapped_normal_log_prob(torch.tensor([[1.0, 2.0]], dtype=F64), torch.zeros(2, dtype=F64), 2.0),
        torch.tensor([-5 / 8 - math.log(8 * math.pi)], dtype=F64),
    )


def test_features_are_smooth_and_sign_invariant():
    angles = points(FlatTorus(2), 10, 28)
    assert torch.allclose(FlatTorus(2).features(angles), torch.cat((angles.cos(), angles.sin()), 1))
    assert torch.allclose(FlatTorus(2).features(angles + 2 * math.pi), FlatTorus(2).features(angles))
    q = points(SO3(), 10, 29)
    assert SO3().features(q).shape == (10, 9) and torch.allclose(SO3().features(-q), SO3().features(q))
    for m in ALL:
        assert m.features(points(m, 4, 30)).shape == (4, m.feature_dim)


def test_check_returns_canonical_points_and_names_the_problem():
    s = Sphere(2)
    x = points(s, 5, 31)
    assert torch.equal(s.check(x), s.projx(x))
    bad = x.clone()
    bad[3] *= 1.2
    with pytest.raises(FlowmatchError, match=r"row 3 has norm 1\.2, not 1"):
        s.check(bad)
    with pytest.raises(FlowmatchError, match=r"shape \(n, 3\), got \(5, 4\)"):
        s.check(torch.zeros(5, 4))
    with pytest.raises(FlowmatchError, match=r"shape \(n, 3\), got \(3,\)"):
        s.check(x[0])
    nan = x.clone()
    nan[2, 1] = float("nan")
    with pytest.raises(FlowmatchError, match="row 2 has a non-finite value"):
        s.check(nan)
    with pytest.raises(FlowmatchError, match="numeric array"):
        s.check("north pole")
    q = points(SO3(), 5, 32)
    flipped = -q
    assert (SO3().check(flipped)[:, 0] >= 0).all() and torch.allclose(SO3().check(flipped), q)
    flipped[3] *= 1.2
    with pytest.raises(FlowmatchError, match=r"^quaternion row 3 has norm 1\.2, not 1"):
        SO3().check(flipped)
    with pytest.raises(FlowmatchError, match="row 1, column 0 is 180, outside"):
        FlatTorus(2).check([[0.0, 1.0], [180.0, 0.0]])
    # angles in [0, 2 pi) are wrapped; integers are converted
    assert torch.allclose(FlatTorus(1).check([[1.5 * math.pi]]), torch.tensor([[-0.5 * math.pi]]))
    assert Euclidean(2).check([[1, 2]]).dtype == torch.get_default_dtype()


def test_make_manifold_and_configs():
    assert make_manifold("sphere") == Sphere(2) and make_manifold("torus", 3) == FlatTorus(3)
    assert make_manifold("so3") == SO3() and make_manifold("SO3", 3) == SO3()
    for m in ALL:
        assert manifold_from_config(m.to_config()) == m
    assert Sphere(2).to_config() == {"name": "sphere", "dim": 2}
    with pytest.raises(FlowmatchError, match="unknown manifold 'hyperbolic'; choose one of euclidean, sphere, torus, so3"):
        make_manifold("hyperbolic")
    with pytest.raises(FlowmatchError, match="needs a dimension"):
        make_manifold("euclidean")
    with pytest.raises(FlowmatchError, match="dimension 3"):
        make_manifold("so3", 4)
    with pytest.raises(FlowmatchError, match="positive integer"):
        Sphere(0)
    with pytest.raises(FlowmatchError, match="unknown manifold config keys: radius"):
        manifold_from_config({"name": "sphere", "dim": 2, "radius": 2})


def test_package_exports_every_name_lazily():
    assert fm.Sphere is Sphere and fm.integrate_manifold is integrate_manifold
    assert {"GeodesicPath", "SO3", "riemannian_loss", "manifold_log_prob"} <= set(fm.__all__)
    assert not {"load_manifold_data", "MANIFOLD_SETS", "RiemannianFlow"} & set(fm.__all__)  # geometry only: data and flows live above it


# -- geodesic paths --------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", ALL, ids=ids)
@pytest.mark.parametrize("scheduler", ["linear", "polynomial", "cosine"])
def test_geodesic_path_velocity_is_the_time_derivative(m, scheduler):
    x0, x1 = points(m, 100, 40), points(m, 100, 41)
    path = GeodesicPath(m, scheduler)
    kappa = make_scheduler(scheduler)
    t = torch.rand(100, generator=gen(42), dtype=F64) * 0.98 + 0.01
    sample = path.sample(x0, x1, t)
    _, derivative = torch.func.jvp(lambda s: path.sample(x0, x1, s).x_t, (t,), (torch.ones_like(t),))
    assert torch.allclose(sample.velocity, derivative, atol=1e-12)
    assert torch.allclose(m.proj(sample.x_t, sample.velocity), sample.velocity, atol=1e-13)
    # on the shortest geodesic, at the scheduled fraction of the way, moving at kappa'_t d(x0, x1)
    total = m.log(x0, x1).norm(dim=1)
    k, dk = kappa.kappa(t), kappa.d_kappa(t)
    assert torch.allclose(m.log(x0, sample.x_t).norm(dim=1), k * total, atol=1e-12)
    assert torch.allclose(m.log(sample.x_t, x1).norm(dim=1), (1 - k) * total, atol=1e-12)
    assert torch.allclose(sample.velocity.norm(dim=1), dk * total, atol=1e-12)
    assert m.dist(path.sample(x0, x1, 0.0).x_t, x0).max() < 1e-14
    assert m.dist(m.projx(path.sample(x0, x1, 1.0).x_t), x1).max() < 1e-12


def test_geodesic_path_on_r_d_is_the_straight_line():
    x0, x1 = points(Euclidean(3), 10, 43), points(Euclidean(3), 10, 44)
    t = torch.rand(10, generator=gen(45), dtype=F64)
    sample = GeodesicPath(Euclidean(3)).sample(x0, x1, t)
    assert torch.allclose(sample.x_t, (1 - t[:, None]) * x0 + t[:, None] * x1)
    assert torch.allclose(sample.velocity, x1 - x0) and torch.equal(sample.t, t)


def test_geodesic_path_refuses_bad_input():
    path = GeodesicPath(Sphere(2))
    x = points(Sphere(2), 4, 46)
    with pytest.raises(FlowmatchError, match="shape \\(n, 3\\)"):
        path.sample(x, x[:3], 0.5)
    with pytest.raises(FlowmatchError, match="t must be a number or a tensor of shape \\(4,\\)"):
        path.sample(x, x, torch.zeros(3))
    with pytest.raises(FlowmatchError, match="unknown scheduler"):
        GeodesicPath(Sphere(2), "quadratic")
    with pytest.raises(FlowmatchError, match="needs a Manifold"):
        GeodesicPath("sphere")  # type: ignore[arg-type]


# -- solvers ---------------------------------------------------------------------------------------------

A = torch.tensor([[0.0, -1.3, 0.4], [1.3, 0.0, -0.7], [-0.4, 0.7, 0.0]], dtype=F64)  # skew-symmetric


def rotation(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v(x) = A x, tangent to S^2 since <x, A x> = 0; x(t) = expm(t A) x0."""
    return x @ A.to(x.dtype).T


def accelerating_rotation(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v(x, t) = 3 t^2 A x; x(t) = expm(t^3 A) x0."""
    return 3 * t**2 * rotation(x, t)


class Counter:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, x, t):
        self.calls += 1
        assert t.dim() == 0 and t.dtype == x.dtype
        return self.f(x, t)


@pytest.mark.parametrize("solver, stages", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_solver_makes_exactly_nfe_evaluations(solver, stages):
    x0 = points(Sphere(2), 5, 50)
    counter = Counter(rotation)
    sol = integrate_manifold(counter, x0, Sphere(2), solver=solver, nfe=3 * stages)
    assert counter.calls == sol.nfe == 3 * stages
    if stages > 1:
        with pytest.raises(FlowmatchError, match=f"not a multiple of {stages}"):
            integrate_manifold(rotation, x0, Sphere(2), solver=solver, nfe=3 * stages + 1)


def test_solver_refuses_bad_arguments():
    x0 = points(Sphere(2), 5, 51)
    with pytest.raises(FlowmatchError, match="unknown manifold solver 'dopri5'"):
        integrate_manifold(rotation, x0, Sphere(2), solver="dopri5")
    with pytest.raises(FlowmatchError, match="shape \\(n, 3\\)"):
        integrate_manifold(rotation, x0[:, :2], Sphere(2))
    with pytest.raises(FlowmatchError, match="returned shape"):
        integrate_manifold(lambda x, t: x[:, :2], x0, Sphere(2), nfe=4)
    with pytest.raises(FlowmatchError, match="must differ"):
        integrate_manifold(rotation, x0, Sphere(2), t0=1.0, t1=1.0)


@pytest.mark.parametrize("solver, order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
@pytest.mark.parametrize("field, power", [(rotation, 1), (accelerating_rotation, 3)])
def test_solver_order_on_the_sphere(solver, order, field, power):
    x0 = points(Sphere(2), 20, 52)
    exact = x0 @ torch.linalg.matrix_exp(A).T  # at t = 1 both fields have turned by expm(A)
    stages = {"euler": 1, "midpoint": 2, "rk4": 4}[solver]
    errors = [
        (integrate_manifold(field, x0, Sphere(2), solver=solver, nfe=steps * stages).x - exact).norm(dim=1).max().item()
        for steps in (16, 32)
    ]
    assert abs(math.log2(errors[0] / errors[1]) - order) < 0.2, errors


def test_solver_keeps_points_on_the_sphere_in_float64_and_float32():
    x0 = points(Sphere(2), 50, 53)
    sol = integrate_manifold(rotation, x0, Sphere(2), solver="euler", nfe=100, return_trajectory=True)
    assert sol.trajectory is not None and sol.times is not None
    assert (
        sol.trajectory.shape == (101, 50, 3)
        and torch.allclose(sol.trajectory[0], x0, atol=1e-15)
        and torch.equal(sol.trajectory[-1], sol.x)
    )
    assert torch.allclose(sol.times, torch.linspace(0, 1, 101, dtype=F64))
    assert (sol.trajectory.norm(dim=2) - 1).abs().max() < 1e-12
    sol32 = integrate_manifold(rotation, x0.float(), Sphere(2), solver="rk4", nfe=400)
    assert sol32.x.dtype == torch.float32 and (sol32.x.norm(dim=1) - 1).abs().max() < 1e-6


def test_solver_follows_geodesics_exactly_and_runs_backward():
    torus = FlatTorus(2)
    x0 = points(torus, 20, 54)
    speed = torch.tensor([2.5, -7.0], dtype=F64)
    sol = integrate_manifold(lambda x, t: speed.expand_as(x), x0, torus, solver="euler", nfe=3)
    assert torus.dist(sol.x, torus.projx(x0 + speed)).max() < 1e-14
    x0 = points(Sphere(2), 20, 55)
    forward = integrate_manifold(rotation, x0, Sphere(2), solver="rk4", nfe=256)
    assert (forward.x - x0 @ torch.linalg.matrix_exp(A).T).norm(dim=1).max() < 2e-9  # rk4 error at 64 steps: 1.2e-9
    back = integrate_manifold(rotation, forward.x, Sphere(2), solver="rk4", nfe=256, t0=1.0, t1=0.0)
    assert (back.x - x0).norm(dim=1).max() < 4e-9


def test_solver_on_so3_is_continuous_through_the_sign_flip():
    """q' = q (0, omega) has q(t) = q0 (cos |omega| t, sin(|omega| t) omega / |omega|): a great circle of S^3
    along which w changes sign; projx only normalises, so the trajectory does not jump to -q."""
    so3 = SO3()
    q0 = points(so3, 30, 56)
    omega = torch.tensor([1.2, -0.5, 1.6], dtype=F64)  # |omega| = 2.06: every trajectory turns by 2.06 rad on S^3
    field = lambda q, t: so3.to_tangent(q, omega.expand(q.shape[0], -1))  # noqa: E731
    sol = integrate_manifold(field, q0, so3, solver="rk4", nfe=80, return_trajectory=True)
    turn = omega.norm()
    expected = quaternion_multiply(q0, torch.cat((torch.cos(turn).reshape(1), torch.sin(turn) * omega / turn)))
    assert (sol.x - expected).norm(dim=1).max() < 1e-12  # a geodesic: exact up to rounding
    assert sol.trajectory is not None
    steps = (sol.trajectory[1:] - sol.trajectory[:-1]).norm(dim=2)
    assert steps.max() < 1.01 * turn / 20
    assert (sol.trajectory[..., 0] < 0).any()  # some trajectories did cross w = 0


# -- divergence and log-densities ------------------------------------------------------------------------

C = 1.5
EZ = torch.tensor([0.0, 0.0, 1.0], dtype=F64)


def polar_flow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v(x) = c (e_z - z x), the projected gradient of the height z: dz/dt = c (1 - z^2), div v = -2 c z."""
    return C * (EZ.to(x.dtype) - x[:, 2:3] * x)


def polar_log_prob(x1: torch.Tensor) -> torch.Tensor:
    """log p_1 from the uniform source: z0 = tanh(atanh z1 - c), p_1 = (1 / 4 pi) (1 - z0^2) / (1 - z1^2)."""
    z1 = x1[:, 2]
    z0 = torch.tanh(torch.atanh(z1) - C)
    return -math.log(4 * math.pi) + torch.log((1 - z0**2) / (1 - z1**2))


def test_divergence_is_the_riemannian_one_of_the_projected_field():
    s = Sphere(2)
    x = points(s, 100, 60)
    t = torch.tensor(0.3, dtype=F64)
    v, div = manifold_divergence(polar_flow, x, t, s)
    assert torch.allclose(v, polar_flow(x, t)) and torch.allclose(div, -2 * C * x[:, 2], atol=1e-13)
    # a normal component in the raw output is projected away before differentiating
    _, div_raw = manifold_divergence(lambda y, t: polar_flow(y, t) + (y[:, :1] ** 2 + 3) * y, x, t, s)
    assert torch.allclose(div_raw, div, atol=1e-13)
    # a field that does not depend on x: zero
    _, div_const = manifold_divergence(lambda y, t: torch.ones_like(y.detach()), points(FlatTorus(2), 5, 61), t, FlatTorus(2))
    assert torch.equal(div_const, torch.zeros(5, dtype=F64))
    with pytest.raises(FlowmatchError, match="probes must have shape"):
        manifold_divergence(polar_flow, x, t, s, probes=torch.zeros(3, 100, 2))


def test_hutchinson_divergence_is_unbiased():
    s = Sphere(2)
    x = points(s, 10, 62)
    t = torch.tensor(0.0, dtype=F64)
    _, exact = manifold_divergence(polar_flow, x, t, s)
    probes = torch.randint(0, 2, (40, 50, 10, 3), generator=gen(63)).to(F64) * 2 - 1
    estimates = torch.stack([manifold_divergence(polar_flow, x, t, s, probes=p)[1] for p in probes])
    assert estimates.std(0).max() > 0.1  # really a random estimate
    within_se(estimates, exact)


def test_log_prob_on_the_sphere_matches_the_closed_form():
    s = Sphere(2)
    x1 = points(s, 200, 64)
    expected = polar_log_prob(x1)
    exact = manifold_log_prob(polar_flow, x1, s, base_log_prob=s.uniform_log_prob, nfe=64)
    assert exact.shape == (200,) and (exact - expected).abs().max() < 2e-6
    hutchinson = manifold_log_prob(polar_flow, x1, s, base_log_prob=s.uniform_log_prob, nfe=64, probes=4, seed=1)
    noise = hutchinson - exact  # the same trajectories: only the estimator's noise differs
    assert noise.std() > 0.01
    within_se(noise, 0.0)
    within_se(hutchinson - expected, 0.0)  # the discretisation error (< 2e-6) is far below the noise
    again = manifold_log_prob(polar_flow, x1, s, base_log_prob=s.uniform_log_prob, nfe=64, probes=4, seed=1)
    assert torch.equal(again, hutchinson)


def test_log_prob_on_the_torus_matches_push_forwards():
    torus = FlatTorus(2)
    x1 = points(torus, 200, 65)
    constant = manifold_log_prob(
        lambda x, t: torch.tensor([0.7, -2.0], dtype=F64).expand_as(x), x1, torus, base_log_prob=torus.uniform_log_prob, nfe=8
    )
    assert torch.allclose(constant, torch.full((200,), -2 * math.log(2 * math.pi), dtype=F64), atol=1e-14)
    # theta' = a sin(theta): tan(theta_t / 2) = e^(a t) tan(theta_0 / 2), so
    # d theta_0 / d theta_1 = e^-a / (cos^2(theta_1 / 2) + e^(-2a) sin^2(theta_1 / 2)); the second angle turns rigidly
    a = 1.2
    field = lambda x, t: torch.stack((a * torch.sin(x[:, 0]), torch.full_like(x[:, 1], 0.4)), dim=1)  # noqa: E731
    log_prob = manifold_log_prob(field, x1, torus, base_log_prob=torus.uniform_log_prob, nfe=64)
    half = x1[:, 0] / 2
    jacobian = math.exp(-a) / (torch.cos(half) ** 2 + math.exp(-2 * a) * torch.sin(half) ** 2)
    assert (log_prob - (-2 * math.log(2 * math.pi) + torch.log(jacobian))).abs().max() < 1e-6


def test_left_invariant_field_on_so3_is_divergence_free():
    so3 = SO3()
    q = points(so3, 100, 66)
    w = torch.tensor([0.3, -1.1, 0.8], dtype=F64)
    field = lambda x, t: quaternion_multiply(x, torch.cat((torch.zeros(1, dtype=F64), w)).expand(x.shape[0], -1))  # noqa: E731
    _, div = manifold_divergence(field, q, torch.tensor(0.0, dtype=F64), so3)
    assert div.abs().max() < 1e-13
    log_prob = manifold_log_prob(field, q, so3, base_log_prob=so3.uniform_log_prob, nfe=8)
    assert torch.allclose(log_prob, torch.full((100,), -2 * math.log(math.pi), dtype=F64), atol=1e-13)


def test_log_prob_refuses_bad_arguments():
    s = Sphere(2)
    x = points(s, 4, 67)
    with pytest.raises(FlowmatchError, match="probes must be a non-negative integer"):
        manifold_log_prob(polar_flow, x, s, base_log_prob=s.uniform_log_prob, nfe=4, probes=-1)
    with pytest.raises(FlowmatchError, match="one log-density per point"):
        manifold_log_prob(polar_flow, x, s, base_log_prob=lambda y: y, nfe=4)
    with pytest.raises(FlowmatchError, match="row 0 has norm 2"):
        manifold_log_prob(polar_flow, 2 * x, s, base_log_prob=s.uniform_log_prob, nfe=4)


# -- models, loss and the flow ---------------------------------------------------------------------------


@pytest.mark.parametrize("m", ALL, ids=ids)
def test_tangent_model_outputs_tangent_vectors(m):
    torch.manual_seed(0)
    model = tangent_mlp(m, width=16, depth=2).double()
    x = points(m, 8, 70)
    v = model(x, torch.full((8,), 0.5, dtype=F64))
    assert v.shape == x.shape and torch.allclose(m.proj(x, v), v, atol=1e-14)
    if isinstance(m, SO3):  # a field on rotations flips sign with the quaternion
        assert torch.allclose(model(-x, 0.5), -v, atol=1e-14)
    with pytest.raises(FlowmatchError, match=f"must output shape \\(n, {m.output_dim}\\)"):
        TangentModel(FeatureMLP(m.feature_dim, m.output_dim + 1, width=8, depth=1), m).double()(x, 0.5)


def test_riemannian_loss_is_the_mean_squared_tangent_error():
    torch.manual_seed(0)
    s = Sphere(2)
    model = tangent_mlp(s, width=16, depth=2).double()
    path = GeodesicPath(s)
    x0, x1 = points(s, 32, 71), points(s, 32, 72)
    t = torch.rand(32, generator=gen(73), dtype=F64)
    loss = riemannian_loss(model, path, x0, x1, t)
    sample = path.sample(x0, x1, t)
    assert torch.allclose(loss, ((model(sample.x_t, t) - sample.velocity) ** 2).sum(1).mean())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # the conditional velocity itself has zero loss
    assert riemannian_loss(lambda x, t: path.sample(x0, x1, t).velocity, path, x0, x1, t) == 0


@pytest.mark.parametrize("m", COMPACT[:1] + COMPACT[2:], ids=ids)
def test_flow_density_integrates_to_one(m):
    """E_uniform[p / u] = 1 for the push-forward of the uniform source by any field: checks the
    divergence, the solver and the backward integration together on a random network."""
    torch.manual_seed(1)
    net = FeatureMLP(m.feature_dim, m.output_dim, width=32, depth=2)
    with torch.no_grad():
        net.body[-1].weight.mul_(8.0)  # a field that moves mass a lot
    flow = RiemannianFlow(TangentModel(net, m).double(), m)
    x = m.random_uniform(1000, gen(74), dtype=F64)
    ratio = torch.exp(flow.log_prob(x, nfe=32) - m.uniform_log_prob(x))
    assert ratio.std() > 0.2  # far from uniform
    within_se(ratio, 1.0)


def test_flow_learns_to_move_mass_to_the_north_pole():
    start = time.perf_counter()
    torch.manual_seed(2)
    s = Sphere(2)
    model = tangent_mlp(s, width=64, depth=2)
    flow = RiemannianFlow(model, s)
    north = torch.tensor([0.0, 0.0, 1.0])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = gen(75)
    for _ in range(150):
        x1 = s.random_wrapped_normal(256, north, 0.3, generator=generator)
        loss = flow.loss(x1, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    samples = flow.generate(500, nfe=16, seed=3)
    assert samples.dtype == torch.float32 and (samples.norm(dim=1) - 1).abs().max() < 1e-6
    assert samples[:, 2].mean() > 0.7  # uniform: 0; the target: E[cos(0.3 |z|)] = 0.91
    poles = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    north_lp, south_lp = flow.log_prob(poles, nfe=16).tolist()
    assert north_lp > 0.0 > south_lp  # 1 / (4 pi) is log -2.5
    assert time.perf_counter() - start < 30


def test_flow_generate_sources_and_canonical_output():
    so3 = SO3()
    flow = RiemannianFlow(tangent_mlp(so3, width=8, depth=1), so3)
    q = flow.generate(50, nfe=4, seed=0)
    assert q.shape == (50, 4) and (q[:, 0] >= 0).all()
    assert torch.equal(flow.generate(50, nfe=4, seed=0), q)
    source = points(so3, 50, 76).float()
    assert torch.allclose(flow.generate(50, nfe=4, source=source), flow.generate(50, nfe=4, source=lambda n, g: source))
    with pytest.raises(FlowmatchError, match="the source gave 50 points for 10 samples"):
        flow.generate(10, nfe=4, source=source)
    euclid = RiemannianFlow(tangent_mlp(Euclidean(2), width=8, depth=1), Euclidean(2))
    with pytest.raises(FlowmatchError, match="no uniform distribution"):
        euclid.generate(5, nfe=4)
    assert euclid.generate(5, nfe=4, source=lambda n, g: torch.randn(n, 2, generator=g)).shape == (5, 2)
