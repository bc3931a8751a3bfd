"""Built-in 2-D data sets (definitions: shared/reference/toy-data.md), their class labels and, where known, their densities."""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable

import torch

from flowmatch.densities import GaussianMixture
from flowmatch.errors import FlowmatchError

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


def make_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A generator from a generator (used as is), an integer seed, or None (torch's global generator)."""
    if generator is None:
        return torch.default_generator
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise FlowmatchError(f"generator must be a torch.Generator, an integer seed or None, got {type(generator).__name__}")
    return torch.Generator().manual_seed(check_seed(generator))


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise FlowmatchError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    return seed


def check_count(n: object, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise FlowmatchError(f"{what} must be a non-negative integer, got {n!r}")
    return n


def _uniform(n: int, g: torch.Generator) -> torch.Tensor:
    """U[0, 1) draws, float64, on the generator's device."""
    return torch.rand(n, generator=g, device=g.device, dtype=torch.float64)


def _normal(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """N(0, 1) draws, float64, on the generator's device."""
    return torch.randn(shape, generator=g, device=g.device, dtype=torch.float64)


def _two_gaussians(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x = (4 s, 0) + N(0, I), s = +-1 with probability 1/2 each: the mixture of N((-4, 0), I) and N((4, 0), I)."""
    k = torch.randint(0, 2, (n,), generator=g, device=g.device)
    x = _normal((n, 2), g)
    x[:, 0] += 4 * (k.to(torch.float64) * 2 - 1)
    return x, k


def _eight_gaussians(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x = (4 (cos(k pi/4), sin(k pi/4)) + N(0, 0.5^2 I)) / 1.414, k uniform on {0, ..., 7}."""
    k = torch.randint(0, 8, (n,), generator=g, device=g.device)
    angle = k.to(torch.float64) * (math.pi / 4)
    centres = 4 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return (centres + 0.5 * _normal((n, 2), g)) / 1.414, k


def _checkerboard(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
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


def _two_spirals(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
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


def _moons(n: int, g: torch.Generator, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's make_moons(noise=0.1), then x * 2 + (-1, -0.2).

    n // 2 points (class 0) on the upper moon (cos a, sin a) and the other n - n // 2 (class 1) on the
    lower moon (1 - cos a, 1/2 - sin a), each at angles a evenly spaced over [0, pi] (both ends
    included), shuffled, + N(0, noise^2 I).
    """
    upper, lower = _arc(n // 2, math.pi, endpoint=True, g=g), _arc(n - n // 2, math.pi, endpoint=True, g=g)
    x = torch.cat([upper, torch.stack([1 - lower[:, 0], 0.5 - lower[:, 1]], dim=1)])
    x, k = _shuffle_with_noise(x, [n // 2, n - n // 2], noise, g)
    return x * 2 + torch.tensor([-1.0, -0.2], dtype=torch.float64, device=g.device), k


def _circles(n: int, g: torch.Generator, noise: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
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


def _shuffle_with_noise(x: torch.Tensor, counts: list[int], noise: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of x (the first counts[0] of class 0, the next counts[1] of class 1, ...) in random order, + N(0, noise^2 I)."""
    k = torch.cat([torch.full((c,), i, dtype=torch.long, device=g.device) for i, c in enumerate(counts)])
    order = torch.randperm(len(x), generator=g, device=g.device)
    return x[order] + noise * _normal(tuple(x.shape), g), k[order]


def _rings(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Circles of radius 3 * {1, 0.75, 0.5, 0.25} at evenly spaced angles, shuffled, + N(0, 0.08^2 I).

    The outer three circles get n // 4 points each and the innermost the rest; circle r with m points has
    the points 3 r (cos(2 pi j / m), sin(2 pi j / m)), j = 0, ..., m - 1.
    """
    quarter = n // 4
    counts = [quarter, quarter, quarter, n - 3 * quarter]
    x = torch.cat([3 * radius * _arc(m, 2 * math.pi, endpoint=False, g=g) for radius, m in zip((1.0, 0.75, 0.5, 0.25), counts)])
    return _shuffle_with_noise(x, counts, 0.08, g)


def _swissroll(n: int, g: torch.Generator, noise: float = 1.0) -> tuple[torch.Tensor, None]:
    """scikit-learn's make_swiss_roll(noise=1.0), columns 0 and 2, divided by 5.

    t = 1.5 pi (1 + 2 U);  x = ((t cos t, t sin t) + N(0, noise^2 I)) / 5.
    """
    t = 1.5 * math.pi * (1 + 2 * _uniform(n, g))
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1)
    return (x + noise * _normal((n, 2), g)) / 5, None


_BUILTINS: dict[str, Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor | None]]] = {
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


def did_you_mean(name: str, choices: tuple[str, ...]) -> str:
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
            f"unknown built-in data set {name!r}: choose one of {', '.join(BUILTIN_NAMES)}" + did_you_mean(str(name), BUILTIN_NAMES)
        )
    n = check_count(n)
    g = make_generator(generator)
    from flowmatch.memory import require_memory

    require_memory(64 * n, f"drawing {n} points of {name}", "ask for fewer points", g.device)  # float64 temporaries of (n, 2)
    k: torch.Tensor | None
    if n == 0:
        x, k = torch.empty(0, 2, device=g.device), torch.empty(0, dtype=torch.long, device=g.device)
    else:
        x, k = _BUILTINS[name](n, g)
        x = x.to(device=g.device, dtype=torch.float32)
    if not labels:
        return x
    return x, (k if BUILTIN_CLASSES[name] else None)


COMPONENT_DRAW = 20_000  # labelled points behind the nearest-neighbour component rule (seed COMPONENT_SEED)


COMPONENT_SEED = 5_000_011


def components(name: str, x) -> torch.Tensor | None:
    """The component (mixture mode, square, moon, circle, ring or spiral arm) each point of ``x`` (n, 2)
    belongs to, as int64 labels 0..BUILTIN_CLASSES[name] - 1; None for a set without components (swissroll).

    Any point gets a label, on the support or not, so that a generator's off-support points count
    against the mode they fall nearest to:

    - the Gaussian mixtures: the component of highest posterior probability (equal weights and widths:
      the nearest mean);
    - checkerboard: the nearest of the 8 squares' centres (inside a square: that square);
    - the others: the class of the nearest of :data:`COMPONENT_DRAW` labelled points drawn with a fixed
      seed (moons, circles, rings and spirals are separated by gaps several noise widths wide, so the
      rule mislabels almost no point drawn from the set itself).
    """
    if name not in _BUILTINS:
        raise FlowmatchError(f"unknown built-in data set {name!r}")
    if not BUILTIN_CLASSES[name]:
        return None
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1, 2)
    if name in GAUSSIAN_MIXTURES:
        centres = GAUSSIAN_MIXTURES[name].means
    elif name == "checkerboard":
        cells = [(i, j) for j in range(4) for i in range(4) if (i + j) % 2 == 0]  # (column, row) of the 8 squares
        order = sorted(cells, key=lambda c: (c[1], c[0]))
        centres = torch.tensor([[2.0 * i - 3.0, 2.0 * j - 3.0] for i, j in order], dtype=torch.float64)
    else:
        reference, labels = _labelled_draw(name)
        nearest = torch.cat([torch.cdist(block, reference).argmin(dim=1) for block in x.split(4096)]) if len(x) else x.new_zeros(0).long()
        return labels[nearest]
    if not len(x):
        return torch.zeros(0, dtype=torch.long)
    return torch.cdist(x, centres).argmin(dim=1)


@functools.lru_cache(maxsize=8)
def _labelled_draw(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, k = sample_builtin(name, COMPONENT_DRAW, COMPONENT_SEED, labels=True)
    return x.double(), k


def _equal_mixture(means: list[list[float]], std: float) -> GaussianMixture:
    k = len(means)
    return GaussianMixture(
        torch.full((k,), 1.0 / k, dtype=torch.float64), torch.tensor(means, dtype=torch.float64), torch.full((k,), std, dtype=torch.float64)
    )


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
