"""ODE solvers for dx/dt = v(x, t): fixed-step Runge-Kutta tableaus (:mod:`.tableaus`) on time grids
(:mod:`.grids`), and torchdiffeq's adaptive solvers, behind one :func:`integrate` (:mod:`.integrate`).

Names are imported from their modules on first use.
"""

import importlib

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
    "integrate": "integration",
    "steps_for": "tableaus",
    "time_grid": "grids",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
