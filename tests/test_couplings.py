"""Couplings of training pairs: exact minibatch OT against brute force, Sinkhorn plans, classes."""

import itertools

import numpy as np
import pytest
import torch

from flowmatch.api import train
from flowmatch.couplings import cost_matrix, couple, plan, transport_cost
from flowmatch.errors import FlowmatchError


def _batch(n, seed, shift=3.0, shape=(2,)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *shape, generator=g)
    x1 = torch.randn(n, *shape, generator=g) * 0.5 + shift
    return x0, x1


def _brute_force_cost(x0, x1):
    cost = ((x0[:, None].double() - x1[None].double()) ** 2).flatten(2).sum(-1)
    n = len(x1)
    return min(cost[list(p), range(n)].sum().item() for p in itertools.permutations(range(n))) / n


@pytest.mark.parametrize("n", [2, 3, 5, 7])
@pytest.mark.parametrize("seed", range(5))
def test_ot_is_the_optimal_pairing(n, seed):
    x0, x1 = _batch(n, seed, shift=0.5)
    y0, y1 = couple(x0, x1, "ot")
    assert torch.equal(y1, x1)  # x1 keeps its order
    assert sorted(map(tuple, y0.tolist())) == sorted(map(tuple, x0.tolist()))  # a permutation of x0
    # float64 sums of <= 7 terms (round-off ~1e-15; measured 0 apart); the next-best permutation is
    # >= 1.6e-3 relative away on these seeds, so 1e-9 only admits the optimum
    assert transport_cost(y0, y1) == pytest.approx(_brute_force_cost(x0, x1), rel=1e-9, abs=1e-12)


def test_ot_costs_less_than_independent_and_handles_any_shape():
    x0, x1 = _batch(256, 0)
    y0, _ = couple(x0, x1, "ot")
    assert transport_cost(y0, x1) < transport_cost(x0, x1)
    # batch-first tensors of any shape (images): rows are compared flattened
    x0, x1 = _batch(6, 1, shift=0.3, shape=(1, 2, 2))
    y0, y1 = couple(x0, x1, "ot")
    assert y0.shape == x0.shape
    assert transport_cost(y0, y1) == pytest.approx(_brute_force_cost(x0, x1), rel=1e-9)  # float64; next best 1.1e-3 away


def test_independent_is_the_identity():
    x0, x1 = _batch(16, 0)
    y0, y1 = couple(x0, x1, "independent")
    assert y0 is x0 and y1 is x1


def test_sinkhorn_plan_has_uniform_marginals():
    x0, x1 = _batch(128, 2)
    p = plan(x0, x1, "sinkhorn", reg=0.05)
    n = len(x1)
    assert p.shape == (n, n) and (p >= 0).all()
    # POT's last update is u's, so row sums are exact up to float64 round-off (128 terms: ~1e-14;
    # measured 4e-16); column sums are only guaranteed to the stopping threshold, 2-norm < 1e-5 in
    # units of 1/n (measured 4.7e-9, but that is how far past it this batch happened to run): 10x that
    np.testing.assert_allclose(p.sum(0) * n, 1.0, rtol=0, atol=1e-4)
    np.testing.assert_allclose(p.sum(1) * n, 1.0, rtol=0, atol=1e-9)
    # the exact plan is a permutation divided by n
    q = plan(x0, x1, "ot")
    np.testing.assert_allclose(np.sort(q.ravel())[-n:] * n, 1.0)  # entries are a_i = 1/n: float64 round-off (measured 0)
    assert np.count_nonzero(q > 1e-12) == n  # the other entries are exact zeros; 1e-12 << 1/n


