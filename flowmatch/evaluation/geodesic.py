"""Sample quality on manifolds: geodesic W2, an MMD with a positive-definite kernel, and the report protocol.

Below, x_1..x_n are generated points and y_1..y_m held-out points on a manifold M with geodesic
distance d (:meth:`Manifold.dist`).

- **Geodesic W2** (:func:`geodesic_w2`): W2(P, Q) = (min_{pi in Pi(P, Q)} E_pi d(x, y)^2)^(1/2) between the
  empirical measures (uniform weights), solved exactly by POT's network simplex on the cost matrix
  d(x_i, y_j)^2, as :func:`flowmatch.evaluation.metrics.w2_exact` does with the Euclidean cost, up to
  :data:`~flowmatch.evaluation.metrics.MAX_EXACT_W2` points per set.
- **MMD** (:func:`geodesic_mmd`): the unbiased MMD^2 with a Gaussian kernel exp(-rho^2 / (2 h^2)) of a
  distance rho that makes it positive definite (see there), bandwidth h the median of rho over held-out
  pairs unless given.
- **The report** (:func:`manifold_report`): each of several generated sets scored against its own
  held-out set, the median and range over sets beside the floor (the same metric with a second
  held-out set in place of the samples), the memorisation figures, and, when the true density is
  known, the entropy, the model's NLL and KL(p || q).

Example::

    report = manifold_report([x1, x2, x3], [y1, y2, y3], train, manifold, log_prob=data.log_prob, model_log_prob=log_q)
    print(format_manifold_report(report))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ot
import torch

from flowmatch.errors import FlowmatchError
from flowmatch.evaluation.memorisation import COPY_QUANTILE, COPY_WARNING
from flowmatch.evaluation.metrics import MAX_EXACT_W2, median_distance, mmd
from flowmatch.manifolds.manifolds import Manifold, quaternion_to_matrix

_CHUNK = 1024


def _points(x, manifold: Manifold, what: str = "points") -> torch.Tensor:
    """Points as float64 (n, ambient_dim) on the CPU, at least 2 of them, checked by the manifold."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise FlowmatchError(f"{what} must be a tensor or array of shape (n, {manifold.ambient_dim}), got {type(x).__name__}")
    x = x.detach().cpu().to(torch.float64)
    if x.ndim != 2 or x.shape[1] != manifold.ambient_dim:
        raise FlowmatchError(f"{what} must have shape (n, {manifold.ambient_dim}) on {manifold.name}, got {tuple(x.shape)}")
    if len(x) < 2:
        raise FlowmatchError(f"{what} needs at least 2 points, got {len(x)}")
    if not torch.isfinite(x).all():
        raise FlowmatchError(f"{what} contains NaN or infinite values")
    return manifold.check(x, what=what)


# -- W2 ------------------------------------------------------------------------------------------------
def geodesic_w2(x, y, manifold: Manifold) -> float:
    """Exact W2 with the squared geodesic cost between the empirical measures of x (n, ambient) and y
    (m, ambient), uniform weights: (ot.emd2 on manifold.cdist(x, y)^2)^(1/2). At most
    :data:`~flowmatch.evaluation.metrics.MAX_EXACT_W2` points per set (the solve grows as n^3)."""
    x, y = _points(x, manifold, "x"), _points(y, manifold, "y")
    if max(len(x), len(y)) > MAX_EXACT_W2:
        raise FlowmatchError(f"exact W2 is limited to {MAX_EXACT_W2} points per set, got {len(x)} and {len(y)}")
    cost = manifold.cdist(x, y).to(torch.float64).pow(2).numpy()
    a, b = np.full(len(x), 1.0 / len(x)), np.full(len(y), 1.0 / len(y))
    return float(np.sqrt(max(ot.emd2(a, b, cost, numItermax=10_000_000), 0.0)))


# -- MMD -----------------------------------------------------------------------------------------------
#: The distance under the MMD's Gaussian kernel on each manifold, as reported.
MMD_KERNELS = {
    "euclidean": "Gaussian of the Euclidean distance",
    "sphere": "Gaussian of the chordal distance |x - y| = 2 sin(d / 2) in the ambient space",
    "torus": "product of periodic kernels exp((cos(t_i - s_i) - 1) / h^2), the Gaussian of |(cos t, sin t) - (cos s, sin s)|",
    "so3": "Gaussian of the Frobenius distance |R(q) - R(p)| = 2 sqrt(2) sin(d / 2) of the rotation matrices",
}


