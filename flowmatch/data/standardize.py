"""Standardisation: the affine map between data coordinates and the model's, with its log-determinant."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from flowmatch.errors import FlowmatchError


def _as_float_tensor(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.float32)


@dataclass(eq=False)
class Standardizer:
    """The affine map between data coordinates x and model coordinates z = (x - mean) / std.

    ``mean`` and ``std`` are float64 tensors of shape (D,); ``std > 0``. Its Jacobian is diag(1 / std), so
    log p_data(x) = log p_model(z) + log |dz/dx| with log |dz/dx| = -sum(log std).

    ``fixed`` (bool, shape (D,)) marks the columns that were constant where the map was fitted: there
    ``std`` is 1 and ``mean`` is the constant, the model trains on the column as 0, and :meth:`inverse`
    gives back the constant exactly (whatever the model generated in it). Such a column has no density;
    log-densities count it as the model's density at 0 (its std of 1 adds nothing to log |dz/dx|).

    >>> s = Standardizer.fit(x)          # x: (N, D) points in data coordinates
    >>> z = s.forward(x)                 # mean 0, std 1 per column
    >>> x_back = s.inverse(z)
    """

    mean: torch.Tensor
    std: torch.Tensor
    fixed: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.mean = torch.as_tensor(self.mean, dtype=torch.float64).detach().cpu()
        self.std = torch.as_tensor(self.std, dtype=torch.float64).detach().cpu()
        fixed = torch.zeros(self.mean.shape, dtype=torch.bool) if self.fixed is None else self.fixed
        self.fixed = torch.as_tensor(fixed, dtype=torch.bool).detach().cpu()
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape or len(self.mean) == 0:
            raise FlowmatchError(
                f"standardizer: mean and std must be 1-D of the same length >= 1, got shapes "
                f"{tuple(self.mean.shape)} and {tuple(self.std.shape)}"
            )
        if not torch.isfinite(self.mean).all() or not torch.isfinite(self.std).all():
            raise FlowmatchError("standardizer: mean and std must be finite")
        if not (self.std > 0).all():
            raise FlowmatchError("standardizer: std must be positive")
        if self.fixed.shape != self.mean.shape:
            raise FlowmatchError(f"standardizer: fixed must have one flag per column ({self.dim}), got shape {tuple(self.fixed.shape)}")
        if (self.std[self.fixed] != 1).any():
            raise FlowmatchError("standardizer: a fixed (constant) column must have std 1")
        #: mean 0 and std 1: both maps give back their input (x - 0) / 1 = x exactly, so they skip the arithmetic
        self.is_identity = bool((self.mean == 0).all() and (self.std == 1).all())

    @property
    def dim(self) -> int:
        return len(self.mean)

    @classmethod
    def fit(cls, x) -> Standardizer:
        """Per-column mean and (population) std of ``x`` (N, D); columns of zero variance are ``fixed``
        at their value, with std 1.

        A column counts as constant when std <= 1e-10 |mean| (rounding noise of a constant column); its
        ``mean`` is then its first value, so that :meth:`inverse` gives back the file's own number.
        """
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise FlowmatchError(f"standardizer: need points of shape (N, D) with N, D >= 1, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise FlowmatchError("standardizer: the points contain NaN or infinite values")
        mean = x.mean(dim=0)
        std = x.std(dim=0, correction=0)
        fixed = std <= 1e-10 * mean.abs()
        return cls(torch.where(fixed, x[0], mean), torch.where(fixed, torch.ones_like(std), std), fixed)

    @classmethod
    def identity(cls, dim: int) -> Standardizer:
        """The identity map in ``dim`` dimensions: mean 0, std 1."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise FlowmatchError(f"standardizer: dim must be a positive integer, got {dim!r}")
        return cls(torch.zeros(dim), torch.ones(dim))

    def _check_dim(self, x: torch.Tensor) -> None:
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise FlowmatchError(f"expected points of dimension {self.dim}, got shape {tuple(x.shape)}")

    def forward(self, x) -> torch.Tensor:
        """Data -> model coordinates: z = (x - mean) / std, in x's dtype and device."""
        x = _as_float_tensor(x)
        self._check_dim(x)
        if self.is_identity:
            return x
        return (x - self.mean.to(x)) / self.std.to(x)

    def inverse(self, z) -> torch.Tensor:
        """Model -> data coordinates: x = z * std + mean, in z's dtype and device; a ``fixed`` column is its
        constant, exactly (to z's precision)."""
        z = _as_float_tensor(z)
        self._check_dim(z)
        x = z * self.std.to(z) + self.mean.to(z)
        assert self.fixed is not None
        if self.fixed.any():
            x[..., self.fixed.to(z.device)] = self.mean[self.fixed].to(z)
        return x

    @property
    def fixed_columns(self) -> list[int]:
        """The 0-based indices of the ``fixed`` (constant) columns."""
        assert self.fixed is not None
        return [int(j) for j in torch.nonzero(self.fixed).flatten()]

    def log_abs_det(self) -> float:
        """log |det dz/dx| = -sum(log std): add it to a model-space log density to get the data-space one."""
        return float(-torch.log(self.std).sum())

    def to_dict(self) -> dict:
        """``{"mean": [...], "std": [...]}`` with plain floats (JSON-serialisable), and ``"fixed"``: the
        0-based indices of the constant columns, where there are any."""
        out = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.fixed_columns:
            out["fixed"] = self.fixed_columns
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Standardizer:
        """Inverse of :meth:`to_dict`; validates types, lengths and values (``fixed`` is optional: none)."""
        if not isinstance(d, Mapping):
            raise FlowmatchError(f"standardizer: expected a mapping with 'mean' and 'std', got {type(d).__name__}")
        values = {}
        for key in ("mean", "std"):
            if key not in d:
                raise FlowmatchError(f"standardizer: missing key {key!r}")
            v = d[key]
            if not isinstance(v, (list, tuple)) or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in v):
                raise FlowmatchError(f"standardizer: {key!r} must be a list of numbers, got {v!r}")
            values[key] = torch.tensor([float(a) for a in v], dtype=torch.float64)
        if len(values["mean"]) != len(values["std"]):
            raise FlowmatchError(f"standardizer: 'mean' has {len(values['mean'])} values but 'std' has {len(values['std'])}")
        indices = d.get("fixed", [])
        dim = len(values["mean"])
        if not isinstance(indices, (list, tuple)) or not all(
            isinstance(j, int) and not isinstance(j, bool) and 0 <= j < dim for j in indices
        ):
            raise FlowmatchError(f"standardizer: 'fixed' must be a list of column indices in [0, {dim}), got {indices!r}")
        fixed = torch.zeros(dim, dtype=torch.bool)
        fixed[list(indices)] = True
        return cls(values["mean"], values["std"], fixed)
