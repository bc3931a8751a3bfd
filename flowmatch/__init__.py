"""flowmatch: flow matching generative models.

Convention: t = 0 is noise (x0 ~ N(0, I)) and t = 1 is data; sampling integrates
dx/dt = v(x, t) forward from t = 0 to t = 1.

    import flowmatch
    result, metrics = flowmatch.fit(flowmatch.TrainConfig(data="moons"), out="runs/moons")
    flow = flowmatch.load("runs/moons")
    x = flow.sample(1000, solver="rk4", nfe=100)

Names are imported on first use, so ``import flowmatch`` and the CLI start quickly.
"""

from flowmatch._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "AffinePath": "paths",
    "CustomSchedule": "paths",
    "DiscreteFlow": "flows.discrete",
    "Flow": "flows.continuous",
    "RiemannianFlow": "flows.riemannian",
    "FlowmatchError": "errors",
    "Samples": "flows.continuous",
    "TrainConfig": "config",
    "distill": "rectify",
    "distillation_loss": "losses",
    "evaluate": "api",
    "fit": "api",
    "flow_matching_loss": "losses",
    "from_factory": "models",
    "integrate": "solvers",
    "load": "runs",
    "make_path": "paths",
    "mean_flow_sample": "solvers",
    "meanflow_loss": "losses",
    "meanflow_times": "losses",
    "picture": "api",
    "quality": "evaluation",
    "reflow": "rectify",
    "sample_to_file": "api",
    "sample_times": "losses",
    "sde_sample": "solvers",
    "train": "api",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
