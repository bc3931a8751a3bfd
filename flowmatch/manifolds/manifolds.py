"""Manifolds for Riemannian flow matching: points, tangent vectors, geodesics and uniform densities.

Every manifold here is a Riemannian manifold M given in ambient coordinates: a point is a row of
``ambient_dim`` floats, a batch of points an (n, ambient_dim) tensor, and a tangent vector at x is an
ambient vector u with ``proj(x, u) = u``. The metric is the Euclidean inner product of the ambient
vectors (the induced metric of the embedding, or the flat metric of the torus's angles), so
|u| below is always the plain Euclidean norm of the row. Each manifold offers

- ``exp(x, v)``: the exponential map, the point reached at time 1 by the geodesic from x with velocity v;
- ``log(x, y)``: its inverse, the tangent vector at x of the shortest geodesic to y (|log(x, y)| is
  the geodesic distance);
- ``proj(x, u)``: the orthogonal projection of an ambient vector onto T_x M; ``projx(x)``: the nearest
  point of M; ``canonical(x)``: one fixed representative (only SO(3) has more than one per point);
- ``dist``/``cdist``: geodesic distances, per row or for all pairs;
- ``random_uniform``/``uniform_log_prob``: the normalised Riemannian volume (compact manifolds), and
  ``random_wrapped_normal``/``wrapped_normal_log_prob``: exp_mean(scale * N(0, I) in T_mean M) and its
  exact density (a sum over the preimages of the exponential map, truncated with a stated bound);
- ``features(x)``: a smooth, unambiguous encoding of the point for a network; ``to_tangent(x, out)``:
  how a network's output of width ``output_dim`` becomes a tangent vector at x;
- ``dlog(x, y, w)``, ``geodesic(x, y, s)`` and ``tangent_basis(x)`` for the solvers, paths and divergences;
- ``check(x)``: validation of a user's points, with one clear :class:`FlowmatchError` per problem.

The manifolds:

- :class:`Euclidean` R^d: exp(x, v) = x + v, log(x, y) = y - x; no uniform distribution.
- :class:`Sphere` S^d = {x in R^(d+1): |x| = 1}: with theta = |v|,

      exp_x(v) = cos(theta) x + sin(theta) v / theta,
      log_x(y) = theta (y - <x, y> x) / |y - <x, y> x|,   theta = d(x, y) = 2 atan2(|x - y|, |x + y|),

  (the half-angle form of the distance is accurate at every angle, unlike arccos <x, y> near 0 and pi);
  volume 2 pi^((d+1)/2) / Gamma((d+1)/2) (2 pi for S^1, 4 pi for S^2, 2 pi^2 for S^3).
- :class:`FlatTorus` T^d = angles in [-pi, pi)^d with the flat metric: exp(x, v) = wrap(x + v),
  log(x, y) = wrap(y - x), wrap(a) = a - 2 pi round(a / (2 pi)) into [-pi, pi); volume (2 pi)^d.
- :class:`SO3`, rotations as unit quaternions (w, x, y, z) on S^3 with q ~ -q (see its docstring).

Quaternion helpers: :func:`quaternion_multiply`, :func:`quaternion_to_matrix`,
:func:`matrix_to_quaternion`, :func:`quaternion_to_axis_angle`.

Build a manifold by name with :func:`make_manifold` or from its ``to_config()`` with
:func:`manifold_from_config`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from flowmatch.errors import FlowmatchError

#: Largest distance from the manifold (|norm - 1| for spheres and quaternions) that ``check`` accepts.
ON_MANIFOLD_TOLERANCE = 1e-4


# -- numerically stable functions of an angle ------------------------------------------------------------
# Each uses its Taylor series below a threshold and the closed form above it, with torch.where on
# "safe" arguments so that neither branch produces inf/nan (which would poison gradients through where).

#: Below this argument sin(r)/r and r/sin(r) use their series: the first omitted term is below float64 rounding.
_SERIES_BELOW = 0.03


def sinc(r: torch.Tensor) -> torch.Tensor:
    """sin(r) / r, with sinc(0) = 1 (series 1 - r^2/6 + r^4/120 - r^6/5040 for |r| < 0.03)."""
    small = r.abs() < _SERIES_BELOW
    safe = torch.where(small, torch.ones_like(r), r)
    r2 = r * r
    series = 1 - r2 / 6 * (1 - r2 / 20 * (1 - r2 / 42))
    return torch.where(small, series, torch.sin(safe) / safe)


def _theta_over_sin(theta: torch.Tensor) -> torch.Tensor:
    """theta / sin(theta) for theta in [0, pi), = 1 + theta^2/6 + 7 theta^4/360 + 31 theta^6/15120 + ..."""
    small = theta < _SERIES_BELOW
    safe = torch.where(small, torch.ones_like(theta), theta)
    t2 = theta * theta
    series = 1 + t2 / 6 + 7 * t2 * t2 / 360 + 31 * t2 * t2 * t2 / 15120
    return torch.where(small, series, safe / torch.sin(safe))


def _dlog_coefficients(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(g, A, B) of :func:`_sphere_dlog`: g = theta / sin(theta), A = (1 - theta cot(theta)) / sin^2(theta),
    B = (theta / sin(theta) - cos(theta)) / sin^2(theta).

    A and B cancel catastrophically for small theta (relative error ~ eps / theta^2), so below 0.05
    (float64) or 0.3 (lower precision) they use their series through theta^6, whose truncation error
    there is below the closed form's rounding error:
    A = 1/3 + 2 t^2/15 + 2 t^4/63 + 4 t^6/675, B = 2/3 + t^2/5 + 17 t^4/420 + 29 t^6/4200.
    """
    threshold = 0.05 if theta.dtype == torch.float64 else 0.3
    small = theta < threshold
    safe = torch.where(small, torch.ones_like(theta), theta)
    sin, cos = torch.sin(safe), torch.cos(safe)
    g = _theta_over_sin(theta)
    t2 = theta * theta
    a_series = 1 / 3 + t2 * (2 / 15 + t2 * (2 / 63 + t2 * 4 / 675))
    b_series = 2 / 3 + t2 * (1 / 5 + t2 * (17 / 420 + t2 * 29 / 4200))
    a = torch.where(small, a_series, (1 - safe * cos / sin) / sin**2)
    b = torch.where(small, b_series, (safe / sin - cos) / sin**2)
    return g, a, b


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise inner product <a, b>, keeping the last dimension: (n, 1)."""
    return (a * b).sum(dim=-1, keepdim=True)


def _norm(a: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean norm, keeping the last dimension: (n, 1)."""
    return torch.linalg.vector_norm(a, dim=-1, keepdim=True)


