"""Riemannian flow matching: flowmatch against Meta's ``flow_matching`` and the Euclidean flow, same network and budget.

Sets (:data:`flowmatch.manifolds.MANIFOLD_SETS`, closed-form densities): ``S2-vmf``, ``S2-checkerboard``,
``T2-wrapped`` and ``SO3-multimodal`` (Meta's library has no SO(3): flowmatch and the Euclidean flow only).

Systems. Every one trains the SAME network, flowmatch's tangent MLP (``TangentMLP``: a FeatureMLP of the
kind's default width, depth and activation reading the manifold's features, the coordinates on S^2,
(cos, sin) of the angles on T^2, the rotation matrix on SO(3), its output made tangent), from the same
initial weights (the seed), for the same steps at the same batch, learning rate and schedule (kind
manifold's defaults: Adam, warm-up then cosine decay, gradient clipping, EMA of the weights used for
sampling), with fresh data draws every step:

- ``flowmatch``: ``flowmatch.fit(data=SET)``, kind manifold with its defaults: the geodesic path from the
  uniform source, stratified times, the posterior target (the velocity averaged over the batch's data
  points, :meth:`GeodesicPath.posterior_velocity`); sampled with its Runge-Kutta solver in normal
  coordinates through the exponential map (rk4, NFE 100).
- ``flowmatch conditional``: the same with ``target="conditional"`` (each pair's own velocity), to show
  what the posterior target does.
- ``Meta flow_matching``: ``GeodesicProbPath(CondOTScheduler(), Sphere() | FlatTorus())`` for the pairs
  (x_t and dx_t; Meta's torus is [0, 2 pi), so its points are taken modulo 2 pi), the loss |v - dx_t|^2
  on uniform times, in this module's loop (the library has none) with the same optimiser, schedule, clip
  and EMA; sampled with its ``RiemannianODESolver`` (rk4 with projections, 25 steps: NFE 100). Its
  likelihood is flowmatch's :func:`manifold_log_prob` on its trained velocity (Meta's library computes
  likelihoods in R^d only).
- ``Euclidean (flowmatch)``: ``flowmatch.fit(data=SET, manifold="euclidean")``: flowmatch's ordinary flow
  matching on the ambient coordinates (R^3 for S^2, the two angles for T^2, the quaternion in R^4 for
  SO(3)), straight paths from N(0, I), the posterior target, the same network on R^D (reading the
  coordinates themselves); its samples are projected onto the manifold (normalised; angles wrapped) to
  be scored, and ``off`` is their mean distance from it before (| |x| - 1 |; how far angles lie outside
  [-pi, pi]). Its density lives in R^D: no NLL on the manifold.

Figures per set and system (one seed):

- ``W2 / floor``: exact geodesic W2 (:func:`geodesic_w2`) of ``SETS`` generated sets of ``N`` points,
  each against its own held-out set of fresh draws (the same held-out sets for every system), over the
  floor: W2 between two held-out sets (set k against set k + 1); median and range over the sets (the
  ratio of medians). A single W2 swings with how many points fall in each mode, hence many sets.
- ``MMD^2``: the unbiased MMD^2 with the positive-definite kernel of :func:`geodesic_mmd` (one bandwidth
  per set), median over the sets, beside the floor's.
- ``NLL``: -mean log q of ``N_NLL`` held-out points (nats, w.r.t. the Riemannian volume), rk4 at NFE 64
  with the exact divergence, beside the entropy H of the same points (-mean log p) and
  KL(p || q) = mean(log p - log q) with its standard error. The target: NLL within 0.05 nats of H.
- ``on manifold``: the largest | |x| - 1 | of the samples (spheres, quaternions; 0 on the torus, whose
  points are angles) before any projection for the Riemannian systems; the Euclidean flow's mean distance.
- ``train s``: wall time of the training loop (one thread; two jobs at once on 2 cores); ``NFE``: the
  velocity evaluations of the sampler, counted.

Run ``python -m bench.manifolds`` (``--sets``, ``--systems``, ``--steps``, ``--jobs``, ``--seed``); it prints
a Markdown table and writes ``bench/results/manifolds.md``, ``manifolds.json`` and ``manifolds.png`` (rows:
sets; columns: held-out data, flowmatch, Meta, Euclidean). Single-threaded per job (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

RESULTS = Path(__file__).parent / "results"


SET_NAMES = ("S2-vmf", "S2-checkerboard", "T2-wrapped", "SO3-multimodal")


SYSTEMS = ("flowmatch", "flowmatch conditional", "Meta flow_matching", "Euclidean (flowmatch)")


#: Generated sets scored per system, N points each, each against its own held-out set.
SETS, N = 10, 1000


#: Held-out points whose NLL is measured, and the likelihood solver's NFE (rk4, exact divergence).
N_NLL, NLL_NFE = 2000, 64


#: The sampler of every system: rk4 with 25 steps.
SAMPLE_NFE = 100


#: Held-out draws use seed + HELD (+ k), generated sets seed + 1 + k, pictures seed + PICTURE.
HELD, PICTURE = 7_000_003, 500


PICTURE_N = 4000


# -- data ------------------------------------------------------------------------------------------------
def held_out(name: str, seed: int) -> list[torch.Tensor]:
    """SETS + 1 held-out sets of N fresh points (the same for every system)."""
    from flowmatch.data.manifolds import manifold_set

    data = manifold_set(name)
    return [data.sample(N, generator=seed + HELD + k) for k in range(SETS + 1)]


def resolved_config(name: str, steps: int | None, seed: int, **overrides):
    """kind manifold's defaults for the set, as flowmatch.fit resolves them."""
    from flowmatch.config import TrainConfig, kind_defaults

    given = {"data": name, "seed": seed, **overrides, **({"steps": steps} if steps else {})}
    return TrainConfig.from_dict({**kind_defaults("manifold", given), "kind": "manifold", **given})


