"""The defaults on user-like data: one default run per cell of a matrix of how users bring their data,
scored by the shape score against fresh draws of the same set (issue 28, item 2).

Every cell trains ``flowmatch.fit`` at its defaults (the MLP, the linear path, independent pairs, the
target ``auto``, precision ``auto``, the time strata) for ``--steps`` steps on 8gaussians data (eight
modes: shares and shapes both matter), brought as a user would:

- **scale**: the rows times 0.1, 1 and 10, as a tensor and as a Python generator of batches;
- **form**: a tensor, a ``.npy`` file, a generator of batches in sorted order (by mode, then angle) and
  one in shuffled order;
- **rows**: 300, 3,000 and 100,000 rows as a tensor (finite data: the copy share beside the score);
- **source**: a callable source ``fn(n, generator)`` drawing N(0, I), and the same callable declaring
  its mixture (``gaussian_mixture``), where the posterior target applies;
- **batch**: batch 32 against the default 512 (at the same number of rows seen);
- **moons** from 8gaussians as the source (TorchCFM's tutorial pair), a tensor.

Each cell's score is :func:`flowmatch.evaluation.metrics.shape_score`'s median over three sets of 1,000
samples (rk4, NFE 100), each against its own two fresh draws, labelled by component after dividing by
the scale (:func:`flowmatch.data.toy.components`): the within-mode W2 over its floor and the mode-share
TV beside its floor. A cell loses where its ratio is well above the tensor-at-scale-1 cell's.

Run ``python -m bench.defaults`` (about 25 minutes on one core; ``--steps 300 --cells scale`` for a
quick look); it writes ``bench/results/defaults.md`` and ``.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

if __package__ in (None, ""):  # python bench/defaults.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import write_results  # noqa: E402
from flowmatch.api import fit  # noqa: E402
from flowmatch.data.toy import BUILTIN_CLASSES, components, sample_builtin  # noqa: E402
from flowmatch.evaluation.memorisation import memorisation  # noqa: E402
from flowmatch.evaluation.metrics import median_shape, shape_score  # noqa: E402

DATA = "8gaussians"
SETS, N_SET = 3, 1000
HELD_SEED = 9_100_000


def batches(x: torch.Tensor, batch: int, seed: int, *, shuffled: bool):
    """A generator of batches of the rows of ``x`` forever, as a DataLoader gives them (the last batch of a pass
    short): in their order (sorted) or reshuffled each pass."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=g) if shuffled else torch.arange(len(x))
        for start in range(0, len(x), batch):
            yield x[order[start : start + batch]]


def sorted_rows(n: int, seed: int) -> torch.Tensor:
    """n rows of the data sorted by mode, then by angle: the order of an unshuffled loader."""
    x, k = sample_builtin(DATA, n, seed, labels=True)
    angle = torch.atan2(x[:, 1], x[:, 0])
    return x[np.lexsort((angle.numpy(), k.numpy()))]


