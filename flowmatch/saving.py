"""The files that hold a trained flow, whatever its modality: checkpoint.safetensors (weights, never pickled)
and checkpoint.json (what rebuilds the flow around them), their format version, and the checks a set of
weights passes before it is loaded into a model (names, shapes, dtypes, finite values).

Flows save themselves through :func:`save_flow` and rebuild through their modality; the run folders around
them are :mod:`flowmatch.engine.runs`'.
"""

from __future__ import annotations

import hashlib
import json
import math
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


#: The safetensors header entry that binds a checkpoint's weights to the metadata written beside them: the
#: SHA-256 of that metadata's canonical JSON (:func:`meta_digest`). Metadata changed after the weights were
#: saved (a hand-edited vocabulary, path or column scale that still fits the weights' shapes) is refused by it.
META_DIGEST = "flowmatch.meta_sha256"


def meta_digest(meta: Any) -> str:
    """The SHA-256 of ``meta`` as canonical JSON (sorted keys, no spaces): the same for the metadata in memory
    and as read back from its JSON file."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str | None]:
    """A safetensors file's tensors (never unpickled) and the metadata digest in its header (None in files written
    before weights carried one); a damaged file raises safetensors' or the system's error, for the caller to name."""
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        header = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (a safe_open handle is not a dict)
    return tensors, header.get(META_DIGEST)


def check_meta_digest(meta: Any, digest: str | None, where) -> None:
    """Refuse metadata that differs from the metadata the weights at ``where`` were saved with (their header's
    :data:`META_DIGEST`); weights without a digest pass."""
    if digest is not None and digest != meta_digest(meta):
        raise FlowmatchError(
            f"{meta_file(where)} is not the metadata saved with the weights at {where}: it was changed afterwards (its "
            "SHA-256 differs from the one in the weights' header); restore it or train again"
        )


def named(message: str, where) -> str:
    """``message`` prefixed with ``where`` (a checkpoint), unless it already names it or its metadata file."""
    return message if str(where) in message or str(meta_file(where)) in message else f"{where}: {message}"


def build_model_for(spec: dict[str, Any], dim: int, state: dict[str, torch.Tensor], where, dim_key: str = "dim") -> torch.nn.Module:
    """The model ``spec`` describes (:func:`flowmatch.models.registry.from_config`) for the weights ``state`` read
    from ``where``, built only once its sizes are known to fit them: a built-in model's sizes (and ``dim``) can
    be no larger than the number of values the weights hold, and the model built first on the meta device (no
    memory) must have the weights' names and shapes. A hand-edited checkpoint.json asking for a width of 1e9 is
    refused by name, not allocated. ``dim_key`` names ``dim`` in checkpoint.json (a token flow's ``length``)."""
    from flowmatch.models.registry import from_config

    held = sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))
    if "factory" not in spec:
        for key, value in [(dim_key, dim), *_numbers(spec, "model")]:
            if value > max(held, 1):
                raise FlowmatchError(
                    f"{meta_file(where)}: checkpoint metadata's {key} = {value:g} cannot fit the weights, which hold "
                    f"{held} values in all: the metadata does not match the weights"
                )
    try:
        with torch.device("meta"):
            probe = from_config(spec, dim)
    except FlowmatchError:
        raise
    except Exception:  # noqa: BLE001 a model that cannot be built on the meta device is checked after building
        probe = None
    if probe is not None:
        check_weights(probe.state_dict(), state, where)
    return from_config(spec, dim)


def _numbers(value: Any, key: str) -> list[tuple[str, float]]:
    """The numbers in a model spec, with where each sits (``model.width``, ``model.vocab_sizes[0]``)."""
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _numbers(v, f"{key}.{k}")]
    if isinstance(value, list):
        return [pair for j, v in enumerate(value) for pair in _numbers(v, f"{key}[{j}]")]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [(key, value if math.isfinite(value) else math.inf)]
    return []


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
    meta = any(v.is_meta for v in model.state_dict().values())  # built without memory: the weights become its values
    try:  # a model's own loading hooks may still refuse them
        model.load_state_dict(state, strict=True, assign=meta)
    except RuntimeError as exc:
        raise FlowmatchError(f"{where}: weights do not match the model: {str(exc).strip().splitlines()[0]}") from None
    left = [name for name, v in [*model.named_parameters(), *model.named_buffers()] if v.is_meta]
    if left:
        raise FlowmatchError(
            f"model {type(model).__name__}: {left[0]} is on the meta device and the weights at {where} do not hold it "
            "(a buffer that is not saved): build the model on the CPU"
        )
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
    save_tensors(Path(folder) / CHECKPOINT, flow.model.state_dict(), header={META_DIGEST: meta_digest(meta)})
    write_json(Path(folder) / CHECKPOINT_META, meta)
