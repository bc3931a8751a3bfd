"""Densities with closed forms that the math uses: isotropic Gaussian mixtures, as sources the posterior target
averages over (:meth:`flowmatch.paths.affine.AffinePath.posterior_velocity`) and as the built-in sets that are
such mixtures (:data:`flowmatch.data.toy.GAUSSIAN_MIXTURES`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GaussianMixture:
    """The density sum_k pi_k N(x; mu_k, tau_k^2 I): ``weights`` pi (K,), ``means`` mu (K, D), ``stds`` tau (K,).

    The built-in sets that are such mixtures (:data:`GAUSSIAN_MIXTURES`) have closed-form densities
    (:func:`log_prob`), and as a training source they admit the posterior target
    (``AffinePath.posterior_velocity``).
    """

    weights: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for points x (n, D): shape (n,), in the mixture's dtype."""
        weights, means, stds = (v.to(device=x.device) for v in (self.weights, self.means, self.stds))
        x = x.to(means.dtype)
        d2 = ((x[:, None, :] - means[None, :, :]) ** 2).sum(-1)
        var = stds**2
        log_normal = -d2 / (2 * var) - 0.5 * x.shape[1] * torch.log(2 * math.pi * var)
        return torch.logsumexp(weights.log() + log_normal, dim=1)

    def affine(self, shift: torch.Tensor, scale: float) -> GaussianMixture:
        """The mixture of (x - shift) / scale for x drawn from this one."""
        return GaussianMixture(self.weights, (self.means - shift) / scale, self.stds / scale)
