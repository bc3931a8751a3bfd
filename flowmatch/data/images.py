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
which is the scale the velocity models train and sample in; :func:`to_pixels` maps back. A run's data
coordinates are the pixels, as they went in: its standardiser is x = 2 p - 1
(:func:`flowmatch.data.dataset.pixel_standardizer`), so its test rows, a ``reference=``, ``flow.sample``
and ``flowmatch sample`` are pixels p in [0, 1] (not clipped), whatever the file held (0..255 or
[0, 1]); the pictures below map [0, 1] to black and white by default.

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

import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from flowmatch.data.files import class_count
from flowmatch.errors import FlowmatchError
from flowmatch.storage import os_error

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")


BUILTIN_IMAGE_SETS: tuple[str, ...] = ("digits",)


_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"}


_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}


def _read_image(path: Path) -> tuple[np.ndarray, bool]:
    """One image file as float32 (H, W, 3) or (H, W, 1) in [0, 1], and whether it has colour."""
    from PIL import Image, UnidentifiedImageError

    img: Image.Image
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
    except OSError as exc:
        if exc.errno is not None and not isinstance(exc, UnidentifiedImageError):  # the system's error: no permission, I/O
            raise os_error(path, exc) from None
        raise FlowmatchError(f"{path}: not a readable image or corrupt ({type(exc).__name__}: {exc})") from None
    except (SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise FlowmatchError(f"{path}: not a readable image or corrupt ({type(exc).__name__}: {exc})") from None

    if array.ndim == 2:
        array = array[:, :, None]
    if mode.endswith("A"):  # LA or RGBA: the alpha channel must be fully opaque
        alpha = array[:, :, -1]
        if (alpha != np.iinfo(alpha.dtype).max).any():
            raise FlowmatchError(f"{path}: has transparent pixels (mode {mode}); flatten it onto a background before loading")
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
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


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
    first: tuple[Path, tuple[int, ...]] | None = None
    for f, _ in files:
        pixels, colour = _read_image(f)
        if first is None:
            first = (f, pixels.shape[:2])
        elif pixels.shape[:2] != first[1]:
            (h0, w0), (h, w) = first[1], pixels.shape[:2]
            raise FlowmatchError(f"{f}: image is {w}x{h} pixels but {first[0]} is {w0}x{h0}; all images must have the same size")
        arrays.append(pixels)
        colours.append(colour)
    rgb = any(colours)
    assert first is not None  # files is non-empty (checked above)
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
        raise FlowmatchError(f"{path}: 'images' must have shape (N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3, got {shape}")
    n = images.shape[0]
    if n == 0 or min(images.shape[2:]) == 0:
        raise FlowmatchError(f"{path}: 'images' is empty (shape {shape})")
    low: float
    high: float
    if images.dtype.kind in "iu":
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise FlowmatchError(f"{path}: integer images must lie in 0..255, got values from {low} to {high}")
        pixels = images.astype(np.float32) / 255.0
    elif images.dtype.kind == "f":
        bad = ~np.isfinite(images).reshape(n, -1).all(axis=1)
        if bad.any():
            raise FlowmatchError(
                f"{path}: {int(bad.sum())} of {n} images contain NaN or infinite values (first at index {int(np.argmax(bad))})"
            )
        low, high = float(images.min()), float(images.max())
        if low < 0 or high > 1:
            raise FlowmatchError(
                f"{path}: float images must lie in [0, 1], got values from {low:g} to {high:g} (use uint8 0..255, or rescale)"
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
            raise FlowmatchError(f"{path}: 'labels' must have shape ({n},), one per image, got {tuple(labels.shape)}")
        if labels.min() < 0:
            raise FlowmatchError(f"{path}: labels must be >= 0, got {int(labels.min())}")
        labels = labels.astype(np.int64)
    if names is None:
        class_names = [str(k) for k in range(class_count(labels, n, f"{path}: 'labels'"))] if "labels" in keys else [path.stem]
    else:
        if names.dtype.kind != "U" or names.ndim != 1:
            raise FlowmatchError(f"{path}: 'class_names' must be a 1-D array of strings, got {names.dtype} {names.shape}")
        class_names = [str(s) for s in names]
        if labels.max() >= len(class_names):
            raise FlowmatchError(f"{path}: label {int(labels.max())} is out of range for {len(class_names)} class names")
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
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 <= test_fraction < 1:
        raise FlowmatchError(f"test_fraction must be a number in [0, 1), got {test_fraction!r}")
    if test_fraction == 0:  # nothing held out: every image trains
        return np.arange(len(labels)), np.empty(0, dtype=np.int64)
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
    if (images == images[:1]).all():
        raise FlowmatchError(f"{name}: all {len(images)} images are the same image: there is no distribution to learn")
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    if len(test_idx) == 0 and test_fraction > 0:
        raise FlowmatchError(f"{name}: too few images per class for a test split ({len(images)} images)")
    flat = to_model_scale(images.reshape(len(images), -1))
    labels_t = torch.from_numpy(labels)
    return ImageSet(
        name=name,
        image_shape=cast(tuple[int, int, int], tuple(int(s) for s in images.shape[1:])),
        class_names=list(class_names),
        train=flat[train_idx].contiguous(),
        train_labels=labels_t[train_idx].contiguous(),
        test=flat[test_idx].contiguous(),
        test_labels=labels_t[test_idx].contiguous(),
    )
