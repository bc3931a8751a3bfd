"""A small transformer over token sequences: the posterior p_{1|t}(x1 | x_t) of discrete flow matching.

    tokens x_t (B, L) in {0, ..., states - 1} -> embedding + positions (fixed sinusoids + learned) + a time embedding
    (+ the conditions' embedding: class labels y, float covariates c; :class:`~flowmatch.models.conditioning.ConditionEmbedding`)
    -> ``local`` residual convolutions (kernel 5) -> ``depth`` pre-norm encoder blocks (``heads`` heads, no causal mask: every position sees all)
    -> LayerNorm -> Linear -> logits (B, L, vocab_size) over the data tokens.

``states`` is ``vocab_size + 1`` with the masked source (the mask token is ``vocab_size``).

The convolutions give every position its neighbours from the first step. Attention alone has to find
them first: on characters (the built-in pydoc corpus) a 4-block transformer sat near the unigram for
hundreds of steps (masked accuracy 0.32 at t = 0.9 after 250 steps, 0.54 after 1,000), where four
convolutions reached 0.62 after 250 steps; the attention blocks then add the long range.
"""

from __future__ import annotations

import torch
from torch import nn

from flowmatch.errors import FlowmatchError
from flowmatch.models.conditioning import ConditionEmbedding
from flowmatch.models.mlp import sinusoidal_embedding, time_column


class TokenTransformer(nn.Module):
    def __init__(
        self,
        dim: int,
        vocab_size: int,
        states: int | None = None,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        time_dim: int = 64,
        local: int = 2,
        num_classes: int = 0,
        condition_dim: int = 0,
    ):
        super().__init__()
        states = vocab_size + 1 if states is None else states
        if dim < 1 or vocab_size < 2 or states < vocab_size or width < 1 or depth < 1 or heads < 1 or width % heads or local < 0:
            raise FlowmatchError(
                f"transformer sizes: length {dim}, vocab_size {vocab_size}, states {states}, width {width} (a multiple of heads {heads}), depth {depth}, local {local}"
            )
        self.config = {
            "name": "transformer",
            "vocab_size": vocab_size,
            "states": states,
            "width": width,
            "depth": depth,
            "heads": heads,
            "time_dim": time_dim,
            "local": local,
        }
        self.conditions = ConditionEmbedding(width, num_classes, condition_dim)
        self.num_classes = num_classes
        self.config.update(self.conditions.config())
        self.time_dim = time_dim
        self.tokens = nn.Embedding(states, width)
        self.positions = nn.Parameter(torch.zeros(dim, width))
        self.sinusoid: torch.Tensor
        self.register_buffer("sinusoid", _sinusoid(dim, width), persistent=False)
        self.time = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.local = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(1, width), nn.Conv1d(width, width, 5, padding=2), nn.GELU()) for _ in range(local)
        )
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, vocab_size))

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        t = time_column(t, self.positions).expand(len(x), 1)
        places = self.positions[: x.shape[1]] + self.sinusoid[: x.shape[1]]
        step = self.time(sinusoidal_embedding(t, self.time_dim))
        conditions = self.conditions(len(x), step, y, c)
        if conditions is not None:
            step = step + conditions
        h = self.tokens(x) + places + step[:, None]
        if self.local:
            h = h.transpose(1, 2)
            for block in self.local:
                h = h + block(h)
            h = h.transpose(1, 2)
        return self.out(self.blocks(h))


def _sinusoid(length: int, width: int) -> torch.Tensor:
    """The fixed sinusoidal position code of Vaswani et al., sin / cos of i / 10000^(2k / width), on the scale
    of the N(0, 1) token embeddings: attention reads relative places from it from the first step, where a
    learned code alone starts equal at every place (and a masked position would have nothing to ask by)."""
    place = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(-torch.arange(0, width, 2, dtype=torch.float32) * (torch.log(torch.tensor(10_000.0)) / width))
    code = torch.zeros(length, width)
    code[:, 0::2] = torch.sin(place * freq)
    code[:, 1::2] = torch.cos(place * freq[: width // 2])
    return code
