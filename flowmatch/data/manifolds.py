"""Data on manifolds: built-in synthetic sets with closed-form densities, and points read from user files.

Every set is a :class:`ManifoldData`: its manifold, a sampler ``sample(n, generator)`` and, where the
density is known in closed form, ``log_prob(x)``: the log-density with respect to the manifold's volume
measure, the one :meth:`Manifold.uniform_log_prob` uses, so that ``log_prob - uniform_log_prob`` is the
log of dp/du for the uniform law u. Those measures are the area on S^2 (total 4 pi), Lebesgue measure
on the torus [-pi, pi)^2 (total 4 pi^2), and on SO(3), seen as unit quaternions up to sign, the volume
of S^3/± (total pi^2, half the area 2 pi^2 of S^3).

Built-in sets (:data:`MANIFOLD_SETS`, name -> builder):

- ``S2-vmf``: a mixture of 5 von Mises-Fisher laws on S^2, p(x) = sum_k w_k C_3(kappa_k) exp(kappa_k mu_k.x)
  with C_3(kappa) = kappa / (4 pi sinh kappa) (:class:`VonMisesFisherMixture`).
- ``S2-checkerboard``: uniform on the black cells of an 8 x 4 checkerboard in the equal-area coordinates
  (longitude, z = sin latitude); p = 2 / (4 pi) on the black half, 0 elsewhere (:class:`SphereCheckerboard`).
- ``T2-wrapped``: a mixture of 5 wrapped Gaussians on T^2 with diagonal covariances, some straddling the
  seam at ±pi (:class:`WrappedGaussianMixture`).
- ``SO3-multimodal``: an antipodally symmetric mixture of 5 von Mises-Fisher laws on S^3 in quaternions,
  concentrated around 5 rotations (:class:`AntipodalVMFMixture`).

Besides these, :class:`WrappedNormal` is the law exp_mean(N(0, scale^2 I) in T_mean M) with its exact density,
the wrapped Gaussian source of a flow (``source="wrapped-gaussian:SCALE"``).

Each set's differential entropy H(p) = -E_p[log p] is estimated by Monte Carlo, :meth:`ManifoldData.entropy`
(measured values in :data:`ENTROPY`). :func:`load_manifold_data` gives a built-in set by name or the points
of a user file (:class:`PointSet`): latitude/longitude (-> S^2), angles (-> torus) or quaternions (-> SO(3)),
as CSV with a header or as .npy, with one :class:`FlowmatchError` naming the row and column of any bad value.

Example::

    data = load_manifold_data("S2-vmf")
    x = data.sample(1000, generator=0)          # (1000, 3) unit vectors, float32
    nll_floor, se = data.entropy()              # H(p) in nats and its standard error
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import special

from flowmatch.data.files import MIN_ROWS, is_number, read_numpy
from flowmatch.data.tables import read_table
from flowmatch.data.toy import check_count, check_seed, did_you_mean, make_generator
from flowmatch.errors import FlowmatchError
from flowmatch.manifolds.manifolds import Manifold, make_manifold
from flowmatch.storage import reading

#: Largest allowed deviation of a quaternion's (or a unit vector's) norm from 1 in a user file; rows
#: within it are normalised.
NORM_TOLERANCE = 1e-3


#: Header names (compared in lower case) recognised as latitude, longitude and quaternion columns.
LATITUDE_NAMES = ("lat", "latitude")
LONGITUDE_NAMES = ("lon", "lng", "long", "longitude")
QUATERNION_NAMES = (("w", "x", "y", "z"), ("qw", "qx", "qy", "qz"))
UNITS = ("degrees", "radians")


# -- helpers -------------------------------------------------------------------------------------------
def wrap_angle(theta: torch.Tensor) -> torch.Tensor:
    """Angles mapped to [-pi, pi) by theta - 2 pi floor((theta + pi) / 2 pi), exactly in theta's dtype
    (a value that rounds up to pi is sent to -pi)."""
    wrapped = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
    return torch.where(wrapped >= math.pi, wrapped - 2 * math.pi, wrapped)


def latlon_to_sphere(lat: torch.Tensor, lon: torch.Tensor) -> torch.Tensor:
    """Unit vectors (cos phi cos lambda, cos phi sin lambda, sin phi) of latitude phi and longitude lambda
    in radians: (n, 3)."""
    return torch.stack([torch.cos(lat) * torch.cos(lon), torch.cos(lat) * torch.sin(lon), torch.sin(lat)], dim=-1)


def sphere_to_latlon(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(latitude, longitude) in radians of points x (n, 3) on S^2: phi = asin z in [-pi/2, pi/2] and
    lambda = atan2(y, x) in [-pi, pi] (undefined at the poles, where it is 0)."""
    lat = torch.asin(x[:, 2].clamp(-1.0, 1.0))
    return lat, torch.atan2(x[:, 1], x[:, 0])


