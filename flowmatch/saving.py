"""The files that hold a trained flow, whatever its modality: checkpoint.safetensors (weights, never pickled)
and checkpoint.json (what rebuilds the flow around them), their format version, and the checks a set of
weights passes before it is loaded into a model (names, shapes, dtypes, finite values).

Flows save themselves through :func:`save_flow` and rebuild through their modality; the run folders around
them are :mod:`flowmatch.engine.runs`'.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from flowmatch.errors import FlowmatchError

#: The version of checkpoint.json (and of a training checkpoint's ``flow`` entry) this flowmatch writes and
#: reads. Every checkpoint.json flowmatch has written names its version, so one without a version is refused.
FORMAT_VERSION = 1


CHECKPOINT = "checkpoint.safetensors"


CHECKPOINT_META = "checkpoint.json"


CONFIG = "config.json"


#: config.json's entry for what the run resolved when it started, beside the config as asked: the precision
#: ``auto`` chose, with the measured bf16 speed ratio (``{"precision": "bf16", "bf16_speedup": 1.31,
#: "precision_reason": "measured"}``). A resumed run continues in it and ``precision="auto"`` samples in it.
RESOLVED = "resolved"


def recorded_precision(config: Any) -> str:
    """The precision a run trained in, as its config (config.json) records it: ``precision`` where it is fp32 or
    bf16; for ``auto``, the precision recorded under :data:`RESOLVED` when the run started (a run saved before
    runs recorded it is refused: sample with fp32 or bf16). A flow made by hand, with no precision: fp32."""
    asked = config.get("precision", "fp32") if isinstance(config, dict) else "fp32"
    if asked in ("fp32", "bf16"):
        return asked
    record = config.get(RESOLVED)
    chosen = record.get("precision") if isinstance(record, dict) else None
    if chosen in ("fp32", "bf16"):
        return chosen
    if record is None:
        raise FlowmatchError(
            f"precision 'auto' samples in the precision the run trained in, and this run's config records none "
            f"(config.json has precision {asked!r} and no {RESOLVED!r} entry: saved before runs recorded it); sample with "
            "precision 'fp32' or 'bf16'"
        )
    raise FlowmatchError(f"config.json's {RESOLVED!r} entry must record precision fp32 or bf16, got {record!r}")


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


def meta_file(where) -> Path:
    """The metadata file beside weights ``where``: a finished run's checkpoint.json, a training checkpoint's
    state.json."""
    where = Path(where)
    return where.with_name(CHECKPOINT_META) if where.name == CHECKPOINT else where / STATE_META


STATE_META = "state.json"  # a training checkpoint's metadata (flowmatch.engine.checkpoints)


def check_weights(expected: dict[str, Any], state: dict[str, torch.Tensor], where) -> None:
    """Refuse ``state`` unless it has exactly the entries of ``expected`` (a model's state dict), each of the
    same shape and dtype (weights of another dtype, such as int64 or float64 for a float32 model, are refused,
    not cast), with finite values; the error names ``where`` and the first offending entry."""
    missing, unexpected = [k for k in expected if k not in state], [k for k in state if k not in expected]
    if missing or unexpected:
        which = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise FlowmatchError(f"{where}: weights do not match the model: {which}")
    for key, own in expected.items():
        value = state[key]
        if not isinstance(own, torch.Tensor):
            continue
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(own.shape):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise FlowmatchError(f"{where}: weights do not match the model: {key} has shape {shape}, the model's {tuple(own.shape)}")
        if value.dtype != own.dtype:
            raise FlowmatchError(
                f"{where}: weights do not match the model: {key} is {str(value.dtype).removeprefix('torch.')}, "
                f"the model's {str(own.dtype).removeprefix('torch.')} (weights are not cast)"
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise FlowmatchError(f"{where}: weights hold non-finite values ({key})")


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str | os.PathLike) -> torch.nn.Module:
    """``state`` into ``model`` (strict), in eval mode, after :func:`check_weights` against the model's own
    entries: on any difference one error names the checkpoint ``where`` and ``model`` is left as it was."""
    check_weights(model.state_dict(), state, where)
    try:  # a model's own loading hooks may still refuse them
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise FlowmatchError(f"{where}: weights do not match the model: {str(exc).strip().splitlines()[0]}") from None
    return model.eval()


def save_flow(flow: Any, folder: str | os.PathLike) -> None:
    """A flow's weights (safetensors) and metadata (:meth:`checkpoint_meta`, which refuses a flow it cannot
    describe before anything is written), each written atomically, the weights first; what else the flow
    keeps beside them (a flow's ``keep(folder)``: the rows of a source given in Python) before both."""
    from flowmatch.storage import save_tensors, write_json

    meta = flow.checkpoint_meta()
    keep = getattr(flow, "keep", None)
    if keep is not None:
        keep(Path(folder))
    save_tensors(Path(folder) / CHECKPOINT, flow.model.state_dict())
    write_json(Path(folder) / CHECKPOINT_META, meta)
