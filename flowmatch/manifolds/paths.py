"""The geodesic conditional path of Riemannian flow matching (Chen & Lipman 2024).

Given a source point x0 and a data point x1 on a manifold M, the conditional path runs along the
shortest geodesic from x0 to x1 on the schedule kappa_t (kappa_0 = 0, kappa_1 = 1, from
:mod:`flowmatch.discrete.schedulers`):

    x_t = exp_{x0}(kappa_t log_{x0}(x1)),

so that d(x0, x_t) = kappa_t d(x0, x1) and d(x_t, x1) = (1 - kappa_t) d(x0, x1). Its velocity, the
regression target of the flow matching loss, is

    u_t = d/dt x_t = kappa'_t * gamma'(kappa_t),

where gamma(s) = exp_{x0}(s log_{x0}(x1)) is the unit-time geodesic and gamma'(s) its velocity, which
is log_{x0}(x1) parallel-transported along the geodesic to gamma(s); it has constant length
d(x0, x1), so |u_t| = kappa'_t d(x0, x1). In closed form (:meth:`Manifold.geodesic`):

- R^d: x_t = x0 + kappa_t (x1 - x0), u_t = kappa'_t (x1 - x0);
- flat torus: x_t = wrap(x0 + kappa_t wrap(x1 - x0)), u_t = kappa'_t wrap(x1 - x0);
- sphere S^d (and SO(3) on S^3, towards the nearer of +-x1): with L = log_{x0}(x1), theta = |L|
  and r = kappa_t theta,

      x_t = cos(r) x0 + sin(r) L / theta,   u_t = kappa'_t (cos(r) L - theta sin(r) x0).

The path is the manifold analogue of the straight line of Euclidean flow matching (where with the
linear schedule it is exactly x_t = (1 - t) x0 + t x1, u_t = x1 - x0).

**The posterior target** (:meth:`GeodesicPath.posterior_velocity`). Given x_t and its data point z, the
rest of the path is fixed: x_t lies on the shortest geodesic from x0 to z at distance (1 - kappa_t) d(x0, z)
from z, so its velocity is

    u(x_t | z) = kappa'_t / (1 - kappa_t) log_{x_t}(z),

and x_t | z is the source pushed through the contraction y -> exp_z(s log_z(y)), s = 1 - kappa_t, towards z.
For the uniform source its density has a closed form, with r = d(x_t, z) (on SO(3) the S^3 arc to the
nearer of +-z) and R the largest distance from z (pi on S^d, pi / 2 on SO(3)):

- S^d and SO(3) (S^3 / +-), whose volume in polar coordinates around z is sin^(d-1)(r) dr dOmega:
  p_t(x_t | z) = sin^(d-1)(r / s) / (s vol sin^(d-1)(r)) for r < s R, and 0 beyond;
- the flat torus T^d: x_t - z = s wrap(x0 - z) is uniform on the box [-s pi, s pi)^d, so
  p_t(x_t | z) = (2 pi s)^-d inside the box;
- R^d from N(0, I) (the Euclidean comparison, x_t = (1 - kappa) x0 + kappa z): N(x_t; kappa z, s^2 I).

The marginal velocity is the posterior mean of u(x_t | z) over z. Over a reference set z_1..z_R holding
the pair's own data point and otherwise independent draws of the data (the rest of the batch), the
self-normalised estimate T = sum_j w_j u(x_t | z_j), w_j proportional to p_t(x_t | z_j), has
E[T | x_t] = v(x_t, t) exactly (T is symmetric in the z_j; the argument of
:meth:`flowmatch.paths.AffinePath.posterior_velocity`), so regressing on T has the same minimiser as
regressing on u_t, with far less variance where the posterior is broad. That matters on manifolds from
the uniform source: a law close to uniform (the sphere's checkerboard) has a marginal field of norm 0.03
at t = 0.5 under conditional velocities of norm 1.7, which a network does not learn from u_t in
thousands of steps, and learns from T.
"""

from __future__ import annotations

import math

import torch

from flowmatch.discrete.schedulers import LinearScheduler, Scheduler, make_scheduler
from flowmatch.errors import FlowmatchError
from flowmatch.manifolds.manifolds import Manifold, _wrap
from flowmatch.paths.base import VelocitySample

#: A batch of the geodesic path: points x_t (n, ambient_dim), target velocities u_t tangent at x_t, the times t.
GeodesicSample = VelocitySample


