"""What token sequences and tables share: one step of discrete flow matching on the mixture path.

Each step draws a batch of data (windows of ``seq_len`` tokens, or table rows), times t
(:func:`flowmatch.engine.schedules.sample_times`: uniform and stratified by default), the tokens' x_t from the
mixture path p_t(x | x1) and, for a table, the numeric features' x_t = t x1 + (1 - t) x0 with x0 ~ N(0, I).
The loss (:func:`flowmatch.discrete.losses.mixed_loss`) is

    L = E || v_theta(x_t, tokens_t, t) - (x1 - x0) ||^2  +  L_discrete(logits_theta(x_t, tokens_t, t), x1 tokens)

with L_discrete the cross-entropy or the generalized KL; one network, one time. The validation loss is the
same on fixed held-out draws (:data:`VAL_ITEMS` windows or rows, their times and x_t drawn once).
"""

from __future__ import annotations

from typing import Any

import torch

from flowmatch.conditions import drop
from flowmatch.discrete.losses import mixed_loss
from flowmatch.discrete.paths import MixturePath
from flowmatch.discrete.schedulers import make_scheduler
from flowmatch.engine.schedules import batch_size_at, sample_times
from flowmatch.engine.seam import Task

#: Held-out windows (tokens) or rows (tables) the validation loss is computed on.
VAL_ITEMS = 256


#: The validation draws' seed: the run's seed + this.
VALIDATION_SEED = 1


def make_scheduler_of(config: Any):
    options = {"exponent": config.scheduler_exponent} if config.scheduler == "polynomial" else {}
    return make_scheduler(config.scheduler, **options)


class MixtureTask(Task):
    """A run on the mixture path; a modality gives its data draws (:meth:`draw`), the network's call
    (:meth:`predict`), its held-out batch (:meth:`held_out`) and the conditions its model takes
    (``conditions``: class labels ``y``, float covariates ``c``; each row's dropped with probability
    ``cond_dropout`` for classifier-free guidance)."""

    path: MixturePath
    config: Any
    conditions: dict[str, dict[str, int]] = {}

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, torch.Tensor]]:
        """n training items: (continuous features (n, D) or None, tokens (n, L), their conditions)."""
        raise NotImplementedError

    def held_out(self, generator: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, torch.Tensor]] | None:
        """The validation items (at most VAL_ITEMS) and their conditions, or None without a validation split."""
        raise NotImplementedError

    def predict(self, net, x: torch.Tensor | None, tokens: torch.Tensor, t: torch.Tensor, **condition):
        """(velocity of x or None, logits) of ``net``."""
        raise NotImplementedError

    def setup_validation(self, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(self.config.seed + VALIDATION_SEED)
        items = self.held_out(generator)
        if items is None:
            return
        x1, tokens, condition = items
        x_t, target, tokens1, tokens_t, t = (None if v is None else v.to(device) for v in self.corrupt(x1, tokens, generator))
        given = {k: v.to(device) for k, v in condition.items()}

        def validation(model) -> float:
            return float(self.loss_of(model, x_t, target, tokens1, tokens_t, t, given, autocast=None))

        self.validation = validation

    def corrupt(self, x1: torch.Tensor | None, tokens1: torch.Tensor, generator: torch.Generator):
        """(x_t, target, tokens1, tokens_t, t) of a batch: times, the mixture path's draw, the straight path's noise."""
        t = sample_times(self.config, len(tokens1), generator)
        tokens_t = self.path.corrupt(tokens1, t, generator)
        x_t = target = None
        if x1 is not None and x1.shape[1]:
            x0 = torch.randn(x1.shape, generator=generator)
            tt = t[:, None]
            x_t, target = tt * x1 + (1 - tt) * x0, x1 - x0
        return x_t, target, tokens1, tokens_t, t

    def loss_of(self, net, x_t, target, tokens1, tokens_t, t, condition, *, autocast) -> torch.Tensor:
        device = tokens_t.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast is not None):
            velocity, logits = self.predict(net, x_t, tokens_t, t, **condition)
        return mixed_loss(velocity, logits, target, tokens1, tokens_t, t, self.path, self.config.discrete_loss)

    def objective(self, net, model, *, device, world, rank, autocast):
        config = self.config

        def loss(step: int, generator: torch.Generator) -> torch.Tensor:
            size = batch_size_at(config, step)
            x1, tokens, condition = self.draw(size * world, generator)
            batch = self.corrupt(x1, tokens, generator)
            condition = drop(condition, self.conditions, config.cond_dropout, generator)
            shard = slice(rank * size, (rank + 1) * size)
            x_t, target, tokens1, tokens_t, t = (None if v is None else v[shard].to(device) for v in batch)
            given = {k: v[shard].to(device) for k, v in condition.items()}
            value = self.loss_of(net, x_t, target, tokens1, tokens_t, t, given, autocast=autocast)
            return value

        return loss


def evaluation_options(options: dict[str, Any], counts: tuple[str, ...]) -> dict[str, Any]:
    """``eval``'s options for a tokens or table evaluation: ``counts`` positive integers where given, ``seed`` a
    non-negative integer, and without the engine's ``progress`` and ``pictures`` (neither draws pictures)."""
    from flowmatch.errors import FlowmatchError

    options = {k: v for k, v in options.items() if k not in ("progress", "pictures")}
    for name in counts:
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise FlowmatchError(f"{name} must be a positive integer, got {value!r}")
    seed = options.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FlowmatchError(f"seed must be a non-negative integer, got {seed!r}")
    return options


def keep_report(run_dir: Any, report: dict[str, Any]) -> dict[str, Any]:
    """``report``, written to the run folder's report.json where there is one."""
    if run_dir is not None:
        from pathlib import Path

        from flowmatch.storage import write_json

        write_json(Path(run_dir) / "report.json", report)
    return report
