"""Sampling a discrete flow: a continuous-time Markov chain integrated by jumps on a time grid.

From t to t + h each position's token z jumps with probability

    lambda = (kappa_{t+h} - kappa_t) / (1 - kappa_t)

to a token drawn from the posterior p_{1|t}(. | x_t) (which may be z itself), and stays otherwise. To
first order in h this is the Euler step delta_z + h u_t(., z) of the probability velocity
(:mod:`flowmatch.discrete.paths`); it is exact for the mixture path when the posterior is exact, and its
last step (kappa = 1) leaves no position at the source. One posterior call per step: ``nfe`` steps,
``nfe`` calls. ``temperature`` divides the logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from flowmatch.discrete.paths import MixturePath
from flowmatch.errors import FlowmatchError


def jump_sample(
    logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    path: MixturePath,
    *,
    nfe: int = 32,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Tokens at t = 1 from source tokens ``x0`` (batch, ...); ``logits_fn(x_t, t)`` gives the posterior's
    logits (batch, ..., V) at a (batch,) tensor of times."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise FlowmatchError(f"nfe must be a positive integer, got {nfe!r}")
    if not temperature > 0:
        raise FlowmatchError(f"temperature must be > 0, got {temperature!r}")
    x = x0.clone()
    times = torch.linspace(0.0, 1.0, nfe + 1, dtype=torch.float64)
    for i in range(nfe):
        t, s = times[i], times[i + 1]
        k_t, k_s = path.scheduler.kappa(t), path.scheduler.kappa(s)
        jump = float((k_s - k_t) / (1 - k_t)) if k_t < 1 else 1.0
        logits = logits_fn(x, torch.full((len(x),), float(t), dtype=torch.float32))
        probs = torch.softmax(logits.to(torch.float64) / temperature, dim=-1)
        drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(x.shape)
        moves = torch.rand(x.shape, generator=generator, dtype=torch.float64) < jump
        x = torch.where(moves, drawn, x)
    return x
