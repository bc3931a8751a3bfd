"""Loading a run folder (:mod:`flowmatch.engine.runs` describes the files): ``flowmatch.load(run_dir)``
rebuilds the run's flow in one call, whatever its modality, with the weights read by safetensors (never
unpickled). The flow's kind, in checkpoint.json, names the modality that rebuilds it (:func:`flowmatch.config.modality`):
a :class:`~flowmatch.flows.continuous.Flow` for points and images, a :class:`~flowmatch.flows.discrete.DiscreteFlow` for
tokens and tables, a :class:`~flowmatch.flows.riemannian.RiemannianFlow` for points on a manifold.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from flowmatch.config import TrainConfig, modality
from flowmatch.engine.options import check_saved_types
from flowmatch.engine.runs import read_run
from flowmatch.errors import FlowmatchError, FlowmatchWarning
from flowmatch.saving import CONFIG


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
    saved = read_run(run_dir)
    check_saved_types(saved.config, TrainConfig, str(saved.folder / CONFIG))
    flow = modality(saved.kind).load_flow(
        saved.meta, saved.weights, saved.config, saved.where, model=model, source=source, folder=saved.folder
    )
    saved.check_meta()
    if saved.note is not None:
        warnings.warn(saved.note, FlowmatchWarning, stacklevel=2)
    return flow.to(device)
