"""Mixed-type table metrics: closed forms of W1, TV and the association measures, train-on-synthetic
scores of a fresh draw and of shuffled labels, memorisation of a copy and of a fresh draw, and the report."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wasserstein_distance
from threadpoolctl import threadpool_limits

from flowmatch.errors import FlowmatchError
from flowmatch.evaluation.memorisation import COPY_QUANTILE, memorisation
from flowmatch.evaluation.tables import (
    association_distance,
    association_matrix,
    correlation_ratio,
    cramers_v,
    format_table_report,
    marginal_distances,
    memorisation_share,
    ml_efficiency,
    split_test,
    table_report,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # gradient boosting's OpenMP threads thrash on a busy 2-core machine (measured 3 s a fit, 0.07 s on one thread)
    with threadpool_limits(limits=1):
        yield


def _table(n, seed):
    """A mixed table: two normal columns, a Poisson count, a category, and a yes/no label depending on all three."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n) * 5 + 10
    c = rng.choice(np.array(["a", "b", "c"]), n, p=[0.5, 0.3, 0.2])
    logit = 2 * x1 + (x2 - 10) / 2.5 + pd.Series(c).map({"a": -1.0, "b": 0.0, "c": 1.5}).to_numpy()
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame({"x1": x1, "x2": x2, "k": rng.poisson(3, n), "c": pd.Categorical(c), "y": y})


# ------------------------------------------------------------------------------------------ marginals


def test_tv_of_identical_and_disjoint_categories():
    a = pd.DataFrame({"c": ["x", "y", "y", "z", None, "x"]})
    assert marginal_distances(a, a)["c"] == {"kind": "category", "metric": "TV", "distance": 0.0, "missing": 0.0}
    b = pd.DataFrame({"c": ["u", "v", "v", "w"]})
    assert marginal_distances(b, a)["c"]["distance"] == pytest.approx(1.0, abs=1e-12)  # no category in common
    # missing is a category: half missing against none moves half the mass (exact binary fractions)
    half = pd.DataFrame({"c": ["x", None, "x", None]})
    only_x = pd.DataFrame({"c": ["x", "x", "x", "x"]})
    entry = marginal_distances(half, only_x)["c"]
    assert entry["distance"] == 0.5 and entry["missing"] == 0.5
    # bool and category dtypes are categorical
    flags = pd.DataFrame({"f": [True, False, True, True], "g": pd.Categorical(["p", "q", "p", "p"])})
    assert {e["kind"] for e in marginal_distances(flags, flags).values()} == {"category"}


def test_w1_of_a_shifted_normal_column_is_the_shift_over_the_std():
    rng = np.random.default_rng(0)
    x = rng.normal(size=4000) * 3
    reference = pd.DataFrame({"v": x})
    # the same draws shifted: W1 is exactly the shift (the quantile functions differ by it everywhere)
    exact = marginal_distances(pd.DataFrame({"v": x + 1.5}), reference)["v"]
    assert exact["kind"] == "numeric" and exact["metric"] == "W1"
    assert exact["distance"] == pytest.approx(1.5 / x.std(), rel=1e-9)  # float64 sums of 4,000 terms
    # a fresh draw shifted by half a std: 0.5 up to the sample means' difference, sd sqrt(2 / 4000) = 0.022
    # in std units (measured sd 0.024, max error 0.06 over 200 seeds): 0.09 is about 4 sd
    fresh = marginal_distances(pd.DataFrame({"v": rng.normal(size=4000) * 3 + 1.5}), reference)["v"]
    assert fresh["distance"] == pytest.approx(0.5, abs=0.09)


def test_numeric_missing_cells_are_left_out_of_w1_and_counted_beside():
    reference = pd.DataFrame({"v": pd.array([1, 2, 3, 4], dtype="Int64")})
    synthetic = pd.DataFrame({"v": pd.array([1, 2, None, 4], dtype="Int64")})
    entry = marginal_distances(synthetic, reference)["v"]
    # W1 of the non-missing values {1, 2, 4} against {1, 2, 3, 4} over the reference std sqrt(1.25)
    assert entry["distance"] == pytest.approx(wasserstein_distance([1, 2, 4], [1, 2, 3, 4]) / math.sqrt(1.25), rel=1e-12)
    assert entry["missing"] == 0.25
    # a constant reference column: std 0, divided by 1
    constant = marginal_distances(pd.DataFrame({"v": [2.0, 2.0, 2.0, 2.0]}), pd.DataFrame({"v": [1.0, 1.0, 1.0, 1.0]}))
    assert constant["v"]["distance"] == 1.0


