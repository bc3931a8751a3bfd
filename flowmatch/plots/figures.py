"""Pictures of flows: matplotlib (Agg backend, no display needed), PNG files and an animated GIF (Pillow).

These functions only draw: they take arrays (samples, held-out data, grids of log-densities or
velocities, trajectories) and write one file. ``flowmatch.evaluation.picture`` computes those arrays
from a trained flow. Every file is written atomically: to a temporary file in the same folder that is
then renamed over the target, so a reader never sees half a picture.

- :func:`plot_samples`: generated samples over held-out data (2-D; :func:`plot_pairs` for D > 2).
- :func:`plot_pairs`: pairwise scatter plots and histograms of the first few dimensions.
- :func:`plot_density`: the model's log-density as a heat map on a grid (beside the true one if known).
- :func:`plot_trajectories`: particle paths from noise (t = 0) to data (t = 1).
- :func:`plot_field`: the velocity field at several times, as arrows coloured by speed.
- :func:`animate_flow`: an animated GIF of particles flowing from noise to data.
- :func:`plot_nfe`: sample quality against the number of velocity evaluations, one line per solver.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from flowmatch.storage import atomic_file

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.backends.backend_agg import FigureCanvasAgg


DATA_COLOR = "tab:blue"


SAMPLE_COLOR = "tab:orange"


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def save_figure(fig, out: str | os.PathLike) -> Path:
    """Save ``fig`` to ``out`` atomically (temporary file in the same folder, then rename) and close it."""
    out = Path(out)
    try:
        with atomic_file(out) as tmp:
            fig.savefig(tmp, format=out.suffix.lstrip(".") or "png")
        return out
    finally:
        plt.close(fig)


def _square_limits(ax, points: np.ndarray, pad: float = 0.08) -> None:
    lo, hi = np.percentile(points, 0.2, axis=0), np.percentile(points, 99.8, axis=0)
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2 * (1 + pad)
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_aspect("equal")


def plot_samples(samples, data, out: str | os.PathLike, *, title: str = "", dims: tuple[int, int] = (0, 1)) -> None:
    """Scatter of generated samples over held-out data (first two dimensions unless ``dims``)."""
    s, d = _np(samples), _np(data)
    i, j = dims if s.shape[1] > 1 else (0, 0)
    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    ax.scatter(d[:, i], d[:, j], s=3, alpha=0.35, color=DATA_COLOR, label=f"data ({len(d)})")
    ax.scatter(s[:, i], s[:, j], s=3, alpha=0.35, color=SAMPLE_COLOR, label=f"samples ({len(s)})")
    ax.set_xlabel(f"dimension {i}")
    ax.set_ylabel(f"dimension {j}")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, out)


def plot_pairs(samples, data, out: str | os.PathLike, *, max_dims: int = 4, title: str = "") -> None:
    """Pairwise scatter plots (samples over data) of the first ``max_dims`` dimensions, histograms on the diagonal."""
    s, d = _np(samples), _np(data)
    k = min(max_dims, s.shape[1])
    fig, axes = plt.subplots(k, k, figsize=(2.4 * k, 2.4 * k), dpi=100, squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if i == j:
                bins = np.histogram_bin_edges(np.concatenate([d[:, i], s[:, i]]), bins=40)
                ax.hist(d[:, i], bins=bins, density=True, alpha=0.5, color=DATA_COLOR)
                ax.hist(s[:, i], bins=bins, density=True, alpha=0.5, color=SAMPLE_COLOR)
            else:
                ax.scatter(d[:, j], d[:, i], s=1, alpha=0.3, color=DATA_COLOR)
                ax.scatter(s[:, j], s[:, i], s=1, alpha=0.3, color=SAMPLE_COLOR)
            if i == k - 1:
                ax.set_xlabel(f"dim {j}")
            if j == 0:
                ax.set_ylabel(f"dim {i}")
            ax.tick_params(labelsize=6)
    handles = [plt.Line2D([], [], ls="", marker="o", color=c) for c in (DATA_COLOR, SAMPLE_COLOR)]
    fig.legend(handles, [f"data ({len(d)})", f"samples ({len(s)})"], loc="upper right")
    fig.suptitle(title or f"first {k} of {s.shape[1]} dimensions")
    fig.tight_layout()
    save_figure(fig, out)


def plot_density(
    xs,
    ys,
    log_q,
    out: str | os.PathLike,
    *,
    true_log_p=None,
    data=None,
    title: str = "",
    span: float = 12.0,
) -> None:
    """Heat map of the model's log-density ``log_q`` (len(ys), len(xs)) on the grid xs x ys.

    With ``true_log_p`` (same shape) a second panel shows the true log-density on the same colour
    scale; -inf (outside the support) is left blank. The scale runs from max - ``span`` to max.
    ``data`` (n, 2), if given, is drawn as small dots in a third panel for orientation.
    """
    xs, ys, log_q = _np(xs), _np(ys), _np(log_q)
    panels = [("model log-density", log_q)]
    if true_log_p is not None:
        panels.append(("true log-density", _np(true_log_p)))
    top = max(float(np.nanmax(p[np.isfinite(p)])) for _, p in panels)
    extent = (xs[0], xs[-1], ys[0], ys[-1])
    ncols = len(panels) + (data is not None)
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols + 0.8, 4.4), dpi=110, squeeze=False, layout="constrained")
    image = None
    for ax, (name, values) in zip(axes[0], panels):
        masked = np.ma.masked_invalid(np.where(np.isfinite(values), values, np.nan))
        image = ax.imshow(masked, origin="lower", extent=extent, cmap="viridis", vmin=top - span, vmax=top, aspect="equal")
        ax.set_title(name)
        ax.set_xlabel("dimension 0")
        ax.set_ylabel("dimension 1")
    if data is not None:
        d = _np(data)
        ax = axes[0][-1]
        ax.scatter(d[:, 0], d[:, 1], s=1, alpha=0.3, color=DATA_COLOR)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_aspect("equal")
        ax.set_title(f"held-out data ({len(d)})")
        ax.set_xlabel("dimension 0")
    assert image is not None  # panels is non-empty (max() above)
    fig.colorbar(image, ax=list(axes[0][: len(panels)]), shrink=0.85, label="log p (nats)")
    fig.suptitle(title)
    save_figure(fig, out)


def plot_trajectories(
    trajectory, times, out: str | os.PathLike, *, data=None, max_paths: int = 300, dims: tuple[int, int] = (0, 1), title: str = ""
) -> None:
    """Paths of particles from noise (t = 0, black dots) to samples (t = 1, red dots), coloured by t.

    ``trajectory`` is (len(times), n, D) in data coordinates; at most ``max_paths`` paths are drawn.
    """
    traj, times = _np(trajectory), _np(times)
    i, j = dims
    paths = traj[:, :max_paths][:, :, [i, j]]  # (T, P, 2)
    fig, ax = plt.subplots(figsize=(6.6, 6), dpi=120, layout="constrained")
    if data is not None:
        d = _np(data)
        ax.scatter(d[:, i], d[:, j], s=2, alpha=0.15, color=DATA_COLOR, label="data")
    segments = np.stack([paths[:-1], paths[1:]], axis=2)  # (T-1, P, 2, 2)
    seg_t = np.repeat((times[:-1] + times[1:])[:, None] / 2, paths.shape[1], axis=1)
    lines = LineCollection(
        cast("Sequence[np.ndarray]", segments.reshape(-1, 2, 2)), array=seg_t.ravel(), cmap="plasma", linewidths=0.6, alpha=0.7
    )
    ax.add_collection(lines)
    ax.scatter(paths[0, :, 0], paths[0, :, 1], s=6, color="black", label="noise, t = 0", zorder=3)
    ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=6, color="red", label="sample, t = 1", zorder=3)
    fig.colorbar(lines, ax=ax, label="t")
    _square_limits(ax, np.concatenate([paths.reshape(-1, 2)] + ([_np(data)[:, [i, j]]] if data is not None else [])))
    ax.set_xlabel(f"dimension {i}")
    ax.set_ylabel(f"dimension {j}")
    ax.legend(loc="upper right", markerscale=2, fontsize=8)
    ax.set_title(title or f"{paths.shape[1]} trajectories, noise to data", fontsize=10)
    save_figure(fig, out)


def plot_field(xs, ys, velocities, times, out: str | os.PathLike, *, particles=None, title: str = "") -> None:
    """The velocity field at several times: arrows of direction v / |v| coloured by the speed |v|.

    ``velocities`` is (len(times), len(ys), len(xs), 2): dx/dt at each grid point in data coordinates;
    ``particles`` (len(times), n, 2), if given, are the positions x_t of flowing samples at those times
    (grey). Arrows have unit length so that slow regions stay readable; the colour carries the speed.
    """
    xs, ys, vel, times = _np(xs), _np(ys), _np(velocities), list(_np(times))
    k = len(times)
    fig, axes = plt.subplots(1, k, figsize=(3.1 * k + 0.8, 3.5), dpi=110, squeeze=False, layout="constrained")
    speed_all = np.sqrt((vel**2).sum(-1))
    norm = plt.Normalize(0, float(speed_all.max()))
    gx, gy = np.meshgrid(xs, ys)
    arrows = None
    for a, (ax, t) in enumerate(zip(axes[0], times)):
        speed = speed_all[a]
        unit = vel[a] / np.maximum(speed, 1e-12)[..., None]
        if particles is not None:
            p = _np(particles)[a]
            ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.3, color="grey")
        spacing = (xs[-1] - xs[0]) / max(len(xs) - 1, 1)
        arrows = ax.quiver(
            gx, gy, unit[..., 0], unit[..., 1], speed, cmap="viridis", norm=norm, angles="xy", pivot="mid",
            scale=1 / (0.8 * spacing), scale_units="xy", width=0.005, headwidth=3.5, headlength=4, headaxislength=3.5,
        )  # fmt: skip
        ax.set_xlim(xs[0], xs[-1])
        ax.set_ylim(ys[0], ys[-1])
        ax.set_aspect("equal")
        ax.set_title(f"t = {t:.2f}")
        ax.tick_params(labelsize=7)
    assert arrows is not None  # at least one time (plt.subplots rejects 0 columns)
    fig.colorbar(arrows, ax=list(axes[0]), shrink=0.8, label="speed |v|")
    fig.suptitle(title or "velocity field v(x, t) (grey: samples x_t)")
    save_figure(fig, out)


def animate_flow(
    trajectory, times, out: str | os.PathLike, *, data=None, dims: tuple[int, int] = (0, 1), fps: int = 12, hold: int = 8
) -> None:
    """Animated GIF of particles flowing from noise to data (one frame per trajectory time).

    Held-out ``data`` is drawn once in the background; the last frame is held for ``hold`` extra
    frames. Written with Pillow, atomically.
    """
    from PIL import Image

    traj, times = _np(trajectory), _np(times)
    i, j = dims
    pts = traj[:, :, [i, j]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=80)
    everything = np.concatenate([pts[0], pts[-1]] + ([_np(data)[:, [i, j]]] if data is not None else []))
    if data is not None:
        d = _np(data)
        ax.scatter(d[:, i], d[:, j], s=2, alpha=0.15, color=DATA_COLOR)
    particles = ax.scatter(pts[0, :, 0], pts[0, :, 1], s=2, alpha=0.7, color=SAMPLE_COLOR)
    _square_limits(ax, everything)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    frames = []
    for a in range(len(times)):
        particles.set_offsets(pts[a])
        ax.set_title(f"t = {times[a]:.2f}")
        fig.canvas.draw()
        rgba = np.asarray(cast("FigureCanvasAgg", fig.canvas).buffer_rgba())
        frames.append(Image.fromarray(rgba[..., :3].copy()).convert("P", palette=Image.Palette.ADAPTIVE, colors=64))
    plt.close(fig)
    frames += [frames[-1]] * hold
    with atomic_file(out) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)


def plot_nfe(sweeps: dict[str, tuple[dict[str, list[tuple[int, float]]], float]], out: str | os.PathLike, *, title: str = "") -> None:
    """Quality against NFE, one panel per metric and one line per solver, each metric's floor dashed.

    ``sweeps[metric] = ({solver: [(nfe, value), ...]}, floor)``. Metrics that can be negative (an
    unbiased MMD^2) are drawn on a symmetric-log axis.
    """
    k = len(sweeps)
    fig, axes = plt.subplots(1, k, figsize=(5.4 * k, 4.4), dpi=110, squeeze=False, layout="constrained")
    for ax, (metric, (lines, floor)) in zip(axes[0], sweeps.items()):
        values = [v for points in lines.values() for _, v in points] + [floor]
        for solver, points in lines.items():
            nfe, value = zip(*points)
            ax.plot(nfe, value, marker="o", ms=4, label=solver)
        ax.axhline(floor, color="black", ls="--", lw=1, label="floor (held-out vs held-out)")
        ax.set_xscale("log")
        if min(values) > 0:
            ax.set_yscale("log")
        else:
            ax.set_yscale("symlog", linthresh=max(abs(floor) * 3, 1e-6))
        ax.set_xlabel("NFE (velocity evaluations)")
        ax.set_ylabel(f"{metric} to held-out data")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "sample quality against NFE")
    save_figure(fig, out)
