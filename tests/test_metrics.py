"""Sample-quality metrics against cases with known answers; tolerances from each estimator's measured spread."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from flowmatch.errors import FlowmatchError
from flowmatch.evaluation import metrics as metrics
from flowmatch.evaluation.metrics import MAX_EXACT_W2, energy_distance, gaussian_w2, mmd, precision_recall, quality, sliced_w2, w2_exact


def _normal(n, dim, seed, shift=0.0):
    return np.random.default_rng(seed).standard_normal((n, dim)) + shift


def test_w2_of_a_translation_is_the_shift():
    """Moving every point by c is an optimal plan (cyclically monotone), so W2 = |c| exactly."""
    x = _normal(500, 3, 0)
    c = np.array([0.3, -1.2, 2.0])
    # float64 costs |x|^2 + |y|^2 - 2 x.y: round-off ~1e-15 on costs ~5 (measured 3e-15 relative)
    assert w2_exact(x, x + c) == pytest.approx(np.linalg.norm(c), rel=1e-9)
    # exactly 0: given the same array, POT zeroes its cost's diagonal (unmasked it is ~3.6e-15 here, whose
    # square root, ~6e-8, a 1e-9 tolerance would not survive)
    assert w2_exact(x, x) == pytest.approx(0.0, abs=1e-9)


def test_w2_converges_to_the_gaussian_closed_form():
    """Empirical W2 between N(0, I) and N((1, 0), I) samples is near the closed form 1: measured 0.974
    at n = 1000, where the floor (W2 between two N(0, I) draws) is 0.207; tolerance: half the floor."""
    x, y = _normal(1000, 2, 1), _normal(1000, 2, 2, shift=np.array([1.0, 0.0]))
    exact = gaussian_w2([0, 0], np.eye(2), [1, 0], np.eye(2))
    assert exact == pytest.approx(1.0)  # float64 closed form (measured exact)
    floor = w2_exact(_normal(1000, 2, 3), x)
    assert floor < 0.25  # measured 0.207
    assert w2_exact(x, y) == pytest.approx(exact, abs=floor / 2)  # measured 0.974: 0.026 off, tolerance 0.10


def test_sliced_w2_of_a_translation():
    """SW2^2 = E_theta (theta . c)^2 = |c|^2 / D for a translation; with 2000 projections the estimate
    varies by ~0.5% between seeds (measured 3.520 to 3.553 against 3.536)."""
    x = _normal(400, 2, 4)
    c = np.array([3.0, 4.0])
    # 2%: 4 seed-to-seed sd; this seed measured 0.14% off
    assert sliced_w2(x, x + c, n_projections=2000, seed=0) == pytest.approx(5.0 / math.sqrt(2), rel=0.02)


def test_mmd_matches_the_gaussian_closed_form():
    """One bandwidth h, P = N(0, I), Q = N(mu, I) in D dims:
    MMD^2 = 2 (h^2 / (h^2 + 2))^(D/2) (1 - exp(-|mu|^2 / (2 (h^2 + 2)))).
    Measured over 8 seeds at n = 2000: mean 0.1441 (closed form 0.1448), standard deviation 0.0051; between
    two draws of the same distribution the standard deviation is 0.0003 but the distribution is skewed (a
    weighted sum of chi-squares; largest of 30 seeds 0.0010, this seed 0.0013). Tolerances: 4 sd, and 0.003
    for the null case (still 1/50 of the shifted value)."""
    dim, h, mu = 2, 1.5, np.array([1.0, 0.5])
    expected = 2 * (h**2 / (h**2 + 2)) ** (dim / 2) * (1 - math.exp(-(mu @ mu) / (2 * (h**2 + 2))))
    x, y = _normal(2000, dim, 5), _normal(2000, dim, 6, shift=mu)
    assert mmd(x, y, bandwidths=(h,)) == pytest.approx(expected, abs=0.02)  # this seed: 0.1389 (0.006 off)
    same = mmd(_normal(2000, dim, 7), x, bandwidths=(h,))
    assert abs(same) < 0.003


def test_energy_distance_matches_the_1d_closed_form():
    """X ~ N(0, 1), Y ~ N(m, 1): X - Y ~ N(-m, s^2), s^2 = 2, so E|X - Y| = s sqrt(2/pi) exp(-m^2 / (2 s^2))
    + m (1 - 2 Phi(-m / s)), and E|X - X'| = 2 / sqrt(pi). Measured over 8 seeds at n = 3000: mean 0.543
    (closed form 0.542), standard deviation 0.024; 0.0003 between draws of one distribution, skewed like the
    MMD's. Tolerances: 4 sd, and 0.003 for the null case."""
    m, s = 1.0, math.sqrt(2.0)
    e_xy = s * math.sqrt(2 / math.pi) * math.exp(-(m**2) / (2 * s**2)) + m * (1 - 2 * norm.cdf(-m / s))
    expected = 2 * e_xy - 2 * (2 / math.sqrt(math.pi))
    x, y = _normal(3000, 1, 8), _normal(3000, 1, 9, shift=m)
    assert energy_distance(x, y) == pytest.approx(expected, abs=0.1)  # this seed: 0.558 (0.017 off)
    assert abs(energy_distance(_normal(3000, 1, 10), x)) < 0.003  # this seed: 0.00055


