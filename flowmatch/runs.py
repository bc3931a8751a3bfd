"""Loading a run folder (:mod:`flowmatch.engine.runs` describes the files): ``flowmatch.load(run_dir)``
rebuilds the run's flow in one call, whatever its modality, with the weights read by safetensors (never
unpickled). The flow's kind, in checkpoint.json, names the modality that rebuilds it (:func:`flowmatch.config.modality`):
a :class:`~flowmatch.flow.Flow` for points and images, a :class:`~flowmatch.discrete.flow.DiscreteFlow` for
tokens and tables, a :class:`~flowmatch.manifolds.flow.RiemannianFlow` for points on a manifold.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from flowmatch.config import TrainConfig, modality
from flowmatch.engine.checkpoints import latest_state, list_states, step_of, unprefixed
from flowmatch.engine.options import check_saved_types
from flowmatch.engine.runs import config_from_file, final_step
from flowmatch.errors import FlowmatchError, FlowmatchWarning
from flowmatch.leftovers import tidy_run
from flowmatch.saving import CHECKPOINT, CHECKPOINT_META, CONFIG, check_format
from flowmatch.storage import read_json, read_json_object


def kind_of(meta: Any, config: Any) -> str:
    """The kind of a run's flow: checkpoint.json's ``kind`` (runs of points and images, saved before kinds
    were written there, have none), else config.json's."""
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind is None and isinstance(config, dict) and config.get("kind") in ("tokens", "table", "manifold"):
        kind = config["kind"]
    return kind or "continuous"


def load(run_dir: str | os.PathLike, *, device: str = "cpu", model: torch.nn.Module | None = None, source: Any = None):
    """Rebuild the flow saved in a run folder (weights are read with safetensors, never unpickled).

    A finished run has ``checkpoint.safetensors``; a run stopped during training is loaded from its
    newest training checkpoint (EMA weights where kept), and so is a finished run that was resumed with
    more steps and stopped again (its training checkpoints are newer than the final weights, by
    ``steps_run`` in metrics.json): either way a :class:`~flowmatch.errors.FlowmatchWarning` says which
    step was loaded and why (the CLI prints it as one ``note:`` line). ``model=`` fills an instance of one's own
    with the weights instead of rebuilding the model (needed for a model the run folder only names);
    ``source=`` gives back a source object that the run could not save.
    """
    if not isinstance(run_dir, (str, os.PathLike)):
        raise FlowmatchError(f"run_dir must be a path to a run folder, got {type(run_dir).__name__} {run_dir!r}")
    if not isinstance(device, (str, torch.device)):
        raise FlowmatchError(f"device must be a name (cpu, cuda, cuda:N, auto), got {type(device).__name__} {device!r}")
    if model is not None and not isinstance(model, torch.nn.Module):
        raise FlowmatchError(f"model= must be a torch.nn.Module, got {type(model).__name__}")
    from flowmatch.engine.devices import resolve_device

    device = str(resolve_device(str(device)))  # an unknown or absent device: refused before reading anything
    folder = Path(run_dir)
    tidy_run(folder)  # an interrupted replacement recovered, stale temporary files removed (flowmatch.leftovers)
    if not folder.is_dir():
        raise FlowmatchError(f"run folder '{folder}' does not exist")
    if not (folder / CONFIG).is_file():
        raise FlowmatchError(f"'{folder}' is not a flowmatch run folder: {CONFIG} is missing")
    config = config_from_file(read_json_object(folder / CONFIG), folder)
    check_saved_types(config, TrainConfig, str(folder / CONFIG))
    finished = (folder / CHECKPOINT).is_file() and (folder / CHECKPOINT_META).is_file()
    states = list_states(folder)
    final = final_step(folder) if finished and states else None
    if final is not None and step_of(states[-1]) <= final:
        final = None  # the final weights are the newest state
    if (finished and final is None) or not states:
        for name in (CHECKPOINT, CHECKPOINT_META):
            if not (folder / name).is_file():
                raise FlowmatchError(f"'{folder}' is not a flowmatch run folder: {name} is missing")
        meta = read_json(folder / CHECKPOINT_META)
        check_format(meta, folder / CHECKPOINT_META)
        try:
            state = load_file(str(folder / CHECKPOINT))
        except (SafetensorError, OSError, ValueError) as exc:
            raise FlowmatchError(f"{folder / CHECKPOINT}: cannot read the weights (truncated or corrupt?): {exc}") from None
        where: Any = folder / CHECKPOINT
        note = None
    else:
        where, tensors, state_meta = latest_state(folder)
        meta = state_meta.get("flow", {})
        state = {**unprefixed("model", tensors), **unprefixed("ema", tensors)}  # EMA parameters, the model's buffers
        why = (
            f"its {CHECKPOINT} is from step {final} and training went on"
            if final is not None
            else f"it has no {CHECKPOINT} (training did not finish)"
        )
        note = f"'{folder}': loaded training checkpoint step {step_of(Path(where))} (EMA weights where kept): {why}"
    check_format(meta, where)
    flow = modality(kind_of(meta, config)).load_flow(meta, state, config, where, model=model, source=source, folder=folder).to(device)
    if note is not None:
        warnings.warn(note, FlowmatchWarning, stacklevel=2)
    return flow