def kernel_features(x: torch.Tensor, manifold: Manifold) -> torch.Tensor:
    """The embedding phi of the manifold into R^k whose Euclidean distance the MMD kernel uses.

    Sphere and Euclidean space: phi(x) = x. Torus: phi(t) = (cos t, sin t) in R^{2d}. SO(3): phi(q) =
    R(q) flattened to R^9, the rotation matrix, equal for q and -q.
    """
    if manifold.name in ("euclidean", "sphere"):
        return x
    if manifold.name == "torus":
        return torch.cat([torch.cos(x), torch.sin(x)], dim=1)
    if manifold.name == "so3":
        return quaternion_to_matrix(x).reshape(len(x), 9)
    raise FlowmatchError(f"no MMD kernel for the manifold {manifold.name!r}")


def mmd_kernel(manifold: Manifold) -> str:
    """Which kernel :func:`geodesic_mmd` uses on ``manifold`` (a sentence, as reported)."""
    if manifold.name not in MMD_KERNELS:
        raise FlowmatchError(f"no MMD kernel for the manifold {manifold.name!r}")
    return MMD_KERNELS[manifold.name]


def mmd_bandwidth(y, manifold: Manifold) -> float:
    """The median heuristic: the median kernel distance |phi(y_i) - phi(y_j)| over pairs of the first
    2,000 points of y."""
    return median_distance(kernel_features(_points(y, manifold, "y"), manifold))


def geodesic_mmd(x, y, manifold: Manifold, bandwidth: float | None = None) -> float:
    """Unbiased MMD^2 between x and y with a positive-definite Gaussian kernel on ``manifold``.

    MMD^2 = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j) (it can be
    slightly negative), with k(a, b) = exp(-rho(a, b)^2 / (2 h^2)) and h = ``bandwidth``, by default the
    median of rho over pairs of y (:func:`mmd_bandwidth`).

    Which distance rho: the Gaussian of the *geodesic* distance, exp(-d^2 / (2 h^2)), is positive definite
    for every h only on flat spaces (Feragen, Lauze and Hauberg 2015); on the sphere and on SO(3) it is
    not, and an MMD built on it can be negative in expectation and fail to separate laws. So rho is the
    Euclidean distance of an embedding phi (:func:`kernel_features`), and k is the restriction of a
    Gaussian kernel on R^k, positive definite (characteristic, even) on the embedded manifold:

    - sphere: the chordal distance |x - y| = 2 sin(d / 2) (~ d for close points);
    - SO(3): the Frobenius distance of rotation matrices, |R1 - R2|^2 = 4 (1 - cos d) = 8 (1 - (q1.q2)^2),
      d the rotation angle between them; invariant under q -> -q;
    - torus: phi(t) = (cos t, sin t), so k = prod_i exp((cos(t_i - s_i) - 1) / h^2), a product of
      periodic (von Mises) kernels; 2 - 2 cos(delta) ~ delta^2 for close angles;
    - Euclidean space: the Euclidean distance.

    :func:`mmd_kernel` names the one in use. The sums run over blocks of rows
    (:func:`flowmatch.evaluation.metrics.mmd` on the embedded points).
    """
    x, y = _points(x, manifold, "x"), _points(y, manifold, "y")
    fx, fy = kernel_features(x, manifold), kernel_features(y, manifold)
    h = median_distance(fy) if bandwidth is None else float(bandwidth)
    if not h > 0:
        raise FlowmatchError(f"the MMD bandwidth must be positive, got {bandwidth!r}")
    return mmd(fx.numpy(), fy.numpy(), bandwidths=(h,))


# -- memorisation --------------------------------------------------------------------------------------
def closest_distances(points: torch.Tensor, records: torch.Tensor, manifold: Manifold) -> torch.Tensor:
    """DCR: the geodesic distance from each point to its nearest record, (n,), in row blocks."""
    return torch.cat([manifold.cdist(points[i : i + _CHUNK], records).min(1).values for i in range(0, len(points), _CHUNK)])


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": float(np.median(values)), "range": [float(min(values)), float(max(values))], "values": values}


