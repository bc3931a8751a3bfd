"""Mixed-type tables: flowmatch against ForestFlow and a per-column independent baseline.

Sets, each a table with numeric and categorical columns that ships inside an installed package (nothing
is downloaded): ``tips`` (244 rows: 2 float, 1 integer, 4 categorical columns) and ``iris`` (150 rows: 4
float columns and the species) from plotly's bundled data, and scikit-learn's bundled ``wine`` (178 rows,
13 numeric columns and the class) and ``breast-cancer`` (569 rows, 30 numeric columns and the diagnosis),
with the class as a categorical column. Each is written to a CSV and read back through flowmatch's own
reader, as a user's file would be.

Systems, on the same training rows (flowmatch's split: 20% test, seeded):

- ``flowmatch``: ``flowmatch.fit(data=CSV)`` with kind table's defaults (the mixed MLP: numeric columns
  by continuous flow matching, categorical ones by discrete flow matching, one network and one time;
  validation split and early stop), sampled with the jump sampler at NFE 64;
- ``ForestFlow``: ``forestdiffusion``'s ForestDiffusionModel (flow, n_t 50, XGBoost), categorical columns
  as ``cat_indexes`` and integer columns as ``int_indexes``, on the same training rows (its own
  duplicate_K, 100, except breast-cancer: 20, to keep its training near 5 minutes on 2 cores);
- ``independent``: every column drawn on its own from the training rows (the per-column marginals kept,
  every dependence between columns lost);
- ``test split``: the real test rows scored as if generated (the reference of every figure).

Figures (:func:`flowmatch.evaluation.tables.table_report`), each the median over ``--draws`` generated
sets of the training split's size (the marginals and associations score as many rows as the reference half
of the test split has): the mean per-column W1 / std of the numeric columns and mean TV of the
categorical ones against the test split, the pairwise-association distance, the ML-efficiency gap (a
gradient-boosting model trained on generated rows against one trained on the real training rows, both
scored on the real test rows), the copy share (generated rows nearer to a training row than 95% of
real unseen rows are) and the training time.

Run ``python -m bench.tables [--sets tips,iris,wine,breast-cancer] [--seed 0] [--draws 3]``; writes
``bench/results/tables.md`` and ``tables.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"
SETS = ("tips", "iris", "wine", "breast-cancer")
FOREST_K = {"breast-cancer": 20}


def load_frame(name: str) -> pd.DataFrame:
    """A bench table as a DataFrame, from the package that ships it."""
    if name in ("tips", "iris"):
        import importlib.util

        spec = importlib.util.find_spec("plotly")
        if spec is None or spec.origin is None:
            raise SystemExit("bench.tables needs plotly (the bench extra) for its bundled tips and iris tables")
        with gzip.open(Path(spec.origin).parent / "package_data" / "datasets" / f"{name}.csv.gz", "rt") as fh:
            frame = pd.read_csv(fh)
        return frame.drop(columns=["species_id"]) if name == "iris" else frame
    from sklearn.datasets import load_breast_cancer, load_wine

    bunch = load_wine() if name == "wine" else load_breast_cancer()
    frame = pd.DataFrame(bunch.data, columns=[c.replace(" ", "_").replace("/", "_") for c in bunch.feature_names])
    frame["class"] = [str(bunch.target_names[k]) for k in bunch.target]
    return frame


def run_flowmatch(csv: Path, seed: int, draws: int):
    import flowmatch

    started = time.perf_counter()
    result, _ = flowmatch.fit(data=str(csv), seed=seed, progress=False, evaluate=False)
    seconds = time.perf_counter() - started
    data = result.data
    sets = [result.flow.sample(len(data.train), nfe=64, seed=seed + 100 + k) for k in range(draws)]
    return data, sets, seconds, {"steps": result.step, "best_step": (result.validation or {}).get("best_step")}


def run_forestflow(data, seed: int, draws: int, k: int):
    from ForestDiffusion import ForestDiffusionModel

    if not getattr(ForestDiffusionModel.clip_extremes, "_writable", False):
        # forestdiffusion 1.0.6 rounds integer columns in place on an array that pandas 3 hands back
        # read-only ("assignment destination is read-only"); give it a writable copy, nothing else changes.
        clip = ForestDiffusionModel.clip_extremes

        def clip_writable(self, X):
            return clip(self, np.array(X, copy=True))

        clip_writable._writable = True  # type: ignore[attr-defined]
        ForestDiffusionModel.clip_extremes = clip_writable

    columns = list(data.train.columns)
    categorical = [j for j, c in enumerate(columns) if not pd.api.types.is_numeric_dtype(data.train[c].dtype)]
    integer = [j for j, c in enumerate(columns) if pd.api.types.is_integer_dtype(data.train[c].dtype)]
    codes = {c: sorted(data.frame[c].dropna().astype(str).unique()) for c in (columns[j] for j in categorical)}
    matrix = np.column_stack(
        [
            data.train[c].astype(object).map({v: float(i) for i, v in enumerate(codes[c])}).astype(float)
            if c in codes
            else data.train[c].astype(float)
            for c in columns
        ]
    )
    started = time.perf_counter()
    model = ForestDiffusionModel(
        matrix, n_t=50, duplicate_K=k, diffusion_type="flow", cat_indexes=categorical, int_indexes=integer,
        n_jobs=int(os.environ.get("FORESTFLOW_JOBS", "2")), seed=seed,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    sets = []
    for d in range(draws):
        np.random.seed(seed + 100 + d)
        rows = model.generate(batch_size=len(data.train))
        frame = pd.DataFrame({c: rows[:, j] for j, c in enumerate(columns)})
        for c, values in codes.items():
            frame[c] = [values[int(np.clip(round(v), 0, len(values) - 1))] if np.isfinite(v) else None for v in frame[c]]
        for j in integer:
            frame[columns[j]] = np.round(frame[columns[j]]).astype(data.train[columns[j]].dtype)
        sets.append(frame)
    return sets, seconds


def run_independent(data, seed: int, draws: int):
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    sets = [
        pd.DataFrame({c: data.train[c].to_numpy()[rng.integers(len(data.train), size=len(data.train))] for c in data.train.columns}).astype(
            data.train.dtypes.to_dict()
        )
        for _ in range(draws)
    ]
    return sets, time.perf_counter() - started


def score(sets, data, seed: int) -> dict:
    from flowmatch.evaluation.tables import table_report

    reports = [table_report(frame, data.train, data.test, seed=seed) for frame in sets]

    def median(get):
        values = [get(r) for r in reports]
        values = [v for v in values if v is not None and np.isfinite(v)]
        return statistics.median(values) if values else None

    return {
        "w1": median(lambda r: r["marginals"]["mean_w1"]["value"]),
        "w1_test": median(lambda r: r["marginals"]["mean_w1"]["reference"]),
        "tv": median(lambda r: r["marginals"]["mean_tv"]["value"]),
        "tv_test": median(lambda r: r["marginals"]["mean_tv"]["reference"]),
        "assoc": median(lambda r: r["associations"]["value"]),
        "assoc_test": median(lambda r: r["associations"]["reference"]),
        "ml_gap": median(lambda r: r["ml_efficiency"]["gap"]),
        "ml_metric": reports[0]["ml_efficiency"]["metric"],
        "ml_real": median(lambda r: r["ml_efficiency"]["real"]),
        "copy": median(lambda r: r["memorisation"]["copy_share"]["value"]),
        "copy_test": median(lambda r: r["memorisation"]["copy_share"]["reference"]),
        "dcr": median(lambda r: r["memorisation"]["dcr_ratio"]["value"]),
    }


def _f(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    out = [
        "| set | system | mean W1 / std (test split's) | mean TV (test split's) | association dist. (test split's) "
        "| ML gap (real score) | copy share (test split's) | DCR ratio | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['set']} | {r['system']} | {_f(r['w1'])} ({_f(r['w1_test'])}) | {_f(r['tv'])} ({_f(r['tv_test'])}) "
            f"| {_f(r['assoc'])} ({_f(r['assoc_test'])}) | {_f(r['ml_gap'])} ({r['ml_metric']} {_f(r['ml_real'])}) "
            f"| {_f(r['copy'])} ({_f(r['copy_test'])}) | {_f(r['dcr'], '.2f')} | {_f(r['seconds'], '.1f')} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tables", description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--systems", default="flowmatch,forestflow,independent")
    parser.add_argument("--out", default="tables")
    parser.add_argument(
        "--keep-from", help="an earlier run's JSON: its rows of the systems not run now (same sets, seed and draws) are kept, so "
        "flowmatch can be rerun without rerunning ForestFlow's 40 minutes"
    )  # fmt: skip
    args = parser.parse_args(argv)
    systems = args.systems.split(",")
    kept = json.loads(Path(args.keep_from).read_text()) if args.keep_from else []
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.sets.split(","):
            csv = Path(folder) / f"{name}.csv"
            load_frame(name).to_csv(csv, index=False)
            data, sets, seconds, extra = run_flowmatch(csv, args.seed, args.draws)
            found = {"flowmatch": (sets, seconds)}
            if "forestflow" in systems:
                found["ForestFlow"] = run_forestflow(data, args.seed, args.draws, FOREST_K.get(name, 100))
            if "independent" in systems:
                found["independent"] = run_independent(data, args.seed, args.draws)
            for system, (generated, secs) in found.items():
                row = {
                    "set": name,
                    "system": system,
                    "seconds": secs,
                    "rows": [len(data.train), 0 if data.val is None else len(data.val), len(data.test)],
                }
                row.update(score(generated, data, args.seed))
                if system == "flowmatch":
                    row.update(extra)
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
            for row in kept:
                if row["set"] == name and row["system"] not in found and row["system"].lower() not in systems:
                    rows.append({**row, "system": row["system"].removesuffix(" (earlier run)") + " (earlier run)"})
    text = (
        f"Mixed-type tables (python -m bench.tables, seed {args.seed}); every figure the median over {args.draws} generated sets "
        "of the training split's size, scored against the test split; in brackets the test split's own figure (its halves "
        "against each other) or, for the ML gap, the real-data model's score.\n\n" + table(rows) + "\n"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(text)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
