"""Conditions of a model, whatever its modality: class labels and float covariates, their dropout in training
and their null for classifier-free guidance.

A model's conditions are named, each described by a small dict: ``{"classes": K}`` for labels 0..K-1 (the
null class is K), ``{"dim": k}`` for a float vector of k values (the null is a row of NaN, which the model
maps to a learned null vector). Flowmatch's models take labels as ``y`` and covariates as ``c``
(:class:`flowmatch.models.conditioning.ConditionEmbedding`); a user's model may take any named conditions.

- :func:`drop` replaces a share of a batch's conditions by their null (training, for guidance);
- :func:`condition_for` turns what a user asks to sample (``label=``: one class or n; ``condition=``: one row
  or n, a tensor for ``c`` or a mapping of named conditions) into the model's keyword arguments;
- :func:`guided` is the velocity (or logits) under classifier-free guidance weight w:
  f_null + w (f_cond - f_null), both halves in one batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from flowmatch.errors import FlowmatchError

Conditions = dict[str, dict[str, int]]


def conditions_of(model: Any) -> Conditions:
    """The conditions a built-in model's config names: labels ``y`` and a float vector ``c``."""
    config = getattr(model, "config", None)
    config = config if isinstance(config, dict) else {}
    out = {}
    if config.get("num_classes"):
        out["y"] = {"classes": int(config["num_classes"])}
    if config.get("condition_dim"):
        out["c"] = {"dim": int(config["condition_dim"])}
    return out


