"""Sampling a discrete flow: a continuous-time Markov chain integrated by jumps on a time grid.

From t to t + h each position's token z jumps with probability

    lambda = (kappa_{t+h} - kappa_t) / (1 - kappa_t)

to a token drawn from the posterior p_{1|t}(. | x_t) (which may be z itself), and stays otherwise (with
the masked source only masked positions jump: the exact posterior of a revealed token is that token, and
a learned one that leaks a little mass elsewhere would otherwise rewrite finished tokens). To
first order in h this is the Euler step delta_z + h u_t(., z) of the probability velocity
(:mod:`flowmatch.discrete.paths`); it is exact for the mixture path when the posterior is exact, and its
last step (kappa = 1) leaves no position at the source. One posterior call per step: ``nfe`` steps,
``nfe`` calls. ``temperature`` divides the logits.

**Corrector.** The mixture path is also generated backwards in time by the rates
u^back_t(x, z) = kappa'_t / kappa_t [p0(x) - delta_z(x)] (jump back to a source draw; they need no model),
in the sense d/dt p_t = -sum_z u^back_t(., z) p_t(z). So for any alpha >= 0 the rates

    (1 + alpha) u_t + alpha u^back_t

generate the same marginals p_t: the extra forward and backward jumps cancel in p_t but let the chain
revisit (re-mask and redraw) tokens drawn early from a poor posterior. A step then leaves z with
probability 1 - exp(-h (r_fwd + r_back)), r_fwd = (1 + alpha) kappa'/(1 - kappa) and
r_back = alpha kappa'/kappa, and goes forward (a posterior draw) or back (a source draw) in proportion
to the two rates. ``corrector = alpha`` applies on the steps whose start lies in ``corrector_window``
(away from t = 0, where r_back is infinite, and t = 1, where nothing is left to correct); the last step
is always the plain forward jump to kappa = 1. Still one posterior call a step.

**Guidance.** With an unconditional posterior ``null_logits_fn`` and weight w, the step draws from
softmax(w l_cond + (1 - w) l_null): the posterior p_cond^w p_null^(1 - w), renormalised (w = 1: the
conditional model alone, one call a step; otherwise two).

**Mixed states.** :func:`mixed_sample` integrates continuous features x with the Euler step
x <- x + h v(x, tokens, t) and the tokens with the jump step above, on one time grid and with one call of
the network a step (the mixed-type tables of :mod:`flowmatch.flows.discrete`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from flowmatch.discrete.paths import MixturePath
from flowmatch.errors import FlowmatchError

#: The corrector acts on steps that start inside this window of times.
CORRECTOR_WINDOW = (0.1, 0.9)


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
    corrector: float = 0.0,
    corrector_window: tuple[float, float] = CORRECTOR_WINDOW,
    progress: bool = False,
) -> torch.Tensor:
    """Tokens at t = 1 from source tokens ``x0`` (batch, ...); ``logits_fn(x_t, t)`` gives the posterior's
    logits (batch, ..., V) at a (batch,) tensor of times."""
    null = None if null_logits_fn is None else (lambda x, tokens, t: (None, null_logits_fn(tokens, t)))
    _, tokens = mixed_sample(
        lambda x, tokens, t: (None, logits_fn(tokens, t)), x0, path, nfe=nfe, temperature=temperature, generator=generator,
        null_fn=null, guidance=guidance, corrector=corrector, corrector_window=corrector_window, progress=progress,
    )  # fmt: skip
    return tokens


def mixed_sample(
    fn: Callable[[torch.Tensor | None, torch.Tensor, torch.Tensor], tuple[torch.Tensor | None, torch.Tensor]],
    tokens0: torch.Tensor,
    path: MixturePath,
    *,
    x0: torch.Tensor | None = None,
    nfe: int = 32,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    null_fn: Callable | None = None,
    guidance: float = 1.0,
    corrector: float = 0.0,
    corrector_window: tuple[float, float] = CORRECTOR_WINDOW,
    progress: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(x, tokens) at t = 1 from (``x0``, ``tokens0``): ``fn(x, tokens, t)`` gives the velocity of x (None
    without continuous features) and the posterior's logits over the tokens at a (batch,) tensor of times."""
    _check(nfe, temperature, guidance, null_fn, corrector)
    x = None if x0 is None else x0.clone()
    tokens = tokens0.clone()
    times = torch.linspace(0.0, 1.0, nfe + 1, dtype=torch.float64)
    steps = range(nfe)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="sample", unit="step", leave=False)
    for i in steps:
        t, s = times[i], times[i + 1]
        at = torch.full((len(tokens),), float(t), dtype=torch.float32)
        v, logits = fn(x, tokens, at)
        logits = logits.to(torch.float64)
        if guidance != 1.0:
            assert null_fn is not None
            v_null, l_null = null_fn(x, tokens, at)
            logits = guidance * logits + (1 - guidance) * l_null.to(torch.float64)
            if v is not None:
                v = v_null + guidance * (v - v_null)
        alpha = corrector if corrector_window[0] <= float(t) < corrector_window[1] and i < nfe - 1 else 0.0
        tokens = _jump(tokens, logits, path, t, s, temperature, alpha, generator)
        if x is not None:
            assert v is not None
            x = x + float(s - t) * v.to(x.dtype)
    return x, tokens


def _jump(tokens, logits, path: MixturePath, t, s, temperature: float, alpha: float, generator) -> torch.Tensor:
    """One jump step of every position from time t to s (module docstring)."""
    probs = torch.softmax(logits / temperature, dim=-1)
    drawn = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(tokens.shape)
    k_t, k_s = path.scheduler.kappa(t), path.scheduler.kappa(s)
    if path.mask is not None:  # the posterior of a revealed token is that token: only masked positions move forward
        drawn = torch.where(tokens == path.mask, drawn, tokens)
    if alpha == 0.0:
        jump = float((k_s - k_t) / (1 - k_t)) if k_t < 1 else 1.0
        moves = torch.rand(tokens.shape, generator=generator, dtype=torch.float64) < jump
        return torch.where(moves, drawn, tokens)
    d = float(path.scheduler.d_kappa(t))
    forward, back = (1 + alpha) * d / float(1 - k_t), alpha * d / float(k_t)
    leave = 1.0 - math.exp(-float(s - t) * (forward + back))
    u = torch.rand(tokens.shape, generator=generator, dtype=torch.float64)
    source = path.draw_source(tuple(tokens.shape), generator)
    tokens = torch.where(u < leave * forward / (forward + back), drawn, tokens)
    return torch.where((u >= leave * forward / (forward + back)) & (u < leave), source, tokens)


def _check(nfe, temperature, guidance, null_fn, corrector) -> None:
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise FlowmatchError(f"nfe must be a positive integer, got {nfe!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise FlowmatchError(f"temperature must be > 0, got {temperature!r}")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise FlowmatchError(f"guidance must be a finite number, got {guidance!r}")
    if guidance != 1.0 and null_fn is None:
        raise FlowmatchError("guidance needs the unconditional posterior: pass null_logits_fn=")
    if isinstance(corrector, bool) or not isinstance(corrector, (int, float)) or not corrector >= 0 or not math.isfinite(corrector):
        raise FlowmatchError(f"corrector must be a finite number >= 0, got {corrector!r}")