# -- the unit sphere's geometry, shared by Sphere (S^d) and SO3 (S^3 with q ~ -q) -------------------------


def _sphere_arc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Great-circle distance of unit vectors, 2 atan2(|x - y|, |x + y|): accurate near 0 and near pi."""
    return 2 * torch.atan2(_norm(x - y), _norm(x + y)).squeeze(-1)


def _householder_basis(x: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of T_x S^d = x^perp, shape (n, d, d + 1).

    H = I - 2 w w^T / |w|^2 with w = x + s e_0, s = sign(x_0) (+1 at 0), is a symmetric orthogonal
    matrix with H e_0 = -s x; so its rows 1..d are orthonormal and orthogonal to x. |w|^2 = 2 + 2|x_0|
    is at least 2, so the construction is stable for every x.
    """
    s = torch.where(x[:, :1] >= 0, 1.0, -1.0).to(x.dtype)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    w = x + s * eye[0]
    h = eye - 2 * w[:, :, None] * w[:, None, :] / (w * w).sum(dim=1)[:, None, None]
    return h[:, 1:, :]


def _first_tangent(x: torch.Tensor) -> torch.Tensor:
    """The first vector of :func:`_householder_basis`, H e_1 = e_1 - 2 w w_1 / |w|^2, without the matrix."""
    s = torch.where(x[:, :1] >= 0, 1.0, -1.0).to(x.dtype)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    w = x + s * eye[0]
    return eye[1] - 2 * w * w[:, 1:2] / (w * w).sum(dim=1, keepdim=True)