def _householder(mean: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply the reflection H = I - 2 u u^T / |u|^2, u = e_last - mean, which maps e_last to ``mean``
    (and is the identity when mean = e_last): points drawn around the last axis go around ``mean``."""
    u = -mean.clone()
    u[-1] += 1.0
    norm2 = float(u @ u)
    if norm2 < 1e-24:
        return x
    return x - (2.0 / norm2) * (x @ u)[:, None] * u[None, :]


def vmf_log_normaliser(kappa: float, p: int) -> float:
    """log C_p(kappa) + kappa, where C_p(kappa) = kappa^(p/2 - 1) / ((2 pi)^(p/2) I_{p/2-1}(kappa)) is the
    normaliser of the von Mises-Fisher density C_p exp(kappa mu.x) on S^{p-1} in R^p (w.r.t. its area).

    Computed with the exponentially scaled Bessel function ive(v, k) = exp(-k) I_v(k), so that
    log f(x) = [log C_p + kappa] + kappa (mu.x - 1) never overflows. Special cases: on S^2 (p = 3)
    C_3 = kappa / (4 pi sinh kappa); on S^3 (p = 4) C_4 = kappa / (4 pi^2 I_1(kappa)).
    """
    v = p / 2 - 1
    return v * math.log(kappa) - (p / 2) * math.log(2 * math.pi) - math.log(float(special.ive(v, kappa)))


def _vmf_cosines(kappa: float, p: int, n: int, g: torch.Generator) -> torch.Tensor:
    """n draws of w = mu.x for x ~ vMF(mu, kappa) on S^{p-1}, float64.

    On S^2 (p = 3) w has density kappa e^{kappa w} / (2 sinh kappa) on [-1, 1], whose CDF inverts in
    closed form: w = 1 + log(u + (1 - u) e^{-2 kappa}) / kappa for u ~ U(0, 1).

    Otherwise by Wood's (1994) rejection sampler: with m = p - 1, b = m / (2 kappa + sqrt(4 kappa^2 + m^2))
    (the root of the envelope's tuning equation, written so that it does not cancel for large kappa),
    x0 = (1 - b) / (1 + b) and c = kappa x0 + m log(1 - x0^2), propose Z ~ Beta(m/2, m/2) and
    W = (1 - (1 + b) Z) / (1 - (1 - b) Z), and accept W when kappa W + m log(1 - x0 W) - c >= log U,
    U ~ U(0, 1). The accepted W has density proportional to e^{kappa w} (1 - w^2)^{(m - 2)/2}, the law
    of mu.x. Beta(m/2, m/2) is drawn as A / (A + B) with A, B independent chi-square(m) variables (sums
    of m squared standard normals), so that every draw comes from the generator.
    """
    device = g.device
    if p == 3:
        u = torch.rand(n, generator=g, device=device, dtype=torch.float64)
        return 1.0 + torch.log(u + (1.0 - u) * math.exp(-2.0 * kappa)) / kappa
    m = p - 1
    b = m / (2.0 * kappa + math.sqrt(4.0 * kappa**2 + m**2))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + m * math.log(1.0 - x0**2)
    accepted: list[torch.Tensor] = []
    count = 0
    while count < n:
        size = max(int(1.3 * (n - count)), 16)
        a = torch.randn(size, m, generator=g, device=device, dtype=torch.float64).pow(2).sum(1)
        bb = torch.randn(size, m, generator=g, device=device, dtype=torch.float64).pow(2).sum(1)
        z = a / (a + bb)
        w = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        u = torch.rand(size, generator=g, device=device, dtype=torch.float64)
        keep = kappa * w + m * torch.log(1.0 - x0 * w) - c >= torch.log(u)
        accepted.append(w[keep])
        count += int(keep.sum())
    return torch.cat(accepted)[:n]


def sample_vmf(mean: torch.Tensor, kappa: float, n: int, generator: torch.Generator | int | None = None) -> torch.Tensor:
    """n draws (n, p), float64, of the von Mises-Fisher law with mean direction ``mean`` (p,) and
    concentration ``kappa`` > 0 on S^{p-1}.

    x = w e_p + sqrt(1 - w^2) (v, 0) about the last axis e_p, with w = e_p.x from :func:`_vmf_cosines`
    and v uniform on S^{p-2} (a normalised Gaussian), then reflected onto ``mean`` by the Householder
    map that sends e_p to ``mean`` (the law is invariant under rotations and reflections fixing the
    axis, so any isometry taking e_p to mean will do).
    """
    g = make_generator(generator)
    mean = torch.as_tensor(mean, dtype=torch.float64).to(g.device)
    mean = mean / mean.norm()
    p = len(mean)
    w = _vmf_cosines(float(kappa), p, n, g)
    v = torch.randn(n, p - 1, generator=g, device=g.device, dtype=torch.float64)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    x = torch.cat([torch.sqrt((1.0 - w**2).clamp_min(0.0))[:, None] * v, w[:, None]], dim=1)
    return _householder(mean, x)


def _mixture_counts(weights: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """The component of each of n draws, int64 (n,), drawn from ``weights`` with the generator."""
    return torch.multinomial(weights.to(g.device), n, replacement=True, generator=g)


# -- the sets ------------------------------------------------------------------------------------------
class ManifoldData:
    """A law on a manifold: ``name``, ``manifold``, :meth:`sample` and, if ``has_log_prob``, :meth:`log_prob`."""

    name: str
    manifold: Manifold
    has_log_prob: bool = False

    def __init__(self, name: str, manifold: Manifold):
        self.name, self.manifold = name, manifold

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r} on {self.manifold.name})"

    def sample(self, n: int, generator: torch.Generator | int | None = None, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """n points on the manifold, (n, ambient_dim), in ``dtype``, on the generator's device.

        ``generator``: a ``torch.Generator`` (advanced by the draw), an integer seed, or None (torch's
        global generator). Points are drawn in float64 and rounded once; torus angles are wrapped to
        [-pi, pi) again after rounding.
        """
        n = check_count(n)
        g = make_generator(generator)
        x = self._sample(n, g).to(dtype)
        return wrap_angle(x) if self.manifold.name == "torus" else x

    def _sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x) -> torch.Tensor:
        """log p(x), float64 (n,), w.r.t. the volume measure of :meth:`Manifold.uniform_log_prob`."""
        raise FlowmatchError(f"{self.name}: no closed-form density")

    def _points(self, x) -> torch.Tensor:
        x = torch.as_tensor(x).detach().to(torch.float64)
        if x.ndim != 2 or x.shape[1] != self.manifold.ambient_dim:
            raise FlowmatchError(f"{self.name}: log_prob takes points of shape (n, {self.manifold.ambient_dim}), got {tuple(x.shape)}")
        return x

    def entropy(self, n: int = 1_000_000, seed: int = 0) -> tuple[float, float]:
        """(H, standard error): the differential entropy H(p) = -E_p[log p] in nats (w.r.t. the volume
        measure of :meth:`log_prob`), estimated as -mean log p(x_i) over n draws with ``seed``; the
        standard error is std(log p) / sqrt(n). Cached per (n, seed). H is the lowest expected NLL a
        model can reach: KL(p || q) = NLL(q) - H."""
        if not self.has_log_prob:
            raise FlowmatchError(f"{self.name}: no closed-form density, so no Monte-Carlo entropy")
        if check_count(n) < 2:
            raise FlowmatchError(f"the entropy needs n >= 2 draws, got {n}")
        return _entropy(self, n, check_seed(seed))


@functools.lru_cache(maxsize=32)
def _entropy(data: ManifoldData, n: int, seed: int) -> tuple[float, float]:
    log_p = torch.cat([data.log_prob(data.sample(len(c), generator=seed + i, dtype=torch.float64)) for i, c in enumerate(_chunks(n))])
    return float(-log_p.mean()), float(log_p.std() / math.sqrt(n))


def _chunks(n: int, size: int = 250_000) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


class VonMisesFisherMixture(ManifoldData):
    """p(x) = sum_k w_k C_p(kappa_k) exp(kappa_k mu_k.x) on the sphere S^{p-1} (see :func:`vmf_log_normaliser`).

    One component has mean resultant length E[mu.x] = A_p(kappa) = I_{p/2}(kappa) / I_{p/2-1}(kappa),
    on S^2 A_3(kappa) = coth(kappa) - 1/kappa.
    """

    has_log_prob = True

    def __init__(self, name: str, manifold: Manifold, weights, means, kappas):
        super().__init__(name, manifold)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        means = torch.as_tensor(means, dtype=torch.float64)
        self.means = means / means.norm(dim=1, keepdim=True)
        self.kappas = [float(k) for k in kappas]
        p = self.means.shape[1]
        self.log_norms = torch.tensor([vmf_log_normaliser(k, p) for k in self.kappas], dtype=torch.float64)

    def _sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        which = _mixture_counts(self.weights, n, g)
        x = torch.empty(n, self.means.shape[1], dtype=torch.float64, device=g.device)
        for k, kappa in enumerate(self.kappas):
            rows = which == k
            x[rows] = sample_vmf(self.means[k], kappa, int(rows.sum()), g)
        return x

    def _component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log f_k(x), (n, K): log f_k = [log C_p + kappa] + kappa (mu.x - 1)."""
        t = x @ self.means.T.to(x.device)
        kappa = torch.tensor(self.kappas, dtype=torch.float64, device=x.device)
        return self.weights.log().to(x.device) + self.log_norms.to(x.device) + kappa * (t - 1.0)

    def log_prob(self, x) -> torch.Tensor:
        return torch.logsumexp(self._component_log_probs(self._points(x)), dim=1)


class AntipodalVMFMixture(VonMisesFisherMixture):
    """A law on SO(3) = S^3/±: the mixture of vMF laws on S^3 in quaternions, each symmetrised.

    On S^3, p(q) = sum_k w_k (f_k(q) + f_k(-q)) / 2 with f_k = vMF(mu_k, kappa_k), C_4(kappa) =
    kappa / (4 pi^2 I_1(kappa)). Each rotation is the pair {q, -q}; the density of the rotation w.r.t.
    the S^3/± volume (pi^2 in all) is the sum over the pair, p(q) + p(-q) = 2 p(q):

        p_SO3(q) = sum_k w_k C_4(kappa_k) (e^{kappa_k t_k} + e^{-kappa_k t_k}) = sum_k 2 w_k C_4(kappa_k) cosh(kappa_k t_k),

    t_k = mu_k.q, which integrates to 1 over S^3/± (half of the integral of 2 p over S^3). Computed as
    log w_k + [log C_4 + kappa] + kappa (|t| - 1) + log(1 + e^{-2 kappa |t|}). Samples are drawn from
    one f_k and given the sign w >= 0 (:meth:`Manifold.canonical`).
    """

    def _sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        return self.manifold.canonical(super()._sample(n, g))

    def _component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        t = (x @ self.means.T.to(x.device)).abs()
        kappa = torch.tensor(self.kappas, dtype=torch.float64, device=x.device)
        return self.weights.log().to(x.device) + self.log_norms.to(x.device) + kappa * (t - 1.0) + torch.log1p(torch.exp(-2 * kappa * t))


class SphereCheckerboard(ManifoldData):
    """Uniform on the black cells of a checkerboard on S^2 in equal-area coordinates.

    The area element of S^2 is dA = d lambda dz in longitude lambda in [-pi, pi) and z = sin(latitude) in
    [-1, 1] (Archimedes), so the ``n_lon`` x ``n_z`` cells [lambda_i, lambda_{i+1}) x [z_j, z_{j+1}) all
    have area 4 pi / (n_lon n_z). Cell (i, j) is black when i + j is even: half the sphere, so
    p = 1 / (2 pi) = 2 / (4 pi) there and 0 elsewhere (log p = -inf), and H(p) = log(2 pi) exactly.
    """

    has_log_prob = True

    def __init__(self, name: str, manifold: Manifold, n_lon: int = 8, n_z: int = 4):
        super().__init__(name, manifold)
        if n_lon % 2 or n_lon < 2 or n_z < 1:
            raise FlowmatchError(f"a sphere checkerboard needs an even number of longitude cells, got {n_lon} x {n_z}")
        self.n_lon, self.n_z = n_lon, n_z
        self.black = torch.tensor([(i, j) for i in range(n_lon) for j in range(n_z) if (i + j) % 2 == 0], dtype=torch.float64)

    def _sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        cell = self.black.to(g.device)[torch.randint(len(self.black), (n,), generator=g, device=g.device)]
        u = torch.rand(n, 2, generator=g, device=g.device, dtype=torch.float64)
        lon = -math.pi + (cell[:, 0] + u[:, 0]) * (2 * math.pi / self.n_lon)
        z = -1.0 + (cell[:, 1] + u[:, 1]) * (2.0 / self.n_z)
        r = torch.sqrt((1.0 - z**2).clamp_min(0.0))
        return torch.stack([r * torch.cos(lon), r * torch.sin(lon), z], dim=1)

    def log_prob(self, x) -> torch.Tensor:
        x = self._points(x)
        lon = torch.atan2(x[:, 1], x[:, 0])
        i = torch.floor((lon + math.pi) / (2 * math.pi / self.n_lon)).clamp(0, self.n_lon - 1)
        j = torch.floor((x[:, 2].clamp(-1.0, 1.0) + 1.0) / (2.0 / self.n_z)).clamp(0, self.n_z - 1)
        black = torch.remainder(i + j, 2) == 0
        return torch.where(black, torch.full_like(lon, -math.log(2 * math.pi)), torch.full_like(lon, -math.inf))


#: The wrapped-normal sum runs over k = -WRAP_TERMS..WRAP_TERMS (see :class:`WrappedGaussianMixture`).
WRAP_TERMS = 3


class WrappedGaussianMixture(ManifoldData):
    """p(theta) = sum_k w_k prod_i WN(theta_i; mu_ki, sigma_ki) on the torus [-pi, pi)^d (Lebesgue measure).

    The wrapped normal is WN(t; mu, sigma) = sum_{j in Z} N(t + 2 pi j; mu, sigma^2); a Gaussian with
    diagonal covariance wraps coordinate by coordinate, so the d-dimensional sum over Z^d factorises.
    The sum is taken over |j| <= :data:`WRAP_TERMS` = 3 after reducing delta = t - mu to [-pi, pi):
    the terms left out have |delta + 2 pi j| >= 7 pi, and relative to the largest term kept (whose
    |delta + 2 pi j| <= pi) they are below exp(-(49 - 1) pi^2 / (2 sigma^2)) = exp(-237 / sigma^2),
    under 1e-200 for the sigma <= 0.6 used here and below float64 rounding for any sigma < 3.
    Sampling is exact: mu + sigma * N(0, I), wrapped to [-pi, pi).
    """

    has_log_prob = True

    def __init__(self, name: str, manifold: Manifold, weights, means, stds):
        super().__init__(name, manifold)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)

    def _sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        which = _mixture_counts(self.weights, n, g)
        eps = torch.randn(n, self.means.shape[1], generator=g, device=g.device, dtype=torch.float64)
        return wrap_angle(self.means.to(g.device)[which] + self.stds.to(g.device)[which] * eps)

    def log_prob(self, x) -> torch.Tensor:
        x = self._points(x)
        means, stds = self.means.to(x.device), self.stds.to(x.device)
        delta = wrap_angle(x[:, None, :] - means[None])  # (n, K, d)
        shifts = 2 * math.pi * torch.arange(-WRAP_TERMS, WRAP_TERMS + 1, dtype=torch.float64, device=x.device)
        z = (delta[..., None] + shifts) / stds[None, :, :, None]  # (n, K, d, 2J + 1)
        log_wn = torch.logsumexp(-0.5 * z**2, dim=-1) - torch.log(stds) - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(self.weights.log().to(x.device) + log_wn.sum(-1), dim=1)


class WrappedNormal(ManifoldData):
    """exp_mean(z), z ~ N(0, scale^2 I) in the tangent space at ``mean``: the wrapped Gaussian of the
    torus, its push-forward by the exponential map on spheres and SO(3) (scale in S^3 units there: a spread
    of s radians of rotation angle is scale s / 2), the normal N(mean, scale^2 I) on R^d.

    Sampling is :meth:`Manifold.random_wrapped_normal`; the density, w.r.t. the manifold's volume as for
    every set here, is :meth:`Manifold.wrapped_normal_log_prob`: exact on spheres and SO(3) (every
    preimage of the exponential map with its Jacobian, (sin r / r)^(d - 1) on S^d), the lattice sum on the
    torus, each truncated with terms below 1e-16 left out.
    """

    has_log_prob = True

    def __init__(self, name: str, manifold: Manifold, mean, scale: float):
        super().__init__(name, manifold)
        self.mean, self.scale = manifold._wrapped_normal_args(1, torch.as_tensor(mean, dtype=torch.float64), scale)
        self.mean = self.mean[0]

    def _sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        return self.manifold.random_wrapped_normal(n, self.mean, self.scale, generator=g)

    def log_prob(self, x) -> torch.Tensor:
        return self.manifold.wrapped_normal_log_prob(self._points(x), self.mean, self.scale)


def _unit(lon_deg: float, lat_deg: float) -> list[float]:
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    return [math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)]


