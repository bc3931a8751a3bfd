"""Couplings: how the noise (source) points x0 of a training batch are paired with its data points x1.

Conditional flow matching regresses v(x_t, t) onto the velocity of a path between a pair
(x0, x1). Any joint distribution pi(x0, x1) whose marginals are the source q0 and the data q1 gives
a valid objective; the marginal field it learns carries q0 to q1 whatever the coupling. The coupling
decides how *straight* that field is: independent pairs cross each other, so the learned field
averages crossing directions and its trajectories curve; pairs from an optimal transport plan do
not cross (cyclical monotonicity), so the field is nearly straight and few solver steps suffice
(OT-CFM, Tong et al. 2023; batch OT, Pooladian et al. 2023).

Given a batch x0_1..x0_n and x1_1..x1_n (rows flattened to vectors) and the squared Euclidean
cost C_ij = ||x0_i - x1_j||^2, with uniform weights a = b = (1/n) 1:

- ``independent``: pi = a b^T, i.e. the pairs as drawn (x0 and x1 returned unchanged).
- ``ot``: the exact minibatch OT problem

      min_{P in U(a, b)} <P, C>,   U(a, b) = {P >= 0 : P 1 = a, P^T 1 = b},

  solved by POT's network simplex (``ot.emd``). Its optimum is a vertex of U(a, b), which for
  equal, uniform weights is a permutation matrix divided by n (Birkhoff), so the result is
  x0 reordered: row j of the returned x0 is x0_{sigma(j)} with sigma the optimal assignment, and
  sum_j ||x0_{sigma(j)} - x1_j||^2 is the smallest over all n! permutations.
- ``sinkhorn``: the entropic OT problem

      min_{P in U(a, b)} <P, C> - eps H(P),   H(P) = -sum_ij P_ij (log P_ij - 1),

  solved by Sinkhorn's iterations (``ot.sinkhorn``); its solution P = diag(u) exp(-C / eps) diag(v)
  is a blurred permutation, and as eps -> 0 it tends to the ``ot`` plan, as eps -> inf to the
  independent one. ``reg`` is relative to the batch's mean cost: eps = reg * mean_ij C_ij, so one
  value works whatever the scale of the data. Pairs are then *drawn* from the plan: x1 keeps its
  order and for each j an index i ~ P_ij / sum_i P_ij is drawn with the given torch generator
  (so training stays reproducible and resumable); x0 rows may then repeat or go unused in one
  batch, and each x0_i is used sum_j P_ij / b_j = n a_i = 1 time in expectation.

In every case x1 (and ``labels``) come back in their original order; only x0 is rearranged.

With ``labels`` (the class of each x1 row, for class-conditional training), pairs are matched
within each class only: x0's rows are dealt to the classes in order (the first k_0 rows to the
k_0 points of the smallest label, the next k_1 to the next, ...; the x0 are i.i.d., so which noise
goes to which class does not matter), and each class's block is coupled on its own.

Cost: the network simplex grows roughly like n^2 to n^3 in the batch size; at batch 256 in 2-D a
coupling costs more than the rest of a default training step (``bench/fewstep.py`` measures them;
figures in bench/results/design-figures.md).

Example::

    x0, x1 = couple(torch.randn(256, 2), data_batch, "ot")   # x0 reordered to match x1
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from flowmatch.errors import FlowmatchError

COUPLINGS: tuple[str, ...] = ("independent", "ot", "sinkhorn")

#: Sinkhorn's stopping threshold on the marginal error (in units of the uniform weight 1/n) and
#: its iteration cap; a plan that has not converged by then is still a valid plan to draw from.
SINKHORN_TOL = 1e-5
SINKHORN_MAX_ITER = 2000


def couple(
    x0: torch.Tensor,
    x1: torch.Tensor,
    method: str,
    *,
    reg: float = 0.05,
    generator: torch.Generator | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-pair a batch: returns (x0', x1) with x0' a rearrangement of x0's rows (see the module doc).

    ``x0`` and ``x1`` are (n, ...) tensors of the same shape (batch first); ``method`` is one of
    :data:`COUPLINGS`; ``reg`` the relative entropic regularisation of ``sinkhorn``;
    ``generator`` the torch generator for sinkhorn's draws (None: torch's global one); ``labels``
    an optional (n,) integer tensor of x1's classes, to match within classes.
    """
    if method not in COUPLINGS:
        raise FlowmatchError(f"unknown coupling '{method}'; choose one of {', '.join(COUPLINGS)}")
    if not isinstance(x0, torch.Tensor) or not isinstance(x1, torch.Tensor):
        raise FlowmatchError("couple: x0 and x1 must be tensors")
    if x0.shape != x1.shape or x0.dim() < 2 or len(x0) < 1:
        raise FlowmatchError(f"couple: x0 and x1 must have the same shape (n, ...), got {tuple(x0.shape)} and {tuple(x1.shape)}")
    if method == "sinkhorn" and not (isinstance(reg, (int, float)) and np.isfinite(reg) and reg > 0):
        raise FlowmatchError(f"couple: the sinkhorn regularisation must be a positive number, got {reg!r}")
    if labels is not None:
        labels = _check_labels(labels, len(x1))
    if method == "independent":
        return x0, x1
    if labels is None:
        return x0[_match(x0, x1, method, reg, generator)], x1

    out = torch.empty_like(x0)
    start = 0
    for label in torch.unique(labels, sorted=True):
        rows = (labels == label).nonzero().squeeze(1)
        block = x0[start : start + len(rows)]
        start += len(rows)
        out[rows] = block[_match(block, x1[rows], method, reg, generator)]
    return out, x1


