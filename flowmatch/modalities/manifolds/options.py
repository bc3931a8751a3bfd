"""The options of points on manifolds (Riemannian flow matching), beside the engine's (:mod:`flowmatch.engine.options`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowmatch.engine.options import option

KIND = "manifold"


#: The manifolds of kind manifold: ``auto`` is a built-in set's own (or what a file's columns say).
MANIFOLD_CHOICES = ("auto", "euclidean", "sphere", "torus", "so3")


#: The built-in sets on manifolds (the keys of :data:`flowmatch.manifolds.MANIFOLD_SETS`, which a test
#: keeps equal), named here so that resolving a kind imports nothing heavy.
MANIFOLD_SET_NAMES = ("S2-vmf", "S2-checkerboard", "T2-wrapped", "SO3-multimodal")


@dataclass
class ManifoldOptions:
    manifold: str = option(
        "auto",
        "kind manifold: the manifold (auto: a built-in set's own, or a file's columns: lat,lon -> sphere, w,x,y,z -> so3); "
        "sphere, torus (angles, with --units), so3 (quaternions); euclidean trains the ordinary Euclidean flow on a built-in "
        "set's ambient coordinates (straight paths from N(0, I)), the comparison",
        choices=MANIFOLD_CHOICES,
    )
    units: str = option(
        "auto",
        "kind manifold: angles in a data file (and in samples written as .csv) are degrees or radians; auto: degrees for "
        "latitude/longitude, radians for the built-in torus; a torus file must say",
        choices=("auto", "degrees", "radians"),
    )
    columns: str = option(
        "",
        "kind manifold: a .csv file's columns to read, comma separated: latitude,longitude (sphere), the angles (torus) or "
        "w,x,y,z (so3); empty: found by their names (lat/lon, w/x/y/z; every column for a torus)",
    )


# Riemannian flow matching: the tangent MLP from the uniform law. ReLU: the sphere's coordinates lie in
# [-1, 1], where SiLU units are nearly polynomial of low degree; a SiLU network did not learn the sphere
# checkerboard's field at all in 6,000 steps (KL 0.69 nats = the uniform law's), ReLU reached 0.17, and
# also lowered the KL of S2-vmf and T2-wrapped from 0.02 to 0.003 or less (bench/results/manifolds.md)
DEFAULTS: dict[str, Any] = {
    "model": "tangent-mlp",
    "source": "uniform",
    "activation": "relu",
    "width": 256,
    "depth": 3,
    "batch_size": 512,
    "batch_warmup": 0,
    "lr": 2e-3,
    "warmup": 200,
    "grad_clip": 1.0,
    "steps": 6000,
    "val_every": 100,
}


def defaults_for(given: dict[str, Any]) -> dict[str, Any]:
    """:data:`DEFAULTS`: a warm-up of at most a tenth of the given steps; the Euclidean comparison starts from
    N(0, I), R^D having no uniform law."""
    values = dict(DEFAULTS)
    if "steps" in given:
        values["warmup"] = min(values["warmup"], int(given["steps"]) // 10)
    if given.get("manifold") == "euclidean":
        values["source"] = "gaussian"
    return values


def claims(config: Any, data: Any) -> bool:
    """kind auto: a built-in manifold set, or any data with ``manifold`` given."""
    return config.manifold != "auto" or (data is None and config.data in MANIFOLD_SET_NAMES)
