"""Training pairs (x0, x1): independent draws, re-paired by a coupling, or fixed pairs from a file (reflow)."""

from __future__ import annotations

import torch

from flowmatch.data.dataset import Dataset
from flowmatch.errors import FlowmatchError
from flowmatch.training.config import TrainConfig


# -- pairs ---------------------------------------------------------------------------------------
class PairSampler:
    """Draws training pairs (x0, x1) in model coordinates, then applies the configured coupling."""

    def __init__(self, config: TrainConfig, dataset: Dataset, source: Dataset | None):
        self.config, self.dataset, self.source = config, dataset, source
        self.fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        if config.pairs:
            self.fixed = load_pairs(config.pairs, dataset.dim)

    def __call__(self, n: int, generator: torch.Generator):
        """(x0, x1, labels, classes): labels and classes are None unless the config is conditional.

        With labels, the coupling pairs points within each class, and each label is replaced by the
        null label (``num_classes``) with probability ``cond_dropout``; ``classes`` keeps them all.
        """
        if self.fixed is not None:
            index = torch.randint(len(self.fixed[0]), (n,), generator=generator)
            return self.fixed[0][index], self.fixed[1][index], None, None
        x1, y = self.dataset.sample(n, generator, labels=True)
        if not self.config.conditional:
            y = None
        x0 = torch.randn(x1.shape, generator=generator) if self.source is None else self.source.sample(n, generator)
        if self.config.coupling != "independent":
            from flowmatch.couplings import couple

            x0, x1 = couple(x0, x1, self.config.coupling, reg=self.config.ot_reg, generator=generator, labels=y)
        classes = y
        if y is not None:
            drop = torch.rand(n, generator=generator) < self.config.cond_dropout
            y = torch.where(drop, torch.full_like(y, self.dataset.num_classes), y)
        return x0, x1, y, classes


def load_pairs(path: str, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, x1) pairs in model coordinates from an .npz with arrays ``x0`` and ``x1`` (reflow)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            x0, x1 = archive["x0"], archive["x1"]
    except FileNotFoundError:
        raise FlowmatchError(f"pairs file '{path}' does not exist") from None
    except (OSError, ValueError, KeyError) as exc:
        raise FlowmatchError(f"pairs file '{path}': cannot read arrays x0 and x1 ({exc})") from None
    if x0.shape != x1.shape or x0.ndim != 2 or x0.shape[1] != dim or not len(x0):
        raise FlowmatchError(f"pairs file '{path}': x0 {x0.shape} and x1 {x1.shape} must both be (N, {dim})")
    if not (np.isfinite(x0).all() and np.isfinite(x1).all()):
        raise FlowmatchError(f"pairs file '{path}': non-finite values")
    return torch.as_tensor(x0, dtype=torch.float32), torch.as_tensor(x1, dtype=torch.float32)
