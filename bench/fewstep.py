"""Few-step generation: W2 / floor at 1, 2, 4 and 8 velocity evaluations for every way flowmatch has
of straightening a flow, on two tasks, three seeds (median).

Tasks: ``two-gaussians`` and ``checkerboard`` from N(0, I), and ``8gaussians -> moons`` (``--source
8gaussians --data moons``). For each task and seed (0, 1, 2) it trains, with the default model (MLP
width 256, depth 3, batch 256, Adam at the default lr 4e-3 with cosine decay, EMA 0.999, the default
target: the posterior one where it applies, i.e. independent pairs from a Gaussian or Gaussian mixture):

- ``independent`` and ``ot`` (``--coupling``; ``--couplings`` adds ``sinkhorn`` with ``--ot-reg 0.05``),
  each ``BASE_STEPS`` steps (shorter than the default 6,000 to keep the benchmark near half an hour);
- ``reflow-1``: reflow of the independent model (``flowmatch reflow``): ``PAIRS`` pairs made with
  rk4 at NFE 100, ``RECTIFY_STEPS`` steps at lr ``RECTIFY_LR``, warm-started;
- ``distill-1``, ``distill-2``: students with 1 and 2 Euler steps (``flowmatch distill``) of the best
  of those models, the one with the lowest W2 at rk4 NFE 100 (pairs as for reflow);
- ``meanflow``: ``--objective meanflow`` from scratch (the two-time MLP of the same size,
  ``MEANFLOW_STEPS`` steps), scored with its own jumps at NFE 1 and 2 (and rk4 on u(x, t, t)).

Beside each model's own training time the table gives its whole pipeline's ("total": a student's
teacher's pipeline and its pairs included; a reflow's first model included): what one-step
generation costs from scratch.

Every model is scored by exact W2 (``flowmatch.evaluation.metrics.w2_exact``) between 2,000 samples and 2,000
held-out points, averaged over ``NOISE_DRAWS`` draws (noise seed 1000 * seed + k, the same for every
model of a seed, against its own held-out set A_k), over the floor, the mean W2 between the
``NOISE_DRAWS`` pairs of disjoint held-out sets (see :mod:`bench.heldout`): one draw is too noisy
to rank models whose W2 is near the floor. The solvers: euler at NFE 1, 2, 4, 8 and the best fixed-step solver among midpoint, heun (NFE 2, 4, 8) and rk4
(NFE 4, 8). Students are scored at the NFE they were trained for (Euler) only. Training time is
the wall time of the optimisation (plus the pair generation for reflow and distillation).

It also measures what the ``ot`` coupling costs at batch 256 beside a training step of the default
model (forward + backward + Adam), interleaved in one process so both see the same load.

Run ``python -m bench.fewstep`` (about 30 minutes on 2 cores; two processes by default, ``--jobs 1`` for one; ``--seeds 0``
for a quick look); it prints Markdown tables and writes ``bench/results/fewstep.md`` and ``.json``.
Single-threaded (OMP_NUM_THREADS=1) as the numbers are per core.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

if __package__ in (None, ""):  # python bench/fewstep.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.heldout import HeldOut  # noqa: E402
from flowmatch.api import fit  # noqa: E402
from flowmatch.config import TrainConfig
from flowmatch.modalities.points.rectify import straightness  # noqa: E402
from flowmatch.rectify import distill, reflow  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TASKS = {
    "two-gaussians": {"data": "two-gaussians"},
    "checkerboard": {"data": "checkerboard"},
    "8gaussians -> moons": {"data": "moons", "source": "8gaussians"},
}
COUPLINGS = ("independent", "ot")  # --couplings adds sinkhorn
#: MeanFlow: the two-time MLP from scratch with the adaptive weight's power p = 0.5. Seed 0, W2 / floor at
#: one jump: two-gaussians (3,000 steps) 1.42 at p = 1, 1.12 at p = 0, 1.08 at p = 0.5; checkerboard
#: (2,500) 1.17 at p = 0, 1.15 at p = 0.5; 8gaussians -> moons 1.57 (p = 0, 2,500 steps), 1.60 / 1.72
#: with 50% / 25% of rows r = t (p = 0.5, 3,000), 1.47 after 6,000 steps (p = 0.5).
MEANFLOW = {"objective": "meanflow", "meanflow_power": 0.5}
MEANFLOW_STEPS = 3000
SEEDS = (0, 1, 2)
BASE_STEPS = 2500
#: batch 256 throughout (no batch warm-up): the exact ``ot`` coupling costs ~5x as much at 512
FIXED_BATCH = {"batch_size": 256, "batch_warmup": 0}
SINKHORN_REG = 0.05
PAIRS = 10_000
TEACHER_NFE = 100
RECTIFY_STEPS = 2000
RECTIFY_LR = 1e-3
NFES = (1, 2, 4, 8)
SOLVERS = {"euler": (1, 2, 4, 8), "midpoint": (2, 4, 8), "heun": (2, 4, 8), "rk4": (4, 8)}
N_EVAL = 2000
NOISE_DRAWS = 5


def _score_only(nfes: list[int]) -> None:
    """Score these NFEs only (the worker processes, forked after this, inherit it)."""
    global NFES, SOLVERS
    NFES = tuple(sorted(nfes))
    SOLVERS = {name: tuple(n for n in allowed if n in NFES) for name, allowed in SOLVERS.items()}
    SOLVERS = {name: allowed for name, allowed in SOLVERS.items() if allowed or name == "rk4"}


# -- the coupling's cost ---------------------------------------------------------------------------
def coupling_cost(batch: int = 256, rounds: int = 9, repeats: int = 15) -> dict:
    """ms per call of couple(ot), couple(sinkhorn) and a default-model training step, interleaved."""
    from flowmatch.couplings import couple
    from flowmatch.data.toy import sample_builtin
    from flowmatch.models.registry import build_model
    from flowmatch.paths.affine import make_path

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    model = build_model("mlp", 2, width=256, depth=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    path = make_path("linear")
    batches = [(torch.randn(batch, 2, generator=g), sample_builtin("two-gaussians", batch, g)) for _ in range(repeats)]

    def step(x0, x1):
        t = torch.rand(batch, generator=g)
        target = path.sample(x0, x1, t)
        loss = (model(target.x_t, t) - target.velocity).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    tasks = {
        "train step (forward + backward + Adam)": lambda x0, x1: step(x0, x1),
        "ot coupling": lambda x0, x1: couple(x0, x1, "ot"),
        "sinkhorn coupling": lambda x0, x1: couple(x0, x1, "sinkhorn", reg=SINKHORN_REG, generator=g),
    }
    for fn in tasks.values():  # warm-up (imports, allocator)
        fn(*batches[0])
    times: dict[str, list[float]] = {name: [] for name in tasks}
    for _ in range(rounds):
        for name, fn in tasks.items():
            start = time.perf_counter()
            for x0, x1 in batches:
                fn(x0, x1)
            times[name].append((time.perf_counter() - start) / repeats * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def loop_step_ms(coupling: str, steps: int = 300) -> float:
    """ms per step of the whole training loop (flowmatch.engine.train) with a coupling."""
    from flowmatch.api import train

    result = train(TrainConfig(steps=steps, coupling=coupling, ot_reg=SINKHORN_REG, device="cpu", **FIXED_BATCH), progress=False)
    return result.seconds / steps * 1e3


# -- one task and seed -------------------------------------------------------------------------------
def score(flow, held: HeldOut, seed: int, solvers: dict[str, tuple[int, ...]]) -> tuple[dict, dict]:
    """W2 / floor at each (solver, NFE): the mean over the held-out sets A_k of W2(samples_k, A_k),
    samples_k drawn with noise seed 1000 * seed + k (shared by every model of a seed), over the floor.
    Also returns each draw's ratio, and the shape score of the same samples (``HeldOut.shape``: the
    within-mode W2 over its floor, median of the draws, and the mode-share TV beside its floor)."""
    means, draws, shapes = {}, {}, {}
    for solver, nfes in solvers.items():
        for nfe in nfes:
            samples = torch.cat([flow.sample(N_EVAL, solver=solver, nfe=nfe, seed=1000 * seed + k) for k in range(held.k)])
            each = held.each(samples)
            means[f"{solver}-{nfe}"], draws[f"{solver}-{nfe}"] = statistics.mean(each), each
            shape = held.shape(samples)
            shapes[f"{solver}-{nfe}"] = {"ratio": shape["ratio"], "shares": shape.get("shares", {}).get("value")}
    return means, draws, shapes


def run_task(task: str, seed: int, root: str, couplings: tuple[str, ...] = COUPLINGS) -> dict:
    torch.set_num_threads(1)
    options = TASKS[task]
    folder = Path(root) / f"{task.replace(' -> ', '-to-')}-{seed}"
    models: dict[str, dict] = {}
    held = HeldOut(options["data"], N_EVAL, NOISE_DRAWS)
    floor, floor_pairs = held.floor, held.floor_each

    def record(name, result, metrics, solvers, extra_seconds=0.0):
        student = name.startswith("distill")  # trained for its own Euler NFE only: no rk4 trajectory measures
        scores, draws, shapes = score(result.flow, held, seed, solvers)
        models[name] = {
            "train_seconds": metrics["train_seconds"],
            "pair_seconds": extra_seconds,
            "w2_floor": floor,
            "rk4-100": scores.pop("rk4-100", None),
            "scores": scores,
            "draws": draws,
            "shapes": shapes,
            "straightness": None if student else straightness(result.flow, n=1000, seed=seed + 2),
        }
        print(f"  {task} seed {seed} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), flush=True)

    with_rk4 = {**SOLVERS, "rk4": (*SOLVERS["rk4"], 100)}
    for coupling in couplings:
        config = TrainConfig(steps=BASE_STEPS, coupling=coupling, ot_reg=SINKHORN_REG, seed=seed, device="cpu", **FIXED_BATCH, **options)
        result, metrics = fit(config, out=folder / coupling, progress=False, evaluate=False)
        record(coupling, result, metrics, with_rk4)

    rectify = dict(n_pairs=PAIRS, steps=RECTIFY_STEPS, lr=RECTIFY_LR, teacher_nfe=TEACHER_NFE, progress=False, evaluate=False)
    result, metrics = reflow(folder / "independent", folder / "reflow-1", **rectify)
    record("reflow-1", result, metrics, with_rk4, metrics["pair_seconds"])

    teacher = min(models, key=lambda name: models[name]["rk4-100"])
    for nfe in (1, 2):
        result, metrics = distill(folder / teacher, folder / f"distill-{nfe}", nfe=nfe, **rectify)
        record(f"distill-{nfe}", result, metrics, {"euler": (nfe,)}, metrics["pair_seconds"])
        models[f"distill-{nfe}"]["teacher"] = teacher

    config = TrainConfig(steps=MEANFLOW_STEPS, seed=seed, device="cpu", **FIXED_BATCH, **MEANFLOW, **options)
    result, metrics = fit(config, out=folder / "meanflow", progress=False, evaluate=False)
    record("meanflow", result, metrics, {"meanflow": (1, 2), "rk4": (100,)})

    # the whole pipeline's training time: a model's own optimisation and pairs, plus its teacher's whole pipeline
    for name, m in models.items():
        teacher = m.get("teacher") or ("independent" if name == "reflow-1" else None)
        m["total_seconds"] = m["train_seconds"] + m["pair_seconds"] + (models[teacher]["total_seconds"] if teacher else 0.0)
    return {"task": task, "seed": seed, "floor": floor, "floor_pairs": floor_pairs, "models": models}


# -- the table ---------------------------------------------------------------------------------------
def summarise(runs: list[dict]) -> dict:
    """Medians over seeds of every score, per task and model; the best solver at each NFE."""
    summary: dict = {}
    for task in TASKS:
        of_task = [r for r in runs if r["task"] == task]
        if not of_task:
            continue
        summary[task] = {"floor": of_task[0]["floor"], "floor_pairs": of_task[0]["floor_pairs"], "models": {}}
        for name in of_task[0]["models"]:
            entries = [r["models"][name] for r in of_task]
            scores = {k: statistics.median(e["scores"][k] for e in entries) for k in entries[0]["scores"]}
            best = {}
            for nfe in NFES:
                candidates = {k: v for k, v in scores.items() if k.endswith(f"-{nfe}") and not k.startswith(("euler", "meanflow"))}
                if candidates:
                    key = min(candidates, key=candidates.get)
                    best[str(nfe)] = {"solver": key.split("-")[0], "ratio": candidates[key]}
            shapes = {
                k: {part: statistics.median(e["shapes"][k][part] for e in entries) for part in ("ratio", "shares")}
                for k in entries[0]["shapes"]
            }
            summary[task]["models"][name] = {
                "scores": scores,
                "shapes": shapes,
                "best": best,
                "rk4-100": None if entries[0]["rk4-100"] is None else statistics.median(e["rk4-100"] for e in entries),
                "train_seconds": statistics.median(e["train_seconds"] for e in entries),
                "pair_seconds": statistics.median(e["pair_seconds"] for e in entries),
                "total_seconds": statistics.median(e["total_seconds"] for e in entries),
                "straightness": None if entries[0]["straightness"] is None else statistics.median(e["straightness"] for e in entries),
                "teachers": [e.get("teacher") for e in entries if e.get("teacher")],
            }
        summary[task]["student_draws"] = {
            name: [d for r in of_task for d in r["models"][name]["draws"][f"euler-{name[-1]}"]] for name in ("distill-1", "distill-2")
        }
    return summary


def markdown(summary: dict, cost: dict, loop: dict, seeds, seconds: float, couplings: tuple[str, ...] = COUPLINGS) -> str:
    lines = [
        f"Few-step generation: W2 / floor (median of seeds {', '.join(map(str, seeds))}); each cell is the mean over "
        f"{NOISE_DRAWS} noise draws of W2 between 2,000 samples and a held-out set of 2,000 (a different one per draw), over "
        f"the floor, the mean W2 between {NOISE_DRAWS} pairs of disjoint held-out sets: what a perfect sampler scores on average. {platform.machine()}, 1 thread, torch {torch.__version__}; "
        f"total {seconds / 60:.0f} min.",
        "",
        f"Training: default MLP (256 x 3), batch 256, {BASE_STEPS} steps for the couplings ({', '.join(couplings)}"
        f"{f'; sinkhorn reg {SINKHORN_REG}' if 'sinkhorn' in couplings else ''}); "
        f"reflow and distillation: {PAIRS:,} rk4 NFE {TEACHER_NFE} pairs, {RECTIFY_STEPS} steps, lr {RECTIFY_LR:g}, warm-started; "
        f"MeanFlow: the two-time MLP (256 x 3) from scratch, {MEANFLOW_STEPS} steps, adaptive-weight power "
        f"{MEANFLOW['meanflow_power']:g}, 75% of rows r = t, the posterior velocity in the identity. "
        "Cells 'E' are Euler (MeanFlow: its average-velocity jumps); 'best' is the best of midpoint / heun / rk4 at that NFE "
        "(solver named). Students are scored at their own NFE (Euler) only. Time: optimisation seconds (+ pair generation); "
        "total: the whole pipeline (a student's teacher's, and a reflow's first model's, included).",
        "",
        "### One and two steps: MeanFlow from scratch against the distilled pipeline and OT",
        "",
        "| task | floor | MeanFlow 1 | MeanFlow 2 | distill-1 | distill-2 | ot E 1 | ot best 2 | MeanFlow total s | distill-1 total s | distill-2 total s |",
        "|---|" + "---|" * 10,
    ]
    for task, entry in summary.items():
        m = entry["models"]
        mf, d1, d2, ot = m["meanflow"], m["distill-1"], m["distill-2"], m["ot"]
        best2 = ot["best"].get("2")
        lines.append(
            f"| {task} | {entry['floor']:.3f} | {mf['scores']['meanflow-1']:.2f} | {mf['scores']['meanflow-2']:.2f} | "
            f"{d1['scores']['euler-1']:.2f} | {d2['scores']['euler-2']:.2f} | {ot['scores']['euler-1']:.2f} | "
            f"{best2['ratio']:.2f} ({best2['solver']}) | {mf['total_seconds']:.0f} | {d1['total_seconds']:.0f} | {d2['total_seconds']:.0f} |"
        )
    lines.append("")
    for task, entry in summary.items():
        pairs = entry["floor_pairs"]
        lines += [f"### {task} (floor {entry['floor']:.3f}; single pairs {min(pairs):.3f} to {max(pairs):.3f})", ""]
        heads = [f"E {n}" if k == 0 else f"best {n}" for n in NFES for k in range(1 if n == 1 else 2)]
        lines += [
            "| model | " + " | ".join(heads) + " | rk4 100 | straightness | train s | total s |",
            "|---|" + "---|" * (len(heads) + 4),
        ]
        for name, m in entry["models"].items():
            cells = []
            for nfe in NFES:
                e = m["scores"].get(f"euler-{nfe}", m["scores"].get(f"meanflow-{nfe}"))
                cells.append(f"{e:.2f}" if e is not None else "—")
                if nfe > 1:
                    b = m["best"].get(str(nfe))
                    cells.append(f"{b['ratio']:.2f} ({b['solver']})" if b else "—")
            seconds_cell = f"{m['train_seconds']:.0f}" + (f" + {m['pair_seconds']:.0f}" if m["pair_seconds"] else "")
            label = name + (f" (of {', '.join(sorted(set(m['teachers'])))})" if m["teachers"] else "")
            rk4 = f"{m['rk4-100']:.2f}" if not name.startswith("distill") else "—"
            straight = "—" if m["straightness"] is None else f"{m['straightness']:.4f}"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {rk4} | {straight} | {seconds_cell} | {m['total_seconds']:.0f} |")
        lines.append("")
    lines += [
        "### By shape: the within-mode W2 over its floor (mode-share TV in brackets)",
        "",
        "The same samples scored by `flowmatch.evaluation.metrics.shape_score` (median over the draws, then over seeds): "
        "each draw's points are labelled by the component they fall in (`flowmatch.data.toy.components`), W2 is taken "
        "per mode against the draw's own held-out set and over the same figure of a second held-out set, and the mode "
        "shares apart (TV to the equal weights; what 2,000 exact draws score: about 0.01 for two modes, 0.03 for eight). "
        "A W2 of the mixture near 1 with a shape ratio well above 1 is a model with the right shares and the wrong shape.",
        "",
    ]
    for task, entry in summary.items():
        keys = [
            k
            for k in ("euler-1", "meanflow-1", "euler-2", "meanflow-2", "rk4-100")
            if any(k in m["shapes"] for m in entry["models"].values())
        ]
        lines += [
            "| " + task + " | " + " | ".join(k.replace("euler", "E").replace("-", " ") for k in keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for name, m in entry["models"].items():
            cells = [f"{m['shapes'][k]['ratio']:.2f} ({m['shapes'][k]['shares']:.3f})" if k in m["shapes"] else "—" for k in keys]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        f"Why a mean over {NOISE_DRAWS} draws: one W2 of 2,000 points swings with how many points land in each mode. "
        "The students' single draws (every seed and draw) range:",
        "",
        "| task | distill-1 E 1 | distill-2 E 2 |",
        "|---|---|---|",
    ]
    for task, entry in summary.items():
        d = entry["student_draws"]
        lines.append(
            f"| {task} | {min(d['distill-1']):.2f} to {max(d['distill-1']):.2f} | {min(d['distill-2']):.2f} to {max(d['distill-2']):.2f} |"
        )
    lines += [
        "",
        "Cost of the coupling at batch 256 (2-D, two-gaussians from noise), ms per call, medians of interleaved rounds:",
        "",
        "| what | ms |",
        "|---|---|",
    ]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in cost.items()]
    lines += [f"| whole training-loop step, coupling {name} | {ms:.2f} |" for name, ms in loop.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--jobs", type=int, default=2, help="processes (each task and seed is one job; default 2)")
    parser.add_argument(
        "--nfes", type=int, nargs="+", choices=NFES, default=list(NFES), help="NFEs to score (default: 1 2 4 8; fewer is faster)"
    )
    parser.add_argument("--couplings", nargs="+", choices=("independent", "ot", "sinkhorn"), default=list(COUPLINGS))
    parser.add_argument("--keep", default=None, help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    _score_only(args.nfes)

    cost = coupling_cost()
    loop = {c: loop_step_ms(c) for c in ("independent", "ot")}
    print("coupling cost (ms):", json.dumps({**cost, **{f"loop {k}": v for k, v in loop.items()}}), flush=True)

    with tempfile.TemporaryDirectory(prefix="fewstep-") as tmp:
        root = args.keep or tmp
        jobs = [(task, seed) for seed in args.seeds for task in args.tasks]
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                runs = list(pool.map(run_task, *zip(*jobs), [root] * len(jobs), [tuple(args.couplings)] * len(jobs)))
        else:
            runs = [run_task(task, seed, root, tuple(args.couplings)) for task, seed in jobs]
    seconds = time.perf_counter() - started
    if not args.no_write:  # the raw runs first: a summary that fails must not lose half an hour of training
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "fewstep-runs.json").write_text(json.dumps(runs, indent=2) + "\n")
    summary = summarise(runs)
    table = markdown(summary, cost, loop, args.seeds, seconds, tuple(args.couplings))
    print(table)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "fewstep.md").write_text(table)
        payload = {"summary": summary, "runs": runs, "coupling_ms": cost, "loop_step_ms": loop, "seconds": seconds}
        (RESULTS / "fewstep.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()


def rescore(root: str, seed: int = 0) -> str:
    """Score the kept run folders (``--keep ROOT``) of one seed again, W2 / floor beside the shape score, at
    one and two steps (Euler; MeanFlow: its own jumps; a student at its own NFE) and rk4 NFE 100: a
    Markdown table. ``python -c "from bench.fewstep import rescore; print(rescore('ROOT'))"``."""
    from flowmatch.runs import load

    lines = []
    for task, options in TASKS.items():
        folder = Path(root) / f"{task.replace(' -> ', '-to-')}-{seed}"
        if not folder.is_dir():
            continue
        held = HeldOut(options["data"], N_EVAL, NOISE_DRAWS)
        lines += [
            f"| {task} (seed {seed}) | 1 step: W2 / floor | shape (shares TV) | 2 steps: W2 / floor | shape (shares TV) | rk4 100: W2 / floor | shape |"
        ]
        lines += ["|---|---|---|---|---|---|---|"]
        for name in ("independent", "ot", "reflow-1", "distill-1", "distill-2", "meanflow"):
            if not (folder / name / "checkpoint.safetensors").is_file():
                continue
            flow = load(folder / name)
            one = "meanflow" if name == "meanflow" else "euler"
            solvers = {"distill-1": {"euler": (1,)}, "distill-2": {"euler": (2,)}}.get(name, {one: (1, 2), "rk4": (100,)})
            means, _, shapes = score(flow, held, seed, solvers)
            cells = []
            for key in (f"{one}-1", f"{one}-2", "rk4-100"):
                if key in means:
                    tv = shapes[key]["shares"]
                    cells += [f"{means[key]:.2f}", f"{shapes[key]['ratio']:.2f}" + ("" if key == "rk4-100" else f" ({tv:.3f})")]
                else:
                    cells += ["—", "—"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
