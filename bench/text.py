"""Character-level discrete flow matching on the built-in corpus: bits per character against an n-gram
model, and the jump sampler's NFE / quality curve.

Trains ``flowmatch train --data pydoc`` (kind tokens' defaults: 2 convolutions and 2 attention blocks, 5,000 steps on
windows of 64 characters; about 12 minutes on 2 CPU cores) unless ``--run`` names a finished run, then:

- the likelihood bound in bits per character on every held-out test window, beside 5-gram (and 3-gram)
  Kneser-Ney models fitted on the training text and scored on the same characters;
- for NFE in ``--nfe`` (with and without the corrector): 192 generated sequences scored by the n-gram
  statistics against held-out text (TV of 2-, 3- and 4-gram frequencies and the share of 4-grams held-out
  text never has), each beside its floor (as many held-out windows scored the same way), and the
  samples' cross-entropy under the 5-gram model (how much the samples read like the training text; the
  held-out text's own is the reference), with the sampling time.

Run ``python -m bench.text [--run runs/pydoc]``; writes ``bench/results/text.md``, ``text.json`` and
``text-nfe.png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
NFES = (4, 8, 16, 32, 64, 128, 256)
SAMPLES = 192


def main(argv: list[str] | None = None) -> None:
    import flowmatch
    from flowmatch.evaluation.text import NGramModel, ngram_report
    from flowmatch.modalities.tokens.modality import token_data_of

    parser = argparse.ArgumentParser(prog="python -m bench.text", description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/pydoc", help="a finished pydoc run (trained here if missing)")
    parser.add_argument("--nfe", default=",".join(map(str, NFES)))
    parser.add_argument("--corrector", type=float, default=1.0, help="alpha of the corrected sampler's rows")
    parser.add_argument("--seed", type=int, default=0, help="the training seed of a run trained here (default: 0)")
    parser.add_argument("--out", default="text", help="result file stem under bench/results (default: text)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not (run / "checkpoint.safetensors").is_file():
        train = [sys.executable, "-m", "flowmatch", "train", "--data", "pydoc", "--out", str(run), "--force", "--seed", str(args.seed)]
        subprocess.run(train, check=True)
    flow = flowmatch.load(run)
    data = token_data_of(flow)
    metrics = json.loads((run / "metrics.json").read_text())
    windows = data.chunks(flow.length, "test")
    started = time.perf_counter()
    bound = flow.bits_per_token(windows, times=32, seed=0)
    bound_seconds = time.perf_counter() - started
    train = data.train.numpy()
    scored = windows.reshape(-1).numpy()
    ngram = {order: NGramModel(order=order, vocab_size=data.vocab.size).fit(train) for order in (3, 5)}
    reference = {order: model.bits_per_token(scored) for order, model in ngram.items()}

    heldout = torch.cat([data.val, data.test]).numpy()
    held_windows = data.chunks(flow.length, "val")[:SAMPLES].numpy()
    held_ce = float(np.mean([-ngram[5].log2_prob(w).mean() for w in held_windows]))
    rows = []
    for alpha in (0.0, args.corrector):
        for nfe in map(int, args.nfe.split(",")):
            started = time.perf_counter()
            _, tokens = flow.generate(SAMPLES, nfe=nfe, corrector=alpha, seed=1)
            seconds = time.perf_counter() - started
            stats = ngram_report(tokens.numpy(), heldout, orders=(2, 3, 4), seed=0)["orders"]
            ce = float(np.mean([-ngram[5].log2_prob(w).mean() for w in tokens.numpy()]))
            rows.append(
                {
                    "nfe": nfe, "corrector": alpha, "seconds": seconds, "ngram_ce": ce, "ngram_ce_heldout": held_ce,
                    **{f"tv{n}": stats[n]["tv"]["value"] for n in (2, 3, 4)}, **{f"tv{n}_floor": stats[n]["tv"]["floor"] for n in (2, 3, 4)},
                    "novel4": stats[4]["novel"]["value"], "novel4_floor": stats[4]["novel"]["floor"],
                }
            )  # fmt: skip
            print(rows[-1], flush=True)
    examples = flow.sample(3, nfe=256, seed=2)
    result = {
        "run": str(run), "train_seconds": metrics["train_seconds"], "steps": metrics["steps_run"],
        "bits_per_char_bound": bound, "bound_seconds": bound_seconds, "test_chars": int(windows.numel()),
        "ngram_bits_per_char": reference, "curve": rows, "examples": examples,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.out}.md").write_text(markdown(result))
    picture(rows, RESULTS / f"{args.out}-nfe.png")
    print(markdown(result))


def markdown(r: dict) -> str:
    lines = [
        f"Character-level discrete flow matching on pydoc (python -m bench.text): {r['steps']} steps, {r['train_seconds'] / 60:.1f} min "
        "of training on 2 CPU cores.",
        "",
        "| model | bits per character on the test windows |",
        "|---|---|",
        f"| flowmatch transformer (likelihood bound, an upper bound) | {r['bits_per_char_bound']:.3f} |",
        *[
            f"| {order}-gram Kneser-Ney fitted on the training text (exact) | {v:.3f} |"
            for order, v in sorted(r["ngram_bits_per_char"].items())
        ],
        "",
        f"Jump sampler, {SAMPLES} sequences: n-gram statistics against held-out text (floor: held-out windows), and the samples' "
        "cross-entropy under the 5-gram model (held-out text's own in the header).",
        "",
        f"| NFE | corrector | 2-gram TV (floor) | 3-gram TV (floor) | 4-gram TV (floor) | novel 4-grams (floor) | 5-gram CE, bits "
        f"(held-out {r['curve'][0]['ngram_ce_heldout']:.2f}) | sampling s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in r["curve"]:
        lines.append(
            f"| {c['nfe']} | {c['corrector']:g} | {c['tv2']:.3f} ({c['tv2_floor']:.3f}) | {c['tv3']:.3f} ({c['tv3_floor']:.3f}) | "
            f"{c['tv4']:.3f} ({c['tv4_floor']:.3f}) | {c['novel4']:.3f} ({c['novel4_floor']:.3f}) | {c['ngram_ce']:.2f} | {c['seconds']:.1f} |"
        )
    lines += ["", "Samples (NFE 256):", ""] + [f"    {text!r}" for text in r["examples"]]
    return "\n".join(lines) + "\n"


def picture(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for alpha, style in zip(sorted({r["corrector"] for r in rows}), ("o-", "s--")):
        part = [r for r in rows if r["corrector"] == alpha]
        nfe = [r["nfe"] for r in part]
        for n, color in zip((2, 3, 4), ("tab:blue", "tab:orange", "tab:green")):
            axes[0].plot(nfe, [r[f"tv{n}"] for r in part], style, color=color, label=f"{n}-gram, corrector {alpha:g}")
        axes[1].plot(nfe, [r["ngram_ce"] for r in part], style, color="tab:purple", label=f"samples, corrector {alpha:g}")
    for n, color in zip((2, 3, 4), ("tab:blue", "tab:orange", "tab:green")):
        axes[0].axhline(rows[0][f"tv{n}_floor"], color=color, linestyle=":", linewidth=1)
    axes[1].axhline(rows[0]["ngram_ce_heldout"], color="black", linestyle=":", label="held-out text")
    axes[0].set(xscale="log", xlabel="NFE (jump steps)", ylabel="TV to held-out n-grams", title="n-gram TV (dotted: floor)")
    axes[1].set(xscale="log", xlabel="NFE (jump steps)", ylabel="bits per character", title="cross-entropy under the 5-gram model")
    axes[0].legend(fontsize=6)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
