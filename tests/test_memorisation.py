"""Memorisation figures: the test split's own copy share is about 0.05 by construction, a model that
returns its training rows scores 1, and W1 matches its closed forms."""

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from flowmatch.errors import FlowmatchError
from flowmatch.evaluation.memorisation import (
    COPY_QUANTILE,
    MinMaxScale,
    closest_record_distances,
    memorisation,
    memorisation_warning,
    w1_l1,
)


def _gaussian_split(seed=0, n_train=2000, n_test=400, dim=5):
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 20.0, dim)  # columns in different units: the min-max scaling evens them
    return (
        torch.randn(n_train, dim, generator=g) * scale,
        torch.randn(n_test, dim, generator=g) * scale,
        torch.randn(n_train, dim, generator=g) * scale,
    )


def test_test_split_scores_five_percent_by_construction_and_fresh_rows_about_the_same():
    train, test, fresh = _gaussian_split()
    report = memorisation(fresh, train, test)
    # the test rows against their own 5% quantile: 0.05 up to one row of rounding
    assert abs(report["copy_share"]["test"] - COPY_QUANTILE) <= 1 / len(test)
    # fresh draws: the share is 0.05 up to the quantile's sampling error on 400 test rows
    # (sd sqrt(0.05 * 0.95 / 400) = 0.011) and the 2,000 draws' own (0.005): 3 sd each
    assert report["copy_share"]["value"] == pytest.approx(0.05, abs=3 * 0.011 + 3 * 0.005)
    # measured 1.041 on seed 0, 0.975-1.041 over seeds 0-7 (sd 0.02): 0.06 is 3 sd
    assert report["dcr_ratio"]["value"] == pytest.approx(1.0, abs=0.06)
    assert report["dcr_ratio"]["test"] == 1.0
    assert memorisation_warning(report) == ""


def test_a_model_that_returns_its_training_rows_scores_one():
    train, test, _ = _gaussian_split(seed=1)
    report = memorisation(train, train, test)
    assert report["copy_share"]["value"] == 1.0
    assert report["dcr_ratio"]["value"] == 0.0
    assert report["w_train"]["value"] == pytest.approx(0.0, abs=1e-9)  # identical sets: zero-cost pairs (measured 0)
    # W_test of the copy is the test split's reference for W_test (a draw of training rows), up to which rows
    # (measured 0.7% apart on seed 1, within 2.5% over seeds 0-7)
    assert report["w_test"]["value"] == pytest.approx(report["w_test"]["test"], rel=0.1)
    assert "copies its training data" in memorisation_warning(report)


def test_near_copies_count_as_copies_and_a_shifted_copy_does_not():
    train, test, _ = _gaussian_split(seed=2)
    span = train.max(0).values - train.min(0).values
    jitter = torch.randn(train.shape, generator=torch.Generator().manual_seed(3)) * span * 1e-3
    assert memorisation(train + jitter, train, test)["copy_share"]["value"] == 1.0
    far = memorisation(train + span, train, test)  # every column moved by its whole range
    assert far["copy_share"]["value"] == 0.0 and far["dcr_ratio"]["value"] > 1


def test_w1_l1_closed_forms():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(300, 1, generator=g, dtype=torch.float64), 2 + torch.randn(200, 1, generator=g, dtype=torch.float64)
    # in one dimension W1 is the integral of |F_x - F_y| (scipy's exact formula)
    # float64, two exact algorithms (measured 4e-16 relative apart)
    assert w1_l1(x, y) == pytest.approx(wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy()), rel=1e-9)
    # two point masses: the L1 distance between them
    a, b = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64), torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    assert w1_l1(a, b) == pytest.approx(3.5)  # float64 sums of exact binary fractions


def test_min_max_scale_and_closest_records():
    train = torch.tensor([[0.0, 5.0, 1.0], [10.0, 5.0, 3.0]], dtype=torch.float64)  # column 1 is constant
    scale = MinMaxScale(train)
    assert torch.equal(scale(train), torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]], dtype=torch.float64))
    points = scale(torch.tensor([[5.0, 6.0, 1.0]], dtype=torch.float64))
    assert closest_record_distances(points, scale(train)).tolist() == [pytest.approx(1.5)]  # 0.5 + 1 + 0, float64


def test_bad_input_is_one_clear_error():
    train, test, fresh = _gaussian_split(seed=5, n_train=50, n_test=20)
    with pytest.raises(FlowmatchError, match="dimension mismatch"):
        memorisation(fresh[:, :3], train, test)
    bad = fresh.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(FlowmatchError, match="generated contains NaN"):
        memorisation(bad, train, test)
    with pytest.raises(FlowmatchError, match="test needs at least 2 rows"):
        memorisation(fresh, train, test[:1])
    with pytest.raises(FlowmatchError, match="must be a tensor or array"):
        memorisation([[1.0]], train, test)
    assert memorisation(np.asarray(fresh), np.asarray(train), np.asarray(test))["n"] == 50
