"""Mixed-type tables: float, integer and categorical (string) columns with missing cells.

:func:`read_table` reads and checks a CSV file (header row, one row per line, UTF-8), and gives a
:class:`pandas.DataFrame` whose columns are ``int64`` (``Int64`` when cells are missing), ``float64``
(NaN where missing) or strings. :func:`write_table` writes one back.

:class:`TableCodec` turns such a frame into the two arrays a mixed flow model trains on, and back:

* continuous features, float32 ``(n, dim)``: each numeric column standardised, ``(v - mean) / std``;
  a missing cell gets the column mean (0 after standardising);
* categorical tokens, int64 ``(n, len(vocab_sizes))``: one token column per category column (its sorted
  values, plus a last "missing" category when the column has missing cells), and one per numeric column
  with missing cells, named ``"name (missing)"``, whose 2 categories are present (0) and missing (1).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from flowmatch.data.files import is_number, read_utf8
from flowmatch.errors import FlowmatchError
from flowmatch.storage import atomic_file, reading

MISSING_CHOICES = ("model", "refuse")
MAX_CATEGORIES = 1000  # a string column with more distinct values is refused (likely an ID or free text)
MIN_ROWS = 4  # as flowmatch.data.files.MIN_ROWS: enough rows for a train and a test split
KINDS = ("float", "int", "category")
_NA_WORDS = frozenset({"nan", "na", "n/a", "null", "none"})  # also missing in a column that is otherwise numeric
_FORMAT = "flowmatch.table_codec"


def read_table(path: str | os.PathLike, *, missing: str = "model", max_categories: int = MAX_CATEGORIES) -> pd.DataFrame:
    """Read and check a CSV table; see the module docstring for the column types it gives."""
    path = os.fspath(path)
    if missing not in MISSING_CHOICES:
        raise FlowmatchError(f"missing={missing!r}: choose one of {', '.join(MISSING_CHOICES)}")
    text = read_utf8(path)
    header, rows, lines = _split_rows(path, text.removeprefix("\ufeff"))
    frame = pd.DataFrame({name: _parse_column([row[j] for row in rows]) for j, name in enumerate(header)})
    return _check_columns(path, frame, missing, max_categories, cells=lambda name, i: rows[i][header.index(name)].strip(), lines=lines)


def table_from_frame(frame: Any, *, missing: str = "model", max_categories: int = MAX_CATEGORIES, name: str = "data") -> pd.DataFrame:
    """A pandas DataFrame given in Python as a table: numeric columns stay numbers (integers stay integers),
    any other column's values become categories (their text), and the checks of :func:`read_table` apply."""
    if not isinstance(frame, pd.DataFrame):
        raise FlowmatchError(f"{name}: a table given in Python is a pandas DataFrame, got {type(frame).__name__}")
    if missing not in MISSING_CHOICES:
        raise FlowmatchError(f"missing={missing!r}: choose one of {', '.join(MISSING_CHOICES)}")
    if frame.shape[1] == 0:
        raise FlowmatchError(f"{name}: the DataFrame has no columns")
    labels = [str(c) for c in frame.columns]
    _check_header(name, labels)
    columns = {}
    for label, (_, column) in zip(labels, frame.items()):
        if pd.api.types.is_bool_dtype(column.dtype) or not pd.api.types.is_numeric_dtype(column.dtype):
            if pd.api.types.is_datetime64_any_dtype(column.dtype):
                raise FlowmatchError(f"{name}: column {label!r} holds dates ({column.dtype}): give them as numbers or text")
            column = _strings([None if pd.isna(v) else str(v) for v in column.tolist()])
        elif pd.api.types.is_float_dtype(column.dtype):
            column = column.astype(np.float64)
        columns[label] = column.reset_index(drop=True)
    return _check_columns(name, pd.DataFrame(columns), missing, max_categories)


