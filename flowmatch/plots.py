"""Pictures of flows (matplotlib, written as PNG files; the Agg backend, no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def plot_samples(samples, data, out: str | os.PathLike, *, title: str = "", dims: tuple[int, int] = (0, 1)) -> None:
    """Scatter of generated samples over held-out data (first two dimensions unless ``dims``)."""
    s, d = _np(samples), _np(data)
    i, j = dims if s.shape[1] > 1 else (0, 0)
    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    ax.scatter(d[:, i], d[:, j], s=3, alpha=0.35, color="tab:blue", label=f"data ({len(d)})")
    ax.scatter(s[:, i], s[:, j], s=3, alpha=0.35, color="tab:orange", label=f"samples ({len(s)})")
    ax.set_xlabel(f"dimension {i}")
    ax.set_ylabel(f"dimension {j}")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
