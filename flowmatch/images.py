"""Image data, image pictures and image metrics.

Data
----
Every loader returns ``(images, labels, class_names)``: ``images`` a float32 array (N, C, H, W) of
pixel values p in [0, 1] (C = 1 or 3), ``labels`` an int64 array (N,), ``class_names`` a list of
strings indexed by label.

- :func:`load_image_folder`: PNG/JPEG files (``.png``, ``.jpg``, ``.jpeg``, any case), either in one
  subfolder per class (classes = subfolder names in sorted order, label k = k-th name) or all directly
  in the folder (one class, named after the folder). Files are read in sorted name order; hidden files
  and folders (names starting with '.') and files with other extensions are ignored.
  *Channels:* the set is loaded as grayscale (C = 1) when every image is grayscale, otherwise as RGB
  (C = 3). An image is grayscale when its mode has one colour band (1, L, LA, I;16, I) or when its
  three colour bands are equal at every pixel (an RGB file of a gray picture); in an RGB set a
  grayscale image becomes three equal channels, which loses nothing. The choice does not depend on the
  order of the files. An alpha channel is dropped when fully opaque; an image with transparent pixels is
  an error (there is no one background to flatten it onto consistently). 8-bit values are divided by
  255 and 16-bit values by 65535.
- :func:`load_image_npz`: an ``.npz`` archive (never unpickled) with ``images`` of shape (N, H, W),
  (N, C, H, W) or (N, H, W, C), C in {1, 3} (axis 1 is taken as channels when it could be either);
  integer values 0..255 (divided by 255) or float values in [0, 1]; optional ``labels`` (N,) of
  integers >= 0 and optional ``class_names`` (strings).
- :func:`load_digits_images`: the built-in ``digits``, scikit-learn's bundled ``load_digits()``:
  1,797 images 8x8, integer values v in 0..16, 10 classes '0'..'9'; p = v / 16.

:class:`ImageSet` (from :func:`load_image_set`) holds a deterministic stratified train/test split as
flat float32 tensors (N, C*H*W) in **model scale** x = 2 p - 1 in [-1, 1] (for digits, x = v / 8 - 1),
which is the scale the velocity models train and sample in; :func:`to_pixels` maps back.

Pictures
--------
PNG grids drawn with Pillow, every cell upscaled by nearest neighbour to about ``cell`` (64) pixels:
:func:`save_image_grid`, :func:`save_class_grid` (one row per class or per guidance scale) and
:func:`save_trajectory_strip` (images along t, t = 0 noise on the left, t = 1 data on the right).

Metrics
-------
A small CNN :class:`ImageClassifier` trained deterministically on the training split (fixed seed,
fixed epochs, deterministic algorithms). Its penultimate-layer features f(x) define the Frechet
distance between two image sets A and B,

    FD(A, B) = |mu_A - mu_B|^2 + Tr(S_A + S_B - 2 (S_A S_B)^(1/2)),

with mu and S the mean and (unbiased) covariance of the features. Tr (S_A S_B)^(1/2) is computed as
sum_i sqrt(lambda_i), lambda_i the eigenvalues of the symmetric PSD matrix S_A^(1/2) S_B S_A^(1/2),
which has the same eigenvalues as S_A S_B. The classifier is saved with safetensors plus JSON
(:func:`save_classifier`, :func:`load_classifier`, :func:`cached_classifier`; never pickled).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import FlowmatchError

__all__ = [
    "BUILTIN_IMAGE_SETS",
    "IMAGE_EXTENSIONS",
    "ImageClassifier",
    "ImageSet",
    "cached_classifier",
    "classifier_accuracy",
    "classifier_features",
    "frechet_distance",
    "frechet_distance_from_stats",
    "is_image_data",
    "load_classifier",
    "load_digits_images",
    "load_image_folder",
    "load_image_npz",
    "load_image_set",
    "save_class_grid",
    "save_classifier",
    "save_image_grid",
    "save_trajectory_strip",
    "stratified_split",
    "to_model_scale",
    "to_pixels",
    "train_classifier",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")
BUILTIN_IMAGE_SETS: tuple[str, ...] = ("digits",)

# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


def _read_image(path: Path) -> tuple[np.ndarray, bool]:
    """One image file as float32 (H, W, 3) or (H, W, 1) in [0, 1], and whether it has colour."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode not in _GRAY_MODES and mode not in _COLOUR_MODES:
                raise FlowmatchError(f"{path}: unsupported image mode {mode!r}; save it as 8-bit grayscale or RGB")
            if mode == "1":
                img = img.convert("L")
            elif mode in ("P", "PA"):
                img = img.convert("RGBA")
            elif mode in ("La", "RGBa"):
                img = img.convert(mode[:-1] + "A")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
                img = img.convert("RGB")
            array = np.asarray(img)
            mode = img.mode
    except FlowmatchError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise FlowmatchError(f"{path}: not a readable image or corrupt ({type(exc).__name__}: {exc})") from None

    if array.ndim == 2:
        array = array[:, :, None]
    if mode.endswith("A"):  # LA or RGBA: the alpha channel must be fully opaque
        alpha = array[:, :, -1]
        if (alpha != np.iinfo(alpha.dtype).max).any():
            raise FlowmatchError(
                f"{path}: has transparent pixels (mode {mode}); flatten it onto a background before loading"
            )
        array = array[:, :, :-1]
    if array.dtype == np.uint8:
        pixels = array.astype(np.float32) / 255.0
    elif array.dtype.kind in "iu" and mode.startswith("I"):
        if array.min(initial=0) < 0 or array.max(initial=0) > 65535:
            raise FlowmatchError(f"{path}: integer image values outside 0..65535")
        pixels = array.astype(np.float32) / 65535.0
    else:
        raise FlowmatchError(f"{path}: unsupported pixel type {array.dtype} (mode {mode})")
    colour = pixels.shape[2] == 3 and not (
        np.array_equal(pixels[:, :, 0], pixels[:, :, 1]) and np.array_equal(pixels[:, :, 0], pixels[:, :, 2])
    )
    return pixels, colour


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def load_image_folder(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images from a folder: one subfolder per class, or all images directly in the folder (one class).

    Returns (images float32 (N, C, H, W) in [0, 1], labels int64 (N,), class names); see the module
    docstring for the rules on channels, transparency and which files are read.
    """
    root = Path(path)
    if not root.exists():
        raise FlowmatchError(f"{root}: no such folder")
    if not root.is_dir():
        raise FlowmatchError(f"{root}: not a folder (image data is a folder of PNG/JPEG files, an .npz or 'digits')")
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    top = _image_files(root)
    if subfolders and top:
        raise FlowmatchError(
            f"{root}: holds both image files ({top[0].name}, ...) and subfolders ({subfolders[0].name}, ...); "
            "put every image in a class subfolder, or remove the subfolders for a single class"
        )
    extensions = "/".join(IMAGE_EXTENSIONS)
    if subfolders:
        class_names = [p.name for p in subfolders]
        files: list[tuple[Path, int]] = []
        for label, folder in enumerate(subfolders):
            found = _image_files(folder)
            if not found:
                raise FlowmatchError(f"{folder}: class folder has no images ({extensions})")
            files += [(f, label) for f in found]
    else:
        if not top:
            raise FlowmatchError(f"{root}: no images ({extensions}) and no class subfolders in this folder")
        class_names = [root.resolve().name or "images"]
        files = [(f, 0) for f in top]

    arrays, colours = [], []
    first = None
    for f, _ in files:
        pixels, colour = _read_image(f)
        if first is None:
            first = (f, pixels.shape[:2])
        elif pixels.shape[:2] != first[1]:
            (h0, w0), (h, w) = first[1], pixels.shape[:2]
            raise FlowmatchError(
                f"{f}: image is {w}x{h} pixels but {first[0]} is {w0}x{h0}; all images must have the same size"
            )
        arrays.append(pixels)
        colours.append(colour)
    rgb = any(colours)
    images = np.empty((len(arrays), 3 if rgb else 1, *first[1]), dtype=np.float32)
    for i, pixels in enumerate(arrays):
        chw = pixels.transpose(2, 0, 1)
        images[i] = chw if rgb or chw.shape[0] == 1 else chw[:1]  # a gray image's three bands are equal
    labels = np.array([label for _, label in files], dtype=np.int64)
    return images, labels, class_names


def load_image_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images from an ``.npz`` archive with ``images`` and optional ``labels`` and ``class_names``.

    Shapes (N, H, W), (N, C, H, W) or (N, H, W, C) with C in {1, 3}; when axis 1 and axis 3 could both
    be channels, axis 1 is. Integer images must lie in 0..255 (divided by 255), float images in [0, 1].
    Returns (images float32 (N, C, H, W) in [0, 1], labels int64 (N,), class names).
    """
    path = Path(path)
    if not path.exists():
        raise FlowmatchError(f"{path}: no such file")
    try:
        with open(path, "rb") as fh:
            archive = np.load(fh, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise FlowmatchError(f"{path}: not an .npz archive (expected arrays 'images' and optional 'labels')")
            with archive:
                keys = list(archive.files)
                if "images" not in keys:
                    raise FlowmatchError(f"{path}: no 'images' array in the archive (keys: {', '.join(keys) or 'none'})")
                images = archive["images"]
                labels = archive["labels"] if "labels" in keys else None
                names = archive["class_names"] if "class_names" in keys else None
    except FlowmatchError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise FlowmatchError(f"{path}: holds Python objects, which would need unpickling (refused)") from None
        raise FlowmatchError(f"{path}: not a valid .npz file or corrupt ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise FlowmatchError(f"{path}: not a valid .npz file or corrupt ({type(exc).__name__}: {exc})") from None

    shape = tuple(images.shape)
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[1] in (1, 3):
        pass
    elif images.ndim == 4 and images.shape[3] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    else:
        raise FlowmatchError(
            f"{path}: 'images' must have shape (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3, got {shape}"
        )
    n = images.shape[0]
    if n == 0 or min(images.shape[2:]) == 0:
        raise FlowmatchError(f"{path}: 'images' is empty (shape {shape})")
    if images.dtype.kind in "iu":
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise FlowmatchError(f"{path}: integer images must lie in 0..255, got values from {low} to {high}")
        pixels = images.astype(np.float32) / 255.0
    elif images.dtype.kind == "f":
        bad = ~np.isfinite(images).reshape(n, -1).all(axis=1)
        if bad.any():
            raise FlowmatchError(
                f"{path}: {int(bad.sum())} of {n} images contain NaN or infinite values "
                f"(first at index {int(np.argmax(bad))})"
            )
        low, high = float(images.min()), float(images.max())
        if low < 0 or high > 1:
            raise FlowmatchError(
                f"{path}: float images must lie in [0, 1], got values from {low:g} to {high:g} "
                "(use uint8 0..255, or rescale)"
            )
        pixels = images.astype(np.float32)
    else:
        raise FlowmatchError(f"{path}: 'images' has dtype {images.dtype}; use uint8 (0..255) or float (0..1)")

    if labels is None:
        if names is not None and len(names) != 1:
            raise FlowmatchError(f"{path}: 'class_names' given ({len(names)} names) but no 'labels'")
        labels = np.zeros(n, dtype=np.int64)
    else:
        if labels.dtype.kind not in "iu":
            raise FlowmatchError(f"{path}: 'labels' must be integers, got dtype {labels.dtype}")
        if labels.shape != (n,):
            raise FlowmatchError(
                f"{path}: 'labels' must have shape ({n},), one per image, got {tuple(labels.shape)}"
            )
        if labels.min() < 0:
            raise FlowmatchError(f"{path}: labels must be >= 0, got {int(labels.min())}")
        labels = labels.astype(np.int64)
    if names is None:
        class_names = [str(k) for k in range(int(labels.max()) + 1)] if "labels" in keys else [path.stem]
    else:
        if names.dtype.kind != "U" or names.ndim != 1:
            raise FlowmatchError(f"{path}: 'class_names' must be a 1-D array of strings, got {names.dtype} {names.shape}")
        class_names = [str(s) for s in names]
        if labels.max() >= len(class_names):
            raise FlowmatchError(
                f"{path}: label {int(labels.max())} is out of range for {len(class_names)} class names"
            )
    return np.ascontiguousarray(pixels), labels, class_names


def load_digits_images() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled digits: 1,797 images (1, 8, 8) with p = v / 16 (v in 0..16), labels 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    return images, digits.target.astype(np.int64), [str(k) for k in digits.target_names]


def to_model_scale(pixels) -> torch.Tensor:
    """Pixels p in [0, 1] -> model scale x = 2 p - 1 in [-1, 1] (float32 tensor, same shape)."""
    return torch.as_tensor(pixels, dtype=torch.float32) * 2 - 1


def to_pixels(x) -> torch.Tensor:
    """Model scale x -> pixels p = (x + 1) / 2, clipped to [0, 1] (float32 tensor, same shape)."""
    return ((torch.as_tensor(x, dtype=torch.float32) + 1) / 2).clamp(0, 1)


def stratified_split(labels, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each sorted, of a stratified random split.

    Class k with n_k examples puts round(test_fraction * n_k) of them, but at least 1 when n_k >= 2 and
    never all n_k, into test, chosen by a permutation from ``torch.Generator().manual_seed(seed)``
    (classes are visited in order 0, 1, ..., so the split is a function of labels and seed only).
    """
    labels = np.asarray(labels)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise FlowmatchError(f"test_fraction must be a number strictly between 0 and 1, got {test_fraction!r}")
    g = torch.Generator().manual_seed(seed)
    test = []
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        n_k = len(idx)
        n_test = min(max(round(test_fraction * n_k), 1 if n_k >= 2 else 0), n_k - 1)
        order = torch.randperm(n_k, generator=g).numpy()
        test.append(idx[order[:n_test]])
    test_idx = np.sort(np.concatenate(test)) if test else np.empty(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


@dataclass(eq=False)
class ImageSet:
    """A labelled image set split into train and test, as flat tensors in model scale [-1, 1].

    ``train``/``test``: float32 (N, C*H*W), x = 2 p - 1 for pixels p in [0, 1], flattened in (C, H, W)
    order; ``train_labels``/``test_labels``: int64 (N,) in 0..num_classes-1; ``image_shape``: (C, H, W).
    """

    name: str
    image_shape: tuple[int, int, int]
    class_names: list[str]
    train: torch.Tensor
    train_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor

    @property
    def dim(self) -> int:
        return math.prod(self.image_shape)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def is_image_data(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names image data: 'digits', an existing folder, or an .npz with an 'images' array."""
    name = os.fspath(spec)
    if name in BUILTIN_IMAGE_SETS or os.path.isdir(name):
        return True
    if name.lower().endswith(".npz") and os.path.isfile(name):
        try:
            with zipfile.ZipFile(name) as z:
                return "images.npy" in z.namelist()
        except (OSError, zipfile.BadZipFile):
            return False
    return False


def load_image_set(spec: str | os.PathLike, *, test_fraction: float = 0.2, seed: int = 0) -> ImageSet:
    """'digits', a folder of PNG/JPEG images, or an .npz; split by :func:`stratified_split`."""
    name = os.fspath(spec)
    if name in BUILTIN_IMAGE_SETS:
        images, labels, class_names = load_digits_images()
    elif name.lower().endswith(".npz"):
        images, labels, class_names = load_image_npz(name)
    elif os.path.isfile(name):
        raise FlowmatchError(f"{name}: image data must be a folder of PNG/JPEG files, an .npz file or 'digits'")
    else:
        images, labels, class_names = load_image_folder(name)
    if len(images) < 2:
        raise FlowmatchError(f"{name}: need at least 2 images for a train and a test split, got {len(images)}")
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    if len(test_idx) == 0:
        raise FlowmatchError(f"{name}: too few images per class for a test split ({len(images)} images)")
    flat = to_model_scale(images.reshape(len(images), -1))
    labels_t = torch.from_numpy(labels)
    return ImageSet(
        name=name,
        image_shape=tuple(int(s) for s in images.shape[1:]),
        class_names=list(class_names),
        train=flat[train_idx].contiguous(),
        train_labels=labels_t[train_idx].contiguous(),
        test=flat[test_idx].contiguous(),
        test_labels=labels_t[test_idx].contiguous(),
    )


# --------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------

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
    draw.rectangle(
        [left, grid_top, width - 1, height - 1], fill=_PAD_COLOUR if cell_labels is None else _BACKGROUND
    )
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
    out_png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_png, format="PNG")


def save_image_grid(
    images,
    image_shape: Sequence[int],
    out_png: str | os.PathLike,
    *,
    nrow: int | None = None,
    labels: Sequence | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    cell: int = 64,
    title: str | None = None,
) -> None:
    """A PNG grid of flat images (n, C*H*W), ``nrow`` images per row (as in torchvision's ``make_grid``;
    default ceil(sqrt(n))). Values are mapped from ``value_range`` (model scale by default) to 0..255 and
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
    value_range: tuple[float, float] = (-1.0, 1.0),
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
    value_range: tuple[float, float] = (-1.0, 1.0),
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


# --------------------------------------------------------------------------------------------------
# Classifier features and the Frechet distance
# --------------------------------------------------------------------------------------------------

CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_META = "classifier.json"
_CLASSIFIER_FORMAT = "flowmatch-image-classifier"
_CLASSIFIER_VERSION = 1


class ImageClassifier(nn.Module):
    """A small CNN on flat images in model scale [-1, 1]::

        Conv3x3(C -> w), ReLU, Conv3x3(w -> w), ReLU, MaxPool 2x2,
        Conv3x3(w -> 2w), ReLU, AdaptiveAvgPool to 4x4, Flatten,
        Linear(32 w -> feature_dim), ReLU          <- features f(x), used for the Frechet distance
        Linear(feature_dim -> num_classes)         <- logits

    No dropout or batch norm, so training and evaluation compute the same function.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int, width: int = 32, feature_dim: int = 64):
        super().__init__()
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3 or min(shape) < 1 or min(shape[1:]) < 2:
            raise FlowmatchError(f"classifier: image_shape must be (C, H, W) with H, W >= 2, got {list(shape)}")
        if num_classes < 1 or width < 1 or feature_dim < 1:
            raise FlowmatchError("classifier: num_classes, width and feature_dim must be positive")
        self.config = {
            "image_shape": list(shape),
            "num_classes": int(num_classes),
            "width": int(width),
            "feature_dim": int(feature_dim),
        }
        self.image_shape = shape
        c = shape[0]
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * width * 16, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)
        self.meta: dict[str, Any] = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (batch, feature_dim) of flat images (batch, C*H*W)."""
        return self.body(x.reshape(x.shape[0], *self.image_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (batch, num_classes)."""
        return self.head(self.features(x))


def _flat_images(images, dim: int, what: str = "images") -> torch.Tensor:
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        x = x.reshape(x.shape[0], -1) if x.ndim > 2 else x
        if x.ndim != 2 or x.shape[1] != dim:
            raise FlowmatchError(f"{what}: expected flat images of shape (n, {dim}), got {tuple(x.shape)}")
    return x


def _training_identity(image_shape, num_classes: int, options: dict, width: int, feature_dim: int) -> dict:
    """Everything besides the data that determines a trained classifier's weights."""
    return {
        **options,
        "image_shape": [int(s) for s in image_shape],
        "num_classes": int(num_classes),
        "width": int(width),
        "feature_dim": int(feature_dim),
    }


def _fingerprint(images: torch.Tensor, labels: torch.Tensor, options: dict) -> str:
    h = hashlib.sha256()
    h.update(images.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
    h.update(labels.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
    h.update(json.dumps(options, sort_keys=True).encode())
    return h.hexdigest()


def train_classifier(
    images,
    labels,
    image_shape: Sequence[int],
    num_classes: int,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    width: int = 32,
    feature_dim: int = 64,
    seed: int = 0,
) -> ImageClassifier:
    """Train an :class:`ImageClassifier` on flat images in model scale, deterministically.

    Initialisation comes from ``torch.manual_seed(seed)`` inside a forked RNG (the global RNG is left
    as it was) and the batch order from ``torch.Generator().manual_seed(seed)``; training runs
    ``epochs`` full passes of Adam (cross-entropy, cosine learning-rate decay) on the CPU in one thread
    with ``torch.use_deterministic_algorithms(True)`` (both restored afterwards), so the same inputs and
    seed give identical weights. The model is small (about 5 s for digits); the classifier's ``meta``
    records the options, time and training accuracy.
    """
    image_shape = tuple(int(s) for s in image_shape)
    x = _flat_images(images, math.prod(image_shape)).cpu()
    y = torch.as_tensor(labels).cpu()
    if y.dtype.is_floating_point or y.shape != (len(x),):
        raise FlowmatchError(f"classifier: labels must be integers of shape ({len(x)},), got {y.dtype} {tuple(y.shape)}")
    y = y.long()
    if len(x) < 2 or y.min() < 0 or y.max() >= num_classes:
        raise FlowmatchError(f"classifier: need >= 2 images with labels in 0..{num_classes - 1}")
    options = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "seed": seed}
    for key in ("epochs", "batch_size", "width", "feature_dim", "num_classes"):
        value = {"width": width, "feature_dim": feature_dim, "num_classes": num_classes}.get(key, options.get(key))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FlowmatchError(f"classifier: {key} must be a positive integer, got {value!r}")
    started = time.perf_counter()
    was_deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # the same float reduction order on every machine, and no thread contention
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ImageClassifier(image_shape, num_classes, width=width, feature_dim=feature_dim)
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = math.ceil(len(x) / batch_size)
        total = epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / total)))
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), batch_size):
                idx = order[i : i + batch_size]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)
    model.eval()
    model.meta = {
        **options,
        "n_train": len(x),
        "train_seconds": time.perf_counter() - started,
        "train_accuracy": classifier_accuracy(model, x, y),
        "fingerprint": _fingerprint(x, y, _training_identity(image_shape, num_classes, options, width, feature_dim)),
    }
    return model