class GeodesicPath:
    """x_t = exp_{x0}(kappa_t log_{x0}(x1)) on ``manifold`` (see the module docstring).

    ``scheduler`` is a :class:`Scheduler`, a scheduler name ("linear", "polynomial", "cosine") or None
    for the linear schedule kappa_t = t (constant speed d(x0, x1)).
    """

    def __init__(self, manifold: Manifold, scheduler: Scheduler | str | None = None):
        if not isinstance(manifold, Manifold):
            raise FlowmatchError(f"a geodesic path needs a Manifold, got {type(manifold).__name__}")
        if scheduler is None:
            scheduler = LinearScheduler()
        elif isinstance(scheduler, str):
            scheduler = make_scheduler(scheduler)
        elif not isinstance(scheduler, Scheduler):
            raise FlowmatchError(f"scheduler must be a Scheduler or a scheduler name, got {type(scheduler).__name__}")
        self.manifold = manifold
        self.scheduler = scheduler

    def sample(
        self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor | float, noise: torch.Tensor | None = None, *,
        generator: torch.Generator | None = None,
    ) -> VelocitySample:  # fmt: skip
        """The path between rows of x0 and x1 (both (n, ambient_dim), on the manifold) at times t
        (a number, a 0-dim tensor or an (n,) tensor).

        Differentiable in t (and in x0, x1) through ordinary autograd and torch.func. A geodesic path draws
        nothing of its own: ``noise`` must be None (``generator`` is unused).
        """
        if noise is not None:
            raise FlowmatchError("a geodesic path has no noise of its own")
        if x0.shape != x1.shape or x0.dim() != 2 or x0.shape[1] != self.manifold.ambient_dim:
            raise FlowmatchError(
                f"x0 and x1 must both have shape (n, {self.manifold.ambient_dim}) on {self.manifold.label}, "
                f"got {tuple(x0.shape)} and {tuple(x1.shape)}"
            )
        n = x0.shape[0]
        t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
        if t.dim() == 0:
            t = t.expand(n)
        elif t.shape != (n,):
            raise FlowmatchError(f"t must be a number or a tensor of shape ({n},), got shape {tuple(t.shape)}")
        s = t[:, None]
        point, velocity = self.manifold.geodesic(x0, x1, self.scheduler.kappa(s))
        return VelocitySample(x_t=point, velocity=self.scheduler.d_kappa(s) * velocity, t=t)

    def posterior_velocity(self, sample: GeodesicSample, reference: torch.Tensor, source: str = "uniform") -> torch.Tensor:
        """The posterior target T (module docstring) of each pair of ``sample``, whose data point is row i
        of ``reference`` (n, ambient_dim; the batch's data points, each pair's own first); ``source`` is
        "uniform" (spheres, tori, SO(3)) or "gaussian" (N(0, I) on R^d). Returns (n, ambient_dim) tangent
        vectors at the pairs' x_t, computed in float32 or better, one (n, n) matrix of weights."""
        m = self.manifold
        n = len(sample.x_t)
        if reference.shape != sample.x_t.shape:
            raise FlowmatchError(
                f"the reference must hold the pairs' own data points, shape {tuple(sample.x_t.shape)}, got {tuple(reference.shape)}"
            )
        if (source == "gaussian") != (m.name == "euclidean"):
            raise FlowmatchError(
                f"the posterior target is computed from the uniform source on a compact manifold, or N(0, I) on R^d; not {source} on {m.label}"
            )
        dtype = torch.promote_types(sample.x_t.dtype, torch.float32)
        x, z = sample.x_t.to(dtype), reference.to(dtype)
        t = sample.t.to(dtype)[:, None]
        kappa, rate = self.scheduler.kappa(t), self.scheduler.d_kappa(t)
        s = (1 - kappa).clamp_min(torch.finfo(dtype).eps)
        rate = rate / s  # u(x_t | z) = rate log_{x_t}(z)
        own = torch.eye(n, dtype=torch.bool, device=x.device)
        if m.name == "torus":
            delta = _wrap(z[None, :, :] - x[:, None, :])  # log_{x_t}(z_j): (n, R, d)
            inside = (delta.abs() < s[:, :, None] * math.pi).all(dim=2) | own
            w = inside.to(dtype)
            return rate * (w[:, :, None] * delta).sum(1) / w.sum(1, keepdim=True)
        if m.name == "euclidean":
            logw = -(x[:, None, :] - kappa[:, :, None] * z[None]).pow(2).sum(-1) / (2 * s * s)
            w = torch.softmax(logw, dim=1)
            return rate * (w @ z - x)
        # S^d and SO(3): log_x(z) = (theta / sin theta) (z' - <x, z'> x), z' = z (sphere) or the nearer of +-z (SO(3)),
        # with cos theta = c = <x, z'> and sin theta = sqrt(1 - c^2) from one matmul (theta loses digits near 0, where
        # the weights and theta / sin theta are flat, and log_x(z) itself does not use it)
        c = x @ z.T
        sign = torch.where(c >= 0, 1.0, -1.0).to(dtype) if m.name == "so3" else torch.ones_like(c)
        c = (c * sign).clamp(-1.0, 1.0)
        tiny = torch.finfo(dtype).tiny
        sin = (1 - c * c).clamp_min(0).sqrt()
        theta = torch.atan2(sin, c)
        sin = sin.clamp_min(tiny)
        reach = math.pi / 2 if m.name == "so3" else math.pi
        inside = (theta < s * reach) | own
        # sin^(d-1)(theta / s) / sin^(d-1)(theta): the density up to the factor 1 / s common to the reference points
        log_ratio = torch.sin((theta / s).clamp(max=reach)).clamp_min(tiny).log() - sin.log()
        w = torch.softmax(torch.where(inside, (m.dim - 1) * log_ratio, torch.full_like(theta, -math.inf)), dim=1)
        a = torch.where(inside, w * theta / sin, torch.zeros_like(w))
        return rate * ((a * sign) @ z - (a * c).sum(1, keepdim=True) * x)