def memorisation_figures(
    samples_sets: list[torch.Tensor], held_a: torch.Tensor, held_b: torch.Tensor, train: torch.Tensor, manifold: Manifold
):
    """Geodesic distances to the closest training point (DCR), generated sets against held-out points.

    With q50 and q05 the median and the :data:`~flowmatch.evaluation.memorisation.COPY_QUANTILE` quantile
    of the DCRs of ``held_a``:

    - ``near_share``: the share of generated points with DCR < q50 (about 0.5 for fresh points from the
      data law, 1 for copies of training points);
    - ``copy_share``: the share with DCR < q05 (about 0.05 fresh, 1 for copies), the project's copy share;
    - ``dcr_ratio``: median DCR of the generated points over q50 (about 1 fresh, 0 for copies);

    each as median and range over the generated sets, beside ``heldout``: the same figure for ``held_b``
    (independent of the thresholds). ``flagged`` when the median copy share exceeds
    max(:data:`~flowmatch.evaluation.memorisation.COPY_WARNING`, twice the held-out one).
    """
    dcr_a = closest_distances(held_a, train, manifold)
    q50, q05 = float(dcr_a.median()), float(torch.quantile(dcr_a, COPY_QUANTILE))
    dcr_b = closest_distances(held_b, train, manifold)
    dcrs = [closest_distances(x, train, manifold) for x in samples_sets]

    def shares(threshold: float) -> dict[str, Any]:
        return {
            **_summary([float((d < threshold).double().mean()) for d in dcrs]),
            "heldout": float((dcr_b < threshold).double().mean()),
        }

    ratio = (lambda d: float(d.median()) / q50) if q50 > 0 else (lambda d: math.nan)
    out: dict[str, Any] = {
        "n_train": len(train),
        "median_heldout_dcr": q50,
        "near_share": shares(q50),
        "copy_share": shares(q05),
        "dcr_ratio": {**_summary([ratio(d) for d in dcrs]), "heldout": ratio(dcr_b)},
    }
    own = out["copy_share"]["heldout"]
    out["flagged"] = bool(out["copy_share"]["median"] > max(COPY_WARNING, 2 * own))
    return out


# -- likelihood ----------------------------------------------------------------------------------------
def _mean_se(values: torch.Tensor) -> tuple[float, float | None]:
    se = float(values.std() / math.sqrt(len(values))) if len(values) > 1 else None
    return float(values.mean()), se


def likelihood_figures(points: torch.Tensor, log_prob: Callable | None, model_log_prob) -> dict[str, Any]:
    """Entropy, NLL and KL(p || q) from the true log-density ``log_prob`` p and the model's log q at ``points``.

    ``model_log_prob`` is a callable (evaluated at ``points``) or precomputed values log q(x_i) for the
    first len(values) points. With x_i drawn from p: H(p) = -mean log p(x_i), NLL = -mean log q(x_i),
    KL(p || q) = E_p[log p - log q] = mean of the paired differences, each with its standard error.
    Points with p = 0 (on a support's edge) add nothing to E_p and are counted in ``n_off_support``.
    """
    out: dict[str, Any] = {}
    log_q = None
    if model_log_prob is not None:
        log_q = model_log_prob(points) if callable(model_log_prob) else model_log_prob
        log_q = torch.as_tensor(log_q).detach().cpu().to(torch.float64).reshape(-1)
        if len(log_q) > len(points):
            raise FlowmatchError(f"model_log_prob has {len(log_q)} values for {len(points)} held-out points")
        points = points[: len(log_q)]
        out["nll"], out["nll_se"] = _mean_se(-log_q)
    out["n"] = len(points)
    if log_prob is None:
        return out
    log_p = torch.as_tensor(log_prob(points)).detach().cpu().to(torch.float64).reshape(-1)
    on = torch.isfinite(log_p)
    out["n_off_support"] = int((~on).sum())
    out["entropy"], out["entropy_se"] = _mean_se(-log_p[on])
    if log_q is not None:
        diff = (log_p - log_q)[on]
        if torch.isfinite(diff).all():
            out["kl"], out["kl_se"] = _mean_se(diff)
        else:
            out.update(kl=math.inf, kl_se=None, kl_note="the model gives zero density to some held-out points: KL is infinite")
    return out


