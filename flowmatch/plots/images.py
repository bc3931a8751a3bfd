"""Image grids: samples, one row per class, and trajectories as strips, written as PNG."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from flowmatch.errors import FlowmatchError
from flowmatch.storage import atomic_file, make_folder

_PAD = 2  # pixels between cells


_PAD_COLOUR = (128, 128, 128)


_TEXT_COLOUR = (0, 0, 0)


_BACKGROUND = (255, 255, 255)


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _cells(images, image_shape: Sequence[int], value_range: tuple[float, float]) -> np.ndarray:
    """Flat images (n, C*H*W) -> uint8 (n, H, W, 3), values mapped linearly from value_range to 0..255."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images, dtype=np.float64)
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise FlowmatchError(f"image_shape must be (C, H, W) with C = 1 or 3, got {list(shape)}")
    if images.ndim != 2 or images.shape[1] != math.prod(shape):
        raise FlowmatchError(f"expected flat images of shape (n, {math.prod(shape)}), got {images.shape}")
    low, high = value_range
    p = np.clip((np.nan_to_num(images) - low) / (high - low), 0, 1)
    cells = np.round(p * 255).astype(np.uint8).reshape(len(images), *shape).transpose(0, 2, 3, 1)
    return np.repeat(cells, 3, axis=3) if shape[0] == 1 else cells


