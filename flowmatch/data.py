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

import csv
import dataclasses
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
    "TABLE_NAMES",
    "FILE_EXTENSIONS",
    "MIN_ROWS",
    "Dataset",
    "Standardizer",
    "load_array",
    "load_dataset",
    "sample_builtin",
    "ENTROPY",
    "entropy",
    "has_log_prob",
    "log_prob",
    "GaussianMixture",
    "GAUSSIAN_MIXTURES",
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
TABLE_NAMES: tuple[str, ...] = ("wine", "breast-cancer")
FILE_EXTENSIONS: tuple[str, ...] = (".npy", ".npz", ".csv")
MIN_ROWS = 4  # a data file needs enough rows for a train split and a test split of at least 2 each

_TEST_SEED_OFFSET = 1_000_003  # built-in test sets: seed + offset, apart from the training draws
_FIT_SEED_OFFSET = 2_000_003  # built-in standardisation fit sample: seed + offset
_FIT_SAMPLES = 100_000
_VAL_SEED_OFFSET = 3_000_017  # the validation rows: seed + offset
#: At most this many training rows are held out for validation.
MAX_VALIDATION_ROWS = 2000


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


def _two_gaussians(n: int, g: torch.Generator) -> torch.Tensor:
    """x = (4 s, 0) + N(0, I), s = +-1 with probability 1/2 each: the mixture of N((-4, 0), I) and N((4, 0), I)."""
    k = torch.randint(0, 2, (n,), generator=g, device=g.device)
    x = _normal((n, 2), g)
    x[:, 0] += 4 * (k.to(torch.float64) * 2 - 1)
    return x, k


def _eight_gaussians(n: int, g: torch.Generator) -> torch.Tensor:
    """x = (4 (cos(k pi/4), sin(k pi/4)) + N(0, 0.5^2 I)) / 1.414, k uniform on {0, ..., 7}."""
    k = torch.randint(0, 8, (n,), generator=g, device=g.device)
    angle = k.to(torch.float64) * (math.pi / 4)
    centres = 4 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return (centres + 0.5 * _normal((n, 2), g)) / 1.414, k


def _checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    """x1 = 4 U - 2; x2 = U' - 2 B + (floor(x1) mod 2); x = 2 (x1, x2): uniform on 8 squares of [-4, 4]^2."""
    x1 = _uniform(n, g) * 4 - 2
    b = torch.randint(0, 2, (n,), generator=g, device=g.device).to(torch.float64)
    x2 = _uniform(n, g) - 2 * b + torch.remainder(torch.floor(x1), 2)
    x = torch.stack([x1, x2], dim=1) * 2
    # Each coordinate lies in [2c, 2c + 2) for an integer c; keep float32 rounding from moving a point up
    # onto the edge 2c + 2, which belongs to a neighbouring square (or lies outside [-4, 4)).
    edge = (2 * torch.floor(x / 2) + 2).to(torch.float32)
    x = torch.minimum(x.to(torch.float32), torch.nextafter(edge, torch.full_like(edge, -math.inf)))
    cell = torch.floor(x / 2).long() + 2  # column and row of the square, 0..3
    return x, cell[:, 1] * 2 + cell[:, 0] // 2  # the 8 squares, numbered row by row


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
    k = (torch.arange(n, device=g.device) >= half).long()
    return x + 0.1 * _normal((n, 2), g), k


