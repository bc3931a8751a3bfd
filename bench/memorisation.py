"""Memorisation on finite data: flowmatch's defaults before and after issue 17, and ForestFlow.

For each data set and seed, a run trains at the defaults of the moment, and its samples are scored
against the rows it trained on and the test split (:mod:`flowmatch.evaluation.memorisation`): the copy share,
the distance-to-closest-record ratio, W_test and W_train (W1, L1 cost after min-max scaling), each
the mean over ``SAMPLE_SETS`` sample sets of as many rows as the training set (at most ``MAX_ROWS``),
so that one draw's luck does not move it. Digits adds the Frechet distance of guided-free samples to
the test split's classifier features, and ``nearest-digits.png``.

- ``before``: the defaults until issue 17: the posterior target on every data set, no validation
  split, the last weights after 6,000 steps (``val_fraction 0, select last, early_stop 0,
  target posterior``).
- ``after``: today's defaults (a validation split of 10% of the training rows, the weights of the
  lowest validation loss, early stop after 1,000 steps without improvement, the posterior target
  only from 2,048 training rows).
- ``after-val100``, ``after-wd``, ``after-dropout``: today's defaults with the validation every 100
  steps, AdamW with weight decay 1.0, or MLP dropout 0.1: the measurements the defaults were chosen by
  (run with ``--variants after,after-val100,after-wd,after-dropout --out memorisation-regularisers``).
- ``ForestFlow`` (tables): ``forestdiffusion``'s ForestDiffusionModel, flow type, n_t 50,
  duplicate_K 100 (its defaults), on the same training rows.

Data: scikit-learn's wine (142 training rows) and breast cancer (455), digits (1,437 images) and
a 5,000-row and a 50,000-row draw of ``moons`` written to .npy files (4,000 and 46,000 training rows).
The 50,000-row set also reports time to quality: the training seconds at the first probe (every 100
steps, 2,000 rk4 NFE 20 samples; the clock stops while it runs) with exact W2 within 1.1x the floor (two 2,000-row halves of the
test split).

Run ``python -m bench.memorisation [--seeds 0,1,2] [--sets wine,...] [--variants before,after,forestflow]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import flowmatch  # noqa: E402
from flowmatch.data import toy as data_module  # noqa: E402
from flowmatch.evaluation.memorisation import memorisation  # noqa: E402
from flowmatch.evaluation.metrics import w2_exact  # noqa: E402
from flowmatch.flows.continuous import dataset_from_config  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SETS = ("wine", "breast-cancer", "digits", "digits-unet", "moons-5000", "moons-50000")
#: Sets that train with other options than the defaults: digits with the README's class-conditional U-Net recipe.
RECIPES = {"digits-unet": {"model": "unet", "conditional": True, "steps": 4000, "batch_size": 128, "batch_warmup": 0, "lr": 1e-3}}
TABLES = ("wine", "breast-cancer")
BEFORE = {"val_fraction": 0.0, "select": "last", "early_stop": 0, "target": "posterior"}
#: Configs of the flowmatch variants: today's defaults plus these options. The regulariser variants
#: are how the defaults were chosen (``--variants after,after-val100,after-wd,after-dropout``).
VARIANTS = {
    "before": BEFORE,
    "after": {},
    "after-val100": {"val_every": 100},
    "after-wd": {"optimizer": "adamw", "weight_decay": 1.0},
    "after-dropout": {"dropout": 0.1},
}
LABELS = {
    "before": "flowmatch before",
    "after": "flowmatch after",
    "forestflow": "ForestFlow",
    "after-val100": "after, validation every 100 steps",
    "after-wd": "after + AdamW weight decay 1.0",
    "after-dropout": "after + dropout 0.1",
}
SAMPLE_SETS = 5
MAX_ROWS = 2000
PROBE_EVERY = 100


def data_spec(name: str, folder: Path) -> str:
    """The data argument of a set: a built-in name, or a .npy of a moons draw written once."""
    if name == "digits-unet":
        return "digits"
    if not name.startswith("moons-"):
        return name
    n = int(name.split("-")[1])
    path = folder / f"moons-{n}.npy"
    if not path.exists():
        np.save(path, data_module.sample_builtin("moons", n, 12_345).numpy())
    return str(path)


def _probe(result: dict, test: torch.Tensor):
    """A callback recording the first probe within 1.1x the W2 floor (time to quality)."""
    a, b = test[:2000], test[2000:4000]
    floor = w2_exact(b, a)

    def probe(step, flow, seconds):
        if "time_to_quality" in result:
            return
        w2 = w2_exact(flow.sample(len(a), solver="rk4", nfe=20, seed=11), a)
        if w2 <= 1.1 * floor:
            result["time_to_quality"], result["step_to_quality"] = seconds, step

    return probe


def score(generate, train: torch.Tensor, test: torch.Tensor, seed: int) -> dict:
    """Memorisation figures, each the mean over SAMPLE_SETS sample sets (and their spread)."""
    n = min(len(train), MAX_ROWS)
    keys = ("copy_share", "dcr_ratio", "w_train", "w_test")
    runs = [memorisation(generate(max(n, len(test)), seed + 100 + k), train, test, seed=k) for k in range(SAMPLE_SETS)]
    out = {key: statistics.mean(r[key]["value"] for r in runs) for key in keys}
    out.update({f"{key}_test": statistics.mean(r[key]["test"] for r in runs) for key in keys})
    out["copy_share_sets"] = [r["copy_share"]["value"] for r in runs]
    return out


def run_flowmatch(name: str, spec: str, variant: str, seed: int) -> dict:
    overrides = {**RECIPES.get(name, {}), **VARIANTS[variant]}
    config = flowmatch.TrainConfig(data=spec, seed=seed, **overrides)
    result: dict = {"set": name, "variant": variant, "seed": seed}
    dataset = dataset_from_config(config.to_dict())
    callback, steps = None, ()
    if name == "moons-50000":
        callback, steps = _probe(result, dataset.test), range(PROBE_EVERY, config.steps + 1, PROBE_EVERY)
    trained = flowmatch.train(config, progress=False, callback=callback, callback_steps=steps)
    flow = trained.flow
    result.update(train_seconds=trained.seconds, steps_run=trained.step, target=trained.target, validation=trained.validation)
    train_rows = flow.dataset.training_rows(limit=MAX_ROWS * 4, seed=seed)

    def generate(n, s):
        return flow.sample(n, seed=s, label=_labels(flow, n, s))

    result.update(score(generate, train_rows, flow.dataset.test, seed))
    if name.startswith("digits"):
        result.update(_digits_figures(flow, name, variant, seed))
    return result


def _labels(flow, n: int, seed: int):
    """Classes for a conditional model's samples: a draw of the training labels (None: unconditional)."""
    labels = flow.dataset.train_labels
    if not flow.num_classes or labels is None:
        return None
    return labels[torch.randint(len(labels), (n,), generator=torch.Generator().manual_seed(seed))]