def _quaternion(axis: Sequence[float], angle_deg: float) -> list[float]:
    """The unit quaternion (cos(a/2), sin(a/2) n) of the rotation by angle a about the axis n."""
    a = math.radians(angle_deg)
    norm = math.sqrt(sum(c * c for c in axis))
    return [math.cos(a / 2)] + [math.sin(a / 2) * c / norm for c in axis]


def s2_vmf() -> VonMisesFisherMixture:
    """``S2-vmf``: 5 vMF components on S^2; (longitude, latitude) of the means in degrees and kappa:
    (0, 0) 20, (90, 40) 40, (-120, -30) 12, (-45, 65) 30, (150, -60) 60; weights 0.25, 0.2, 0.2, 0.15, 0.2."""
    means = [_unit(0, 0), _unit(90, 40), _unit(-120, -30), _unit(-45, 65), _unit(150, -60)]
    return VonMisesFisherMixture("S2-vmf", make_manifold("sphere", 2), [0.25, 0.2, 0.2, 0.15, 0.2], means, [20, 40, 12, 30, 60])


def s2_checkerboard() -> SphereCheckerboard:
    """``S2-checkerboard``: 8 longitude x 4 z cells (45 degrees x 0.5 in sin latitude), 16 black."""
    return SphereCheckerboard("S2-checkerboard", make_manifold("sphere", 2), 8, 4)


