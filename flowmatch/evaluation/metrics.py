"""Sample-quality metrics between generated samples and held-out data, in any dimension.

Each metric is reported beside its floor: the same metric between two independent held-out draws
of the same size, which is what a perfect model would score given finite samples
(:func:`quality`). Below, x_1..x_n are generated and y_1..y_m held-out points.

- **Exact W2**: W2(P, Q) = (min_{pi in Pi(P, Q)} E_pi ||x - y||^2)^(1/2) between the two empirical
  measures with uniform weights, solved exactly by POT's network simplex (``ot.emd2``), up to
  :data:`MAX_EXACT_W2` points per set (the solve is about 4 s at 5,000 points).
- **Sliced W2**: SW2 = (E_theta W2^2(theta^T P, theta^T Q))^(1/2) over directions theta uniform on
  the sphere, estimated with ``n_projections`` random directions (``ot.sliced_wasserstein_distance``);
  each 1-D W2 is exact by sorting, so it scales to any number of points.
- **MMD** with a multi-bandwidth RBF kernel k(a, b) = (1/B) sum_b exp(-||a - b||^2 / (2 h_b^2)),
  the unbiased estimate MMD^2 = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j)
  - 2 mean_{i, j} k(x_i, y_j) (it can be slightly negative). The bandwidths h_b are
  :data:`MMD_SCALES` times the median distance between held-out points, fixed once per report so
  the value and its floor use the same kernel.
- **Energy distance** E = 2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| (Szekely & Rizzo), zero iff
  P = Q; the within-set terms are U-statistics (i != j), so E is unbiased.
- **k-NN precision and recall** (Kynkaanniemi et al. 2019): the data manifold is the union of the
  balls around each y_j with radius the distance to its k-th nearest other y; precision is the
  fraction of x inside it, recall the fraction of y inside the manifold of the x built the same way.

- **Shape score** (:func:`shape_score`), the figure that a wrong shape cannot pass. On a multimodal set,
  a W2 between a few thousand points is set mostly by how many points land in each mode, so a model with
  the right shares and the wrong shape inside every mode scores near its floor. Where the components
  are known (labels of every point: the built-in mixtures, squares, moons, rings), the score keeps two
  figures apart: the **mode shares**, the total variation TV = (1/2) sum_k |p_k - w_k| between the
  generated shares p and the component weights w, beside its floor E TV(Multinomial(n, w)/n, w) (what
  n exact draws score, by Monte Carlo), and the **within-mode shape**, (sum_k w_k W2_k^2)^(1/2) with
  W2_k the exact W2 between the generated and the held-out points of mode k, as many of each, beside
  the same figure for a second held-out draw. Elsewhere it is the energy distance beside its floor, both with
  the finite-sample bias two exact draws of the data have (:func:`energy_distance` with ``unbiased=False``).

Example::

    report = quality(samples, held_a, held_b)       # {"w2": {"value": ..., "floor": ...}, ...}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import ot
import torch

from flowmatch.errors import FlowmatchError

MAX_EXACT_W2 = 5000


MMD_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


METRICS = ("w2", "sliced_w2", "mmd", "energy", "precision", "recall")


_CHUNK = 1024


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise FlowmatchError(f"metrics take arrays of shape (N, D), got shape {x.shape}")
    if len(x) < 2:
        raise FlowmatchError(f"metrics need at least 2 points per set, got {len(x)}")
    if not np.isfinite(x).all():
        raise FlowmatchError("metrics: the points contain NaN or infinite values")
    return x


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_numpy(x), _as_numpy(y)
    if x.shape[1] != y.shape[1]:
        raise FlowmatchError(f"dimension mismatch: {x.shape[1]} vs {y.shape[1]}")
    return x, y


def _pairwise(a: np.ndarray, b: np.ndarray):
    """Yield (row slice, ||a_i - b_j|| block) for row blocks of a, float64 torch tensors."""
    tb = torch.from_numpy(b)
    for start in range(0, len(a), _CHUNK):
        ta = torch.from_numpy(a[start : start + _CHUNK])
        yield slice(start, start + len(ta)), torch.cdist(ta, tb)


def w2_exact(x, y) -> float:
    """Exact W2 between the empirical measures of x (n, D) and y (m, D), uniform weights."""
    x, y = _pair(x, y)
    if max(len(x), len(y)) > MAX_EXACT_W2:
        raise FlowmatchError(f"exact W2 is limited to {MAX_EXACT_W2} points per set; use sliced W2 for more")
    cost = ot.dist(x, y, metric="sqeuclidean")
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    return float(np.sqrt(max(ot.emd2(a, b, cost, numItermax=10_000_000), 0.0)))


def sliced_w2(x, y, *, n_projections: int = 500, seed: int = 0) -> float:
    """Sliced W2 over ``n_projections`` random directions (seeded); see the module docstring."""
    x, y = _pair(x, y)
    return float(ot.sliced_wasserstein_distance(x, y, n_projections=n_projections, p=2, seed=seed))


def median_distance(y, *, max_points: int = 2000) -> float:
    """Median of ||y_i - y_j||, i < j, over the first ``max_points`` points (the bandwidth heuristic)."""
    y = _as_numpy(y)[:max_points]
    d = torch.pdist(torch.from_numpy(y))
    med = float(d.median()) if d.numel() else 0.0
    return med if med > 0 else 1.0


def mmd_bandwidths(y) -> tuple[float, ...]:
    """The RBF bandwidths h_b = scale_b * median distance of y, scales :data:`MMD_SCALES`."""
    med = median_distance(y)
    return tuple(s * med for s in MMD_SCALES)


def _kernel_sum(a: np.ndarray, b: np.ndarray, bandwidths, same: bool) -> float:
    """sum_{i, j} k(a_i, b_j), leaving out i = j when a is b (``same``)."""
    total = 0.0
    for rows, d in _pairwise(a, b):
        d2 = d.pow(2).to(torch.float32)  # kernel values in float32 (twice as fast), sums in float64
        k = torch.zeros_like(d2)
        for h in bandwidths:
            k += torch.exp(d2 * (-1.0 / (2 * h * h)))
        if same:
            k[torch.arange(k.shape[0]), torch.arange(rows.start, rows.stop)] = 0.0
        total += float(k.sum(dtype=torch.float64)) / len(bandwidths)
    return total


def mmd(x, y, *, bandwidths: tuple[float, ...] | None = None) -> float:
    """Unbiased MMD^2 with the multi-bandwidth RBF kernel (bandwidths from y by default)."""
    x, y = _pair(x, y)
    bandwidths = tuple(bandwidths) if bandwidths is not None else mmd_bandwidths(y)
    n, m = len(x), len(y)
    kxx = _kernel_sum(x, x, bandwidths, True) / (n * (n - 1))
    kyy = _kernel_sum(y, y, bandwidths, True) / (m * (m - 1))
    kxy = _kernel_sum(x, y, bandwidths, False) / (n * m)
    return kxx + kyy - 2 * kxy


def _mean_distance(a: np.ndarray, b: np.ndarray, same: bool) -> float:
    total = sum(float(d.sum()) for _, d in _pairwise(a, b))  # the diagonal is 0 when a is b
    count = len(a) * (len(a) - 1) if same else len(a) * len(b)
    return total / count


def energy_distance(x, y, *, unbiased: bool = True) -> float:
    """Energy distance 2 E||X - Y|| - E||X - X'|| - E||Y - Y'|| of ``x`` to the reference ``y``: U-statistics
    within each set (unbiased, may be slightly negative), or with ``unbiased=False`` the U-statistic plus the
    size bias two exact draws of ``y``'s distribution of these sizes have, E||Y - Y'|| (1 / n + 1 / m): the
    V-statistic's bias (the mean over all pairs with i = j included), taken from the reference alone. The same
    for any ``x`` of that size, it makes a ratio to a floor of the same sizes calibrated as a W2's is; taken
    from ``x``'s own spread, as the V-statistic takes it, samples collapsed towards their mean (blurry images)
    would lower their own bias and score below the floor."""
    x, y = _pair(x, y)
    dxx, dyy = _mean_distance(x, x, True), _mean_distance(y, y, True)
    u = 2 * _mean_distance(x, y, False) - dxx - dyy
    return u if unbiased else u + dyy / len(x) + dyy / len(y)


def _knn_radii(a: np.ndarray, k: int) -> torch.Tensor:
    """Distance from each a_i to its k-th nearest neighbour among the other points of a."""
    radii = []
    for _, d in _pairwise(a, a):
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the smallest entry is the point itself
    return torch.cat(radii)


def _coverage(points: np.ndarray, centres: np.ndarray, radii: torch.Tensor) -> float:
    """Fraction of points inside at least one ball (centre_j, radius_j)."""
    inside = 0
    for _, d in _pairwise(points, centres):
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / len(points)


def precision_recall(x, y, *, k: int = 3) -> tuple[float, float]:
    """k-NN precision (generated x inside the manifold of data y) and recall (y inside that of x)."""
    x, y = _pair(x, y)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < min(len(x), len(y)):
        raise FlowmatchError(f"k must be an integer in [1, {min(len(x), len(y)) - 1}], got {k!r}")
    precision = _coverage(x, y, _knn_radii(y, k))
    recall = _coverage(y, x, _knn_radii(x, k))
    return precision, recall


def quality(samples, held, held_other, *, seed: int = 0, k: int = 3, n_projections: int = 500) -> dict[str, dict[str, float]]:
    """Every metric of ``samples`` against ``held``, beside its floor: ``held_other`` against ``held``.

    ``held`` and ``held_other`` are two independent held-out draws; all three sets should have the
    same size, so the floor has the same finite-sample bias as the value. Exact W2 is skipped
    (absent) above :data:`MAX_EXACT_W2` points. Returns ``{name: {"value": v, "floor": f}}``.
    """
    x, a, b = _as_numpy(samples), _as_numpy(held), _as_numpy(held_other)
    if not x.shape[1] == a.shape[1] == b.shape[1]:
        raise FlowmatchError(f"dimension mismatch: {x.shape[1]}, {a.shape[1]}, {b.shape[1]}")
    bandwidths = mmd_bandwidths(a)
    out: dict[str, dict[str, float]] = {}
    if max(len(x), len(a), len(b)) <= MAX_EXACT_W2:
        out["w2"] = {"value": w2_exact(x, a), "floor": w2_exact(b, a)}
    out["sliced_w2"] = {
        "value": sliced_w2(x, a, n_projections=n_projections, seed=seed),
        "floor": sliced_w2(b, a, n_projections=n_projections, seed=seed),
    }
    out["mmd"] = {"value": mmd(x, a, bandwidths=bandwidths), "floor": mmd(b, a, bandwidths=bandwidths)}
    out["energy"] = {"value": energy_distance(x, a), "floor": energy_distance(b, a)}
    p, r = precision_recall(x, a, k=k)
    p0, r0 = precision_recall(b, a, k=k)
    out["precision"] = {"value": p, "floor": p0}
    out["recall"] = {"value": r, "floor": r0}
    return out


def gaussian_w2(mean_a, cov_a, mean_b, cov_b) -> float:
    """Closed-form W2 between N(m_a, S_a) and N(m_b, S_b) (used to check the estimators):
    W2^2 = |m_a - m_b|^2 + tr(S_a + S_b - 2 (S_a^(1/2) S_b S_a^(1/2))^(1/2))."""
    from scipy.linalg import sqrtm

    ma, mb = np.asarray(mean_a, float), np.asarray(mean_b, float)
    sa, sb = np.atleast_2d(np.asarray(cov_a, float)), np.atleast_2d(np.asarray(cov_b, float))
    root = sqrtm(sa)
    cross = np.real(sqrtm(root @ sb @ root))
    return math.sqrt(max(float(np.sum((ma - mb) ** 2) + np.trace(sa + sb - 2 * cross)), 0.0))


SHARE_FLOOR_DRAWS = 2000  # multinomial draws behind the floor of the mode-share TV


def share_floor(weights, n: int, *, seed: int = 0) -> float:
    """E TV(Multinomial(n, w) / n, w): the mode-share error of ``n`` exact draws from weights ``w``
    (Monte Carlo over :data:`SHARE_FLOOR_DRAWS` seeded draws; its own error is under 2% of the value)."""
    w = np.asarray(weights, dtype=np.float64)
    counts = np.random.default_rng(seed).multinomial(int(n), w / w.sum(), size=SHARE_FLOOR_DRAWS)
    return float(0.5 * np.abs(counts / n - w).sum(axis=1).mean())


def shape_score(samples, held, held_other, *, labels=None, weights=None, max_per_mode: int = 1000, seed: int = 0) -> dict:
    """The shape score of ``samples`` against a held-out draw ``held``, with floors from ``held_other``
    (module docstring).

    ``labels``: None (components unknown: the energy distance, V-statistic, and sliced W2, each beside its floor), or
    the component of every point of the three sets, ``(labels_samples, labels_held, labels_other)``.
    ``weights`` (K,): the components' weights (default: the shares of the two held-out sets together).
    Within mode k, at most ``max_per_mode`` points of each set are compared (the first ones: the sets
    are exchangeable draws), as many generated as held-out. A mode with fewer than 2 generated points
    is ``missing``: it has no shape to score, and its weight is dropped from the within-mode figure
    (the shares carry the loss). Returns a dict with ``kind`` ``"modes"`` or ``"energy"``, and
    ``ratio``: the within-mode (or energy) value over its floor.
    """
    x, a, b = _as_numpy(samples), _as_numpy(held), _as_numpy(held_other)
    if not x.shape[1] == a.shape[1] == b.shape[1]:
        raise FlowmatchError(f"dimension mismatch: {x.shape[1]}, {a.shape[1]}, {b.shape[1]}")
    if labels is None:
        value, floor = energy_distance(x, a, unbiased=False), energy_distance(b, a, unbiased=False)
        return {
            "kind": "energy",
            "n": len(x),
            "energy": {"value": value, "floor": floor},
            "sliced_w2": {"value": sliced_w2(x, a, seed=seed), "floor": sliced_w2(b, a, seed=seed)},
            "ratio": value / floor if floor > 0 else math.nan,
        }
    lx, la, lb = (np.asarray(torch.as_tensor(v).cpu(), dtype=np.int64).reshape(-1) for v in labels)
    if not (len(lx), len(la), len(lb)) == (len(x), len(a), len(b)):
        raise FlowmatchError("shape_score: labels must give one component per point of each set")
    k = int(max(lx.max(initial=0), la.max(initial=0), lb.max(initial=0))) + 1
    if weights is None:
        w = np.bincount(np.concatenate([la, lb]), minlength=k) / (len(la) + len(lb))
    else:
        w = np.asarray(weights, dtype=np.float64)
        k = max(k, len(w))
        w = np.pad(w, (0, k - len(w))) / w.sum()
    p = np.bincount(lx, minlength=k) / len(lx)
    per_mode: list[dict[str, Any]] = []
    missing: list[int] = []
    value2 = floor2 = kept = 0.0
    for j in range(k):
        xj, aj, bj = x[lx == j], a[la == j], b[lb == j]
        m = min(len(xj), len(aj), len(bj), max_per_mode)
        if w[j] == 0:
            continue
        if m < 2:
            missing.append(j)
            per_mode.append({"mode": j, "n": int(m), "w2": None, "floor": None})
            continue
        wj, fj = w2_exact(xj[:m], aj[:m]), w2_exact(bj[:m], aj[:m])
        per_mode.append({"mode": j, "n": int(m), "w2": wj, "floor": fj})
        value2, floor2, kept = value2 + w[j] * wj**2, floor2 + w[j] * fj**2, kept + w[j]
    within = math.sqrt(value2 / kept) if kept else math.nan
    within_floor = math.sqrt(floor2 / kept) if kept else math.nan
    return {
        "kind": "modes",
        "n": len(x),
        "shares": {
            "value": float(0.5 * np.abs(p - w).sum()),
            "floor": share_floor(w, len(x), seed=seed),
            "generated": p.tolist(),
            "weights": w.tolist(),
        },
        "within": {"value": within, "floor": within_floor},
        "per_mode": per_mode,
        "missing": missing,
        "ratio": within / within_floor if within_floor > 0 else math.nan,
    }


def median_shape(scores: list[dict]) -> dict:
    """The median over several :func:`shape_score` results (each a sample set against its own held-out
    draws): ``ratio``, ``sets``, and the median value and floor of each figure; ``missing``: the modes
    missing from any set."""
    if not scores:
        raise FlowmatchError("median_shape needs at least one score")
    out: dict = {
        "kind": scores[0]["kind"],
        "n": scores[0]["n"],
        "sets": len(scores),
        "ratio": float(np.median([s["ratio"] for s in scores])),
    }
    for key in ("energy", "sliced_w2", "shares", "within"):
        if key in scores[0]:
            out[key] = {part: float(np.median([s[key][part] for s in scores])) for part in ("value", "floor")}
    if "shares" in out:
        out["shares"]["ratio"] = out["shares"]["value"] / out["shares"]["floor"] if out["shares"]["floor"] > 0 else math.nan
        out["missing"] = sorted({j for s in scores for j in s["missing"]})
    return out
