"""Conditions change what is generated: class-conditional tables and text, scored by classifiers of real data.

- **Tables** (``tips``, plotly's bundled table of 244 rows: 2 float, 1 integer and 4 categorical columns;
  shuffled and split 80/20 with the seed), conditioned on its ``time`` (lunch or dinner) and, in a second run,
  on its ``day``: ``flowmatch.fit(data=frame, label_column=..., conditional=True)`` at kind table's defaults.
  For each class, 300 rows sampled with ``label=`` at guidance 1 and 2, and 300 rows drawn without a label. A
  gradient-boosting classifier trained on the real training rows (its accuracy on the real test rows beside)
  names each generated row's class from its other columns alone: the share named as the requested class, and
  for the unlabelled rows the share of each class (the data's own shares are what an unconditional model should
  give).
- **Text**: two classes of Python's own text, prose (``pydoc_data.topics``, the help topics) and code (the
  source of 30 standard-library modules), ``fit(data={"x": texts, "labels": classes}, kind="tokens",
  conditional=True)`` at kind tokens' defaults but ``--steps`` (default 1,500). 96 windows sampled per class at
  guidance 1 and 2 (NFE 64), and 96 without a label. Each is named prose or code by two 5-gram Kneser-Ney
  models, one fitted on each class's training text (the larger likelihood wins; on held-out windows of the
  real text this names the right class for the share printed as "real"). The bits per character of the
  samples under their own class's model are printed beside.

Run ``python -m bench.conditions [--steps 1500] [--seed 0]``; writes ``bench/results/conditions.{md,json}``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import platform
import time

import numpy as np
import pandas as pd
import torch

import flowmatch
from bench import write_results

CODE_MODULES = (
    "argparse", "ast", "base64", "calendar", "collections", "configparser", "csv", "dataclasses", "difflib", "email.message",
    "enum", "fractions", "functools", "gettext", "heapq", "inspect", "ipaddress", "json.decoder", "logging", "pathlib",
    "pprint", "queue", "random", "shutil", "statistics", "string", "tarfile", "textwrap", "typing", "zipfile",
)  # fmt: skip
SAMPLES, WINDOWS = 300, 96


def features_of(frame: pd.DataFrame, label: str, columns: list[str] | None = None) -> pd.DataFrame:
    """The rows' other columns as numbers (categories one-hot), in the given column order."""
    encoded = pd.get_dummies(frame.drop(columns=[label]), dtype=float)
    return encoded if columns is None else encoded.reindex(columns=columns, fill_value=0.0)


def run_table(label: str, seed: int) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier

    from bench.tables import load_frame

    frame = load_frame("tips").sample(frac=1.0, random_state=seed).reset_index(drop=True)
    cut = int(0.8 * len(frame))
    train, test = frame[:cut], frame[cut:]
    columns = list(features_of(train, label).columns)
    classifier = HistGradientBoostingClassifier(random_state=seed).fit(features_of(train, label), train[label].astype(str))
    started = time.perf_counter()
    flow = flowmatch.fit(data=train, label_column=label, conditional=True, seed=seed, progress=False, evaluate=False)[0].flow
    seconds = time.perf_counter() - started
    classes = [str(c) for c in flow.given["classes"]]  # label k is class classes[k]
    accuracy = float((classifier.predict(features_of(test, label, columns)) == test[label].astype(str)).mean())
    row: dict = {
        "set": f"tips, label {label}",
        "rows": len(train),
        "classes": classes,
        "train_s": seconds,
        "classifier_test_accuracy": accuracy,
    }
    for guidance in (1.0, 2.0):
        hits = {}
        for k, c in enumerate(classes):
            samples = flow.sample(SAMPLES, label=k, guidance=guidance, seed=seed + 1 + k)
            hits[c] = {
                "named_as_asked": float((classifier.predict(features_of(samples, label, columns)) == c).mean()),
                "label_column_holds_the_asked_class": set(samples[label].astype(str)) == {c},
            }
        row[f"guidance {guidance:g}"] = hits
    free = flow.sample(SAMPLES, seed=seed + 100)
    named = pd.Series(classifier.predict(features_of(free, label, columns))).value_counts(normalize=True)
    row["unlabelled"] = {c: float(named.get(c, 0.0)) for c in classes}
    row["data_shares"] = {c: float((train[label].astype(str) == c).mean()) for c in classes}
    return row


def code_text() -> str:
    return "\n\n".join(inspect.getsource(importlib.import_module(name)) for name in CODE_MODULES)


def prose_text() -> str:
    import pydoc_data.topics

    return "\n\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))


