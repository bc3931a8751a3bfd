"""Sources at t = 0 given in Python: the rows of a tensor, a sampler ``fn(n, generator) -> (n, D)``, or an
object with ``sample(n, generator)`` and ``dim``.

Built-in and file sources are data sets by name (``TrainConfig.source``); N(0, I) is the default.
Anything used as a source has ``sample(n, generator)`` in model coordinates and ``dim``.

**Declaring a Gaussian mixture** (the posterior target). The posterior target averages over the source's
components, so it needs the source's density. A source declares it with a public attribute (or property)
``gaussian_mixture``: a :class:`flowmatch.densities.GaussianMixture` (weights (K,), means (K, D), stds (K,):
the density sum_k w_k N(mu_k, tau_k^2 I)) that is the law of what it draws, in the coordinates it draws in;
None or no such attribute declares nothing. A sampler function carries it as an attribute of its own::

    def two_blobs(n, generator):
        ...
    two_blobs.gaussian_mixture = GaussianMixture(weights, means, stds)

and an object with ``sample`` as an attribute or a property; the built-in mixtures as sources (by name) have
theirs. Any source that declares one gets the posterior target (``target auto``: where the rest applies,
:func:`flowmatch.engine.options.resolve_target`); one that declares none trains on the conditional target,
and ``target posterior`` with it is refused, saying so. flowmatch checks the declaration's shapes and values
(:func:`declared_mixture`), not that the draws follow it: a wrong declaration gives a wrong target.
Rows (a tensor) declare nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from flowmatch.densities import GaussianMixture
from flowmatch.errors import FlowmatchError

SOURCE_ROWS = "source.safetensors"


class RowSource:
    """Uniform draws (with replacement) from fixed rows (N, D)."""

    gaussian_mixture = None

    def __init__(self, rows):
        rows = torch.as_tensor(rows)
        if not rows.is_floating_point() or rows.ndim < 2 or len(rows) < 1 or not torch.isfinite(rows).all():
            raise FlowmatchError(f"a source of rows must be a finite float tensor (N, ...), got {rows.dtype} {tuple(rows.shape)}")
        self.rows = rows.reshape(len(rows), -1).to(torch.float32)
        self.dim = self.rows.shape[1]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.rows[torch.randint(len(self.rows), (n,), generator=generator)]


class SamplerSource:
    """Draws from ``fn(n, generator)``, checked to return (n, dim) finite floats; its ``gaussian_mixture`` is the
    one ``fn`` declares (:func:`declared_mixture`), else None."""

    def __init__(self, fn: Callable[[int, torch.Generator], torch.Tensor], dim: int):
        self.fn, self.dim = fn, dim
        self.gaussian_mixture = declared_mixture(fn, dim)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        x = self.fn(n, generator)
        if not isinstance(x, torch.Tensor) or x.shape[0] != n or x[0].numel() != self.dim or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise FlowmatchError(f"the source sampler must return a float tensor of {n} rows of {self.dim} values, got {got}")
        return x.reshape(n, -1).to(torch.float32)


def as_source(source: Any, dim: int):
    """A source given in Python as an object with ``sample``: rows (a tensor or array) or a callable."""
    if hasattr(source, "sample") and hasattr(source, "dim"):
        found = source
    elif callable(source):
        found = SamplerSource(source, dim)
    else:
        found = RowSource(source)
    if found.dim != dim:
        raise FlowmatchError(f"the source has dimension {found.dim}, the data {dim}")
    return found


def declared_mixture(source: Any, dim: int) -> GaussianMixture | None:
    """The isotropic Gaussian mixture ``source`` declares as the law of its draws (its ``gaussian_mixture``,
    module docstring; None where it declares none), checked: weights (K,) positive and summing to 1, means
    (K, ``dim``), stds (K,) positive, all finite. Returned in float64."""
    mixture = getattr(source, "gaussian_mixture", None)
    if mixture is None:
        return None
    if not isinstance(mixture, GaussianMixture):
        raise FlowmatchError(
            f"the source's gaussian_mixture must be a flowmatch.densities.GaussianMixture (or None), got {type(mixture).__name__}"
        )
    try:
        weights, means, stds = (torch.as_tensor(v, dtype=torch.float64) for v in (mixture.weights, mixture.means, mixture.stds))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise FlowmatchError(f"the source's gaussian_mixture must hold tensors of numbers ({exc})") from None
    k = weights.shape[0] if weights.ndim == 1 else -1
    if k < 1 or means.shape != (k, dim) or stds.shape != (k,):
        raise FlowmatchError(
            f"the source's gaussian_mixture must have weights (K,), means (K, {dim}) and stds (K,), got shapes "
            f"{tuple(weights.shape)}, {tuple(means.shape)} and {tuple(stds.shape)}"
        )
    if not all(torch.isfinite(v).all() for v in (weights, means, stds)) or not (weights > 0).all() or not (stds > 0).all():
        raise FlowmatchError("the source's gaussian_mixture must have finite values, positive weights and positive stds")
    if abs(float(weights.sum()) - 1.0) > 1e-6:
        raise FlowmatchError(f"the source's gaussian_mixture weights must sum to 1, got {float(weights.sum()):.6g}")
    return GaussianMixture(weights, means, stds)


def source_to_config(source) -> dict[str, Any]:
    """JSON naming a Python source (rows: the file :func:`save_source_rows` writes)."""
    from flowmatch.imports import reference

    if isinstance(source, RowSource):
        return {"kind": "rows", "file": SOURCE_ROWS, "dim": source.dim}
    if isinstance(source, SamplerSource):
        return {"kind": "sampler", "sampler": reference(source.fn, "the source sampler"), "dim": source.dim}
    return {"kind": "object", "class": reference(type(source), "the source's class"), "dim": source.dim, "rebuild": False}


def save_source_rows(source, folder: Path) -> None:
    """``folder / source.safetensors`` for a source of rows (nothing for other sources)."""
    from flowmatch.storage import save_tensors

    if isinstance(source, RowSource):
        save_tensors(folder / SOURCE_ROWS, {"rows": source.rows})


def source_from_config(spec: dict[str, Any], folder: Path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from flowmatch.imports import resolve

    if spec.get("kind") == "rows":
        try:
            return RowSource(load_file(str(folder / spec["file"]))["rows"])
        except (OSError, KeyError, ValueError, SafetensorError) as exc:  # safetensors: nothing is unpickled
            raise FlowmatchError(f"{folder / spec.get('file', SOURCE_ROWS)}: cannot read the source rows ({exc})") from None
    if spec.get("kind") == "sampler":
        return SamplerSource(resolve(spec["sampler"], "source sampler"), int(spec["dim"]))
    raise FlowmatchError(f"{folder}: the run's source ({spec.get('class')}) was an object that is not saved; pass it again")
