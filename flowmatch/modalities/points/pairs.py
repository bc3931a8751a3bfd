"""Training pairs (x0, x1): independent draws, re-paired by a coupling, or fixed pairs from a file (reflow)."""

from __future__ import annotations

import warnings

import torch

from flowmatch.conditions import drop
from flowmatch.data.dataset import Dataset
from flowmatch.data.standardize import Standardizer
from flowmatch.data.streams import Stream, drift
from flowmatch.errors import FlowmatchError, FlowmatchWarning


class PairSampler:
    """Draws training pairs (x0, x1) and their conditions in model coordinates, then applies the
    configured coupling and the condition dropout of classifier-free guidance.

    ``data`` is a :class:`~flowmatch.data.dataset.Dataset` (batches of ``n`` rows drawn with the
    generator, the same on every process) or a :class:`~flowmatch.data.streams.Stream` (this process's
    next batch, whatever its size, mapped to model coordinates by ``standardizer``: the stream's estimate,
    :func:`~flowmatch.data.streams.estimate_standardizer`; a data set's batches come standardised). The first
    stream batch far from the estimate (:func:`~flowmatch.data.streams.drift`) gives one
    :class:`~flowmatch.errors.FlowmatchWarning`. ``conditions`` says how to drop each condition: the null class
    for ``{"classes": K}``, a row of NaN for ``{"dim": k}``.
    """

    def __init__(
        self, config, data: Dataset | Stream, source, conditions: dict[str, dict[str, int]], standardizer: Standardizer | None = None
    ):
        self.config, self.data, self.source, self.conditions = config, data, source, conditions
        self.standardizer = standardizer if standardizer is not None and not standardizer.is_identity else None
        self.warned = False
        self.fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        if config.pairs:
            assert isinstance(data, Dataset)
            self.fixed = load_pairs(config.pairs, data.dim)

    def __call__(self, n: int, generator: torch.Generator):
        """(x0, x1, condition, classes): ``condition`` the model's keyword arguments (a dict, maybe empty),
        ``classes`` the class labels before dropout (None without labels).

        With labels, the coupling pairs points within each class. Each row's conditions are all replaced
        by their null (see the class docstring) with probability ``cond_dropout``.
        """
        if self.fixed is not None:
            index = torch.randint(len(self.fixed[0]), (n,), generator=generator)
            return self.fixed[0][index], self.fixed[1][index], {}, None
        if isinstance(self.data, Dataset):
            x1, y, c = self.data.draw(n, generator)
            condition = {"y": y} if y is not None and self.config.conditional else {}
            if c is not None:
                condition["c"] = c
        else:
            x, condition = self.data.next()
            x1, n = x.reshape(len(x), -1).to(torch.float32), len(x)
            if self.standardizer is not None:
                x1 = self.standardizer.forward(x1)
                self._check_drift(x1)
            # a stream's rows come in its own order (a sorted generator, an unshuffled loader); the strata of
            # the training times are runs of consecutive rows, so the rows are shuffled first: a row's time
            # must not tell where it lies in the data
            order = torch.randperm(n, generator=generator)
            x1, condition = x1[order], {k: v[order] for k, v in condition.items()}
        x0 = torch.randn(x1.shape, generator=generator) if self.source is None else self.source.sample(n, generator)
        y = condition.get("y")
        if self.config.coupling != "independent":
            from flowmatch.couplings import couple

            x0, x1 = couple(
                x0, x1, self.config.coupling, reg=self.config.ot_reg, generator=generator, labels=y if "y" in self.conditions else None
            )
        return x0, x1, drop(condition, self.conditions, self.config.cond_dropout, generator), y

    def _check_drift(self, z: torch.Tensor) -> None:
        if self.warned:
            return
        why = drift(z)
        if why:
            self.warned = True
            warnings.warn(
                f"a streamed batch lies far from the standardisation estimated on the stream's first batches: {why}; "
                "the stream may be sorted or its law may change (shuffle it, or pass rows as a tensor)",
                FlowmatchWarning,
                stacklevel=2,
            )


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