def _check_columns(path, frame: pd.DataFrame, missing: str, max_categories: int, cells=None, lines=None) -> pd.DataFrame:
    """Each column has a present cell and finite numbers, a categorical column at most ``max_categories``
    values, and with ``missing="refuse"`` no empty cell; ``cells(name, i)`` and ``lines[i]`` name a CSV's
    offending text and line (a DataFrame's row otherwise)."""
    line = (lambda i: f"line {lines[i]}") if lines is not None else (lambda i: f"row {i}")
    for name in frame.columns:
        column = frame[name]
        absent = column.isna().to_numpy()
        if absent.all():
            raise FlowmatchError(f"{path}: column {name!r} is empty (every cell is missing)")
        if pd.api.types.is_float_dtype(column.dtype) and not np.isfinite(column.to_numpy()[~absent]).all():
            bad = int(np.flatnonzero(~absent & ~np.isfinite(column.to_numpy()))[0])
            text = cells(name, bad) if cells is not None else column.iloc[bad]
            raise FlowmatchError(f"{path}: column {name!r} has a non-finite value ({text}) at {line(bad)}")
        if not pd.api.types.is_numeric_dtype(column.dtype) and (count := column.nunique()) > max_categories:
            raise FlowmatchError(
                f"{path}: column {name!r} has {count} distinct values; a categorical column may have at most {max_categories} "
                "(an identifier or free text?) — drop it"
            )
        if missing == "refuse" and absent.any():
            raise FlowmatchError(
                f"{path}: column {name!r} has {int(absent.sum())} missing cells (first at {line(int(np.argmax(absent)))}); "
                "fill them or train with missing='model'"
            )
    return frame


def looks_mixed(path: str | os.PathLike, besides: Sequence[str] = ()) -> bool:
    """Whether a CSV file is a mixed-type table: a header, and a text column or an empty cell (a file of
    numbers only is continuous rows) among its columns other than ``besides`` (label and condition columns,
    by name or 1-based number). A first line of numbers is data, not a header: such a file is the
    continuous reader's to read (and to refuse with its own message)."""
    with reading(path), open(path, encoding="utf-8", errors="replace") as f:
        first = next(csv.reader(f), [])
    if first and all(is_number(cell) for cell in first):
        return False
    if len(first) == 1 and all(is_number(part) for part in re.split(r"[;\t ]+", first[0].strip())):
        return False  # numbers separated by something else than commas: the continuous reader says so
    frame = read_table(path)
    names = list(frame.columns)
    left_out = {names[int(c) - 1] if c.strip().isdigit() and 0 < int(c) <= len(names) else c.strip() for c in besides}
    if left_out - set(names):  # a column the file lacks: the continuous reader names it
        return False
    frame = frame[[c for c in names if c not in left_out]]
    return any(not pd.api.types.is_numeric_dtype(frame[c].dtype) for c in frame) or bool(frame.isna().any().any())


def _split_rows(path: str, text: str) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the data rows (blank lines skipped) and the line in the file where each row starts."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    end = 0  # the last line of the previous row
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row:
                continue
            if header is None:
                header = _check_header(path, row)
                _check_separator(path, header)
            elif len(row) != len(header):
                raise FlowmatchError(f"{path}: line {start} has {len(row)} fields, the header has {len(header)}")
            else:
                rows.append(row)
                lines.append(start)
    except csv.Error as e:
        raise FlowmatchError(f"{path}: line {reader.line_num} is not valid CSV ({e})") from None
    if header is None:
        raise FlowmatchError(f"{path}: no columns (the file is empty; a header row is required)")
    if len(rows) < MIN_ROWS:
        raise FlowmatchError(f"{path}: {len(rows)} data rows; a table needs at least {MIN_ROWS}")
    return header, rows, lines


#: Separators a CSV file may use instead of commas (a European locale's semicolon, a TSV's tab, a pipe).
OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "pipes"}


def _check_separator(path: str, header: list[str]) -> None:
    """Refuse a file whose header is one field holding another separator: it was written with ';', tabs or '|',
    and read with commas it would be one text column."""
    if len(header) != 1:
        return
    for sep, name in OTHER_SEPARATORS.items():
        if sep in header[0]:
            raise FlowmatchError(
                f"{path}: the header is one column {header[0][:60]!r}: the file is separated by {name}, and flowmatch reads "
                f"comma-separated files; convert it (pandas.read_csv(path, sep={sep!r}).to_csv(new_path, index=False))"
            )


def _check_header(path: str, header: list[str]) -> list[str]:
    for j, name in enumerate(header):
        if not name.strip():
            raise FlowmatchError(f"{path}: column {j + 1} of the header has no name")
        if name in header[:j]:
            raise FlowmatchError(f"{path}: column name {name!r} appears twice in the header")
    return header


