"""Stochastic sampling against the ODE: W2 / floor at NFE 100 on two-gaussians, three seeds.

For each seed a default flow (MLP 256 x 3, batch 256, ``STEPS`` steps, the posterior target) is
trained once and sampled by the ODE (Euler and rk4 at NFE 100) and by the SDE with the ODE's
marginals (:func:`flowmatch.solvers.sde_sample`: Euler-Maruyama, g_t^2 = noise sigma_t) at NFE 100
for each noise level of ``NOISES``. Every cell is the mean over ``DRAWS`` noise draws of W2 between
2,000 samples and a held-out set of 2,000 (its own per draw), over the floor (:mod:`bench.heldout`);
the table gives the median over seeds and the range.

Run ``python -m bench.sde`` (a few minutes on 2 cores); writes ``bench/results/sde.md`` and ``.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

if __package__ in (None, ""):  # python bench/sde.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.heldout import HeldOut  # noqa: E402
from flowmatch.api import train  # noqa: E402
from flowmatch.config import TrainConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STEPS = 2500
SEEDS = (0, 1, 2)
NFE = 100
NOISES = (0.25, 1.0, 4.0)
N, DRAWS = 2000, 5


def run(seed: int, held: HeldOut) -> dict[str, float]:
    config = TrainConfig(data="two-gaussians", steps=STEPS, batch_size=256, batch_warmup=0, seed=seed, device="cpu", precision="fp32")
    flow = train(config, progress=False).flow
    samplers = {"ode euler": {"solver": "euler"}, "ode rk4": {"solver": "rk4"}}
    samplers.update({f"sde noise {g:g}": {"noise": g} for g in NOISES})
    scores = {}
    for name, options in samplers.items():
        x = torch.cat([flow.sample(N, nfe=NFE, seed=1000 * seed + k, **options) for k in range(DRAWS)])
        scores[name] = held.score(x)
        print(f"seed {seed} {name}: {scores[name]:.3f}", flush=True)
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    held = HeldOut("two-gaussians", N, DRAWS)
    runs = [run(seed, held) for seed in args.seeds]
    lines = [
        f"SDE against ODE on two-gaussians at NFE {NFE}: W2 / floor (floor {held.floor:.3f}, the mean W2 between {DRAWS} pairs of "
        f"held-out sets), each the mean over {DRAWS} draws of {N:,} samples against their own held-out set; median over seeds "
        f"{', '.join(map(str, args.seeds))} [min, max]. Model: MLP 256 x 3, {STEPS} steps, batch 256, fp32. "
        f"{platform.machine()}, 1 thread, torch {torch.__version__}; {(time.perf_counter() - started) / 60:.0f} min.",
        "",
        "| sampler | W2 / floor |",
        "|---|---|",
    ]
    for name in runs[0]:
        values = [r[name] for r in runs]
        lines.append(f"| {name} | {statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}] |")
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "sde.md").write_text(table)
        (RESULTS / "sde.json").write_text(json.dumps({"floor": held.floor, "runs": runs, "seeds": args.seeds}, indent=2) + "\n")


if __name__ == "__main__":
    main()
