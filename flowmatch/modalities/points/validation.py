"""The validation loss of held-out rows (the engine keeps the weights where it was lowest:
:class:`flowmatch.engine.validation.Validation`)."""

from __future__ import annotations

import torch

from flowmatch.data.dataset import Dataset
from flowmatch.losses import flow_matching_loss
from flowmatch.paths.affine import AffinePath

#: The validation loss averages over this many fixed (row, noise, time) triples.
VALIDATION_PAIRS = 2048


# -- validation ----------------------------------------------------------------------------------
class ValidationSet:
    """The flow-matching loss of held-out rows: ``loss(model)``.

    L_val = (1/M) sum_i w(t_i) || v(x_{t_i}, t_i) - u_{t_i}(x0_i, x1_i) ||^2 over M = ``VALIDATION_PAIRS``
    fixed triples: x1_i runs over the validation rows (each repeated M / rows times), x0_i is drawn
    from the source (and re-paired by the run's coupling), t_i are stratified uniforms, all once, with
    a seed of their own, so that values at different steps differ by the weights alone. It is the
    training loss on rows the model never sees: it falls while the model learns the distribution and
    rises once the model starts to reproduce its training rows (near t = 1 the velocity then points
    at the nearest training row, not at the unseen one).
    """

    def __init__(self, config, dataset: Dataset, path: AffinePath, source, device, wrap=None):
        rows = dataset.val
        assert rows is not None
        repeats = max(1, VALIDATION_PAIRS // len(rows))
        g = torch.Generator().manual_seed(config.seed + _VALIDATION_SEED)
        x1 = rows.repeat(repeats, 1)
        y = dataset.val_labels.repeat(repeats) if config.conditional and dataset.val_labels is not None else None
        x0 = torch.randn(x1.shape, generator=g) if source is None else source.sample(len(x1), g)
        if config.coupling != "independent":
            from flowmatch.couplings import couple

            x0, x1 = couple(x0, x1, config.coupling, reg=config.ot_reg, generator=g, labels=y)
        t = ((torch.arange(len(x1)) + torch.rand(len(x1), generator=g)) / len(x1))[torch.randperm(len(x1), generator=g)]
        noise = torch.randn(x1.shape, generator=g) if path.bridge_sigma > 0 else None
        c = None if dataset.val_conditions is None else dataset.val_conditions.repeat(repeats, 1)
        self.path, self.weight, self.wrap = path, config.loss_weight, wrap or (lambda m: m)
        self.pairs: list[torch.Tensor | None] = [None if v is None else v.to(device) for v in (x0, x1, t, noise, y, c)]

    @torch.no_grad()
    def loss(self, model: torch.nn.Module, chunk: int = 512) -> float:
        """:func:`~flowmatch.losses.flow_matching_loss` over the fixed triples, ``chunk`` rows a call."""
        assert self.pairs[0] is not None
        total, n = 0.0, len(self.pairs[0])
        for i in range(0, n, chunk):
            x0, x1, t, noise, y, c = (None if v is None else v[i : i + chunk] for v in self.pairs)
            assert x0 is not None and x1 is not None and t is not None
            condition = {k: v for k, v in (("y", y), ("c", c)) if v is not None}
            part = flow_matching_loss(self.wrap(model), self.path, x0, x1, t, condition=condition, noise=noise, weight=self.weight)
            total += float(part) * len(x1)
        return total / n


_VALIDATION_SEED = 4_000_037
