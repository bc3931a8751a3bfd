"""Everything a training checkpoint holds and puts back: weights, EMA, optimiser, generators, the
validation's best weights and a stream's position (see :mod:`flowmatch.engine.checkpoints` for the files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flowmatch.engine.checkpoints import optimizer_from_tensors, optimizer_to_tensors, prefixed, save_state, unprefixed
from flowmatch.saving import check_weights


class TrainingState:
    """The parts of a run that a checkpoint saves (:meth:`save`) and a resumed run restores (:meth:`restore`)."""

    def __init__(self, model, ema, optimizer, generator: torch.Generator, *, validation=None, stream=None, flow_meta=None, keep: int = 2):
        self.model, self.ema, self.optimizer, self.generator = model, ema, optimizer, generator
        self.validation, self.stream, self.flow_meta, self.keep = validation, stream, flow_meta, keep

    def save(self, folder: Path, step: int, seconds: float, losses: list[float]) -> None:
        opt_tensors, opt_groups = optimizer_to_tensors(self.optimizer)
        tensors = {
            **prefixed("model", self.model.state_dict()),
            **prefixed("ema", self.ema.state_dict(self.model)),
            **prefixed("optimizer", opt_tensors),
            "rng.generator": self.generator.get_state(),
            "rng.torch": torch.get_rng_state(),
        }
        meta: dict[str, Any] = {
            "optimizer_groups": opt_groups,
            "ema_updates": self.ema.updates,
            "seconds": seconds,
            "loss_tail": losses[-100:],
            "flow": self.flow_meta,
        }
        if self.validation is not None:
            if self.validation.best_state is not None:
                tensors.update(prefixed("best", self.validation.best_state))
            meta["validation"] = {"best_loss": self.validation.best_loss, "best_step": self.validation.best_step}
        if self.stream is not None:
            position = self.stream.state()
            meta["stream"] = {"epoch": position["epoch"], "index": position["index"]}
            tensors.update(prefixed("stream.rng", position["rng"]))
        save_state(folder, step, tensors, meta, self.keep)

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], where="the checkpoint") -> tuple[float, list[float]]:
        """Put a checkpoint's state back (its EMA weights checked as the model's are: names, shapes, dtypes,
        finite values; the error names ``where``); returns (training seconds so far, the recent losses)."""
        if self.ema.shadow is not None:
            check_weights(dict(self.model.named_parameters()), unprefixed("ema", tensors), f"{where} (EMA)")
        self.ema.load(self.model, unprefixed("ema", tensors), meta["ema_updates"])
        optimizer_from_tensors(self.optimizer, unprefixed("optimizer", tensors), meta["optimizer_groups"])
        self.generator.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        if self.validation is not None and "validation" in meta:
            self.validation.best_loss, self.validation.best_step = meta["validation"]["best_loss"], meta["validation"]["best_step"]
            self.validation.best_state = unprefixed("best", tensors) or None
        return meta["seconds"], list(meta["loss_tail"])


def stream_state(state) -> dict[str, Any] | None:
    """Where a stream stood at a checkpoint ``(folder, tensors, meta)`` (None without one or without a stream)."""
    if state is None or "stream" not in state[2]:
        return None
    return {**state[2]["stream"], "rng": unprefixed("stream.rng", state[1])}
