"""flowmatch: flow matching generative models.

Convention: t = 0 is noise (x0 ~ N(0, I)) and t = 1 is data; sampling integrates
dx/dt = v(x, t) forward from t = 0 to t = 1.

    import flowmatch
    result, metrics = flowmatch.fit(flowmatch.TrainConfig(data="moons"), out="runs/moons")
    flow = flowmatch.load("runs/moons")
    x = flow.sample(1000, solver="rk4", nfe=100)

Names are imported on first use, so ``import flowmatch`` and the CLI start quickly.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "AffinePath": "paths",
    "CustomSchedule": "paths",
    "make_path": "paths",
    "Flow": "flow",
    "Samples": "flow",
    "load": "runs",
    "FlowmatchError": "errors",
    "integrate": "solvers",
    "TrainConfig": "training",
    "fit": "training",
    "train": "training",
    "evaluate": "evaluation",
    "quality": "evaluation",
    "flow_matching_loss": "losses",
    "distillation_loss": "losses",
    "sample_times": "losses",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'flowmatch' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
