"""Losses of discrete flow matching, for a model giving logits of the posterior p_{1|t}(x1 | x_t) over
the V data tokens at each position.

**Cross-entropy**: -log p_{1|t}(x1 | x_t), the mean over positions (and batch).

**Generalized KL** (the mixture path's Bregman divergence between the true and the model's rates):

    L = -kappa'_t / (1 - kappa_t) [ p_{1|t}(x_t | x_t) - delta_{x1}(x_t) + (1 - delta_{x1}(x_t)) log p_{1|t}(x1 | x_t) ],

where p_{1|t}(x_t | x_t) is 0 when x_t is the mask. It weights the cross-entropy of the positions not yet
at their data token by the jump rate; its expectation over (x1, x_t) is smallest at the true posterior.
"""

from __future__ import annotations

import torch

from flowmatch.discrete.paths import MixturePath


def cross_entropy_loss(logits: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """Mean -log softmax(logits)[x1]; logits (batch, ..., V), x1 (batch, ...)."""
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x1.reshape(-1))


def generalized_kl_loss(logits: torch.Tensor, x1: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, path: MixturePath) -> torch.Tensor:
    """The mixture path's generalized KL (module docstring), the mean over positions and batch."""
    log_p = torch.log_softmax(logits.to(torch.float32), dim=-1)
    log_p1 = log_p.gather(-1, x1.unsqueeze(-1)).squeeze(-1)
    at_own = torch.where(x_t < path.vocab_size, x_t, 0).unsqueeze(-1)
    p_xt = torch.where(x_t < path.vocab_size, log_p.gather(-1, at_own).squeeze(-1).exp(), 0.0)
    same = (x_t == x1).to(log_p.dtype)
    rate = path.jump_rate(t.to(log_p.dtype)).reshape(-1, *[1] * (x1.ndim - 1))
    return (-rate * (p_xt - same + (1 - same) * log_p1)).mean()


def mixed_loss(
    velocity: torch.Tensor | None,
    logits: torch.Tensor,
    target: torch.Tensor | None,
    x1: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    path: MixturePath,
    discrete_loss: str = "cross-entropy",
) -> torch.Tensor:
    """The loss of a batch of mixed rows (token sequences: no continuous part), one network and one time:

        L = L_discrete(logits, x1 tokens) + mean || v - (x1 - x0) ||^2,

    ``logits`` (batch, L, V) of the posterior at the tokens ``x_t`` drawn from the mixture path at times ``t``,
    ``x1`` the data tokens, L_discrete the cross-entropy or the generalized KL; ``velocity`` the model's
    velocity of the continuous features at x_t = t x1 + (1 - t) x0 and ``target`` = x1 - x0 their straight
    path's (None, or zero columns, without continuous features)."""
    if discrete_loss == "generalized-kl":
        loss = generalized_kl_loss(logits, x1, x_t, t, path)
    else:
        loss = cross_entropy_loss(logits.float(), x1)
    if velocity is not None and target is not None and velocity.shape[1]:
        loss = loss + (velocity.float() - target).pow(2).mean()
    return loss
