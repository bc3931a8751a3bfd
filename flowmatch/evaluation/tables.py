"""Evaluating synthetic mixed-type tables: marginals, associations, ML efficiency and memorisation.

The inputs are three pandas DataFrames with the same columns: ``synthetic`` (generated rows), ``train``
(the real rows the generator was fitted on) and ``test`` (real held-out rows). A column is *numeric*
when its dtype is a float or integer one (pandas' nullable ``Int64`` included) and *categorical*
otherwise (object, string, bool, category). Kinds are read from ``train`` (from ``reference`` in the
two-frame functions); synthetic columns are read as that kind. Missing cells (NaN, None, pd.NA; for
numeric columns also +-inf) are a category of their own in categorical columns; numeric columns
compare their non-missing values and report the difference in missing share beside.

Figures (p, q: the synthetic and reference distributions of a column):

- **W1** (numeric column): the 1-D Wasserstein-1 distance between the non-missing values,
  W1 = integral |F_p(t) - F_q(t)| dt (:func:`scipy.stats.wasserstein_distance`), divided by the
  reference column's standard deviation (1 where that is 0) so that columns in different units are
  comparable. A shift of a normal column by d scores d / sigma.
- **TV** (categorical column): total variation 0.5 * sum_c |p(c) - q(c)| over the union of the
  categories, missing counted as a category: 0 for equal frequencies, 1 for disjoint supports.
- **Missing share difference** (every column): |share missing in synthetic - share missing in reference|.
- **Associations** (:func:`association_matrix`), for each pair of columns with the rows missing in
  either dropped: Pearson's r between two numeric columns (in [-1, 1]); the bias-corrected Cramér's V
  between two categorical ones (Bergsma 2013: phi^2 = chi^2 / n, phi~^2 = max(0, phi^2 - (r-1)(k-1)/(n-1)),
  r~ = r - (r-1)^2/(n-1), k~ = k - (k-1)^2/(n-1), V = sqrt(phi~^2 / min(r~ - 1, k~ - 1)), in [0, 1]);
  the correlation ratio eta = sqrt(SS_between / SS_total) of a numeric column grouped by a
  categorical one (in [0, 1]). An undefined entry (a constant column, fewer than 2 rows) is 0.
  :func:`association_distance` is the mean |A_synthetic - A_reference| over the off-diagonal entries.
- **ML efficiency** ("train on synthetic, test on real", :func:`ml_efficiency`): a histogram
  gradient-boosting model predicting the target column from the others, fitted on ``synthetic`` and
  scored on ``test``; the reference is the same model fitted on ``train`` and scored on ``test``.
  Accuracy (and macro F1) for a categorical target, R^2 for a numeric one; gap = real - synthetic.
- **Memorisation** (:func:`memorisation_share`): rows encoded as numbers (numeric columns min-max
  scaled on the train rows, a missing numeric cell as 0 plus a 0/1 missing-indicator column;
  categorical columns one-hot with weight 1/2, so that a different category costs 1 like a numeric
  column's whole range), then the copy share (generated rows with a distance to the closest training
  record, L1, below the 5% quantile of the test rows' own) and the DCR ratio (median DCR of the
  generated rows over the test rows'), as in :mod:`flowmatch.evaluation.memorisation`; also the share
  of exact copies (DCR 0), which on tables of few discrete values is the telling one (there the test
  rows' own DCR quantile may be 0, and no row is *below* it).

Each figure is reported beside its *reference*: the same figure with real unseen rows used as if
they were generated. For marginals and associations, which compare a sample with real data, ``test``
is split (seeded) into two halves A and B: the synthetic rows are scored against A and the
reference is B scored against A, so the reference is the finite-sample floor: what a perfect
generator scores with |B| rows (with more synthetic rows than |B| a perfect generator scores at or
below it). ML efficiency's reference is the model fitted on the real training rows; memorisation's
is the test split against the training rows (copy share about 0.05, DCR ratio 1 by construction).

Example::

    report = table_report(synthetic, train, test, target="income")
    print(format_table_report(report))
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy.stats import wasserstein_distance

from flowmatch.errors import FlowmatchError
from flowmatch.evaluation.memorisation import COPY_QUANTILE, closest_record_distances, memorisation_warning

#: The smallest frame any function here accepts.
MIN_ROWS = 4

#: Categorical features with more categories than this are given to the gradient-boosting model as
#: ordinal codes (its native categorical support is limited to this many).
MAX_NATIVE_CATEGORIES = 255


class _Missing:
    """The category of a missing cell in a categorical column (one object, equal only to itself)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