class GaussianSource:
    """N(0, I) as a callable source ``fn(n, generator)``; ``declare`` adds its mixture (one component)."""

    def __init__(self, declare: bool):
        if declare:
            from flowmatch.densities import GaussianMixture

            self.gaussian_mixture = GaussianMixture(
                torch.ones(1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
            )

    def __call__(self, n, generator=None):
        return torch.randn(n, 2, generator=generator)


def score(flow, scale: float, seed: int) -> dict:
    """Median shape score over SETS sets of N_SET samples against fresh draws (times ``scale``)."""
    samples = flow.sample(SETS * N_SET, solver="rk4", nfe=100, seed=seed + 11)
    scores = []
    for j, s in enumerate(samples.split(N_SET)):
        a = sample_builtin(DATA, N_SET, HELD_SEED + 2 * j) * scale
        b = sample_builtin(DATA, N_SET, HELD_SEED + 2 * j + 1) * scale
        labels = [components(DATA, v / scale) for v in (s, a, b)]
        scores.append(shape_score(s / scale, a / scale, b / scale, labels=labels, weights=np.full(BUILTIN_CLASSES[DATA], 1 / 8), seed=j))
    out = median_shape(scores)
    return {"ratio": out["ratio"], "shares": out["shares"]["value"], "shares_floor": out["shares"]["floor"], "missing": out["missing"]}


def cells(which: set[str], folder: Path) -> list[tuple[str, str, dict, float]]:
    """(group, label, fit keyword arguments, scale) of each cell."""
    out: list[tuple[str, str, dict, float]] = []
    base = sample_builtin(DATA, 3000, 1)
    if "scale" in which:
        for scale in (0.1, 1.0, 10.0):
            out.append(("scale", f"tensor x{scale:g}", {"data": base * scale}, scale))
            out.append(("scale", f"generator x{scale:g}", {"data": batches(base * scale, 512, 0, shuffled=True)}, scale))
    if "form" in which:
        path = folder / "rows.npy"
        np.save(path, base.numpy())
        out.append(("form", ".npy file", {"data": str(path)}, 1.0))
        out.append(("form", "sorted generator", {"data": batches(sorted_rows(3000, 1), 512, 0, shuffled=False)}, 1.0))
        out.append(("form", "shuffled generator", {"data": batches(base, 512, 0, shuffled=True)}, 1.0))
    if "rows" in which:
        for n in (300, 100_000):
            out.append(("rows", f"{n:,} rows", {"data": sample_builtin(DATA, n, 1)}, 1.0))
    if "source" in which:
        out.append(("source", "callable N(0, I)", {"data": base, "source": GaussianSource(False)}, 1.0))
        out.append(("source", "callable N(0, I), declared", {"data": base, "source": GaussianSource(True)}, 1.0))
    if "batch" in which:
        out.append(("batch", "batch 32", {"data": base, "batch_size": 32, "batch_warmup": 0}, 1.0))
    if "pair" in which:
        moons = sample_builtin("moons", 3000, 1)
        out.append(("pair", "8gaussians -> moons", {"data": moons, "source": sample_builtin("8gaussians", 3000, 2)}, 1.0))
    return out


def run(steps: int, which: set[str], seed: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="defaults-") as tmp:
        for group, label, kwargs, scale in cells(which, Path(tmp)):
            kwargs = dict(kwargs)
            if group == "batch":  # the same number of rows seen as the default batch
                steps_here = steps * 512 // kwargs["batch_size"] if steps <= 1000 else steps * 4
            else:
                steps_here = steps
            started = time.perf_counter()
            result, metrics = fit(steps=steps_here, seed=seed, progress=False, evaluate=False, **kwargs)
            seconds = time.perf_counter() - started
            row = {"group": group, "cell": label, "steps": steps_here, "seconds": seconds, "target": metrics.get("target")}
            if group == "pair":
                row.update(pair_score(result.flow, seed))
            else:
                row.update(score(result.flow, scale, seed))
            dataset = result.data  # the training data set (None for a stream)
            if dataset is not None and not dataset.builtin and dataset.train is not None and len(dataset.test) >= 4:
                memo = memorisation(result.flow.sample(len(dataset.test), seed=seed + 5), dataset.to_data(dataset.train), dataset.test)
                row["copy_share"] = memo["copy_share"]["value"]
                row["copy_share_test"] = memo["copy_share"]["test"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def pair_score(flow, seed: int) -> dict:
    """8gaussians -> moons: the shape score against fresh moons (two components)."""
    samples = flow.sample(SETS * N_SET, solver="rk4", nfe=100, seed=seed + 11)
    scores = []
    for j, s in enumerate(samples.split(N_SET)):
        a, b = sample_builtin("moons", N_SET, HELD_SEED + 2 * j), sample_builtin("moons", N_SET, HELD_SEED + 2 * j + 1)
        labels = [components("moons", v) for v in (s, a, b)]
        scores.append(shape_score(s, a, b, labels=labels, weights=np.full(2, 0.5), seed=j))
    out = median_shape(scores)
    return {"ratio": out["ratio"], "shares": out["shares"]["value"], "shares_floor": out["shares"]["floor"], "missing": out["missing"]}


def markdown(result: dict) -> str:
    lines = [
        f"Defaults on user-like data (`python -m bench.defaults`): {result['data']}, every cell at flowmatch's defaults for "
        f"{result['steps']} steps (batch 32: as many rows seen), seed {result['seed']}; {result['machine']}, 1 thread, "
        f"torch {torch.__version__}; {result['minutes']:.0f} min.",
        "",
        "Score: the within-mode W2 over its floor (median of 3 sets of 1,000 samples, rk4 NFE 100, each against fresh draws), "
        "the mode-share TV beside what exact draws score; finite data: the copy share beside the test split's.",
        "",
        "| group | cell | shape ratio | shares TV (floor) | target | copy share (test) | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        copy = f"{r['copy_share']:.3f} ({r['copy_share_test']:.3f})" if "copy_share" in r else "—"
        lines.append(
            f"| {r['group']} | {r['cell']} | {r['ratio']:.2f} | {r['shares']:.3f} ({r['shares_floor']:.3f}) | {r['target']} | {copy} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.defaults", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps per cell (default: 2000)")
    parser.add_argument("--cells", default="scale,form,rows,source,batch,pair", help="comma separated groups")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="defaults", help="result file stem under bench/results (default: defaults)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = run(args.steps, set(args.cells.split(",")), args.seed)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(), "data": DATA,
        "steps": args.steps, "seed": args.seed, "rows": rows, "minutes": (time.perf_counter() - started) / 60,
    }  # fmt: skip
    write_results(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