# -- the report ----------------------------------------------------------------------------------------
def manifold_report(
    samples_sets: Sequence,
    heldout_sets: Sequence,
    train,
    manifold: Manifold,
    *,
    log_prob: Callable | None = None,
    model_log_prob=None,
    bandwidth: float | None = None,
) -> dict[str, Any]:
    """Sample quality of several generated sets on ``manifold``, each against its own held-out set.

    The protocol: ``samples_sets[k]`` (K sets) is scored against ``heldout_sets[k]``, so one held-out draw's
    luck cannot move every figure; ``heldout_sets`` has at least max(K, 2) sets, all of the same size
    ideally. The floor of set k is the same metric with the next held-out set, ``heldout_sets[(k + 1) % H]``,
    in place of the samples: what a perfect sampler would score with the same finite sizes. For each
    metric (geodesic W2, when every set has at most MAX_EXACT_W2 points, and MMD^2 with one bandwidth
    fixed from ``heldout_sets[0]``) the report gives the median, range and values over the K sets and the
    same for the floors.

    ``memorisation`` compares the generated points' geodesic distances to the ``train`` points with the
    held-out points' (:func:`memorisation_figures`): a copy of the training set is ``flagged``.

    With ``log_prob`` (the true log-density, a callable) and/or ``model_log_prob`` (the model's log q, a
    callable or values at the first points of ``heldout_sets[0]``), ``likelihood`` gives the entropy
    H(p), the model's NLL beside it and KL(p || q) (:func:`likelihood_figures`).
    """
    if isinstance(samples_sets, torch.Tensor | np.ndarray) or isinstance(heldout_sets, torch.Tensor | np.ndarray):
        raise FlowmatchError("samples_sets and heldout_sets are lists of point sets (one (n, D) array per set)")
    samples = [_points(x, manifold, f"samples set {k}") for k, x in enumerate(samples_sets)]
    held = [_points(y, manifold, f"held-out set {k}") for k, y in enumerate(heldout_sets)]
    k_sets, h_sets = len(samples), len(held)
    if k_sets < 1 or h_sets < max(k_sets, 2):
        raise FlowmatchError(f"need at least one samples set and at least max(that, 2) held-out sets, got {k_sets} and {h_sets}")
    train_points = _points(train, manifold, "train")
    h = mmd_bandwidth(held[0], manifold) if bandwidth is None else float(bandwidth)
    report: dict[str, Any] = {
        "manifold": manifold.name,
        "n_sets": k_sets,
        "sizes": {"samples": [len(x) for x in samples], "heldout": [len(y) for y in held], "train": len(train_points)},
        "mmd_kernel": mmd_kernel(manifold),
        "mmd_bandwidth": h,
    }
    metrics: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
        "mmd": lambda x, y: geodesic_mmd(x, y, manifold, bandwidth=h),
    }
    if max(len(s) for s in samples + held) <= MAX_EXACT_W2:
        metrics = {"w2": lambda x, y: geodesic_w2(x, y, manifold), **metrics}
    for name, metric in metrics.items():
        values = [metric(samples[k], held[k]) for k in range(k_sets)]
        floors = [metric(held[(k + 1) % h_sets], held[k]) for k in range(k_sets)]
        report[name] = {**_summary(values), "floor": _summary(floors)}
    report["memorisation"] = memorisation_figures(samples, held[0], held[1], train_points, manifold)
    if log_prob is not None or model_log_prob is not None:
        report["likelihood"] = likelihood_figures(held[0], log_prob, model_log_prob)
    return report


def format_manifold_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table: each metric's median and range beside its floor's."""
    n = report["sizes"]
    lines = [
        f"{report['manifold']}: {report['n_sets']} generated sets ({n['samples'][0]} points each), each against its own held-out set",
        f"{'metric':<22}{'median':>11}  {'range':<26}{'floor':>11}  {'floor range':<26}",
    ]
    for key, label in (("w2", "W2 (geodesic)"), ("mmd", "MMD^2")):
        if key in report:
            m, f = report[key], report[key]["floor"]
            lines.append(f"{label:<22}{m['median']:>11.4g}  {_range(m['range']):<26}{f['median']:>11.4g}  {_range(f['range']):<26}")
    lines.append(f"  (MMD kernel: {report['mmd_kernel']}, h = {report['mmd_bandwidth']:.4g})")
    memo = report["memorisation"]
    lines.append(f"memorisation against {memo['n_train']} training points (geodesic distance to the nearest):")
    for key, label in (("near_share", "share < held-out median"), ("copy_share", "copy share (< 5% q.)"), ("dcr_ratio", "DCR ratio")):
        lines.append(f"  {label:<26}{memo[key]['median']:>9.3f}   held-out {memo[key]['heldout']:.3f}")
    if memo["flagged"]:
        lines.append("  warning: the generated points sit on the training points far more often than held-out points do")
    lik = report.get("likelihood")
    if lik:
        if "entropy" in lik:
            lines.append(f"{'entropy H(p)':<22}{lik['entropy']:>11.4f} +- {lik['entropy_se']:.4f} nats ({lik['n']} held-out points)")
        if "nll" in lik:
            lines.append(f"{'NLL (model)':<22}{lik['nll']:>11.4f} +- {lik['nll_se']:.4f} nats")
        if "kl" in lik:
            se = f" +- {lik['kl_se']:.4f}" if lik.get("kl_se") is not None else ""
            lines.append(f"{'KL(p || model)':<22}{lik['kl']:>11.4f}{se}")
    return "\n".join(line.rstrip() for line in lines)


def _range(r: list[float]) -> str:
    return f"[{r[0]:.4g}, {r[1]:.4g}]"