def test_precision_and_recall():
    data = np.concatenate([_normal(1000, 2, 11, shift=-4.0), _normal(1000, 2, 12, shift=4.0)])
    other = np.concatenate([_normal(1000, 2, 13, shift=-4.0), _normal(1000, 2, 14, shift=4.0)])
    one_mode = _normal(2000, 2, 15, shift=-4.0)  # covers half of the data
    p, r = precision_recall(other, data)
    assert p > 0.9 and r > 0.9  # measured 0.984 and 0.980
    p, r = precision_recall(one_mode, data)
    assert p > 0.9  # every sample looks like data (measured 0.974)
    # but only half of the data is covered: binomial SE at 2,000 points 0.011, so 0.05 is 4.5 SE (measured 0.487)
    assert r == pytest.approx(0.5, abs=0.05)
    p, r = precision_recall(_normal(500, 2, 16, shift=30.0), data)
    assert p == 0.0 and r == 0.0


def test_quality_reports_each_metric_beside_its_floor(monkeypatch):
    held, other = _normal(500, 2, 17), _normal(500, 2, 18)
    good = quality(_normal(500, 2, 19), held, other)
    bad = quality(_normal(500, 2, 20, shift=1.0), held, other)
    assert set(good) == {"w2", "sliced_w2", "mmd", "energy", "precision", "recall"}
    for name in ("w2", "sliced_w2", "mmd", "energy"):
        assert good[name]["floor"] == bad[name]["floor"]
        assert bad[name]["value"] > good[name]["value"]
        assert bad[name]["value"] > 3 * abs(good[name]["floor"])  # measured >= 5.1x (W2) to 430x (energy)
    # two independent draws of one distribution: measured 0.91 x the floor; the shifted draw is 5.1x
    assert good["w2"]["value"] == pytest.approx(good["w2"]["floor"], rel=0.35)
    monkeypatch.setattr(metrics, "MAX_EXACT_W2", 100)  # above the limit exact W2 is left out
    many = quality(_normal(101, 1, 21), _normal(101, 1, 22), _normal(101, 1, 23))
    assert "w2" not in many and "sliced_w2" in many


def test_bad_input():
    x = _normal(10, 2, 0)
    with pytest.raises(FlowmatchError, match="dimension mismatch"):
        w2_exact(x, _normal(10, 3, 0))
    with pytest.raises(FlowmatchError, match="limited"):
        w2_exact(_normal(MAX_EXACT_W2 + 1, 1, 0), x[:, :1])
    with pytest.raises(FlowmatchError, match="NaN"):
        mmd(np.full((3, 2), np.nan), x)
    with pytest.raises(FlowmatchError, match="shape"):
        energy_distance(torch.zeros(5), x)
    with pytest.raises(FlowmatchError, match="k must be"):
        precision_recall(x, x, k=10)


# -- the shape score -----------------------------------------------------------------------------------
def _two_gaussian_sets(n, seed, *, shrink=1.0, left_share=None):
    """Three draws of two-gaussians (generated, held, held_other) with their component labels; the
    generated set's points pulled towards their mode's mean by ``shrink``, or ``left_share`` of them
    taken from the left mode."""
    from flowmatch.data import toy

    held, other = toy.sample_builtin("two-gaussians", n, seed + 1), toy.sample_builtin("two-gaussians", n, seed + 2)
    x, k = toy.sample_builtin("two-gaussians", 4 * n, seed + 3, labels=True)
    if left_share is not None:
        x = torch.cat([x[k == 0][: round(left_share * n)], x[k == 1][: n - round(left_share * n)]])
    else:
        x, k = x[:n], k[:n]
        centre = torch.tensor([[-4.0, 0.0], [4.0, 0.0]])[k]
        x = centre + shrink * (x - centre)
    return x, held, other, [toy.components("two-gaussians", v) for v in (x, held, other)]