def t2_wrapped() -> WrappedGaussianMixture:
    """``T2-wrapped``: 5 wrapped Gaussians on T^2 (radians); the third straddles theta_1 = ±pi and the
    fourth theta_2 = ±pi, so a model that ignores the periodicity cuts them in half."""
    means = [[-2.0, -1.8], [0.3, 0.8], [3.0, -0.6], [-0.8, 2.9], [1.4, -2.2]]
    stds = [[0.35, 0.35], [0.6, 0.25], [0.3, 0.5], [0.4, 0.3], [0.25, 0.25]]
    return WrappedGaussianMixture("T2-wrapped", make_manifold("torus", 2), [0.25, 0.2, 0.2, 0.15, 0.2], means, stds)


def so3_multimodal() -> AntipodalVMFMixture:
    """``SO3-multimodal``: 5 modes around the rotations (axis, angle in degrees, kappa): identity 40,
    (x, 90) 60, ((1, 1, 1), 120) 30, (z, 180) 80, ((-1, 1, 0), 135) 50; equal weights. On S^3 a vMF of
    concentration kappa spreads the rotation angle about its mode by roughly 2 / sqrt(kappa) radians
    (13 to 18 degrees here)."""
    modes = [((1, 0, 0), 0), ((1, 0, 0), 90), ((1, 1, 1), 120), ((0, 0, 1), 180), ((-1, 1, 0), 135)]
    means = [_quaternion(axis, angle) for axis, angle in modes]
    return AntipodalVMFMixture("SO3-multimodal", make_manifold("so3"), [0.2] * 5, means, [40, 60, 30, 80, 50])


#: name -> builder of each built-in set.
MANIFOLD_SETS: dict[str, Callable[[], ManifoldData]] = {
    "S2-vmf": s2_vmf,
    "S2-checkerboard": s2_checkerboard,
    "T2-wrapped": t2_wrapped,
    "SO3-multimodal": so3_multimodal,
}


