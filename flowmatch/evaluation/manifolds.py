"""Evaluation of manifold runs (kind manifold): sample quality beside its floors, memorisation, likelihood.

:func:`evaluate_manifold` follows the protocol of :func:`flowmatch.evaluation.geodesic.manifold_report`:
K generated sets, each scored against its own held-out set, so that one held-out draw's luck cannot move
every figure; the floor of set k is the same metric between two held-out sets, what a perfect sampler
scores with the same sizes. Built-in sets draw K + 1 fresh held-out sets of n points (seeds seed +
7,000,003 + k); a file's run cuts its test split into K + 1 blocks of equal size (n at most the block),
with K lowered until each block has 2 points.

- ``w2`` (exact geodesic W2) and ``mmd`` (MMD^2 with a positive-definite kernel): median, range and
  values over the K sets, and the same for the floors;
- ``memorisation``: geodesic distances of generated points to the closest training point beside those of
  held-out points (a file's training split; a built-in set, which has no training points, a fresh draw);
- ``likelihood``: the model's NLL of the first held-out set's first ``n_likelihood`` points (nats, w.r.t.
  the Riemannian volume: :meth:`RiemannianFlow.log_prob`, the divergence exact over a tangent basis, or
  Hutchinson's with ``probes``), and for a built-in set the entropy H(p) of the same points with
  KL(p || model) = E_p[log p - log q], beside ``entropy_reference`` (the set's Monte-Carlo entropy of a
  million draws, :data:`flowmatch.data.manifolds.ENTROPY`);
- ``on_manifold``: the largest and mean distance of the generated points from the data's manifold before
  projection (:meth:`RiemannianFlow.on_data_manifold`): rounding for a Riemannian flow, the real gap for
  the Euclidean comparison, whose points are projected before they are scored (its density lives in R^D,
  so it has no NLL on the manifold);
- ``sampler``: the solver and its exact number of velocity evaluations.

``quick`` (what ``flowmatch train`` runs at the end; ``flowmatch eval --quick``) keeps it to seconds: 3
sets of 500 points, NLL of 300 points with rk4 at NFE 32. The full report: 5 sets of 2,000 points, NLL of
2,000 points with rk4 at NFE 64, and samples.png.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from flowmatch.data.dataset import shuffled_rows
from flowmatch.data.manifolds import ENTROPY, HELD_SEED, ManifoldRunData, PointSet, load_run_data
from flowmatch.errors import FlowmatchError
from flowmatch.evaluation.geodesic import format_manifold_report, manifold_report
from flowmatch.flows.riemannian import RiemannianFlow
from flowmatch.manifolds.solvers import MANIFOLD_SOLVERS

QUICK = {"sets": 3, "n": 500, "n_likelihood": 300, "likelihood_nfe": 32}


FULL = {"sets": 5, "n": 2000, "n_likelihood": 2000, "likelihood_nfe": 64}


#: The sampler of the quality figures unless told: rk4 at NFE 100, as for continuous runs.
SAMPLER = RiemannianFlow.DEFAULT_SAMPLER


def run_data(flow: RiemannianFlow) -> ManifoldRunData:
    """The data of the run a loaded flow comes from (its config names them)."""
    from types import SimpleNamespace

    if not flow.config:
        raise FlowmatchError("this flow names no data to evaluate against: pass data= (a ManifoldRunData) or reference= and train=")
    return load_run_data(SimpleNamespace(**flow.config))


def reference_data(flow: RiemannianFlow, reference, train, seed: int = 0) -> ManifoldRunData:
    """Held-out points (``reference``, shuffled with ``seed`` before it is cut into held-out sets) and
    training points (``train``) of one's own as a run's data."""
    if train is None:
        raise FlowmatchError("a manifold flow scored against reference= points needs the points it trained on too (train=)")
    manifold = flow.data_manifold
    test = shuffled_rows(manifold.check(torch.as_tensor(reference), "reference").to(torch.float32), seed)
    points = manifold.check(torch.as_tensor(train), "train").to(torch.float32)
    return ManifoldRunData("reference", PointSet("reference", manifold, test.double(), "reference"), manifold, train=points, test=test)


def evaluate_manifold(
    flow: RiemannianFlow,
    run_dir=None,
    *,
    data: ManifoldRunData | None = None,
    quick: bool = False,
    sets: int | None = None,
    n: int | None = None,
    solver: str | None = None,
    nfe: int | None = None,
    n_likelihood: int | None = None,
    likelihood_solver: str | None = None,
    likelihood_nfe: int | None = None,
    probes: int = 0,
    seed: int = 0,
    pictures: bool | None = None,
) -> dict[str, Any]:
    """The report of the module docstring for ``flow`` on its run's data (or ``data``); with ``run_dir``,
    report.json (and, unless quick or ``pictures=False``, samples.png) are written there atomically."""
    if not isinstance(flow, RiemannianFlow):
        raise FlowmatchError(f"evaluate_manifold scores a RiemannianFlow, got {type(flow).__name__}")
    started = time.perf_counter()
    defaults = QUICK if quick else FULL
    sets = defaults["sets"] if sets is None else sets
    n = defaults["n"] if n is None else n
    n_likelihood = defaults["n_likelihood"] if n_likelihood is None else n_likelihood
    solver = solver or SAMPLER[0]
    nfe = nfe if nfe is not None else SAMPLER[1]
    likelihood_solver = likelihood_solver or "rk4"
    likelihood_nfe = likelihood_nfe if likelihood_nfe is not None else defaults["likelihood_nfe"]
    for label, value, low in (
        ("sets", sets, 1),
        ("n", n, 2),
        ("n_likelihood", n_likelihood, 1),
        ("nfe", nfe, 1),
        ("likelihood_nfe", likelihood_nfe, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise FlowmatchError(f"{label} must be an integer >= {low}, got {value!r}")
    for label, name in (("solver", solver), ("likelihood_solver", likelihood_solver)):
        if name not in MANIFOLD_SOLVERS:
            raise FlowmatchError(
                f"{label}={name}: a manifold run integrates with {', '.join(MANIFOLD_SOLVERS)} (fixed steps through the exponential map)"
            )
    from flowmatch.solvers.grids import time_grid
    from flowmatch.solvers.tableaus import steps_for

    for name, count in ((solver, nfe), (likelihood_solver, likelihood_nfe)):  # checked before any work
        time_grid("uniform", steps_for(name, count))
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 0:
        raise FlowmatchError(f"probes must be a non-negative integer (0: the exact divergence), got {probes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FlowmatchError(f"seed must be a non-negative integer, got {seed!r}")
    data = data if data is not None else run_data(flow)
    if data.test is not None:  # blocks of the test split: K + 1 of them with at least 2 points each
        sets = min(sets, len(data.test) // 2 - 1)
        if sets < 1:
            raise FlowmatchError(f"{data.name}: the test split holds {len(data.test)} points; scoring needs at least 4")
        n = min(n, len(data.test) // (sets + 1))
    held = [data.held_out(n, seed, k) for k in range(sets + 1)]
    raw = [flow.generate(n, solver=solver, nfe=nfe, seed=seed + 1 + k) for k in range(sets)]
    projected, offs = zip(*(flow.on_data_manifold(x) for x in raw))
    train = data.train if data.train is not None else data.law.sample(n, generator=seed + HELD_SEED + sets + 1)
    riemannian = flow.manifold == flow.data_manifold
    log_q = None
    if riemannian:
        points = held[0][:n_likelihood]
        lik_started = time.perf_counter()
        log_q = flow.log_prob(points, solver=likelihood_solver, nfe=likelihood_nfe, probes=probes, seed=seed)
        lik_seconds = time.perf_counter() - lik_started
    log_p = data.law.log_prob if data.law.has_log_prob else None
    report = manifold_report(list(projected), held, train, data.manifold, log_prob=log_p, model_log_prob=log_q)
    off = torch.cat(offs).double()
    report.update(
        kind="manifold",
        data=data.name,
        flow_manifold=flow.manifold.to_config(),
        quick=quick,
        sampler={"solver": solver, "nfe": nfe},
        on_manifold={"max_distance": float(off.max()), "mean_distance": float(off.mean()), "projected": not riemannian},
    )
    if "likelihood" in report:
        lik = report["likelihood"]
        if riemannian:
            lik.update(solver=likelihood_solver, nfe=likelihood_nfe, divergence="hutchinson" if probes else "exact", seconds=lik_seconds)
            if probes:
                lik["probes"] = probes
        if data.name in ENTROPY and data.test is None:
            lik["entropy_reference"], lik["entropy_reference_se"] = ENTROPY[data.name]
    if not riemannian:
        report["likelihood_note"] = "the Euclidean flow's density lives in R^D, not on the manifold: no NLL"
    report["seconds"] = time.perf_counter() - started
    if run_dir is not None:
        from flowmatch.storage import write_json

        folder = Path(run_dir)
        if pictures if pictures is not None else not quick:
            picture = manifold_picture(flow, folder / "samples.png", data=data, n=FULL["n"], seed=seed)
            report["pictures"] = [picture.name]
        write_json(folder / "report.json", report)
    return report


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The report's main figures, flat (metrics.json): medians of W2 and MMD^2 with their floors, the NLL,
    entropy and KL where measured, and the distance off the manifold."""
    out: dict[str, Any] = {"sampler": report["sampler"], "on_manifold": report["on_manifold"]}
    for key in ("w2", "mmd"):
        if key in report:
            out[key], out[f"{key}_floor"] = report[key]["median"], report[key]["floor"]["median"]
    if "w2" in out and out["w2_floor"] > 0:
        out["w2_ratio"] = out["w2"] / out["w2_floor"]
    for key in ("nll", "entropy", "kl", "entropy_reference"):
        if key in report.get("likelihood", {}):
            out[key] = report["likelihood"][key]
    return out