def _moons(n: int, g: torch.Generator, noise: float = 0.1) -> torch.Tensor:
    """scikit-learn's make_moons(noise=0.1), then x * 2 + (-1, -0.2).

    n // 2 points (class 0) on the upper moon (cos a, sin a) and the other n - n // 2 (class 1) on the
    lower moon (1 - cos a, 1/2 - sin a), each at angles a evenly spaced over [0, pi] (both ends
    included), shuffled, + N(0, noise^2 I).
    """
    upper, lower = _arc(n // 2, math.pi, endpoint=True, g=g), _arc(n - n // 2, math.pi, endpoint=True, g=g)
    x = torch.cat([upper, torch.stack([1 - lower[:, 0], 0.5 - lower[:, 1]], dim=1)])
    x, k = _shuffle_with_noise(x, [n // 2, n - n // 2], noise, g)
    return x * 2 + torch.tensor([-1.0, -0.2], dtype=torch.float64, device=g.device), k


def _circles(n: int, g: torch.Generator, noise: float = 0.08) -> torch.Tensor:
    """scikit-learn's make_circles(factor=0.5, noise=0.08), then x * 3: radii 3 and 1.5.

    n // 2 points (class 0) on the unit circle and the other n - n // 2 (class 1) on the circle of
    radius 1/2, each at angles 2 pi j / m (j = 0..m-1), shuffled, + N(0, noise^2 I); then times 3.
    """
    outer, inner = _arc(n // 2, 2 * math.pi, endpoint=False, g=g), _arc(n - n // 2, 2 * math.pi, endpoint=False, g=g)
    x, k = _shuffle_with_noise(torch.cat([outer, 0.5 * inner]), [n // 2, n - n // 2], noise, g)
    return x * 3, k


def _arc(m: int, end: float, *, endpoint: bool, g: torch.Generator) -> torch.Tensor:
    """m points (cos a, sin a) at evenly spaced angles a from 0 to ``end`` (numpy's linspace rule)."""
    if endpoint:
        angle = torch.linspace(0.0, end, m, dtype=torch.float64, device=g.device)
    else:
        angle = torch.arange(m, dtype=torch.float64, device=g.device) * (end / max(m, 1))
    return torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)


def _shuffle_with_noise(x: torch.Tensor, counts: list[int], noise: float, g: torch.Generator):
    """Rows of x (the first counts[0] of class 0, the next counts[1] of class 1, ...) in random order, + N(0, noise^2 I)."""
    k = torch.cat([torch.full((c,), i, dtype=torch.long, device=g.device) for i, c in enumerate(counts)])
    order = torch.randperm(len(x), generator=g, device=g.device)
    return x[order] + noise * _normal(tuple(x.shape), g), k[order]


def _rings(n: int, g: torch.Generator) -> torch.Tensor:
    """Circles of radius 3 * {1, 0.75, 0.5, 0.25} at evenly spaced angles, shuffled, + N(0, 0.08^2 I).

    The outer three circles get n // 4 points each and the innermost the rest; circle r with m points has
    the points 3 r (cos(2 pi j / m), sin(2 pi j / m)), j = 0, ..., m - 1.
    """
    quarter = n // 4
    counts = [quarter, quarter, quarter, n - 3 * quarter]
    x = torch.cat([3 * radius * _arc(m, 2 * math.pi, endpoint=False, g=g) for radius, m in zip((1.0, 0.75, 0.5, 0.25), counts)])
    return _shuffle_with_noise(x, counts, 0.08, g)


def _swissroll(n: int, g: torch.Generator, noise: float = 1.0) -> torch.Tensor:
    """scikit-learn's make_swiss_roll(noise=1.0), columns 0 and 2, divided by 5.

    t = 1.5 pi (1 + 2 U);  x = ((t cos t, t sin t) + N(0, noise^2 I)) / 5.
    """
    t = 1.5 * math.pi * (1 + 2 * _uniform(n, g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    return (x + noise * _normal((n, 2), g)) / 5, None


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

# Classes of the built-in sets (the mixture component, moon, circle, ring, spiral or square a point
# comes from); swissroll has none.
BUILTIN_CLASSES = {
    "two-gaussians": 2,
    "8gaussians": 8,
    "checkerboard": 8,
    "2spirals": 2,
    "moons": 2,
    "circles": 2,
    "rings": 4,
    "swissroll": 0,
}


def _did_you_mean(name: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def sample_builtin(name: str, n: int, generator: torch.Generator | int | None = None, *, labels: bool = False):
    """Draw ``n`` points of the built-in 2-D set ``name`` (see the module docstring for each formula).

    ``generator`` is a ``torch.Generator`` (advanced by the draw), an integer seed, or None for torch's
    global generator. Returns a float32 tensor of shape (n, 2) on the generator's device; with
    ``labels=True`` a pair (points, classes) with int64 classes in 0..BUILTIN_CLASSES[name] - 1 (None
    for swissroll).
    """
    if name not in _BUILTINS:
        raise FlowmatchError(
            f"unknown built-in data set {name!r}: choose one of {', '.join(BUILTIN_NAMES)}"
            + _did_you_mean(str(name), BUILTIN_NAMES)
        )
    n = _check_count(n)
    g = _make_generator(generator)
    if n == 0:
        x, k = torch.empty(0, 2, device=g.device), torch.empty(0, dtype=torch.long, device=g.device)
    else:
        x, k = _BUILTINS[name](n, g)
        x = x.to(device=g.device, dtype=torch.float32)
    if not labels:
        return x
    return x, (k if BUILTIN_CLASSES[name] else None)


# --------------------------------------------------------------------------------------------------
# Known densities and entropies of the built-in sets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GaussianMixture:
    """The density sum_k pi_k N(x; mu_k, tau_k^2 I): ``weights`` pi (K,), ``means`` mu (K, D), ``stds`` tau (K,).

    The built-in sets that are such mixtures (:data:`GAUSSIAN_MIXTURES`) have closed-form densities
    (:func:`log_prob`), and as a training source they admit the posterior target
    (``AffinePath.posterior_velocity``).
    """

    weights: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for points x (n, D): shape (n,), in the mixture's dtype."""
        weights, means, stds = (v.to(device=x.device) for v in (self.weights, self.means, self.stds))
        x = x.to(means.dtype)
        d2 = ((x[:, None, :] - means[None, :, :]) ** 2).sum(-1)
        var = stds**2
        log_normal = -d2 / (2 * var) - 0.5 * x.shape[1] * torch.log(2 * math.pi * var)
        return torch.logsumexp(weights.log() + log_normal, dim=1)

    def affine(self, shift: torch.Tensor, scale: float) -> GaussianMixture:
        """The mixture of (x - shift) / scale for x drawn from this one."""
        return GaussianMixture(self.weights, (self.means - shift) / scale, self.stds / scale)


def _equal_mixture(means: list[list[float]], std: float) -> GaussianMixture:
    k = len(means)
    return GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float64), torch.tensor(means, dtype=torch.float64),
                           torch.full((k,), std, dtype=torch.float64))


#: The built-in sets that are isotropic Gaussian mixtures, in data coordinates: two-gaussians is the
#: equal mixture of N((-4, 0), I) and N((4, 0), I); 8gaussians of N(4 (cos k pi/4, sin k pi/4) / 1.414,
#: (0.5 / 1.414)^2 I), k = 0..7.
GAUSSIAN_MIXTURES: dict[str, GaussianMixture] = {
    "two-gaussians": _equal_mixture([[-4.0, 0.0], [4.0, 0.0]], 1.0),
    "8gaussians": _equal_mixture(
        [[4 * math.cos(k * math.pi / 4) / 1.414, 4 * math.sin(k * math.pi / 4) / 1.414] for k in range(8)], 0.5 / 1.414
    ),
}


def _log_noisy_circles(x: torch.Tensor, radii: tuple[float, ...], std: float) -> torch.Tensor:
    """log (1/k) sum_j p_j(x), p_j the circle of radius r_j (uniform angle) plus N(0, std^2 I).

    With rho = |x|: p_j(x) = exp(-(rho^2 + r_j^2) / (2 s^2)) I0(rho r_j / s^2) / (2 pi s^2) (a Rice
    density over the plane), computed as -(rho - r_j)^2 / (2 s^2) + log i0e(rho r_j / s^2) - log(2 pi s^2)
    with the exponentially scaled Bessel function i0e(z) = exp(-z) I0(z), which never overflows.
    """
    rho = x.norm(dim=1, keepdim=True)
    r = torch.tensor(radii, dtype=x.dtype, device=x.device)[None, :]
    log_p = -((rho - r) ** 2) / (2 * std**2) + torch.log(torch.special.i0e(rho * r / std**2)) - math.log(2 * math.pi * std**2)
    return torch.logsumexp(log_p, dim=1) - math.log(len(radii))


def _log_prob_checkerboard(x: torch.Tensor) -> torch.Tensor:
    """log(1/32) on the 8 squares [2i, 2i + 2) x [2j, 2j + 2) of [-4, 4)^2 with i + j even, -inf elsewhere."""
    cell = torch.floor(x / 2)
    inside = ((x >= -4) & (x < 4)).all(dim=1) & (torch.remainder(cell.sum(dim=1), 2) == 0)
    return torch.where(inside, torch.full_like(x[:, 0], -math.log(32)), torch.full_like(x[:, 0], -math.inf))


def _log_prob_circles(x: torch.Tensor) -> torch.Tensor:
    """Circles of radius 3 and 1.5 (half the points each) plus N(0, 0.24^2 I) (make_circles' 0.08, times 3)."""
    return _log_noisy_circles(x, (3.0, 1.5), 0.24)


def _log_prob_rings(x: torch.Tensor) -> torch.Tensor:
    """Circles of radius 3, 2.25, 1.5, 0.75 (a quarter of the points each) plus N(0, 0.08^2 I)."""
    return _log_noisy_circles(x, (3.0, 2.25, 1.5, 0.75), 0.08)


_LOG_PROBS = {
    **{name: mixture.log_prob for name, mixture in GAUSSIAN_MIXTURES.items()},
    "checkerboard": _log_prob_checkerboard,
    "circles": _log_prob_circles,
    "rings": _log_prob_rings,
}

#: Differential entropy H(p) = -E_p[log p] of each built-in set, nats, with how it was obtained. It is
#: the lowest expected NLL a model can reach, and KL(data || model) = NLL - H. ``exact``: closed form.
#: ``quadrature``: H = H(N(0, 1)) + the entropy of the x-marginal by adaptive quadrature (scipy.quad).
#: ``monte-carlo``: -mean log_prob(x) over 4,000,000 draws (seeds 0-3) with this module's closed-form
#: ``log_prob``, standard error 0.0005 (8gaussians 2.8322, circles 3.2682, rings 2.6238; the reference
#: notes on the FFJORD toy sets give 2.832, 3.267, 2.623). ``reference``: Monte-Carlo estimates from those
#: notes for the sets without a closed-form density here (moons, swissroll, 2spirals).
ENTROPY: dict[str, tuple[float, str]] = {
    "two-gaussians": (3.5309, "quadrature"),
    "8gaussians": (2.832, "monte-carlo"),
    "checkerboard": (math.log(32), "exact"),
    "2spirals": (2.643, "reference"),
    "moons": (2.394, "reference"),
    "circles": (3.267, "monte-carlo"),
    "rings": (2.623, "monte-carlo"),
    "swissroll": (2.669, "reference"),
}
assert tuple(ENTROPY) == BUILTIN_NAMES


def has_log_prob(name: str) -> bool:
    """Whether the built-in set ``name`` has a closed-form density (see :func:`log_prob`)."""
    return name in _LOG_PROBS


def log_prob(name: str, x) -> torch.Tensor:
    """Closed-form log-density log p(x) of the built-in set ``name`` at points x (n, 2); float64, shape (n,).

    Known in closed form: ``two-gaussians``, ``8gaussians`` (equal mixtures of isotropic Gaussians),
    ``checkerboard`` (log(1/32) on the squares, ``-inf`` off them), and ``circles`` and ``rings`` (equal
    mixtures of noisy circles, each a Rice density, see :func:`_log_noisy_circles`). For circles and rings
    this is the limit of many points: the generators place points at evenly spaced angles, which for the
    n = 4,000 test sets is indistinguishable from a uniform angle (for rings, a training batch of 256 puts
    only 64 points on each circle, 0.29 apart on the outer one against a noise of 0.08, so each batch is
    lumpier than this density). Other sets raise :class:`FlowmatchError`.
    """
    if name not in _LOG_PROBS:
        known = ", ".join(_LOG_PROBS)
        raise FlowmatchError(f"no closed-form density for {name!r}; known for: {known}")
    x = torch.as_tensor(x).detach().to(torch.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise FlowmatchError(f"log_prob of {name!r} takes points of shape (n, 2), got {tuple(x.shape)}")
    return _LOG_PROBS[name](x)


def entropy(name: str) -> tuple[float, str]:
    """(H(p) in nats, how it was obtained) for the built-in set ``name``; see :data:`ENTROPY`."""
    if name not in ENTROPY:
        raise FlowmatchError(f"no entropy for {name!r}: not a built-in set")
    return ENTROPY[name]


# --------------------------------------------------------------------------------------------------
# Data files
# --------------------------------------------------------------------------------------------------

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
        j = _column_index(path, header, label_column, len(rows[0][1]))
        names = [cells[j] if j < len(cells) else "" for _, cells in rows]
        rest = [(line, cells[:j] + cells[j + 1 :]) for line, cells in rows]
        points = _check_points(path, _csv_numbers(path, header[:j] + header[j + 1 :] if header else None, rest))
        classes = sorted(set(names), key=lambda c: (not _is_number(c), float(c) if _is_number(c) else 0.0, c))
        index = {c: i for i, c in enumerate(classes)}
        return points, np.array([index[c] for c in names], dtype=np.int64), classes
    points = load_array(path)
    if ext != ".npz":
        return points, None, None
    with np.load(path, allow_pickle=False) as archive:
        if "labels" not in archive.files:
            return points, None, None
        try:
            labels = archive["labels"]
        except ValueError as exc:
            raise FlowmatchError(f"{path}: cannot read 'labels' ({exc})") from None
    if labels.shape != (len(points),) or labels.dtype.kind not in "iu" or (labels < 0).any():
        raise FlowmatchError(f"{path}: 'labels' must be {len(points)} non-negative integers, got {labels.dtype} {labels.shape}")
    count = int(labels.max()) + 1
    return points, labels.astype(np.int64), [str(c) for c in range(count)]


def _column_index(path: str, header: list[str] | None, column: str, width: int) -> int:
    if header is not None and column in header:
        return header.index(column)
    if column.isdigit() and 1 <= int(column) <= width:
        return int(column) - 1
    names = f" (columns: {', '.join(header)})" if header else f" (columns 1..{width})"
    raise FlowmatchError(f"{path}: no label column {column!r}{names}")


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
    return _csv_numbers(path, *_csv_rows(path))


def _csv_rows(path: str) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(header or None, [(line number, cells)]) of a CSV file."""
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
    return header, rows


def _csv_numbers(path: str, header: list[str] | None, rows: list[tuple[int, list[str]]]) -> np.ndarray:
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
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    class_names: list[str] | None = None  # None: the data are unlabelled
    image_shape: tuple[int, ...] | None = None  # (C, H, W) for image data, flattened in that order
    mapped: "_MappedRows | None" = None  # training rows of a memory-mapped file (then train is None)
    val: torch.Tensor | None = None  # validation rows carved out of the training rows (model coordinates)
    val_labels: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    def sample(self, n: int, generator: torch.Generator, *, labels: bool = False):
        """A training batch of ``n`` points in model coordinates, drawn with ``generator``.

        With ``labels=True`` returns (points, classes); classes are None for unlabelled data.
        """
        n = _check_count(n)
        g = _make_generator(generator)
        if self.builtin:
            x, k = sample_builtin(self.name, n, g, labels=True)
            x = self.standardizer.forward(x)
        elif self.mapped is not None:
            index = torch.randint(0, len(self.mapped), (n,), generator=g, device=g.device)
            x, k = self.standardizer.forward(self.mapped[index.cpu()]).to(torch.float32), None
        else:
            index = torch.randint(0, len(self.train), (n,), generator=g, device=g.device).to(self.train.device)
            x = self.train[index]
            k = None if self.train_labels is None else self.train_labels[index]
        return (x, k) if labels else x

    @property
    def n_train(self) -> int | None:
        """How many training rows there are (None for built-in sets, which draw fresh points)."""
        if self.builtin:
            return None
        return len(self.mapped) if self.mapped is not None else len(self.train)

    def training_rows(self, limit: int | None = None, seed: int = 0) -> torch.Tensor:
        """The training rows in data coordinates (at most ``limit``, a seeded random subset; finite data only)."""
        n = self.n_train
        if n is None:
            raise FlowmatchError(f"'{self.name}' draws fresh points: it has no fixed training rows")
        index = torch.arange(n) if limit is None or n <= limit else torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]
        if self.mapped is not None:  # a mapped file's rows are read in data coordinates
            return self.mapped[index]
        return self.to_data(self.train[index]).to(torch.float32)

    def hold_out_validation(self, fraction: float, seed: int) -> "Dataset":
        """The same data set with round(fraction * n_train) training rows (at least 2, at most
        :data:`MAX_VALIDATION_ROWS`, leaving at least 2) moved to ``val``, chosen with ``seed``.

        Built-in sets (fresh draws) and ``fraction == 0`` come back unchanged.
        """
        n = self.n_train
        if n is None or fraction <= 0:
            return self
        n_val = min(max(2, round(fraction * n)), MAX_VALIDATION_ROWS, n - 2)
        if n_val < 2:
            raise FlowmatchError(f"{self.name}: {n} training rows are too few to hold out a validation split; train with val_fraction 0 (--val-fraction 0)")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + _VAL_SEED_OFFSET))
        held, kept = order[:n_val], order[n_val:]
        if self.mapped is not None:
            val = self.mapped[held]
            val = self.standardizer.forward(val).to(torch.float32)
            return dataclasses.replace(self, mapped=_MappedRows(self.mapped.array, self.mapped.rows[kept]), val=val)
        labels = self.train_labels
        return dataclasses.replace(
            self,
            train=self.train[kept].contiguous(),
            train_labels=None if labels is None else labels[kept].contiguous(),
            val=self.train[held].contiguous(),
            val_labels=None if labels is None else labels[held].contiguous(),
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


def load_dataset(
    spec: str | os.PathLike,
    *,
    n_test: int = 4000,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool | None = None,
    label_column: str | None = None,
    mmap: bool | None = None,
) -> Dataset:
    """A built-in set by name (a 2-D toy set, a bundled table or ``digits``), or the points in a .npy/.npz/.csv file.

    Built-in sets: ``test`` is ``n_test`` fresh points drawn with seed ``seed + 1_000_003`` (apart from the
    training draws); the standardizer is the identity unless ``standardize=True``, which fits it on 100,000
    fresh points.

    Files and the bundled tables (``wine``, ``breast-cancer``): the rows are shuffled with ``seed``; round(test_fraction * N) of them, but at least 2 and at most
    ``n_test`` (and leaving at least 2 for training), become ``test`` (data coordinates) and the rest
    ``train`` (model coordinates). ``standardize`` defaults to True and fits on the train rows only.
    Labels come from an .npz array ``labels`` or a CSV ``label_column`` (see :func:`load_labels`).

    Large ``.npy`` files (over 1 GiB, or any with ``mmap=True``) are memory-mapped instead of read:
    batches read their rows from disk, the standardiser is fitted on at most 100,000 random training
    rows, and the values are checked chunk by chunk.

    Image data (``digits``, a folder of PNG/JPEG files, an .npz with ``images``) is flattened to
    (N, C*H*W) in [-1, 1] with ``image_shape`` set; see ``flowmatch.images``.
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
        test, test_labels = sample_builtin(name, n_test, (seed + _TEST_SEED_OFFSET) % 2**63, labels=True)
        if standardize:
            standardizer = Standardizer.fit(sample_builtin(name, _FIT_SAMPLES, (seed + _FIT_SEED_OFFSET) % 2**63))
        else:
            standardizer = Standardizer.identity(2)
        classes = [str(k) for k in range(BUILTIN_CLASSES[name])] or None
        return Dataset(name=name, dim=2, standardizer=standardizer, train=None, test=test, builtin=True,
                       test_labels=test_labels, class_names=classes)

    if name in TABLE_NAMES:
        array, labels, classes = _builtin_table(name)
        return _split_rows(name, array, labels, classes, n_test, test_fraction, seed, standardize)

    from .images import is_image_data, load_image_set

    if is_image_data(name):
        images = load_image_set(name, test_fraction=test_fraction, seed=seed)
        return Dataset(name=name, dim=images.dim, standardizer=Standardizer.identity(images.dim), train=images.train,
                       test=images.test, builtin=False, train_labels=images.train_labels, test_labels=images.test_labels,
                       class_names=images.class_names, image_shape=images.image_shape)

    if not os.path.exists(name):
        if _looks_like_path(name):
            raise FlowmatchError(f"{name}: no such file")
        raise FlowmatchError(
            f"unknown data {name!r}: not a file and not one of the built-in sets ({', '.join(_ALL_BUILTINS)})"
            + _did_you_mean(name, _ALL_BUILTINS)
        )

    if n_test < 2:
        raise FlowmatchError(f"{name}: n_test must be at least 2 for a data file, got {n_test}")
    if mmap or (mmap is None and name.lower().endswith(".npy") and os.path.getsize(name) > _MMAP_BYTES):
        if label_column:
            raise FlowmatchError(f"{name}: memory-mapped .npy files carry no labels")
        return _memory_mapped(name, n_test, test_fraction, seed, standardize)
    array, labels, classes = load_labels(name, label_column)
    return _split_rows(name, array, labels, classes, n_test, test_fraction, seed, standardize)


def _builtin_table(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(rows, labels, class names) of a scikit-learn bundled table."""
    from sklearn import datasets

    bunch = {"wine": datasets.load_wine, "breast-cancer": datasets.load_breast_cancer}[name]()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64), [str(c) for c in bunch.target_names]


def _split_rows(name, array, labels, classes, n_test, test_fraction, seed, standardize) -> Dataset:
    """Shuffle the rows with ``seed``, hold out the test rows, fit the standardiser on the train rows."""
    points = torch.from_numpy(array)
    n = len(points)
    n_held = min(max(2, round(test_fraction * n)), n_test, n - 2)
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
    )


_ALL_BUILTINS = (*BUILTIN_NAMES, *TABLE_NAMES, "digits")
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


def _memory_mapped(name: str, n_test: int, test_fraction: float, seed: int, standardize: bool | None) -> Dataset:
    """A Dataset over a memory-mapped .npy: nothing but the test rows is read up front."""
    if not name.lower().endswith(".npy"):
        raise FlowmatchError(f"{name}: memory mapping needs a .npy file")
    try:
        array = np.load(name, mmap_mode="r", allow_pickle=False)
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
    n_held = min(max(2, round(test_fraction * n)), n_test, n - 2)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    train_rows = _MappedRows(array, order[n_held:])
    test = _MappedRows(array, order[:n_held])[torch.arange(n_held)]
    if standardize is False:
        standardizer = Standardizer.identity(array.shape[1])
    else:
        fit_rows = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(seed + 1))[:_FIT_SAMPLES]
        standardizer = Standardizer.fit(train_rows[fit_rows])
    return Dataset(name=name, dim=array.shape[1], standardizer=standardizer, train=None, test=test, builtin=False,
                   mapped=train_rows)
