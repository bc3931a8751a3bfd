"""Few-step digits: a MeanFlow U-Net at 1 and 2 steps against the 40-step ODE sampler.

Two class-conditional U-Nets on scikit-learn's 8x8 digits (the README's recipe: channels 16, batch
128, lr 1e-3, no batch warm-up):

- ``meanflow``: ``--objective meanflow`` with the guidance weight omega = ``MEANFLOW_GUIDANCE`` folded
  into its target (one network call per step samples guided), ``MEANFLOW_STEPS`` steps;
- ``flow-matching``: the README's run, ``FM_STEPS`` steps, sampled with classifier-free guidance
  (two calls per step).

Each is scored by :func:`flowmatch.evaluation.report.image_report`: the class accuracy of a small
classifier (trained on the training split) on samples drawn for the test split's labels, and the
Fréchet distance of its features to the training split's, over the floor FD(test split, training
split). MeanFlow at 1 and 2 jumps (and its own instantaneous velocity with the 40-step midpoint ODE),
the flow-matching model with the 40-step midpoint ODE; each at the guidance weights w of
``GUIDANCE`` (for MeanFlow, w on top of its folded omega). Samples: one per test image (360), noise
seeds 0, 1, 2; the table gives the median.

Run ``python -m bench.fewstep_digits`` (about 30 minutes on 2 cores), or score existing runs with
``--meanflow-run DIR --fm-run DIR``. Writes ``bench/results/fewstep-digits.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # python bench/fewstep_digits.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowmatch.api import fit  # noqa: E402
from flowmatch.config import TrainConfig  # noqa: E402
from flowmatch.evaluation.report import image_report  # noqa: E402
from flowmatch.runs import load  # noqa: E402

RESULTS = Path(__file__).parent / "results"
RECIPE = {"data": "digits", "model": "unet", "conditional": True, "batch_size": 128, "batch_warmup": 0, "lr": 1e-3, "device": "cpu"}
MEANFLOW_STEPS = 6000
MEANFLOW_GUIDANCE = 1.25  # omega 1.5: FD 2.26x the floor at one step (fewstep-digits-omega1.5.md), 1.25: 1.68x
FM_STEPS = 4000
GUIDANCE = (1.0, 1.5)
SEEDS = (0, 1, 2)
SAMPLERS = {"meanflow": [("meanflow", 1), ("meanflow", 2), ("midpoint", 40)], "flow-matching": [("midpoint", 40)]}


def train_runs(root: Path) -> dict[str, Path]:
    """Train both U-Nets into ``root``; returns their run folders."""
    runs = {"meanflow": root / "meanflow", "flow-matching": root / "flow-matching"}
    fit(
        TrainConfig(objective="meanflow", meanflow_guidance=MEANFLOW_GUIDANCE, steps=MEANFLOW_STEPS, **RECIPE),
        out=runs["meanflow"],
        evaluate=False,
    )
    fit(TrainConfig(steps=FM_STEPS, **RECIPE), out=runs["flow-matching"], evaluate=False)
    return runs


def score(runs: dict[str, Path], classifier_cache: Path) -> dict:
    """Accuracy and FD / floor for each model, sampler and guidance weight (median over SEEDS)."""
    out: dict = {}
    for name, folder in runs.items():
        flow = load(folder)
        metrics = json.loads((folder / "metrics.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        out[name] = {
            "train_seconds": metrics["train_seconds"], "steps": metrics["steps"], "omega": config.get("meanflow_guidance", 1.0), "samplers": {}
        }  # fmt: skip
        for solver, nfe in SAMPLERS[name]:
            per_seed = [
                image_report(flow, classifier_cache, solver=solver, nfe=nfe, seed=seed, guidance=GUIDANCE, pictures=False) for seed in SEEDS
            ]
            entry = {"floor": per_seed[0]["frechet_floor"], "classifier_test_accuracy": per_seed[0]["classifier_test_accuracy"]}
            for w in map(str, GUIDANCE):
                entry[w] = {
                    key: statistics.median(r["by_guidance"][w][key] for r in per_seed)
                    for key in ("class_accuracy", "frechet", "frechet_ratio")
                }
            out[name]["samplers"][f"{solver}-{nfe}"] = entry
            print(f"{name} {solver} NFE {nfe}: " + ", ".join(f"w {w}: acc {entry[w]['class_accuracy']:.3f}, FD/floor {entry[w]['frechet_ratio']:.2f}" for w in map(str, GUIDANCE)), flush=True)  # fmt: skip
    return out


def markdown(scores: dict, seconds: float) -> str:
    any_entry = next(iter(scores["meanflow"]["samplers"].values()))
    lines = [
        f"Few-step digits (8x8, 10 classes): class accuracy and Fréchet distance / floor (floor {any_entry['floor']:.2f}: the "
        f"test split against the training split; the classifier scores {any_entry['classifier_test_accuracy']:.3f} on the "
        f"real test split), one sample per test image (360), median of noise seeds {', '.join(map(str, SEEDS))}. "
        f"{platform.machine()}, torch {torch.__version__}; total {seconds / 60:.0f} min.",
        "",
        f"MeanFlow: U-Net, --objective meanflow, guidance omega {scores['meanflow']['omega']:g} folded into the target, "
        f"{scores['meanflow']['steps']} steps, {scores['meanflow']['train_seconds']:.0f} s of training; flow matching: the "
        f"README's U-Net, {scores['flow-matching']['steps']} steps, {scores['flow-matching']['train_seconds']:.0f} s. "
        "w: the classifier-free guidance weight at sampling (MeanFlow: on top of its folded omega; w = 1 is one call per step).",
        "",
        "| model | sampler | NFE per sample | " + " | ".join(f"accuracy w={w:g} | FD / floor w={w:g}" for w in GUIDANCE) + " |",
        "|---|---|---|" + "---|---|" * len(GUIDANCE),
    ]
    for name, entry in scores.items():
        for key, cell in entry["samplers"].items():
            solver, nfe = key.rsplit("-", 1)
            cells = " | ".join(f"{cell[str(w)]['class_accuracy']:.3f} | {cell[str(w)]['frechet_ratio']:.2f}" for w in GUIDANCE)
            calls = "" if name == "meanflow" and solver == "meanflow" else " (x2 with w != 1)"
            lines.append(f"| {name} | {solver} | {nfe}{calls} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meanflow-run", help="score this MeanFlow digits run instead of training one")
    parser.add_argument("--fm-run", help="score this flow-matching digits run instead of training one")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fewstep-digits-") as tmp:
        if args.meanflow_run and args.fm_run:
            runs = {"meanflow": Path(args.meanflow_run), "flow-matching": Path(args.fm_run)}
        else:
            runs = train_runs(Path(tmp))
        scores = score(runs, Path(tmp))
    table = markdown(scores, time.perf_counter() - started)
    print(table)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "fewstep-digits.md").write_text(table)
        (RESULTS / "fewstep-digits.json").write_text(json.dumps(scores, indent=2) + "\n")


if __name__ == "__main__":
    main()
