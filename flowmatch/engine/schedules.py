"""Per-step schedules: the batch size (with its warm-up), the learning rate and the training times."""

from __future__ import annotations

import math

import torch

from flowmatch import losses as losses_module
from flowmatch.engine.options import EngineOptions


def batch_size_at(config: EngineOptions, step: int) -> int:
    """The batch of step ``step`` (0-based): batch_size, or during the first ``batch_warmup`` steps
    a linear ramp b_k = b/2 + (b/2) k / K from half of it, rounded down to a multiple of 8 (so the
    matmul kernels see a few shapes, not one per step); a batch under 16 does not ramp."""
    full = config.batch_size
    if step >= config.batch_warmup or full < 16:
        return full
    start = full // 2
    return max(start, (start + (full - start) * step // config.batch_warmup) // 8 * 8)


def learning_rate(config: EngineOptions, step: int) -> float:
    """Linear warm-up to ``lr``, then constant or cosine decay to zero at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    if config.lr_schedule == "constant":
        return config.lr
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def sample_times(config: EngineOptions, n: int, generator: torch.Generator) -> torch.Tensor:
    """A batch's training times as the config asks (:func:`flowmatch.losses.sample_times`): uniform or
    logit-normal (``time_loc``, ``time_scale``), stratified in ``time_strata``, shifted by ``time_shift``."""
    return losses_module.sample_times(
        n, generator, distribution=config.time_sampling, strata=config.time_strata,
        loc=config.time_loc, scale=config.time_scale, shift=config.time_shift,
    )  # fmt: skip
