"""The options of token sequences (discrete flow matching), beside the engine's (:mod:`flowmatch.engine.options`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowmatch.engine.options import option

KIND = "tokens"


@dataclass
class TokenOptions:
    """The sequences' length, the transformer's heads, the mixture path's source and the discrete loss (the
    last two are read by tables too)."""

    seq_len: int = option(128, "tokens per training sequence (kind tokens)", low=2)
    heads: int = option(4, "attention heads (transformer)", low=1)
    discrete_source: str = option(
        "mask",
        "source of the discrete mixture path (tokens, table): an absorbing mask token or uniform tokens",
        choices=("mask", "uniform"),
    )
    discrete_loss: str = option("cross-entropy", "loss of the discrete part (tokens, table)", choices=("cross-entropy", "generalized-kl"))


#: Defaults of a tokens run: its network and batches, under a preset, a config file and flags.
DEFAULTS: dict[str, Any] = {
    # a time per row, drawn on its own: the recipe bench.text measured (bench/results/text.md); the engine's
    # stratified times (time_strata 32) are untried on text and moved the table figures both ways, so the
    # measured recipe stays the default until a benchmark says otherwise
    "time_strata": 0,
    "model": "transformer",
    "width": 128,
    "depth": 2,
    "batch_size": 64,
    "batch_warmup": 0,
    "lr": 1e-3,
    "warmup": 200,
    "grad_clip": 1.0,
    "steps": 5000,
    "seq_len": 64,
    "val_every": 250,
    "early_stop": 0,
    "ema": 0.999,
}


def defaults_for(given: dict[str, Any]) -> dict[str, Any]:
    """:data:`DEFAULTS`, with a warm-up of at most a tenth of the given steps."""
    values = dict(DEFAULTS)
    if "steps" in given:
        values["warmup"] = min(values["warmup"], int(given["steps"]) // 10)
    return values


def claims(config: Any, data: Any) -> bool:
    """kind auto: a built-in corpus or a .txt file by name; strings given in Python."""
    if data is not None:
        return isinstance(data, (list, tuple)) and len(data) > 0 and all(isinstance(s, str) for s in data)
    from flowmatch.data.tokens import is_token_data

    return is_token_data(config.data)
