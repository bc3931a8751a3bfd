"""Image metrics: a small classifier trained on the data set's own training images, its accuracy on samples, and the Frechet distance of its features."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flowmatch.errors import FlowmatchError

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
        self.config: dict[str, Any] = {
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
            f"frechet distance: means must be (d,) and covariances (d, d) with one d, got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
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
    return frechet_distance_from_stats(a.mean(0), np.atleast_2d(np.cov(a, rowvar=False)), b.mean(0), np.atleast_2d(np.cov(b, rowvar=False)))


def save_classifier(classifier: ImageClassifier, folder: str | os.PathLike) -> None:
    """Write ``classifier.safetensors`` (weights) and ``classifier.json`` (config and meta) into ``folder``."""
    from flowmatch.storage import make_folder, save_tensors, write_json

    folder = make_folder(folder)
    save_tensors(folder / CLASSIFIER_WEIGHTS, classifier.state_dict())  # each file atomically, weights first
    meta = {"format": _CLASSIFIER_FORMAT, "version": _CLASSIFIER_VERSION, "config": classifier.config, "meta": classifier.meta}
    write_json(folder / CLASSIFIER_META, meta)


def load_classifier(folder: str | os.PathLike) -> ImageClassifier:
    """The classifier saved by :func:`save_classifier` in ``folder`` (safetensors; nothing unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from flowmatch.saving import load_weights

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
    except (SafetensorError, OSError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FlowmatchError(f"{weights_path}: cannot load the classifier weights ({first})") from None
    load_weights(classifier, state, weights_path)  # names, shapes, dtypes and finite values checked
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
        name: p.default for name, p in inspect.signature(train_classifier).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
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
