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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowmatch.discrete.schedulers import LinearScheduler, Scheduler, make_scheduler
from flowmatch.errors import FlowmatchError
from flowmatch.manifolds.manifolds import Manifold


@dataclass
class GeodesicSample:
    """A batch of the conditional path: points x_t (n, ambient_dim), target velocities u_t tangent at
    x_t (n, ambient_dim), and the times t (n,)."""

    x_t: torch.Tensor
    velocity: torch.Tensor
    t: torch.Tensor


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

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor | float) -> GeodesicSample:
        """The path between rows of x0 and x1 (both (n, ambient_dim), on the manifold) at times t
        (a number, a 0-dim tensor or an (n,) tensor).

        Differentiable in t (and in x0, x1) through ordinary autograd and torch.func.
        """
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
        return GeodesicSample(x_t=point, velocity=self.scheduler.d_kappa(s) * velocity, t=t)
