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
    scikit-learn's ``make_moons(noise=0.1)``, then x * 2 + (-1, -0.2): half the points on the upper moon
    (cos a, sin a), half on the lower one (1 - cos a, 1/2 - sin a), at angles a evenly spaced over [0, pi];
    shuffled; + N(0, 0.1^2 I).
``circles``
    scikit-learn's ``make_circles(factor=0.5, noise=0.08)``, then x * 3: half the points on the unit circle,
    half on the circle of radius 1/2, at evenly spaced angles 2 pi j / m; shuffled; + N(0, 0.08^2 I).
``rings``
    4 concentric circles of radius 3 * {1, 0.75, 0.5, 0.25}; n // 4 points on each of the first three and
    the rest on the innermost, at evenly spaced angles 2 pi j / m (j = 0..m-1); shuffled; + N(0, 0.08^2 I).
``swissroll``
    scikit-learn's ``make_swiss_roll(noise=1.0)``, columns 0 and 2, divided by 5: t = 1.5 pi (1 + 2 U);
    x = ((t cos t, t sin t) + N(0, I)) / 5.

The scikit-learn sets are drawn by these formulas in torch (the same distributions; a training step's
batch costs microseconds rather than scikit-learn's millisecond of argument checks). All randomness
comes from a ``torch.Generator`` (or an integer seed that makes one), so every draw is reproducible.

Built-in tables
---------------
``wine`` (178 x 13, 3 classes) and ``breast-cancer`` (569 x 30, 2 classes) are scikit-learn's bundled
``load_wine()`` and ``load_breast_cancer()`` (no download), split and standardised exactly as a data file
is (below), with their class labels.

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

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch

from flowmatch.data.files import (
    _CORRUPT_ERRORS,
    _MMAP_BYTES,
    _MMAP_CHUNK,
    FILE_EXTENSIONS,
    MIN_ROWS,
    _MappedRows,
    check_float32_range,
    class_count,
    load_table,
)
from flowmatch.data.standardize import Standardizer
from flowmatch.data.toy import (
    _BUILTINS,
    BUILTIN_CLASSES,
    BUILTIN_NAMES,
    GAUSSIAN_MIXTURES,
    TABLE_NAMES,
    GaussianMixture,
    check_count,
    check_seed,
    did_you_mean,
    make_generator,
    sample_builtin,
)
from flowmatch.errors import FlowmatchError
from flowmatch.storage import reading

_TEST_SEED_OFFSET = 1_000_003  # built-in test sets: seed + offset, apart from the training draws


_FIT_SEED_OFFSET = 2_000_003  # built-in standardisation fit sample: seed + offset


_FIT_SAMPLES = 100_000


_VAL_SEED_OFFSET = 3_000_017  # the validation rows: seed + offset


#: At most this many training rows are held out for validation.
MAX_VALIDATION_ROWS = 2000


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
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    class_names: list[str] | None = None  # None: the data are unlabelled
    image_shape: tuple[int, ...] | None = None  # (C, H, W) for image data, flattened in that order
    mapped: _MappedRows | None = None  # training rows of a memory-mapped file (then train is None)
    val: torch.Tensor | None = None  # validation rows carved out of the training rows (model coordinates)
    val_labels: torch.Tensor | None = None
    train_conditions: torch.Tensor | None = None  # (N, k) float covariates of the training rows: the model's ``c``
    val_conditions: torch.Tensor | None = None
    test_conditions: torch.Tensor | None = None
    condition_names: list[str] | None = None  # the covariates' column names (None: no covariates)
    shape: tuple[int, ...] | None = None  # the shape of one row as the model takes it (None: flat (D,))

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    def sample(self, n: int, generator: torch.Generator, *, labels: bool = False):
        """A training batch of ``n`` points in model coordinates, drawn with ``generator``.

        With ``labels=True`` returns (points, classes); classes are None for unlabelled data.
        """
        x, k, _ = self.draw(n, generator)
        return (x, k) if labels else x

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(points, class labels or None, covariates or None) of ``n`` training rows in model coordinates."""
        n = check_count(n)
        g = make_generator(generator)
        if self.builtin:
            x, k = sample_builtin(self.name, n, g, labels=True)
            return (x if self.standardizer.is_identity else self.standardizer.forward(x)), k, None
        if self.mapped is not None:
            index = torch.randint(0, len(self.mapped), (n,), generator=g, device=g.device)
            return self.standardizer.forward(self.mapped[index.cpu()]).to(torch.float32), None, None
        assert self.train is not None
        index = torch.randint(0, len(self.train), (n,), generator=g, device=g.device).to(self.train.device)
        k = None if self.train_labels is None else self.train_labels[index]
        c = None if self.train_conditions is None else self.train_conditions[index]
        return self.train[index], k, c

    @property
    def n_train(self) -> int | None:
        """How many training rows there are (None for built-in sets, which draw fresh points)."""
        if self.builtin:
            return None
        if self.mapped is not None:
            return len(self.mapped)
        assert self.train is not None
        return len(self.train)

    @property
    def image_value_range(self) -> tuple[float, float]:
        """Image data: the values in data coordinates of the model's -1 and 1 (black and white): (0, 1) for
        pixels, as flowmatch loads images; (-1, 1) for a run saved before (its data coordinates were the model's)."""
        ends = self.standardizer.inverse(torch.tensor([[-1.0], [1.0]], dtype=torch.float64).expand(2, self.dim))
        return float(ends[0, 0]), float(ends[1, 0])

    def training_rows(self, limit: int | None = None, seed: int = 0) -> torch.Tensor:
        """The training rows in data coordinates (at most ``limit``, a seeded random subset; finite data only)."""
        n = self.n_train
        if n is None:
            raise FlowmatchError(f"'{self.name}' draws fresh points: it has no fixed training rows")
        index = torch.arange(n) if limit is None or n <= limit else torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]
        if self.mapped is not None:  # a mapped file's rows are read in data coordinates
            return self.mapped[index]
        assert self.train is not None
        return self.to_data(self.train[index]).to(torch.float32)

    def require_test_rows(self, needed: int) -> Dataset:
        """This data set, if finite data hold out at least ``needed`` test rows (a run's evaluation needs some)
        or none at all (``test_fraction`` 0: the run is measured against ``reference=`` points or not at all);
        else a :class:`FlowmatchError` saying how many rows the data have and the fewest that would do."""
        if not self.builtin and 0 < len(self.test) < needed:  # none at all: test_fraction 0, measured with reference=
            raise FlowmatchError(too_few_rows(self, needed))
        return self

    def hold_out_validation(self, fraction: float, seed: int) -> Dataset:
        """The same data set with round(fraction * n_train) training rows (at least 2, at most
        :data:`MAX_VALIDATION_ROWS`, leaving at least 2) moved to ``val``, chosen with ``seed``.

        Built-in sets (fresh draws) and ``fraction == 0`` come back unchanged.
        """
        n = self.n_train
        if n is None or fraction <= 0:
            return self
        n_val = min(max(2, round(fraction * n)), MAX_VALIDATION_ROWS, n - 2)
        if n_val < 2:
            raise FlowmatchError(f"{self.name}: {n} training rows are too few to hold out a validation split; train with val_fraction=0")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + _VAL_SEED_OFFSET))
        held, kept = order[:n_val], order[n_val:]
        if self.mapped is not None:
            val = self.mapped[held]
            val = self.standardizer.forward(val).to(torch.float32)
            return dataclasses.replace(self, mapped=_MappedRows(self.mapped.array, self.mapped.rows[kept]), val=val)
        labels, conditions = self.train_labels, self.train_conditions
        assert self.train is not None
        return dataclasses.replace(
            self,
            train=self.train[kept].contiguous(),
            train_labels=None if labels is None else labels[kept].contiguous(),
            train_conditions=None if conditions is None else conditions[kept].contiguous(),
            val=self.train[held].contiguous(),
            val_labels=None if labels is None else labels[held].contiguous(),
            val_conditions=None if conditions is None else conditions[held].contiguous(),
        )

    @classmethod
    def from_array(
        cls,
        x,
        *,
        labels=None,
        conditions=None,
        name: str = "python",
        standardize: bool | None = None,
        test_fraction: float = 0.2,
        n_test: int = 4000,
        seed: int = 0,
    ) -> Dataset:
        """A data set of the rows of an array or tensor ``x`` of shape (N, ...), split and standardised as a
        data file is (:func:`load_dataset`); rows of more than one axis are flattened and the model gets
        them back in their shape (``shape``), unstandardised unless ``standardize=True``.

        ``labels`` (N,) are class labels 0..K-1 (the model's ``y``); ``conditions`` (N, k) or (N,) are
        float covariates (its ``c``). ``test_fraction`` 0 holds no row out: every row trains.
        """
        array = _as_rows(x, "data")
        shape = tuple(array.shape[1:]) if array.ndim > 2 else None
        flat = array.reshape(len(array), -1)
        if len(flat) < MIN_ROWS:
            raise FlowmatchError(f"data: {len(flat)} rows are too few (at least {MIN_ROWS})")
        label_array, classes = None, None
        if labels is not None:
            label_array = _as_rows(labels, "labels").reshape(-1)
            if len(label_array) != len(flat) or label_array.dtype.kind not in "iu" or (label_array < 0).any():
                raise FlowmatchError(f"labels must be {len(flat)} non-negative integers, got {label_array.dtype} {label_array.shape}")
            label_array = label_array.astype(np.int64)
            classes = [str(k) for k in range(class_count(label_array, len(flat), "labels"))]
        condition_array = None
        if conditions is not None:
            condition_array = _as_rows(conditions, "conditions").astype(np.float64)
            condition_array = condition_array.reshape(len(condition_array), -1)
            if len(condition_array) != len(flat):
                raise FlowmatchError(f"conditions have {len(condition_array)} rows, data {len(flat)}")
        if standardize is None:
            standardize = shape is None
        dataset = _split_rows(
            name, flat.astype(np.float64), label_array, classes, n_test, test_fraction, seed, standardize, condition_array
        )
        return dataclasses.replace(
            dataset, shape=shape, condition_names=None if condition_array is None else [f"c{j}" for j in range(condition_array.shape[1])]
        )

    @property
    def gaussian_mixture(self) -> GaussianMixture | None:
        """The set's density in model coordinates where it is an isotropic Gaussian mixture
        (:data:`GAUSSIAN_MIXTURES`, standardised by one scale for every column), else None."""
        mixture = GAUSSIAN_MIXTURES.get(self.name) if self.builtin else None
        std = self.standardizer.std
        if mixture is None or not torch.all(std == std[0]):
            return None
        return mixture.affine(self.standardizer.mean, float(std[0]))

    def to_model(self, x_data) -> torch.Tensor:
        """Data -> model coordinates (``standardizer.forward``)."""
        return self.standardizer.forward(x_data)

    def to_data(self, x_model) -> torch.Tensor:
        """Model -> data coordinates (``standardizer.inverse``)."""
        return self.standardizer.inverse(x_model)