@torch.no_grad()
def classifier_features(classifier: ImageClassifier, images, batch_size: int = 1024) -> np.ndarray:
    """Penultimate-layer features, float64 (n, feature_dim), of flat images (n, C*H*W) in model scale."""
    x = _flat_images(images, math.prod(classifier.image_shape))
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    out = [classifier.features(x[i : i + batch_size].to(device)).double().cpu() for i in range(0, len(x), batch_size)]
    classifier.train(was_training)
    return torch.cat(out).numpy() if out else np.empty((0, classifier.config["feature_dim"]))


@torch.no_grad()
def classifier_accuracy(classifier: ImageClassifier, images, labels, batch_size: int = 1024) -> float:
    """Fraction of flat images (n, C*H*W) whose arg-max class equals ``labels`` (n,)."""
    x = _flat_images(images, math.prod(classifier.image_shape))
    y = torch.as_tensor(labels).long().reshape(-1)
    if len(y) != len(x) or len(x) == 0:
        raise FlowmatchError(f"classifier_accuracy: {len(x)} images but {len(y)} labels")
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    pred = torch.cat([classifier(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    classifier.train(was_training)
    return float((pred == y).double().mean())


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """FD = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)) for means (d,) and covariances (d, d).

    Tr (S1 S2)^(1/2) = sum_i sqrt(lambda_i), lambda_i >= 0 the eigenvalues of S1^(1/2) S2 S1^(1/2) (a
    symmetric PSD matrix similar to S1 S2); S1^(1/2) comes from the eigendecomposition of S1 with
    negative rounding-error eigenvalues set to 0. The result is clipped at 0.
    """
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    s1, s2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise FlowmatchError(
            f"frechet distance: means must be (d,) and covariances (d, d) with one d, got "
            f"{mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2 @ root1
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(lam, 0, None)).sum())
    fd = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    return max(fd, 0.0)


def frechet_distance(feats_a, feats_b) -> float:
    """Frechet distance between the Gaussians fitted (mean, unbiased covariance) to two feature sets (n, d)."""
    a = feats_a.detach().cpu().numpy() if isinstance(feats_a, torch.Tensor) else feats_a
    b = feats_b.detach().cpu().numpy() if isinstance(feats_b, torch.Tensor) else feats_b
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise FlowmatchError(f"frechet distance: need two (n, d) feature sets of one d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise FlowmatchError(f"frechet distance: need at least 2 samples per set, got {len(a)} and {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise FlowmatchError("frechet distance: the features contain NaN or infinite values")
    return frechet_distance_from_stats(
        a.mean(0), np.atleast_2d(np.cov(a, rowvar=False)), b.mean(0), np.atleast_2d(np.cov(b, rowvar=False))
    )


def save_classifier(classifier: ImageClassifier, folder: str | os.PathLike) -> None:
    """Write ``classifier.safetensors`` (weights) and ``classifier.json`` (config and meta) into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in classifier.state_dict().items()}
    save_file(state, str(folder / CLASSIFIER_WEIGHTS))
    meta = {"format": _CLASSIFIER_FORMAT, "version": _CLASSIFIER_VERSION, "config": classifier.config, "meta": classifier.meta}
    (folder / CLASSIFIER_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def load_classifier(folder: str | os.PathLike) -> ImageClassifier:
    """The classifier saved by :func:`save_classifier` in ``folder`` (safetensors; nothing unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path, weights_path = folder / CLASSIFIER_META, folder / CLASSIFIER_WEIGHTS
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise FlowmatchError(f"{p}: no saved image classifier here ({p.name} is missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FlowmatchError(f"{meta_path}: cannot read JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != _CLASSIFIER_FORMAT or meta.get("version") != _CLASSIFIER_VERSION:
        raise FlowmatchError(f"{meta_path}: not a flowmatch image classifier of version {_CLASSIFIER_VERSION}")
    try:
        classifier = ImageClassifier(**meta["config"])
    except (KeyError, TypeError) as exc:
        raise FlowmatchError(f"{meta_path}: malformed classifier config ({exc!r})") from None
    try:
        state = load_file(str(weights_path))
        classifier.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlowmatchError(f"{weights_path}: cannot load the classifier weights ({first})") from None
    classifier.meta = dict(meta.get("meta") or {})
    return classifier.eval()


def cached_classifier(
    folder: str | os.PathLike, images, labels, image_shape: Sequence[int], num_classes: int, **options
) -> ImageClassifier:
    """The classifier saved in ``folder`` if it was trained on exactly these images, labels and options
    (checked by a SHA-256 fingerprint in its JSON), else a newly trained one, saved there.

    ``options`` are :func:`train_classifier`'s keyword arguments.
    """
    import inspect

    defaults = {
        name: p.default
        for name, p in inspect.signature(train_classifier).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise FlowmatchError(f"cached_classifier: unknown options {unknown}; choose from {sorted(defaults)}")
    resolved = {**defaults, **options}
    width, feature_dim = resolved.pop("width"), resolved.pop("feature_dim")
    folder = Path(folder)
    if (folder / CLASSIFIER_META).is_file() and (folder / CLASSIFIER_WEIGHTS).is_file():
        try:
            cached = load_classifier(folder)
        except FlowmatchError:
            cached = None  # unreadable: train again and overwrite
        if cached is not None:
            x = _flat_images(images, math.prod(tuple(image_shape)))
            identity = _training_identity(image_shape, num_classes, resolved, width, feature_dim)
            if cached.meta.get("fingerprint") == _fingerprint(x, torch.as_tensor(labels).long(), identity):
                return cached
    classifier = train_classifier(images, labels, image_shape, num_classes, **options)
    save_classifier(classifier, folder)
    return classifier