# -- Meta's flow_matching --------------------------------------------------------------------------------
def train_meta(name: str, config, seed: int):
    """The tangent MLP trained on Meta's GeodesicProbPath (CondOTScheduler) with this module's loop: the same
    optimiser, learning-rate schedule, clip and EMA as flowmatch's. Returns (EMA model, training seconds)."""
    from flow_matching.path import GeodesicProbPath
    from flow_matching.path.scheduler import CondOTScheduler
    from flow_matching.utils.manifolds import FlatTorus as MetaTorus
    from flow_matching.utils.manifolds import Sphere as MetaSphere

    from flowmatch.data.manifolds import manifold_set
    from flowmatch.engine.ema import EMA
    from flowmatch.engine.schedules import learning_rate
    from flowmatch.flows.riemannian import TangentMLP

    data = manifold_set(name)
    m = data.manifold
    torus = m.name == "torus"
    path = GeodesicProbPath(CondOTScheduler(), MetaTorus() if torus else MetaSphere())
    torch.manual_seed(seed)  # the same initial weights as flowmatch's run with this seed
    model = TangentMLP(m.ambient_dim, m, width=config.width, depth=config.depth, activation=config.activation)
    ema = EMA(model, config.ema, config.ema_warmup)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for step in range(config.steps):
        x1 = data.sample(config.batch_size, generator)
        x0 = m.random_uniform(config.batch_size, generator)
        if torus:  # Meta's flat torus is [0, 2 pi)
            x0, x1 = torch.remainder(x0, 2 * math.pi), torch.remainder(x1, 2 * math.pi)
        t = torch.rand(config.batch_size, generator=generator)
        sample = path.sample(x_0=x0, x_1=x1, t=t)
        loss = (model(sample.x_t, sample.t.reshape(-1)) - sample.dx_t).pow(2).sum(1).mean()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        ema.update(model)
    return ema.averaged_copy(model).eval(), time.perf_counter() - started


