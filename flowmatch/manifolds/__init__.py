"""Riemannian flow matching (Chen & Lipman 2024) on spheres, flat tori, SO(3) and R^d.

- :mod:`.manifolds`: the manifolds (exp, log, projections, distances, uniform and wrapped normal
  distributions, network features, validation) and quaternion helpers;
- :mod:`.paths`: the geodesic conditional path x_t = exp_{x0}(kappa_t log_{x0}(x1)) and its velocity;
- :mod:`.solvers`: Runge-Kutta solvers stepping through the exponential map;
- :mod:`.likelihood`: log-densities through the Riemannian divergence;
- :mod:`.losses`: the Riemannian flow matching loss.

The geometry is math: it imports nothing above it. What uses it: :class:`flowmatch.flows.riemannian.RiemannianFlow`
(the flow), :mod:`flowmatch.models.tangent` (tangent-valued models), :mod:`flowmatch.data.manifolds` (data sets on
manifolds and a run's splits), :mod:`flowmatch.evaluation.geodesic` (their figures), and the runs of kind
manifold, :mod:`flowmatch.modalities.manifolds`.

Names are imported from their modules on first use.
"""

from flowmatch._lazy import lazy_exports

_EXPORTS = {
    "Euclidean": "manifolds",
    "FlatTorus": "manifolds",
    "GeodesicPath": "paths",
    "GeodesicSample": "paths",
    "MANIFOLDS": "manifolds",
    "MANIFOLD_SOLVERS": "solvers",
    "Manifold": "manifolds",
    "ON_MANIFOLD_TOLERANCE": "manifolds",
    "SO3": "manifolds",
    "Sphere": "manifolds",
    "integrate_manifold": "solvers",
    "make_manifold": "manifolds",
    "manifold_divergence": "likelihood",
    "manifold_from_config": "manifolds",
    "manifold_log_prob": "likelihood",
    "matrix_to_quaternion": "manifolds",
    "quaternion_multiply": "manifolds",
    "quaternion_to_axis_angle": "manifolds",
    "quaternion_to_matrix": "manifolds",
    "riemannian_loss": "losses",
    "sinc": "manifolds",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
