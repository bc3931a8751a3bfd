"""Probability paths x_t = alpha_t x1 + sigma_t x0 between a source sample x0 (t = 0) and data x1 (t = 1):
schedules (:mod:`.schedules`), the affine path with its velocity, conversions and posterior target
(:mod:`.affine`), and sampling under another schedule (:mod:`.transform`).

Names are imported from their modules on first use.
"""

import importlib

_EXPORTS = {
    "AffinePath": "affine",
    "CosineSchedule": "schedules",
    "CustomSchedule": "schedules",
    "GaussianSchedule": "schedules",
    "LinearSchedule": "schedules",
    "PATHS": "affine",
    "PREDICTIONS": "affine",
    "PathSample": "affine",
    "Schedule": "schedules",
    "make_path": "affine",
    "path_from_config": "specs",
    "path_to_config": "specs",
    "transform_schedule": "transform",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
