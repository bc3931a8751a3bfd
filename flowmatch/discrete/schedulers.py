"""Schedulers kappa_t of the discrete mixture path: kappa_0 = 0 (all source), kappa_1 = 1 (all data).

- linear: kappa_t = t
- polynomial: kappa_t = t^n
- cosine: kappa_t = sin^2(pi t / 2)

Each gives kappa_t and its derivative kappa'_t, element-wise in a tensor of times.
"""

from __future__ import annotations

import math

import torch

from flowmatch.errors import FlowmatchError


class Scheduler:
    name = "scheduler"

    def kappa(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def d_kappa(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LinearScheduler(Scheduler):
    name = "linear"

    def kappa(self, t):
        return t

    def d_kappa(self, t):
        return torch.ones_like(t)


class PolynomialScheduler(Scheduler):
    """kappa_t = t^n, n > 0."""

    name = "polynomial"

    def __init__(self, exponent: float = 2.0):
        if not exponent > 0:
            raise FlowmatchError(f"exponent must be > 0, got {exponent}")
        self.exponent = float(exponent)

    def kappa(self, t):
        return t**self.exponent

    def d_kappa(self, t):
        return self.exponent * t ** (self.exponent - 1)


class CosineScheduler(Scheduler):
    name = "cosine"

    def kappa(self, t):
        return torch.sin(0.5 * math.pi * t) ** 2

    def d_kappa(self, t):
        return 0.5 * math.pi * torch.sin(math.pi * t)


SCHEDULERS = {"linear": LinearScheduler, "polynomial": PolynomialScheduler, "cosine": CosineScheduler}


def make_scheduler(name: str, **options) -> Scheduler:
    if name not in SCHEDULERS:
        raise FlowmatchError(f"unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](**options)
