"""One network for mixed-type rows: continuous features and categorical columns at one time t.

    x (B, D) continuous features at time t, tokens (B, L) in {0, ..., V_j - 1} or the mask ``states - 1``
    -> [x, embedding of each column's token (``embed`` numbers a column)] -> Linear -> + time embedding
       (+ the conditions' embedding: class labels y, float covariates c; :class:`~flowmatch.models.conditioning.ConditionEmbedding`)
    -> ``depth`` hidden layers of ``width`` units
    -> (velocity of x (B, D), logits of the posterior p_{1|t} over each column's categories (B, L, V_max)).

Column j has ``vocab_sizes[j]`` categories; its logits past them are a large negative number (never
drawn, no probability). The mask token of every column is ``max(vocab_sizes)``.
"""

from __future__ import annotations

import torch
from torch import nn

from flowmatch.errors import FlowmatchError
from flowmatch.models.conditioning import ConditionEmbedding
from flowmatch.models.mlp import ACTIVATIONS, sinusoidal_embedding, time_column

#: The logit of a category a column does not have: exp(-1e4) underflows to 0 in float32, and guidance's
#: w l_cond + (1 - w) l_null keeps it there for any w (no inf - inf).
NO_CATEGORY = -1e4


class MixedMLP(nn.Module):
    def __init__(
        self,
        dim: int,
        vocab_sizes: list[int],
        width: int = 256,
        depth: int = 3,
        embed: int = 16,
        activation: str = "silu",
        time_dim: int = 64,
        dropout: float = 0.0,
        num_classes: int = 0,
        condition_dim: int = 0,
    ):
        super().__init__()
        sizes = [int(v) for v in vocab_sizes]
        if dim < 0 or not sizes or min(sizes) < 1 or width < 1 or depth < 1 or embed < 1 or time_dim < 2 or time_dim % 2:
            raise FlowmatchError(
                f"mixed-mlp sizes: dim {dim}, vocab_sizes {sizes} (each >= 1), width {width}, depth {depth}, embed {embed}, time_dim {time_dim} (even)"
            )
        if activation not in ACTIVATIONS:
            raise FlowmatchError(f"unknown activation '{activation}'; choose one of {', '.join(ACTIVATIONS)}")
        self.conditions = ConditionEmbedding(width, num_classes, condition_dim)
        self.num_classes = num_classes
        self.config = {
            "name": "mixed-mlp", "vocab_sizes": sizes, "width": width, "depth": depth, "embed": embed,
            "activation": activation, "time_dim": time_dim, "dropout": dropout, **self.conditions.config(),
        }  # fmt: skip
        self.dim, self.vocab_sizes, self.time_dim = dim, sizes, time_dim
        self.states = max(max(sizes), 2) + 1  # the mask is max(sizes), at least 2 as the path's (a column of one category)
        self.tokens = nn.Embedding(len(sizes) * self.states, embed)
        self.offsets: torch.Tensor
        self.register_buffer("offsets", torch.arange(len(sizes)) * self.states, persistent=False)
        self.x_in = nn.Linear(dim + len(sizes) * embed, width)
        self.t_in = nn.Sequential(nn.Linear(time_dim, width), ACTIVATIONS[activation](), nn.Linear(width, width))
        layers: list[nn.Module] = [ACTIVATIONS[activation]()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), ACTIVATIONS[activation](), *([nn.Dropout(dropout)] if dropout else [])]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, dim + sum(sizes))
        valid = torch.zeros(len(sizes), max(sizes), dtype=torch.bool, device="cpu")  # data-dependent: built on the CPU
        for j, v in enumerate(sizes):
            valid[j, :v] = True
        self.valid: torch.Tensor
        self.scatter: torch.Tensor
        self.register_buffer("valid", valid, persistent=False)
        self.register_buffer("scatter", valid.reshape(-1).nonzero().squeeze(1), persistent=False)

    def forward(
        self, x: torch.Tensor, tokens: torch.Tensor, t, y: torch.Tensor | None = None, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.tokens(tokens + self.offsets).flatten(1)
        h = self.x_in(torch.cat([x.to(e.dtype), e], dim=1))
        h = h + self.t_in(sinusoidal_embedding(time_column(t, h), self.time_dim))
        conditions = self.conditions(len(h), h, y, c)
        if conditions is not None:
            h = h + conditions
        out = self.out(self.body(h))
        flat = out.new_full((len(x), self.valid.numel()), NO_CATEGORY)
        flat[:, self.scatter] = out[:, self.dim :]
        return out[:, : self.dim], flat.view(len(x), *self.valid.shape)