def test_the_shape_score_sees_a_wrong_shape_that_w2_of_the_mixture_passes():
    """Every mode's points shrunk to half their spread, shares right: the within-mode W2 is about
    0.5 * E|z| ~ 0.5 * 1.25 = 0.63 per mode, against a floor of about 0.2 at 300 points a mode (at 0.6 of
    the spread: measured 1.9x at 300 and 2.9x at 1,000 points a mode, where W2 of the mixture gave 1.3-2.2x); exact draws score near 1 (measured 1.05 over five seeds at 1,000, 0.8 to
    1.25 holds at 300 points: the ratio of two W2s of such sets varies by about 10%); the shares are right in both."""
    from flowmatch.evaluation.metrics import median_shape, shape_score

    exact, narrow = [], []
    for seed in range(3):
        x, a, b, labels = _two_gaussian_sets(600, 10 * seed)
        exact.append(shape_score(x, a, b, labels=labels, seed=seed))
        x, a, b, labels = _two_gaussian_sets(600, 10 * seed, shrink=0.5)
        narrow.append(shape_score(x, a, b, labels=labels, seed=seed))
    good, bad = median_shape(exact), median_shape(narrow)
    assert good["kind"] == "modes" and good["sets"] == 3 and 0.8 < good["ratio"] < 1.25
    assert bad["ratio"] > 2.0
    for score in (good, bad):  # 600 points: share sd 0.02, floor E TV ~ 0.016
        assert score["shares"]["value"] < 0.07 and 0.01 < score["shares"]["floor"] < 0.025 and score["missing"] == []


def test_the_shape_score_sees_wrong_shares_apart_from_the_shape():
    """60% of the points in the left mode: the share TV is 0.1 (up to the one draw), over 4x its floor of
    about 0.016, while each mode's shape is exact (within ratio near 1)."""
    from flowmatch.evaluation.metrics import shape_score

    x, a, b, labels = _two_gaussian_sets(600, 3, left_share=0.6)
    score = shape_score(x, a, b, labels=labels)
    assert score["shares"]["value"] == pytest.approx(0.1, abs=0.03) and score["shares"]["value"] > 4 * score["shares"]["floor"]
    assert score["shares"]["generated"][0] == pytest.approx(0.6) and 0.75 < score["ratio"] < 1.33


def test_a_missing_mode_is_named_and_left_to_the_shares():
    from flowmatch.evaluation.metrics import shape_score

    x, a, b, labels = _two_gaussian_sets(400, 5, left_share=1.0)
    score = shape_score(x, a, b, labels=labels)
    assert score["missing"] == [1] and score["per_mode"][1]["w2"] is None
    assert score["shares"]["value"] == pytest.approx(0.5, abs=0.05)


def test_the_share_floor_is_the_multinomial_closed_form_for_two_modes():
    """Two equal modes: TV = |B/n - 1/2| with B ~ Binomial(n, 1/2), whose mean is n C(n, n/2) / 2^(n+1) / n
    for even n (a closed form); at n = 100, 0.0398. The Monte-Carlo floor (2,000 draws) has sd
    0.03 / sqrt(2000) = 7e-4: 5 sd is 0.0035."""
    from flowmatch.evaluation.metrics import share_floor

    n = 100
    exact = math.comb(n, n // 2) / 2 ** (n + 1)  # E|B - n/2| / n
    assert share_floor([0.5, 0.5], n, seed=0) == pytest.approx(exact, abs=0.0035)


def test_without_components_the_shape_score_is_the_energy_distance_beside_its_floor():
    """A shift of 1 in one coordinate of N(0, I) in 2-D: the energy distance is 2 E|X + s - Y| - 2 E|X - Y|
    ~ 0.34 at s = 1 (Monte Carlo); the V-statistic adds 2 E|X - X'| / 500 = 2 * 1.77 / 500 = 0.0071 to value
    and floor alike, so the floor is about 0.007 (sd ~0.003) and the ratio near 50."""
    from flowmatch.evaluation.metrics import shape_score

    g = torch.Generator().manual_seed(0)
    a, b, x = (torch.randn(500, 2, generator=g) for _ in range(3))
    score = shape_score(x + torch.tensor([1.0, 0.0]), a, b)
    assert score["kind"] == "energy" and score["energy"]["value"] == pytest.approx(0.34, abs=0.08)
    assert 0.003 < score["energy"]["floor"] < 0.02 and score["ratio"] > 10
    assert score["energy"]["floor"] == pytest.approx(energy_distance(b, a) + 2 * 1.77 / 500, abs=0.002)


def test_samples_collapsed_towards_their_mean_score_above_the_floor():
    """Blurry samples (a held-out draw of N(0, I_64) shrunk to 0.7 of its spread, as a model that averages
    gives): their energy distance to the data is positive (E|0.7X - Y| is below E|X - Y| by less than the
    samples' own spread is below the data's), so the score is above the floor (about 5x at 400 points). The
    size bias in value and floor is the reference's own, E|Y - Y'| (1/n + 1/m), so the floor is the same
    number whatever the samples are."""
    from flowmatch.evaluation.metrics import shape_score

    g = torch.Generator().manual_seed(0)
    a, b, x = (torch.randn(400, 64, generator=g) for _ in range(3))
    blurry = shape_score(0.7 * x, a, b)
    exact = shape_score(x, a, b)
    assert blurry["energy"]["floor"] == exact["energy"]["floor"]  # the floor is the data's, not the samples'
    assert blurry["ratio"] > 3 and 0.5 < exact["ratio"] < 2
