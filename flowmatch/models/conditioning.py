"""The conditions of a model as one vector: class labels ``y`` and float covariates ``c``, each with a learned
"no condition" for classifier-free guidance.

A dropped label is the null class ``num_classes`` (an embedding row of its own); a dropped float condition is
a row of NaN, which takes a learned null vector. :class:`ConditionEmbedding` is what the tangent MLP of
manifolds, the mixed MLP of tables and the transformer of token sequences add to their time embedding;
:class:`flowmatch.models.mlp.MLP` does the same in place.
"""

from __future__ import annotations

import torch
from torch import nn

from flowmatch.errors import FlowmatchError


class ConditionEmbedding(nn.Module):
    """e(y, c) = E y + (W_c c, or the learned null vector for a row of NaN), a (batch, width) vector.

    ``num_classes`` K > 0: labels 0..K-1 and the null class K (a missing ``y`` is the null class for every row).
    ``condition_dim`` k > 0: c of shape (batch, k) (a missing ``c`` is the null vector for every row)."""

    def __init__(self, width: int, num_classes: int = 0, condition_dim: int = 0):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("condition_dim", condition_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FlowmatchError(f"{name} must be a non-negative integer, got {value!r}")
        self.num_classes, self.condition_dim = num_classes, condition_dim
        self.y_in = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.c_in = nn.Linear(condition_dim, width) if condition_dim else None
        self.c_null = nn.Parameter(torch.zeros(width)) if condition_dim else None

    @property
    def active(self) -> bool:
        return self.y_in is not None or self.c_in is not None

    def forward(self, n: int, like: torch.Tensor, y: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor | None:
        """The (n, width) embedding in ``like``'s dtype and device; None for a model without conditions (which
        refuses any given)."""
        if not self.active:
            if y is not None or c is not None:
                raise FlowmatchError("this model takes no conditions (build it with num_classes or condition_dim)")
            return None
        out = None
        if self.y_in is not None:
            if y is None:
                y = torch.full((n,), self.num_classes, dtype=torch.long, device=like.device)
            out = self.y_in(y.long().reshape(n)).to(like.dtype)
        elif y is not None:
            raise FlowmatchError("this model takes no class labels y (build it with num_classes)")
        if self.c_in is not None:
            assert self.c_null is not None
            null = self.c_null.to(like.dtype)
            if c is None:
                part = null.expand(n, -1)
            else:
                c = c.to(like.dtype).reshape(n, -1)
                missing = torch.isnan(c).any(dim=1, keepdim=True)
                part = torch.where(missing, null, self.c_in(torch.nan_to_num(c)).to(like.dtype))
            out = part if out is None else out + part
        elif c is not None:
            raise FlowmatchError("this model takes no float condition c (build it with condition_dim)")
        return out

    def config(self) -> dict[str, int]:
        """The options to record in a model's config (only those in use, so a model without conditions keeps its config)."""
        return {k: v for k, v in (("num_classes", self.num_classes), ("condition_dim", self.condition_dim)) if v}