#: (H, standard error) in nats of each built-in set: ``ManifoldData.entropy(n=1_000_000, seed=0)`` as
#: measured once, w.r.t. each manifold's volume measure (the uniform law's entropy is log 4 pi = 2.531 on
#: S^2, log 4 pi^2 = 3.676 on T^2 and log pi^2 = 2.289 on SO(3)). S2-checkerboard's is log(2 pi) exactly.
ENTROPY: dict[str, tuple[float, float]] = {
    "S2-vmf": (1.1152, 0.0011),
    "S2-checkerboard": (math.log(2 * math.pi), 0.0),
    "T2-wrapped": (2.2659, 0.0010),
    "SO3-multimodal": (-0.0059, 0.0013),
}


@functools.cache
def manifold_set(name: str) -> ManifoldData:
    """The built-in set ``name`` (built once)."""
    if name not in MANIFOLD_SETS:
        raise FlowmatchError(
            f"unknown manifold data set {name!r}: choose one of {', '.join(MANIFOLD_SETS)}" + did_you_mean(str(name), tuple(MANIFOLD_SETS))
        )
    return MANIFOLD_SETS[name]()


# -- user files ----------------------------------------------------------------------------------------
class PointSet(ManifoldData):
    """Points read from a file (:func:`load_manifold_data`): ``points`` (N, ambient_dim) float64 and the
    ``path``; :meth:`sample` draws n distinct rows at random (n <= N); no density."""

    def __init__(self, name: str, manifold: Manifold, points: torch.Tensor, path: str):
        super().__init__(name, manifold)
        self.points, self.path = points, path

    def __len__(self) -> int:
        return len(self.points)

    def _sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        if n > len(self.points):
            raise FlowmatchError(f"{self.path}: asked for {n} points, the file has {len(self.points)} rows")
        rows = torch.randperm(len(self.points), generator=g, device=g.device)[:n].cpu()
        return self.points[rows].to(g.device)


def load_manifold_data(
    name_or_path: str | os.PathLike,
    manifold: Manifold | str | None = None,
    *,
    columns: Sequence[str] | str | None = None,
    units: str | None = None,
    exclude: Sequence[str] = (),
) -> ManifoldData:
    """A built-in set by name (:data:`MANIFOLD_SETS`), or the points of a user file.

    Files are CSV with a header row (read with pandas, :func:`flowmatch.data.tables.read_table`) or
    .npy/.npz arrays; ``manifold`` ("sphere", "torus", "so3" or a :class:`Manifold`) says what they
    hold, and is inferred when the header or shape tells:

    - **sphere** (S^2): latitude and longitude columns (named lat/latitude and lon/lng/long/longitude,
      any case), in degrees unless ``units="radians"``; latitude must lie in [-90, 90] and longitude in
      [-180, 360] (wrapped to [-180, 180)). A .npy holds (N, 2) rows (latitude, longitude) or (N, 3) unit
      vectors.
    - **torus** (T^d): angles, one column each (``columns``, else every column); ``units`` "degrees" or
      "radians" must be given; any finite value is wrapped to [-pi, pi).
    - **so3**: quaternions (w, x, y, z), columns w,x,y,z or qw,qx,qy,qz (any case), or an (N, 4) .npy;
      each must have norm within :data:`NORM_TOLERANCE` of 1 (it is then normalised), and is given the
      sign w >= 0.

    ``columns`` (names, or one comma-separated string) picks the columns in that order: (lat, lon),
    the torus angles, or (w, x, y, z); ``exclude`` names columns that are not coordinates (a run's label and
    condition columns), left out of a torus file's angles. Rows count data rows from 1 (the header is row 0) and columns
    are named as in the header (numbered from 1 in a .npy). Every problem is one :class:`FlowmatchError`
    naming the file and, where it is a value, its row and column: a missing column, an empty, NaN or
    non-numeric cell, a latitude or longitude out of range, a quaternion that is not unit, fewer than
    :data:`flowmatch.data.files.MIN_ROWS` rows.
    """
    wanted = _manifold_kind(manifold)
    if isinstance(name_or_path, str) and name_or_path in MANIFOLD_SETS:
        data = manifold_set(name_or_path)
        if (wanted is not None and wanted != data.manifold.name) or (isinstance(manifold, Manifold) and manifold != data.manifold):
            raise FlowmatchError(f"{name_or_path} lives on {data.manifold.label}, not {manifold}")
        return data
    path = os.fspath(name_or_path)
    if not os.path.exists(path):
        hint = did_you_mean(path, tuple(MANIFOLD_SETS))
        raise FlowmatchError(f"{path}: no such file, and not a built-in manifold set ({', '.join(MANIFOLD_SETS)}){hint}")
    if os.path.isdir(path):
        raise FlowmatchError(f"{path}: is a directory, expected a .csv, .npy or .npz file")
    if units is not None and units not in UNITS:
        raise FlowmatchError(f"units={units!r}: choose one of {', '.join(UNITS)}")
    names = [c.strip() for c in columns.split(",")] if isinstance(columns, str) else (list(columns) if columns is not None else None)
    if names is not None:
        twice = sorted({c for c in names if names.count(c) > 1})
        if twice or not all(names):
            raise FlowmatchError(f"columns={columns!r}: " + (f"{', '.join(twice)} named twice" if twice else "an empty column name"))
    ext = os.path.splitext(path)[1].lower()
    with reading(path):  # no permission, an I/O error: one line naming the file
        if ext == ".csv":
            kind, points = _read_csv_points(path, wanted, names, units, exclude)
        elif ext in (".npy", ".npz"):
            if names is not None:
                raise FlowmatchError(f"{path}: columns= names CSV columns; a {ext} array has none")
            kind, points = _read_array_points(path, wanted, units)
        else:
            raise FlowmatchError(f"{path}: unsupported file type {ext or '(no extension)'!r}; expected .csv, .npy or .npz")
    m = _build_manifold(path, manifold, kind, points)
    if kind == "so3":
        points = m.canonical(points)
    return PointSet(os.path.basename(path), m, points, path)


def _manifold_kind(manifold: Manifold | str | None) -> str | None:
    if manifold is None:
        return None
    kind = manifold if isinstance(manifold, str) else getattr(manifold, "name", None)
    if kind not in ("sphere", "torus", "so3"):
        raise FlowmatchError(f"manifold {manifold!r}: files are read onto 'sphere', 'torus' or 'so3'")
    return kind


