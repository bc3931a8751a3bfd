"""The validation loss of a run, and the weights where it was lowest.

A modality gives the engine the held-out loss of a set of weights (:attr:`flowmatch.engine.seam.Task.validation`):
the training loss on fixed held-out draws (rows, noise, times, all drawn once with a seed of their own), so
that values at different steps differ by the weights alone. It falls while the model learns the distribution
and rises once the model starts to reproduce its training rows. ``select = val-loss`` keeps the weights of
its minimum, and ``early_stop`` ends a run whose minimum is far enough behind.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch


class Validation:
    """Scores eval-mode weights with ``loss`` and keeps the best (:meth:`update`); a checkpoint saves and
    restores ``best_loss``, ``best_step`` and ``best_state``."""

    def __init__(self, loss: Callable[[torch.nn.Module], float]):
        self.loss = loss
        self.best_loss, self.best_step = math.inf, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self._scratch: torch.nn.Module | None = None

    def scratch(self, model: torch.nn.Module) -> torch.nn.Module:
        """One eval-mode copy of the model, made once, that each validation fills with the EMA weights."""
        if self._scratch is None:
            self._scratch = copy.deepcopy(model).eval()
        return self._scratch

    def update(self, step: int, model: torch.nn.Module) -> float:
        """Score ``model`` (the EMA weights, in eval mode) at ``step``; keep its weights if best so far."""
        with torch.no_grad():
            value = float(self.loss(model))
        if value < self.best_loss:
            self.best_loss, self.best_step = value, step
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return value

    def summary(self, select: str, stopped_early: bool) -> dict[str, Any]:
        return {"best_step": self.best_step, "best_loss": self.best_loss, "select": select, "stopped_early": stopped_early}