def _looks_like_path(spec: str) -> bool:
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return os.path.splitext(spec)[1].lower() in FILE_EXTENSIONS or any(s in spec for s in separators)


def pixel_standardizer(dim: int) -> Standardizer:
    """Image data: pixels p in [0, 1] (data coordinates) <-> x = 2 p - 1 in [-1, 1] (the model's scale)."""
    return Standardizer(torch.full((dim,), 0.5, dtype=torch.float64), torch.full((dim,), 0.5, dtype=torch.float64))


def load_dataset(
    spec: str | os.PathLike,
    *,
    n_test: int = 4000,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool | None = None,
    label_column: str | None = None,
    mmap: bool | None = None,
    condition_columns: str | None = None,
) -> Dataset:
    """A built-in set by name (a 2-D toy set, a bundled table or ``digits``), or the points in a .npy/.npz/.csv file.

    Built-in sets: ``test`` is ``n_test`` fresh points drawn with seed ``seed + 1_000_003`` (apart from the
    training draws); the standardizer is the identity unless ``standardize=True``, which fits it on 100,000
    fresh points.

    Files and the bundled tables (``wine``, ``breast-cancer``): the rows are shuffled with ``seed``; round(test_fraction * N) of them, but at least 2 and at most
    ``n_test`` (and leaving at least 2 for training), become ``test`` (data coordinates) and the rest
    (``test_fraction`` 0: none; every row trains, and an evaluation needs ``reference=``)
    ``train`` (model coordinates). ``standardize`` defaults to True and fits on the train rows only.
    A column that is constant on the train rows is held fixed at its value (:class:`Standardizer`'s
    ``fixed``: samples give it back exactly); a file whose rows are all one point is refused.
    Labels come from an .npz array ``labels`` or a CSV ``label_column`` (see :func:`load_labels`), and
    float covariates (the model's condition ``c``) from CSV ``condition_columns`` (see :func:`load_table`).

    Large ``.npy`` files (over 1 GiB, or any with ``mmap=True``) are memory-mapped instead of read:
    batches read their rows from disk, the standardiser is fitted on at most 100,000 random training
    rows, and the values are checked chunk by chunk.

    Image data (``digits``, a folder of PNG/JPEG files, an .npz with ``images``) is flattened to
    (N, C*H*W) with ``image_shape`` set: the model trains on x = 2 p - 1 in [-1, 1] for pixels p in [0, 1], the
    data coordinates (test rows, samples): :func:`pixel_standardizer`; see ``flowmatch.data.images``.
    """
    name = os.fspath(spec)
    if not isinstance(name, str):
        raise FlowmatchError(f"data spec must be a name or a path, got {spec!r}")
    n_test = check_count(n_test, "n_test")
    if n_test < 1:
        raise FlowmatchError("n_test must be at least 1")
    test_fraction = check_test_fraction(test_fraction)
    seed = check_seed(seed)
    if standardize is not None and not isinstance(standardize, bool):
        raise FlowmatchError(f"standardize must be True, False or None, got {standardize!r}")

    if name in _BUILTINS:
        test, test_labels = sample_builtin(name, n_test, (seed + _TEST_SEED_OFFSET) % 2**63, labels=True)
        if standardize:
            standardizer = Standardizer.fit(sample_builtin(name, _FIT_SAMPLES, (seed + _FIT_SEED_OFFSET) % 2**63))
        else:
            standardizer = Standardizer.identity(2)
        classes = [str(k) for k in range(BUILTIN_CLASSES[name])] or None
        return Dataset(
            name=name, dim=2, standardizer=standardizer, train=None, test=test, builtin=True, test_labels=test_labels, class_names=classes
        )

    if name in TABLE_NAMES:
        array, labels, classes = _builtin_table(name)
        return _split_rows(name, array, labels, classes, n_test, test_fraction, seed, standardize)

    from flowmatch.data.images import is_image_data, load_image_set

    if is_image_data(name):
        with reading(name):
            images = load_image_set(name, test_fraction=test_fraction, seed=seed)
        return Dataset(
            name=name,
            dim=images.dim,
            standardizer=pixel_standardizer(images.dim),
            train=images.train,  # model scale x = 2 p - 1
            test=(images.test + 1) / 2,  # data coordinates: pixels p, as given and as samples come back
            builtin=False,
            train_labels=images.train_labels,
            test_labels=images.test_labels,
            class_names=images.class_names,
            image_shape=images.image_shape,
        )

    if not os.path.exists(name):
        if _looks_like_path(name):
            raise FlowmatchError(f"{name}: no such file")
        from flowmatch.data.manifolds import MANIFOLD_SETS

        raise FlowmatchError(
            f"unknown data {name!r}: not a file and not one of the built-in sets ({', '.join(_ALL_BUILTINS)}; on manifolds: "
            f"{', '.join(MANIFOLD_SETS)})" + did_you_mean(name, (*_ALL_BUILTINS, *MANIFOLD_SETS))
        )

    if n_test < 2:
        raise FlowmatchError(f"{name}: n_test must be at least 2 for a data file, got {n_test}")
    with reading(name):  # a file that cannot be read (no permission, an I/O error): one line naming it
        if mmap or (mmap is None and name.lower().endswith(".npy") and os.path.getsize(name) > _MMAP_BYTES):
            if label_column or condition_columns:
                raise FlowmatchError(f"{name}: memory-mapped .npy files carry no labels or conditions")
            return _memory_mapped(name, n_test, test_fraction, seed, standardize)
        array, labels, classes, conditions, condition_names = load_table(name, label_column, condition_columns)
    dataset = _split_rows(name, array, labels, classes, n_test, test_fraction, seed, standardize, conditions)
    return dataclasses.replace(dataset, condition_names=condition_names)