def _digits_figures(flow, name: str, variant: str, seed: int) -> dict:
    """Frechet distances of as many samples as training images to the test and the training
    features, beside the floor (test against training features), and the nearest-neighbour picture
    of seed 0."""
    from flowmatch.evaluation import images
    from flowmatch.evaluation.report import nearest_picture

    ds = flow.dataset
    with tempfile.TemporaryDirectory() as cache:
        classifier = images.cached_classifier(Path(cache), ds.train, ds.train_labels, tuple(ds.image_shape), ds.num_classes)
    x = flow.sample(len(ds.train), seed=seed + 7, label=_labels(flow, len(ds.train), seed + 7))
    model_scale = (ds.to_model(x).float(), ds.train, ds.to_model(ds.test).float())  # the classifier's scale
    f_gen, f_train, f_test = (images.classifier_features(classifier, v) for v in model_scale)
    out = {
        "fd_test": images.frechet_distance(f_gen, f_test),
        "fd_train": images.frechet_distance(f_gen, f_train),
        "fd_floor": images.frechet_distance(f_test, f_train),
    }
    if seed == 0:
        RESULTS.mkdir(exist_ok=True)
        nearest_picture(x[:16], ds.training_rows(), ds.image_shape, RESULTS / f"nearest-{name}-{variant}.png", ds.image_value_range)
    return out


