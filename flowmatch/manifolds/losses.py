"""The Riemannian conditional flow matching loss on a geodesic path.

With the geodesic path x_t = exp_{x0}(kappa_t log_{x0}(x1)) and its velocity u_t
(:class:`flowmatch.manifolds.paths.GeodesicPath`), the loss is

    L = E_{t, x0, x1} |v_theta(x_t, t) - u_t|^2_{g(x_t)},

and for these manifolds the metric g is the ambient Euclidean inner product of tangent vectors, so the norm is
the plain norm of the (n, ambient_dim) rows. Its minimiser over fields is the marginal velocity, whose flow
carries the source distribution to the data (Chen & Lipman 2024).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from flowmatch.errors import FlowmatchError
from flowmatch.manifolds.paths import GeodesicPath


def riemannian_loss(model: Callable, path: GeodesicPath, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mean_i |model(x_t, t)_i - u_t,i|^2 over the batch, for (x_t, u_t) on ``path`` between x0 and x1 at times t (n,).

    The squared norm is the ambient Euclidean one of tangent vectors at x_t, which is the Riemannian
    metric of these manifolds (induced by the embedding, or flat for the torus).
    """
    sample = path.sample(x0, x1, t)
    pred = model(sample.x_t, sample.t)
    if pred.shape != sample.velocity.shape:
        raise FlowmatchError(f"the model returned shape {tuple(pred.shape)} for points of shape {tuple(sample.x_t.shape)}")
    return (pred - sample.velocity).pow(2).sum(dim=1).mean()