class _Counted(torch.nn.Module):
    """model(x, t), counting the calls (the sampler's NFE)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x, t, **extras):
        self.calls += 1
        return self.model(x, t)


def meta_sampler(model, manifold):
    """n samples from Meta's RiemannianODESolver (rk4, projections on), from the uniform source; returns
    (points in flowmatch's coordinates, NFE counted)."""
    from flow_matching.solver import RiemannianODESolver
    from flow_matching.utils.manifolds import FlatTorus as MetaTorus
    from flow_matching.utils.manifolds import Sphere as MetaSphere

    torus = manifold.name == "torus"
    counted = _Counted(model)
    solver = RiemannianODESolver(MetaTorus() if torus else MetaSphere(), counted)

    def sample(n: int, seed: int) -> tuple[torch.Tensor, int]:
        x0 = manifold.random_uniform(n, torch.Generator().manual_seed(seed))
        if torus:
            x0 = torch.remainder(x0, 2 * math.pi)
        counted.calls = 0
        with torch.no_grad():
            x = solver.sample(x0, step_size=4 / SAMPLE_NFE, method="rk4", projx=True, proju=True)
        return x, counted.calls

    return sample


def flowmatch_sampler(flow):
    counted = _Counted(flow.model)

    def sample(n: int, seed: int) -> tuple[torch.Tensor, int]:
        counted.calls = 0
        live, flow.model = flow.model, counted
        try:
            return flow.generate(n, solver="rk4", nfe=SAMPLE_NFE, seed=seed), counted.calls
        finally:
            flow.model = live

    return sample


# -- one (set, system) job ---------------------------------------------------------------------------------
def run_job(job: tuple[str, str, int | None, int]) -> dict[str, Any]:
    """Train one system on one set and score it (module docstring); runs in a worker process."""
    torch.set_num_threads(1)
    import flowmatch
    from flowmatch.data.manifolds import manifold_set
    from flowmatch.evaluation.geodesic import geodesic_mmd, geodesic_w2, mmd_bandwidth
    from flowmatch.manifolds.likelihood import manifold_log_prob

    name, system, steps, seed = job
    data = manifold_set(name)
    manifold = data.manifold
    config = resolved_config(name, steps, seed)
    if system == "Meta flow_matching":
        model, seconds = train_meta(name, config, seed)
        sample, velocity, project = meta_sampler(model, manifold), model, None
    else:
        overrides = {"target": "conditional"} if system == "flowmatch conditional" else {}
        if system.startswith("Euclidean"):
            overrides = {"manifold": "euclidean"}
        result, _ = flowmatch.fit(data=name, steps=config.steps, seed=seed, progress=False, evaluate=False, **overrides)
        flow, seconds = result.flow, result.seconds
        sample, velocity = flowmatch_sampler(flow), flow.model
        project = flow.on_data_manifold if flow.manifold != flow.data_manifold else None
    held = held_out(name, seed)
    bandwidth = mmd_bandwidth(held[0], manifold)
    w2, mmd, nfes, off = [], [], [], []
    for k in range(SETS):
        x, nfe = sample(N, seed + 1 + k)
        nfes.append(nfe)
        if project is not None:
            x, distance = project(x)
            off.append(float(distance.double().mean()))
        else:
            x = manifold.projx(x.double()) if manifold.name == "torus" else x  # Meta's torus: back to [-pi, pi)
            if manifold.name != "torus":
                off.append(float((x.double().norm(dim=1) - 1).abs().max()))
            x = manifold.canonical(x)
        w2.append(geodesic_w2(x, held[k], manifold))
        mmd.append(geodesic_mmd(x, held[k], manifold, bandwidth=bandwidth))
    out: dict[str, Any] = {
        "set": name, "system": system, "train_seconds": seconds, "steps": config.steps, "batch": config.batch_size,
        "lr": config.lr, "nfe": sorted(set(nfes)), "w2": w2, "mmd": mmd,
        "on_manifold": {"max": max(off) if off else 0.0} if project is None else {"mean_off": float(np.mean(off))},
    }  # fmt: skip
    if project is None:  # a density on the manifold: its NLL
        points = data.sample(N_NLL, generator=seed + HELD + 99)  # fresh held-out points, the same for every system
        started = time.perf_counter()
        log_q = manifold_log_prob(velocity, points, manifold, base_log_prob=manifold.uniform_log_prob, solver="rk4", nfe=NLL_NFE).double()
        log_p = data.log_prob(points)
        on = torch.isfinite(log_p)
        diff = (log_p - log_q)[on]
        out["likelihood"] = {
            "n": N_NLL, "nll": float(-log_q.mean()), "nll_se": float(log_q.std() / math.sqrt(N_NLL)),
            "entropy": float(-log_p[on].mean()), "kl": float(diff.mean()), "kl_se": float(diff.std() / math.sqrt(len(diff))),
            "seconds": time.perf_counter() - started,
        }  # fmt: skip
    x, _ = sample(PICTURE_N, seed + PICTURE)
    out["picture"] = (project(x)[0] if project is not None else manifold.canonical(manifold.projx(x.double()))).float().numpy()
    return out


def floors(name: str, seed: int) -> dict[str, list[float]]:
    """W2 and MMD^2 of held-out set k + 1 against held-out set k, k < SETS: what a perfect sampler scores."""
    from flowmatch.data.manifolds import manifold_set
    from flowmatch.evaluation.geodesic import geodesic_mmd, geodesic_w2, mmd_bandwidth

    manifold = manifold_set(name).manifold
    held = held_out(name, seed)
    bandwidth = mmd_bandwidth(held[0], manifold)
    return {
        "w2": [geodesic_w2(held[k + 1], held[k], manifold) for k in range(SETS)],
        "mmd": [geodesic_mmd(held[k + 1], held[k], manifold, bandwidth=bandwidth) for k in range(SETS)],
    }


# -- results -------------------------------------------------------------------------------------------------
def summarise(runs: list[dict], floor: dict[str, dict]) -> dict:
    """Per set: the floors, the entropy (closed form where known) and each system's figures."""
    from flowmatch.data.manifolds import ENTROPY

    out: dict[str, Any] = {}
    for run in runs:
        name = run["set"]
        entry = out.setdefault(name, {"floor": floor[name], "entropy_reference": ENTROPY[name], "systems": {}})
        w2_floor = float(np.median(floor[name]["w2"]))
        fig = {
            "train_seconds": run["train_seconds"], "nfe": run["nfe"],
            "w2": float(np.median(run["w2"])), "w2_range": [min(run["w2"]), max(run["w2"])], "w2_ratio": float(np.median(run["w2"])) / w2_floor,
            "mmd": float(np.median(run["mmd"])), "on_manifold": run["on_manifold"], "w2_values": run["w2"], "mmd_values": run["mmd"],
        }  # fmt: skip
        if "likelihood" in run:
            fig["likelihood"] = run["likelihood"]
        entry["systems"][run["system"]] = fig
    return out


def targets(summary: dict) -> list[str]:
    """The issue's targets, checked: flowmatch at or below Meta (W2 / floor and NLL), NLL within 0.05 nats of
    the entropy, samples on the manifold to 1e-6."""
    lines = []
    for name, entry in summary.items():
        systems = entry["systems"]
        fm = systems.get("flowmatch")
        if fm is None:
            continue
        meta = systems.get("Meta flow_matching")
        if meta is not None:
            w2_ok = fm["w2_ratio"] <= meta["w2_ratio"]
            nll_ok = fm["likelihood"]["nll"] <= meta["likelihood"]["nll"]
            lines.append(
                f"- {name}: flowmatch at or below Meta: W2/floor {fm['w2_ratio']:.3f} vs {meta['w2_ratio']:.3f} "
                f"({'yes' if w2_ok else 'NO'}), NLL {fm['likelihood']['nll']:.3f} vs {meta['likelihood']['nll']:.3f} ({'yes' if nll_ok else 'NO'})"
            )
        gap = fm["likelihood"]["nll"] - fm["likelihood"]["entropy"]
        on = fm["on_manifold"]["max"]
        lines.append(
            f"- {name}: flowmatch NLL - H = {gap:.3f} nats ({'within' if gap <= 0.05 else 'NOT within'} 0.05); "
            f"samples off the manifold by at most {on:.1e} ({'within' if on <= 1e-6 else 'NOT within'} 1e-6)"
        )
    return lines


def table(summary: dict, header: str) -> str:
    lines = [header, ""]
    for name, entry in summary.items():
        fl = entry["floor"]
        h, h_se = entry["entropy_reference"]
        lines += [
            f"#### {name} (W2 floor {np.median(fl['w2']):.4f}, MMD^2 floor {np.median(fl['mmd']) * 1e3:.3f}e-3; entropy {h:.4f} +- {h_se:.4f} nats)",
            "",
            "| system | train s | NFE | W2 / floor (median [min, max] of sets) | MMD^2 x 1e3 | NLL (nats) | H of the same points | KL(p \\|\\| q) | on the manifold |",
            "|---|---:|---:|---|---:|---:|---:|---:|---|",
        ]
        w2_floor = float(np.median(fl["w2"]))
        for system, fig in entry["systems"].items():
            lo, hi = (v / w2_floor for v in fig["w2_range"])
            lik = fig.get("likelihood")
            nll = f"{lik['nll']:.3f} +- {lik['nll_se']:.3f}" if lik else "-"
            ent = f"{lik['entropy']:.3f}" if lik else "-"
            kl = f"{lik['kl']:.3f} +- {lik['kl_se']:.3f}" if lik else "-"
            on = fig["on_manifold"]
            where = f"max off {on['max']:.1e}" if "max" in on else f"mean off {on['mean_off']:.3g} (projected)"
            lines.append(
                f"| {system} | {fig['train_seconds']:.0f} | {','.join(map(str, fig['nfe']))} | {fig['w2_ratio']:.3f} [{lo:.2f}, {hi:.2f}] | "
                f"{fig['mmd'] * 1e3:.3f} | {nll} | {ent} | {kl} | {where} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, pictures: dict, path: Path, seed: int) -> None:
    """A grid: rows = sets, columns = held-out data, flowmatch, Meta, Euclidean (density histograms on the
    equal-area sphere map and the torus square; SO(3) by rotation axis, coloured by angle)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flowmatch.data.manifolds import manifold_set
    from flowmatch.plots.figures import save_figure
    from flowmatch.plots.manifolds import SPHERE_BINS, TORUS_BINS, _axis_angle, _density_cmap, _lonlat, _sphere_density

    columns = ("held-out data", "flowmatch", "Meta flow_matching", "Euclidean (flowmatch)")
    names = [n for n in summary]
    fig = plt.figure(figsize=(4.2 * len(columns), 2.9 * len(names)), dpi=100, layout="constrained")
    grid = fig.add_gridspec(len(names), len(columns))
    for r, name in enumerate(names):
        manifold = manifold_set(name).manifold
        data = manifold_set(name).sample(PICTURE_N, generator=seed + HELD + 1000).numpy()
        panels = [data] + [pictures.get((name, c)) for c in columns[1:]]
        top = None
        for c, (title, x) in enumerate(zip(columns, panels)):
            projection = "mollweide" if manifold.name in ("sphere", "so3") and x is not None else None
            ax = fig.add_subplot(grid[r, c], projection=projection)
            if x is None:
                ax.text(
                    0.5, 0.5, f"{title}:\nnot run (no SO(3) in the library)", ha="center", va="center", transform=ax.transAxes, fontsize=9
                )
                ax.set_axis_off()
                continue
            ax.set_title(f"{name}: {title}" if c == 0 else title, fontsize=9)
            ax.tick_params(labelsize=6)
            if manifold.name == "sphere":
                lon_edges, lat_edges, density = _sphere_density(*_lonlat(x), SPHERE_BINS)
                top = top or float(density.max())
                ax.pcolormesh(lon_edges, lat_edges, density, cmap=_density_cmap(), vmin=top * 1e-9, vmax=top, shading="flat")
                ax.set_xticklabels([])
                ax.grid(True, alpha=0.3, lw=0.4)
            elif manifold.name == "torus":
                edges = np.linspace(-math.pi, math.pi, TORUS_BINS + 1)
                counts, _, _ = np.histogram2d(x[:, 1], x[:, 0], bins=(edges, edges))
                density = counts / (len(x) * (edges[1] - edges[0]) ** 2)
                top = top or float(density.max())
                ax.pcolormesh(edges, edges, density, cmap=_density_cmap(), vmin=top * 1e-9, vmax=top, shading="flat")
                ax.set_aspect("equal")
            else:
                axis, angle = _axis_angle(x.astype(np.float64))
                lon, lat = _lonlat(axis)
                ax.scatter(lon, lat, c=np.degrees(angle), s=1, alpha=0.5, cmap="viridis", vmin=0, vmax=180, linewidths=0)
                ax.set_xticklabels([])
                ax.grid(True, alpha=0.3, lw=0.4)
            if c and (name, title) in pictures and title in summary[name]["systems"]:
                figs = summary[name]["systems"][title]
                nll = figs.get("likelihood", {}).get("nll")
                label = f"W2/floor {figs['w2_ratio']:.2f}" + (f", NLL {nll:.2f}" if nll is not None else "")
                ax.set_title(f"{title}\n{label}", fontsize=8)
    fig.suptitle(
        "Riemannian flow matching: held-out data and samples (rk4, NFE 100). S^2: density on the equal-area map; T^2: density "
        "on the square [-pi, pi)^2; SO(3): each rotation's axis on the sphere map, coloured by its angle (0 to 180 degrees)",
        fontsize=10,
    )
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.manifolds", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SET_NAMES), help="comma separated subset of " + ",".join(SET_NAMES))
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma separated subset of " + ",".join(SYSTEMS))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: kind manifold's default)")
    parser.add_argument("--jobs", type=int, default=2, help="processes at once (default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="manifolds", help="result file stem under bench/results (default: manifolds)")
    args = parser.parse_args(argv)
    names = [n for n in args.sets.split(",") if n]
    systems = [s for s in args.systems.split(",") if s]
    unknown = [n for n in names if n not in SET_NAMES] + [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown set or system: {', '.join(unknown)}")
    jobs = [(n, s, args.steps, args.seed) for n in names for s in systems if not (s.startswith("Meta") and n.startswith("SO3"))]
    jobs.sort(key=lambda j: (j[1] != "Meta flow_matching", j[0]))  # the slowest (Meta's vmapped sphere path) first
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.jobs) as pool:
        pending = pool.map_async(run_job, jobs, chunksize=1)
        floor = {n: floors(n, args.seed) for n in names}  # in the main process meanwhile
        runs = pending.get()
    wall = time.perf_counter() - started
    pictures = {(r["set"], r["system"]): r.pop("picture") for r in runs}
    order = {s: i for i, s in enumerate(SYSTEMS)}
    runs.sort(key=lambda r: (names.index(r["set"]), order[r["system"]]))
    summary = summarise(runs, floor)
    config = resolved_config(names[0], args.steps, args.seed)
    header = (
        f"### Riemannian flow matching (`python -m bench.manifolds`, {time.strftime('%Y-%m-%d')}, seed {args.seed}; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, one thread per job, {args.jobs} jobs at once; "
        f"{wall / 60:.1f} min in all)\n\n"
        f"Every system: tangent MLP {config.width} x {config.depth} ({config.activation}), {config.steps} steps at batch "
        f"{config.batch_size}, Adam lr {config.lr:g} (warm-up {config.warmup}, cosine), grad clip {config.grad_clip:g}, EMA {config.ema:g}; "
        f"scored on {SETS} sets of {N} samples (rk4, NFE {SAMPLE_NFE}), each against its own held-out set; NLL of {N_NLL} held-out "
        f"points (rk4 NFE {NLL_NFE}, exact divergence)."
    )
    text = table(summary, header) + "\nTargets (issue 20):\n\n" + "\n".join(targets(summary)) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(text)
    (RESULTS / f"{args.out}.json").write_text(
        json.dumps({"config": config.to_dict(), "sets": SETS, "n": N, "wall_seconds": wall, "summary": summary}, indent=2) + "\n"
    )
    plot(summary, pictures, RESULTS / f"{args.out}.png", args.seed)
    print(f"wrote {RESULTS / args.out}.md, .json, .png")


if __name__ == "__main__":
    main()