def _held_rows(n: int, test_fraction: float = 0.2, n_test: int = 4000) -> int:
    """How many of a file's ``n`` rows :func:`load_dataset` holds out as its test split (none at ``test_fraction`` 0)."""
    if test_fraction == 0:
        return 0
    return min(max(2, round(test_fraction * n)), n_test, n - 2)


def check_test_fraction(value: object) -> float:
    """``test_fraction`` as a float in [0, 1): 0 holds nothing out (train on every row; evaluate with ``reference=``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise FlowmatchError(f"test_fraction must be a number in [0, 1), got {value!r}")
    return float(value)


def too_few_rows(dataset: Dataset, needed: int) -> str:
    """The message for finite data whose test split is smaller than ``needed`` rows: how many rows the data
    have and the fewest that would do (20% of a file's rows are held out)."""
    total = len(dataset.test) + (dataset.n_train or 0) + (0 if dataset.val is None else len(dataset.val))
    fewest = next(n for n in range(needed, 100 * needed + 100) if _held_rows(n) >= needed)
    name = "the data given in Python" if dataset.name == "python" else dataset.name
    return (
        f"{name}: {total} rows are too few: a run's evaluation scores a held-out test split of at least {needed} rows "
        f"(20% of the rows), so the data need at least {fewest} rows"
    )


def _builtin_table(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(rows, labels, class names) of a scikit-learn bundled table."""
    from sklearn import datasets

    bunch = {"wine": datasets.load_wine, "breast-cancer": datasets.load_breast_cancer}[name]()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64), [str(c) for c in bunch.target_names]


def _as_rows(x, what: str) -> np.ndarray:
    """An array or tensor as a finite numeric numpy array with at least one row."""
    if isinstance(x, torch.Tensor):
        if x.is_meta:
            raise FlowmatchError(f"{what}: a tensor on the meta device holds no values; give one on the CPU or an accelerator")
        x = x.detach().cpu().numpy()
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise FlowmatchError(f"{what}: not an array ({exc})") from None
    if array.dtype.kind not in "biuf" or array.ndim < 1 or not len(array):
        raise FlowmatchError(f"{what}: expected a numeric array of shape (N, ...), got {array.dtype} {array.shape}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise FlowmatchError(f"{what}: non-finite values")
    if array.dtype.kind == "f" and array.ndim >= 1:
        check_float32_range(what, array.reshape(len(array), -1))
    if array.ndim == 1:
        array = array[:, None] if what != "labels" else array
    return array


def _split_rows(name, array, labels, classes, n_test, test_fraction, seed, standardize, conditions=None) -> Dataset:
    """Shuffle the rows with ``seed``, hold out the test rows, fit the standardiser on the train rows."""
    points = torch.from_numpy(array)
    n = len(points)
    if n and (array == array[:1]).all():
        raise FlowmatchError(f"{name}: all {n} rows are the same point {array[0].tolist()}: there is no distribution to learn")
    n_held = _held_rows(n, test_fraction, n_test)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = points[order[:n_held]], points[order[n_held:]]
    standardizer = Standardizer.identity(points.shape[1]) if standardize is False else Standardizer.fit(train)
    label_tensor = None if labels is None else torch.from_numpy(labels)
    return Dataset(
        name=name,
        dim=points.shape[1],
        standardizer=standardizer,
        train=standardizer.forward(train).to(torch.float32).contiguous(),
        test=test.to(torch.float32).contiguous(),
        builtin=False,
        train_labels=None if label_tensor is None else label_tensor[order[n_held:]],
        test_labels=None if label_tensor is None else label_tensor[order[:n_held]],
        class_names=classes,
        train_conditions=None if conditions is None else torch.from_numpy(conditions)[order[n_held:]].to(torch.float32).contiguous(),
        test_conditions=None if conditions is None else torch.from_numpy(conditions)[order[:n_held]].to(torch.float32).contiguous(),
    )


_ALL_BUILTINS = (*BUILTIN_NAMES, *TABLE_NAMES, "digits")


REFERENCE_SEED_OFFSET = 4_000_037  # the order of reference rows given to an evaluation: seed + offset


def shuffled_rows(x: torch.Tensor, seed: int) -> torch.Tensor:
    """The rows of ``x`` in a random order drawn with ``seed + REFERENCE_SEED_OFFSET``.

    Rows a user gives for evaluation (``reference=``) may come sorted (by class, by time, by value); a
    split of them into held-out sets and floors must not depend on that order, or a floor measures the
    sort instead of the data (two halves of class-sorted rows hold different classes)."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed((int(seed) + REFERENCE_SEED_OFFSET) % 2**63))
    return x[order]


def _memory_mapped(name: str, n_test: int, test_fraction: float, seed: int, standardize: bool | None) -> Dataset:
    """A Dataset over a memory-mapped .npy: nothing but the test rows is read up front."""
    if not name.lower().endswith(".npy"):
        raise FlowmatchError(f"{name}: memory mapping needs a .npy file")
    try:
        array = np.load(name, mmap_mode="r", allow_pickle=False)
    except OSError as e:
        if e.errno is not None:  # the system's error: load_dataset's reading() names it
            raise
        raise FlowmatchError(f"{name}: not a valid .npy file or corrupt ({type(e).__name__}: {e})") from None
    except _CORRUPT_ERRORS as e:
        raise FlowmatchError(f"{name}: not a valid .npy file or corrupt ({type(e).__name__}: {e})") from None
    if array.ndim != 2 or array.dtype.kind not in "fiu":
        raise FlowmatchError(f"{name}: expected a numeric 2-D array of shape (N, D), got {array.dtype} {array.shape}")
    n = len(array)
    if n < MIN_ROWS:
        raise FlowmatchError(f"{name}: need at least {MIN_ROWS} rows, got {n}")
    for start in range(0, n, _MMAP_CHUNK):
        bad = ~np.isfinite(array[start : start + _MMAP_CHUNK]).all(axis=1)
        if bad.any():
            raise FlowmatchError(f"{name}: NaN or infinite values (first in row {start + int(np.argmax(bad)) + 1})")
        check_float32_range(name, np.asarray(array[start : start + _MMAP_CHUNK], dtype=np.float64), start)
    n_held = _held_rows(n, test_fraction, n_test)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_rows = _MappedRows(array, order[n_held:])
    test = _MappedRows(array, order[:n_held])[torch.arange(n_held)]
    if standardize is False:
        standardizer = Standardizer.identity(array.shape[1])
    else:
        fit_rows = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(seed + 1))[:_FIT_SAMPLES]
        standardizer = Standardizer.fit(train_rows[fit_rows])
    return Dataset(name=name, dim=array.shape[1], standardizer=standardizer, train=None, test=test, builtin=False, mapped=train_rows)
