"""Training data: the built-in 2-D toy densities, data files, and standardisation.

Built-in sets
-------------
The toy sets follow the definitions in FFJORD's ``lib/toy_data.py``, so that numbers compare with published
ones. Below, ``U`` is uniform on [0, 1), ``B`` is Bernoulli(1/2), ``N(m, s^2 I)`` a Gaussian, and every draw is
independent:

``two-gaussians`` (the default)
    x = (4 s, 0) + N(0, I), with s = -1 or +1 with probability 1/2 each.
``8gaussians``
    x = (4 (cos(k pi/4), sin(k pi/4)) + N(0, 0.5^2 I)) / 1.414, with k uniform on {0, ..., 7}.
``checkerboard``
    x1 = 4 U - 2;  x2 = U' - 2 B + (floor(x1) mod 2);  x = 2 (x1, x2).
    Uniform on the 8 squares [2i, 2i + 2) x [2j, 2j + 2) in [-4, 4)^2 with i + j even (density 1/32).
``2spirals``
    t = 3 pi sqrt(U);  d = (-t cos t + U'/2, t sin t + U''/2);  half the points are d, the other half -d
    (the same d, mirrored);  x = (+-d) / 3 + N(0, 0.1^2 I).
``moons``
    scikit-learn ``make_moons(noise=0.1)``, then x * 2 + (-1, -0.2).
``circles``
    scikit-learn ``make_circles(factor=0.5, noise=0.08)``, then x * 3.
``rings``
    4 concentric circles of radius 3 * {1, 0.75, 0.5, 0.25}; n // 4 points on each of the first three and
    the rest on the innermost, at evenly spaced angles 2 pi j / m (j = 0..m-1); shuffled; + N(0, 0.08^2 I).
``swissroll``
    scikit-learn ``make_swiss_roll(noise=1.0)``, columns 0 and 2, divided by 5.

All randomness comes from a ``torch.Generator`` (or an integer seed that makes one); the scikit-learn sets get
their ``random_state`` from that generator, so every draw is reproducible.

Data files
----------
:func:`load_array` reads ``.npy``, ``.npz`` or ``.csv`` files of N points in D dimensions, never unpickling
anything. :func:`load_dataset` splits the rows into train and test parts and standardises them.

Coordinates
-----------
A :class:`Standardizer` maps data coordinates x to model coordinates z = (x - mean) / std. Models train on
z; likelihoods in data coordinates add log |dz/dx| = -sum(log std) (see :meth:`Standardizer.log_abs_det`).
"""

from __future__ import annotations

import csv
import difflib
import math
import os
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from flowmatch.errors import FlowmatchError

__all__ = [
    "BUILTIN_NAMES",
    "FILE_EXTENSIONS",
    "MIN_ROWS",
    "Dataset",
    "Standardizer",
    "load_array",
    "load_dataset",
    "sample_builtin",
]

BUILTIN_NAMES: tuple[str, ...] = (
    "two-gaussians",
    "8gaussians",
    "checkerboard",
    "2spirals",
    "moons",
    "circles",
    "rings",
    "swissroll",
)
FILE_EXTENSIONS: tuple[str, ...] = (".npy", ".npz", ".csv")
MIN_ROWS = 4  # a data file needs enough rows for a train split and a test split of at least 2 each

_TEST_SEED_OFFSET = 1_000_003  # built-in test sets: seed + offset, apart from the training draws
_FIT_SEED_OFFSET = 2_000_003  # built-in standardisation fit sample: seed + offset
_FIT_SAMPLES = 100_000


# --------------------------------------------------------------------------------------------------
# Built-in 2-D sets
# --------------------------------------------------------------------------------------------------


