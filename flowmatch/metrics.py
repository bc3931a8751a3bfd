"""Sample-quality metrics between generated samples and held-out data, in any dimension.

Each metric is reported beside its floor: the same metric between two independent held-out draws
of the same size, which is what a perfect model would score given finite samples.

- Exact 2-Wasserstein distance, W2(P, Q) = (min_{pi in Pi(P, Q)} E_pi ||x - y||^2)^(1/2), for two
  empirical measures with uniform weights, solved exactly by POT's network simplex (``ot.emd2``).
"""

from __future__ import annotations

import numpy as np
import ot
import torch

from .errors import FlowmatchError

MAX_EXACT_W2 = 5000


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise FlowmatchError(f"metrics take arrays of shape (N, D), got shape {x.shape}")
    return x


def w2_exact(x, y) -> float:
    """Exact W2 between the empirical measures of x (n, D) and y (m, D), uniform weights."""
    x, y = _as_numpy(x), _as_numpy(y)
    if x.shape[1] != y.shape[1]:
        raise FlowmatchError(f"dimension mismatch: {x.shape[1]} vs {y.shape[1]}")
    if max(len(x), len(y)) > MAX_EXACT_W2:
        raise FlowmatchError(f"exact W2 is limited to {MAX_EXACT_W2} points per set; use sliced W2 for more")
    cost = ot.dist(x, y, metric="sqeuclidean")
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    return float(np.sqrt(max(ot.emd2(a, b, cost, numItermax=10_000_000), 0.0)))