def _parse_column(cells: list[str]) -> pd.Series:
    """int64/Int64 if every present cell is an integer, else float64 if every one is a number, else strings."""
    blank = np.array([not c.strip() for c in cells], dtype=bool)
    na_word = blank | np.array([c.strip().lower() in _NA_WORDS for c in cells], dtype=bool)
    try:
        numbers = pd.to_numeric(pd.Series([c for c, m in zip(cells, na_word) if not m], dtype=object))
    except (ValueError, TypeError):
        return _strings([None if m else c for c, m in zip(cells, blank)])
    if numbers.dtype == np.int64:
        values = np.zeros(len(cells), dtype=np.int64)
        values[~na_word] = numbers.to_numpy()
        return pd.Series(pd.arrays.IntegerArray(values, na_word)) if na_word.any() else pd.Series(values)
    values = np.full(len(cells), np.nan)
    values[~na_word] = numbers.to_numpy(dtype=np.float64)
    return pd.Series(values)


def _strings(values: list[str | None]) -> pd.Series:
    """A string column as pandas builds one by default (``str`` in pandas 3, ``object`` before)."""
    return pd.Series(values)


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``frame`` as CSV (missing cells as empty fields), replacing ``path`` atomically."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with atomic_file(path) as tmp:
            frame.to_csv(tmp, index=False, na_rep="")
    except OSError as e:
        raise FlowmatchError(f"{os.fspath(path)}: cannot write ({e.strerror or e})") from None


@dataclasses.dataclass
class Column:
    """One column of a table as :class:`TableCodec` encodes it."""

    name: str
    kind: str  # "float", "int" or "category"
    categories: list[str] | None = None  # category: the distinct non-missing values as strings, sorted
    missing: bool = False  # the column has missing cells, modelled
    mean: float = 0.0  # numeric: standardisation (std of a constant column is 1)
    std: float = 1.0
    low: float | None = None  # numeric: observed min and max
    high: float | None = None

    @property
    def numeric(self) -> bool:
        return self.kind != "category"

    @property
    def vocab(self) -> int | None:
        """The number of categories of this column's token column, None if it has none."""
        if self.kind == "category":
            return len(self.categories or []) + self.missing
        return 2 if self.missing else None