# --------------------------------------------------------------------------------------- associations


def test_cramers_v_of_dependent_and_independent_columns():
    rng = np.random.default_rng(1)
    a = rng.choice(np.array(["p", "q", "r", "s"]), 2000)
    b = pd.Series(a).map({"p": 1, "q": 2, "r": 3, "s": 4}).to_numpy(dtype=object)
    # a relabelling: chi^2 = n (k - 1), and the bias correction subtracts the same (k-1)^2/(n-1) from
    # numerator and denominator, so V is exactly 1 up to rounding
    assert cramers_v(a, b) == pytest.approx(1.0, abs=1e-9)
    n = 5000
    x, y = rng.choice(np.array(["a", "b", "c"]), n), rng.choice(np.array(["u", "v", "w", "z"]), n)
    # independent: chi^2 ~ chi^2_6, below 22.5 with probability 0.999; the correction removes 6 / n, so
    # V^2 <= (22.5 - 6) / n / min(2, 3) = 0.0017 and V <= 0.041
    assert cramers_v(x, y) < 0.05


def test_pearson_and_correlation_ratio_closed_forms_with_missing_cells_dropped():
    rng = np.random.default_rng(2)
    n = 500
    x = rng.normal(size=n)
    c = rng.choice(np.array(["a", "b", "c"]), n)
    determined = pd.Series(c).map({"a": -1.0, "b": 0.5, "c": 3.0}).to_numpy()
    frame = pd.DataFrame({"x": x, "y": 2 * x, "c": c, "d": determined, "noise": rng.normal(size=n)})
    frame.loc[:19, "x"] = np.nan  # rows missing in a pair's column are dropped for that pair only
    frame.loc[10:29, "c"] = None
    names, matrix = association_matrix(frame)
    assert names == ["x", "y", "c", "d", "noise"]
    at = {(a, b): matrix[names.index(a), names.index(b)] for a in names for b in names}
    assert np.allclose(matrix, matrix.T) and np.allclose(np.diag(matrix), 1.0)
    assert at["x", "y"] == pytest.approx(1.0, abs=1e-12)  # y = 2x exactly: r = 1 up to rounding
    assert at["c", "d"] == pytest.approx(1.0, abs=1e-12)  # no spread within a category: SS_within = 0
    assert correlation_ratio(c, determined) == pytest.approx(1.0, abs=1e-12)
    # independent normal noise against x: r ~ N(0, 1/n), |r| < 4 / sqrt(480) = 0.18; eta^2 of 3 groups is
    # about chi^2_2 / n, eta < sqrt(13.8 / 480) = 0.17 with probability 0.999
    assert abs(at["x", "noise"]) < 0.18 and at["c", "noise"] < 0.17


def test_association_distance_is_zero_for_the_same_frame_and_sees_a_broken_dependence():
    frame = _table(2000, 3)
    assert association_distance(frame, frame) == 0.0
    broken = frame.copy()
    broken["x2"] = np.random.default_rng(4).permutation(broken["x2"].to_numpy())  # same marginal, no association
    names, matrix = association_matrix(frame)
    # x2's entries (all 4 pairs) fall to about 0: the distance is about the mean of |those entries| over the 10 pairs
    expected = np.abs(np.delete(matrix[names.index("x2")], names.index("x2"))).sum() / 10
    # the shuffled entries are sampling noise of size 1/sqrt(2000) = 0.02 each, 4 of the 10 pairs: their effect on
    # the mean is at most about 4 * 0.02 / 10 = 0.008, and 0.02 is generous
    assert association_distance(broken, frame) == pytest.approx(expected, abs=0.02)
    # x2 drives the label (entry measured 0.465, the other three about 0.02: expected 0.052), and the measured
    # distance was within 0.007 of it over 5 shuffles
    assert expected > 0.04


# ------------------------------------------------------------------------------------- ML efficiency


