"""One protocol for every probability path: affine paths of continuous rows (:class:`~flowmatch.paths.affine.AffinePath`),
geodesic paths on manifolds (:class:`~flowmatch.manifolds.paths.GeodesicPath`) and the discrete mixture path of
tokens (:class:`~flowmatch.discrete.paths.MixturePath`).

``path.sample(x0, x1, t, noise=None, *, generator=None)`` draws the conditional path between source points x0
and data points x1 at per-sample times t (batch,) and returns a :class:`PathSample`: the points x_t and, for a
continuous path, the conditional velocity u_t that flow matching regresses onto (a discrete path has rates
instead of a velocity: ``velocity`` is None, and its loss reads the posterior of x1). ``noise`` is a path's own
extra randomness where it has some (the Brownian-bridge noise of an affine path); ``generator`` draws what the
path draws itself (the mixture path's choice between x0 and x1, a bridge's noise when none is given).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass
class PathSample:
    """A batch of the conditional path: points x_t, the target velocity u_t at them (None for a discrete path),
    and the times t."""

    x_t: torch.Tensor
    velocity: torch.Tensor | None
    t: torch.Tensor


@dataclass
class VelocitySample(PathSample):
    """A batch of a continuous path: points x_t, their conditional velocity u_t, and the times t."""

    velocity: torch.Tensor


@runtime_checkable
class ProbabilityPath(Protocol):
    """What a training step asks of a path (module docstring)."""

    def sample(
        self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None, *,
        generator: torch.Generator | None = None,
    ) -> PathSample: ...  # fmt: skip