def drop(condition: dict[str, torch.Tensor], conditions: Conditions, share: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Each row's conditions all replaced by their null with probability ``share`` (one uniform per row, drawn
    with ``generator``; nothing drawn without droppable conditions)."""
    droppable = [k for k in condition if k in conditions]
    if not droppable:
        return condition
    n = len(condition[droppable[0]])
    mask = torch.rand(n, generator=generator) < share
    return {name: dropped(value, mask, conditions[name]) if name in droppable else value for name, value in condition.items()}


def dropped(value: torch.Tensor, mask: torch.Tensor, spec: dict[str, int]) -> torch.Tensor:
    """``value`` with the rows in ``mask`` set to the null class (labels) or to NaN (float conditions)."""
    if "classes" in spec:
        return torch.where(mask, torch.full_like(value, spec["classes"]), value)
    value = value.to(torch.float32)
    return torch.where(mask.reshape(-1, *[1] * (value.ndim - 1)), torch.full_like(value, float("nan")), value)


def labels_for(conditions: Conditions, n: int, label, device) -> torch.Tensor | None:
    """Per-sample class labels (n,) from one class, a sequence of n classes, or None."""
    if label is None:
        return None
    classes = int(conditions.get("y", {}).get("classes", 0))
    if not classes:
        raise FlowmatchError("this model was trained without labels; sample it without label=")
    try:
        given = torch.as_tensor(label)
    except (TypeError, ValueError, RuntimeError):  # text, a number beyond int64, ragged lists
        raise FlowmatchError(f"label must be a class number or a sequence of them, got {label!r:.60}") from None
    if given.is_floating_point() and not torch.equal(given, given.round()) or given.is_complex() or given.dtype == torch.bool:
        raise FlowmatchError(f"label must be whole class numbers, got {label!r:.60}")
    y = given.long().reshape(-1)
    if y.numel() == 1:
        y = y.expand(n)
    if y.numel() != n:
        raise FlowmatchError(f"got {y.numel()} labels for {n} samples")
    if (y < 0).any() or (y >= classes).any():
        raise FlowmatchError(f"label out of range: the model knows classes 0..{classes - 1}")
    return y.to(device)


def condition_for(conditions: Conditions, n: int, label=None, condition=None, device="cpu") -> dict[str, torch.Tensor] | None:
    """The model's condition arguments for n samples: class labels (``label``: one class or n) and
    ``condition``, a tensor for the float condition ``c`` or a mapping of named conditions, each with
    one row (shared by all samples) or n rows. None: unconditional."""
    out: dict[str, torch.Tensor] = {}
    labels = labels_for(conditions, n, label, device)
    if labels is not None:
        out["y"] = labels
    if condition is not None:
        given = condition if isinstance(condition, dict) else {"c": condition}
        for name, value in given.items():
            out[name] = condition_rows(conditions, name, value, n, device)
    return out or None


def condition_rows(conditions: Conditions, name: str, value, n: int, device) -> torch.Tensor:
    """The rows of condition ``name`` for n samples (one row for all, or n), checked against its spec."""
    spec = conditions.get(name)
    if spec is None:
        known = ", ".join(conditions) or "none"
        raise FlowmatchError(f"this model takes no condition {name!r} (its conditions: {known})")
    if isinstance(value, torch.Tensor):
        rows = value.detach()
    else:
        try:
            rows = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as exc:
            raise FlowmatchError(f"condition {name!r}: not an array ({exc})") from None
    if "classes" in spec:
        if rows.is_complex() or rows.dtype == torch.bool or (rows.is_floating_point() and not torch.equal(rows, rows.round())):
            raise FlowmatchError(f"condition {name!r} takes whole class numbers, got {rows.dtype}")
        rows = rows.long().reshape(-1)
    else:
        if rows.is_complex() or not (
            rows.is_floating_point() or rows.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
        ):
            raise FlowmatchError(f"condition {name!r} takes numbers, got {rows.dtype}")
        rows = rows.to(torch.float32)
        if not torch.isfinite(rows).all():
            raise FlowmatchError(
                f"condition {name!r} holds NaN or infinite values: give finite numbers (a dropped condition is guidance's own)"
            )
        if rows.ndim <= 1:  # one value per sample (a 1-d condition), or one row for all
            rows = rows.reshape(-1, 1) if spec["dim"] == 1 else rows.reshape(1, -1)
        if rows.ndim != 2 or rows.shape[1] != spec["dim"]:
            raise FlowmatchError(
                f"condition {name!r} needs rows of {spec['dim']} values, got shape {tuple(value.shape) if hasattr(value, 'shape') else rows.shape}"
            )
    if len(rows) == 1:
        rows = rows.expand(n, *rows.shape[1:])
    if len(rows) != n:
        raise FlowmatchError(f"condition {name!r} has {len(rows)} rows for {n} samples (give 1 or {n})")
    return rows.to(device)


def null_condition(conditions: Conditions, condition: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same conditions dropped, as training dropped them: the null class for labels, NaN rows for floats."""
    out = {}
    for name, value in condition.items():
        spec = conditions.get(name, {})
        if "classes" not in spec:
            out[name] = torch.full_like(value, math.nan, dtype=torch.float32)
        elif spec["classes"]:
            out[name] = torch.full_like(value, spec["classes"])
        else:  # an integer condition of a model without num_classes: training never dropped it
            raise FlowmatchError(f"guidance needs a null for condition {name!r}: give the model a num_classes (its null class)")
    return out


def guided(
    call: Callable[..., Any], conditions: Conditions, condition: dict[str, torch.Tensor] | None, guidance: float, combine: Callable
) -> Callable[..., Any]:
    """``call(*inputs, **condition)`` under classifier-free guidance weight w: ``combine(cond, null, w)`` of the
    conditional and the unconditional outputs, computed in one batch of twice the rows (w = 1: the
    conditional call alone; no condition: ``call`` itself). The inputs are tensors of n rows each (or None)."""
    if not condition:
        return call
    if guidance == 1.0:
        return lambda *inputs, **extra: call(*inputs, **extra, **condition)
    null = null_condition(conditions, condition)
    both = {k: torch.cat([v, null[k]]) for k, v in condition.items()}

    def two(*inputs, **extra):
        doubled = [None if x is None else torch.cat([x, x]) if isinstance(x, torch.Tensor) and x.dim() > 0 else x for x in inputs]
        out = call(*doubled, **extra, **both)
        return combine(out, guidance)

    return two
