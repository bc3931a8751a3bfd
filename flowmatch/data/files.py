"""Data files: .npy (memory-mapped when large), .npz and .csv arrays of shape (N, D), and label columns."""

from __future__ import annotations

import csv
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from flowmatch.errors import FlowmatchError
from flowmatch.storage import reading

FILE_EXTENSIONS: tuple[str, ...] = (".npy", ".npz", ".csv")


MIN_ROWS = 4  # a data file needs enough rows for a train split and a test split of at least 2 each


# What numpy raises on a damaged .npy/.npz (bad magic or header, truncated data, broken zip).
_CORRUPT_ERRORS = (ValueError, OSError, EOFError, SyntaxError, TypeError, KeyError, zipfile.BadZipFile, zlib.error)


def load_labels(path: str | os.PathLike, label_column: str | None = None):
    """Points and class labels of a data file: (float64 (N, D) array, int64 (N,) labels or None, class names).

    * ``.npz``: the points as :func:`load_array` reads them and the integer array ``labels`` if present.
    * ``.csv`` with ``label_column`` (a header name, or a 1-based column number): that column holds the
      classes (any text or numbers; classes are its distinct values in sorted order) and the other
      columns the points.
    * otherwise no labels.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if label_column and ext != ".csv":
        raise FlowmatchError(f"{path}: a label column applies to .csv files; .npz files give labels as an array 'labels'")
    if ext == ".csv" and label_column:
        if not os.path.isfile(path):
            raise FlowmatchError(f"{path}: no such file")
        header, rows = _csv_rows(path)
        return _split_labels(path, header, rows, _column_index(path, header, label_column, len(rows[0][1])))
    points = load_array(path)
    if ext != ".npz":
        return points, None, None
    with reading(path), np.load(path, allow_pickle=False) as archive:
        if "labels" not in archive.files:
            return points, None, None
        try:
            labels = archive["labels"]
        except ValueError as exc:
            raise FlowmatchError(f"{path}: cannot read 'labels' ({exc})") from None
    if labels.shape != (len(points),) or labels.dtype.kind not in "iu" or (labels < 0).any():
        raise FlowmatchError(f"{path}: 'labels' must be {len(points)} non-negative integers, got {labels.dtype} {labels.shape}")
    count = class_count(labels, len(points), f"{path}: 'labels'")
    return points, labels.astype(np.int64), [str(c) for c in range(count)]


def class_count(labels: np.ndarray, rows: int, what: str) -> int:
    """The number of classes K = max + 1 of class numbers 0..K-1 (``labels``, non-negative integers), refused
    where it exceeds the rows: an embedding of K classes is allocated for a conditional model, and labels such
    as 1e12 (ids, not class numbers) would hang it."""
    count = int(labels.max()) + 1 if len(labels) else 0
    if count > max(rows, 1):
        raise FlowmatchError(
            f"{what} go up to {count - 1}: classes are numbered 0..K-1, and {count:,} classes are more than the {rows:,} rows; "
            "number them from 0 (numpy.unique(labels, return_inverse=True)[1])"
        )
    return count


def load_table(path: str | os.PathLike, label_column: str | None = None, condition_columns: str | None = None):
    """:func:`load_labels`, with ``condition_columns`` (comma-separated header names or 1-based column
    numbers of a CSV file) read as numeric conditions: (points, labels, classes, conditions (N, k)
    float64 or None, condition column names or None). The points are the remaining columns."""
    if not condition_columns:
        return (*load_labels(path, label_column), None, None)
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() != ".csv":
        raise FlowmatchError(f"{path}: condition columns apply to .csv files")
    if not os.path.isfile(path):
        raise FlowmatchError(f"{path}: no such file")
    header, rows = _csv_rows(path)
    width = len(rows[0][1])
    wanted = [c.strip() for c in condition_columns.split(",") if c.strip()]
    picked = [_column_index(path, header, c, width, "condition") for c in wanted]
    if len(set(picked)) != len(picked):
        raise FlowmatchError(f"{path}: condition columns {condition_columns!r} name a column twice")
    label = _column_index(path, header, label_column, width) if label_column else None
    if label in picked:
        raise FlowmatchError(f"{path}: column {label_column!r} cannot be both the label and a condition")
    names = [header[j] if header else str(j + 1) for j in picked]
    conditions = _csv_numbers(
        path, names if header else None, [(line, [cells[j] if j < len(cells) else "" for j in picked]) for line, cells in rows]
    )
    if not np.isfinite(conditions).all():
        raise FlowmatchError(f"{path}: condition columns {', '.join(names)} hold non-finite values")
    keep = [j for j in range(width) if j not in picked]
    rest = [(line, [cells[j] for j in keep if j < len(cells)]) for line, cells in rows]
    if len(keep) == (1 if label is not None else 0):
        raise FlowmatchError(f"{path}: no data columns left beside the condition columns")
    tmp_header = [header[j] for j in keep] if header else None
    points, labels, classes = _split_labels(path, tmp_header, rest, None if label is None else keep.index(label))
    return points, labels, classes, conditions, names


def _split_labels(path: str, header: list[str] | None, rows: list[tuple[int, list[str]]], j: int | None):
    """(points, labels, classes) of CSV rows whose column ``j`` (None: none) holds class labels."""
    if j is None:
        return _check_points(path, _csv_numbers(path, header, rows)), None, None
    names = [cells[j] if j < len(cells) else "" for _, cells in rows]
    rest = [(line, cells[:j] + cells[j + 1 :]) for line, cells in rows]
    points = _check_points(path, _csv_numbers(path, header[:j] + header[j + 1 :] if header else None, rest))
    classes = sorted(set(names), key=lambda c: (not is_number(c), float(c) if is_number(c) else 0.0, c))
    index = {c: i for i, c in enumerate(classes)}
    return points, np.array([index[c] for c in names], dtype=np.int64), classes


def _column_index(path: str, header: list[str] | None, column: str, width: int, what: str = "label") -> int:
    if header is not None and column in header:
        return header.index(column)
    if column.isdigit() and 1 <= int(column) <= width:
        return int(column) - 1
    names = f" (columns: {', '.join(header)})" if header else f" (columns 1..{width})"
    raise FlowmatchError(f"{path}: no {what} column {column!r}{names}")


def load_array(path: str | os.PathLike) -> np.ndarray:
    """Read N points in D dimensions from a ``.npy``, ``.npz`` or ``.csv`` file as a float64 (N, D) array.

    * ``.npy``: one numeric array.
    * ``.npz``: the array named ``data``, else ``x``, else the only array (an array named ``labels`` is
      ignored).
    * ``.csv``: comma-separated numbers, one point per line; an optional first row of column names; blank
      lines and lines starting with ``#`` are skipped.

    Nothing is ever unpickled: files holding Python objects are refused. Every problem (missing or
    unreadable file, wrong shape, fewer than :data:`MIN_ROWS` rows, non-numeric or non-finite values) raises
    :class:`FlowmatchError` naming the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FlowmatchError(f"{path}: no such file")
    if os.path.isdir(path):
        raise FlowmatchError(f"{path}: is a directory, expected a .npy, .npz or .csv file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in FILE_EXTENSIONS:
        raise FlowmatchError(f"{path}: unsupported file type {ext or '(no extension)'!r}; expected one of {', '.join(FILE_EXTENSIONS)}")
    with reading(path):  # no permission, an I/O error: one line naming the file
        if os.path.getsize(path) == 0:
            raise FlowmatchError(f"{path}: the file is empty")
        array = _read_csv(path) if ext == ".csv" else read_numpy(path, ext)
    return _check_points(path, array)


def read_numpy(path: str, ext: str) -> np.ndarray:
    """The data array of a .npy or .npz file, loaded with allow_pickle=False."""
    try:
        with open(path, "rb") as f:
            loaded = np.load(f, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    return loaded[_npz_key(path, loaded.files)]
            return loaded
    except FlowmatchError:
        raise
    except OSError as e:
        if e.errno is not None:  # the system's error (no permission, I/O): the caller's reading() names it
            raise
        raise FlowmatchError(f"{path}: not a valid {ext} file or corrupt ({type(e).__name__}: {e})") from None
    except _CORRUPT_ERRORS as e:
        if "Object arrays" in str(e):
            raise FlowmatchError(f"{path}: holds Python objects, which would need unpickling (refused); save a numeric array") from None
        raise FlowmatchError(f"{path}: not a valid {ext} file or corrupt ({type(e).__name__}: {e})") from None


def _npz_key(path: str, keys: list[str]) -> str:
    """Which array of an .npz archive holds the data: 'data', else 'x', else the only one besides 'labels'."""
    for key in ("data", "x"):
        if key in keys:
            return key
    candidates = [k for k in keys if k != "labels"]
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise FlowmatchError(f"{path}: no data array in the archive (keys: {', '.join(keys) or 'none'})")
    raise FlowmatchError(f"{path}: several arrays ({', '.join(keys)}) and none named 'data' or 'x'; name the data array 'data'")


def read_utf8(path: str | os.PathLike) -> str:
    """A text file's contents; an unreadable file or bytes that are not UTF-8 are a FlowmatchError naming
    the line (and the byte's column)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise FlowmatchError(f"{os.fspath(path)}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = data.count(b"\n", 0, exc.start) + 1, exc.start - data.rfind(b"\n", 0, exc.start)
        raise FlowmatchError(f"{os.fspath(path)}: line {line} is not UTF-8 (byte 0x{data[exc.start]:02x} at column {column})") from None


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_csv(path: str) -> np.ndarray:
    """Parse a comma-separated file of numbers with an optional header row of names."""
    return _csv_numbers(path, *_csv_rows(path))


def _csv_rows(path: str) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(header or None, [(line number, cells)]) of a CSV file."""
    rows: list[tuple[int, list[str]]] = []  # (line number, cells)
    try:
        with reading(path), open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                cells = [c.strip() for c in row]
                blank = len(cells) <= 1 and not "".join(cells)
                if blank or cells[0].startswith("#"):
                    continue
                rows.append((reader.line_num, cells))
    except UnicodeDecodeError:
        raise FlowmatchError(f"{path}: not a UTF-8 text file; expected comma-separated numbers") from None
    except csv.Error as e:
        raise FlowmatchError(f"{path}: malformed CSV ({e})") from None

    header = None
    if rows and not any(is_number(c) for c in rows[0][1]):
        header = rows.pop(0)[1]
    if not rows:
        raise FlowmatchError(f"{path}: no data rows" + (" (only a header)" if header else ""))
    return header, rows


def _csv_numbers(path: str, header: list[str] | None, rows: list[tuple[int, list[str]]]) -> np.ndarray:
    width = len(header) if header is not None else len(rows[0][1])
    expected = "the header has" if header is not None else "the first row has"
    data = np.empty((len(rows), width))
    for i, (line, cells) in enumerate(rows):
        if len(cells) != width:
            raise FlowmatchError(f"{path}: ragged rows: row {i + 1} (line {line}) has {len(cells)} values but {expected} {width}")
        try:
            data[i] = [float(c) for c in cells]
        except ValueError:
            j = next(j for j, c in enumerate(cells) if not is_number(c))
            column = f"'{header[j]}' (column {j + 1})" if header is not None else f"{j + 1}"
            hint = "; values must be separated by commas" if any(c in cells[j] for c in ";\t ") else ""
            raise FlowmatchError(f"{path}: non-numeric value {cells[j]!r} in column {column}, row {i + 1} (line {line}){hint}") from None
    return data


def _check_points(path: str, array: np.ndarray) -> np.ndarray:
    """Validate a loaded array as N >= MIN_ROWS finite points of dimension D >= 1; return it as float64."""
    if array.dtype.kind not in "biuf":
        raise FlowmatchError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise FlowmatchError(f"{path}: expected a 2-D array of shape (N, D), got shape {tuple(array.shape)}")
    n, d = array.shape
    if n == 0:
        raise FlowmatchError(f"{path}: no data rows (shape {tuple(array.shape)})")
    if d == 0:
        raise FlowmatchError(f"{path}: the points have 0 dimensions (shape {tuple(array.shape)})")
    if n < MIN_ROWS:
        raise FlowmatchError(f"{path}: need at least {MIN_ROWS} rows, got {n}")
    array = np.ascontiguousarray(array, dtype=np.float64)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise FlowmatchError(
            f"{path}: {int(bad.sum())} of {n} rows contain NaN or infinite values "
            f"(first at row index {int(np.argmax(bad))}, counting from 0)"
        )
    check_float32_range(path, array)
    return array


def check_float32_range(what: str, array: np.ndarray, first_row: int = 0) -> None:
    """Refuse values that float32 cannot hold (beyond +-3.4e38): the held-out rows and the samples are
    float32, where they would become infinite. The message names the column and the first such row."""
    big = np.abs(array) > np.finfo(np.float32).max
    if big.any():
        i, j = (int(k) for k in np.argwhere(big)[0])
        raise FlowmatchError(
            f"{what}: column {j} (counting from 0) holds {array[i, j]:.4g} at row index {first_row + i}, beyond float32's "
            "range (+-3.4e38) that training and sampling use: rescale that column"
        )


_MMAP_BYTES = 1 << 30


_MMAP_CHUNK = 1 << 16


class _MappedRows:
    """Rows of a memory-mapped (N, D) .npy file, gathered on demand as float32 tensors."""

    def __init__(self, array: np.ndarray, rows: torch.Tensor):
        self.array, self.rows = array, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        wanted = self.rows[index].numpy()
        order = np.argsort(wanted, kind="stable")  # read the file front to back
        out = np.empty((len(wanted), self.array.shape[1]), dtype=np.float32)
        out[order] = self.array[wanted[order]]
        return torch.from_numpy(out)


def read_condition_rows(path: str) -> np.ndarray:
    """Condition rows (k, d) from a .npy or a .csv file (an optional header row): what ``flowmatch sample
    --condition FILE`` conditions on, n samples for each row."""
    if not Path(path).is_file():
        raise FlowmatchError(f"condition file '{path}' does not exist")
    if path.endswith(".npy"):
        try:
            rows = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FlowmatchError(f"condition file '{path}': cannot read it ({exc})") from None
        if not isinstance(rows, np.ndarray):  # a zip archive (an .npz, a torch.save file) under a .npy name
            rows.close()
            raise FlowmatchError(f"condition file '{path}': not a .npy array (the file is a zip archive)")
    elif path.endswith(".csv"):
        header, lines = _csv_rows(path)
        rows = _csv_numbers(path, header, lines)
    else:
        raise FlowmatchError(f"condition file '{path}' must end in .npy or .csv")
    try:
        rows = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        raise FlowmatchError(
            f"condition file '{path}': expected rows of numbers, got {getattr(rows, 'dtype', type(rows).__name__)}"
        ) from None
    if rows.ndim > 2 or not rows.size:
        raise FlowmatchError(
            f"condition file '{path}': expected rows of numbers (a 2-D array: one row of the condition's values per line), "
            f"got shape {rows.shape}"
        )
    rows = rows.reshape(len(rows), -1) if rows.ndim else rows.reshape(1, 1)
    if not np.isfinite(rows).all():
        raise FlowmatchError(f"condition file '{path}': expected finite numbers (it holds NaN or an infinity)")
    return rows
