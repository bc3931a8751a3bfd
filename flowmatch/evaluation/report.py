"""Evaluate a trained flow: sample quality, exact likelihood, known-density KL, and pictures.

:func:`evaluate` builds one report (a plain dict, written as ``report.json``):

- ``quality``: every metric of :func:`flowmatch.evaluation.metrics.quality` for ``n`` generated samples
  against held-out data, each beside its floor (the same metric between two held-out draws of the
  same size). Built-in sets draw fresh held-out points (seeded, independent of training); data
  files use their held-out rows, split in two halves.
- ``likelihood``: mean NLL of held-out points in nats and bits per dimension with standard errors,
  by the instantaneous change of variables (:mod:`flowmatch.likelihood`), in data coordinates.
- ``known_density`` (built-in sets): the data entropy H(p) and KL(data || model) = E_p[log p - log q].
  Where p has a closed form (:func:`flowmatch.data.log_prob`) the KL is the mean of the paired
  differences log p(x_i) - log q(x_i) over held-out x_i, with their standard error; points where
  p = 0 (log p = -inf, possible only on a support's edge) contribute nothing to E_p and are counted
  in ``n_off_support``. Without a closed form it is NLL - H with the Monte-Carlo entropy of
  :data:`flowmatch.data.ENTROPY`.
- ``nfe_sweep`` (full report): exact W2 and MMD^2 of 1,000 samples to held-out data for each
  fixed-step solver at NFE 1 to 100, with their floors.
- ``memorisation`` (finite data: files, tables, images): the copy share, the distance-to-closest-
  record ratio, W_train and W_test of generated rows, each beside the test split's own
  (:mod:`flowmatch.evaluation.memorisation`; :func:`memorisation_report`); for images also ``nearest.png``,
  generated images over their nearest training images.
- ``pictures``: the files written (see :data:`PICTURES`).

``quick=True`` (what ``flowmatch train`` runs at the end) keeps it to a few seconds: 1,000 samples
(sliced W2 with 200 directions), NLL of 500 points with rk4 at NFE 40, no sweep and no pictures.

Example::

    flow = flowmatch.load("runs/tg")
    report = evaluate(flow, "runs/tg")                  # writes runs/tg/report.json and the pictures
    print(format_report(report))
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from flowmatch.data import toy as data_module
from flowmatch.data.dataset import shuffled_rows
from flowmatch.errors import FlowmatchError
from flowmatch.evaluation.memorisation import memorisation, memorisation_warning
from flowmatch.evaluation.metrics import MAX_EXACT_W2, median_shape, mmd, mmd_bandwidths, quality, shape_score, w2_exact
from flowmatch.likelihood import summarize
from flowmatch.plots import PICTURES
from flowmatch.solvers.tableaus import TABLEAUS
from flowmatch.storage import check_writable, write_json

REPORT = "report.json"


TWO_D_ONLY = ("density", "field")


SWEEP_SOLVERS = ("euler", "midpoint", "heun", "rk4")


SWEEP_NFE = (1, 2, 4, 8, 16, 32, 64, 100)


FIELD_TIMES = (0.0, 0.25, 0.5, 0.75, 1.0)


DENSITY_GRID = 100  # the density heat map is DENSITY_GRID x DENSITY_GRID log-densities (rk4, NFE 32)


_HELD_SEED = 7_000_003  # fresh held-out draws of built-in sets: seed + this (+0, +1, +2 for the three sets)


class _Defaults(TypedDict):
    n: int
    n_likelihood: int
    likelihood_solver: str
    likelihood_nfe: int


FULL: _Defaults = {"n": 5000, "n_likelihood": 2000, "likelihood_solver": "dopri5", "likelihood_nfe": 100}


QUICK: _Defaults = {"n": 1000, "n_likelihood": 500, "likelihood_solver": "rk4", "likelihood_nfe": 40}


# -- held-out data -------------------------------------------------------------------------------
def is_builtin(flow) -> bool:
    return flow.config.get("data") in data_module.BUILTIN_NAMES


def held_out(flow, n: int, n_likelihood: int, seed: int = 0, reference=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(held_a, held_b, scored) in data coordinates: two held-out draws of equal size for the metrics
    and their floors, and the points whose likelihood is measured.

    Built-in sets: three fresh draws (n, n, n_likelihood) with seeds seed + 7,000,003 + {0, 1, 2}.
    Data files: the held-out rows (shuffled when the file was split), halves of min(n, rows / 2) each;
    ``scored`` is the first ``n_likelihood`` held-out rows. ``reference`` (held-out points of your own,
    (N, D)) takes their place, shuffled first with ``seed`` (:func:`~flowmatch.data.dataset.shuffled_rows`).
    """
    name = flow.config.get("data")
    if reference is not None:
        test = shuffled_rows(points_of(reference, flow.dim, "reference"), seed)
    elif is_builtin(flow):
        base = seed + _HELD_SEED
        draw = data_module.sample_builtin
        return draw(name, n, base), draw(name, n, base + 1), draw(name, n_likelihood, base + 2)
    elif name is None:
        raise FlowmatchError("this flow names no data set to evaluate against: pass reference= (held-out points in data coordinates)")
    else:
        test = flow.dataset.test
    m = min(n, len(test) // 2)
    if not len(test):
        raise FlowmatchError("this run held no rows out (test_fraction 0): pass reference= (held-out points in data coordinates)")
    if m < 2:
        raise FlowmatchError(f"the held-out set has {len(test)} rows; need at least 4 to evaluate")
    return test[:m], test[m : 2 * m], test[:n_likelihood]


def points_of(x, dim: int, what: str) -> torch.Tensor:
    """User points as a float32 (N, dim) tensor (rows of another shape flattened), or one clear error."""
    try:
        x = torch.as_tensor(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise FlowmatchError(f"{what} must be a tensor or array of shape (N, {dim})") from None
    if x.ndim > 2 and x[0].numel() == dim:
        x = x.reshape(len(x), dim)
    if x.ndim != 2 or x.shape[1] != dim:
        raise FlowmatchError(f"{what} must have shape (N, {dim}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise FlowmatchError(f"{what} contains NaN or infinite values")
    return x


def _bounds(points: torch.Tensor, pad: float = 0.12) -> tuple[float, float, float, float]:
    """A square window (x0, x1, y0, y1) around the central 99.6% of the points in dims 0 and 1."""
    p = points[:, :2].double()
    lo, hi = torch.quantile(p, 0.002, dim=0), torch.quantile(p, 0.998, dim=0)
    centre, half = (lo + hi) / 2, float((hi - lo).max()) / 2 * (1 + pad)
    return (float(centre[0]) - half, float(centre[0]) + half, float(centre[1]) - half, float(centre[1]) + half)


# -- pieces of the report --------------------------------------------------------------------------
SHAPE_SETS = {"quick": 3, "full": 5}  # sample sets of the shape score, each against its own held-out draws


SHAPE_POINTS = {"quick": 1000, "full": 2000}  # points per sample set (and per held-out draw), at most


MIN_SHAPE_POINTS = 50  # finite data: fewer sets rather than sets of fewer points than this


def shape_report(flow, *, n: int, sets: int, seed: int = 0, solver=None, nfe=None, atol=1e-5, rtol=1e-5, reference=None, progress=False):
    """The shape score (:func:`~flowmatch.evaluation.metrics.shape_score`), median over ``sets`` sample
    sets of ``n`` points, each against its own two held-out draws.

    Built-in sets draw fresh held-out points (seeds seed + 7,000,003 + 10 + 2s and + 11 + 2s for set s)
    and score by components where the set has them (:func:`~flowmatch.data.toy.components`; the weights
    are equal); data files and ``reference`` points (shuffled with the seed) are cut into 2 x ``sets``
    blocks of the same size and scored by the energy distance, with fewer sets where the held-out rows
    are too few for blocks of :data:`MIN_SHAPE_POINTS`. Generated points come from one call seeded
    seed + 2. Returns :func:`~flowmatch.evaluation.metrics.median_shape`'s dict plus ``sampler``.
    """
    name = flow.config.get("data")
    held: list[tuple[torch.Tensor, torch.Tensor]] = []
    if reference is None and is_builtin(flow):
        base = seed + _HELD_SEED + 10
        held = [
            (data_module.sample_builtin(name, n, base + 2 * k), data_module.sample_builtin(name, n, base + 2 * k + 1)) for k in range(sets)
        ]
    else:
        if reference is not None:
            test = shuffled_rows(points_of(reference, flow.dim, "reference"), seed)
        elif name is None or flow._dataset is None and name == "python":
            raise FlowmatchError("this flow names no data set to evaluate against: pass reference= (held-out points in data coordinates)")
        else:
            test = flow.dataset.test
        m = min(n, len(test) // (2 * sets))
        if m < MIN_SHAPE_POINTS:
            sets, m = 1, min(n, len(test) // 2)
        if m < 2:
            raise FlowmatchError(f"the held-out set has {len(test)} rows; need at least 4 to evaluate")
        held = [(test[2 * k * m : (2 * k + 1) * m], test[(2 * k + 1) * m : (2 * k + 2) * m]) for k in range(sets)]
    m = len(held[0][0])
    gen = flow.generate(sets * m, solver=solver, nfe=nfe, atol=atol, rtol=rtol, seed=seed + 2, progress=progress)
    x = gen.x.reshape(sets * m, -1)
    scores = []
    classes = data_module.BUILTIN_CLASSES.get(name, 0) if reference is None and is_builtin(flow) else 0
    for k, (a, b) in enumerate(held):
        xk = x[k * m : (k + 1) * m]
        if classes:
            labels = [data_module.components(name, v) for v in (xk, a, b)]
            scores.append(shape_score(xk, a, b, labels=labels, weights=np.full(classes, 1.0 / classes), seed=seed + k))
        else:
            scores.append(shape_score(xk, a, b, seed=seed + k))
    return {**median_shape(scores), "sampler": {"solver": solver, "nfe": nfe, "nfe_used": gen.nfe}}


def format_shape(shape: dict[str, Any]) -> str:
    """One phrase for a shape score: the within-mode figure and the shares, or the energy distance."""
    if shape["kind"] == "modes":
        missing = f", modes missing {shape['missing']}" if shape.get("missing") else ""
        return (
            f"shape {shape['ratio']:.2f}x floor within modes (W2 {shape['within']['value']:.3f} vs {shape['within']['floor']:.3f}), "
            f"mode shares TV {shape['shares']['value']:.3f} (floor {shape['shares']['floor']:.3f}){missing}, median of {shape['sets']} sets"
        )
    return (
        f"shape {shape['ratio']:.2f}x floor (energy distance {shape['energy']['value']:.4g} vs {shape['energy']['floor']:.4g}), "
        f"median of {shape['sets']} sets"
    )


def likelihood_report(flow, points, *, solver="dopri5", nfe=100, atol=1e-5, rtol=1e-5, divergence="auto", probes=1, seed=0, progress=False):
    """({NLL summary and how it was computed}, per-point log q) for held-out ``points`` (data coordinates)."""
    from flowmatch.likelihood import flow_log_prob

    started = time.perf_counter()
    res = flow_log_prob(
        flow, points, solver=solver, nfe=nfe, atol=atol, rtol=rtol, divergence=divergence, probes=probes, seed=seed, progress=progress
    )
    summary = summarize(res.log_prob, flow.dim).to_dict()
    summary.update(
        solver=solver,
        nfe=nfe if solver in TABLEAUS else None,
        atol=atol if solver not in TABLEAUS else None,
        rtol=rtol if solver not in TABLEAUS else None,
        nfe_used=res.nfe,
        divergence=res.divergence,
        probes=res.probes or None,
        seconds=time.perf_counter() - started,
    )
    return summary, res.log_prob


def known_density_report(name: str, points: torch.Tensor, log_q: torch.Tensor, nll: dict) -> dict[str, Any]:
    """Entropy and KL(data || model) of a built-in set (module docstring); ``nll`` is the likelihood summary."""
    entropy, source = data_module.entropy(name)
    out: dict[str, Any] = {"entropy": entropy, "entropy_source": source}
    if data_module.has_log_prob(name):
        log_p = data_module.log_prob(name, points)
        on_support = torch.isfinite(log_p)
        diff = (log_p - log_q.double())[on_support]
        out["n_off_support"] = int((~on_support).sum())
        out["kl_method"] = "mean of log p - log q over held-out points (closed-form p)"
        if not torch.isfinite(diff).all():
            out.update(kl=None, kl_se=None, kl_note="the model gives zero density to some data points: KL is infinite")
        else:
            out.update(kl=float(diff.mean()), kl_se=float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else None)
    else:
        out["kl_method"] = f"NLL - H with the {source} entropy (no closed-form p)"
        out.update(kl=nll["nll"] - entropy, kl_se=nll["nll_se"])
    return out


def nfe_sweep(
    flow, held_a, held_b, *, n: int = 1000, seed: int = 0, solvers=SWEEP_SOLVERS, nfes=SWEEP_NFE, progress=False
) -> dict[str, Any]:
    """Exact W2 and MMD^2 of ``n`` samples to ``held_a`` for each fixed-step solver and NFE, with floors.

    Every solve starts from the same noise, so the curves differ only by the solver's error. A MeanFlow
    run's own jumps (solver ``meanflow``, any NFE) are swept beside the ODE solvers on its velocity. Returns
    ``{"n", "w2": {"floor", "solvers": {solver: [[nfe, value], ...]}}, "mmd": {...}}``.
    """
    n = min(n, len(held_a), len(held_b), MAX_EXACT_W2)
    ref, other = held_a[:n], held_b[:n]
    bandwidths = mmd_bandwidths(ref)
    if flow.config.get("objective") == "meanflow" and "meanflow" not in solvers:
        solvers = (*solvers, "meanflow")
    runs = [(s, k) for s in solvers for k in nfes if s == "meanflow" or k % TABLEAUS[s].stages == 0]
    if progress:
        from tqdm.auto import tqdm

        runs = tqdm(runs, desc="NFE sweep", unit="solve", leave=False)
    out: dict[str, Any] = {"n": n}
    for metric in ("w2", "mmd"):
        out[metric] = {"solvers": {s: [] for s in solvers}}
    for solver, k in runs:
        x = flow.sample(n, solver=solver, nfe=k, seed=seed + 1)
        out["w2"]["solvers"][solver].append([k, w2_exact(x, ref)])
        out["mmd"]["solvers"][solver].append([k, mmd(x, ref, bandwidths=bandwidths)])
    out["w2"]["floor"] = w2_exact(other, ref)
    out["mmd"]["floor"] = mmd(other, ref, bandwidths=bandwidths)
    return out


# -- pictures --------------------------------------------------------------------------------------
def _trajectory(flow, n: int, seed: int):
    """Trajectories of n particles with rk4 (40 steps, 41 frames), data coordinates."""
    gen = flow.generate(n, solver="rk4", nfe=160, seed=seed, return_trajectory=True)
    return gen.trajectory, gen.times


def picture(flow, what: str, out, *, n: int = 2000, held=None, samples=None, sweep=None, seed: int = 0, progress: bool = False) -> Path:
    """Draw one picture ``what`` (a :data:`PICTURES` key) of ``flow`` to ``out``.

    ``held`` (held_a, held_b) and ``samples`` / ``sweep`` are reused when given (as :func:`evaluate`
    does); otherwise ``n`` held-out points and samples are drawn here (the NFE sweep uses
    min(n, 1000) samples per solve).
    """
    from flowmatch.plots import figures as plots

    if what not in PICTURES:
        raise FlowmatchError(f"unknown picture {what!r}; choose one of {', '.join(PICTURES)}")
    if what in TWO_D_ONLY and flow.dim != 2:
        raise FlowmatchError(f"the {what} picture needs 2-D data; this run has D = {flow.dim} (try what=samples for pairwise plots)")
    if what == "density" and flow.config.get("source", "gaussian") != "gaussian":
        raise FlowmatchError("the density picture needs the N(0, I) source; this flow starts from a data set")
    out = Path(out)
    if not out.parent.is_dir():
        raise FlowmatchError(f"output folder '{out.parent}' does not exist")
    if held is None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 4:
            raise FlowmatchError(f"n must be an integer >= 4, got {n!r}")
        a, b, _ = held_out(flow, n, 2, seed)
        held = (a, b)
    data, name = held[0][:2000], flow.config.get("data", "data")

    if what == "samples":
        x = samples[:2000] if samples is not None else flow.sample(len(data), seed=seed + 1)
        if flow.dim > 2:
            plots.plot_pairs(x, data, out, title=f"{name}: first dimensions, samples over held-out data")
        else:
            w2 = w2_exact(x, data)
            plots.plot_samples(x, data, out, title=f"{Path(name).name}: samples over held-out data (W2 {w2:.3f} on {len(x)})")
    elif what == "density":
        x0, x1, y0, y1 = _bounds(held[0])
        res = DENSITY_GRID
        xs, ys = torch.linspace(x0, x1, res), torch.linspace(y0, y1, res)
        gx, gy = torch.meshgrid(xs, ys, indexing="xy")
        grid = torch.stack([gx.ravel(), gy.ravel()], dim=1)
        log_q = flow.log_prob(grid, solver="rk4", nfe=32, progress=progress).reshape(res, res)
        true = None
        if name in data_module.BUILTIN_NAMES and data_module.has_log_prob(name):
            true = data_module.log_prob(name, grid.double()).reshape(res, res)
        plots.plot_density(xs, ys, log_q, out, true_log_p=true, data=data, title=f"{name}: log-density (rk4, NFE 32, exact divergence)")
    elif what in ("trajectories", "animation"):
        traj, times = _trajectory(flow, 600, seed + 2)
        if what == "trajectories":
            plots.plot_trajectories(
                traj, times, out, data=data, max_paths=300, title=f"{name}: 300 trajectories from noise (t = 0) to data (t = 1)"
            )
        else:
            plots.animate_flow(traj, times, out, data=data)
    elif what == "field":
        x0, x1, y0, y1 = _bounds(held[0])
        res = 20
        xs, ys = torch.linspace(x0, x1, res), torch.linspace(y0, y1, res)
        gx, gy = torch.meshgrid(xs, ys, indexing="xy")
        grid = torch.stack([gx.ravel(), gy.ravel()], dim=1)
        z = flow.standardizer.forward(grid).to(flow.device, next(flow.model.parameters()).dtype)
        std = flow.standardizer.std.to(torch.float32)
        velocities = []
        with torch.no_grad():
            for t in FIELD_TIMES:
                v = flow.velocity()(z, torch.tensor(t, dtype=z.dtype, device=z.device)).float().cpu() * std  # dx/dt = std * v(z, t)
                velocities.append(v.reshape(res, res, 2))
        traj, times = _trajectory(flow, 600, seed + 2)
        idx = [int(torch.argmin((times - t).abs())) for t in FIELD_TIMES]
        plots.plot_field(
            xs,
            ys,
            torch.stack(velocities),
            FIELD_TIMES,
            out,
            particles=traj[idx],
            title=f"{name}: velocity field in data coordinates (grey: samples x_t)",
        )
    elif what == "nfe":
        if sweep is None:
            sweep = nfe_sweep(flow, held[0], held[1], n=min(n, 1000), seed=seed, progress=progress)
        panels = {}
        for metric, label in (("w2", "exact W2"), ("mmd", "MMD^2 (RBF)")):
            lines = {s: [tuple(p) for p in v] for s, v in sweep[metric]["solvers"].items() if v}
            panels[label] = (lines, sweep[metric]["floor"])
        plots.plot_nfe(panels, out, title=f"{name}: quality of {sweep['n']} samples against NFE (same noise for every solve)")
    return out


# -- memorisation ----------------------------------------------------------------------------------
#: Generated rows scored for memorisation: as many as the training rows, within these bounds.
MEMORISATION_ROWS = {"full": 5000, "quick": 2000}


def memorisation_report(
    flow, *, train=None, test=None, quick: bool = False, solver=None, nfe=None, seed: int = 0, folder: Path | None = None
) -> dict[str, Any] | None:
    """:func:`flowmatch.evaluation.memorisation.memorisation` of the flow's samples, with its one-line ``warning``
    ('' when there is none).

    Against the flow's data set's training and test rows by default (None for built-in sets, which
    draw fresh points and have no training rows), or against ``train`` and ``test`` points of your
    own (data coordinates). As many rows are generated as there are training rows (at least the
    test split's size, at most :data:`MEMORISATION_ROWS`), from the training labels' classes for a
    conditional model of its data set. For images with a ``folder``, ``nearest.png`` shows 16
    generated images above their nearest training images (the same L1 distance).
    """
    cap = MEMORISATION_ROWS["quick" if quick else "full"]
    pool, image_shape = None, None  # the labels to draw classes from, the image shape
    if train is None:
        ds = flow.dataset
        if ds.n_train is None:
            return None
        train, test, n_train = ds.training_rows(limit=cap * 4, seed=seed), ds.test, ds.n_train  # a subset of very large sets
        image_shape = ds.image_shape
        if flow.num_classes and ds.train_labels is not None:
            pool = ds.train_labels
    else:
        n_train = len(train)
    n = min(max(n_train, len(test)), cap)
    labels = None if pool is None else pool[torch.randint(len(pool), (n,), generator=torch.Generator().manual_seed(seed))]
    solver, nfe = flow.resolve_sampler(solver, nfe)
    generated = flow.sample(n, solver=solver, nfe=nfe, seed=seed + 2, label=labels)
    report = memorisation(generated, train, test, seed=seed)
    report["sampler"] = {"solver": solver, "nfe": nfe}
    report["warning"] = memorisation_warning(report)
    if folder is not None and image_shape is not None:
        report["pictures"] = [nearest_picture(generated[:16], train, image_shape, folder / "nearest.png", ds.image_value_range)]
    return report


def nearest_picture(generated: torch.Tensor, train: torch.Tensor, image_shape, out: Path, value_range=(0.0, 1.0)) -> str:
    """Rows of generated images, each above its nearest training image (the DCR's distance); ``value_range``: the
    values of black and white (pixels: 0 and 1)."""
    from flowmatch.evaluation.memorisation import MinMaxScale, closest_records
    from flowmatch.plots import images as image_plots

    scale = MinMaxScale(train.double())
    nearest = closest_records(scale(generated.double()), scale(train.double()))[1]
    half = len(generated) // 2
    rows = [generated[:half], train[nearest[:half]], generated[half:], train[nearest[half:]]]
    image_plots.save_class_grid(
        rows,
        image_shape,
        out,
        row_labels=["generated", "nearest train", "generated", "nearest train"],
        title="generated images and their nearest training images (L1, min-max)",
        value_range=value_range,
    )
    return out.name


# -- the report ------------------------------------------------------------------------------------
def evaluate(
    flow,
    run_dir=None,
    *,
    quick: bool = False,
    n: int | None = None,
    n_likelihood: int | None = None,
    solver: str | None = None,
    nfe: int | None = None,
    likelihood_solver: str | None = None,
    likelihood_nfe: int | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    divergence: str = "auto",
    probes: int = 1,
    seed: int = 0,
    pictures: bool | None = None,
    sweep: bool | None = None,
    progress: bool = False,
    reference=None,
    train=None,
) -> dict[str, Any]:
    """Evaluate ``flow``; with ``run_dir`` write ``report.json`` (and the pictures) there atomically.

    Any flow, a hand-built one too, can be scored against data of your own: ``reference`` (held-out
    points, (N, D) in data coordinates) replaces the run's test split, and ``train`` (the points it
    trained on) adds the memorisation figures against them.

    Defaults (full / ``quick``): ``n`` samples 5,000 / 1,000; ``n_likelihood`` points 2,000 / 500,
    scored with ``likelihood_solver`` dopri5 (``atol``, ``rtol``) / rk4 at ``likelihood_nfe`` 40;
    ``sweep`` and ``pictures`` on / off. Samples for the metrics come from ``solver`` at ``nfe``
    (default: the flow's own sampler, :meth:`flowmatch.flows.continuous.Flow.resolve_sampler`; the image metrics
    default to midpoint at NFE 40, unless a solver is given or the flow is a student or a MeanFlow
    model, which sample with their own). Returns the report (see the module docstring).

    This is the report of points and images (a :class:`~flowmatch.flows.continuous.Flow`); :func:`flowmatch.evaluate`
    gives every flow its modality's.
    """
    _check_flow(flow, run_dir)
    started = time.perf_counter()
    for name, given, count in (("solver", solver, nfe), ("likelihood_solver", likelihood_solver, likelihood_nfe)):
        if given is not None and given not in TABLEAUS and given != "meanflow" and count is not None:
            flag = "nfe" if name == "solver" else "likelihood_nfe"
            raise FlowmatchError(f"{flag}={count} does not apply to {name}={given}, which chooses its own steps (atol, rtol)")
    if likelihood_nfe is not None and likelihood_solver is None and not quick:
        raise FlowmatchError(
            f"likelihood_nfe={likelihood_nfe} does not apply to the full report's likelihood solver, {FULL['likelihood_solver']}, "
            "which chooses its own steps: give a fixed-step one with it, as likelihood_solver=rk4"
        )
    solver, nfe = flow.resolve_sampler(solver, nfe)
    defaults = QUICK if quick else FULL
    n = defaults["n"] if n is None else n
    n_likelihood = defaults["n_likelihood"] if n_likelihood is None else n_likelihood
    likelihood_solver = likelihood_solver or defaults["likelihood_solver"]
    likelihood_nfe = defaults["likelihood_nfe"] if likelihood_nfe is None else likelihood_nfe
    pictures = (not quick) if pictures is None else pictures
    sweep = (not quick) if sweep is None else sweep
    folder = Path(run_dir) if run_dir is not None else None
    check_options(
        flow, n=n, n_likelihood=n_likelihood, solver=solver, nfe=nfe, likelihood_solver=likelihood_solver,
        likelihood_nfe=likelihood_nfe, atol=atol, rtol=rtol, divergence=divergence, probes=probes, seed=seed,
        flags={"quick": quick, "pictures": pictures, "sweep": sweep, "progress": progress}, folder=folder,
    )  # fmt: skip

    name = flow.config.get("data", "")
    if train is not None and reference is None:
        raise FlowmatchError("train= goes with reference=: the memorisation figures need both")
    reference = None if reference is None else points_of(reference, flow.dim, "reference")
    train = None if train is None else points_of(train, flow.dim, "train")
    held_a, held_b, scored = held_out(flow, n, n_likelihood, seed, reference)
    report: dict[str, Any] = {
        "data": name,
        "dim": flow.dim,
        "quick": quick,
        "seed": seed,
        "sampler": {"solver": solver, "nfe": nfe if solver in TABLEAUS else None},
    }

    t = time.perf_counter()
    gen = flow.generate(len(held_a), solver=solver, nfe=nfe, atol=atol, rtol=rtol, seed=seed + 1, progress=progress)
    report["sampler"]["nfe_used"] = gen.nfe
    report["quality"] = {"n": len(held_a), **quality(gen.x, held_a, held_b, seed=seed, n_projections=200 if quick else 500)}
    level = "quick" if quick else "full"
    report["quality"]["shape"] = shape_report(
        flow, n=min(n, SHAPE_POINTS[level]), sets=SHAPE_SETS[level], seed=seed, solver=solver, nfe=nfe, atol=atol, rtol=rtol,
        reference=reference, progress=progress,
    )  # fmt: skip
    report["quality"]["seconds"] = time.perf_counter() - t

    if flow.config.get("source", "gaussian") == "gaussian":
        lik, log_q = likelihood_report(
            flow, scored, solver=likelihood_solver, nfe=likelihood_nfe, atol=atol, rtol=rtol,
            divergence=divergence, probes=probes, seed=seed, progress=progress,
        )  # fmt: skip
        report["likelihood"] = lik
        if name in data_module.BUILTIN_NAMES:
            report["known_density"] = known_density_report(name, scored, log_q, lik)
    else:
        report["likelihood"] = {"skipped": "the flow starts from a data set, whose density is unknown"}

    t = time.perf_counter()
    memo = None
    if reference is None or train is not None:  # your own reference data: only with its training points
        memo = memorisation_report(
            flow, train=train, test=reference, quick=quick, solver=solver, nfe=nfe, seed=seed, folder=folder if pictures else None
        )
    if memo is not None:
        memo["seconds"] = time.perf_counter() - t
        report["memorisation"] = memo

    if sweep:
        t = time.perf_counter()
        report["nfe_sweep"] = nfe_sweep(flow, held_a, held_b, seed=seed, progress=progress)
        report["nfe_sweep"]["seconds"] = time.perf_counter() - t

    if reference is None and not quick and getattr(flow.dataset, "image_shape", None) is not None and flow.dataset.num_classes:
        t = time.perf_counter()
        own_sampler = solver is not None or flow.config.get("objective") in ("distill", "meanflow")
        image_solver, image_nfe = flow.resolve_sampler(solver, nfe) if own_sampler else ("midpoint", 40)
        report["images"] = image_report(flow, folder, solver=image_solver, nfe=image_nfe, seed=seed, pictures=pictures)
        report["images"]["seconds"] = time.perf_counter() - t

    report["pictures"] = []
    if pictures and folder is not None:
        t = time.perf_counter()
        for what, file in PICTURES.items():
            if what in TWO_D_ONLY and flow.dim != 2:
                continue
            if what == "density" and "skipped" in report["likelihood"]:
                continue
            if what == "nfe" and not sweep:
                continue
            picture(
                flow, what, folder / file, held=(held_a, held_b), samples=gen.x, sweep=report.get("nfe_sweep"), seed=seed, progress=progress
            )
            report["pictures"].append(file)
        report["pictures_seconds"] = time.perf_counter() - t
    report["pictures"] += report.get("memorisation", {}).get("pictures", [])
    report["seconds"] = time.perf_counter() - started
    if folder is not None:
        write_json(folder / REPORT, _json_safe(report))
    return report


def _check_flow(flow, run_dir) -> None:
    """evaluate()'s first two arguments: a loaded flow (not its folder) and a run folder path or None."""
    from flowmatch.flows.continuous import Flow

    if isinstance(flow, (str, os.PathLike)):
        raise FlowmatchError(f"evaluate takes a flow, not its run folder: evaluate(flowmatch.load({str(flow)!r}), {str(flow)!r})")
    if not isinstance(flow, Flow):
        raise FlowmatchError(f"evaluate takes a Flow (flowmatch.load(run) gives one), got {type(flow).__name__}")
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise FlowmatchError(f"run_dir must be a path to a run folder or None, got {type(run_dir).__name__} {run_dir!r}")


def check_options(
    flow, *, n, n_likelihood, solver, nfe, likelihood_solver, likelihood_nfe, atol, rtol, divergence, probes, seed, flags, folder
) -> None:
    """Every option of :func:`evaluate`, checked before any work (an evaluation takes minutes; a bad option must
    not wait for its turn): the counts, both samplers (an NFE a fixed-step solver can take, a time grid that
    fits in memory, dopri5's tolerances), the divergence, the probes, the seed, the switches, and a run
    folder that exists and can be written."""
    from flowmatch.likelihood import resolve_divergence
    from flowmatch.solvers.grids import time_grid
    from flowmatch.solvers.integration import check_tolerance
    from flowmatch.solvers.tableaus import SOLVERS, steps_for

    for label, value in (("n", n), ("n_likelihood", n_likelihood)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise FlowmatchError(f"{label} must be an integer >= 2, got {value!r}")
    for label, value in flags.items():
        if not isinstance(value, bool):
            raise FlowmatchError(f"{label} must be True or False, got {value!r}")
    for what, (name, count) in (("solver", (solver, nfe)), ("likelihood_solver", (likelihood_solver, likelihood_nfe))):
        if name in TABLEAUS:
            time_grid("uniform", steps_for(name, count))  # an NFE the solver can take, a grid that fits in memory
        elif name not in SOLVERS and not (what == "solver" and name == "meanflow"):
            raise FlowmatchError(f"unknown {what} {name!r}; choose from {', '.join(SOLVERS)}")
    check_tolerance("atol", atol)
    check_tolerance("rtol", rtol)
    resolve_divergence(divergence, flow.dim)
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise FlowmatchError(f"probes must be a positive integer, got {probes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise FlowmatchError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}")
    if folder is not None:
        if not folder.is_dir():
            raise FlowmatchError(f"run folder '{folder}' does not exist")
        check_writable(folder / REPORT)


def summary_line(report: dict[str, Any]) -> str:
    """One line for the end of ``flowmatch train``: the shape score, W2 and its floor, NLL, and KL where known."""
    q = report["quality"]
    parts = []
    if "shape" in q:
        parts.append(format_shape(q["shape"]))
    if "w2" in q:
        parts.append(f"W2 {q['w2']['value']:.4f} (floor {q['w2']['floor']:.4f})")
    lik = report.get("likelihood", {})
    if "nll" in lik:
        parts.append(f"NLL {lik['nll']:.4f} +- {lik['nll_se']:.4f} nats")
    kl = report.get("known_density", {}).get("kl")
    if kl is not None:
        parts.append(f"KL(data || model) {kl:.4f}")
    memo = report.get("memorisation")
    if memo:
        parts.append(
            f"copy share {memo['copy_share']['value']:.2f} (test split {memo['copy_share']['test']:.2f}), "
            f"DCR ratio {memo['dcr_ratio']['value']:.2f}"
        )
    return "eval" + (" (quick)" if report.get("quick") else "") + ": " + ", ".join(parts)


def _json_safe(value):
    """Non-finite floats become None (JSON has no inf or NaN)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table (what ``flowmatch eval`` prints)."""
    q = report["quality"]
    sampler = report["sampler"]
    head = (
        f"{report['data']} (D = {report['dim']}): {q['n']} samples ({sampler['solver']}, NFE {sampler['nfe_used']}) against held-out data"
    )
    lines = [head]
    shape = q.get("shape")
    if shape is not None:  # the headline: a figure a wrong shape cannot pass (metrics.shape_score)
        lines.append(f"{format_shape(shape)} of {shape['n']} points")
        if shape["kind"] == "modes":
            lines.append(f"{'shape within modes':<22}{shape['within']['value']:>12.4g}{shape['within']['floor']:>12.4g}")
            lines.append(f"{'mode shares TV':<22}{shape['shares']['value']:>12.4g}{shape['shares']['floor']:>12.4g}")
    lines.append(f"{'metric':<22}{'model':>12}{'floor':>12}")
    labels = {
        "w2": "W2 (exact)",
        "sliced_w2": "sliced W2",
        "mmd": "MMD^2 (RBF)",
        "energy": "energy distance",
        "precision": "precision (k-NN)",
        "recall": "recall (k-NN)",
    }
    for key, label in labels.items():
        if key in q:
            lines.append(f"{label:<22}{q[key]['value']:>12.4g}{q[key]['floor']:>12.4g}")
    lik = report.get("likelihood", {})
    if "nll" in lik:
        how = (
            f"{lik['solver']}"
            + (f" NFE {lik['nfe']}" if lik["nfe"] else f" tol {lik['atol']:g}, NFE {lik['nfe_used']}")
            + f", {lik['divergence']} divergence, {lik['n']} points"
        )
        lines.append(f"{'NLL (nats)':<22}{lik['nll']:>12.4f} +- {lik['nll_se']:.4f}   ({how})")
        lines.append(f"{'bits/dim':<22}{lik['bpd']:>12.4f} +- {lik['bpd_se']:.4f}")
    elif "skipped" in lik:
        lines.append(f"likelihood skipped: {lik['skipped']}")
    known = report.get("known_density")
    if known:
        lines.append(f"{'data entropy (nats)':<22}{known['entropy']:>12.4f}   ({known['entropy_source']})")
        if known.get("kl") is not None:
            lines.append(f"{'KL(data || model)':<22}{known['kl']:>12.4f} +- {known['kl_se']:.4f}   ({known['kl_method']})")
        else:
            lines.append(f"KL(data || model): {known.get('kl_note', 'not available')}")
    memo = report.get("memorisation")
    if memo:
        lines.append(
            f"memorisation ({memo['n']} generated rows, {memo['n_train']} training rows, {memo['n_test']} test rows; "
            "L1 after min-max scaling)"
        )
        lines.append(f"{'':<22}{'model':>12}{'test split':>12}")
        for key, label in (("copy_share", "copy share"), ("dcr_ratio", "DCR ratio"), ("w_train", "W_train"), ("w_test", "W_test")):
            lines.append(f"{label:<22}{memo[key]['value']:>12.4g}{memo[key]['test']:>12.4g}")
        lines.append(
            "  (copy share: generated rows nearer a training row than 95% of test rows are; a copy of the training "
            "set scores 1; test split's W_test: a draw of training rows)"
        )
    sweep = report.get("nfe_sweep")
    if sweep:
        lines.append(f"W2 against NFE ({sweep['n']} samples; floor {sweep['w2']['floor']:.3f}):")
        for solver, points in sweep["w2"]["solvers"].items():
            if points:
                lines.append(f"  {solver:<9}" + "  ".join(f"{k}: {v:.3f}" for k, v in points))
    images = report.get("images")
    if images:
        lines.append(
            f"images: classifier accuracy on the test split {images['classifier_test_accuracy']:.3f}, "
            f"Frechet floor (test vs train) {images['frechet_floor']:.2f}"
        )
        for w, entry in images["by_guidance"].items():
            acc = f", class accuracy {entry['class_accuracy']:.3f}" if "class_accuracy" in entry else ""
            lines.append(f"  guidance {w}: Frechet {entry['frechet']:.2f} ({entry['frechet_ratio']:.2f} x floor){acc}")
        if images.get("pictures"):
            lines.append("image pictures: " + ", ".join(images["pictures"]))
    if report.get("pictures"):
        lines.append("pictures: " + ", ".join(report["pictures"]))
    lines.append(f"({report['seconds']:.1f} s)")
    return "\n".join(lines)


# -- images ----------------------------------------------------------------------------------------
IMAGE_GUIDANCE = (1.0, 1.5, 2.0)


def image_report(
    flow, folder: Path | None, *, solver: str = "midpoint", nfe: int = 40, seed: int = 0, guidance=IMAGE_GUIDANCE, pictures: bool = True
) -> dict[str, Any]:
    """Image metrics and pictures for a flow trained on images.

    A small classifier is trained deterministically on the training split (cached in the run folder,
    ``classifier.safetensors``); its penultimate features define a Frechet distance
    FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between generated images and the training
    split, with the floor FD(held-out test split, training split). For a class-conditional flow,
    samples are drawn for the test split's labels at each guidance weight w, and the classifier's
    accuracy on them is reported beside its accuracy on the real test split. Pictures: a grid of
    samples per class (rows) for each w, samples by guidance scale, and trajectories as image strips.
    """
    from flowmatch.evaluation import images as image_metrics

    ds = flow.dataset
    shape = tuple(ds.image_shape)
    cache = folder if folder is not None else Path(tempfile.mkdtemp(prefix="flowmatch-classifier-"))
    classifier = image_metrics.cached_classifier(cache, ds.train, ds.train_labels, shape, ds.num_classes)
    train_features = image_metrics.classifier_features(classifier, ds.train)  # the classifier's scale: the model's
    test = ds.to_model(ds.test).to(torch.float32)
    floor = image_metrics.frechet_distance(image_metrics.classifier_features(classifier, test), train_features)
    report: dict[str, Any] = {
        "image_shape": list(shape),
        "sampler": {"solver": solver, "nfe": nfe},
        "classifier_test_accuracy": image_metrics.classifier_accuracy(classifier, test, ds.test_labels),
        "frechet_floor": floor,
        "by_guidance": {},
    }
    conditional = flow.num_classes > 0
    n = len(ds.test)
    weights = guidance if conditional else (1.0,)
    for w in weights:
        labels = ds.test_labels if conditional else None
        x = ds.to_model(flow.sample(n, solver=solver, nfe=nfe, seed=seed, label=labels, guidance=w)).to(torch.float32)
        entry = {"frechet": image_metrics.frechet_distance(image_metrics.classifier_features(classifier, x), train_features)}
        entry["frechet_ratio"] = entry["frechet"] / floor
        if conditional:
            entry["class_accuracy"] = image_metrics.classifier_accuracy(classifier, x, labels)
        report["by_guidance"][str(w)] = entry
    if pictures and folder is not None:
        report["pictures"] = image_pictures(flow, folder, solver=solver, nfe=nfe, seed=seed, guidance=weights)
    return report


def image_pictures(flow, folder: Path, *, solver="midpoint", nfe=40, seed=0, guidance=IMAGE_GUIDANCE, per_class=8) -> list[str]:
    """samples_w{w}.png (a row per class), guidance.png (a row per w), trajectory.png (image strips)."""
    from flowmatch.plots import images as image_plots

    shape = tuple(flow.dataset.image_shape)
    value_range = flow.dataset.image_value_range  # samples come back in data coordinates (pixels)
    written = []
    k = flow.num_classes
    if k:
        names = flow.dataset.class_names
        labels = torch.arange(k).repeat_interleave(per_class)
        for w in guidance:
            x = flow.sample(len(labels), solver=solver, nfe=nfe, seed=seed, label=labels, guidance=w)
            name = f"samples_w{w:g}.png"
            image_plots.save_class_grid(
                list(x.reshape(k, per_class, -1)),
                shape,
                folder / name,
                row_labels=names,
                title=f"guidance w = {w:g}",
                value_range=value_range,
            )
            written.append(name)
        label = torch.arange(min(k, per_class))
        rows = [flow.sample(len(label), solver=solver, nfe=nfe, seed=seed, label=label, guidance=w) for w in guidance]
        image_plots.save_class_grid(
            rows,
            shape,
            folder / "guidance.png",
            row_labels=[f"w={w:g}" for w in guidance],
            title="classes by guidance scale",
            value_range=value_range,
        )
        written.append("guidance.png")
    else:
        x = flow.sample(8 * per_class, solver=solver, nfe=nfe, seed=seed)
        image_plots.save_image_grid(x, shape, folder / "samples_grid.png", nrow=per_class, value_range=value_range)
        written.append("samples_grid.png")
    trajectory = flow.generate(8, solver="euler", nfe=20, seed=seed, label=torch.arange(8) % k if k else None, return_trajectory=True)
    image_plots.save_trajectory_strip(
        trajectory.trajectory, shape, folder / "trajectory_strip.png", times=trajectory.times, value_range=value_range
    )
    written.append("trajectory_strip.png")
    return written
