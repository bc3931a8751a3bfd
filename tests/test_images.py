"""Image data, pictures and metrics: loaders and their errors, the split, grids, the Frechet distance,
and the deterministic feature classifier."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from flowmatch.data.images import (
    is_image_data,
    load_digits_images,
    load_image_folder,
    load_image_npz,
    load_image_set,
    stratified_split,
    to_model_scale,
    to_pixels,
)
from flowmatch.errors import FlowmatchError
from flowmatch.evaluation.images import (
    ImageClassifier,
    cached_classifier,
    classifier_accuracy,
    classifier_features,
    frechet_distance,
    frechet_distance_from_stats,
    load_classifier,
    save_classifier,
    train_classifier,
)
from flowmatch.plots.images import save_class_grid, save_image_grid, save_trajectory_strip

# --------------------------------------------------------------------------------------------------
# Folders of PNG/JPEG files
# --------------------------------------------------------------------------------------------------


def _gray(value: int, size=(6, 5)) -> Image.Image:
    """A (W, H) = size grayscale image with one bright pixel at (0, 0) and ``value`` elsewhere."""
    a = np.full((size[1], size[0]), value, dtype=np.uint8)
    a[0, 0] = 255
    return Image.fromarray(a, mode="L")


def _write(path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_folder_with_class_subfolders(tmp_path):
    _write(tmp_path / "cats" / "b.png", _gray(10))
    _write(tmp_path / "cats" / "a.PNG", _gray(20))
    _write(tmp_path / "dogs" / "x.jpg", _gray(200))
    _write(tmp_path / "ants" / "y.jpeg", _gray(100))
    (tmp_path / "dogs" / "notes.txt").write_text("ignored")
    _write(tmp_path / "dogs" / ".hidden.png", _gray(0))  # hidden: ignored
    images, labels, names = load_image_folder(tmp_path)
    assert names == ["ants", "cats", "dogs"]  # sorted folder names; label k is names[k]
    assert labels.tolist() == [0, 1, 1, 2]
    assert images.shape == (4, 1, 5, 6) and images.dtype == np.float32
    assert labels.dtype == np.int64
    # PNG is lossless: files are read in sorted name order (a.PNG before b.png), values divided by 255 (one
    # float32 rounding, <= 6e-8 relative: inside assert_allclose's default rtol 1e-7)
    np.testing.assert_allclose(images[1, 0, 1:, 1:], 20 / 255)
    np.testing.assert_allclose(images[2, 0, 1:, 1:], 10 / 255)
    assert images[1, 0, 0, 0] == 1.0
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert abs(float(images[3].mean()) - 200 / 255) < 0.05  # JPEG, lossy (measured 0.0097; one level is 0.004)


def test_folder_without_subfolders_is_one_class(tmp_path):
    folder = tmp_path / "faces"
    for i in range(3):
        _write(folder / f"{i}.png", _gray(50 * i))
    images, labels, names = load_image_folder(folder)
    assert names == ["faces"] and labels.tolist() == [0, 0, 0] and images.shape == (3, 1, 5, 6)


def test_channels_rule(tmp_path):
    # an RGB file holding a gray picture counts as gray: the set stays single-channel
    _write(tmp_path / "gray" / "a.png", _gray(30))
    _write(tmp_path / "gray" / "b.png", _gray(60).convert("RGB"))
    images, _, _ = load_image_folder(tmp_path / "gray")
    assert images.shape == (2, 1, 5, 6)
    np.testing.assert_allclose(images[1, 0, 1:, 1:], 60 / 255)  # one float32 rounding, as above
    # one coloured image makes the whole set RGB; gray images become three equal channels
    colour = np.zeros((5, 6, 3), dtype=np.uint8)
    colour[..., 0] = 255
    _write(tmp_path / "mixed" / "a.png", _gray(30))
    _write(tmp_path / "mixed" / "b.png", Image.fromarray(colour, mode="RGB"))
    _write(tmp_path / "mixed" / "c.png", Image.fromarray(np.full((5, 6, 4), 255, np.uint8), mode="RGBA"))  # opaque
    images, _, _ = load_image_folder(tmp_path / "mixed")
    assert images.shape == (3, 3, 5, 6)
    np.testing.assert_allclose(images[0, 0], images[0, 1])
    np.testing.assert_allclose(images[0, 0], images[0, 2])
    np.testing.assert_allclose(images[1, :, 2, 2], [1.0, 0.0, 0.0])  # 255 / 255 and 0 / 255 are exact
    np.testing.assert_allclose(images[2], 1.0)


def test_sixteen_bit_png(tmp_path):
    a = np.full((4, 4), 65535, dtype=np.uint16)
    a[0, 0] = 0
    _write(tmp_path / "a.png", Image.fromarray(a))
    images, _, _ = load_image_folder(tmp_path)
    assert images.shape == (1, 1, 4, 4) and images[0, 0, 0, 0] == 0.0 and images[0, 0, 1, 1] == 1.0


def _corrupt(folder):
    _write(folder / "a.png", _gray(0))
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")


def _mixed_sizes(folder):
    _write(folder / "c1" / "a.png", _gray(0, size=(6, 5)))
    _write(folder / "c2" / "b.png", _gray(0, size=(8, 8)))


def _translucent(folder):
    _write(folder / "a.png", _gray(0).convert("RGB"))
    rgba = np.full((5, 6, 4), 255, dtype=np.uint8)
    rgba[0, 0, 3] = 10
    _write(folder / "b.png", Image.fromarray(rgba, mode="RGBA"))


def _float_mode(folder):
    _write(folder / "a.png", _gray(0))
    Image.fromarray(np.zeros((5, 6), np.float32), mode="F").save(folder / "b.tiff")
    (folder / "b.tiff").rename(folder / "b.png")  # a TIFF named .png: Pillow opens it, mode F


@pytest.mark.parametrize(
    "make, message",
    [
        (_corrupt, r"b\.png: not a readable image or corrupt"),
        (_mixed_sizes, r"b\.png: image is 8x8 pixels but .*a\.png is 6x5; all images must have the same size"),
        (_translucent, r"b\.png: has transparent pixels"),
        (_float_mode, r"b\.png: unsupported image mode 'F'"),
        (lambda f: f.mkdir(), "no images .* and no class subfolders"),
        (lambda f: (f.mkdir(), (f / "readme.txt").write_text("x")), "no images"),
        (lambda f: (_write(f / "c1" / "a.png", _gray(0)), (f / "c2").mkdir()), r"c2: class folder has no images"),
        (lambda f: (_write(f / "c1" / "a.png", _gray(0)), _write(f / "top.png", _gray(0))), "both image files"),
        (lambda f: None, "no such folder"),
        (lambda f: f.write_text("x"), "not a folder"),
    ],
    ids=["corrupt", "sizes", "translucent", "mode", "empty", "no-images", "empty-class", "mixed-layout", "missing", "file"],
)
def test_bad_folders(tmp_path, make, message):
    folder = tmp_path / "data"
    make(folder)
    with pytest.raises(FlowmatchError, match=message) as info:
        load_image_folder(folder)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# .npz archives
# --------------------------------------------------------------------------------------------------


def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    chw = rng.integers(0, 256, size=(5, 3, 4, 6), dtype=np.uint8)
    np.savez(tmp_path / "hw.npz", images=chw[:, 0])
    np.savez(tmp_path / "chw.npz", images=chw, labels=np.array([0, 1, 2, 1, 0]))
    np.savez(tmp_path / "hwc.npz", images=chw.transpose(0, 2, 3, 1), labels=np.array([1, 1, 0, 0, 1]), class_names=np.array(["cat", "dog"]))
    np.savez(tmp_path / "float.npz", images=chw.astype(np.float64) / 255)

    images, labels, names = load_image_npz(tmp_path / "hw.npz")
    assert images.shape == (5, 1, 4, 6) and labels.tolist() == [0] * 5 and names == ["hw"]
    np.testing.assert_allclose(images[:, 0], chw[:, 0] / 255, rtol=1e-6)  # float32 division: <= 6e-8 relative

    images, labels, names = load_image_npz(tmp_path / "chw.npz")
    assert images.shape == (5, 3, 4, 6) and labels.dtype == np.int64 and names == ["0", "1", "2"]
    np.testing.assert_allclose(images, chw / 255, rtol=1e-6)

    images, labels, names = load_image_npz(tmp_path / "hwc.npz")
    np.testing.assert_allclose(images, chw / 255, rtol=1e-6)  # (N, H, W, C) is transposed to (N, C, H, W)
    assert names == ["cat", "dog"] and labels.tolist() == [1, 1, 0, 0, 1]

    images, _, _ = load_image_npz(tmp_path / "float.npz")
    assert images.dtype == np.float32
    np.testing.assert_allclose(images, chw / 255, rtol=1e-6)  # float64 to float32: one rounding, <= 6e-8 relative


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"data": np.zeros((3, 4, 4))}, "no 'images' array in the archive"),
        ({"images": np.array([None, 1], dtype=object)}, "Python objects"),
        ({"images": np.full((3, 4, 4), np.nan)}, "3 of 3 images contain NaN"),
        ({"images": np.full((3, 4, 4), 2.0)}, r"float images must lie in \[0, 1\]"),
        ({"images": np.full((3, 4, 4), 300, dtype=np.int32)}, "integer images must lie in 0..255"),
        ({"images": np.zeros((3, 4, 4), dtype=bool)}, "has dtype bool"),
        ({"images": np.zeros((3, 5, 5, 5))}, r"must have shape \(N, H, W\)"),
        ({"images": np.zeros((3, 16))}, r"must have shape \(N, H, W\)"),
        ({"images": np.zeros((0, 4, 4))}, "is empty"),
        ({"images": np.zeros((3, 4, 4)), "labels": np.array([0.0, 1.0, 1.0])}, "'labels' must be integers"),
        ({"images": np.zeros((3, 4, 4)), "labels": np.array([0, 1])}, r"'labels' must have shape \(3,\)"),
        ({"images": np.zeros((3, 4, 4)), "labels": np.array([0, -1, 1])}, "labels must be >= 0"),
        (
            {"images": np.zeros((3, 4, 4)), "labels": np.array([0, 1, 2]), "class_names": np.array(["a", "b"])},
            "label 2 is out of range for 2 class names",
        ),
    ],
)
def test_bad_npz(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(FlowmatchError, match=message):
        load_image_npz(path)


def test_npz_never_unpickles_and_bad_files(tmp_path):
    with pytest.raises(FlowmatchError, match="no such file"):
        load_image_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(FlowmatchError, match="not a valid .npz file or corrupt"):
        load_image_npz(tmp_path / "junk.npz")
    np.save(tmp_path / "plain.npy", np.zeros((3, 4, 4)))
    (tmp_path / "plain.npy").rename(tmp_path / "plain.npz")
    with pytest.raises(FlowmatchError, match="not an .npz archive"):
        load_image_npz(tmp_path / "plain.npz")


# --------------------------------------------------------------------------------------------------
# digits, the split and ImageSet
# --------------------------------------------------------------------------------------------------


def test_digits():
    images, labels, names = load_digits_images()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert np.allclose(images * 16, np.round(images * 16))  # v / 16 for integer v in 0..16 (exact in float32)
    assert names == [str(k) for k in range(10)]
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_image_set_split():
    s = load_image_set("digits", seed=0)
    assert s.image_shape == (1, 8, 8) and s.dim == 64 and s.num_classes == 10
    assert s.train.shape == (1438, 64) and s.test.shape == (359, 64)
    assert s.train.dtype == torch.float32 and s.train_labels.dtype == torch.int64
    assert s.train.min() == -1.0 and s.train.max() == 1.0  # model scale x = 2 v / 16 - 1
    # stratified: every class holds round(0.2 n_k) test images
    counts = np.bincount(np.concatenate([s.train_labels.numpy(), s.test_labels.numpy()]))
    np.testing.assert_array_equal(np.bincount(s.test_labels.numpy()), np.round(0.2 * counts))
    # deterministic in the seed, different for another seed, and the two parts partition the data
    again, other = load_image_set("digits", seed=0), load_image_set("digits", seed=1)
    assert torch.equal(again.test, s.test) and torch.equal(again.train_labels, s.train_labels)
    assert not torch.equal(other.test, s.test)
    images, _, _ = load_digits_images()
    everything = torch.cat([s.train, s.test])
    assert everything.shape == (1797, 64)
    # bitwise equality holds in any summation order: the pixels are multiples of 1/8 in [-1, 1], and sums of
    # 64 of them are exact in float32
    assert torch.equal(torch.sort(everything.sum(1)).values, torch.sort(to_model_scale(images).reshape(1797, -1).sum(1)).values)


def test_stratified_split_rules():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1 + [3] * 2)
    train, test = stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[test], minlength=4).tolist() == [2, 1, 0, 1]  # >= 1 when n_k >= 2, never all
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    with pytest.raises(FlowmatchError, match="test_fraction"):
        stratified_split(labels, 1.0)
    train, test = stratified_split(labels, 0, seed=3)  # test_fraction 0: every image trains
    assert train.tolist() == list(range(len(labels))) and len(test) == 0


def test_image_set_from_folder_and_npz(tmp_path):
    for k in range(2):
        for i in range(5):
            _write(tmp_path / "folder" / f"class{k}" / f"{i}.png", _gray(40 * i + k))
    s = load_image_set(tmp_path / "folder", seed=0)
    assert s.class_names == ["class0", "class1"] and s.image_shape == (1, 5, 6)
    assert len(s.train) == 8 and len(s.test) == 2 and sorted(s.test_labels.tolist()) == [0, 1]
    images = np.zeros((6, 2, 2), np.uint8)
    images[:, 0, 0] = 40 * np.arange(6)  # six different images (one image six times is refused)
    np.savez(tmp_path / "x.npz", images=images, labels=np.array([0, 0, 0, 1, 1, 1]))
    s = load_image_set(tmp_path / "x.npz")
    assert s.dim == 4 and s.train.min() == -1.0
    assert is_image_data("digits") and is_image_data(tmp_path / "folder") and is_image_data(tmp_path / "x.npz")
    np.savez(tmp_path / "points.npz", data=np.zeros((5, 2)))
    assert not is_image_data(tmp_path / "points.npz") and not is_image_data("moons")
    with pytest.raises(FlowmatchError, match="need at least 2 images"):
        np.savez(tmp_path / "one.npz", images=np.zeros((1, 2, 2), np.uint8))
        load_image_set(tmp_path / "one.npz")


def test_scales_round_trip():
    p = torch.rand(4, 64)
    torch.testing.assert_close(to_pixels(to_model_scale(p)), p)  # float32 2p - 1 and back: ~1e-7 (default 1.3e-6 + 1e-5)
    assert to_pixels(torch.tensor([-3.0, 3.0])).tolist() == [0.0, 1.0]


# --------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------


def test_pictures(tmp_path):
    s = load_image_set("digits", seed=0)
    x = to_pixels(s.train[:20])  # pixels: the pictures' default range, as samples come back
    save_image_grid(x, s.image_shape, tmp_path / "grid.png", nrow=5, labels=s.train_labels[:20].tolist())
    save_image_grid(x, s.image_shape, tmp_path / "plain.png", nrow=5)
    rows = [s.train[s.train_labels == k][:6] for k in range(10)]  # the model's scale
    save_class_grid(rows, s.image_shape, tmp_path / "classes.png", row_labels=s.class_names, title="digits", value_range=(-1, 1))
    noise = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    times = torch.linspace(0, 1, 21)
    trajectory = (1 - times)[:, None, None] * noise + times[:, None, None] * s.train[:8]
    save_trajectory_strip(trajectory, s.image_shape, tmp_path / "strip.png", times=times, max_frames=6, value_range=(-1, 1))
    for name in ("grid", "plain", "classes", "strip"):
        path = tmp_path / f"{name}.png"
        assert path.stat().st_size > 500
        with Image.open(path) as img:
            assert img.format == "PNG" and img.mode == "RGB"
    # 8x8 images are upscaled to 64 px cells with 2 px gaps: 5 cells per row
    with Image.open(tmp_path / "plain.png") as img:
        assert img.size == (5 * 66 + 2, 4 * 66 + 2)
        a = np.asarray(img)
    # the top-left cell is the first image, upscaled 8x by nearest neighbour
    cell = a[2 : 2 + 64, 2 : 2 + 64, 0]
    expected = np.round(x[0].reshape(8, 8).numpy() * 255)
    np.testing.assert_array_equal(cell[::8, ::8], expected)
    np.testing.assert_array_equal(cell, np.kron(expected, np.ones((8, 8))))
    with Image.open(tmp_path / "strip.png") as img:
        assert img.size[0] > 6 * 66 and img.size[1] > 8 * 66  # 6 frames by 8 samples, plus labels
    with pytest.raises(FlowmatchError, match="expected flat images"):
        save_image_grid(torch.zeros(3, 10), (1, 8, 8), tmp_path / "bad.png")
    with pytest.raises(FlowmatchError, match="3 labels for 20 images"):
        save_image_grid(x, s.image_shape, tmp_path / "bad.png", labels=[1, 2, 3])


# --------------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------------


def _random_spd(d, rng):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_of_identical_sets_is_zero():
    feats = np.random.default_rng(0).standard_normal((500, 16)) * 3 + 1
    # float64 eigendecompositions: round-off ~ eps d Tr(S) = 2e-16 * 16 * 145 = 5e-13 (measured -5.7e-14, clipped at 0)
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(torch.from_numpy(feats), feats) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_from_stats_closed_forms():
    rng = np.random.default_rng(1)
    # diagonal covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)  # float64 (measured 0)
    # general covariances: the formula with scipy's matrix square root of S1 S2
    for d in (2, 7, 30):
        s1, s2 = _random_spd(d, rng), _random_spd(d, rng)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(s1 @ s2)))
        got = frechet_distance_from_stats(mu1, s1, mu2, s2)
        # float64, two routes to the square root (measured <= 1.3e-15 relative apart, values 9 to 64)
        assert got == pytest.approx(reference, rel=1e-8, abs=1e-8)
        assert got == pytest.approx(frechet_distance_from_stats(mu2, s2, mu1, s1), rel=1e-8)  # symmetric
    # a rank-deficient covariance (more dimensions than samples) is still handled. Round-off on the three zero
    # eigenvalues (~eps * 196 = 4e-14) enters through a square root: ~2e-7 each, and only lowers the FD
    # (measured -3.2e-8 before the clip at 0)
    low_rank = np.outer(np.arange(4.0), np.arange(4.0))
    assert frechet_distance_from_stats(np.zeros(4), low_rank, np.zeros(4), low_rank) == pytest.approx(0, abs=1e-6)
    with pytest.raises(FlowmatchError, match="covariances"):
        frechet_distance_from_stats(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))


def test_frechet_distance_of_gaussian_samples_matches_the_analytic_value():
    """Samples of two known Gaussians: the estimates scatter around the analytic FD by sampling error.

    R = 100 replicates of n = 4000 points each in d = 3. The tolerance for the mean of the replicates is
    4 standard errors, std(replicates) / sqrt(R) (about 0.02 here); the estimator's O(1/n) bias, led by
    (Tr S1 + Tr S2) / n from |mean_a - mean_b|^2 (about 0.002 here), is well inside it. Every single
    replicate lies within 5 of its standard deviations of the analytic value.
    """
    rng = np.random.default_rng(2)
    d, n, replicates = 3, 4000, 100
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -1.5])
    s1, s2 = _random_spd(d, rng), _random_spd(d, rng)
    analytic = frechet_distance_from_stats(mu1, s1, mu2, s2)
    l1, l2 = np.linalg.cholesky(s1), np.linalg.cholesky(s2)
    estimates = np.array(
        [frechet_distance(mu1 + rng.standard_normal((n, d)) @ l1.T, mu2 + rng.standard_normal((n, d)) @ l2.T) for _ in range(replicates)]
    )
    spread = estimates.std(ddof=1)
    bias_mean_term = (np.trace(s1) + np.trace(s2)) / n
    # measured on rng seed 2: bias 0.14 SE, mean 0.45 SE off, the worst replicate 2.5 spreads off, FD 39 spreads
    assert bias_mean_term < 0.25 * spread / np.sqrt(replicates) * 4
    assert abs(estimates.mean() - analytic) < 4 * spread / np.sqrt(replicates)
    assert np.abs(estimates - analytic).max() < 5 * spread
    assert analytic > 10 * spread  # the test has power: the value is far from 0 relative to the noise


def test_frechet_distance_bad_input():
    with pytest.raises(FlowmatchError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(FlowmatchError, match="one d"):
        frechet_distance(np.zeros((4, 3)), np.zeros((5, 2)))
    with pytest.raises(FlowmatchError, match="NaN"):
        frechet_distance(np.full((4, 3), np.nan), np.zeros((5, 3)))


# --------------------------------------------------------------------------------------------------
# The feature classifier
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_image_set("digits", seed=0)


@pytest.fixture(scope="module")
def classifier(digits):
    return train_classifier(digits.train, digits.train_labels, digits.image_shape, digits.num_classes, seed=0)


def test_classifier_accuracy_and_feature_floor(digits, classifier):
    accuracy = classifier_accuracy(classifier, digits.test, digits.test_labels)
    # measured 0.992 on the test split and 1.0 on the training split (359 test images: one is 0.003)
    assert accuracy >= 0.95
    assert classifier.meta["train_accuracy"] >= accuracy
    train_feats, test_feats = classifier_features(classifier, digits.train), classifier_features(classifier, digits.test)
    assert test_feats.shape == (359, classifier.config["feature_dim"]) and test_feats.dtype == np.float64
    floor = frechet_distance(test_feats, train_feats)
    noise = torch.rand(359, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # uniform noise images are far from the digits compared with the held-out floor (measured 198x)
    assert frechet_distance(classifier_features(classifier, noise), train_feats) > 20 * floor


def test_classifier_is_deterministic(digits):
    x, y = digits.train[:300], digits.train_labels[:300]
    torch.manual_seed(123)
    before = torch.rand(1)
    options = dict(epochs=2, width=8, feature_dim=16)
    a = train_classifier(x, y, digits.image_shape, 10, seed=5, **options)
    b = train_classifier(x, y, digits.image_shape, 10, seed=5, **options)
    c = train_classifier(x, y, digits.image_shape, 10, seed=6, **options)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.head.weight, c.head.weight)
    # the global RNG and the deterministic-algorithms flag are left as they were
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)
    assert not torch.are_deterministic_algorithms_enabled()


def test_classifier_save_load_and_cache(tmp_path, digits):
    x, y = digits.train[:200], digits.train_labels[:200]
    options = dict(epochs=1, width=8, feature_dim=16, seed=0)
    clf = cached_classifier(tmp_path / "run", x, y, digits.image_shape, 10, **options)
    assert (tmp_path / "run" / "classifier.safetensors").is_file()
    meta = json.loads((tmp_path / "run" / "classifier.json").read_text())
    assert meta["format"] == "flowmatch-image-classifier" and meta["config"]["feature_dim"] == 16
    loaded = load_classifier(tmp_path / "run")
    np.testing.assert_array_equal(classifier_features(loaded, digits.test), classifier_features(clf, digits.test))
    assert loaded.meta == json.loads(json.dumps(clf.meta))
    # same data and options: the cached copy is used (same training time recorded, nothing retrained)
    again = cached_classifier(tmp_path / "run", x, y, digits.image_shape, 10, **options)
    assert again.meta["train_seconds"] == loaded.meta["train_seconds"]
    # other data: retrained and overwritten
    other = cached_classifier(tmp_path / "run", digits.train[:100], y[:100], digits.image_shape, 10, **options)
    assert other.meta["n_train"] == 100 and load_classifier(tmp_path / "run").meta["n_train"] == 100
    with pytest.raises(FlowmatchError, match="unknown options"):
        cached_classifier(tmp_path / "run", x, y, digits.image_shape, 10, epoch=3)


def test_classifier_bad_files(tmp_path, digits):
    with pytest.raises(FlowmatchError, match="classifier.json is missing"):
        load_classifier(tmp_path)
    clf = ImageClassifier((1, 8, 8), 10, width=4, feature_dim=4)
    save_classifier(clf, tmp_path)
    (tmp_path / "classifier.safetensors").write_bytes(b"garbage")
    with pytest.raises(FlowmatchError, match="cannot load the classifier weights"):
        load_classifier(tmp_path)
    (tmp_path / "classifier.json").write_text("{not json")
    with pytest.raises(FlowmatchError, match="cannot read JSON"):
        load_classifier(tmp_path)
    with pytest.raises(FlowmatchError, match=r"labels in 0..9"):
        train_classifier(digits.train[:10], torch.full((10,), 10), (1, 8, 8), 10)


def test_an_image_run_takes_and_gives_pixels_in_the_range_they_came_in(tmp_path):
    """8-bit pixels and the same pixels as floats in [0, 1] are one data set: the test rows are those pixels, the
    model trains on 2 p - 1, and samples, references and pictures are pixels again."""
    import flowmatch
    from flowmatch.data.dataset import load_dataset, pixel_standardizer

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 1, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", images=images, labels=np.arange(40) % 2)
    np.savez(tmp_path / "f32.npz", images=(images / 255).astype(np.float32), labels=np.arange(40) % 2)
    a, b = load_dataset(str(tmp_path / "u8.npz")), load_dataset(str(tmp_path / "f32.npz"))
    given = torch.as_tensor(images.reshape(40, -1) / 255, dtype=torch.float32)
    for ds in (a, b):
        assert ds.image_value_range == (0.0, 1.0)
        assert 0 <= float(ds.test.min()) and float(ds.test.max()) <= 1
        # each test row is one of the given images, as pixels (float32 2 p - 1 and back: within 1e-7)
        nearest = torch.cdist(ds.test, given).min(dim=1).values
        assert float(nearest.max()) < 1e-5
        assert float(ds.train.min()) < -0.9 and float(ds.train.max()) > 0.9  # the model's scale
    torch.testing.assert_close(a.test, b.test, rtol=0, atol=1e-6)
    flow = flowmatch.train(data=str(tmp_path / "u8.npz"), steps=3, progress=False, seed=0).flow
    assert torch.equal(flow.standardizer.mean, pixel_standardizer(16).mean) and torch.equal(
        flow.standardizer.std, pixel_standardizer(16).std
    )
    assert flow.dataset.image_value_range == (0.0, 1.0)  # flow.sample gives standardizer.inverse of the model's x: pixels
    # a run saved before pixels were its data coordinates (identity standardiser) keeps its range, [-1, 1]
    legacy = a.__class__(**{**a.__dict__, "standardizer": a.standardizer.identity(16)})
    assert legacy.image_value_range == (-1.0, 1.0)


def test_test_fraction_zero_trains_an_image_set_on_every_image():
    from flowmatch.data.images import load_image_set

    s = load_image_set("digits", test_fraction=0.0)
    assert len(s.train) == 1797 and len(s.test) == 0
    assert len(load_image_set("digits", test_fraction=1e-6).test) == 10  # any share above 0: at least one image a class