def _make_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A generator from a generator (used as is), an integer seed, or None (torch's global generator)."""
    if generator is None:
        return torch.default_generator
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise FlowmatchError(
            f"generator must be a torch.Generator, an integer seed or None, got {type(generator).__name__}"
        )
    return torch.Generator().manual_seed(_check_seed(generator))


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise FlowmatchError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return seed


def _check_count(n: object, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise FlowmatchError(f"{what} must be a non-negative integer, got {n!r}")
    return n


def _uniform(n: int, g: torch.Generator) -> torch.Tensor:
    """U[0, 1) draws, float64, on the generator's device."""
    return torch.rand(n, generator=g, device=g.device, dtype=torch.float64)


def _normal(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """N(0, 1) draws, float64, on the generator's device."""
    return torch.randn(shape, generator=g, device=g.device, dtype=torch.float64)


def _sklearn_seed(g: torch.Generator) -> int:
    """A scikit-learn ``random_state`` drawn from ``g`` (so scikit-learn sets are reproducible too)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=g, device=g.device).item())


def _two_gaussians(n: int, g: torch.Generator) -> torch.Tensor:
    """x = (4 s, 0) + N(0, I), s = +-1 with probability 1/2 each: the mixture of N((-4, 0), I) and N((4, 0), I)."""
    s = torch.randint(0, 2, (n,), generator=g, device=g.device).to(torch.float64) * 2 - 1
    x = _normal((n, 2), g)
    x[:, 0] += 4 * s
    return x


def _eight_gaussians(n: int, g: torch.Generator) -> torch.Tensor:
    """x = (4 (cos(k pi/4), sin(k pi/4)) + N(0, 0.5^2 I)) / 1.414, k uniform on {0, ..., 7}."""
    angle = torch.randint(0, 8, (n,), generator=g, device=g.device).to(torch.float64) * (math.pi / 4)
    centres = 4 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return (centres + 0.5 * _normal((n, 2), g)) / 1.414


def _checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    """x1 = 4 U - 2; x2 = U' - 2 B + (floor(x1) mod 2); x = 2 (x1, x2): uniform on 8 squares of [-4, 4]^2."""
    x1 = _uniform(n, g) * 4 - 2
    b = torch.randint(0, 2, (n,), generator=g, device=g.device).to(torch.float64)
    x2 = _uniform(n, g) - 2 * b + torch.remainder(torch.floor(x1), 2)
    x = torch.stack([x1, x2], dim=1) * 2
    # Each coordinate lies in [2c, 2c + 2) for an integer c; keep float32 rounding from moving a point up
    # onto the edge 2c + 2, which belongs to a neighbouring square (or lies outside [-4, 4)).
    edge = (2 * torch.floor(x / 2) + 2).to(torch.float32)
    return torch.minimum(x.to(torch.float32), torch.nextafter(edge, torch.full_like(edge, -math.inf)))


def _two_spirals(n: int, g: torch.Generator) -> torch.Tensor:
    """t = 3 pi sqrt(U); d = (-t cos t + U'/2, t sin t + U''/2); x = (d or -d) / 3 + N(0, 0.1^2 I).

    The first ceil(n/2) points use d and the rest use -d of the same draws, as in FFJORD.
    """
    half = (n + 1) // 2
    t = torch.sqrt(_uniform(half, g)) * 3 * math.pi
    dx = -torch.cos(t) * t + _uniform(half, g) * 0.5
    dy = torch.sin(t) * t + _uniform(half, g) * 0.5
    d = torch.stack([dx, dy], dim=1)
    x = torch.cat([d, -d])[:n] / 3
    return x + 0.1 * _normal((n, 2), g)


def _moons(n: int, g: torch.Generator) -> torch.Tensor:
    """scikit-learn make_moons(noise=0.1), then x * 2 + (-1, -0.2)."""
    from sklearn.datasets import make_moons

    x, _ = make_moons(n_samples=n, noise=0.1, random_state=_sklearn_seed(g))
    return torch.from_numpy(x * 2 + np.array([-1.0, -0.2]))


def _circles(n: int, g: torch.Generator) -> torch.Tensor:
    """scikit-learn make_circles(factor=0.5, noise=0.08), then x * 3: radii 3 and 1.5."""
    from sklearn.datasets import make_circles

    x, _ = make_circles(n_samples=n, factor=0.5, noise=0.08, random_state=_sklearn_seed(g))
    return torch.from_numpy(x * 3)


def _rings(n: int, g: torch.Generator) -> torch.Tensor:
    """Circles of radius 3 * {1, 0.75, 0.5, 0.25} at evenly spaced angles, shuffled, + N(0, 0.08^2 I).

    The outer three circles get n // 4 points each and the innermost the rest; circle r with m points has
    the points 3 r (cos(2 pi j / m), sin(2 pi j / m)), j = 0, ..., m - 1.
    """
    quarter = n // 4
    circles = []
    for radius, m in ((1.0, quarter), (0.75, quarter), (0.5, quarter), (0.25, n - 3 * quarter)):
        angle = torch.arange(m, device=g.device, dtype=torch.float64) * (2 * math.pi / max(m, 1))
        circles.append(3 * radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1))
    x = torch.cat(circles)
    x = x[torch.randperm(n, generator=g, device=g.device)]
    return x + 0.08 * _normal((n, 2), g)


def _swissroll(n: int, g: torch.Generator) -> torch.Tensor:
    """scikit-learn make_swiss_roll(noise=1.0), columns 0 and 2, divided by 5."""
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n_samples=n, noise=1.0, random_state=_sklearn_seed(g))
    return torch.from_numpy(x[:, [0, 2]] / 5)


_BUILTINS = {
    "two-gaussians": _two_gaussians,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "2spirals": _two_spirals,
    "moons": _moons,
    "circles": _circles,
    "rings": _rings,
    "swissroll": _swissroll,
}
assert tuple(_BUILTINS) == BUILTIN_NAMES


def _did_you_mean(name: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def sample_builtin(name: str, n: int, generator: torch.Generator | int | None = None) -> torch.Tensor:
    """Draw ``n`` points of the built-in 2-D set ``name`` (see the module docstring for each formula).

    ``generator`` is a ``torch.Generator`` (advanced by the draw), an integer seed, or None for torch's
    global generator. Returns a float32 tensor of shape (n, 2) on the generator's device.
    """
    if name not in _BUILTINS:
        raise FlowmatchError(
            f"unknown built-in data set {name!r}: choose one of {', '.join(BUILTIN_NAMES)}"
            + _did_you_mean(str(name), BUILTIN_NAMES)
        )
    n = _check_count(n)
    g = _make_generator(generator)
    if n == 0:
        return torch.empty(0, 2, device=g.device)
    return _BUILTINS[name](n, g).to(device=g.device, dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# Data files
# --------------------------------------------------------------------------------------------------

# What numpy raises on a damaged .npy/.npz (bad magic or header, truncated data, broken zip).
_CORRUPT_ERRORS = (ValueError, OSError, EOFError, SyntaxError, TypeError, KeyError, zipfile.BadZipFile, zlib.error)


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
        raise FlowmatchError(
            f"{path}: unsupported file type {ext or '(no extension)'!r}; "
            f"expected one of {', '.join(FILE_EXTENSIONS)}"
        )
    if os.path.getsize(path) == 0:
        raise FlowmatchError(f"{path}: the file is empty")

    array = _read_csv(path) if ext == ".csv" else _read_numpy(path, ext)
    return _check_points(path, array)


def _read_numpy(path: str, ext: str) -> np.ndarray:
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
    except _CORRUPT_ERRORS as e:
        if "Object arrays" in str(e):
            raise FlowmatchError(
                f"{path}: holds Python objects, which would need unpickling (refused); save a numeric array"
            ) from None
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
    raise FlowmatchError(
        f"{path}: several arrays ({', '.join(keys)}) and none named 'data' or 'x'; name the data array 'data'"
    )


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_csv(path: str) -> np.ndarray:
    """Parse a comma-separated file of numbers with an optional header row of names."""
    rows: list[tuple[int, list[str]]] = []  # (line number, cells)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
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
    if rows and not any(_is_number(c) for c in rows[0][1]):
        header = rows.pop(0)[1]
    if not rows:
        raise FlowmatchError(f"{path}: no data rows" + (" (only a header)" if header else ""))

    width = len(header) if header is not None else len(rows[0][1])
    expected = "the header has" if header is not None else "the first row has"
    data = np.empty((len(rows), width))
    for i, (line, cells) in enumerate(rows):
        if len(cells) != width:
            raise FlowmatchError(
                f"{path}: ragged rows: row {i + 1} (line {line}) has {len(cells)} values but {expected} {width}"
            )
        try:
            data[i] = [float(c) for c in cells]
        except ValueError:
            j = next(j for j, c in enumerate(cells) if not _is_number(c))
            column = f"'{header[j]}' (column {j + 1})" if header is not None else f"{j + 1}"
            hint = "; values must be separated by commas" if any(c in cells[j] for c in ";\t ") else ""
            raise FlowmatchError(
                f"{path}: non-numeric value {cells[j]!r} in column {column}, row {i + 1} (line {line}){hint}"
            ) from None
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
    return array


# --------------------------------------------------------------------------------------------------
# Standardisation
# --------------------------------------------------------------------------------------------------


def _as_float_tensor(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.float32)


@dataclass(eq=False)
class Standardizer:
    """The affine map between data coordinates x and model coordinates z = (x - mean) / std.

    ``mean`` and ``std`` are float64 tensors of shape (D,); ``std > 0``. Its Jacobian is diag(1 / std), so
    log p_data(x) = log p_model(z) + log |dz/dx| with log |dz/dx| = -sum(log std).

    >>> s = Standardizer.fit(x)          # x: (N, D) points in data coordinates
    >>> z = s.forward(x)                 # mean 0, std 1 per column
    >>> x_back = s.inverse(z)
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __post_init__(self) -> None:
        self.mean = torch.as_tensor(self.mean, dtype=torch.float64).detach().cpu()
        self.std = torch.as_tensor(self.std, dtype=torch.float64).detach().cpu()
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape or len(self.mean) == 0:
            raise FlowmatchError(
                f"standardizer: mean and std must be 1-D of the same length >= 1, got shapes "
                f"{tuple(self.mean.shape)} and {tuple(self.std.shape)}"
            )
        if not torch.isfinite(self.mean).all() or not torch.isfinite(self.std).all():
            raise FlowmatchError("standardizer: mean and std must be finite")
        if not (self.std > 0).all():
            raise FlowmatchError("standardizer: std must be positive")

    @property
    def dim(self) -> int:
        return len(self.mean)

    @classmethod
    def fit(cls, x) -> Standardizer:
        """Per-column mean and (population) std of ``x`` (N, D); columns of zero variance get std 1.

        A column counts as constant when std <= 1e-10 |mean| (rounding noise of a constant column).
        """
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise FlowmatchError(f"standardizer: need points of shape (N, D) with N, D >= 1, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise FlowmatchError("standardizer: the points contain NaN or infinite values")
        mean = x.mean(dim=0)
        std = x.std(dim=0, correction=0)
        std = torch.where(std <= 1e-10 * mean.abs(), torch.ones_like(std), std)
        return cls(mean, std)

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
        return (x - self.mean.to(x)) / self.std.to(x)

    def inverse(self, z) -> torch.Tensor:
        """Model -> data coordinates: x = z * std + mean, in z's dtype and device."""
        z = _as_float_tensor(z)
        self._check_dim(z)
        return z * self.std.to(z) + self.mean.to(z)

    def log_abs_det(self) -> float:
        """log |det dz/dx| = -sum(log std): add it to a model-space log density to get the data-space one."""
        return float(-torch.log(self.std).sum())

    def to_dict(self) -> dict:
        """``{"mean": [...], "std": [...]}`` with plain floats (JSON-serialisable)."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Standardizer:
        """Inverse of :meth:`to_dict`; validates types, lengths and values."""
        if not isinstance(d, Mapping):
            raise FlowmatchError(f"standardizer: expected a mapping with 'mean' and 'std', got {type(d).__name__}")
        values = {}
        for key in ("mean", "std"):
            if key not in d:
                raise FlowmatchError(f"standardizer: missing key {key!r}")
            v = d[key]
            if not isinstance(v, (list, tuple)) or not all(
                isinstance(a, (int, float)) and not isinstance(a, bool) for a in v
            ):
                raise FlowmatchError(f"standardizer: {key!r} must be a list of numbers, got {v!r}")
            values[key] = torch.tensor([float(a) for a in v], dtype=torch.float64)
        if len(values["mean"]) != len(values["std"]):
            raise FlowmatchError(
                f"standardizer: 'mean' has {len(values['mean'])} values but 'std' has {len(values['std'])}"
            )
        return cls(values["mean"], values["std"])


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Dataset:
    """Training data plus a fixed test set.

    Training batches come from :meth:`sample` in model coordinates (standardised); ``test`` stays in data
    coordinates. Built-in sets draw fresh training points on every call (``train`` is None); file data sets
    resample the rows of ``train`` with replacement.
    """

    name: str
    dim: int
    standardizer: Standardizer
    train: torch.Tensor | None
    test: torch.Tensor
    builtin: bool

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """A training batch of ``n`` points in model coordinates, drawn with ``generator``."""
        n = _check_count(n)
        g = _make_generator(generator)
        if self.builtin:
            return self.standardizer.forward(sample_builtin(self.name, n, g))
        index = torch.randint(0, len(self.train), (n,), generator=g, device=g.device)
        return self.train[index.to(self.train.device)]

    def to_model(self, x_data) -> torch.Tensor:
        """Data -> model coordinates (``standardizer.forward``)."""
        return self.standardizer.forward(x_data)

    def to_data(self, x_model) -> torch.Tensor:
        """Model -> data coordinates (``standardizer.inverse``)."""
        return self.standardizer.inverse(x_model)


def _looks_like_path(spec: str) -> bool:
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return os.path.splitext(spec)[1].lower() in FILE_EXTENSIONS or any(s in spec for s in separators)


def load_dataset(
    spec: str | os.PathLike,
    *,
    n_test: int = 4000,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool | None = None,
) -> Dataset:
    """A built-in set by name, or the points in a .npy/.npz/.csv file.

    Built-in sets: ``test`` is ``n_test`` fresh points drawn with seed ``seed + 1_000_003`` (apart from the
    training draws); the standardizer is the identity unless ``standardize=True``, which fits it on 100,000
    fresh points.

    Files: the rows are shuffled with ``seed``; round(test_fraction * N) of them, but at least 2 and at most
    ``n_test`` (and leaving at least 2 for training), become ``test`` (data coordinates) and the rest
    ``train`` (model coordinates). ``standardize`` defaults to True and fits on the train rows only.
    """
    name = os.fspath(spec)
    if not isinstance(name, str):
        raise FlowmatchError(f"data spec must be a name or a path, got {spec!r}")
    n_test = _check_count(n_test, "n_test")
    if n_test < 1:
        raise FlowmatchError("n_test must be at least 1")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise FlowmatchError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    seed = _check_seed(seed)
    if standardize is not None and not isinstance(standardize, bool):
        raise FlowmatchError(f"standardize must be True, False or None, got {standardize!r}")

    if name in _BUILTINS:
        test = sample_builtin(name, n_test, (seed + _TEST_SEED_OFFSET) % 2**63)
        if standardize:
            standardizer = Standardizer.fit(sample_builtin(name, _FIT_SAMPLES, (seed + _FIT_SEED_OFFSET) % 2**63))
        else:
            standardizer = Standardizer.identity(2)
        return Dataset(name=name, dim=2, standardizer=standardizer, train=None, test=test, builtin=True)

    if not os.path.exists(name):
        if _looks_like_path(name):
            raise FlowmatchError(f"{name}: no such file")
        raise FlowmatchError(
            f"unknown data {name!r}: not a file and not one of the built-in sets ({', '.join(BUILTIN_NAMES)})"
            + _did_you_mean(name, BUILTIN_NAMES)
        )

    points = torch.from_numpy(load_array(name))
    n = len(points)
    if n_test < 2:
        raise FlowmatchError(f"{name}: n_test must be at least 2 for a data file, got {n_test}")
    n_held = min(max(2, round(test_fraction * n)), n_test, n - 2)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = points[order[:n_held]], points[order[n_held:]]
    standardizer = Standardizer.identity(points.shape[1]) if standardize is False else Standardizer.fit(train)
    return Dataset(
        name=name,
        dim=points.shape[1],
        standardizer=standardizer,
        train=standardizer.forward(train).to(torch.float32).contiguous(),
        test=test.to(torch.float32).contiguous(),
        builtin=False,
    )