def _as_list(values) -> list | None:
    """Labels as a plain list (tensors and arrays give their Python numbers, not 'tensor(3)')."""
    if values is None:
        return None
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _compose(
    rows: list[np.ndarray],
    out_png,
    *,
    cell: int,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cell_labels: list[list[str]] | None = None,
    title: str | None = None,
) -> None:
    """Draw rows of uint8 cells (each (n_i, H, W, 3)) as one PNG with optional text."""
    from PIL import Image, ImageDraw

    h, w = rows[0].shape[1:3]
    scale = max(1, math.ceil(cell / max(h, w)))
    ch, cw = h * scale, w * scale
    ncol = max(len(r) for r in rows)
    font = _font()
    text_h = 14
    left = 0
    if row_labels is not None:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        left = max(int(probe.textlength(str(s), font=font)) for s in row_labels) + 6
    top = (text_h + 4 if title else 0) + (text_h if col_labels is not None else 0)
    caption = text_h if cell_labels is not None else 0
    width = left + ncol * (cw + _PAD) + _PAD
    height = top + len(rows) * (ch + caption + _PAD) + _PAD
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_PAD, 2), title, fill=_TEXT_COLOUR, font=font)
    if col_labels is not None:
        y0 = text_h + 4 if title else 0
        for j, s in enumerate(col_labels):
            draw.text((left + _PAD + j * (cw + _PAD), y0), str(s), fill=_TEXT_COLOUR, font=font)
    grid_top = top
    draw.rectangle([left, grid_top, width - 1, height - 1], fill=_PAD_COLOUR if cell_labels is None else _BACKGROUND)
    for i, row in enumerate(rows):
        y = grid_top + _PAD + i * (ch + caption + _PAD)
        if row_labels is not None:
            draw.text((2, y + ch // 2 - text_h // 2), str(row_labels[i]), fill=_TEXT_COLOUR, font=font)
        for j, img in enumerate(row):
            x = left + _PAD + j * (cw + _PAD)
            tile = Image.fromarray(img).resize((cw, ch), Image.Resampling.NEAREST)
            canvas.paste(tile, (x, y))
            if cell_labels is not None and j < len(cell_labels[i]):
                draw.text((x + 1, y + ch), str(cell_labels[i][j]), fill=_TEXT_COLOUR, font=font)
    out_png = Path(out_png)
    make_folder(out_png.parent)
    with atomic_file(out_png) as tmp:
        canvas.save(tmp, format="PNG")


def save_image_grid(
    images,
    image_shape: Sequence[int],
    out_png: str | os.PathLike,
    *,
    nrow: int | None = None,
    labels: Sequence | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    cell: int = 64,
    title: str | None = None,
) -> None:
    """A PNG grid of flat images (n, C*H*W), ``nrow`` images per row (as in torchvision's ``make_grid``;
    default ceil(sqrt(n))). Values are mapped from ``value_range`` (pixels in [0, 1] by default) to 0..255 and
    clipped; each image is upscaled by nearest neighbour to about ``cell`` pixels. ``labels`` (one per
    image, any printable value) are written under the images.
    """
    cells = _cells(images, image_shape, value_range)
    n = len(cells)
    if n == 0:
        raise FlowmatchError("save_image_grid: no images to draw")
    nrow = nrow or math.ceil(math.sqrt(n))
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise FlowmatchError(f"save_image_grid: nrow must be a positive integer, got {nrow!r}")
    labels = _as_list(labels)
    if labels is not None and len(labels) != n:
        raise FlowmatchError(f"save_image_grid: {len(labels)} labels for {n} images")
    rows = [cells[i : i + nrow] for i in range(0, n, nrow)]
    cell_labels = None if labels is None else [list(labels[i : i + nrow]) for i in range(0, n, nrow)]
    _compose(rows, out_png, cell=cell, cell_labels=cell_labels, title=title)


def save_class_grid(
    rows,
    image_shape: Sequence[int],
    out_png: str | os.PathLike,
    *,
    row_labels: Sequence | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    cell: int = 64,
    title: str | None = None,
) -> None:
    """A PNG with one row of images per entry of ``rows``: rows = classes (samples of each class), or
    rows = guidance scales (the same noise and class under w = 0, 1, 3, ...), columns = samples.

    ``rows`` is a sequence of flat image sets (n_i, C*H*W) or one (R, n, C*H*W) tensor/array;
    ``row_labels`` (e.g. class names or "w = 3") are written at the left of each row.
    """
    rows = [_cells(r, image_shape, value_range) for r in rows]
    row_labels = _as_list(row_labels)
    if not rows or not any(len(r) for r in rows):
        raise FlowmatchError("save_class_grid: no images to draw")
    if row_labels is not None and len(row_labels) != len(rows):
        raise FlowmatchError(f"save_class_grid: {len(row_labels)} row labels for {len(rows)} rows")
    _compose(rows, out_png, cell=cell, row_labels=row_labels, title=title)


def save_trajectory_strip(
    trajectory,
    image_shape: Sequence[int],
    out_png: str | os.PathLike,
    *,
    times: Sequence[float] | None = None,
    max_frames: int = 11,
    max_samples: int = 8,
    value_range: tuple[float, float] = (0.0, 1.0),
    cell: int = 64,
    title: str | None = None,
) -> None:
    """Image strips along t: one row per sample (at most ``max_samples``), one column per time.

    ``trajectory`` has shape (T, n, C*H*W) (as ``Flow.generate(..., return_trajectory=True)`` gives);
    at most ``max_frames`` evenly spaced frames are drawn, always including the first and the last.
    ``times`` (T values) label the columns "t=0.00" ... (t = 0 noise on the left, t = 1 data on the right).
    """
    if isinstance(trajectory, torch.Tensor):
        trajectory = trajectory.detach().cpu().numpy()
    trajectory = np.asarray(trajectory)
    if trajectory.ndim != 3:
        raise FlowmatchError(f"trajectory must have shape (T, n, D), got {trajectory.shape}")
    n_t = trajectory.shape[0]
    if times is not None and len(times) != n_t:
        raise FlowmatchError(f"{len(times)} times for a trajectory of {n_t} frames")
    frames = np.unique(np.round(np.linspace(0, n_t - 1, min(max_frames, n_t))).astype(int))
    samples = trajectory[frames][:, :max_samples]  # (F, n, D)
    rows = [_cells(samples[:, i], image_shape, value_range) for i in range(samples.shape[1])]
    col_labels = None if times is None else [f"t={float(times[f]):.2f}" for f in frames]
    _compose(rows, out_png, cell=cell, col_labels=col_labels, title=title)
