"""A path as JSON and back, for run folders: built-in schedules by name, a :class:`CustomSchedule` by
importable references to its functions, a Schedule class of one's own by its importable class.
A path that cannot be named this way (a lambda, a local function) is refused with a message before
anything is written."""

from __future__ import annotations

from typing import Any

from flowmatch.errors import FlowmatchError
from flowmatch.imports import reference, resolve
from flowmatch.paths.affine import PATHS, AffinePath, make_path
from flowmatch.paths.schedules import CustomSchedule, GaussianSchedule


def path_to_config(path: AffinePath) -> dict[str, Any]:
    """JSON that :func:`path_from_config` turns back into ``path``."""
    if not isinstance(path, AffinePath):
        raise FlowmatchError(f"path must be a flowmatch AffinePath, got {type(path).__name__}")
    schedule = path.schedule
    spec: dict[str, Any] = {"bridge_sigma": path.bridge_sigma}
    if schedule.name in PATHS and type(schedule).__module__ == GaussianSchedule.__module__:
        return {"name": schedule.name, "sigma_min": getattr(schedule, "sigma_min", 0.0), **spec}
    if isinstance(schedule, CustomSchedule):
        functions = {"alpha": schedule._alpha, "sigma": schedule._sigma}
        for key in ("d_alpha", "d_sigma"):
            given = getattr(schedule, f"_given_{key}", None)
            if given is not None:
                functions[key] = given
        refs = {key: reference(fn, f"the CustomSchedule's {key}") for key, fn in functions.items()}
        return {"name": "custom", **refs, **spec}
    if _takes_arguments(type(schedule)):
        raise FlowmatchError(
            f"schedule {type(schedule).__qualname__} takes arguments, which a run folder cannot record; use a CustomSchedule"
        )
    return {"name": "schedule", "class": reference(type(schedule), "the schedule class"), **spec}


def path_from_config(spec: dict[str, Any]) -> AffinePath:
    name, bridge = spec["name"], float(spec.get("bridge_sigma", 0.0))
    if name == "custom":
        functions = {
            key: resolve(spec[key], f"the CustomSchedule's {key}") for key in ("alpha", "sigma", "d_alpha", "d_sigma") if spec.get(key)
        }
        return AffinePath(CustomSchedule(**functions), bridge)
    if name == "schedule":
        return AffinePath(resolve(spec["class"], "schedule class")(), bridge)
    return make_path(name, float(spec.get("sigma_min", 0.0)), bridge)


def _takes_arguments(cls: type) -> bool:
    import inspect

    parameters = list(inspect.signature(cls).parameters.values())
    return any(p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)