# --------------------------------------------------------------------------------------------- inputs


def _frame(x, what: str) -> pd.DataFrame:
    if not isinstance(x, pd.DataFrame):
        raise FlowmatchError(f"tables: {what} must be a pandas DataFrame, got {type(x).__name__}")
    if x.columns.has_duplicates:
        raise FlowmatchError(f"tables: {what} has duplicate column names: {sorted(map(str, x.columns[x.columns.duplicated()]))}")
    if len(x.columns) == 0:
        raise FlowmatchError(f"tables: {what} has no columns")
    if len(x) < MIN_ROWS:
        raise FlowmatchError(f"tables: {what} needs at least {MIN_ROWS} rows, got {len(x)}")
    return x


def _frames(reference: pd.DataFrame, reference_name: str, **others) -> list[pd.DataFrame]:
    """Validate the frames and return them with the reference's column order."""
    reference = _frame(reference, reference_name)
    out = [reference]
    for what, frame in others.items():
        frame = _frame(frame, what)
        missing = [str(c) for c in reference.columns if c not in frame.columns]
        extra = [str(c) for c in frame.columns if c not in reference.columns]
        if missing or extra:
            raise FlowmatchError(f"tables: {what} has different columns from {reference_name}: missing {missing}, extra {extra}")
        out.append(frame[list(reference.columns)])
    return out


def column_kind(column: pd.Series) -> str:
    """'numeric' for float and integer dtypes (nullable ones too), 'category' for object, string, bool and category."""
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "category"
    if pd.api.types.is_complex_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
        raise FlowmatchError(f"tables: column {column.name!r} has dtype {dtype}: convert it to numbers or categories first")
    return "numeric" if pd.api.types.is_numeric_dtype(dtype) else "category"


def _kinds(frame: pd.DataFrame) -> dict:
    return {c: column_kind(frame[c]) for c in frame.columns}


def _numbers(column: pd.Series, what: str = "") -> np.ndarray:
    """float64 values with NaN for missing (and non-finite) cells."""
    if not (pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype)):
        raise FlowmatchError(f"tables: column {column.name!r}{what} is numeric in the reference but has dtype {column.dtype}")
    values = column.to_numpy(dtype="float64", na_value=np.nan)
    return np.where(np.isfinite(values), values, np.nan)


def _categories(column: pd.Series) -> np.ndarray:
    """Object values with :data:`MISSING` for missing cells."""
    values = column.astype(object).to_numpy(copy=True)
    values[pd.isna(values)] = MISSING
    return values


def _codes(values: np.ndarray) -> np.ndarray:
    """Integer codes 0..m-1 of object values (by first appearance; hashable values, no sorting)."""
    return pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=False)[0]


# ------------------------------------------------------------------------------------------ marginals


def _w1(x: np.ndarray, y: np.ndarray, scale: np.ndarray) -> float:
    x, y, scale = x[~np.isnan(x)], y[~np.isnan(y)], scale[~np.isnan(scale)]
    if len(x) == 0 or len(y) == 0:
        return 0.0 if len(x) == len(y) else math.nan  # nothing to compare (the missing share tells)
    std = float(scale.std()) if len(scale) else 0.0
    return float(wasserstein_distance(x, y)) / (std if std > 0 else 1.0)


