"""Memorisation: does a model trained on finite data generate new rows, or copies of its training rows?

A quality figure against the test split cannot tell: a copy of the training set scores about as well
as a perfect model on W2 to the test rows (it is the ForestFlow protocol's oracle row). These figures
can, because they compare each generated row with the *training* rows against what real unseen rows
do. Every distance is L1 after min-max scaling fitted on the training rows (each column mapped to
[0, 1]; a constant column is left unscaled), so that no column dominates by its units.

- **Distance to the closest record** DCR(x) = min_j ||x - r_j||_1 over the training rows r_j.
- **Copy share**: the share of generated rows with DCR below q, the 5% quantile of the test rows'
  own DCRs: "nearer to a training row than 95% of real unseen rows are". A sampler of fresh rows
  from the data distribution scores about 0.05; a model that returns its training rows scores 1.
- **DCR ratio**: median DCR of the generated rows over the median DCR of the test rows: about 1 for
  fresh rows, 0 for copies.
- **W_train and W_test** (as the ForestFlow paper reports them): Wasserstein-1 distance, cost L1 in
  the same scaling, between generated rows and the training rows (as many generated rows as there
  are training rows) and between generated rows and the test rows (as many as test rows). A model
  that copies has W_train far below W_test; a generalising one has them about equal.

Each figure is reported beside the test split's own: the test rows scored as if they were generated
(copy share about 0.05 and DCR ratio 1 by construction; W_test of the test rows is 0, so the
reference there is W_test of a draw of training rows, the copy).

Example::

    report = memorisation(generated, train, test)      # {"copy_share": {"value": ..., "test": ...}, ...}
    if memorisation_warning(report): ...
"""

from __future__ import annotations

import math

import numpy as np
import ot
import torch

from flowmatch.errors import FlowmatchError

#: The quantile of the test rows' DCRs below which a generated row counts as a copy.
COPY_QUANTILE = 0.05


#: A run warns when its copy share exceeds this, and twice the test split's own.
COPY_WARNING = 0.10


#: Wasserstein distances are exact (POT's network simplex) up to this many rows per set; larger sets
#: are scored on this many random rows.
MAX_W_ROWS = 5000


_CHUNK = 2048


def _rows(x, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise FlowmatchError(f"memorisation: {what} must be a tensor or array, got {type(x).__name__}")
    x = x.detach().cpu().to(torch.float64).reshape(len(x), -1)
    if len(x) < 2:
        raise FlowmatchError(f"memorisation: {what} needs at least 2 rows, got {len(x)}")
    if not torch.isfinite(x).all():
        raise FlowmatchError(f"memorisation: {what} contains NaN or infinite values")
    return x


class MinMaxScale:
    """x -> (x - min) / (max - min) per column, fitted on the training rows (range 0: left as x - min)."""

    def __init__(self, train: torch.Tensor):
        self.low = train.min(0).values
        span = train.max(0).values - self.low
        self.span = torch.where(span > 0, span, torch.ones_like(span))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.low) / self.span


def closest_records(points: torch.Tensor, records: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(DCR, index): the L1 distance from each point to its nearest record and that record's row, in row chunks."""
    nearest = [torch.cdist(points[i : i + _CHUNK], records, p=1).min(1) for i in range(0, len(points), _CHUNK)]
    return torch.cat([m.values for m in nearest]), torch.cat([m.indices for m in nearest])


def closest_record_distances(points: torch.Tensor, records: torch.Tensor) -> torch.Tensor:
    """DCR: the L1 distance from each point to its nearest record."""
    return closest_records(points, records)[0]


def _subset(x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    return x if len(x) <= n else x[torch.randperm(len(x), generator=generator)[:n]]


def w1_l1(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact Wasserstein-1 with the L1 cost between two empirical measures (uniform weights)."""
    cost = torch.cdist(x, y, p=1).numpy()
    return float(ot.emd2(np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y)), cost, numItermax=10_000_000))


def memorisation(generated, train, test, *, generated_train=None, seed: int = 0) -> dict:
    """The memorisation figures of ``generated`` rows against the ``train`` and ``test`` rows.

    All three are in data coordinates, (n, ...) rows flattened to (n, D). ``generated`` scores the
    copy share, the DCR ratio and W_test (on its first len(test) rows); W_train is scored on
    ``generated_train`` when given (ideally as many rows as ``train``), else on ``generated``.
    Returns ``{name: {"value": v, "test": the test split's own}}`` plus ``n`` and ``threshold``.
    """
    generated, train, test = _rows(generated, "generated"), _rows(train, "train"), _rows(test, "test")
    if not generated.shape[1] == train.shape[1] == test.shape[1]:
        raise FlowmatchError(f"memorisation: dimension mismatch: {generated.shape[1]}, {train.shape[1]}, {test.shape[1]}")
    scale = MinMaxScale(train)
    g, r, h = scale(generated), scale(train), scale(test)
    dcr_test = closest_record_distances(h, r)
    dcr_gen = closest_record_distances(g, r)
    threshold = float(torch.quantile(dcr_test, COPY_QUANTILE))
    median_test = float(dcr_test.median())
    rng = torch.Generator().manual_seed(seed)
    g_train = g if generated_train is None else scale(_rows(generated_train, "generated_train"))
    g_test = _subset(g, len(h), rng)
    rows = min(MAX_W_ROWS, len(r))
    out = {
        "n": len(g),
        "n_train": len(r),
        "n_test": len(h),
        "threshold": threshold,
        "copy_share": {
            "value": float((dcr_gen < threshold).double().mean()),
            "test": float((dcr_test < threshold).double().mean()),
        },
        "dcr_ratio": {
            "value": float(dcr_gen.median()) / median_test if median_test > 0 else math.nan,
            "test": 1.0,
        },
        "w_train": {
            "value": w1_l1(_subset(g_train, rows, rng), _subset(r, rows, rng)),
            "test": w1_l1(_subset(h, rows, rng), _subset(r, rows, rng)),
        },
        "w_test": {
            "value": w1_l1(_subset(g_test, MAX_W_ROWS, rng), _subset(h, MAX_W_ROWS, rng)),
            "test": w1_l1(_subset(r, min(len(h), MAX_W_ROWS), rng), _subset(h, MAX_W_ROWS, rng)),
        },
    }
    return out


def memorisation_warning(report: dict) -> str:
    """One line when the copy share is well above the test split's own ('' otherwise)."""
    share, own = report["copy_share"]["value"], report["copy_share"]["test"]
    if share <= max(COPY_WARNING, 2 * own):
        return ""
    return (
        f"warning: {share:.0%} of generated rows are nearer to a training row than 95% of unseen rows are "
        f"(the test split's own share: {own:.0%}): the model copies its training data; "
        "try select=val-loss, weight_decay=1e-4, target=conditional or fewer steps"
    )
