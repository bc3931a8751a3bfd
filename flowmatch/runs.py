"""Run folders: a trained :class:`~flowmatch.flow.Flow` saved and loaded without pickle.

A run folder holds::

    config.json              the resolved training config
    checkpoint.safetensors   weights (never pickled)
    checkpoint.json          what is needed to rebuild the flow: the model's config or importable factory
                             and JSON arguments, the path, the standardiser, conditions, a Python source
    metrics.json             final loss, W2 against held-out data and its floor
    samples.png              samples over data

``flowmatch.load(run_dir)`` rebuilds the Flow in one call (a :class:`~flowmatch.discrete.flow.DiscreteFlow`
for kinds tokens and table, a :class:`~flowmatch.manifolds.flow.RiemannianFlow` for kind manifold). Folders are written to a staging
directory next to the target and renamed into place at the end, so a failed or interrupted
write never leaves a half-written run and an existing run is only replaced with ``force``.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from flowmatch.data.dataset import Dataset, load_dataset
from flowmatch.data.standardize import Standardizer
from flowmatch.errors import FlowmatchError, FlowmatchWarning
from flowmatch.flow import Flow, _conditions_of
from flowmatch.leftovers import tidy_run
from flowmatch.storage import read_json, read_json_object, save_tensors, write_json
from flowmatch.training.checkpoints import STATE_META, latest_state, list_states, load_weights, step_of, unprefixed
from flowmatch.training.config import check_saved_types

#: The version of checkpoint.json (and of a training checkpoint's ``flow`` entry) this flowmatch writes and
#: reads. Every checkpoint.json flowmatch has written names its version, so one without a version is refused.
FORMAT_VERSION = 1


CHECKPOINT = "checkpoint.safetensors"


CHECKPOINT_META = "checkpoint.json"


CONFIG = "config.json"


_TRI_STATE = {"auto": None, "yes": True, "no": False}


def dataset_from_config(config: dict[str, Any], min_test_rows: int = 0) -> Dataset:
    """The training data set a run's config names (its data, seed, standardisation, labels, mmap),
    with its validation rows held out (``val_fraction``; 0 for runs saved before it existed); finite data
    must hold out at least ``min_test_rows`` test rows (:meth:`Dataset.require_test_rows`)."""
    if config["data"] == "python":
        raise FlowmatchError(
            "this run was trained on data given in Python, which its folder does not hold: pass reference= (held-out points) to evaluate it"
        )
    dataset = load_dataset(
        config["data"],
        seed=config["seed"],
        standardize=_TRI_STATE[config.get("standardize", "auto")],
        label_column=config.get("label_column") or None,
        mmap=_TRI_STATE[config.get("mmap", "auto")],
        condition_columns=config.get("condition_columns") or None,
    ).require_test_rows(min_test_rows)
    if config.get("pairs"):  # reflow and distillation train on a teacher's pairs: nothing to validate against
        return dataset
    return dataset.hold_out_validation(float(config.get("val_fraction", 0.0)), int(config["seed"]))


def flow_meta(flow: Flow) -> dict[str, Any]:
    """checkpoint.json: what rebuilds the flow around its weights, as JSON.

    The model's :func:`~flowmatch.models.registry.to_config` (a built-in's options, or an importable
    factory and its arguments; a model that has neither is named by its class, and loading it needs
    ``model=``), the path (:func:`~flowmatch.paths.specs.path_to_config`: a path that cannot be named
    raises here, before anything is written), the standardiser, one row's shape, the conditions, and a
    source given in Python.
    """
    from flowmatch.models.registry import to_config
    from flowmatch.paths.specs import path_to_config

    try:
        model = to_config(flow.model)
    except FlowmatchError:
        model = {"class": f"{type(flow.model).__module__}:{type(flow.model).__qualname__}", "rebuild": False}
    meta = {
        "format": "flowmatch-checkpoint",
        "version": FORMAT_VERSION,
        "dim": flow.dim,
        "model": model,
        "path": path_to_config(flow.path),
        "standardizer": flow.standardizer.to_dict(),
    }
    if flow.shape is not None:
        meta["shape"] = list(flow.shape)
    if flow.conditions != _conditions_of(flow.model):
        meta["conditions"] = flow.conditions
    if flow.config.get("source") == "python" and flow._source is not None:
        from flowmatch.data.sources import source_to_config

        meta["source"] = source_to_config(flow._source)
    return meta


def save_flow(flow: Flow, folder: str | os.PathLike) -> None:
    """Weights (safetensors) and metadata, each written atomically (weights first); a flow whose path or
    source cannot be recorded is refused before anything is written."""
    meta = flow_meta(flow)
    if "source" in meta:
        from flowmatch.data.sources import save_source_rows

        save_source_rows(flow._source, Path(folder))
    save_tensors(Path(folder) / CHECKPOINT, flow.model.state_dict())
    write_json(Path(folder) / CHECKPOINT_META, meta)


def load(run_dir: str | os.PathLike, *, device: str = "cpu", model: torch.nn.Module | None = None, source: Any = None) -> Flow:
    """Rebuild the Flow saved in a run folder (weights are read with safetensors, never unpickled).

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
    from flowmatch.training.devices import resolve_device

    device = str(resolve_device(str(device)))  # an unknown or absent device: refused before reading anything
    folder = Path(run_dir)
    tidy_run(folder)  # an interrupted replacement recovered, stale temporary files removed (flowmatch.leftovers)
    if not folder.is_dir():
        raise FlowmatchError(f"run folder '{folder}' does not exist")
    if not (folder / CONFIG).is_file():
        raise FlowmatchError(f"'{folder}' is not a flowmatch run folder: {CONFIG} is missing")
    config = config_from_file(read_json_object(folder / CONFIG), folder)
    check_saved_types(config, str(folder / CONFIG))
    finished = (folder / CHECKPOINT).is_file() and (folder / CHECKPOINT_META).is_file()
    states = list_states(folder)
    final_step = _final_step(folder) if finished and states else None
    if final_step is not None and step_of(states[-1]) <= final_step:
        final_step = None  # the final weights are the newest state
    if (finished and final_step is None) or not states:
        for name in (CHECKPOINT, CHECKPOINT_META):
            if not (folder / name).is_file():
                raise FlowmatchError(f"'{folder}' is not a flowmatch run folder: {name} is missing")
        meta = read_json(folder / CHECKPOINT_META)
        check_format(meta, folder / CHECKPOINT_META)
        try:
            state = load_file(str(folder / CHECKPOINT))
        except (SafetensorError, OSError, ValueError) as exc:
            raise FlowmatchError(f"{folder / CHECKPOINT}: cannot read the weights (truncated or corrupt?): {exc}") from None
        where = folder / CHECKPOINT
        if isinstance(meta, dict) and meta.get("kind") in ("tokens", "table"):  # a discrete or mixed flow
            from flowmatch.discrete.flow import build_discrete_flow

            if model is not None or source is not None:
                raise FlowmatchError(f"'{folder}' holds a {meta['kind']} run: load it without model= or source=")
            return build_discrete_flow(meta, state, config if isinstance(config, dict) else {}, where).to(device)  # type: ignore[return-value]
        if isinstance(meta, dict) and meta.get("kind") == "manifold":  # a Riemannian flow
            from flowmatch.manifolds.training import build_manifold_flow

            if model is not None or source is not None:
                raise FlowmatchError(f"'{folder}' holds a manifold run: load it without model= or source=")
            return build_manifold_flow(meta, state, config if isinstance(config, dict) else {}, where).to(device)  # type: ignore[return-value]
    else:
        where, tensors, state_meta = latest_state(folder)
        meta = state_meta.get("flow", {})
        state = {**unprefixed("model", tensors), **unprefixed("ema", tensors)}  # EMA parameters, the model's buffers
        flow = build_flow(meta, state, config, where, model=model, source=source, folder=folder).to(device)
        why = (
            f"its {CHECKPOINT} is from step {final_step} and training went on"
            if final_step is not None
            else f"it has no {CHECKPOINT} (training did not finish)"
        )
        warnings.warn(
            f"'{folder}': loaded training checkpoint step {step_of(Path(where))} (EMA weights where kept): {why}",
            FlowmatchWarning,
            stacklevel=2,
        )
        return flow
    return build_flow(meta, state, config, where, model=model, source=source, folder=folder).to(device)


