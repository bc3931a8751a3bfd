"""Pictures of points on manifolds: the sphere S^2, the torus T^2 and the rotations SO(3).

Each function draws the points (samples, say) beside a ``reference`` set (held-out data) on the same
colour scale and writes one PNG atomically (:func:`flowmatch.plots.figures.save_figure`).

- :func:`plot_sphere`: S^2 as an equal-area map (Mollweide projection of longitude and latitude), a 2-D
  histogram of the density over cells of equal area (or a scatter).
- :func:`plot_torus`: T^2 as the square [-pi, pi)^2 whose opposite edges are glued, a 2-D histogram.
- :func:`plot_so3`: rotations by axis and angle: the rotation axis on the equal-area sphere map,
  coloured by the rotation angle, and a histogram of the angles beside the uniform (Haar) law's density.
- :func:`plot_manifold`: one of these by ``manifold.name`` (Euclidean points as a scatter).

Example::

    plot_manifold(samples, flow.manifold, reference=held_out, path="samples.png")
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from flowmatch.errors import FlowmatchError  # noqa: E402
from flowmatch.manifolds.manifolds import quaternion_to_axis_angle  # noqa: E402
from flowmatch.plots.figures import DATA_COLOR, SAMPLE_COLOR, _np, plot_pairs, plot_samples, save_figure  # noqa: E402

#: Equal-area histogram cells on S^2: longitude bins x bins of z = sin(latitude) (each 7.5 degrees by 1/12).
SPHERE_BINS = (48, 24)


#: Histogram bins per torus coordinate (7.5 degrees each).
TORUS_BINS = 48


def _density_cmap():
    """magma reversed (pale where few points, dark where they crowd), white in cells with none: the
    colour scale starts just above 0, and empty cells fall below it."""
    return plt.get_cmap("magma_r").with_extremes(under="white")


def _empty_below(top: float) -> float:
    return top * 1e-9


def _rows(points, width: int, what: str) -> np.ndarray:
    x = np.asarray(_np(points), dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != width:
        raise FlowmatchError(f"{what} must have shape (n, {width}), got {tuple(x.shape)}")
    return x[np.isfinite(x).all(axis=1)]


def _panels(points: np.ndarray, reference: np.ndarray | None) -> list[tuple[str, np.ndarray]]:
    """(title, points) of each panel: the reference ("data") first, then the samples."""
    if reference is None:
        return [(f"points ({len(points)})", points)]
    return [(f"data ({len(reference)})", reference), (f"samples ({len(points)})", points)]


def _lonlat(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude in [-pi, pi] and latitude in [-pi/2, pi/2] (radians) of unit vectors x (n, 3)."""
    norm = np.maximum(np.linalg.norm(x, axis=1), 1e-300)
    return np.arctan2(x[:, 1], x[:, 0]), np.arcsin(np.clip(x[:, 2] / norm, -1.0, 1.0))


