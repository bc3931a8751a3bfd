"""The training configuration and the registry of modalities.

:class:`TrainConfig` is plain data: the engine's options (:class:`flowmatch.engine.options.EngineOptions`) and,
beside them, each modality's own, declared in its folder (``flowmatch/modalities/*/options.py``). Every field
is a ``flowmatch train`` flag and a TOML key.

:data:`MODALITIES` names each modality's folder by its ``kind``: adding a modality is a folder and a line
here (and its options class among :class:`TrainConfig`'s bases). :func:`resolve_kind` finds the kind of
``kind = auto``, :func:`build_config` puts a kind's defaults under what the user gives, and
:func:`modality` is the one place a kind becomes its :class:`flowmatch.engine.seam.Modality`.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from typing import Any

from flowmatch.engine.options import (  # noqa: F401  (the shared rules, named here too)
    POSTERIOR_MIN_ROWS,
    TARGETS,
    EngineOptions,
    check_saved_types,
    posterior_obstacle,
    resolve_select,
    resolve_target,
)
from flowmatch.engine.seam import Modality, Objects
from flowmatch.errors import FlowmatchError
from flowmatch.modalities.manifolds import options as manifold_options
from flowmatch.modalities.manifolds.options import MANIFOLD_SET_NAMES, ManifoldOptions  # noqa: F401
from flowmatch.modalities.points import options as point_options
from flowmatch.modalities.points.options import PointOptions
from flowmatch.modalities.tables import options as table_options
from flowmatch.modalities.tables.options import TableOptions
from flowmatch.modalities.tokens import options as token_options
from flowmatch.modalities.tokens.options import TokenOptions

#: The modalities by kind: the options module of each (light) and the module holding its ``MODALITY``
#: (imported on first use). ``kind = auto`` asks them in this order; points, last, take the rest.
MODALITIES: dict[str, tuple[Any, str]] = {
    "manifold": (manifold_options, "flowmatch.modalities.manifolds.modality"),
    "tokens": (token_options, "flowmatch.modalities.tokens.modality"),
    "table": (table_options, "flowmatch.modalities.tables.modality"),
    "continuous": (point_options, "flowmatch.modalities.points.modality"),
}


#: What a run learns; ``auto`` asks the modalities (:func:`resolve_kind`).
KINDS = ("auto", *MODALITIES)


@dataclass
class TrainConfig(ManifoldOptions, TableOptions, TokenOptions, PointOptions, EngineOptions):
    """Everything that defines a training run: the engine's options, then each modality's. Every field is
    also a ``flowmatch train`` flag."""

    def check_fields(self, source: str) -> None:
        if self.kind not in KINDS:
            raise FlowmatchError(f"{source}: kind must be one of {', '.join(KINDS)}, got '{self.kind}'")


def modality(kind: str) -> Modality:
    """The :class:`~flowmatch.engine.seam.Modality` of ``kind`` (imported on first use)."""
    if kind not in MODALITIES:
        raise FlowmatchError(f"unknown kind {kind!r}; choose one of {', '.join(MODALITIES)}")
    return importlib.import_module(MODALITIES[kind][1]).MODALITY


def resolve_kind(config: TrainConfig, data: Any = None) -> str:
    """The kind of a config: as given, or for ``auto`` the first modality that claims its data (a name or a
    file, or ``data``: an object given in Python). :data:`MODALITIES` lists the order."""
    if config.kind != "auto":
        return config.kind
    for kind, (options, _) in MODALITIES.items():
        if options.claims(config, data):
            return kind
    return "continuous"


def kind_defaults(kind: str, given: dict[str, Any]) -> dict[str, Any]:
    """The defaults of ``kind`` for a run that sets ``given`` itself (its network, batches and schedule)."""
    if kind not in MODALITIES:
        raise FlowmatchError(f"unknown kind {kind!r}; choose one of {', '.join(MODALITIES)}")
    return MODALITIES[kind][0].defaults_for(given)


def defaults_of(kind: str, given: dict[str, Any] | None = None) -> TrainConfig:
    """The config a run of ``kind`` has when nothing is set: what an option is compared with to tell whether it was set."""
    return TrainConfig.from_dict({**kind_defaults(kind, given or {}), "kind": kind})


PRESETS: dict[str, dict[str, Any]] = {
    # The seed document's recipe: Gaussian path (its sigma_min default 0), the [t, x] -> 128 -> 128
    # ReLU MLP, Adam 1e-3 with a constant rate, batch 128, 10,000 steps, no EMA, seed 42, float32.
    "seed": {
        "data": "two-gaussians",
        "path": "gaussian",
        "sigma_min": 0.0,
        "model": "seed-mlp",
        "width": 128,
        "batch_size": 128,
        "batch_warmup": 0,
        "steps": 10_000,
        "optimizer": "adam",
        "lr": 1e-3,
        "lr_schedule": "constant",
        "warmup": 0,
        "ema": 0.0,
        "seed": 42,
        "precision": "fp32",
    },
}


def resolve_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then a preset, then explicit overrides (a config file or CLI flags)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise FlowmatchError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    values.update(overrides or {})
    return TrainConfig.from_dict(values)


def build_config(
    preset: str | None = None, file_values: dict[str, Any] | None = None, flags: dict[str, Any] | None = None, *,
    data: Any = None, source: str = "config",
) -> TrainConfig:  # fmt: skip
    """A new run's config: the defaults of its kind, then a preset, then a config file's values, then flags
    (or keyword arguments). The kind is ``kind`` as given, or what :func:`resolve_kind` finds for the data
    (``data``: an object given in Python)."""
    if preset is not None and preset not in PRESETS:
        raise FlowmatchError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    given = {**PRESETS.get(preset or "", {}), **(file_values or {})}
    flags = dict(flags or {})
    base = TrainConfig.from_dict(given, source=source)
    probe = TrainConfig.from_dict({**base.to_dict(), **flags}, source="flags")
    kind = resolve_kind(probe, data)
    values = {**kind_defaults(kind, {**given, **flags}), "kind": kind, **given}
    base = TrainConfig.from_dict(values, source=source)
    return TrainConfig.from_dict({**base.to_dict(), **flags}, source="flags")


# -- objects given in place of names ----------------------------------------------------------------
PYTHON = "python"  # the config's value for an object given to train()


OBJECT_KEYS = ("model", "data", "path", "source")


def check_arguments(folder: Any, name: str, **switches: Any) -> None:
    """The plain arguments of ``train`` and ``fit``: the run folder ``name`` (a path or None) and True/False
    ``switches``, each refused by name."""
    if folder is not None and not isinstance(folder, (str, os.PathLike)):
        raise FlowmatchError(f"{name} must be a path to a run folder or None, got {type(folder).__name__} {folder!r}")
    for key, value in switches.items():
        if not isinstance(value, bool):
            raise FlowmatchError(f"{key} must be True or False, got {type(value).__name__} {value!r}")


def split_objects(
    config: TrainConfig | None, overrides: dict[str, Any], *, resume: bool = False, **given: Any
) -> tuple[TrainConfig, Objects]:
    """The config (``"python"`` where an object stands in for a name) and the objects themselves.

    Without ``config`` the config is :func:`build_config`'s: the defaults of the data's kind under the
    overrides. A resumed run may leave out a model that its checkpoint rebuilds."""
    if config is not None and not isinstance(config, TrainConfig):
        hint = f": the first argument is the config; pass data={config!r}" if isinstance(config, (str, os.PathLike)) else ""
        raise FlowmatchError(f"config must be a TrainConfig or None, got {type(config).__name__}{hint}")
    objects = Objects()
    overrides = dict(overrides)
    for key in OBJECT_KEYS:
        value = given.get(key)
        if value is None:
            continue
        if isinstance(value, (str, os.PathLike)):
            overrides[key] = os.fspath(value)
            continue
        if key == "model" and not isinstance(value, _module_type()):
            raise FlowmatchError(f"model must be a name or a torch.nn.Module, got {type(value).__name__}")
        setattr(objects, key, value)
        overrides[key] = PYTHON
    if config is None:
        config = build_config(flags=overrides, data=objects.data, source="options")
    elif overrides:
        config = TrainConfig.from_dict({**config.to_dict(), **overrides})
    else:
        config.validate()
    for key in OBJECT_KEYS:
        if getattr(config, key) == PYTHON and getattr(objects, key) is None and not (resume and key == "model"):
            raise FlowmatchError(f"{key} '{PYTHON}' stands for an object given to train(): pass {key}=<the object>")
    if objects.model is not None and config.init_from:
        raise FlowmatchError("init_from starts from a run's model: it cannot be combined with model=")
    return config, objects


def _module_type() -> type:
    import torch

    return torch.nn.Module


def changed_fields(config: TrainConfig, other: TrainConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(other, f.name)]