def test_a_fresh_draw_scores_like_the_real_rows_and_shuffled_labels_do_not():
    train, test, fresh = _table(1000, 10), _table(1000, 11), _table(1000, 12)
    report = ml_efficiency(fresh, train, test)
    assert (report["target"], report["task"], report["metric"]) == ("y", "classification", "accuracy")
    assert report["gap"] == report["real"] - report["synthetic"]
    # both models scored on the same 1,000 test rows: the gap's test sampling sd is at most
    # sqrt(disagreement / n) = 0.01 for 10% disagreement, plus the two training draws' own
    # (measured |gap| <= 0.017 over seeds 0-5): 0.05 is well above both
    assert abs(report["gap"]) < 0.05 and abs(report["macro_f1"]["gap"]) < 0.05
    assert report["real"] > 0.7  # the label is learnable (measured 0.79-0.82)
    shuffled = fresh.copy()
    shuffled["y"] = np.random.default_rng(13).permutation(shuffled["y"].to_numpy())
    broken = ml_efficiency(shuffled, train, test)
    # labels independent of the features: accuracy about p^2 + (1-p)^2 = 0.5 against about 0.8 real
    # (measured gap 0.28-0.36 over seeds 0-5)
    assert broken["gap"] > 0.2


def test_regression_target_one_class_and_unseen_categories():
    train, test = _table(600, 20), _table(600, 21)
    regression = ml_efficiency(_table(600, 22), train, test, target="x2")
    assert (regression["task"], regression["metric"]) == ("regression", "r2")
    # x2 is predictable only through the label (a weak signal, R^2 measured 0.11-0.18): a fresh draw's R^2 is
    # about the real one's (measured |gap| <= 0.027 over 5 seeds)
    assert abs(regression["gap"]) < 0.15 and "macro_f1" not in regression
    one_class = train.copy()
    one_class["y"] = "yes"  # a constant prediction: accuracy is the test share of "yes"
    report = ml_efficiency(one_class, train, test)
    assert report["synthetic"] == pytest.approx(float((test["y"] == "yes").mean()))
    unseen = test.copy()
    unseen["c"] = pd.Categorical(np.where(np.arange(len(unseen)) % 2 == 0, "never-seen", unseen["c"].astype(str)))
    unseen.loc[:49, "x1"] = np.nan
    assert 0 <= ml_efficiency(train, train, unseen)["synthetic"] <= 1
    with pytest.raises(FlowmatchError, match="target 'nope' is not a column"):
        ml_efficiency(train, train, test, target="nope")


# ------------------------------------------------------------------------------------- memorisation


def test_a_copy_of_train_is_flagged_and_a_fresh_draw_scores_like_the_test_split():
    train, test, fresh = _table(1000, 30), _table(400, 31), _table(1000, 32)
    copy = memorisation_share(train, train, test)
    # every copied row is at distance 0 < the test rows' 5% DCR quantile (positive: continuous columns)
    assert copy["copy_share"]["value"] == 1.0 and copy["dcr_ratio"]["value"] == 0.0 and copy["exact_share"]["value"] == 1.0
    assert "copies its training data" in copy["warning"]
    new = memorisation_share(fresh, train, test)
    # the test rows against their own 5% quantile: 0.05 up to one row of rounding
    assert abs(new["copy_share"]["reference"] - COPY_QUANTILE) <= 1 / len(test)
    # fresh rows: 0.05 up to the quantile's sampling error on 400 test rows (sd sqrt(0.05 * 0.95 / 400) = 0.011)
    # and the 1,000 draws' own (0.007): 3 sd each (measured 0.032-0.078 over seeds 0-5)
    assert new["copy_share"]["value"] == pytest.approx(0.05, abs=3 * 0.011 + 3 * 0.007)
    # measured 0.986-1.061 over seeds 0-5 (sd about 0.03): 0.12 is 4 sd
    assert new["dcr_ratio"]["value"] == pytest.approx(1.0, abs=0.12) and new["dcr_ratio"]["reference"] == 1.0
    assert new["exact_share"] == {"value": 0.0, "reference": 0.0} and new["warning"] == ""


def test_numeric_rows_score_as_the_memorisation_module_does():
    rng = np.random.default_rng(40)
    scale = np.array([1.0, 10.0, 100.0])
    train, test, generated = (rng.normal(size=(n, 3)) * scale for n in (300, 100, 200))
    frames = [pd.DataFrame(a, columns=["a", "b", "c"]) for a in (generated, train, test)]
    ours = memorisation_share(*frames)
    theirs = memorisation(generated, train, test)
    # the same min-max scaling and L1 distances: equal up to float rounding
    assert ours["copy_share"]["value"] == pytest.approx(theirs["copy_share"]["value"], abs=1e-12)
    assert ours["copy_share"]["reference"] == pytest.approx(theirs["copy_share"]["test"], abs=1e-12)
    assert ours["dcr_ratio"]["value"] == pytest.approx(theirs["dcr_ratio"]["value"], rel=1e-9)


