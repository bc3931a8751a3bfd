"""Held-out sets of a built-in 2-D data set and the score every benchmark reports: W2 / floor.

A score takes k chunks of n samples, S_1..S_k, and k held-out sets A_1..A_k of n points each:

    score = mean_j W2(S_j, A_j) / floor,    floor = mean_i W2(B_i, A_i),  i = 1..m,

where A_1, B_1, A_2, B_2, ... are disjoint held-out sets of n points (m = k by default). The floor is what a perfect sampler scores on average, so 1 means
"as close as fresh data"; W2 is exact (``w2_exact``). The floor divides every score, so its own
error is a bias shared by every system; ``floor_pairs`` m > k estimates it more precisely.

Why a mean over k sets: one W2 of n points is dominated by how many points land in each mode (two
Gaussians 8 apart, two moons). The count differs between two draws by about sqrt(n), and that mass
must cross the gap, so a perfect sampler's single-draw score ranges about 0.5-1.6 on two-gaussians at
n = 2,000; the spread of the mean shrinks as 1 / sqrt(k).

The sets are chunks of one large shuffled draw (fixed seed, apart from training): scikit-learn's moons
are not i.i.d. (evenly spaced along the arcs, exactly half per moon), so two separate draws of n would
be closer to each other than i.i.d. points can be; chunks of one shuffled draw are not.

:meth:`HeldOut.shape` gives the score a wrong shape cannot pass
(:func:`flowmatch.evaluation.metrics.shape_score`): for sets with components, the mode shares (TV
to the equal weights, beside the multinomial floor) apart from the shape within each mode (W2 per
mode against A_j, over the same figure of B_j), the median over the k chunks; for swissroll the
energy distance over its floor.
"""

from __future__ import annotations

import statistics

import numpy as np
import torch

from flowmatch.data.toy import BUILTIN_CLASSES, components, sample_builtin
from flowmatch.evaluation.metrics import median_shape, shape_score, w2_exact


class HeldOut:
    """k held-out sets A_j of n points of ``data`` to score against, and the floor from m pairs."""

    def __init__(self, data: str, n: int, k: int, seed: int = 7_000, floor_pairs: int | None = None):
        self.data, self.n, self.k = data, n, k
        m = k if floor_pairs is None else floor_pairs
        pool = sample_builtin(data, 2 * n * max(k, m), seed).float()
        pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed + 1))]
        chunks = pool.split(n)
        self.sets = [(chunks[2 * j], chunks[2 * j + 1]) for j in range(max(k, m))]
        self.floor_each = [w2_exact(b, a) for a, b in self.sets[:m]]
        self.floor = statistics.mean(self.floor_each)
        self.sets = self.sets[:k]

    def each(self, samples: torch.Tensor) -> list[float]:
        """W2(S_j, A_j) / floor for each chunk S_j of n rows of ``samples`` (k * n rows)."""
        if samples.shape[0] != self.n * self.k:
            raise ValueError(f"a score takes {self.k} x {self.n} samples, got {samples.shape[0]}")
        return [w2_exact(s, a) / self.floor for s, (a, _) in zip(samples.float().split(self.n), self.sets)]

    def score(self, samples: torch.Tensor) -> float:
        """mean_j W2(S_j, A_j) / floor."""
        return statistics.mean(self.each(samples))

    def shape(self, samples: torch.Tensor) -> dict:
        """The shape score of the k chunks of ``samples``, each against its own A_j with B_j for the floor:
        :func:`~flowmatch.evaluation.metrics.median_shape` (``ratio``: within-mode W2 over its floor, or
        the energy distance's; ``shares``: the mode-share TV beside its floor)."""
        if samples.shape[0] != self.n * self.k:
            raise ValueError(f"a score takes {self.k} x {self.n} samples, got {samples.shape[0]}")
        classes = BUILTIN_CLASSES[self.data]
        scores = []
        for j, (s, (a, b)) in enumerate(zip(samples.float().split(self.n), self.sets)):
            if classes:
                labels = [components(self.data, v) for v in (s, a, b)]
                scores.append(shape_score(s, a, b, labels=labels, weights=np.full(classes, 1.0 / classes), seed=j))
            else:
                scores.append(shape_score(s, a, b, seed=j))
        return median_shape(scores)