def _sphere_density(lon: np.ndarray, lat: np.ndarray, bins: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(longitude edges, latitude edges, density (n_z, n_lon)): the share of points per cell over the
    cell's area. Cells are equal in longitude and in z = sin(latitude); as the area element is
    d lambda dz, every cell has area 4 pi / (n_lon n_z), so the counts compare fairly."""
    n_lon, n_z = bins
    lon_edges, z_edges = np.linspace(-math.pi, math.pi, n_lon + 1), np.linspace(-1.0, 1.0, n_z + 1)
    counts, _, _ = np.histogram2d(np.sin(lat), lon, bins=(z_edges, lon_edges))
    area = 4 * math.pi / (n_lon * n_z)
    return lon_edges, np.arcsin(z_edges), counts / (max(len(lon), 1) * area)


def _sphere_axes(ax, title: str) -> None:
    ax.set_title(title, pad=14)
    ax.grid(True, alpha=0.35, lw=0.5)
    ax.tick_params(labelsize=7)
    ax.set_xticks(np.radians([-120, -60, 0, 60, 120]))
    ax.set_yticks(np.radians([-60, -30, 0, 30, 60]))


def plot_sphere(
    points, reference=None, *, path: str | os.PathLike, title: str = "", kind: str = "hist", bins: tuple[int, int] = SPHERE_BINS
) -> Path:
    """Points on S^2 (unit vectors, (n, 3)) on an equal-area Mollweide map of longitude and latitude,
    beside ``reference`` when given.

    ``kind="hist"``: the density p = (share of points in a cell) / (cell area) over cells of equal area
    (:data:`SPHERE_BINS`), on one colour scale for both panels, in units of 1 / steradian (the uniform
    law is 1 / (4 pi) = 0.080). ``kind="scatter"``: the points as small translucent dots.
    """
    if kind not in ("hist", "scatter"):
        raise FlowmatchError(f"kind={kind!r}: choose 'hist' or 'scatter'")
    x = _rows(points, 3, "sphere points")
    ref = None if reference is None else _rows(reference, 3, "reference points")
    panels = _panels(x, ref)
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(5.6 * len(panels) + 1.0, 3.3),
        dpi=110,
        subplot_kw={"projection": "mollweide"},
        squeeze=False,
        layout="constrained",
    )
    grids = [_sphere_density(*_lonlat(p), bins) for _, p in panels] if kind == "hist" else []
    top = max((float(g[2].max()) for g in grids), default=1.0) or 1.0
    mesh = None
    for a, (ax, (name, p)) in enumerate(zip(axes[0], panels)):
        if kind == "hist":
            lon_edges, lat_edges, density = grids[a]
            mesh = ax.pcolormesh(lon_edges, lat_edges, density, cmap=_density_cmap(), vmin=_empty_below(top), vmax=top, shading="flat")
        else:
            lon, lat = _lonlat(p)
            color = DATA_COLOR if ref is not None and a == 0 else SAMPLE_COLOR
            ax.scatter(lon, lat, s=1.5, alpha=0.3, color=color, linewidths=0)
        _sphere_axes(ax, name)
    if mesh is not None:
        fig.colorbar(mesh, ax=list(axes[0]), shrink=0.75, label="density (sr$^{-1}$; uniform 0.080)")
    fig.suptitle(title or "$S^2$, Mollweide equal-area map (longitude, latitude)")
    return save_figure(fig, path)


def plot_torus(
    points,
    reference=None,
    *,
    path: str | os.PathLike,
    title: str = "",
    degrees: bool = True,
    bins: int = TORUS_BINS,
    dims: tuple[int, int] = (0, 1),
) -> Path:
    """Points on the torus (angles in [-pi, pi), (n, d), coordinates ``dims``) as a 2-D histogram on the
    square [-pi, pi)^2, beside ``reference`` when given, on one colour scale. Opposite edges of the
    square are the same points of the torus. Axes in degrees (or radians with ``degrees=False``)."""
    x = np.asarray(_np(points), dtype=np.float64)
    width = x.shape[1] if x.ndim == 2 else 2
    if width < 2 or max(dims) >= width:
        raise FlowmatchError(f"torus points must have shape (n, d) with d >= 2 (plotting coordinates {dims}), got {tuple(x.shape)}")
    x = _rows(x, width, "torus points")[:, list(dims)]
    ref = None if reference is None else _rows(reference, width, "reference points")[:, list(dims)]
    panels = _panels(x, ref)
    scale = 180 / math.pi if degrees else 1.0
    edges = np.linspace(-math.pi, math.pi, bins + 1)
    grids = []
    for _, p in panels:
        wrapped = np.mod(p + math.pi, 2 * math.pi) - math.pi
        counts, _, _ = np.histogram2d(wrapped[:, 1], wrapped[:, 0], bins=(edges, edges))
        grids.append(counts / (max(len(p), 1) * (edges[1] - edges[0]) ** 2))
    top = max(float(g.max()) for g in grids) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.2, 4.5), dpi=110, squeeze=False, layout="constrained")
    unit = "degrees" if degrees else "radians"
    mesh = None
    for ax, (name, _), grid in zip(axes[0], panels, grids):
        mesh = ax.pcolormesh(edges * scale, edges * scale, grid, cmap=_density_cmap(), vmin=_empty_below(top), vmax=top, shading="flat")
        ticks = np.array([-180, -90, 0, 90, 180]) if degrees else np.array([-math.pi, -math.pi / 2, 0, math.pi / 2, math.pi])
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        if not degrees:
            labels = ["-\u03c0", "-\u03c0/2", "0", "\u03c0/2", "\u03c0"]
            ax.set_xticklabels(labels)
            ax.set_yticklabels(labels)
        ax.set_xlim(-math.pi * scale, math.pi * scale)
        ax.set_ylim(-math.pi * scale, math.pi * scale)
        ax.set_aspect("equal")
        ax.set_xlabel(f"\u03b8{dims[0] + 1} ({unit})")
        ax.set_ylabel(f"\u03b8{dims[1] + 1} ({unit})")
        ax.set_title(name)
        ax.grid(True, alpha=0.25, lw=0.5)
    assert mesh is not None
    fig.colorbar(mesh, ax=list(axes[0]), shrink=0.8, label="density (rad$^{-2}$; uniform 0.025)")
    fig.suptitle(title or "torus $T^2$ as the periodic square (opposite edges glued)")
    return save_figure(fig, path)


def _axis_angle(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation axis (n, 3) and angle in [0, pi] of unit quaternions (w, x, y, z), the same for q and -q
    (the axis is (1, 0, 0) for the identity)."""
    vector = quaternion_to_axis_angle(torch.from_numpy(q)).numpy()  # axis * angle
    angle = np.linalg.norm(vector, axis=1)
    axis = np.where(angle[:, None] > 0, vector / np.maximum(angle, 1e-300)[:, None], np.array([1.0, 0.0, 0.0]))
    return axis, angle


def plot_so3(points, reference=None, *, path: str | os.PathLike, title: str = "") -> Path:
    """Rotations (unit quaternions (w, x, y, z), (n, 4)) by axis and angle, beside ``reference`` when given.

    Top: each rotation's axis on the Mollweide equal-area map of the sphere, coloured by its angle in
    degrees (q and -q are the same rotation: the axis is taken with w >= 0, so a rotation by nearly 180
    degrees may show its axis at either end; near angle 0 the axis is arbitrary and spreads over the
    map). Bottom: histograms of the rotation angle, with the density of the uniform (Haar) law,
    (1 - cos a) / pi on [0, pi], for comparison.
    """
    x = _rows(points, 4, "quaternions")
    ref = None if reference is None else _rows(reference, 4, "reference quaternions")
    panels = _panels(x, ref)
    k = len(panels)
    fig = plt.figure(figsize=(5.6 * k + 1.0, 5.8), dpi=110, layout="constrained")
    grid = fig.add_gridspec(2, k, height_ratios=(1.3, 1.0))
    dots = None
    angles = []
    for a, (name, p) in enumerate(panels):
        axis, angle = _axis_angle(p)
        angles.append((name, angle))
        lon, lat = _lonlat(axis)
        ax = fig.add_subplot(grid[0, a], projection="mollweide")
        dots = ax.scatter(lon, lat, c=np.degrees(angle), s=2, alpha=0.6, cmap="viridis", vmin=0, vmax=180, linewidths=0)
        _sphere_axes(ax, f"{name}: rotation axis")
    assert dots is not None
    fig.colorbar(dots, ax=fig.axes[:k], shrink=0.75, label="rotation angle (degrees)")
    hist = fig.add_subplot(grid[1, :])
    edges = np.linspace(0.0, 180.0, 61).tolist()
    for a, (name, angle) in enumerate(angles):
        color = DATA_COLOR if ref is not None and a == 0 else SAMPLE_COLOR
        hist.hist(np.degrees(angle), bins=edges, density=True, histtype="step", lw=1.5, color=color, label=name)
    grid_deg = np.linspace(0.0, 180.0, 200)
    haar = (1 - np.cos(np.radians(grid_deg))) / math.pi * (math.pi / 180)  # per degree
    hist.plot(grid_deg, haar, color="grey", ls="--", lw=1, label="uniform (Haar) rotations")
    hist.set_xlim(0, 180)
    hist.set_xticks(np.arange(0, 181, 30))
    hist.set_xlabel("rotation angle (degrees)")
    hist.set_ylabel("density (1 / degree)")
    hist.legend(fontsize=8)
    fig.suptitle(title or "SO(3) by rotation axis and angle")
    return save_figure(fig, path)


def plot_manifold(points, manifold, reference=None, *, path: str | os.PathLike, title: str = "") -> Path:
    """:func:`plot_sphere` (S^2), :func:`plot_torus`, :func:`plot_so3` or, for Euclidean space, a scatter
    (:func:`flowmatch.plots.figures.plot_samples`, pairwise for D > 2), by ``manifold.name``."""
    name = getattr(manifold, "name", manifold)
    if name == "sphere":
        if getattr(manifold, "dim", 2) != 2:
            raise FlowmatchError(f"sphere pictures draw S^2; this sphere is S^{manifold.dim}")
        return plot_sphere(points, reference, path=path, title=title)
    if name == "torus":
        return plot_torus(points, reference, path=path, title=title)
    if name == "so3":
        return plot_so3(points, reference, path=path, title=title)
    if name == "euclidean":
        x = _np(points)
        ref = _np(reference) if reference is not None else x[:0]
        if x.ndim == 2 and x.shape[1] > 2:
            plot_pairs(x, ref, path, title=title)
        else:
            plot_samples(x, ref, path, title=title)
        return Path(path)
    raise FlowmatchError(f"no picture for the manifold {name!r}; known: sphere, torus, so3, euclidean")
