"""Schedules (alpha_t, sigma_t) of affine probability paths: Gaussian (sigma_min), linear, cosine and custom ones."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from flowmatch.errors import FlowmatchError


class Schedule:
    """alpha_t and sigma_t of an affine path, with their time derivatives (element-wise in t)."""

    name = "schedule"

    #: (alpha'_t, sigma'_t) as numbers where they do not depend on t (None otherwise): a path then forms
    #: u_t = alpha' x1 + sigma' x0 without tensors of constants, the same numbers at less cost
    constant_rates: tuple[float, float] | None = None

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class GaussianSchedule(Schedule):
    """alpha_t = t, sigma_t = 1 - (1 - sigma_min) t: x_1 ~ N(x1, sigma_min^2 I) at the data end."""

    name = "gaussian"

    def __init__(self, sigma_min: float = 0.0):
        if not 0.0 <= sigma_min < 1.0:
            raise FlowmatchError(f"sigma_min must be in [0, 1), got {sigma_min}")
        self.sigma_min = float(sigma_min)
        self.constant_rates = (1.0, -(1.0 - self.sigma_min))

    def alpha(self, t):
        return t

    def sigma(self, t):
        if self.sigma_min == 0.0:  # 1 t is t, exactly: one operation less for the straight path
            return 1.0 - t
        return 1.0 - (1.0 - self.sigma_min) * t

    def d_alpha(self, t):
        return torch.ones_like(t)

    def d_sigma(self, t):
        return torch.full_like(t, -(1.0 - self.sigma_min))


class LinearSchedule(GaussianSchedule):
    """alpha_t = t, sigma_t = 1 - t: the straight-line (rectified flow / CondOT) path."""

    name = "linear"

    def __init__(self):
        super().__init__(sigma_min=0.0)


class CosineSchedule(Schedule):
    """alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2): variance preserving."""

    name = "cosine"

    def alpha(self, t):
        return torch.sin(0.5 * math.pi * t)

    def sigma(self, t):
        return torch.cos(0.5 * math.pi * t)

    def d_alpha(self, t):
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)

    def d_sigma(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


class CustomSchedule(Schedule):
    """A schedule from user callables; missing derivatives come from autograd.

    The callables take a tensor of times and act element-wise, e.g.
    ``CustomSchedule(alpha=lambda t: t**2, sigma=lambda t: 1 - t**2)``.
    """

    name = "custom"

    def __init__(
        self,
        alpha: Callable[[torch.Tensor], torch.Tensor],
        sigma: Callable[[torch.Tensor], torch.Tensor],
        d_alpha: Callable[[torch.Tensor], torch.Tensor] | None = None,
        d_sigma: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self._alpha, self._sigma = alpha, sigma
        self._given_d_alpha, self._given_d_sigma = d_alpha, d_sigma  # as given (None: autograd), for saving
        self._d_alpha = d_alpha or _autograd_derivative(alpha)
        self._d_sigma = d_sigma or _autograd_derivative(sigma)

    def alpha(self, t):
        return self._alpha(t)

    def sigma(self, t):
        return self._sigma(t)

    def d_alpha(self, t):
        return self._d_alpha(t)

    def d_sigma(self, t):
        return self._d_sigma(t)


def _autograd_derivative(fn):
    def derivative(t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            tt = t.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(tt).sum(), tt)
        return grad

    return derivative
