"""Sampling a discrete flow: a continuous-time Markov chain integrated by jumps on a time grid.

From t to t + h each position's token z jumps with probability

    lambda = (kappa_{t+h} - kappa_t) / (1 - kappa_t)

to a token drawn from the posterior p_{1|t}(. | x_t) (which may be z itself), and stays otherwise. To
first order in h this is the Euler step delta_z + h u_t(., z) of the probability velocity
(:mod:`flowmatch.discrete.paths`); it is exact for the mixture path when the posterior is exact, and its
last step (kappa = 1) leaves no position at the source. One posterior call per step: ``nfe`` steps,
``nfe`` calls. ``temperature`` divides the logits.

**Guidance.** With an unconditional posterior ``null_logits_fn`` and weight w, the step draws from
softmax(w l_cond + (1 - w) l_null): the posterior p_cond^w p_null^(1 - w), renormalised (w = 1: the
conditional model alone, one call a step; otherwise two).
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
    null_logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Tokens at t = 1 from source tokens ``x0`` (batch, ...); ``logits_fn(x_t, t)`` gives the posterior's
    logits (batch, ..., V) at a (batch,) tensor of times."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise FlowmatchError(f"nfe must be a positive integer, got {nfe!r}")
    if not temperature > 0:
        raise FlowmatchError(f"temperature must be > 0, got {temperature!r}")
    if guidance != 1.0 and null_logits_fn is None:
        raise FlowmatchError("guidance needs the unconditional posterior: pass null_logits_fn=")
    x = x0.clone()
    times = torch.linspace(0.0, 1.0, nfe + 1, dtype=torch.float64)
    for i in range(nfe):
        t, s = times[i], times[i + 1]
        k_t, k_s = path.scheduler.kappa(t), path.scheduler.kappa(s)
        jump = float((k_s - k_t) / (1 - k_t)) if k_t < 1 else 1.0
        at = torch.full((len(x),), float(t), dtype=torch.float32)
        logits = logits_fn(x, at).to(torch.float64)
        if guidance != 1.0:
            assert null_logits_fn is not None
            logits = guidance * logits + (1 - guidance) * null_logits_fn(x, at).to(torch.float64)
        probs = torch.softmax(logits.to(torch.float64) / temperature, dim=-1)
        drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(x.shape)
        moves = torch.rand(x.shape, generator=generator, dtype=torch.float64) < jump
        x = torch.where(moves, drawn, x)
    return x
