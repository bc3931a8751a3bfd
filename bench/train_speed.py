"""Training speed: optimiser steps per second of flowmatch's loop and the seed document's loop.

Side by side in one run, same machine: the seed loop (its own code, bench/seed_recipe.py), flowmatch
with the seed's network (``--preset seed``, float32 as the seed trains) and flowmatch's default model (its
default precision ``auto``, bf16 on a CPU with bf16 units, and again in fp32), at batch 128 and 4,096.
Run ``python -m bench.train_speed``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from pathlib import Path

import torch

from bench.seed_recipe import train_seed
from flowmatch.api import train
from flowmatch.config import TrainConfig, resolve_config
from flowmatch.engine.devices import resolve_precision

RESULTS = Path(__file__).parent / "results"


def _flowmatch_rate(config: TrainConfig) -> float:
    result = train(config, progress=False)
    return config.steps / result.seconds


def measure(batch: int, steps: int) -> dict[str, float]:
    train_seed(steps=20, batch_size=batch)  # warm-up
    _, seconds = train_seed(steps=steps, batch_size=batch)
    seed_loop = steps / seconds
    seedlike = resolve_config("seed", {"steps": steps, "batch_size": batch, "device": "cpu"})
    default = TrainConfig(steps=steps, batch_size=batch, batch_warmup=0, device="cpu")  # this batch from the first step
    precision = resolve_precision("auto", torch.device("cpu"))
    return {
        "seed loop (its MLP)": seed_loop,
        "flowmatch, seed MLP": _flowmatch_rate(seedlike),
        f"flowmatch, default MLP ({precision})": _flowmatch_rate(default),
        "flowmatch, default MLP (fp32)": _flowmatch_rate(dataclasses.replace(default, precision="fp32")),
    }


def main() -> None:
    rows = {128: measure(128, 1500), 4096: measure(4096, 150)}
    systems = list(rows[128])
    lines = [
        f"Training steps/s on {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "",
        "| system | batch 128 | batch 4,096 |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {rows[128][name]:.0f} | {rows[4096][name]:.1f} |" for name in systems]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_speed.md").write_text(table + "\n")
    (RESULTS / "train_speed.json").write_text(json.dumps({str(k): v for k, v in rows.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