def _final_step(folder: Path) -> int | None:
    """The step at which a finished run's weights were saved (``steps_run`` in metrics.json), None if unknown."""
    try:
        metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else None
    except FlowmatchError:
        return None
    value = metrics.get("steps_run") if isinstance(metrics, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_format(meta: Any, where) -> None:
    """Checkpoint metadata that this flowmatch can read: format ``flowmatch-checkpoint`` and a version up to
    :data:`FORMAT_VERSION`; one written by a newer flowmatch is refused by its version."""
    if not isinstance(meta, dict) or meta.get("format") != "flowmatch-checkpoint":
        raise FlowmatchError(f"{where}: not a flowmatch checkpoint (no format 'flowmatch-checkpoint')")
    version = meta.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise FlowmatchError(
            f"{where}: checkpoint format version {version} was written by a newer flowmatch; this one reads version "
            f"{FORMAT_VERSION}: upgrade flowmatch to load it"
        )
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise FlowmatchError(f"{where}: unknown checkpoint format version {version!r} (this flowmatch reads version {FORMAT_VERSION})")


def build_flow(
    meta: dict[str, Any],
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    where,
    *,
    model: torch.nn.Module | None = None,
    source: Any = None,
    folder: Path | None = None,
) -> Flow:
    """A Flow from checkpoint metadata (see :func:`flow_meta`) and its weights, in ``model`` if given."""
    from flowmatch.models.registry import from_config
    from flowmatch.paths.specs import path_from_config

    check_format(meta, where)
    try:
        spec = dict(meta["model"])
        if model is not None and not isinstance(model, torch.nn.Module):
            raise FlowmatchError(f"model= must be a torch.nn.Module, got {type(model).__name__}")
        if model is None and spec.get("rebuild") is False:
            raise FlowmatchError(
                f"{where}: the run's model is a {spec.get('class')}, which flowmatch cannot rebuild by itself; "
                "pass one: flowmatch.load(run, model=YourModel(...))"
            )
        model = model if model is not None else from_config(spec, int(meta["dim"]))
        path = path_from_config(meta["path"])
        standardizer = Standardizer.from_dict(meta["standardizer"])
        _check_dims(meta, standardizer, _meta_file(where))
        if source is None and config.get("source") == "python" and "source" in meta:
            from flowmatch.data.sources import source_from_config

            source = source_from_config(meta["source"], folder if folder is not None else Path(where).parent)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, FlowmatchError):
            raise
        raise FlowmatchError(f"{_meta_file(where)}: malformed checkpoint metadata ({exc!r})") from None
    return Flow(
        model=load_weights(model, state, where), path=path, standardizer=standardizer, config=config, source=source,
        shape=meta.get("shape"), conditions=meta.get("conditions"),
    )  # fmt: skip