def test_sinkhorn_lies_between_independent_and_ot():
    x0, x1 = _batch(128, 3, shift=1.0)
    cost = cost_matrix(x0, x1)
    exact = (plan(x0, x1, "ot") * cost).sum()
    independent = cost.mean()
    tight, loose, huge = ((plan(x0, x1, "sinkhorn", reg=r) * cost).sum() for r in (0.02, 0.5, 100.0))
    assert exact <= tight < loose < huge < independent  # <P, C> over feasible plans is at least the OT cost
    assert tight < exact * 1.05  # small eps: close to the exact plan (measured 1.024; loose is 1.44)
    assert huge == pytest.approx(independent, rel=0.01)  # huge eps: nearly independent (measured 9.5e-4 apart; 10x)
    # pairs drawn from the tight plan cost about what the plan does (draws may repeat an x0)
    g = torch.Generator().manual_seed(0)
    drawn = np.mean([transport_cost(couple(x0, x1, "sinkhorn", reg=0.02, generator=g)[0], x1) for _ in range(5)])
    # Monte Carlo over 5 x 128 draws: standard error 1.5% of the cost, so 5% is 3.3 SE (measured 3.0%
    # on generator seed 0; the draws are a fixed function of the seed, float64 plan)
    assert drawn == pytest.approx(tight, rel=0.05)


def test_sinkhorn_draws_are_reproducible_with_a_generator():
    x0, x1 = _batch(64, 4)
    a = couple(x0, x1, "sinkhorn", generator=torch.Generator().manual_seed(7))[0]
    b = couple(x0, x1, "sinkhorn", generator=torch.Generator().manual_seed(7))[0]
    c = couple(x0, x1, "sinkhorn", generator=torch.Generator().manual_seed(8))[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("method", ["ot", "sinkhorn"])
def test_labels_match_within_classes(method):
    n = 60
    x0, x1 = _batch(n, 5, shift=0.0)
    labels = torch.tensor([2, 0, 1] * 20)[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    y0, y1 = couple(x0, x1, method, labels=labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y1, x1)
    start = 0
    for label in (0, 1, 2):  # x0's rows are dealt to the classes in order of the label
        rows = (labels == label).nonzero().squeeze(1)
        block = x0[start : start + len(rows)]
        start += len(rows)
        # every x0 given to this class comes from its block
        assert (torch.cdist(y0[rows], block).min(1).values == 0).all()
        if method == "ot":  # and within the class the pairing is the optimal one
            best = couple(block, x1[rows], "ot")[0]
            # the same permutation of the same rows: float64 sums of 20 terms (measured exactly equal)
            assert transport_cost(y0[rows], x1[rows]) == pytest.approx(transport_cost(best, x1[rows]), rel=1e-12)
    # matching within classes costs at least as much as matching across them
    if method == "ot":
        # exact inequality; 1e-12 covers float64 sums of 60 terms (~1e-14); measured 0.134 above
        assert transport_cost(y0, x1) >= transport_cost(couple(x0, x1, "ot")[0], x1) - 1e-12


def test_bad_input_is_one_clear_error():
    x0, x1 = _batch(8, 0)
    with pytest.raises(FlowmatchError, match="unknown coupling 'emd'"):
        couple(x0, x1, "emd")
    with pytest.raises(FlowmatchError, match="same shape"):
        couple(x0, x1[:4], "ot")
    with pytest.raises(FlowmatchError, match="labels must be an integer tensor of shape \\(8,\\)"):
        couple(x0, x1, "ot", labels=torch.zeros(7, dtype=torch.long))
    with pytest.raises(FlowmatchError, match="labels must be an integer"):
        couple(x0, x1, "ot", labels=torch.zeros(8))
    with pytest.raises(FlowmatchError, match="regularisation must be a positive"):
        couple(x0, x1, "sinkhorn", reg=0.0)


@pytest.mark.parametrize("coupling", ["ot", "sinkhorn"])
def test_training_with_a_coupling_is_reproducible(coupling):
    tiny = dict(steps=15, width=16, depth=2, batch_size=32, coupling=coupling, progress=False)
    a = train(seed=3, **tiny).flow.model.state_dict()
    b = train(seed=3, **tiny).flow.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