def run_text(steps: int, seed: int) -> dict:
    from flowmatch.evaluation.text import NGramModel

    texts = {"prose": prose_text(), "code": code_text()}
    length = min(len(t) for t in texts.values())  # the same amount of each class
    cut = int(0.9 * length)
    train = {c: t[:cut] for c, t in texts.items()}
    heldout = {c: t[cut:length] for c, t in texts.items()}
    started = time.perf_counter()
    fitted, _ = flowmatch.fit(data={"x": list(train.values()), "labels": list(train)}, kind="tokens", conditional=True, steps=steps,
                           seed=seed, progress=False, evaluate=False)  # fmt: skip
    seconds = time.perf_counter() - started
    flow = fitted.flow
    codec = flow.codec
    known = set(codec.chars)
    encode = lambda s: codec.encode("".join(ch for ch in s if ch in known))  # noqa: E731  (held-out text may hold a new character)
    models = {c: NGramModel(5, vocab_size=codec.size).fit(encode(t)) for c, t in train.items()}

    def name_of(window: str) -> tuple[str, dict]:
        bits = {c: float(m.bits_per_token(encode(window))) for c, m in models.items()}
        return min(bits, key=bits.get), bits

    length_w = flow.length
    real = {}
    for c, t in heldout.items():
        starts = np.linspace(0, len(t) - length_w - 1, WINDOWS).astype(int)
        real[c] = float(np.mean([name_of(t[s : s + length_w])[0] == c for s in starts]))
    row: dict = {"train_s": seconds, "steps": steps, "characters_per_class": cut, "real_named_right": real}
    classes = list(flow.given["classes"])  # label k is class classes[k]
    examples = {}
    for guidance in (1.0, 2.0):
        hits = {}
        for k, c in enumerate(classes):
            samples = flow.sample(WINDOWS, label=k, guidance=guidance, nfe=64, seed=seed + 1 + k)
            named = [name_of(s) for s in samples]
            hits[c] = {
                "named_as_asked": float(np.mean([n == c for n, _ in named])),
                "bits_own_model": float(np.mean([b[c] for _, b in named])),
            }
            examples[f"{c}, guidance {guidance:g}"] = samples[:2]
        row[f"guidance {guidance:g}"] = hits
    free = flow.sample(WINDOWS, nfe=64, seed=seed + 100)
    row["unlabelled"] = {c: float(np.mean([name_of(s)[0] == c for s in free])) for c in classes}
    row["examples"] = examples
    return row


def markdown(result: dict) -> str:
    lines = [
        f"### Conditions change what is generated (`python -m bench.conditions`, {result['date']}, seed {result['seed']}; "
        f"{result['machine']}, torch {torch.__version__})",
        "",
        "#### Tables: share of generated rows that a classifier of real rows names as the requested class",
        "",
        "| set | classifier on real test rows | class | guidance 1 | guidance 2 | unlabelled rows named so | data's share | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["tables"]:
        for c in row["classes"]:
            lines.append(
                f"| {row['set']} | {row['classifier_test_accuracy']:.3f} | {c} | {row['guidance 1'][c]['named_as_asked']:.3f} "
                f"| {row['guidance 2'][c]['named_as_asked']:.3f} | {row['unlabelled'][c]:.3f} | {row['data_shares'][c]:.3f} | {row['train_s']:.1f} |"
            )
    every = all(
        h["label_column_holds_the_asked_class"] for row in result["tables"] for g in ("guidance 1", "guidance 2") for h in row[g].values()
    )
    lines += ["", f"The label column of every guided sample holds the requested class: {'yes' if every else 'NO'}.", ""]
    text = result["text"]
    lines += [
        f"#### Text: prose (pydoc topics) and code (30 standard-library modules), {text['characters_per_class']:,} characters of each, "
        f"{text['steps']} steps ({text['train_s'] / 60:.1f} min)",
        "",
        "Share of 64-character samples that the two classes' 5-gram models name as the requested class (real held-out "
        f"windows: prose {text['real_named_right']['prose']:.3f}, code {text['real_named_right']['code']:.3f}), and their bits per "
        "character under the requested class's model:",
        "",
        "| class | guidance 1 | bits | guidance 2 | bits | unlabelled samples named so |",
        "|---|---|---|---|---|---|",
    ]
    for c in ("prose", "code"):
        g1, g2 = text["guidance 1"][c], text["guidance 2"][c]
        lines.append(
            f"| {c} | {g1['named_as_asked']:.3f} | {g1['bits_own_model']:.2f} | {g2['named_as_asked']:.3f} | {g2['bits_own_model']:.2f} "
            f"| {text['unlabelled'][c]:.3f} |"
        )
    lines += ["", "Samples:", ""]
    for key, samples in text["examples"].items():
        for s in samples:
            lines.append(f"    {key}: {s!r}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.conditions", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="training steps of the text run (default: 1500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="conditions", help="result file stem under bench/results (default: conditions)")
    args = parser.parse_args(argv)
    result = {
        "date": time.strftime("%Y-%m-%d"), "seed": args.seed, "machine": platform.processor() or platform.machine(),
        "tables": [run_table(label, args.seed) for label in ("time", "day")],
        "text": run_text(args.steps, args.seed),
    }  # fmt: skip
    write_results(args.out, result, markdown(result))


if __name__ == "__main__":
    main()
