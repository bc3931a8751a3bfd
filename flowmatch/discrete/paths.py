"""The discrete mixture path (Gat et al. 2024) over sequences of tokens in {0, ..., V - 1}.

Per position, independently, given the data token x1:

    p_t(x | x1) = (1 - kappa_t) p0(x) + kappa_t delta_{x1}(x),

with the source p0 either **masked** (all mass on an extra token ``mask = V``, so the model's inputs
range over V + 1 tokens) or **uniform** over the V tokens. Drawing x_t: keep x1 with probability
kappa_t, else draw from p0.

**Probability velocity.** The conditional rates that generate this path are

    u_t(x, z | x1) = kappa'_t / (1 - kappa_t) [delta_{x1}(x) - delta_z(x)]   (from state z to x),

since d/dt p_t(x | x1) = kappa'_t (delta_{x1}(x) - p0(x)) = sum_z u_t(x, z | x1) p_t(z | x1). A model of the
posterior p_{1|t}(x1 | x_t) gives the marginal rates by averaging over x1:

    u_t(x, z) = kappa'_t / (1 - kappa_t) [p_{1|t}(x | z) - delta_z(x)].

:func:`flowmatch.discrete.sampling.jump_sample` integrates them.
"""

from __future__ import annotations

import torch

from flowmatch.discrete.schedulers import Scheduler
from flowmatch.errors import FlowmatchError
from flowmatch.paths.base import PathSample

SOURCES = ("mask", "uniform")


class MixturePath:
    """p_t(x | x1) = (1 - kappa_t) p0 + kappa_t delta_{x1} per position, for ``vocab_size`` = V tokens."""

    def __init__(self, scheduler: Scheduler, vocab_size: int, source: str = "mask"):
        if source not in SOURCES:
            raise FlowmatchError(f"unknown discrete source '{source}'; choose one of {', '.join(SOURCES)}")
        if not isinstance(vocab_size, int) or vocab_size < 2:
            raise FlowmatchError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
        self.scheduler, self.vocab_size, self.source = scheduler, vocab_size, source

    @property
    def mask(self) -> int | None:
        """The mask token (V) of the masked source; None for the uniform source."""
        return self.vocab_size if self.source == "mask" else None

    @property
    def states(self) -> int:
        """Tokens x_t can take: V + 1 with the mask, else V."""
        return self.vocab_size + (self.source == "mask")

    def draw_source(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        if self.source == "mask":
            return torch.full(shape, self.vocab_size, dtype=torch.long)
        return torch.randint(self.vocab_size, shape, generator=generator)

    def sample(
        self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None, *,
        generator: torch.Generator | None = None,
    ) -> PathSample:  # fmt: skip
        """x_t for source tokens x0 and data tokens x1 (batch, ...) at per-sample times t (batch,): each position
        keeps x1 with probability kappa_t (drawn with ``generator``), else x0
        (:class:`~flowmatch.paths.base.ProbabilityPath`; a discrete path has rates, not a velocity: ``velocity``
        is None). ``noise`` must be None."""
        if noise is not None:
            raise FlowmatchError("the mixture path draws its own randomness (generator=); it takes no noise")
        if x0.shape != x1.shape:
            raise FlowmatchError(f"x0 and x1 must have one shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
        kappa = self.scheduler.kappa(t.to(torch.float64)).reshape(-1, *[1] * (x1.ndim - 1))
        keep = torch.rand(x1.shape, generator=generator, dtype=torch.float64) < kappa
        return PathSample(x_t=torch.where(keep, x1, x0), velocity=None, t=t)

    def corrupt(self, x1: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t for data tokens x1 at times t, the source drawn here: :meth:`sample` of a source draw."""
        return self.sample(self.draw_source(tuple(x1.shape), generator), x1, t, generator=generator).x_t

    def marginal(self, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """p_t(. | x1): (batch, ..., states) probabilities, the closed form above."""
        kappa = self.scheduler.kappa(t.to(torch.float64)).reshape(-1, *[1] * x1.ndim)
        data = torch.nn.functional.one_hot(x1, self.states).to(torch.float64)
        if self.source == "mask":
            p0 = torch.nn.functional.one_hot(torch.full_like(x1, self.vocab_size), self.states).to(torch.float64)
        else:
            p0 = torch.full_like(data, 1.0 / self.vocab_size)
        return (1 - kappa) * p0 + kappa * data

    def jump_rate(self, t: torch.Tensor) -> torch.Tensor:
        """kappa'_t / (1 - kappa_t), the rate factor of the probability velocity."""
        return self.scheduler.d_kappa(t) / (1 - self.scheduler.kappa(t)).clamp_min(1e-12)

    def velocity(self, posterior: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """u_t(., x_t) = kappa'/(1 - kappa) [p_{1|t}(. | x_t) - delta_{x_t}]: (batch, ..., states) rates out
        of each position's current token, given the posterior over the V data tokens (batch, ..., V)."""
        p = torch.nn.functional.pad(posterior, (0, self.states - self.vocab_size))
        rate = self.jump_rate(t.to(posterior.dtype)).reshape(-1, *[1] * x_t.ndim)
        return rate * (p - torch.nn.functional.one_hot(x_t, self.states).to(posterior.dtype))