def format_run_report(report: dict[str, Any]) -> str:
    """The printed report: what was sampled and how, the table of :func:`format_manifold_report`, and the
    distance off the manifold."""
    s = report["sampler"]
    lines = [f"{report['data']} (kind manifold, flow on {report['flow_manifold']['name']}): {s['solver']} at NFE {s['nfe']} (exact)"]
    lines.append(format_manifold_report(report))
    lik = report.get("likelihood", {})
    if "entropy_reference" in lik:
        lines.append(f"{'entropy (1e6 draws)':<22}{lik['entropy_reference']:>11.4f} +- {lik['entropy_reference_se']:.4f} nats")
    if "nll" in lik:
        lines.append(f"  (NLL: {lik['solver']} at NFE {lik['nfe']}, {lik['divergence']} divergence, {lik['seconds']:.1f} s)")
    if report.get("likelihood_note"):
        lines.append(f"  ({report['likelihood_note']})")
    on = report["on_manifold"]
    what = "distance off the manifold before projection" if on["projected"] else "distance off the manifold (rounding)"
    lines.append(f"{what}: mean {on['mean_distance']:.3g}, max {on['max_distance']:.3g}")
    return "\n".join(lines)


def manifold_picture(
    flow: RiemannianFlow, out, *, data: ManifoldRunData | None = None, n: int = 2000, seed: int = 0, samples: torch.Tensor | None = None
) -> Path:
    """samples.png: n generated points (rk4, NFE 100, seed + 1; or ``samples``) on the data's manifold
    beside as many held-out points (a file's run: at most its test split)."""
    from flowmatch.plots.manifolds import plot_manifold

    data = data if data is not None else run_data(flow)
    if samples is not None:
        n = len(samples)
    if data.test is not None:
        n = min(n, len(data.test))
    x = samples[:n] if samples is not None else flow.generate(n, solver=SAMPLER[0], nfe=SAMPLER[1], seed=seed + 1)
    points, off = flow.on_data_manifold(x)
    title = f"{data.name} on {flow.data_manifold.label}: samples beside held-out data"
    if not flow.manifold == flow.data_manifold:
        title = (
            f"{data.name}: Euclidean flow's samples projected onto {flow.data_manifold.label} (mean distance off {float(off.mean()):.3g})"
        )
    return plot_manifold(points, flow.data_manifold, data.held_out(n, seed), path=out, title=title)