def _tv(x: np.ndarray, y: np.ndarray) -> float:
    p = pd.Series(x, dtype=object).value_counts(normalize=True, dropna=False)
    q = pd.Series(y, dtype=object).value_counts(normalize=True, dropna=False)
    p, q = p.align(q, fill_value=0.0)
    return 0.5 * float(np.abs(p.to_numpy(dtype=float) - q.to_numpy(dtype=float)).sum())


def _marginals(synthetic: pd.DataFrame, reference: pd.DataFrame, kinds: dict) -> dict[str, dict]:
    out = {}
    for c, kind in kinds.items():
        if kind == "numeric":
            ref = _numbers(reference[c])
            syn = _numbers(synthetic[c], " of synthetic")
            entry = {"kind": kind, "metric": "W1", "distance": _w1(syn, ref, ref)}
            missing = abs(float(np.isnan(syn).mean()) - float(np.isnan(ref).mean()))
        else:
            ref_c, syn_c = _categories(reference[c]), _categories(synthetic[c])
            entry = {"kind": kind, "metric": "TV", "distance": _tv(syn_c, ref_c)}
            missing = abs(float((syn_c == MISSING).mean()) - float((ref_c == MISSING).mean()))
        entry["missing"] = missing
        out[c] = entry
    return out


def marginal_distances(synthetic: pd.DataFrame, reference: pd.DataFrame) -> dict[str, dict]:
    """Per column ``{"kind": "numeric"|"category", "metric": "W1"|"TV", "distance": d, "missing": m}``.

    W1 of the non-missing values over the reference column's std (1 when 0), TV over the categories
    with missing as one; ``missing`` is the absolute difference of the missing shares.
    """
    reference, synthetic = _frames(reference, "reference", synthetic=synthetic)
    return _marginals(synthetic, reference, _kinds(reference))


# --------------------------------------------------------------------------------------- associations


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denominator if denominator > 0 else 0.0


def cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    """Bias-corrected Cramér's V (Bergsma 2013) of two categorical value arrays of equal length."""
    n = len(a)
    if n < 2:
        return 0.0
    ca, cb = _codes(a), _codes(b)
    r, k = int(ca.max()) + 1, int(cb.max()) + 1
    table = np.bincount(ca * k + cb, minlength=r * k).reshape(r, k).astype(np.float64)
    expected = np.outer(table.sum(1), table.sum(0)) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    phi2 = max(0.0, chi2 / n - (r - 1) * (k - 1) / (n - 1))
    r_c, k_c = r - (r - 1) ** 2 / (n - 1), k - (k - 1) ** 2 / (n - 1)
    denominator = min(r_c - 1, k_c - 1)
    return min(1.0, math.sqrt(phi2 / denominator)) if denominator > 0 else 0.0


def correlation_ratio(categories: np.ndarray, values: np.ndarray) -> float:
    """eta = sqrt(SS_between / SS_total) of numeric ``values`` grouped by ``categories``."""
    if len(values) < 2:
        return 0.0
    codes = _codes(categories)
    counts = np.bincount(codes).astype(np.float64)
    means = np.bincount(codes, weights=values) / counts
    mean = values.mean()
    total = float(((values - mean) ** 2).sum())
    between = float((counts * (means - mean) ** 2).sum())
    return min(1.0, math.sqrt(between / total)) if total > 0 else 0.0


def _association_matrix(frame: pd.DataFrame, kinds: dict) -> tuple[list, np.ndarray]:
    names = list(kinds)
    columns = {c: _numbers(frame[c]) if kinds[c] == "numeric" else _categories(frame[c]) for c in names}
    present = {c: ~np.isnan(v) if kinds[c] == "numeric" else v != MISSING for c, v in columns.items()}
    matrix = np.eye(len(names))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            b = names[j]
            keep = present[a] & present[b]
            x, y = columns[a][keep], columns[b][keep]
            if kinds[a] == kinds[b] == "numeric":
                value = _pearson(x, y) if len(x) >= 2 else 0.0
            elif kinds[a] == kinds[b] == "category":
                value = cramers_v(x, y)
            elif kinds[a] == "numeric":
                value = correlation_ratio(y, x)
            else:
                value = correlation_ratio(x, y)
            matrix[i, j] = matrix[j, i] = value
    return names, matrix