def _check_labels(labels, n: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.shape != (n,) or labels.is_floating_point() or labels.is_complex():
        got = f"{labels.dtype} of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise FlowmatchError(f"couple: labels must be an integer tensor of shape ({n},), one per x1 row, got {got}")
    return labels


def cost_matrix(x0: torch.Tensor, x1: torch.Tensor) -> np.ndarray:
    """C_ij = ||x0_i - x1_j||^2 over the flattened rows, float64 numpy (n0, n1)."""
    a = x0.detach().flatten(1).to("cpu", torch.float64)
    b = x1.detach().flatten(1).to("cpu", torch.float64)
    # ||a||^2 + ||b||^2 - 2 a.b in float64: exact enough for an assignment, clamped at 0
    cost = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return cost.clamp_min_(0.0).numpy()


def plan(x0: torch.Tensor, x1: torch.Tensor, method: str = "ot", reg: float = 0.05) -> np.ndarray:
    """The transport plan P (n, n), float64 numpy, rows x0 and columns x1, each marginal 1/n.

    ``ot``: the exact plan of the minibatch OT problem; ``sinkhorn``: the entropic one with
    eps = reg * mean cost (see the module doc).
    """
    import ot

    cost = cost_matrix(x0, x1)
    n0, n1 = cost.shape
    a, b = np.full(n0, 1.0 / n0), np.full(n1, 1.0 / n1)
    if method == "ot":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the iteration cap is generous; a rare early stop is still a coupling
            return ot.emd(a, b, cost, numItermax=max(100_000, 50 * n0 * n1))
    if method != "sinkhorn":
        raise FlowmatchError(f"unknown plan '{method}'; choose ot or sinkhorn")
    scale = cost.mean()
    if not scale > 0:  # all points equal: every plan costs 0
        return np.outer(a, b)
    relative = cost / scale
    # the kernel exp(-C / eps) underflows when C / eps > ~700: then iterate in the log domain
    solver = "sinkhorn" if relative.max() / reg < 600 else "sinkhorn_log"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "did not converge": the plan is still a plan to draw from
        result = ot.sinkhorn(a, b, relative, reg, method=solver, numItermax=SINKHORN_MAX_ITER, stopThr=SINKHORN_TOL / n1)
    return np.asarray(result)


def _match(x0: torch.Tensor, x1: torch.Tensor, method: str, reg: float, generator) -> torch.Tensor:
    """For each x1 row j, the index of its x0 row: the optimal assignment, or a draw from the plan."""
    n = len(x1)
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    p = plan(x0, x1, method, reg)
    if method == "ot":
        # each column of a permutation plan has one entry 1/n; argmax finds it
        return torch.from_numpy(p.argmax(axis=0)).long()
    columns = torch.from_numpy(p.T.copy())  # (n1, n0): row j is x1_j's conditional over x0
    columns = torch.where(torch.isfinite(columns), columns.clamp_min(0.0), torch.zeros(()))
    empty = columns.sum(1) <= 0
    if empty.any():  # a column lost to underflow: fall back to the uniform conditional there
        columns[empty] = 1.0
    return torch.multinomial(columns, 1, generator=generator).squeeze(1)


def transport_cost(x0: torch.Tensor, x1: torch.Tensor) -> float:
    """Mean squared distance of the pairs, (1/n) sum_j ||x0_j - x1_j||^2 (the minibatch OT objective)."""
    return (x0.detach().flatten(1).double() - x1.detach().flatten(1).double()).pow(2).sum(1).mean().item()