# ------------------------------------------------------------------------------------------- report


def _messy(n, seed):
    """Float, nullable integer, category, bool and string columns with missing cells."""
    frame = _table(n, seed)
    rng = np.random.default_rng(seed + 100)
    frame["k"] = pd.array(frame["k"], dtype="Int64")
    frame.loc[rng.random(n) < 0.1, "k"] = pd.NA
    frame.loc[rng.random(n) < 0.05, "x1"] = np.nan
    frame["c"] = frame["c"].cat.add_categories(["d"])
    frame.loc[rng.random(n) < 0.05, "c"] = np.nan
    frame["flag"] = frame["x1"].fillna(0) > 0
    frame.loc[rng.random(n) < 0.05, "y"] = None
    return frame


def _figures(report):
    yield from (entry for entry in report["marginals"]["columns"].values())
    yield from (entry["missing"] for entry in report["marginals"]["columns"].values())
    yield report["marginals"]["mean_w1"]
    yield report["marginals"]["mean_tv"]
    yield report["associations"]
    yield from (report["memorisation"][k] for k in ("copy_share", "dcr_ratio", "exact_share"))


def test_table_report_on_a_mixed_frame_with_missing_cells():
    train, test, synthetic = _messy(600, 50), _messy(400, 51), _messy(500, 52)
    synthetic = synthetic[list(reversed(synthetic.columns))]  # column order follows train
    report = table_report(synthetic, train, test, seed=3)
    assert list(report["marginals"]["columns"]) == list(train.columns)
    kinds = {c: e["kind"] for c, e in report["marginals"]["columns"].items()}
    assert kinds == {"x1": "numeric", "x2": "numeric", "k": "numeric", "c": "category", "y": "category", "flag": "category"}
    for figure in _figures(report):
        assert set(figure) >= {"value", "reference"}
        assert math.isfinite(figure["value"]) and math.isfinite(figure["reference"])
    ml = report["ml_efficiency"]
    assert ml["target"] == "flag"  # the last categorical column
    assert math.isfinite(ml["synthetic"]) and math.isfinite(ml["real"])
    assert report["n"] == {"synthetic": 500, "scored_marginals": 200, "train": 600, "test": 400, "test_a": 200, "test_b": 200}
    # k misses about 10% of its cells on both sides: the shares differ by sampling only, sd
    # sqrt(0.09 / 500 + 0.09 / 200) = 0.025 (synthetic against test half A): 0.1 is 4 sd
    assert report["marginals"]["columns"]["k"]["missing"]["value"] < 0.1
    text = format_table_report(report)
    lines = text.splitlines()
    assert lines[0].split() == ["figure", "value", "reference"]
    assert any(line.startswith("copy share") for line in lines) and any(line.startswith("W1 x1") for line in lines)
    assert len(lines) > 12
    # seeded: the same report twice
    assert table_report(synthetic, train, test, seed=3)["associations"] == report["associations"]


def test_split_test_halves_are_disjoint_and_cover_the_rows():
    frame = _table(11, 60)
    a, b = split_test(frame, seed=1)
    assert (len(a), len(b)) == (5, 6) and sorted(a.index.tolist() + b.index.tolist()) == list(range(11))


def test_bad_inputs_name_the_problem():
    frame = _table(10, 70)
    with pytest.raises(FlowmatchError, match="synthetic must be a pandas DataFrame, got ndarray"):
        table_report(frame.to_numpy(), frame, frame)
    with pytest.raises(FlowmatchError, match=r"test has different columns from train: missing \['y'\], extra \['z'\]"):
        table_report(frame, frame, frame.rename(columns={"y": "z"}))
    with pytest.raises(FlowmatchError, match="train needs at least 4 rows, got 3"):
        table_report(frame, frame.head(3), frame)
    with pytest.raises(FlowmatchError, match="numeric in the reference but has dtype"):
        marginal_distances(frame.assign(x1="text"), frame)
    with pytest.raises(FlowmatchError, match="has dtype datetime64"):
        association_matrix(frame.assign(when=pd.Timestamp("2024-01-01")))