def run_forestflow(name: str, seed: int) -> dict:
    from ForestDiffusion import ForestDiffusionModel

    dataset = data_module.load_dataset(name, seed=seed)
    train, test = dataset.training_rows(), dataset.test
    started = time.perf_counter()
    model = ForestDiffusionModel(
        train.numpy().astype(np.float64),
        n_t=50,
        duplicate_K=100,
        diffusion_type="flow",
        n_jobs=int(os.environ.get("FORESTFLOW_JOBS", "2")),
        seed=seed,
    )
    seconds = time.perf_counter() - started

    def generate(n, s):
        np.random.seed(s)
        return torch.as_tensor(model.generate(batch_size=n), dtype=torch.float32)

    result = {"set": name, "variant": "forestflow", "seed": seed, "train_seconds": seconds}
    result.update(score(generate, train, test, seed))
    return result


def _median(rows: list[dict], key: str, spec: str = ".3g") -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):{spec}} [{min(values):{spec}}, {max(values):{spec}}]"


def table(results: list[dict]) -> str:
    lines = [
        "| set | system | copy share (test split's own) | DCR ratio | W_test (copy's) | W_train (test split's) | train s | steps | "
        "time to quality s | FD test / train (floor) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SETS:
        for variant in LABELS:
            rows = [r for r in results if r["set"] == name and r["variant"] == variant]
            if not rows:
                continue
            seeds = ", ".join(str(r["seed"]) for r in rows)
            fd = "-"
            if "fd_test" in rows[0]:
                fd = f"{statistics.median(r['fd_test'] for r in rows):.2f} / {statistics.median(r['fd_train'] for r in rows):.2f} ({statistics.median(r['fd_floor'] for r in rows):.2f})"
            ttq = "-"
            if name == "moons-50000" and variant != "forestflow":
                times = [r.get("time_to_quality") for r in rows]
                shown = ", ".join("-" if t is None else f"{t:.1f}" for t in times)
                ttq = (
                    f"{statistics.median([t for t in times if t is not None]):.1f}" if any(t is not None for t in times) else "-"
                ) + f" ({shown})"
            label = LABELS[variant]
            lines.append(
                f"| {name} | {label} (seeds {seeds}) | {_median(rows, 'copy_share')} ({statistics.median(r['copy_share_test'] for r in rows):.3f}) "
                f"| {_median(rows, 'dcr_ratio')} | {_median(rows, 'w_test')} ({statistics.median(r['w_test_test'] for r in rows):.3g}) "
                f"| {_median(rows, 'w_train')} ({statistics.median(r['w_train_test'] for r in rows):.3g}) | {_median(rows, 'train_seconds')} "
                f"| {_median(rows, 'steps_run', ',.0f') if 'steps_run' in rows[0] else '-'} | {ttq} | {fd} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memorisation", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--variants", default="before,after,forestflow")
    parser.add_argument("--out", default="memorisation", help="result file stem under bench/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    sets = [s for s in args.sets.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    RESULTS.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="flowmatch-bench-memo-"))
    json_path = RESULTS / f"{args.out}.json"
    results = json.loads(json_path.read_text()) if json_path.exists() else []
    for name in sets:
        for seed in seeds:  # the variants of a seed side by side, so that the machine's load is shared alike
            for variant in variants:
                if variant == "forestflow" and name not in TABLES:
                    continue
                started = time.perf_counter()
                row = run_forestflow(name, seed) if variant == "forestflow" else run_flowmatch(name, data_spec(name, folder), variant, seed)
                results = [r for r in results if (r["set"], r["variant"], r["seed"]) != (name, variant, seed)] + [row]
                json_path.write_text(json.dumps(results, indent=1, default=float) + "\n")
                print(
                    f"{name} {variant} seed {seed}: copy {row['copy_share']:.3f}, DCR {row['dcr_ratio']:.3f}, "
                    f"W_test {row['w_test']:.3f}, W_train {row['w_train']:.3f}, {row['train_seconds']:.1f} s "
                    f"({time.perf_counter() - started:.0f} s in all)",
                    flush=True,
                )
    text = table(results)
    print(text)
    (RESULTS / f"{args.out}.md").write_text(
        "Memorisation on finite data (python -m bench.memorisation); median [min, max] over seeds; every figure "
        f"the mean over {SAMPLE_SETS} sample sets.\n\n" + text + "\n"
    )


if __name__ == "__main__":
    main()