def _meta_file(where) -> Path:
    """The metadata file beside weights ``where``: a finished run's checkpoint.json, a training checkpoint's
    state.json."""
    where = Path(where)
    return where.with_name(CHECKPOINT_META) if where.name == CHECKPOINT else where / STATE_META


def _check_dims(meta: dict[str, Any], standardizer: Standardizer, where) -> None:
    """checkpoint.json agrees with itself: its ``dim`` is a positive integer, the standardiser has that many
    columns and a row ``shape`` holds that many values (the weights are checked against ``dim`` on loading)."""
    dim = meta["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise FlowmatchError(f"{where}: checkpoint metadata's dim must be a positive integer, got {dim!r}")
    if standardizer.dim != dim:
        raise FlowmatchError(f"{where}: checkpoint metadata's standardizer has {standardizer.dim} columns but its dim is {dim}")
    shape = meta.get("shape")
    if shape is not None and (
        not isinstance(shape, list)
        or not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in shape)
        or math.prod(shape) != dim
    ):
        raise FlowmatchError(f"{where}: checkpoint metadata's row shape {shape!r} does not hold dim = {dim} values")


#: A finished run's files that describe its last step, removed when training continues (:func:`reopen_run`).
FINAL_FILES = (CHECKPOINT, CHECKPOINT_META, "metrics.json", "report.json")


def reopen_run(folder: str | os.PathLike) -> None:
    """Make a finished run that training continues (``--resume --steps N``) unfinished again: its final
    weights, metrics.json and report.json describe the old last step, so they are removed, the weights
    first (at no moment is the run finished with another step's figures). Until the new end is written,
    :func:`load` uses the newest training checkpoint and says which."""
    for name in FINAL_FILES:
        (Path(folder) / name).unlink(missing_ok=True)


#: config.json keys that name a file or folder: stored relative to the run folder (:func:`config_for_file`),
#: so that a run folder moved with what it names (its own pairs.npz; a teacher run beside it) still resumes.
PATH_KEYS = ("pairs", "init_from")


def config_for_file(values: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """A config (as a dict) as config.json in ``folder`` stores it: :data:`PATH_KEYS` relative to ``folder``
    (a path given relative to the working directory is taken from there first)."""
    out = dict(values)
    for key in PATH_KEYS:
        if isinstance(out.get(key), str) and out[key]:
            try:
                out[key] = os.path.relpath(os.path.abspath(out[key]), os.path.abspath(folder))
            except ValueError:  # another drive (Windows): no relative path
                out[key] = os.path.abspath(out[key])
    return out


def config_from_file(values: Any, folder: str | os.PathLike) -> Any:
    """config.json's values from ``folder`` with :data:`PATH_KEYS` as absolute paths, resolved against
    ``folder`` (absolute ones, which runs saved before paths were relative hold, as they are)."""
    if not isinstance(values, dict):
        return values
    out = dict(values)
    for key in PATH_KEYS:
        if isinstance(out.get(key), str) and out[key] and not os.path.isabs(out[key]):
            out[key] = os.path.normpath(os.path.join(os.path.abspath(folder), out[key]))
    return out


def check_writable_run(target: Path, force: bool) -> None:
    """Refuse, before any work, a run folder that cannot be written: a file, a folder that is not a run (or a
    run without ``force``), or a place where no folder can be made (:func:`~flowmatch.storage.check_writable`)."""
    from flowmatch.storage import check_writable, reading

    if target.exists() and not target.is_dir():
        raise FlowmatchError(f"output '{target}' exists and is not a folder")
    with reading(target):
        occupied = target.exists() and any(target.iterdir())
    if occupied:
        if not (target / CONFIG).is_file():
            raise FlowmatchError(f"output '{target}' exists and is not a flowmatch run folder; refusing to replace it")
        if not force:
            raise FlowmatchError(f"run folder '{target}' already exists; pass force=True to replace it")
    check_writable(target)
