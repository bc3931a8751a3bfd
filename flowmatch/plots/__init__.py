"""Pictures: matplotlib figures of points, densities, fields and animations (:mod:`.figures`), and image grids
(:mod:`.images`).

Names are imported from their modules on first use.
"""

from flowmatch._lazy import lazy_exports

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
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

#: The pictures of a run (``flowmatch plot --what``) and their default files; ``density`` and ``field`` need 2-D data.
PICTURES = {
    "samples": "samples.png",
    "density": "density.png",
    "trajectories": "trajectories.png",
    "field": "field.png",
    "animation": "animation.gif",
    "nfe": "nfe.png",
}
__all__ = [*__all__, "PICTURES"]