def _build_manifold(path: str, manifold: Manifold | str | None, kind: str, points: torch.Tensor) -> Manifold:
    dim = {"sphere": 2, "so3": 3}.get(kind, points.shape[1])
    if isinstance(manifold, Manifold):
        if manifold.ambient_dim != points.shape[1]:
            raise FlowmatchError(
                f"{path}: the file holds {points.shape[1]} coordinates per point, {manifold.name} has {manifold.ambient_dim}"
            )
        return manifold
    return make_manifold(kind, None if kind == "so3" else dim)


def _where(path: str, row: int, column: str) -> str:
    return f"{path}: row {row + 1}, column {column}"


def _read_csv_points(
    path: str, wanted: str | None, names: list[str] | None, units: str | None, exclude: Sequence[str] = ()
) -> tuple[str, torch.Tensor]:
    frame = read_table(path, max_categories=sys.maxsize)
    left_out = {str(frame.columns[int(c) - 1]) if c.isdigit() and 0 < int(c) <= frame.shape[1] else c for c in exclude}
    frame = frame[[c for c in frame.columns if str(c) not in left_out]]  # label and condition columns: not coordinates
    header = [str(c) for c in frame.columns]
    if all(is_number(c) for c in header):
        raise FlowmatchError(f"{path}: the first line is numbers; a CSV needs a header row naming its columns (e.g. lat,lon or w,x,y,z)")
    lower = {c.strip().lower(): c for c in header}

    def find(options: Sequence[str]) -> str | None:
        return next((lower[o] for o in options if o in lower), None)

    lat, lon = find(LATITUDE_NAMES), find(LONGITUDE_NAMES)
    quat = next(([lower[o] for o in group] for group in QUATERNION_NAMES if all(o in lower for o in group)), None)
    kind = wanted
    if kind is None:
        if lat is not None and lon is not None:
            kind = "sphere"
        elif quat is not None:
            kind = "so3"
        else:
            raise FlowmatchError(
                f"{path}: cannot tell which manifold the columns ({', '.join(header)}) are on: name them lat,lon (sphere) or "
                "w,x,y,z (so3), or pass manifold='torus' with units='degrees' or 'radians'"
            )
    if names is not None:
        missing = [c for c in names if c not in header]
        if missing:
            raise FlowmatchError(f"{path}: no column {missing[0]!r} (columns: {', '.join(header)})")
    if kind == "sphere":
        if names is not None:
            if len(names) != 2:
                raise FlowmatchError(f"{path}: columns= for the sphere names 2 columns (latitude, longitude), got {len(names)}")
            lat, lon = names
        for found, role, options in ((lat, "latitude", LATITUDE_NAMES), (lon, "longitude", LONGITUDE_NAMES)):
            if found is None:
                raise FlowmatchError(
                    f"{path}: no {role} column (looked for {', '.join(options)}; columns: {', '.join(header)}); "
                    "rename it or pass columns=(latitude name, longitude name)"
                )
        assert lat is not None and lon is not None
        return kind, _sphere_points(path, _numbers(path, frame, lat), _numbers(path, frame, lon), lat, lon, units)
    if kind == "so3":
        if names is not None:
            if len(names) != 4:
                raise FlowmatchError(f"{path}: columns= for so3 names 4 columns (w, x, y, z), got {len(names)}")
            quat = names
        if quat is None:
            raise FlowmatchError(
                f"{path}: no quaternion columns (looked for w,x,y,z or qw,qx,qy,qz; columns: {', '.join(header)}); "
                "rename them or pass columns=(w, x, y, z names)"
            )
        q = np.stack([_numbers(path, frame, c) for c in quat], axis=1)
        return kind, _unit_rows(path, q, "quaternion")
    angles = names if names is not None else header
    if units is None:
        raise FlowmatchError(f"{path}: say whether the torus angles are in degrees or radians: units='degrees' or units='radians'")
    theta = np.stack([_numbers(path, frame, c) for c in angles], axis=1)
    return kind, _torus_points(theta, units, path)


def _numbers(path: str, frame: pd.DataFrame, column: str) -> np.ndarray:
    """A CSV column as float64; an empty, NaN or non-numeric cell is an error naming its row and column."""
    values = frame[column]
    if len(values) < MIN_ROWS:
        raise FlowmatchError(f"{path}: {len(values)} data rows; need at least {MIN_ROWS}")
    if pd.api.types.is_numeric_dtype(values.dtype):
        out = values.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(out))
        if len(bad):
            raise FlowmatchError(f"{_where(path, int(bad[0]), repr(column))}: empty or NaN cell")
        return out
    out = np.empty(len(values))
    for i, cell in enumerate(values.tolist()):
        if cell is None or (not isinstance(cell, str) and pd.isna(cell)) or not str(cell).strip():
            raise FlowmatchError(f"{_where(path, i, repr(column))}: empty cell")
        if not is_number(cell):
            raise FlowmatchError(f"{_where(path, i, repr(column))}: {str(cell).strip()!r} is not a number")
        out[i] = float(cell)
        if not math.isfinite(out[i]):
            raise FlowmatchError(f"{_where(path, i, repr(column))}: {str(cell).strip()!r} is not a finite number")
    return out


def _sphere_points(path: str, lat: np.ndarray, lon: np.ndarray, lat_name: str, lon_name: str, units: str | None) -> torch.Tensor:
    """Unit vectors of (latitude, longitude) rows, after checking the ranges (in the file's units)."""
    half_turn, unit = (math.pi, "") if units == "radians" else (180.0, " degrees")
    scale = math.pi / half_turn
    ranges = ((lat, lat_name, -half_turn / 2, half_turn / 2, "latitude"), (lon, lon_name, -half_turn, 2 * half_turn, "longitude"))
    for values, name, low, high, role in ranges:
        bad = np.flatnonzero((values < low) | (values > high))
        if len(bad):
            i = int(bad[0])
            raise FlowmatchError(f"{_where(path, i, repr(name))}: {role} {values[i]:g}{unit} is outside [{low:g}, {high:g}]")
    lat_t, lon_t = torch.from_numpy(lat * scale), wrap_angle(torch.from_numpy(lon * scale))
    return latlon_to_sphere(lat_t, lon_t)


