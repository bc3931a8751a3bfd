"""Sources at t = 0 given in Python: the rows of a tensor, or a sampler ``fn(n, generator) -> (n, D)``.

Built-in and file sources are data sets by name (``TrainConfig.source``); N(0, I) is the default.
Anything used as a source has ``sample(n, generator)`` in model coordinates, ``dim`` and
``gaussian_mixture`` (its density where it is an isotropic Gaussian mixture, for the posterior
target; None here).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

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
    """Draws from ``fn(n, generator)``, checked to return (n, dim) finite floats."""

    gaussian_mixture = None

    def __init__(self, fn: Callable[[int, torch.Generator], torch.Tensor], dim: int):
        self.fn, self.dim = fn, dim

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
