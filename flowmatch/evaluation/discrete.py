"""Evaluating discrete flows: token sequences against held-out text, tables against their test split.

**Token sequences** (each figure beside its reference):

- the model's likelihood bound in bits per token on held-out windows
  (:meth:`~flowmatch.flows.discrete.DiscreteFlow.bits_per_token`), beside a character n-gram model
  (interpolated Kneser-Ney, :class:`~flowmatch.evaluation.text.NGramModel`) fitted on the training text
  and scored on the same held-out text;
- the n-gram statistics of generated sequences against held-out text (total variation of the n-gram
  frequencies, the share of n-grams the held-out text never has;
  :func:`~flowmatch.evaluation.text.ngram_report`), beside their floor (held-out text scored as if it were
  generated) and beside the n-gram model's own samples;
- memorisation: the share of the samples' 16-token stretches found verbatim in the training text, beside
  held-out text's own (:func:`~flowmatch.evaluation.text.copy_report`).

**Tables**: :func:`flowmatch.evaluation.tables.table_report` (per-column marginals, pairwise associations,
machine-learning efficiency, memorisation; each beside the test split's own), on ``draws`` generated sets
of the training split's size; a figure is the median over the draws, so the luck of one draw does not move it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

from flowmatch.errors import FlowmatchError

#: The reference n-gram model's order.
NGRAM_ORDER = 5


def evaluate_tokens(
    flow, data, *, quick: bool = False, n: int | None = None, nfe: int | None = None, temperature: float = 1.0,
    corrector: float = 0.0, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Bits per token (bound) against the n-gram model, and n-gram statistics against their floor."""
    from flowmatch.evaluation.text import NGramModel, ngram_report

    length, vocab = flow.length, data.vocab.size
    windows, labels = data.labelled_chunks(length, "test")
    if not len(windows):
        raise FlowmatchError(f"{data.name}: the test part has fewer tokens than one sequence ({length})")
    if quick and len(windows) > 48:  # an even spread over the test text (and its classes)
        keep = torch.linspace(0, len(windows) - 1, 48).long()
        windows, labels = windows[keep], None if labels is None else labels[keep]
    started = time.perf_counter()
    bound = flow.bits_per_token(windows, times=6 if quick else 16, seed=seed, label=labels)
    bound_seconds = time.perf_counter() - started
    ngram = NGramModel(order=NGRAM_ORDER, vocab_size=vocab).fit(data.train.numpy())
    scored = windows.reshape(-1).numpy()
    reference_bits = ngram.bits_per_token(scored)

    heldout = torch.cat([data.val, data.test]).numpy()
    n = n if n is not None else (16 if quick else 96)
    n = min(n, len(heldout) // (2 * length))
    if n < 1:
        raise FlowmatchError(f"{data.name}: the held-out text is too short for n-gram statistics of sequences of {length}")
    nfe = nfe if nfe is not None else (32 if quick else 128)
    started = time.perf_counter()
    classes = len(getattr(data, "classes", None) or [])  # a class-conditional run: as many samples of each class
    drawn = torch.arange(n) % classes if classes else None
    _, tokens = flow.generate(n, nfe=nfe, temperature=temperature, corrector=corrector, seed=seed, label=drawn)
    sample_seconds = time.perf_counter() - started
    stats = ngram_report(tokens.numpy(), heldout, seed=seed)
    ngram_samples = np.stack([ngram.sample(length, seed=seed + 1 + i) for i in range(n)])
    ngram_stats = ngram_report(ngram_samples, heldout, seed=seed)
    orders = {}
    for order, values in stats["orders"].items():
        orders[str(order)] = {
            "tv": {**values["tv"], "ngram_model": ngram_stats["orders"][order]["tv"]["value"]},
            "novel": {**values["novel"], "ngram_model": ngram_stats["orders"][order]["novel"]["value"]},
        }
    texts = flow.decode(None, tokens[:3])
    from flowmatch.evaluation.text import copy_report

    memorisation = copy_report(tokens.numpy(), data.train.numpy(), heldout)
    return {
        "kind": "tokens",
        "bits_per_token": {
            "value": bound, "ngram_model": reference_bits, "ngram_order": NGRAM_ORDER, "windows": len(windows),
            "tokens": int(windows.numel()), "note": "the flow's figure is an upper bound (ELBO); the n-gram model's is exact",
        },
        "ngram": {"orders": orders, "samples": n, "sample_tokens": stats["sample_tokens"], "reference_tokens": stats["reference_tokens"]},
        "sampler": {"nfe": nfe, "temperature": temperature, "corrector": corrector},
        "memorisation": memorisation,
        "examples": texts if isinstance(texts, list) else [" ".join(map(str, row)) for row in texts],
        "seconds": {"bound": bound_seconds, "sampling": sample_seconds},
    }  # fmt: skip


def evaluate_table(
    flow, data, *, quick: bool = False, draws: int | None = None, nfe: int | None = None, temperature: float = 1.0,
    corrector: float = 0.0, seed: int = 0, target: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """:func:`flowmatch.evaluation.tables.table_report` of ``draws`` generated sets (each the training split's
    size: the ML-efficiency model fits on as many rows as its real twin; a conditional table's drawn under the
    training rows' labels and conditions), the median of each figure."""
    from flowmatch.evaluation.tables import table_report

    draws = draws if draws is not None else (1 if quick else 3)
    nfe = nfe if nfe is not None else flow.DEFAULT_NFE
    rows = getattr(data, "conditions", {}).get("train", {})  # a conditional table: drawn under the training rows' conditions
    given = {name: rows[key] for name, key in (("label", "y"), ("condition", "c")) if key in rows}
    reports = []
    for k in range(draws):
        synthetic = flow.sample(len(data.train), nfe=nfe, temperature=temperature, corrector=corrector, seed=seed + 17 * k, **given)
        reports.append(table_report(synthetic, data.train, data.test, target=target, seed=seed))
    report = _median_report(reports)
    report.update(kind="table", draws=draws, sampler={"nfe": nfe, "temperature": temperature, "corrector": corrector})
    return report


def _median_report(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The reports' numbers replaced by their median (the same structure; other values from the first)."""
    first = reports[0]
    if isinstance(first, dict):
        return {k: _median_report([r[k] for r in reports]) for k in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return statistics.median(reports)
    return first


def format_token_report(report: dict[str, Any]) -> str:
    """A small table of a token report's figures beside their references."""
    b = report["bits_per_token"]
    lines = [
        f"{'figure':<28}{'model':>10}{'reference':>12}",
        f"{'bits per token (bound)':<28}{b['value']:>10.3f}{b['ngram_model']:>12.3f}   ({b['ngram_order']}-gram model fitted on the training text)",
    ]
    for order, values in report["ngram"]["orders"].items():
        for name in ("tv", "novel"):
            v = values[name]
            lines.append(
                f"{f'{order}-gram {name}':<28}{v['value']:>10.3f}{v['floor']:>12.3f}   (floor: held-out text; n-gram model {v['ngram_model']:.3f})"
            )
    memo = report.get("memorisation")
    if memo:
        share = memo["copied_share"]
        label = f"copied {memo['k']}-grams"
        lines.append(
            f"{label:<28}{share['value']:>10.3f}{share['heldout']:>12.3f}   (found in the training text; reference: held-out text)"
        )
    lines.append(f"sampler: NFE {report['sampler']['nfe']}, temperature {report['sampler']['temperature']}")
    lines.append(f"sample: {report['examples'][0][:160]!r}")
    return "\n".join(lines)


def format_table_run_report(report: dict[str, Any]) -> str:
    """A table report's figures beside the test split's own, and how they were drawn."""
    from flowmatch.evaluation.tables import format_table_report as figures

    return figures(report) + f"\n(median of {report.get('draws', 1)} generated sets, NFE {report['sampler']['nfe']})"
