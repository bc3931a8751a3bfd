"""Trained flows and run folders.

A :class:`Flow` is a velocity model together with the path it was trained on and the map
between data coordinates and the model's (standardised) coordinates. It samples by integrating
dx/dt = v(x, t) forward from x ~ N(0, I) at t = 0 to t = 1 and mapping back to data coordinates.

A run folder holds::

    config.json              the resolved training config
    checkpoint.safetensors   weights (never pickled)
    checkpoint.json          what is needed to rebuild the model: its config, the path, the standardiser
    metrics.json             final loss, W2 against held-out data and its floor
    samples.png              samples over data

``flowmatch.load(run_dir)`` rebuilds the Flow in one call. Folders are written to a staging
directory next to the target and renamed into place at the end, so a failed or interrupted
write never leaves a half-written run and an existing run is only replaced with ``force``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from flowmatch.data.dataset import Dataset, load_dataset
from flowmatch.data.standardize import Standardizer
from flowmatch.errors import FlowmatchError
from flowmatch.flow import Flow
from flowmatch.models.registry import build_model
from flowmatch.paths.affine import make_path
from flowmatch.storage import read_json, save_tensors, write_json
from flowmatch.training.checkpoints import latest_state, list_states, unprefixed

FORMAT_VERSION = 1


CHECKPOINT = "checkpoint.safetensors"


CHECKPOINT_META = "checkpoint.json"


CONFIG = "config.json"


_TRI_STATE = {"auto": None, "yes": True, "no": False}


def dataset_from_config(config: dict[str, Any]) -> Dataset:
    """The training data set a run's config names (its data, seed, standardisation, labels, mmap),
    with its validation rows held out (``val_fraction``; 0 for runs saved before it existed)."""
    dataset = load_dataset(
        config["data"],
        seed=config["seed"],
        standardize=_TRI_STATE[config.get("standardize", "auto")],
        label_column=config.get("label_column") or None,
        mmap=_TRI_STATE[config.get("mmap", "auto")],
    )
    if config.get("pairs"):  # reflow and distillation train on a teacher's pairs: nothing to validate against
        return dataset
    return dataset.hold_out_validation(float(config.get("val_fraction", 0.0)), int(config["seed"]))


def flow_meta(flow: Flow) -> dict[str, Any]:
    """checkpoint.json: the model's config, the path and the standardiser, which rebuild the flow."""
    return {
        "format": "flowmatch-checkpoint",
        "version": FORMAT_VERSION,
        "dim": flow.dim,
        "model": flow.model.config,
        "path": {
            "name": flow.path.name,
            "sigma_min": getattr(flow.path.schedule, "sigma_min", 0.0),
            "bridge_sigma": flow.path.bridge_sigma,
        },
        "standardizer": flow.standardizer.to_dict(),
    }


def save_flow(flow: Flow, folder: str | os.PathLike) -> None:
    """Weights (safetensors) and metadata, each written atomically (weights first)."""
    save_tensors(Path(folder) / CHECKPOINT, flow.model.state_dict())
    write_json(Path(folder) / CHECKPOINT_META, flow_meta(flow))


def load(run_dir: str | os.PathLike, *, device: str = "cpu") -> Flow:
    """Rebuild the Flow saved in a run folder (weights are read with safetensors, never unpickled).

    A finished run has ``checkpoint.safetensors``; a run stopped during training is loaded from its
    newest training checkpoint (EMA weights where kept).
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise FlowmatchError(f"run folder '{folder}' does not exist")
    if not (folder / CONFIG).is_file():
        raise FlowmatchError(f"'{folder}' is not a flowmatch run folder: {CONFIG} is missing")
    config = read_json(folder / CONFIG)
    finished = (folder / CHECKPOINT).is_file() and (folder / CHECKPOINT_META).is_file()
    if finished or not list_states(folder):
        for name in (CHECKPOINT, CHECKPOINT_META):
            if not (folder / name).is_file():
                raise FlowmatchError(f"'{folder}' is not a flowmatch run folder: {name} is missing")
        meta = read_json(folder / CHECKPOINT_META)
        try:
            state = load_file(str(folder / CHECKPOINT))
        except (SafetensorError, OSError, ValueError) as exc:
            raise FlowmatchError(f"{folder / CHECKPOINT}: cannot read the weights (truncated or corrupt?): {exc}") from None
        where = folder / CHECKPOINT
    else:
        where, tensors, state_meta = latest_state(folder)
        meta = state_meta.get("flow", {})
        state = unprefixed("ema", tensors) or unprefixed("model", tensors)
    return build_flow(meta, state, config, where).to(device)


def build_flow(meta: dict[str, Any], state: dict[str, torch.Tensor], config: dict[str, Any], where) -> Flow:
    """A Flow from checkpoint metadata (see :meth:`Flow.checkpoint_meta`) and its weights."""
    if not isinstance(meta, dict) or meta.get("format") != "flowmatch-checkpoint" or meta.get("version") != FORMAT_VERSION:
        raise FlowmatchError(f"{where}: not a flowmatch checkpoint of version {FORMAT_VERSION}")
    try:
        model_options = dict(meta["model"])
        model = build_model(model_options.pop("name"), int(meta["dim"]), **model_options)
        path_meta = meta["path"]
        path = make_path(path_meta["name"], float(path_meta.get("sigma_min", 0.0)), float(path_meta.get("bridge_sigma", 0.0)))
        standardizer = Standardizer.from_dict(meta["standardizer"])
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, FlowmatchError):
            raise
        raise FlowmatchError(f"{where}: malformed checkpoint metadata ({exc!r})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise FlowmatchError(f"{where}: weights do not match the model in {CHECKPOINT_META}: {first}") from None
    return Flow(model=model.eval(), path=path, standardizer=standardizer, config=config)


def check_writable_run(target: Path, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise FlowmatchError(f"output '{target}' exists and is not a folder")
    if target.exists() and any(target.iterdir()):
        if not (target / CONFIG).is_file():
            raise FlowmatchError(f"output '{target}' exists and is not a flowmatch run folder; refusing to replace it")
        if not force:
            raise FlowmatchError(f"run folder '{target}' already exists; pass --force to replace it")