class TableCodec:
    """A reversible map between a table and (continuous features, categorical tokens); see the module docstring."""

    def __init__(self, columns: list[Column]):
        self.columns = columns

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> TableCodec:
        if not isinstance(frame, pd.DataFrame) or frame.shape[1] == 0:
            raise FlowmatchError("a table codec needs a DataFrame with at least one column")
        names = list(frame.columns)
        if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise FlowmatchError(f"table columns must have distinct string names, got {names}")
        columns = []
        for name in names:
            series = frame[name]
            absent = series.isna().to_numpy()
            if absent.all():
                raise FlowmatchError(f"table column {name!r} is empty (every cell is missing)")
            dtype = series.dtype
            if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
                categories = sorted({str(v) for v in series[~absent]})
                columns.append(Column(name, "category", categories=categories, missing=bool(absent.any())))
                continue
            values = series.to_numpy(dtype=np.float64, na_value=np.nan)[~absent]
            if not np.isfinite(values).all():
                raise FlowmatchError(
                    f"table column {name!r} has a non-finite value at row {series.index[~absent][~np.isfinite(values)][0]}"
                )
            std = float(values.std())
            columns.append(
                Column(
                    name,
                    "int" if pd.api.types.is_integer_dtype(dtype) else "float",
                    missing=bool(absent.any()),
                    mean=float(values.mean()),
                    std=std if std > 0 and math.isfinite(std) else 1.0,
                    low=float(values.min()),
                    high=float(values.max()),
                )
            )
        return cls(columns)

    @property
    def numeric_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.numeric]

    @property
    def token_columns(self) -> list[str]:
        return [c.name if c.kind == "category" else f"{c.name} (missing)" for c in self.columns if c.vocab is not None]

    @property
    def vocab_sizes(self) -> list[int]:
        return [v for c in self.columns if (v := c.vocab) is not None]

    @property
    def dim(self) -> int:
        return len(self.numeric_columns)

    def encode(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Continuous features, float32 (n, dim), and tokens, int64 (n, len(vocab_sizes)); extra columns are ignored."""
        if absent_columns := [c.name for c in self.columns if c.name not in frame.columns]:
            raise FlowmatchError(f"the table lacks the column(s) {', '.join(map(repr, absent_columns))} the codec was fitted on")
        x, tokens = [], []
        for col in self.columns:
            series = frame[col.name]
            absent = series.isna().to_numpy()
            if absent.any() and not col.missing:
                raise FlowmatchError(
                    f"column {col.name!r} has a missing cell at row {series.index[absent][0]}, and had none when the codec was fitted"
                )
            if col.numeric:
                try:
                    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
                except (ValueError, TypeError):
                    raise FlowmatchError(f"column {col.name!r} should be numeric ({col.kind}), got dtype {series.dtype}") from None
                if not np.isfinite(values[~absent]).all():
                    raise FlowmatchError(
                        f"column {col.name!r} has a non-finite value at row {series.index[~absent & ~np.isfinite(values)][0]}"
                    )
                x.append(np.where(absent, 0.0, (values - col.mean) / col.std))
                if col.missing:
                    tokens.append(absent.astype(np.int64))
                continue
            categories = col.categories or []
            strings = [None if a else str(v) for v, a in zip(series.tolist(), absent)]
            codes = pd.Index(categories).get_indexer(strings).astype(np.int64)  # -1: not a category
            if (unknown := ~absent & (codes < 0)).any():
                i = int(np.argmax(unknown))
                where = f"column {col.name!r} has the value {strings[i]!r} at row {series.index[i]}"
                raise FlowmatchError(f"{where}, not one of its {len(categories)} categories")
            tokens.append(np.where(absent, len(categories), codes))
        n = len(frame)
        return (
            np.stack(x, axis=1).astype(np.float32) if x else np.zeros((n, 0), np.float32),
            np.stack(tokens, axis=1).astype(np.int64) if tokens else np.zeros((n, 0), np.int64),
        )

    def decode(self, x: Any, tokens: Any) -> pd.DataFrame:
        """The table of features ``x`` (n, dim) and ``tokens`` (n, len(vocab_sizes)): the inverse of :meth:`encode`."""
        x, tokens = _numpy(x).astype(np.float64), _numpy(tokens)
        n = len(x)
        if x.shape != (n, self.dim) or tokens.shape != (n, len(self.vocab_sizes)):
            raise FlowmatchError(
                f"decode needs x of shape (n, {self.dim}) and tokens (n, {len(self.vocab_sizes)}), got {x.shape} and {tokens.shape}"
            )
        if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
            raise FlowmatchError(f"tokens must be integers, got dtype {tokens.dtype}")
        for j, (name, size) in enumerate(zip(self.token_columns, self.vocab_sizes)):
            if ((tokens[:, j] < 0) | (tokens[:, j] >= size)).any():
                raise FlowmatchError(f"token column {name!r} has values outside [0, {size})")
        out: dict[str, pd.Series] = {}
        i = t = 0  # the next feature and token column
        for col in self.columns:
            if col.kind == "category":
                categories = col.categories or []
                codes = tokens[:, t]
                t += 1
                out[col.name] = _strings([categories[c] if c < len(categories) else None for c in codes.tolist()])
                continue
            values = x[:, i] * col.std + col.mean
            i += 1
            absent = np.zeros(n, dtype=bool)
            if col.missing:
                absent = tokens[:, t] == 1
                t += 1
            if col.kind == "float":
                out[col.name] = pd.Series(np.where(absent, np.nan, values))
                continue
            ints = np.clip(np.rint(values), col.low, col.high).astype(np.int64)
            out[col.name] = pd.Series(pd.arrays.IntegerArray(np.where(absent, 0, ints), absent)) if col.missing else pd.Series(ints)
        return pd.DataFrame(out)

    def to_dict(self) -> dict:
        return {"format": _FORMAT, "version": 1, "columns": [dataclasses.asdict(c) for c in self.columns]}

    @classmethod
    def from_dict(cls, d: Any) -> TableCodec:
        if not isinstance(d, dict) or d.get("format") != _FORMAT or d.get("version") != 1 or not isinstance(d.get("columns"), list):
            raise FlowmatchError(f"not a table codec (expected a dict with format {_FORMAT!r}, version 1 and a list of columns)")
        columns = [_column_from_dict(j, c) for j, c in enumerate(d["columns"])]
        names = [c.name for c in columns]
        if not columns or len(set(names)) != len(names):
            raise FlowmatchError(f"table codec: the column names must be distinct and at least one, got {names}")
        return cls(columns)


def _column_from_dict(j: int, c: Any) -> Column:
    fields = {f.name for f in dataclasses.fields(Column)}
    if not isinstance(c, dict) or set(c) != fields:
        raise FlowmatchError(f"table codec: column {j} must be a dict with the keys {sorted(fields)}")
    where = f"table codec: column {j} ({c['name']!r})"
    if not isinstance(c["name"], str) or not c["name"] or c["kind"] not in KINDS or not isinstance(c["missing"], bool):
        raise FlowmatchError(f"{where}: needs a name, a kind in {KINDS} and a boolean 'missing'")
    cats = c["categories"]
    if c["kind"] == "category":
        if not isinstance(cats, list) or not cats or not all(isinstance(v, str) for v in cats) or cats != sorted(set(cats)):
            raise FlowmatchError(f"{where}: categories must be a non-empty sorted list of distinct strings")
    else:
        numbers = [c[k] for k in ("mean", "std", "low", "high")]
        if cats is not None or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise FlowmatchError(f"{where}: a numeric column needs finite mean, std, low and high and no categories")
        if c["std"] <= 0 or c["low"] > c["high"]:
            raise FlowmatchError(f"{where}: needs std > 0 and low <= high")
        # what a column's own values guarantee: their mean lies in [low, high] and their std is at most half the
        # range (a constant column keeps std 1); a scale beyond it would decode to infinities
        span, slack = c["high"] - c["low"], 1e-9 * max(abs(c["low"]), abs(c["high"]), 1.0)
        if not (c["low"] - slack <= c["mean"] <= c["high"] + slack) or (c["std"] > span / 2 * (1 + 1e-9) + slack and c["std"] != 1.0):
            raise FlowmatchError(
                f"{where}: mean {c['mean']:g} and std {c['std']:g} cannot be those of values in [{c['low']:g}, {c['high']:g}] "
                "(the mean lies in the range and the std is at most half of it)"
            )
    return Column(**c)


def _numpy(a: Any) -> np.ndarray:
    """A numpy array of ``a`` (a numpy array, a list or a torch tensor on any device)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


# -- a run's table: split into train, validation and test rows --------------------------------------------
#: Share of a table's rows held out as its test split (and of the rest, ``val_fraction`` for validation).
TABLE_TEST_FRACTION = 0.2


@dataclass
class TableData:
    """A table split into train / validation / test rows (pandas DataFrames, every column) with the codec of
    the columns it generates, and the columns it conditions on (``given``: the label column with its class
    values, the condition columns; ``conditions[split]``: their rows as the model's ``y`` and ``c``)."""

    name: str
    frame: Any
    train: Any
    val: Any
    test: Any
    codec: Any
    given: dict[str, Any] = dataclasses.field(default_factory=dict)
    conditions: dict[str, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict)

    def batch(self, n: int, generator: torch.Generator, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """n rows drawn with replacement: (numbers (n, D), tokens (n, L), their conditions {"y", "c"})."""
        x, tokens = self.encoded(split)
        rows = torch.randint(len(tokens), (n,), generator=generator)
        return x[rows], tokens[rows], {k: v[rows] for k, v in self.conditions.get(split, {}).items()}

    def encoded(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self.__dict__.setdefault("_encoded", {})
        if split not in cache:
            x, tokens = self.codec.encode(getattr(self, split))
            cache[split] = (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(tokens, dtype=torch.long))
        return cache[split]

    @property
    def model_conditions(self) -> dict[str, dict[str, int]]:
        """The conditions the model takes: {"y": {"classes": K}} and {"c": {"dim": k}} where the table has them."""
        out: dict[str, dict[str, int]] = {}
        if self.given.get("label_column"):
            out["y"] = {"classes": len(self.given["classes"])}
        if self.given.get("condition_columns"):
            out["c"] = {"dim": len(self.given["condition_columns"])}
        return out


#: The fewest test rows a table's evaluation scores (:data:`flowmatch.evaluation.tables.MIN_ROWS`).
TABLE_MIN_TEST = 4


def load_table_data(
    path: str, *, missing: str, seed: int, val_fraction: float, label_column: str = "", condition_columns: str = ""
) -> TableData:
    """A CSV table read and checked (:func:`read_table`), its rows shuffled with ``seed`` and split
    (:func:`split_table`)."""
    frame = read_table(path, missing=missing)
    return split_table(path, frame, seed=seed, val_fraction=val_fraction, label_column=label_column, condition_columns=condition_columns)


def split_table(
    path: str, frame: pd.DataFrame, *, seed: int, val_fraction: float, label_column: str = "", condition_columns: str = ""
) -> TableData:
    """A table's rows shuffled with ``seed`` and split: 20% test, then ``val_fraction`` of the rest for
    validation; the codec is fitted on the whole table's generated columns (its categories and ranges; the
    numbers' scaling on the training rows), the label and condition columns taken out as conditions
    (:func:`table_conditions`). ``path`` names the table in messages."""
    generated, condition_rows, given = table_conditions(path, frame, label_column, condition_columns)
    n = len(frame)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    n_test = max(2, round(TABLE_TEST_FRACTION * n))
    if n_test < TABLE_MIN_TEST:  # checked before training: the evaluation would fail after it
        fewest = next(k for k in range(n, 100 * TABLE_MIN_TEST) if round(TABLE_TEST_FRACTION * k) >= TABLE_MIN_TEST)
        raise FlowmatchError(
            f"{path}: {n} rows are too few: a table run's evaluation scores a test split of at least {TABLE_MIN_TEST} rows "
            f"({TABLE_TEST_FRACTION:.0%} of the rows), so the table needs at least {fewest} rows"
        )
    n_val = max(2, round(val_fraction * (n - n_test))) if val_fraction > 0 else 0
    if n - n_test - n_val < 2:
        raise FlowmatchError(f"{path}: {n} rows are too few to split into train, validation and test")
    parts = {"test": (0, n_test), "val": (n_test, n_test + n_val), "train": (n_test + n_val, n)}
    test, val, train = (frame.iloc[order[a:b]].reset_index(drop=True) for a, b in parts.values())
    conditions = {
        split: {k: torch.as_tensor(v[order[a:b]]) for k, v in condition_rows.items()} for split, (a, b) in parts.items() if condition_rows
    }
    codec = TableCodec.fit(generated)
    return TableData(path, frame, train, val if n_val else None, test, codec, given, conditions)


def table_conditions(path: str, frame: pd.DataFrame, label_column: str, condition_columns: str):
    """The columns a table run conditions on, taken out of ``frame`` (names, or 1-based numbers):
    (the generated columns, {"y": class numbers, "c": float rows} as arrays over the rows, what they are).

    The label column's values are the classes (numbers first, in order, then text); it may have no empty
    cell. Condition columns are numbers with no empty cell. At least one column is left to generate."""
    names = [str(c) for c in frame.columns]

    def resolve(column: str, what: str) -> str:
        column = column.strip()
        if column in names:
            return column
        if column.isdigit() and 1 <= int(column) <= len(names):
            return names[int(column) - 1]
        raise FlowmatchError(f"{path}: no {what} column {column!r} (columns: {', '.join(names)})")

    label = resolve(label_column, "label") if label_column else ""
    parts = condition_columns.split(",") if condition_columns else []
    if parts and not any(p.strip() for p in parts):
        raise FlowmatchError(f"{path}: condition_columns {condition_columns!r} names no column")
    conditions = [resolve(c, "condition") for c in parts if c.strip()]
    if label and label in conditions:
        raise FlowmatchError(f"{path}: column {label!r} cannot be both the label and a condition")
    if len(set(conditions)) < len(conditions):
        raise FlowmatchError(f"{path}: a condition column is named twice in {condition_columns!r}")
    rows: dict[str, np.ndarray] = {}
    given: dict[str, Any] = {}
    if label:
        values = frame[label]
        if values.isna().any():
            raise FlowmatchError(f"{path}: the label column {label!r} has {int(values.isna().sum())} empty cells")
        classes = sorted(set(values.tolist()), key=lambda c: (isinstance(c, str), c if not isinstance(c, str) else 0, str(c)))
        index = {c: i for i, c in enumerate(classes)}
        rows["y"] = np.array([index[v] for v in values.tolist()], dtype=np.int64)
        given.update(label_column=label, classes=[c.item() if hasattr(c, "item") else c for c in classes])
    if conditions:
        for c in conditions:
            if not pd.api.types.is_numeric_dtype(frame[c].dtype) or pd.api.types.is_bool_dtype(frame[c].dtype):
                raise FlowmatchError(f"{path}: condition column {c!r} must hold numbers (a class column is label_column)")
            if frame[c].isna().any():
                raise FlowmatchError(f"{path}: condition column {c!r} has {int(frame[c].isna().sum())} empty cells")
        rows["c"] = frame[conditions].to_numpy(dtype=np.float32)
        given["condition_columns"] = conditions
    taken = [*([label] if label else []), *conditions]
    if given:
        given["columns"] = names
    generated = frame.drop(columns=taken) if taken else frame
    if generated.shape[1] == 0:
        raise FlowmatchError(f"{path}: no column is left to generate besides the label and condition columns")
    return generated, rows, given
