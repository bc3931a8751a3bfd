"""Probability paths between a source sample x0 (t = 0) and data x1 (t = 1): the one protocol every path
follows, affine, geodesic or discrete (:mod:`.base`); schedules (:mod:`.schedules`), the affine path
x_t = alpha_t x1 + sigma_t x0 with its velocity, conversions and posterior target (:mod:`.affine`), and
sampling under another schedule (:mod:`.transform`).

Names are imported from their modules on first use.
"""

from flowmatch._lazy import lazy_exports

_EXPORTS = {
    "AffinePath": "affine",
    "CosineSchedule": "schedules",
    "CustomSchedule": "schedules",
    "GaussianSchedule": "schedules",
    "LinearSchedule": "schedules",
    "PATHS": "affine",
    "PREDICTIONS": "affine",
    "PathSample": "base",
    "ProbabilityPath": "base",
    "Schedule": "schedules",
    "make_path": "affine",
    "path_from_config": "specs",
    "path_to_config": "specs",
    "transform_schedule": "transform",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