def association_matrix(frame: pd.DataFrame) -> tuple[list, np.ndarray]:
    """(column names, (k, k) matrix): Pearson r, bias-corrected Cramér's V or correlation ratio eta per pair.

    Rows missing in either column of a pair are dropped for that pair; an undefined entry is 0 and
    the diagonal is 1.
    """
    frame = _frame(frame, "frame")
    return _association_matrix(frame, _kinds(frame))


def _association_distance(synthetic: pd.DataFrame, reference: pd.DataFrame, kinds: dict) -> float:
    if len(kinds) < 2:
        return math.nan
    _, a = _association_matrix(synthetic, kinds)
    _, b = _association_matrix(reference, kinds)
    upper = np.triu_indices(len(kinds), 1)  # symmetric: the upper triangle's mean is the off-diagonal mean
    return float(np.abs(a - b)[upper].mean())


def association_distance(synthetic: pd.DataFrame, reference: pd.DataFrame) -> float:
    """Mean |A_synthetic - A_reference| over the off-diagonal entries (NaN with fewer than 2 columns).

    Column kinds are the reference's, for both frames.
    """
    reference, synthetic = _frames(reference, "reference", synthetic=synthetic)
    return _association_distance(synthetic, reference, _kinds(reference))


# ------------------------------------------------------------------------------------- ML efficiency


def _default_target(kinds: dict) -> str:
    categorical = [c for c, kind in kinds.items() if kind == "category"]
    return categorical[-1] if categorical else list(kinds)[-1]


class _Features:
    """Features as a float matrix for histogram gradient boosting, encoded as learned from the fitting rows.

    Numeric columns: values, NaN when missing. Categorical: codes of the fitting rows' categories
    (missing and unseen ones NaN, which the model handles natively); natively categorical up to
    :data:`MAX_NATIVE_CATEGORIES` categories, ordinal codes beyond.
    """

    def __init__(self, fit: pd.DataFrame, kinds: dict):
        self.kinds = kinds
        self.maps: dict = {}
        for c, kind in kinds.items():
            if kind == "category":
                seen = pd.unique(pd.Series(_categories(fit[c]), dtype=object))
                self.maps[c] = {v: float(i) for i, v in enumerate(v for v in seen if v is not MISSING)}
        self.native = np.array([kind == "category" and len(self.maps[c]) <= MAX_NATIVE_CATEGORIES for c, kind in kinds.items()])

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        columns = []
        for c, kind in self.kinds.items():
            if kind == "numeric":
                columns.append(_numbers(frame[c]))
            else:
                mapping = self.maps[c]
                columns.append(np.array([mapping.get(v, np.nan) for v in _categories(frame[c])], dtype=np.float64))
        return np.column_stack(columns) if columns else np.zeros((len(frame), 0))


