"""Trained flows, what samples and scores, one class per kind of state: continuous rows (:mod:`.continuous`:
points, arrays, images), tokens with continuous features beside them (:mod:`.discrete`: token sequences and
mixed-type tables), points on a manifold (:mod:`.riemannian`). Each has ``kind``, ``config``, ``model``,
``sample(n, **options)`` and ``checkpoint_meta()`` (what rebuilds it around its weights).

Names are imported from their modules on first use.
"""

from flowmatch._lazy import lazy_exports

_EXPORTS = {
    "DiscreteFlow": "discrete",
    "Flow": "continuous",
    "RiemannianFlow": "riemannian",
    "Samples": "continuous",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