#: Torus angles are wrapped to [-pi, pi): beyond this many turns, float64 keeps less than 1e-7 of a turn of them.
MAX_TURNS = 1e6


def _torus_points(theta: np.ndarray, units: str, path: str = "angles") -> torch.Tensor:
    scale = math.pi / 180 if units == "degrees" else 1.0
    turns = np.abs(theta) * scale / (2 * math.pi)
    if turns.size and turns.max() > MAX_TURNS:
        row, column = np.unravel_index(int(turns.argmax()), turns.shape)
        raise FlowmatchError(
            f"{path}: row {row + 1}, angle column {column + 1} is {theta[row, column]:g} {units}, more than {MAX_TURNS:g} "
            "turns: wrapping it would keep none of its precision; give angles modulo a turn"
        )
    return wrap_angle(torch.from_numpy(theta * scale))


def _unit_rows(path: str, x: np.ndarray, what: str) -> torch.Tensor:
    """Rows normalised to norm 1, after checking that each norm is within NORM_TOLERANCE of 1."""
    norms = np.linalg.norm(x, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if len(bad):
        i = int(bad[0])
        raise FlowmatchError(f"{path}: row {i + 1}: {what} norm {norms[i]:.4g}, not 1 (tolerance {NORM_TOLERANCE:g})")
    return torch.from_numpy(x / norms[:, None])


def _read_array_points(path: str, wanted: str | None, units: str | None) -> tuple[str, torch.Tensor]:
    array = read_numpy(path, os.path.splitext(path)[1].lower())
    if array.dtype.kind not in "biuf":
        raise FlowmatchError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise FlowmatchError(f"{path}: expected a 2-D array of shape (N, D), got shape {tuple(array.shape)}")
    n, d = array.shape
    if n < MIN_ROWS:
        raise FlowmatchError(f"{path}: {n} rows; need at least {MIN_ROWS}")
    array = array.astype(np.float64)
    bad = np.argwhere(~np.isfinite(array))
    if len(bad):
        i, j = (int(v) for v in bad[0])
        raise FlowmatchError(f"{_where(path, i, str(j + 1))}: {array[i, j]} is not a finite number")
    kind = wanted or {4: "so3", 3: "sphere"}.get(d)
    if kind is None:
        raise FlowmatchError(
            f"{path}: cannot tell which manifold {d} columns are on: pass manifold='sphere' (latitude, longitude), "
            "'torus' (angles, with units=) or 'so3' (w, x, y, z)"
        )
    if kind == "sphere":
        if d == 3:
            return kind, _unit_rows(path, array, "vector")
        if d != 2:
            raise FlowmatchError(f"{path}: sphere points are (N, 2) latitude/longitude or (N, 3) unit vectors, got {d} columns")
        return kind, _sphere_points(path, array[:, 0], array[:, 1], "1", "2", units)
    if kind == "so3":
        if d != 4:
            raise FlowmatchError(f"{path}: quaternions are (N, 4) arrays (w, x, y, z), got {d} columns")
        return kind, _unit_rows(path, array, "quaternion")
    if units is None:
        raise FlowmatchError(f"{path}: say whether the torus angles are in degrees or radians: units='degrees' or units='radians'")
    return kind, _torus_points(array, units, path)


# -- points back in a file's terms ---------------------------------------------------------------------
def points_to_columns(
    x, manifold: Manifold, *, units: str | None = None, columns: Sequence[str] | str | None = None
) -> tuple[list[str], np.ndarray]:
    """(header, values (n, k) float64): points in the columns a user file holds, the inverse of the readers.

    - sphere S^2: latitude and longitude, phi = asin z and lambda = atan2(y, x) (:func:`sphere_to_latlon`),
      in degrees unless ``units="radians"``; longitude in [-180, 180);
    - torus: the angles in [-pi, pi), or in [-180, 180) with ``units="degrees"``;
    - so3: the quaternion (w, x, y, z) with w >= 0;
    - any other manifold: the ambient coordinates x1..xD.

    ``columns`` (names, or one comma-separated string) names the header; by default lat,lon /
    theta1..thetad / w,x,y,z / x1..xD.
    """
    if units is not None and units not in UNITS:
        raise FlowmatchError(f"units={units!r}: choose one of {', '.join(UNITS)}")
    x = torch.as_tensor(x).detach().cpu().to(torch.float64)
    if x.ndim != 2 or x.shape[1] != manifold.ambient_dim:
        raise FlowmatchError(f"points on {manifold.label} must have shape (n, {manifold.ambient_dim}), got {tuple(x.shape)}")
    degrees = 180.0 / math.pi
    if manifold.name == "sphere" and manifold.dim == 2:
        lat, lon = sphere_to_latlon(x / x.norm(dim=1, keepdim=True))
        scale = 1.0 if units == "radians" else degrees
        values, default = torch.stack([lat, wrap_angle(lon)], dim=1) * scale, ["lat", "lon"]
    elif manifold.name == "torus":
        values = wrap_angle(x) * (degrees if units == "degrees" else 1.0)
        default = [f"theta{i + 1}" for i in range(x.shape[1])]
    elif manifold.name == "so3":
        values, default = manifold.canonical(x), list(QUATERNION_NAMES[0])
    else:
        values, default = x, [f"x{i + 1}" for i in range(x.shape[1])]
    names = [c.strip() for c in columns.split(",")] if isinstance(columns, str) else list(columns or default)
    if len(names) != values.shape[1]:
        raise FlowmatchError(f"{len(names)} column names ({', '.join(names)}) for {values.shape[1]} columns on {manifold.label}")
    return names, values.numpy()


# -- a run's data: a built-in set, or a file's points split --------------------------------------------
#: Share of a file's points held out as its test split (at most TEST_MAX), as for every data file.
TEST_FRACTION = 0.2


TEST_MAX = 4000


#: The validation split of a file holds at most this many points (and at least 2).
VAL_MAX = 2000


#: Validation points the loss is computed on (the first of the split).
VAL_POINTS = 1024


#: Points in samples.npy and samples.png (a file's run: at most its test split's size).
SAMPLES = 2000


#: Fresh held-out draws of built-in sets use seed + this (+ k for the k-th set), as continuous runs do.
HELD_SEED = 7_000_003


# -- data ------------------------------------------------------------------------------------------
@dataclass
class ManifoldRunData:
    """The data of a run: ``law`` (a built-in set or a file's :class:`PointSet`) on ``manifold``, and for a
    file its ``train``, ``val`` (or None) and ``test`` points (float32, canonical); a built-in set has none
    (``finite`` False: every draw is fresh). A file's points may carry conditions: ``conditions[split]``
    holds their class labels ``y`` and covariates ``c`` (``given``: the label column's class values and the
    condition columns, by name)."""

    name: str
    law: ManifoldData
    manifold: Manifold
    train: torch.Tensor | None = None
    val: torch.Tensor | None = None
    test: torch.Tensor | None = None
    conditions: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    given: dict[str, Any] = field(default_factory=dict)

    @property
    def finite(self) -> bool:
        return self.train is not None

    @property
    def model_conditions(self) -> dict[str, dict[str, int]]:
        """The conditions a model of these points takes: {"y": {"classes": K}}, {"c": {"dim": k}} where they have them."""
        out: dict[str, dict[str, int]] = {}
        if self.given.get("classes"):
            out["y"] = {"classes": len(self.given["classes"])}
        if self.given.get("condition_columns"):
            out["c"] = {"dim": len(self.given["condition_columns"])}
        return out

    def batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """n training points and their conditions: a fresh draw of a built-in set, or rows of the training split
        drawn with replacement."""
        if self.train is None:
            return self.law.sample(n, generator), {}
        rows = torch.randint(len(self.train), (n,), generator=generator)
        return self.train[rows], {k: v[rows] for k, v in self.conditions.get("train", {}).items()}

    def held_out(self, n: int, seed: int, k: int = 0) -> torch.Tensor:
        """The k-th held-out set of n points: a fresh draw with seed + HELD_SEED + k (built-in sets), or
        the k-th block of n test points (files)."""
        if self.test is None:
            return self.law.sample(n, generator=seed + HELD_SEED + k)
        if (k + 1) * n > len(self.test):
            raise FlowmatchError(f"{self.name}: the test split holds {len(self.test)} points, not {k + 1} sets of {n}")
        return self.test[k * n : (k + 1) * n]


def load_run_data(config) -> ManifoldRunData:
    """The data a manifold run's config names: a built-in set (its own manifold, or ``euclidean`` for the
    comparison), or a file read onto ``config.manifold`` with ``columns`` and ``units`` and split with
    ``seed`` and ``val_fraction`` (module docstring); a CSV file's ``label_column`` and ``condition_columns``
    are its points' conditions (``conditional`` with a label column)."""
    if config.data == "python":
        raise FlowmatchError("this run was trained on points given in Python, which its folder does not hold")
    label = getattr(config, "label_column", "")
    conditions = getattr(config, "condition_columns", "")
    if config.data in MANIFOLD_SETS:
        law = manifold_set(config.data)
        if config.manifold not in ("auto", "euclidean", law.manifold.name):
            raise FlowmatchError(
                f"{config.data} lives on {law.manifold.label}, not on manifold={config.manifold}: leave it auto, "
                "or pass manifold='euclidean' for the Euclidean comparison"
            )
        if config.columns or config.units != "auto":
            named = f"units={config.units}" if config.units != "auto" else f"columns={config.columns}"
            raise FlowmatchError(f"{named} describes a data file's columns; {config.data} is a built-in set")
        if label or conditions or getattr(config, "conditional", False):
            raise FlowmatchError(f"{config.data} is a built-in set without labels or covariates: conditions come with a file's columns")
        return ManifoldRunData(config.data, law, law.manifold)
    if config.manifold == "euclidean":
        raise FlowmatchError(
            f"manifold='euclidean' is the Euclidean comparison on a built-in manifold set ({', '.join(MANIFOLD_SETS)}); "
            f"points in R^D from '{config.data}' are an ordinary continuous run (kind='continuous')"
        )
    taken = [c.strip() for c in (label, *conditions.split(",")) if c.strip()]
    if (label or conditions) and not str(config.data).lower().endswith(".csv"):
        raise FlowmatchError(f"label_column and condition_columns name a .csv file's columns; '{config.data}' is not one")
    law = load_manifold_data(
        config.data,
        None if config.manifold == "auto" else config.manifold,
        columns=config.columns or None,
        units=None if config.units == "auto" else config.units,
        exclude=taken,
    )
    assert isinstance(law, PointSet)
    rows, given = None, dict[str, Any]()
    if label or conditions:
        from flowmatch.data.tables import read_table, table_conditions

        frame = read_table(law.path, max_categories=sys.maxsize)
        _, rows, given = table_conditions(law.path, frame, label, conditions)
    check_conditional(config, label)
    return split_points(law, seed=config.seed, val_fraction=config.val_fraction, conditions=rows, given=given)


def check_conditional(config, label: str) -> None:
    """``conditional`` and ``label_column`` go together: a run conditions on class labels when both are given."""
    if getattr(config, "conditional", False) != bool(label):
        raise FlowmatchError(
            "a manifold run conditions on class labels with conditional=True and label_column=NAME together"
            if getattr(config, "conditional", False)
            else f"label_column={label!r} names the class labels a run conditions on: pass conditional=True"
        )


def split_points(
    law: PointSet, *, seed: int, val_fraction: float, conditions: dict[str, np.ndarray] | None = None, given: dict[str, Any] | None = None
) -> ManifoldRunData:
    """A file's points shuffled with ``seed`` and split into test, validation and training points (their
    ``conditions``, arrays over the points, split alike)."""
    points = law.points.to(torch.float32)
    points = law.manifold.canonical(points)
    n = len(points)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(TEST_MAX, max(2, round(TEST_FRACTION * n)))
    n_val = min(VAL_MAX, max(2, round(val_fraction * (n - n_test)))) if val_fraction > 0 else 0
    if n - n_test - n_val < 2:
        raise FlowmatchError(f"{law.path}: {n} points are too few to split into training, validation and test points")
    parts = {"test": (0, n_test), "val": (n_test, n_test + n_val), "train": (n_test + n_val, n)}
    test, val, train = (points[order[a:b]] for a, b in parts.values())
    split = {
        name: {k: torch.as_tensor(np.asarray(v))[order[a:b]] for k, v in conditions.items()} for name, (a, b) in parts.items()
    } if conditions else {}  # fmt: skip
    return ManifoldRunData(
        law.name, law, law.manifold, train=train, val=val if n_val else None, test=test, conditions=split, given=dict(given or {})
    )
