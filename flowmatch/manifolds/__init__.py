"""Riemannian flow matching (Chen & Lipman 2024) on spheres, flat tori, SO(3) and R^d.

- :mod:`.manifolds`: the manifolds (exp, log, projections, distances, uniform and wrapped normal
  distributions, network features, validation) and quaternion helpers;
- :mod:`.paths`: the geodesic conditional path x_t = exp_{x0}(kappa_t log_{x0}(x1)) and its velocity;
- :mod:`.solvers`: Runge-Kutta solvers stepping through the exponential map;
- :mod:`.likelihood`: log-densities through the Riemannian divergence;
- :mod:`.flow`: the loss and :class:`RiemannianFlow` (its tangent-valued models are :mod:`flowmatch.models.tangent`'s);
- :mod:`.data` and :mod:`.metrics`: data sets on manifolds, a run's splits of them, and their evaluation.

Runs of kind manifold are :mod:`flowmatch.modalities.manifolds`'.

Names are imported from their modules on first use.
"""

from flowmatch._lazy import lazy_exports

_EXPORTS = {
    "Euclidean": "manifolds",
    "FLOW_SOURCES": "flow",
    "FlatTorus": "manifolds",
    "GeodesicPath": "paths",
    "GeodesicSample": "paths",
    "MANIFOLDS": "manifolds",
    "MANIFOLD_SETS": "data",
    "ManifoldRunData": "data",
    "MANIFOLD_SOLVERS": "solvers",
    "Manifold": "manifolds",
    "ON_MANIFOLD_TOLERANCE": "manifolds",
    "RiemannianFlow": "flow",
    "SO3": "manifolds",
    "Sphere": "manifolds",
    "WrappedNormal": "data",
    "integrate_manifold": "solvers",
    "load_manifold_data": "data",
    "make_manifold": "manifolds",
    "manifold_divergence": "likelihood",
    "manifold_from_config": "manifolds",
    "manifold_log_prob": "likelihood",
    "manifold_report": "metrics",
    "matrix_to_quaternion": "manifolds",
    "quaternion_multiply": "manifolds",
    "quaternion_to_axis_angle": "manifolds",
    "quaternion_to_matrix": "manifolds",
    "riemannian_loss": "flow",
    "sinc": "manifolds",
    "wrapped_gaussian_scale": "flow",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