def _labels(column: pd.Series, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(target values, which rows have one): strings for a categorical target, floats for a numeric one."""
    if kind == "numeric":
        y = _numbers(column)
        return y, ~np.isnan(y)
    values = _categories(column)
    keep = values != MISSING
    return np.array([str(v) for v in values], dtype=object), keep


def _fit_and_score(fit: pd.DataFrame, test: pd.DataFrame, target: str, kinds: dict, features: dict, seed: int, what: str) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import accuracy_score, f1_score, r2_score

    task = "regression" if kinds[target] == "numeric" else "classification"
    y_fit, keep_fit = _labels(fit[target], kinds[target])
    y_test, keep_test = _labels(test[target], kinds[target])
    if not keep_fit.any():
        raise FlowmatchError(f"tables: ml_efficiency: {what} has no rows with a value in the target column {target!r}")
    if not keep_test.any():
        raise FlowmatchError(f"tables: ml_efficiency: test has no rows with a value in the target column {target!r}")
    fit, y_fit = fit[keep_fit], y_fit[keep_fit]
    test, y_test = test[keep_test], y_test[keep_test]
    encode = _Features(fit, features)
    x_fit, x_test = encode(fit), encode(test)
    categorical = encode.native if encode.native.any() else None
    if task == "regression":
        regressor = HistGradientBoostingRegressor(categorical_features=categorical, random_state=seed)
        regressor.fit(x_fit, y_fit.astype(np.float64))
        return {"r2": float(r2_score(y_test.astype(np.float64), regressor.predict(x_test)))}
    classes = np.unique(y_fit)
    if len(classes) == 1:  # one class to learn: the model is the constant prediction
        predicted = np.full(len(y_test), classes[0], dtype=object)
    else:
        classifier = HistGradientBoostingClassifier(categorical_features=categorical, random_state=seed)
        classifier.fit(x_fit, y_fit)
        predicted = classifier.predict(x_test)
    return {
        "accuracy": float(accuracy_score(y_test, predicted)),
        "macro_f1": float(f1_score(y_test, predicted, average="macro", zero_division=0)),
    }


def _ml_efficiency(synthetic, train, test, kinds: dict, target: str | None, seed: int) -> dict:
    if target is None:
        target = _default_target(kinds)
    elif target not in kinds:
        raise FlowmatchError(f"tables: ml_efficiency: target {target!r} is not a column (columns: {[str(c) for c in kinds]})")
    features = {c: kind for c, kind in kinds.items() if c != target}
    if not features:
        raise FlowmatchError(f"tables: ml_efficiency needs at least one column besides the target {target!r}")
    on_synthetic = _fit_and_score(synthetic, test, target, kinds, features, seed, "synthetic")
    on_real = _fit_and_score(train, test, target, kinds, features, seed, "train")
    metric = "r2" if kinds[target] == "numeric" else "accuracy"
    out = {
        "target": target,
        "task": "regression" if metric == "r2" else "classification",
        "metric": metric,
        "synthetic": on_synthetic[metric],
        "real": on_real[metric],
        "gap": on_real[metric] - on_synthetic[metric],
    }
    if metric == "accuracy":
        out["macro_f1"] = {
            "synthetic": on_synthetic["macro_f1"],
            "real": on_real["macro_f1"],
            "gap": on_real["macro_f1"] - on_synthetic["macro_f1"],
        }
    return out


def ml_efficiency(synthetic: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, target: str | None = None, seed: int = 0) -> dict:
    """Train on synthetic, test on real, beside train on real, test on real.

    Histogram gradient boosting (classifier for a categorical target, regressor for a numeric one,
    categorical features natively, missing values natively; categories unseen in the fitting rows
    count as missing) fitted on ``synthetic`` and on ``train``, both scored on ``test``. ``target``
    defaults to the last categorical column, else the last column. Rows missing the target are
    dropped. A fitting set with one class predicts it for every row.

    Returns ``{"target", "task": "classification"|"regression", "metric": "accuracy"|"r2",
    "synthetic", "real", "gap": real - synthetic}``, plus ``"macro_f1": {"synthetic", "real", "gap"}``
    for classification.
    """
    train, synthetic, test = _frames(train, "train", synthetic=synthetic, test=test)
    return _ml_efficiency(synthetic, train, test, _kinds(train), target, seed)


# ------------------------------------------------------------------------------------- memorisation


def encode_rows(frames: list[pd.DataFrame], kinds: dict, train: pd.DataFrame) -> list[torch.Tensor]:
    """The rows of ``frames`` as float64 tensors for L1 distances, scaled on the ``train`` rows.

    Numeric columns min-max scaled on the train rows' non-missing values (a constant column left as
    x - min), a missing cell as 0 plus a missing-indicator column (only for columns with a missing
    cell in any frame); categorical columns one-hot with weight 1/2 over the categories of all frames,
    missing as a category.
    """
    blocks: list[list[np.ndarray]] = [[] for _ in frames]
    for c, kind in kinds.items():
        if kind == "numeric":
            ref = _numbers(train[c])
            ref = ref[~np.isnan(ref)]
            low = float(ref.min()) if len(ref) else 0.0
            span = float(ref.max()) - low if len(ref) else 0.0
            values = [_numbers(f[c]) for f in frames]
            indicator = any(np.isnan(v).any() for v in values)
            for block, v in zip(blocks, values):
                missing = np.isnan(v)
                block.append(np.where(missing, 0.0, (v - low) / (span if span > 0 else 1.0)))
                if indicator:
                    block.append(missing.astype(np.float64))
        else:
            values = [_categories(f[c]) for f in frames]
            codes = _codes(np.concatenate(values))
            m = int(codes.max()) + 1
            start = 0
            for block, v in zip(blocks, values):
                onehot = np.zeros((len(v), m))
                onehot[np.arange(len(v)), codes[start : start + len(v)]] = 0.5
                block.append(onehot)
                start += len(v)
    return [torch.from_numpy(np.column_stack(block)) for block in blocks]


def _memorisation(synthetic, train, test, kinds: dict) -> dict:
    g, r, h = encode_rows([synthetic, train, test], kinds, train)
    dcr_gen = closest_record_distances(g, r)
    dcr_test = closest_record_distances(h, r)
    threshold = float(torch.quantile(dcr_test, COPY_QUANTILE))
    median_test = float(dcr_test.median())
    copy_share = {"value": float((dcr_gen < threshold).double().mean()), "reference": float((dcr_test < threshold).double().mean())}
    return {
        "n": len(g),
        "n_train": len(r),
        "n_test": len(h),
        "threshold": threshold,
        "copy_share": copy_share,
        "dcr_ratio": {
            "value": float(dcr_gen.median()) / median_test if median_test > 0 else math.nan,
            "reference": 1.0 if median_test > 0 else math.nan,
        },
        "exact_share": {"value": float((dcr_gen <= 1e-12).double().mean()), "reference": float((dcr_test <= 1e-12).double().mean())},
        "warning": memorisation_warning({"copy_share": {"value": copy_share["value"], "test": copy_share["reference"]}}),
    }


def memorisation_share(synthetic: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame) -> dict:
    """Copy share, DCR ratio and exact-copy share of the synthetic rows, each beside the test split's own.

    Rows encoded by :func:`encode_rows`; distances to the closest training record by
    :func:`flowmatch.evaluation.memorisation.closest_record_distances`, the copy threshold at its
    :data:`~flowmatch.evaluation.memorisation.COPY_QUANTILE` of the test rows' DCRs. Returns
    ``{"copy_share": {"value", "reference"}, "dcr_ratio": {...}, "exact_share": {...}, "threshold",
    "n", "n_train", "n_test", "warning"}`` (``warning``: :func:`memorisation_warning`'s line or '').
    The DCR ratio is NaN when the test rows' median DCR is 0 (more than half of them repeat a training row).
    """
    train, synthetic, test = _frames(train, "train", synthetic=synthetic, test=test)
    return _memorisation(synthetic, train, test, _kinds(train))


# ------------------------------------------------------------------------------------------- report


def split_test(test: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test rows split at random (seeded) into halves A (the first len // 2 of a permutation) and B."""
    order = np.random.default_rng(seed).permutation(len(test))
    half = len(test) // 2
    return test.iloc[order[:half]], test.iloc[order[half:]]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def table_report(synthetic: pd.DataFrame, train: pd.DataFrame, test: pd.DataFrame, *, target: str | None = None, seed: int = 0) -> dict:
    """Every figure of this module, each beside its reference (see the module docstring).

    Returns ``{"marginals": {"columns": {column: {"kind", "metric", "value", "reference", "missing":
    {"value", "reference"}}}, "mean_w1": {"value", "reference"}, "mean_tv": {"value", "reference"}},
    "associations": {"value", "reference"}, "ml_efficiency": ml_efficiency's dict (None for a
    one-column table), "memorisation": memorisation_share's dict, "n": {"synthetic", "train", "test",
    "test_a", "test_b"}}``. Means over no columns of a kind are NaN.

    The marginals and associations score the first |B| synthetic rows (as many as the reference has:
    more rows would score below the reference's finite-sample floor); ML efficiency trains on all of
    them (give as many as there are training rows, so that both models fit on sets of one size) and
    memorisation scores all of them.
    """
    train, synthetic, test = _frames(train, "train", synthetic=synthetic, test=test)
    kinds = _kinds(train)
    a, b = split_test(test, seed)
    full, synthetic = synthetic, synthetic.iloc[: len(b)]
    value = _marginals(synthetic, a, kinds)
    reference = _marginals(b, a, kinds)
    columns = {
        c: {
            "kind": kinds[c],
            "metric": value[c]["metric"],
            "value": value[c]["distance"],
            "reference": reference[c]["distance"],
            "missing": {"value": value[c]["missing"], "reference": reference[c]["missing"]},
        }
        for c in kinds
    }

    def mean_of(metric: str) -> dict:
        chosen = [c for c in columns if columns[c]["metric"] == metric]
        return {"value": _mean([columns[c]["value"] for c in chosen]), "reference": _mean([columns[c]["reference"] for c in chosen])}

    return {
        "marginals": {"columns": columns, "mean_w1": mean_of("W1"), "mean_tv": mean_of("TV")},
        "associations": {"value": _association_distance(synthetic, a, kinds), "reference": _association_distance(b, a, kinds)},
        "ml_efficiency": _ml_efficiency(full, train, test, kinds, target, seed) if len(kinds) > 1 else None,
        "memorisation": _memorisation(full, train, test, kinds),
        "n": {
            "synthetic": len(full),
            "scored_marginals": len(synthetic),
            "train": len(train),
            "test": len(test),
            "test_a": len(a),
            "test_b": len(b),
        },
    }


def _number(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def format_table_report(report: dict) -> str:
    """A small table, one line per figure: name, value, reference (lower is better unless marked)."""
    rows: list[tuple[str, object, object]] = []
    marginals = report["marginals"]
    for c, entry in marginals["columns"].items():
        rows.append((f"{entry['metric']} {c}", entry["value"], entry["reference"]))
        if entry["missing"]["value"] or entry["missing"]["reference"]:
            rows.append((f"missing share diff {c}", entry["missing"]["value"], entry["missing"]["reference"]))
    rows.append(("mean W1 / std", marginals["mean_w1"]["value"], marginals["mean_w1"]["reference"]))
    rows.append(("mean TV", marginals["mean_tv"]["value"], marginals["mean_tv"]["reference"]))
    rows.append(("association distance", report["associations"]["value"], report["associations"]["reference"]))
    ml = report.get("ml_efficiency")
    if ml is not None:
        rows.append((f"TSTR {ml['metric']} ({ml['target']}, higher is better)", ml["synthetic"], ml["real"]))
        if "macro_f1" in ml:
            rows.append((f"TSTR macro F1 ({ml['target']}, higher is better)", ml["macro_f1"]["synthetic"], ml["macro_f1"]["real"]))
    memo = report["memorisation"]
    rows.append(("copy share", memo["copy_share"]["value"], memo["copy_share"]["reference"]))
    rows.append(("DCR ratio (higher is better)", memo["dcr_ratio"]["value"], memo["dcr_ratio"]["reference"]))
    rows.append(("exact copy share", memo["exact_share"]["value"], memo["exact_share"]["reference"]))
    width = max(len(name) for name, _, _ in rows + [("figure", 0, 0)])
    lines = [f"{'figure':<{width}}  {'value':>10}  {'reference':>10}"]
    lines += [f"{name:<{width}}  {_number(v):>10}  {_number(r):>10}" for name, v, r in rows]
    n = report["n"]
    lines.append(f"rows: synthetic {n['synthetic']}, train {n['train']}, test {n['test']} (halves {n['test_a']} and {n['test_b']})")
    if memo.get("warning"):
        lines.append(memo["warning"])
    return "\n".join(lines)
