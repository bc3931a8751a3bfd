"""Pictures: matplotlib figures of points, densities, fields and animations (:mod:`.figures`), and image grids
(:mod:`.images`).

Names are imported from their modules on first use.
"""

import importlib

_EXPORTS = {
    "DATA_COLOR": "figures",
    "SAMPLE_COLOR": "figures",
    "animate_flow": "figures",
    "plot_density": "figures",
    "plot_field": "figures",
    "plot_nfe": "figures",
    "plot_pairs": "figures",
    "plot_samples": "figures",
    "plot_trajectories": "figures",
    "save_class_grid": "images",
    "save_figure": "figures",
    "save_image_grid": "images",
    "save_trajectory_strip": "images",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