def _sphere_exp(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """exp_x(v) = cos|v| x + sinc|v| v."""
    r = _norm(v)
    return torch.cos(r) * x + sinc(r) * v


def _sphere_log(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log_x(y) = (theta / sin theta) u, u = y - <x, y> x (|u| = sin theta), theta the great-circle distance.

    Written with theta / sin(theta) (smooth, 1 + theta^2/6 + ...) rather than theta u / |u|, the map is
    differentiable at y = x, where it is 0. u is orthogonalised against x twice (one classical
    Gram-Schmidt step loses orthogonality when y is nearly +-x), so the result is tangent to rounding.
    Near the antipode (|u| below 10 eps with <x, y> < 0) the direction of u is rounding noise and every
    direction is (nearly) a shortest geodesic: the first vector of :func:`_householder_basis` is taken,
    with length theta (chosen with torch.where, so there is no data-dependent branch).
    """
    c = _dot(x, y)
    u = y - c * x
    u = u - _dot(x, u) * x
    theta = _sphere_arc(x, y)[:, None]
    out = _theta_over_sin(theta) * u
    antipodal = (_norm(u) < 10 * torch.finfo(x.dtype).eps) & (c < 0)
    return torch.where(antipodal, theta * _first_tangent(x), out)


def _sphere_dlog(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The derivative of y -> log_x(y) at y in the direction w (tangent at y), a vector of T_x.

    Split w into its component a along the geodesic from x through y and the rest: moving y along the
    geodesic changes log_x(y) by the same amount along its own direction, while moving it across
    rotates log_x(y), magnified by theta / sin(theta) (the inverse of the Jacobi field's growth).
    With theta = d(x, y), written without the ill-conditioned unit vectors,

        dlog_x(y)[w] = g w - <w, x> (A y + B x),   g = theta / sin theta,
        A = (1 - theta cot theta) / sin^2 theta,   B = (theta / sin theta - cos theta) / sin^2 theta,

    (tangent at x since A cos theta + B = g); at y = x this is w itself.
    """
    theta = _sphere_arc(x, y)[:, None]
    g, a, b = _dlog_coefficients(theta)
    return g * w - _dot(w, x) * (a * y + b * x)


def _sphere_geodesic(x: torch.Tensor, log_xy: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The point at fraction s of the geodesic from x along L = log_x(y), and its derivative in s.

    With theta = |L| and r = s theta,

        gamma(s)  = exp_x(s L) = cos(r) x + s sinc(r) L,
        gamma'(s) = cos(r) L - theta sin(r) x,

    which is L parallel-transported along the great circle to gamma(s) (a geodesic's velocity is
    parallel), in closed form without dividing by theta.
    """
    theta = _norm(log_xy)
    r = s * theta
    point = torch.cos(r) * x + s * sinc(r) * log_xy
    velocity = torch.cos(r) * log_xy - theta * torch.sin(r) * x
    return point, velocity


#: Truncation of the wrapped-normal sums (:meth:`Manifold.wrapped_normal_log_prob`): the terms left out
#: weigh at most this much (relative on the torus; as probability mass on spheres and SO(3)).
WRAPPED_TOLERANCE = 1e-16


#: The most terms (lattice images per angle, or sheets) a wrapped-normal density sums before it refuses the scale.
WRAPPED_MAX_TERMS = 1001


def _sphere_sheets(d: int, scale: float) -> int:
    """K, the sheets |v| in [s pi, (s + 1) pi), s < K, that the S^d wrapped normal sums: the smallest K with
    P(|v| >= K pi) <= WRAPPED_TOLERANCE for v ~ N(0, scale^2 I_d), i.e. Q(d / 2, (K pi / scale)^2 / 2) (the
    regularised upper incomplete gamma function: the chi distribution's tail)."""
    from scipy.special import gammaincc

    for k in range(1, WRAPPED_MAX_TERMS + 1):
        if gammaincc(d / 2, (k * math.pi / scale) ** 2 / 2) <= WRAPPED_TOLERANCE:
            return k
    raise FlowmatchError(f"scale {scale} is too large for the wrapped normal's density on the sphere (over {WRAPPED_MAX_TERMS} sheets)")


def _torus_images(scale: float) -> int:
    """J, the images |j| <= J per angle that the torus's wrapped normal sums (:meth:`FlatTorus.wrapped_normal_log_prob`)."""
    a = math.pi**2 / (2 * scale**2)
    for j in range(1, WRAPPED_MAX_TERMS):
        if 2 * math.exp(-4 * a * j * (j + 1)) / -math.expm1(-8 * a * (j + 1)) <= WRAPPED_TOLERANCE:
            return j
    raise FlowmatchError(f"scale {scale} is too large for the wrapped normal's density on the torus (over {WRAPPED_MAX_TERMS} images)")


def _sphere_wrapped_log_density(theta: torch.Tensor, d: int, scale: float) -> torch.Tensor:
    """log p at geodesic distance theta (float64, in [0, pi]) from the mean of exp_mean(N(0, scale^2 I_d)) on S^d.

    exp_mean maps each shell s pi <= |v| < (s + 1) pi of T_mean onto S^d (less one point), the odd shells
    in the reversed direction, so a point at distance theta has one preimage per shell, at radius
    r_s = s pi + theta (s even) or (s + 1) pi - theta (s odd); the volume Jacobian of exp there is
    |sin r / r|^(d-1) = (sin theta / r_s)^(d-1). Hence

        p = sum_s (2 pi scale^2)^(-d/2) exp(-r_s^2 / (2 scale^2)) (r_s / sin theta)^(d-1),

    summed over the sheets of :func:`_sphere_sheets` (those left out carry probability mass at most
    WRAPPED_TOLERANCE). The first term is (theta / sin theta)^(d-1) N(theta), smooth at theta = 0; the
    others, and every term at theta = pi, grow like 1 / sin(theta)^(d-1) (the shells |v| = 2 pi k collapse
    onto the mean and |v| = (2k + 1) pi onto its antipode): an integrable singularity, +inf at the mean for
    K > 1 and, in exact arithmetic, at the antipode (where sin(pi) rounds to 1e-16, it is merely large)
    For d = 1 it is the wrapped normal of the circle.
    """
    k = torch.arange(_sphere_sheets(d, scale), dtype=torch.float64, device=theta.device)
    t = theta[:, None]
    r = torch.where(k % 2 == 0, k * math.pi + t, (k + 1) * math.pi - t)  # (n, K)
    terms = -(r**2) / (2 * scale**2)
    if d > 1:
        first = torch.log(_theta_over_sin(theta.clamp(max=math.pi)))[:, None]
        rest = torch.log(r) - torch.log(torch.sin(t))
        terms = terms + (d - 1) * torch.where(k == 0, first, rest)
    return torch.logsumexp(terms, dim=1) - 0.5 * d * math.log(2 * math.pi * scale**2)


def _wrap(a: torch.Tensor) -> torch.Tensor:
    """Angles into [-pi, pi): a - 2 pi floor((a + pi) / (2 pi)), guarding the rounding to exactly pi."""
    out = torch.remainder(a + math.pi, 2 * math.pi) - math.pi
    return torch.where(out >= math.pi, out - 2 * math.pi, out)


# -- quaternions -------------------------------------------------------------------------------------------


def quaternion_multiply(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The Hamilton product p q of quaternions (w, x, y, z), row by row (broadcasting)."""
    pw, px, py, pz = p.unbind(-1)
    qw, qx, qy, qz = q.unbind(-1)
    return torch.stack(
        (
            pw * qw - px * qx - py * qy - pz * qz,
            pw * qx + px * qw + py * qz - pz * qy,
            pw * qy - px * qz + py * qw + pz * qx,
            pw * qz + px * qy - py * qx + pz * qw,
        ),
        dim=-1,
    )


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (n, 3, 3) of unit quaternions (n, 4) = (w, x, y, z): R v = q (0, v) q^*.

    R = I + 2 w [u]_x + 2 [u]_x^2 with u = (x, y, z); quadratic in q, so R(q) = R(-q).
    """
    if q.dim() != 2 or q.shape[1] != 4:
        raise FlowmatchError(f"quaternions must have shape (n, 4), got {tuple(q.shape)}")
    w, x, y, z = q.unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def matrix_to_quaternion(r: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (n, 4), w >= 0, of rotation matrices (n, 3, 3) (the inverse of :func:`quaternion_to_matrix`).

    Shepperd's method: of 4w^2 = 1 + tr R, 4x^2 = 1 + R00 - R11 - R22, 4y^2 = 1 - R00 + R11 - R22 and
    4z^2 = 1 - R00 - R11 + R22, the largest gives one component accurately, and the off-diagonal sums
    and differences (R21 - R12 = 4wx, R10 + R01 = 4xy, ...) give the other three divided by it.
    """
    if r.dim() != 3 or r.shape[1:] != (3, 3):
        raise FlowmatchError(f"rotation matrices must have shape (n, 3, 3), got {tuple(r.shape)}")
    r00, r01, r02 = r[:, 0, 0], r[:, 0, 1], r[:, 0, 2]
    r10, r11, r12 = r[:, 1, 0], r[:, 1, 1], r[:, 1, 2]
    r20, r21, r22 = r[:, 2, 0], r[:, 2, 1], r[:, 2, 2]
    # candidate (unnormalised) quaternions, each 4 * (its pivot component) times q
    candidates = torch.stack(
        (
            torch.stack((1 + r00 + r11 + r22, r21 - r12, r02 - r20, r10 - r01), dim=-1),
            torch.stack((r21 - r12, 1 + r00 - r11 - r22, r10 + r01, r02 + r20), dim=-1),
            torch.stack((r02 - r20, r10 + r01, 1 - r00 + r11 - r22, r21 + r12), dim=-1),
            torch.stack((r10 - r01, r02 + r20, r21 + r12, 1 - r00 - r11 + r22), dim=-1),
        ),
        dim=1,
    )
    best = torch.diagonal(candidates, dim1=1, dim2=2).argmax(dim=1)
    q = candidates[torch.arange(r.shape[0], device=r.device), best]
    q = q / _norm(q)
    return torch.where(q[:, :1] < 0, -q, q)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Rotation vectors (n, 3), axis * angle with angle in [0, pi], of unit quaternions (n, 4).

    With q = +-(cos(a/2), sin(a/2) n) taken with w >= 0: a = 2 atan2(|u|, w) for u = (x, y, z), and
    the rotation vector a n = u * a / sin(a/2) = 2 u (a/2) / sin(a/2), stable at a = 0.
    """
    if q.dim() != 2 or q.shape[1] != 4:
        raise FlowmatchError(f"quaternions must have shape (n, 4), got {tuple(q.shape)}")
    q = torch.where(q[:, :1] < 0, -q, q)
    u = q[:, 1:]
    half = torch.atan2(_norm(u), q[:, :1])
    return 2 * _theta_over_sin(half) * u


# -- the manifolds ---------------------------------------------------------------------------------------


def _check_dim(dim: Any, what: str) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise FlowmatchError(f"the dimension of {what} must be a positive integer, got {dim!r}")
    return dim


def check_count(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise FlowmatchError(f"the number of points must be a non-negative integer, got {n!r}")
    return n


class Manifold:
    """A Riemannian manifold in ambient coordinates (see the module docstring for the conventions).

    Subclasses set ``name``, ``dim`` (intrinsic dimension), ``ambient_dim`` (coordinates per point),
    ``feature_dim`` (width of :meth:`features`) and ``output_dim`` (the network output width that
    :meth:`to_tangent` turns into a tangent vector), and implement the geometry.
    """

    name = "manifold"
    dim: int
    ambient_dim: int
    feature_dim: int
    output_dim: int

    # geometry ---------------------------------------------------------------------------------------

    def exp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The exponential map: the geodesic from x with initial velocity v (tangent at x), at time 1."""
        raise NotImplementedError

    def log(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The logarithm map: the tangent vector at x of the shortest geodesic from x to y."""
        raise NotImplementedError

    def proj(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The orthogonal projection of an ambient vector u onto the tangent space T_x."""
        raise NotImplementedError

    def projx(self, x: torch.Tensor) -> torch.Tensor:
        """The nearest point of the manifold (continuous in x: it never switches representatives)."""
        raise NotImplementedError

    def canonical(self, x: torch.Tensor) -> torch.Tensor:
        """``projx(x)`` in the manifold's one canonical representation (what outputs report)."""
        return self.projx(x)

    def dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Geodesic distances between the rows of x and y, shape (n,)."""
        raise NotImplementedError

    def cdist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The (n, m) matrix of geodesic distances between the rows of x (n, D) and y (m, D)."""
        raise NotImplementedError

    def dlog(self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """d/de log_x(y + e w) at e = 0 for w tangent at y: a velocity at y expressed in T_x (normal coordinates at x)."""
        raise NotImplementedError

    def geodesic(self, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma(s), gamma'(s)) for gamma(s) = exp_x(s log_x(y)) and s an (n, 1) column of fractions."""
        raise NotImplementedError

    def tangent_basis(self, x: torch.Tensor) -> torch.Tensor:
        """An orthonormal basis of each T_x, shape (n, dim, ambient_dim)."""
        raise NotImplementedError

    # densities ----------------------------------------------------------------------------------------

    @property
    def volume(self) -> float:
        """The total Riemannian volume (compact manifolds only)."""
        raise NotImplementedError

    def random_uniform(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """n points from the uniform distribution (normalised Riemannian volume), drawn on the CPU with
        ``generator`` and moved to ``device``."""
        raise NotImplementedError

    def uniform_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log(1 / volume) for every row of x, shape (n,): the uniform density w.r.t. the Riemannian volume."""
        return torch.full((x.shape[0],), -math.log(self.volume), dtype=x.dtype, device=x.device)

    def random_wrapped_normal(self, n: int, mean: Any, scale: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """n points exp_mean(scale * z), z ~ N(0, I) in T_mean (an ambient normal vector projected onto
        T_mean, which is a standard normal in the tangent space); in ``canonical`` form.

        ``mean`` is one point (ambient_dim,) or one per row (n, ambient_dim); the noise is drawn on the CPU
        with ``generator`` in mean's dtype.
        """
        n = check_count(n)
        mean, scale = self._wrapped_normal_args(n, mean, scale, positive=False)
        noise = torch.randn(n, self.ambient_dim, generator=generator, dtype=mean.dtype).to(mean.device)
        base = mean.expand(n, -1)
        return self.canonical(self.exp(base, scale * self.proj(base, noise)))

    def wrapped_normal_log_prob(self, x: torch.Tensor, mean: Any, scale: float) -> torch.Tensor:
        """log-density (n,) at the rows of x of the law of :meth:`random_wrapped_normal` (``scale`` > 0),
        w.r.t. the Riemannian volume (the measure of :meth:`uniform_log_prob`), computed in float64 and
        returned in x's dtype. The push-forward of N(0, scale^2 I) in T_mean by exp_mean sums, over every
        preimage v of x, N(v; 0, scale^2 I) / |det d exp_mean(v)|; each manifold's docstring says how."""
        raise FlowmatchError(f"{self.label} has no wrapped-normal density here")

    def _wrapped_normal_args(self, n: int, mean: Any, scale: Any, positive: bool = True) -> tuple[torch.Tensor, float]:
        """(mean as (1 or n, ambient_dim) canonical points, scale as a float), checked: one error each."""
        mean = torch.as_tensor(mean)
        if mean.dim() == 1:
            mean = mean[None]
        mean = self.check(mean, "mean")
        if mean.shape[0] not in (1, n):
            raise FlowmatchError(f"mean must be one point or one per sample ({n}), got {mean.shape[0]} rows")
        what = "a positive number" if positive else "a non-negative number"
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise FlowmatchError(f"scale must be {what}, got {scale!r}") from None
        if not (math.isfinite(scale) and (scale > 0 if positive else scale >= 0)):
            raise FlowmatchError(f"scale must be {what}, got {scale}")
        return mean, scale

    def _wrapped_normal_points(self, x: Any, mean: Any, scale: Any) -> tuple[torch.Tensor, torch.Tensor, float, torch.dtype]:
        """(x, mean expanded to x's rows, scale) in float64 for a log-density, x checked as points; and x's dtype."""
        x = self.check(x, "points")
        mean, scale = self._wrapped_normal_args(x.shape[0], mean, scale)
        return x.to(torch.float64), mean.to(device=x.device, dtype=torch.float64).expand(x.shape[0], -1), scale, x.dtype

    # networks -------------------------------------------------------------------------------------------

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What a network reads of a point: a smooth encoding, the same for every representative."""
        return x

    def to_tangent(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """A network's output (n, output_dim) as a tangent vector at x: ``proj(x, out)`` by default."""
        return self.proj(x, out)

    # validation and configuration ---------------------------------------------------------------------

    def check(self, x: Any, what: str = "points") -> torch.Tensor:
        """Validate a user's points and return them in ``canonical`` form.

        They must form an (n, ambient_dim) array of finite numbers (integers are converted to the default
        float dtype) lying on the manifold to within 1e-4; otherwise a :class:`FlowmatchError` names the
        first offending row (counting from 0) and the problem.
        """
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise FlowmatchError(f"{what} must be a numeric array of shape (n, {self.ambient_dim})") from None
        if not x.is_floating_point():
            if x.is_complex():
                raise FlowmatchError(f"{what} must be real numbers, got {x.dtype}")
            x = x.to(torch.get_default_dtype())
        if x.dim() != 2 or x.shape[1] != self.ambient_dim:
            raise FlowmatchError(f"{what} on {self.label} must have shape (n, {self.ambient_dim}), got {tuple(x.shape)}")
        finite = torch.isfinite(x).all(dim=1)
        if not bool(finite.all()):
            row = int((~finite).nonzero()[0, 0])
            raise FlowmatchError(f"{what} row {row} has a non-finite value: {x[row].tolist()}")
        self._check_on_manifold(x, what)
        return self.canonical(x)

    def _check_on_manifold(self, x: torch.Tensor, what: str) -> None:
        """Raise FlowmatchError if a (finite, right-width) row lies off the manifold."""

    @property
    def label(self) -> str:
        """The manifold's name for messages, e.g. 'the sphere S^2'."""
        return self.name

    def to_config(self) -> dict:
        """{"name": ..., "dim": ...}, which :func:`manifold_from_config` turns back into the manifold."""
        return {"name": self.name, "dim": self.dim}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dim})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and isinstance(other, Manifold) and other.dim == self.dim

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.dim))


class Euclidean(Manifold):
    """R^d with the flat metric: exp(x, v) = x + v, log(x, y) = y - x, d(x, y) = |y - x|.

    It has no uniform distribution, so ``random_uniform`` and ``uniform_log_prob`` raise
    :class:`FlowmatchError`: give a flow on R^d an explicit source.
    """

    name = "euclidean"

    def __init__(self, dim: int):
        self.dim = self.ambient_dim = self.feature_dim = self.output_dim = _check_dim(dim, "the Euclidean space")

    @property
    def label(self) -> str:
        return f"R^{self.dim}"

    def exp(self, x, v):
        return x + v

    def log(self, x, y):
        return y - x

    def proj(self, x, u):
        return u

    def projx(self, x):
        return x

    def dist(self, x, y):
        return torch.linalg.vector_norm(y - x, dim=-1)

    def cdist(self, x, y):
        return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")

    def dlog(self, x, y, w):
        return w

    def geodesic(self, x, y, s):
        return x + s * (y - x), y - x

    def tangent_basis(self, x):
        return torch.eye(self.dim, dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1)

    @property
    def volume(self) -> float:
        raise FlowmatchError(f"{self.label} has infinite volume and no uniform distribution; give the flow a source distribution")

    def wrapped_normal_log_prob(self, x, mean, scale):
        """The normal N(mean, scale^2 I): -|x - mean|^2 / (2 scale^2) - (d / 2) log(2 pi scale^2) (nothing wraps)."""
        x, mean, scale, dtype = self._wrapped_normal_points(x, mean, scale)
        out = -(x - mean).pow(2).sum(dim=1) / (2 * scale**2) - 0.5 * self.dim * math.log(2 * math.pi * scale**2)
        return out.to(dtype)

    def random_uniform(self, n, generator=None, dtype=torch.float32, device=None):
        raise FlowmatchError(f"{self.label} has no uniform distribution; give the flow a source distribution")


class Sphere(Manifold):
    """The unit sphere S^d = {x in R^(d+1): |x| = 1} with the metric induced by R^(d+1).

    exp_x(v) = cos|v| x + sin|v| v / |v|; log_x(y) = theta (y - <x,y> x) / |y - <x,y> x|;
    d(x, y) = theta = 2 atan2(|x - y|, |x + y|); proj(x, u) = u - <x, u> x; projx(x) = x / |x|.
    The uniform density is 1 / vol(S^d), vol(S^d) = 2 pi^((d+1)/2) / Gamma((d+1)/2) (4 pi for S^2).
    The network features are the coordinates x themselves.
    """

    name = "sphere"

    def __init__(self, dim: int = 2):
        self.dim = _check_dim(dim, "the sphere")
        self.ambient_dim = self.feature_dim = self.output_dim = self.dim + 1

    @property
    def label(self) -> str:
        return f"the sphere S^{self.dim}"

    def exp(self, x, v):
        return _sphere_exp(x, v)

    def log(self, x, y):
        return _sphere_log(x, y)

    def proj(self, x, u):
        return u - _dot(x, u) * x

    def projx(self, x):
        return x / _norm(x)

    def dist(self, x, y):
        return _sphere_arc(x, y)

    def cdist(self, x, y):
        chord = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
        anti = torch.cdist(x, -y, compute_mode="donot_use_mm_for_euclid_dist")
        return 2 * torch.atan2(chord, anti)

    def dlog(self, x, y, w):
        return _sphere_dlog(x, y, w)

    def geodesic(self, x, y, s):
        return _sphere_geodesic(x, self.log(x, y), s)

    def tangent_basis(self, x):
        return _householder_basis(x)

    @property
    def volume(self) -> float:
        k = (self.dim + 1) / 2
        return 2 * math.pi**k / math.gamma(k)

    def random_uniform(self, n, generator=None, dtype=torch.float32, device=None):
        """Normalised standard normal vectors (rotation invariant, hence uniform)."""
        g = torch.randn(check_count(n), self.ambient_dim, generator=generator, dtype=dtype)
        return self.projx(g).to(device) if device is not None else self.projx(g)

    def wrapped_normal_log_prob(self, x, mean, scale):
        """Exact: with theta = d(mean, x), the sum over the preimages of exp_mean,
        p = sum_s (2 pi scale^2)^(-d/2) exp(-r_s^2 / (2 scale^2)) (r_s / sin theta)^(d-1),
        r_s = s pi + theta (s even) or (s + 1) pi - theta (s odd) (:func:`_sphere_wrapped_log_density`:
        the Jacobian factor is (sin r / r)^(d-1) = (sin theta / r_s)^(d-1); the sheets left out carry
        probability mass below 1e-16). Unbounded, but integrable, at the antipode of the mean (d >= 2), where
        the whole shell |v| = pi lands, and at the mean itself from the shells |v| = 2 pi k."""
        x, mean, scale, dtype = self._wrapped_normal_points(x, mean, scale)
        return _sphere_wrapped_log_density(_sphere_arc(mean, x), self.dim, scale).to(dtype)

    def _check_on_manifold(self, x, what):
        norms = torch.linalg.vector_norm(x, dim=1)
        off = (norms - 1).abs() > ON_MANIFOLD_TOLERANCE
        if bool(off.any()):
            row = int(off.nonzero()[0, 0])
            raise FlowmatchError(f"{what} row {row} has norm {float(norms[row]):.6g}, not 1: points on {self.label} must be unit vectors")


class FlatTorus(Manifold):
    """The flat torus T^d: angles in [-pi, pi)^d, with the flat metric of R^d / (2 pi Z)^d.

    exp(x, v) = wrap(x + v), log(x, y) = wrap(y - x) (the shorter way round in every coordinate),
    d(x, y) = |wrap(y - x)|, proj = identity, projx = wrap; volume (2 pi)^d. A network reads
    [cos x, sin x] (width 2d, continuous across the seam) and outputs a velocity of width d.
    ``check`` accepts angles in [-2 pi, 2 pi] (both the [-pi, pi) and the [0, 2 pi) conventions) and
    wraps them; larger values are refused as probably not radians.
    """

    name = "torus"

    def __init__(self, dim: int = 2):
        self.dim = self.ambient_dim = self.output_dim = _check_dim(dim, "the torus")
        self.feature_dim = 2 * self.dim

    @property
    def label(self) -> str:
        return f"the flat torus T^{self.dim}"

    def exp(self, x, v):
        return _wrap(x + v)

    def log(self, x, y):
        return _wrap(y - x)

    def proj(self, x, u):
        return u

    def projx(self, x):
        return _wrap(x)

    def dist(self, x, y):
        return torch.linalg.vector_norm(_wrap(y - x), dim=-1)

    def cdist(self, x, y):
        total = x.new_zeros(x.shape[0], y.shape[0])
        for k in range(self.dim):  # one (n, m) slab per coordinate, never (n, m, d)
            total += _wrap(y[None, :, k] - x[:, None, k]) ** 2
        return total.sqrt()

    def dlog(self, x, y, w):
        return w

    def geodesic(self, x, y, s):
        direction = _wrap(y - x)
        return _wrap(x + s * direction), direction

    def tangent_basis(self, x):
        return torch.eye(self.dim, dtype=x.dtype, device=x.device).expand(x.shape[0], -1, -1)

    @property
    def volume(self) -> float:
        return (2 * math.pi) ** self.dim

    def random_uniform(self, n, generator=None, dtype=torch.float32, device=None):
        u = torch.rand(check_count(n), self.dim, generator=generator, dtype=dtype)
        x = _wrap(2 * math.pi * u - math.pi)
        return x.to(device) if device is not None else x

    def wrapped_normal_log_prob(self, x, mean, scale):
        """The wrapped normal, coordinate by coordinate: with delta = wrap(x - mean) in [-pi, pi),

            p = prod_i sum_{|j| <= J} N(delta_i + 2 pi j; 0, scale^2),

        J the smallest with 2 exp(-4 a J (J + 1)) / (1 - exp(-8 a (J + 1))) <= 1e-16, a = pi^2 / (2 scale^2).
        That is a bound on the images left out relative to the largest kept term (|delta| <= pi): the image
        j has |delta + 2 pi j| >= (2 |j| - 1) pi, so it weighs at most exp(-a ((2 |j| - 1)^2 - 1)) of it, and
        these fall geometrically. Each coordinate's sum, and so log p up to d times, is within 1e-16 relative.
        (J = 1 for scale up to 1.1; J = 4 at scale 3.)"""
        x, mean, scale, dtype = self._wrapped_normal_points(x, mean, scale)
        images = _torus_images(scale)
        shifts = 2 * math.pi * torch.arange(-images, images + 1, dtype=torch.float64, device=x.device)
        z = (_wrap(x - mean)[..., None] + shifts) / scale  # (n, d, 2J + 1)
        per_angle = torch.logsumexp(-0.5 * z**2, dim=-1) - math.log(scale) - 0.5 * math.log(2 * math.pi)
        return per_angle.sum(dim=1).to(dtype)

    def features(self, x):
        return torch.cat((torch.cos(x), torch.sin(x)), dim=-1)

    def to_tangent(self, x, out):
        return out

    def _check_on_manifold(self, x, what):
        outside = x.abs() > 2 * math.pi + ON_MANIFOLD_TOLERANCE
        if bool(outside.any()):
            row, col = (int(i) for i in outside.nonzero()[0])
            raise FlowmatchError(
                f"{what} row {row}, column {col} is {float(x[row, col]):.6g}, outside [-2 pi, 2 pi]: {self.label} takes angles in radians"
            )


class SO3(Manifold):
    """The rotation group SO(3) as unit quaternions q = (w, x, y, z) on S^3, with q and -q the same rotation.

    **Metric.** Geodesics, exp, log, tangent vectors and divergences are those of S^3 in the quaternion
    coordinates: exp is the S^3 exponential map and log_q(p) the S^3 logarithm towards whichever of
    +-p is nearer to q (the one with <q, p'> >= 0). This metric is the bi-invariant metric of SO(3)
    scaled by 1/2: the S^3 arc from q to the nearer of +-p is *half* the angle of the rotation
    q^* p, so |log_q(p)| = dist(q, p) / 2.

    **Distance.** ``dist`` and ``cdist`` return what users read, the rotation angle in radians,
    2 arccos |<q, p>| in [0, pi] (computed as 4 atan2(|q - p'|, |q + p'|), accurate everywhere).

    **Density.** The uniform density is 1 / pi^2, the inverse of the volume of S^3 / {+-1} (half of
    vol(S^3) = 2 pi^2), i.e. densities are with respect to the volume of the quaternion metric, which
    is what the divergence computed in quaternion coordinates transports. (W.r.t. the rotation-angle
    metric, whose volume is 2^3 pi^2 = 8 pi^2, subtract log 8 from a log-density.)

    **Representatives.** ``projx`` only normalises (it is continuous, so solvers can use it every
    step); ``canonical`` also picks the sign with w >= 0 and is applied to outputs (samples,
    ``check``). ``random_wrapped_normal``'s scale is in S^3 units: a spread of s radians of
    rotation angle is scale s / 2.

    **Networks.** ``features`` are the 9 entries of the rotation matrix (the same for q and -q);
    the network outputs an angular velocity omega in R^3 and ``to_tangent`` gives q (0, omega), a tangent
    vector at q that flips sign with q, as a velocity field on rotations must (a field v(q) with
    v(-q) = v(q) would move q and -q to different rotations).
    """

    name = "so3"

    def __init__(self, dim: int = 3):
        if dim != 3:
            raise FlowmatchError(f"SO(3) has dimension 3, got {dim!r}")
        self.dim, self.ambient_dim, self.feature_dim, self.output_dim = 3, 4, 9, 3

    @property
    def label(self) -> str:
        return "SO(3)"

    def __repr__(self) -> str:
        return "SO3()"

    def _nearer(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """+1 where <x, y> >= 0 else -1, as an (n, 1) column: the sign of the representative of y nearer x."""
        return torch.where(_dot(x, y) >= 0, 1.0, -1.0).to(x.dtype)

    def exp(self, x, v):
        return _sphere_exp(x, v)

    def log(self, x, y):
        return _sphere_log(x, self._nearer(x, y) * y)

    def proj(self, x, u):
        return u - _dot(x, u) * x

    def projx(self, x):
        return x / _norm(x)

    def canonical(self, x):
        x = self.projx(x)
        return torch.where(x[:, :1] < 0, -x, x)

    def dist(self, x, y):
        a, b = _norm(x - y), _norm(x + y)
        return 4 * torch.atan2(torch.minimum(a, b), torch.maximum(a, b)).squeeze(-1)

    def cdist(self, x, y):
        a = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
        b = torch.cdist(x, -y, compute_mode="donot_use_mm_for_euclid_dist")
        return 4 * torch.atan2(torch.minimum(a, b), torch.maximum(a, b))

    def dlog(self, x, y, w):
        s = self._nearer(x, y)
        return _sphere_dlog(x, s * y, s * w)

    def geodesic(self, x, y, s):
        return _sphere_geodesic(x, self.log(x, y), s)

    def tangent_basis(self, x):
        return _householder_basis(x)

    @property
    def volume(self) -> float:
        return math.pi**2

    def random_uniform(self, n, generator=None, dtype=torch.float32, device=None):
        """Uniform on S^3 (normalised normal vectors), hence Haar-uniform rotations; canonical (w >= 0)."""
        g = torch.randn(check_count(n), 4, generator=generator, dtype=dtype)
        q = self.canonical(g)
        return q.to(device) if device is not None else q

    def wrapped_normal_log_prob(self, x, mean, scale):
        """Exact: the rotation {q, -q} collects the S^3 density (:meth:`Sphere.wrapped_normal_log_prob`, d = 3)
        of both quaternions, p(q) = p_S3(theta) + p_S3(pi - theta), theta the S^3 arc from the mean to q,
        w.r.t. the volume of S^3/+-1 (pi^2 in all), as :meth:`uniform_log_prob` (scale in S^3 units)."""
        x, mean, scale, dtype = self._wrapped_normal_points(x, mean, scale)
        theta = _sphere_arc(mean, x)
        both = torch.stack((_sphere_wrapped_log_density(theta, 3, scale), _sphere_wrapped_log_density(math.pi - theta, 3, scale)))
        return torch.logsumexp(both, dim=0).to(dtype)

    def features(self, x):
        return quaternion_to_matrix(x).reshape(x.shape[0], 9)

    def to_tangent(self, x, out):
        return quaternion_multiply(x, torch.cat((torch.zeros_like(out[:, :1]), out), dim=-1))

    def _check_on_manifold(self, x, what):
        norms = torch.linalg.vector_norm(x, dim=1)
        off = (norms - 1).abs() > ON_MANIFOLD_TOLERANCE
        if bool(off.any()):
            row = int(off.nonzero()[0, 0])
            prefix = "" if what == "points" else f"{what}: "
            raise FlowmatchError(
                f"{prefix}quaternion row {row} has norm {float(norms[row]):.6g}, not 1 (a rotation is a unit quaternion w, x, y, z)"
            )


#: The manifolds by name, as :func:`make_manifold` takes them.
MANIFOLDS: dict[str, Callable[..., Manifold]] = {"euclidean": Euclidean, "sphere": Sphere, "torus": FlatTorus, "so3": SO3}


def make_manifold(name: str, dim: int | None = None) -> Manifold:
    """The manifold called ``name`` (euclidean, sphere, torus or so3) of dimension ``dim``.

    ``dim`` defaults to 2 for the sphere (S^2) and the torus (T^2); SO(3) has dimension 3; R^d needs it.
    """
    if not isinstance(name, str) or name.lower() not in MANIFOLDS:
        raise FlowmatchError(f"unknown manifold {name!r}; choose one of {', '.join(MANIFOLDS)}")
    cls = MANIFOLDS[name.lower()]
    if dim is None:
        if cls is Euclidean:
            raise FlowmatchError("the Euclidean manifold needs a dimension (dim=...)")
        return cls()
    return cls(dim)


def manifold_from_config(config: dict) -> Manifold:
    """The manifold of a ``Manifold.to_config()`` dict, {"name": ..., "dim": ...}."""
    if not isinstance(config, dict) or "name" not in config:
        raise FlowmatchError(f"a manifold config must be a dict with a 'name', got {config!r}")
    extra = set(config) - {"name", "dim"}
    if extra:
        raise FlowmatchError(f"unknown manifold config keys: {', '.join(sorted(extra))} (expected name and dim)")
    return make_manifold(config["name"], config.get("dim"))
