"""ODE solvers for dx/dt = v(x, t): fixed-step Runge-Kutta tableaus (:mod:`.tableaus`) on time grids
(:mod:`.grids`), and torchdiffeq's adaptive solvers, behind one :func:`integrate` (:mod:`.integrate`);
the Euler-Maruyama sampler with the ODE's marginals for Gaussian paths (:mod:`.sde`); few-step
sampling with a MeanFlow average-velocity model (:mod:`.meanflow`).

Names are imported from their modules on first use.
"""

from flowmatch._lazy import lazy_exports

_EXPORTS = {
    "ADAPTIVE_SOLVERS": "tableaus",
    "ADAPTIVE_TRAJECTORY_POINTS": "integration",
    "FIXED_SOLVERS": "tableaus",
    "GridSpec": "grids",
    "SOLVERS": "tableaus",
    "Solution": "integration",
    "TABLEAUS": "tableaus",
    "TIME_GRIDS": "grids",
    "Tableau": "tableaus",
    "Velocity": "integration",
    "instantaneous_velocity": "meanflow",
    "integrate": "integration",
    "mean_flow_sample": "meanflow",
    "score_from_velocity": "sde",
    "sde_sample": "sde",
    "steps_for": "tableaus",
    "time_grid": "grids",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
