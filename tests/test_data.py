"""Tests for flowmatch.data: built-in toy sets, data files, standardisation and datasets.

Statistical checks use fixed seeds and tolerances of several standard errors (SE = sample std / sqrt(n)),
so they are deterministic and far from flaky boundaries.
"""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from sklearn.datasets import make_circles, make_moons, make_swiss_roll

import flowmatch.data.toy as data_module
from flowmatch.data.dataset import Dataset, load_dataset
from flowmatch.data.files import load_array
from flowmatch.data.standardize import Standardizer
from flowmatch.data.toy import BUILTIN_NAMES, GAUSSIAN_MIXTURES, sample_builtin
from flowmatch.errors import FlowmatchError


def assert_mean_close(x: torch.Tensor, expected, k: float = 5.0) -> None:
    """Column means of x within k standard errors of `expected`."""
    x = x.double()
    se = x.std(dim=0) / math.sqrt(len(x))
    diff = (x.mean(dim=0) - torch.as_tensor(expected, dtype=torch.float64)).abs()
    assert (diff <= k * se).all(), f"mean {x.mean(0).tolist()} vs {expected}, SE {se.tolist()}"


def assert_std_close(x: torch.Tensor, expected: float, k: float = 5.0) -> None:
    """Column stds of a Gaussian-like sample within k standard errors (SE of a std: sigma / sqrt(2n))."""
    std = x.double().std(dim=0)
    se = expected / math.sqrt(2 * len(x))
    assert ((std - expected).abs() <= k * se).all(), f"std {std.tolist()} vs {expected}, SE {se}"


# --------------------------------------------------------------------------------------------------
# Built-in sets: shape, dtype, reproducibility
# --------------------------------------------------------------------------------------------------


def test_builtin_names():
    assert BUILTIN_NAMES[0] == "two-gaussians"
    assert set(BUILTIN_NAMES) == {
        "two-gaussians",
        "8gaussians",
        "checkerboard",
        "2spirals",
        "moons",
        "circles",
        "rings",
        "swissroll",
    }


@pytest.mark.parametrize("name", BUILTIN_NAMES)
@pytest.mark.parametrize("n", [0, 1, 3, 257])
def test_builtin_shape_and_dtype(name, n):
    x = sample_builtin(name, n, 0)
    assert x.shape == (n, 2)
    assert x.dtype == torch.float32
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_reproducible(name):
    a = sample_builtin(name, 500, 7)
    assert torch.equal(a, sample_builtin(name, 500, 7))
    assert torch.equal(a, sample_builtin(name, 500, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, sample_builtin(name, 500, 8))
    # A generator is advanced by each draw, so successive draws differ.
    g = torch.Generator().manual_seed(7)
    first, second = sample_builtin(name, 500, g), sample_builtin(name, 500, g)
    assert torch.equal(first, a) and not torch.equal(first, second)


def test_builtin_none_uses_global_generator():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        a = sample_builtin("moons", 100)
        torch.manual_seed(3)
        b = sample_builtin("moons", 100)
    assert torch.equal(a, b)


def test_builtin_bad_arguments():
    with pytest.raises(FlowmatchError, match="did you mean '8gaussians'") as e:
        sample_builtin("8gaussian", 10)
    for name in BUILTIN_NAMES:
        assert name in str(e.value)
    with pytest.raises(FlowmatchError, match="non-negative integer"):
        sample_builtin("moons", -1)
    with pytest.raises(FlowmatchError, match="non-negative integer"):
        sample_builtin("moons", 2.5)
    with pytest.raises(FlowmatchError, match="generator"):
        sample_builtin("moons", 10, "seed")


# --------------------------------------------------------------------------------------------------
# Built-in sets: the definitions
# --------------------------------------------------------------------------------------------------


def test_two_gaussians_definition():
    x = sample_builtin("two-gaussians", 20_000, 1)
    right = x[:, 0] > 0  # components 8 std apart: misassignment probability ~ 3e-5
    p = right.double().mean().item()
    assert abs(p - 0.5) <= 5 * math.sqrt(0.25 / len(x))  # 5 binomial SE (measured 0.7 SE)
    for side, centre in ((right, 4.0), (~right, -4.0)):
        assert_mean_close(x[side], [centre, 0.0])
        assert_std_close(x[side], 1.0)


def test_eight_gaussians_definition():
    x = sample_builtin("8gaussians", 16_000, 2)
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = 4 / 1.414 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    nearest = torch.cdist(x.double(), centres).argmin(dim=1)
    for k in range(8):
        cluster = x[nearest == k]
        p = len(cluster) / len(x)
        assert abs(p - 1 / 8) <= 5 * math.sqrt((1 / 8) * (7 / 8) / len(x))  # 5 binomial SE (measured <= 2.0 SE)
        assert_mean_close(cluster, centres[k])
        assert_std_close(cluster, 0.5 / 1.414)
    # |centre + noise| is Rice-distributed: mean slightly above 4 / 1.414.
    radius = stats.rice(b=4 / 0.5, scale=0.5 / 1.414)
    r = x.double().norm(dim=1)
    assert abs(r.mean().item() - radius.mean()) <= 5 * radius.std() / math.sqrt(len(x))  # 5 SE (measured 0.6 SE)


def test_checkerboard_definition():
    n = 32_000
    x = sample_builtin("checkerboard", n, 3).double()
    assert ((x >= -4) & (x < 4)).all()
    cells = torch.floor(x / 2).long()  # square indices in {-2, -1, 0, 1}^2
    assert ((cells.sum(dim=1) % 2) == 0).all(), "points outside the 8 even-parity squares"
    # Uniform mass: each of the 8 squares holds 1/8 of the points (multinomial SE).
    _, counts = torch.unique(cells, dim=0, return_counts=True)
    assert len(counts) == 8
    se = math.sqrt(n * (1 / 8) * (7 / 8))
    assert ((counts - n / 8).abs() <= 5 * se).all(), counts
    # Uniform within squares: the offset inside a square is U[0, 2)^2 (mean 1, std 2/sqrt(12)).
    offset = x - 2 * cells
    assert_mean_close(offset, [1.0, 1.0])
    # SE of the std of U[0, 2) over 32,000 draws: sqrt((mu4 - sigma^4) / (4 sigma^2 n)) = 0.0014, so 0.01 is
    # 7 SE (measured 0.0008)
    assert offset.std(dim=0).numpy() == pytest.approx([2 / math.sqrt(12)] * 2, abs=0.01)


def test_two_spirals_definition():
    n = 40_000
    x = sample_builtin("2spirals", n, 4).double()
    first, second = x[: n // 2], x[n // 2 :]
    # The second half mirrors the first before noise, so their sum is pure noise N(0, 2 * 0.1^2 I).
    assert_mean_close(first + second, [0.0, 0.0])
    assert_std_close(first + second, 0.1 * math.sqrt(2))
    # E[d] with t = 3 pi sqrt(U): integrate over U in [0, 1].
    ex = integrate.quad(lambda u: -math.cos(3 * math.pi * math.sqrt(u)) * 3 * math.pi * math.sqrt(u), 0, 1)[0]
    ey = integrate.quad(lambda u: math.sin(3 * math.pi * math.sqrt(u)) * 3 * math.pi * math.sqrt(u), 0, 1)[0]
    assert_mean_close(first, [(ex + 0.25) / 3, (ey + 0.25) / 3])
    # Radius: |d| <= 3 pi + 0.5 sqrt(2) before the /3, plus noise (6 sigma).
    assert (x.norm(dim=1) <= (3 * math.pi + 0.5 * math.sqrt(2)) / 3 + 6 * 0.1 * math.sqrt(2)).all()


def test_rings_definition():
    n = 4002  # 1000 on each of the three outer circles, 1002 on the innermost
    x = sample_builtin("rings", n, 5).double()
    r = x.norm(dim=1)
    radii = torch.tensor([3.0, 2.25, 1.5, 0.75], dtype=torch.float64)
    ring = (r[:, None] - radii).abs().argmin(dim=1)  # rings 0.75 apart, noise 0.08: no misassignment
    assert torch.bincount(ring, minlength=4).tolist() == [1000, 1000, 1000, 1002]
    for k, radius in enumerate(radii.tolist()):
        rk = r[ring == k]
        # Radial bias of isotropic noise ~ sigma^2 / (2 R) <= 0.005; SE 0.08 / sqrt(1000) = 0.0025.
        assert rk.mean().item() == pytest.approx(radius, abs=0.02)  # measured <= 0.0033 off
        assert rk.std().item() == pytest.approx(0.08, abs=0.01)  # SE 0.08 / sqrt(2000) = 0.0018: 5.5 SE (measured <= 0.0024)


def test_rings_uneven_counts():
    r = sample_builtin("rings", 10, 0).double().norm(dim=1)  # 2, 2, 2 and 4 points
    ring = (r[:, None] - torch.tensor([3.0, 2.25, 1.5, 0.75], dtype=torch.float64)).abs().argmin(dim=1)
    assert torch.bincount(ring, minlength=4).tolist() == [2, 2, 2, 4]


def _rows_sorted(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[np.lexsort(x.T[::-1])]


@pytest.mark.parametrize(
    "name, make, scale, offset",
    [
        ("moons", lambda n, noise: make_moons(n, shuffle=False, noise=noise), 2.0, [-1.0, -0.2]),
        ("circles", lambda n, noise: make_circles(n, shuffle=False, noise=noise, factor=0.5), 3.0, [0.0, 0.0]),
    ],
)
@pytest.mark.parametrize("n", [1, 7, 20_000])
def test_moons_and_circles_are_scikit_learns(name, make, scale, offset, n):
    """The same points as scikit-learn's noise-free layout, in random order, with its noise level and labels."""
    draw = getattr(data_module, f"_{name}")
    clean, k_clean = draw(n, torch.Generator().manual_seed(6), noise=0.0)
    noisy, k = draw(n, torch.Generator().manual_seed(6), noise=0.1)
    raw, labels = make(n, None)
    # float64 cos/sin of torch and numpy agree to a few ulp (measured 1.1e-15 after the scale)
    np.testing.assert_allclose(_rows_sorted(clean), _rows_sorted(raw * scale + offset), rtol=0, atol=1e-12)
    # each point keeps its class: the clean layout of class c is scikit-learn's class c (float64, as above)
    for c in (0, 1):
        np.testing.assert_allclose(_rows_sorted(clean[k_clean == c]), _rows_sorted(raw[labels == c] * scale + offset), atol=1e-12)
    assert torch.equal(k, k_clean) and k.bincount(minlength=2).tolist() == [n // 2, n - n // 2]
    if n == 20_000:  # the same draws, so noisy - clean is the noise alone: std 0.1 * scale (SE 0.0005 * scale)
        assert (noisy - clean).std().item() == pytest.approx(0.1 * scale, rel=0.02)
        assert not torch.equal(clean, _rows_sorted_tensor(clean))  # shuffled, not in layout order


def _rows_sorted_tensor(x):
    return torch.from_numpy(_rows_sorted(x))


def test_builtin_moons_and_circles_noise_levels():
    # noise 0.1 for moons (x2 after scaling) and 0.08 for circles (x3): std of the distance to the noise-free curve
    g = torch.Generator().manual_seed(6)
    x = sample_builtin("moons", 20_000, 6).double()
    clean, _ = data_module._moons(20_000, g, noise=0.0)
    # SE of a std over 40,000 noise values: 1 / sqrt(80,000) = 0.35%, so 2% is 5.7 SE (measured 0.73%)
    assert (x - clean).std().item() == pytest.approx(0.2, rel=0.02)
    # Noise-free moons have mean (1/2, 1/4); after * 2 + (-1, -0.2) that is (0, 0.3). The layout's mean is
    # exact; the noise's SE is 0.2 / sqrt(20,000) = 0.0014, so 0.01 is 7 SE (measured 0.0011)
    assert x.mean(dim=0).numpy() == pytest.approx([0.0, 0.3], abs=0.01)
    x = sample_builtin("circles", 20_000, 7).double()
    clean, _ = data_module._circles(20_000, torch.Generator().manual_seed(7), noise=0.0)
    assert (x - clean).std().item() == pytest.approx(0.24, rel=0.02)  # 5.7 SE, as above (measured 0.26%)


def test_swissroll_definition():
    n = 20_000
    x = sample_builtin("swissroll", n, 8).double()
    clean, _ = data_module._swissroll(n, torch.Generator().manual_seed(8), noise=0.0)
    # on the roll (t cos t, t sin t) / 5, with t distributed as scikit-learn's (uniform on [1.5 pi, 4.5 pi])
    t = clean.norm(dim=1) * 5
    # float64: t recovered from the norm, |t| < 15 (measured 5.0e-14)
    np.testing.assert_allclose((clean * 5).numpy(), torch.stack([t * torch.cos(t), t * torch.sin(t)], 1).numpy(), atol=1e-9)
    _, t_sklearn = make_swiss_roll(n_samples=n, noise=0.0, random_state=0)
    assert stats.ks_2samp(t.numpy(), t_sklearn).pvalue > 0.01  # fixed seeds: measured p = 0.14
    # noise 1.0, divided by 5; SE of the std 0.35%, so 2% is 5.7 SE (measured 0.45%)
    assert (x - clean).std().item() == pytest.approx(0.2, rel=0.02)


# --------------------------------------------------------------------------------------------------
# Standardizer
# --------------------------------------------------------------------------------------------------


def test_standardizer_fit_and_round_trip():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 3, generator=g) * torch.tensor([2.0, 0.5, 10.0]) + torch.tensor([1.0, -3.0, 100.0])
    s = Standardizer.fit(x)
    z = s.forward(x)
    assert z.dtype == torch.float32
    # z is computed in float32: the mean 100 rounded to float32 is off by <= ulp/2 = 3.8e-6, i.e. 4e-7 in z
    # after / std 10 (measured 2.9e-7 and 3.3e-8 off)
    assert z.double().mean(dim=0).numpy() == pytest.approx([0, 0, 0], abs=1e-5)
    assert z.double().std(dim=0, correction=0).numpy() == pytest.approx([1, 1, 1], abs=1e-5)
    # float32 round trips: z's round-off (|z| < 5: 3e-7) times std 10 plus x's (ulp(100) / 2 = 3.8e-6);
    # measured 9.5e-7 and 0
    torch.testing.assert_close(s.inverse(z), x, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s.forward(s.inverse(z)), z, rtol=1e-5, atol=1e-5)


def test_standardizer_zero_variance_column():
    x = torch.tensor([[1.0, 0.1], [2.0, 0.1], [3.0, 0.1]], dtype=torch.float64)
    s = Standardizer.fit(x)
    assert s.std.tolist() == pytest.approx([math.sqrt(2 / 3), 1.0])  # float64 (measured exact)
    assert s.fixed.tolist() == [False, True] and s.fixed_columns == [1]
    assert s.mean[1].item() == 0.1  # the column's own value, not a float64 mean of 0.1s (0.1 + 1.4e-17)
    assert s.forward(x)[:, 1].abs().max().item() == 0.0


def test_standardizer_fixed_column_comes_back_exactly():
    """Whatever the model puts in a constant column, samples hold the constant, in float32 and float64."""
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[:, 1] = 3.0
    s = Standardizer.fit(x)
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(1))
    back = s.inverse(z)
    assert back.dtype == torch.float32 and back[:, 1].tolist() == [3.0] * 50
    assert s.inverse(z.double())[:, 1].tolist() == [3.0] * 50
    torch.testing.assert_close(back[:, [0, 2]], (z[:, [0, 2]].double() * s.std[[0, 2]] + s.mean[[0, 2]]).float())
    assert s.log_abs_det() == pytest.approx(-math.log(s.std[0].item()) - math.log(s.std[2].item()))  # the fixed column adds 0
    d = json.loads(json.dumps(s.to_dict()))
    assert d["fixed"] == [1]
    s2 = Standardizer.from_dict(d)
    assert s2.fixed_columns == [1] and s2.inverse(z)[:, 1].tolist() == [3.0] * 50
    assert "fixed" not in Standardizer.fit(x[:, [0, 2]]).to_dict()  # checkpoints without constant columns are unchanged
    assert Standardizer.from_dict({"mean": [0.0], "std": [1.0]}).fixed_columns == []  # checkpoints saved before it


def test_data_file_with_constant_column_holds_it_fixed(tmp_path):
    x = np.random.default_rng(0).normal(size=(100, 2))
    x[:, 1] = 3.0
    np.save(tmp_path / "c.npy", x)
    ds = load_dataset(str(tmp_path / "c.npy"))
    assert ds.standardizer.fixed_columns == [1] and ds.train[:, 1].abs().max().item() == 0.0
    np.save(tmp_path / "same.npy", np.tile([[0.5, 3.0]], (10, 1)))
    with pytest.raises(FlowmatchError, match=r"all 10 rows are the same point \[0.5, 3.0\]"):
        load_dataset(str(tmp_path / "same.npy"))


def test_standardizer_log_abs_det():
    s = Standardizer(torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.25]))
    # float64 logs of powers of two (measured exact; approx's default 1e-6 relative)
    assert s.log_abs_det() == pytest.approx(-math.log(2.0) - math.log(0.25))
    jac = torch.autograd.functional.jacobian(s.forward, torch.tensor([0.3, 0.7], dtype=torch.float64))
    assert s.log_abs_det() == pytest.approx(torch.logdet(jac).item())  # float64 (measured exact)
    # Change of variables: a standard normal in model coordinates is N(mean, diag(std^2)) in data coordinates.
    x = torch.tensor([[0.0, 0.0], [1.5, -2.2]], dtype=torch.float64)
    log_p_model = torch.distributions.Normal(0.0, 1.0).log_prob(s.forward(x)).sum(dim=1)
    expected = stats.multivariate_normal(mean=[1.0, -2.0], cov=np.diag([4.0, 0.0625])).logpdf(x.numpy())
    np.testing.assert_allclose(log_p_model.numpy() + s.log_abs_det(), expected, rtol=1e-10)  # float64 (measured 1.5e-16)


def test_standardizer_identity_and_dim_check():
    s = Standardizer.identity(3)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.forward(x), x) and torch.equal(s.inverse(x), x)
    assert s.log_abs_det() == 0.0
    with pytest.raises(FlowmatchError, match="dimension 3"):
        s.forward(torch.zeros(4, 2))
    with pytest.raises(FlowmatchError, match="positive integer"):
        Standardizer.identity(0)


def test_standardizer_dict_round_trip():
    s = Standardizer(torch.tensor([1.0, -2.5]), torch.tensor([2.0, 0.125]))
    d = json.loads(json.dumps(s.to_dict()))
    s2 = Standardizer.from_dict(d)
    assert torch.equal(s2.mean, s.mean) and torch.equal(s2.std, s.std)


@pytest.mark.parametrize(
    "d, message",
    [
        ({"mean": [0.0, 1.0], "std": [1.0]}, "'mean' has 2 values but 'std' has 1"),
        ({"mean": [0.0], "std": [0.0]}, "std must be positive"),
        ({"mean": [0.0], "std": [-1.0]}, "std must be positive"),
        ({"mean": [float("nan")], "std": [1.0]}, "finite"),
        ({"mean": [0.0]}, "missing key 'std'"),
        ({"mean": "0", "std": [1.0]}, "list of numbers"),
        ({"mean": [True], "std": [1.0]}, "list of numbers"),
        ({"mean": [], "std": []}, "length >= 1"),
        ([1.0], "expected a mapping"),
        ({"mean": [0.0], "std": [1.0], "fixed": [1]}, "column indices in"),
        ({"mean": [0.0], "std": [1.0], "fixed": "0"}, "column indices in"),
        ({"mean": [0.0], "std": [2.0], "fixed": [0]}, "fixed .constant. column must have std 1"),
    ],
)
def test_standardizer_from_dict_errors(d, message):
    with pytest.raises(FlowmatchError, match=message):
        Standardizer.from_dict(d)


# --------------------------------------------------------------------------------------------------
# load_array: valid files
# --------------------------------------------------------------------------------------------------

POINTS = np.arange(12, dtype=np.float64).reshape(6, 2) / 4


def test_load_npy(tmp_path):
    path = tmp_path / "points.npy"
    np.save(path, POINTS.astype(np.float32))
    out = load_array(path)
    assert out.dtype == np.float64 and out.shape == (6, 2)
    np.testing.assert_array_equal(out, POINTS)
    np.save(path, np.arange(8).reshape(4, 2))  # integers are fine
    assert load_array(str(path)).dtype == np.float64


@pytest.mark.parametrize(
    "arrays, expected",
    [
        ({"data": POINTS, "x": -POINTS, "labels": np.zeros(6)}, POINTS),
        ({"x": POINTS, "other": -POINTS}, POINTS),
        ({"points": POINTS}, POINTS),
        ({"points": POINTS, "labels": np.zeros(6)}, POINTS),
    ],
)
def test_load_npz(tmp_path, arrays, expected):
    path = tmp_path / "points.npz"
    np.savez(path, **arrays)
    np.testing.assert_array_equal(load_array(path), expected)
    np.savez_compressed(path, **arrays)
    np.testing.assert_array_equal(load_array(path), expected)


@pytest.mark.parametrize(
    "text",
    [
        "0,0.25\n0.5,0.75\n1,1.25\n1.5,1.75\n2,2.25\n2.5,2.75\n",
        "x,y\n0,0.25\n0.5,0.75\n1,1.25\n1.5,1.75\n2,2.25\n2.5,2.75",
        '"x", "y"\n0, 0.25\n\n0.5, 0.75\n1,1.25\n# comment\n1.5,1.75\n2,2.25\n2.5,2.75\n\n',
        "\ufeffa,b\r\n0,0.25\r\n0.5,0.75\r\n1,1.25\r\n1.5,1.75\r\n2,2.25\r\n2.5,2.75\r\n",
    ],
    ids=["plain", "header", "spaces-blank-lines-comment", "bom-crlf"],
)
def test_load_csv(tmp_path, text):
    path = tmp_path / "points.csv"
    path.write_text(text, encoding="utf-8")
    np.testing.assert_array_equal(load_array(path), POINTS)


def test_load_csv_matches_savetxt(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3))
    path = tmp_path / "points.csv"
    np.savetxt(path, x, delimiter=",", header="a,b,c")
    np.testing.assert_allclose(load_array(path), x, rtol=1e-15)  # savetxt's %.18e round-trips float64 (measured exact)


# --------------------------------------------------------------------------------------------------
# load_array: bad files
# --------------------------------------------------------------------------------------------------


class _Explode:
    """Unpickling this would create the file `marker` (it must never happen)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_bytes(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _write_npy(tmp_path, name, array, **kwargs):
    path = tmp_path / name
    np.save(path, array, **kwargs)
    return path


def _write_npz(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _write_text(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_FILES = [
    ("missing", lambda p: p / "nope.npy", "no such file"),
    ("directory", lambda p: p, "is a directory"),
    ("extension", lambda p: _write_text(p, "points.txt", "1,2\n"), "unsupported file type '.txt'"),
    ("no-extension", lambda p: _write_text(p, "points", "1,2\n"), "unsupported file type"),
    ("empty-npy", lambda p: _write_bytes(p, "e.npy", b""), "the file is empty"),
    ("empty-csv", lambda p: _write_bytes(p, "e.csv", b""), "the file is empty"),
    ("blank-csv", lambda p: _write_text(p, "b.csv", "\n\n  \n"), "no data rows"),
    ("header-only-csv", lambda p: _write_text(p, "h.csv", "x,y\n"), "no data rows (only a header)"),
    ("zero-rows-npy", lambda p: _write_npy(p, "z.npy", np.zeros((0, 2))), "no data rows"),
    ("zero-cols-npy", lambda p: _write_npy(p, "z.npy", np.zeros((5, 0))), "0 dimensions"),
    ("1d", lambda p: _write_npy(p, "v.npy", np.zeros(7)), "expected a 2-D array of shape (N, D), got shape (7,)"),
    ("0d", lambda p: _write_npy(p, "s.npy", np.float64(1.0)), "got shape ()"),
    ("3d", lambda p: _write_npy(p, "c.npy", np.zeros((5, 2, 2))), "got shape (5, 2, 2)"),
    ("1d-csv", lambda p: _write_text(p, "v.csv", "1\n2\n3\n4\n"), None),  # (4, 1) is fine: 1-D points
    ("nan", lambda p: _write_npy(p, "n.npy", np.where(np.eye(6, 2) > 0, np.nan, 1.0)), "2 of 6 rows contain NaN"),
    ("inf", lambda p: _write_npy(p, "i.npy", np.array([[1, 2], [3, 4], [np.inf, 1], [5, 6]])), "1 of 4 rows"),
    ("nan-csv", lambda p: _write_text(p, "n.csv", "1,2\n3,nan\n5,6\n7,8\n"), "1 of 4 rows contain NaN"),
    ("few-rows", lambda p: _write_npy(p, "f.npy", np.zeros((3, 2))), "at least 4 rows, got 3"),
    ("few-rows-csv", lambda p: _write_text(p, "f.csv", "x,y\n1,2\n3,4\n"), "at least 4 rows, got 2"),
    ("text-npy", lambda p: _write_npy(p, "t.npy", np.array([["a", "b"]] * 4)), "expected a numeric array"),
    ("complex-npy", lambda p: _write_npy(p, "c.npy", np.ones((4, 2), complex)), "expected a numeric array"),
    (
        "non-numeric-header",
        lambda p: _write_text(p, "n.csv", "x,y\n1,2\n3,abc\n5,6\n7,8\n"),
        "non-numeric value 'abc' in column 'y' (column 2), row 2 (line 3)",
    ),
    (
        "non-numeric-no-header",
        lambda p: _write_text(p, "n.csv", "1,2\n3,4\n5,6\nseven,8\n"),
        "non-numeric value 'seven' in column 1, row 4 (line 4)",
    ),
    ("empty-cell", lambda p: _write_text(p, "n.csv", "1,2\n3,\n5,6\n7,8\n"), "non-numeric value '' in column 2"),
    (
        "semicolons",
        lambda p: _write_text(p, "s.csv", "1;2\n3;4\n5;6\n7;8\n"),
        "'3;4' in column '1;2' (column 1), row 1 (line 2); values must be separated by commas",
    ),
    ("ragged", lambda p: _write_text(p, "r.csv", "1,2\n3,4,5\n5,6\n7,8\n"), "row 2 (line 2) has 3 values"),
    ("ragged-header", lambda p: _write_text(p, "r.csv", "x,y\n1,2\n3\n5,6\n7,8\n"), "the header has 2"),
    ("not-utf8", lambda p: _write_bytes(p, "b.csv", b"\xff\xfe\x00\x01" * 10), "not a UTF-8 text file"),
    ("garbage-npy", lambda p: _write_bytes(p, "g.npy", b"this is not numpy" * 10), "not a valid .npy file"),
    (
        "truncated-npy",
        lambda p: _write_bytes(p, "t.npy", (_write_npy(p, "full.npy", np.zeros((100, 2))).read_bytes())[:200]),
        "not a valid .npy file",
    ),
    ("garbage-npz", lambda p: _write_bytes(p, "g.npz", b"PK\x03\x04 broken zip" * 10), "not a valid .npz file"),
    (
        "truncated-npz",
        lambda p: _write_bytes(p, "t.npz", _write_npz(p, "full.npz", data=np.zeros((100, 2))).read_bytes()[:300]),
        "not a valid .npz file",
    ),
    (
        "npz-ambiguous",
        lambda p: _write_npz(p, "a.npz", a=POINTS, b=POINTS, labels=np.zeros(6)),
        "several arrays (a, b, labels) and none named 'data' or 'x'",
    ),
    ("npz-only-labels", lambda p: _write_npz(p, "l.npz", labels=np.zeros(6)), "no data array in the archive"),
    (
        "object-npy",
        lambda p: _write_npy(p, "o.npy", np.array([_Explode(p / "PWNED")] * 4, dtype=object), allow_pickle=True),
        "holds Python objects",
    ),
    (
        "object-npz",
        lambda p: _write_npz(p, "o.npz", data=np.array([_Explode(p / "PWNED")] * 4, dtype=object)),
        "holds Python objects",
    ),
    (
        "pickle-as-npy",
        lambda p: _write_bytes(p, "p.npy", __import__("pickle").dumps(_Explode(p / "PWNED"))),
        "not a valid .npy file",
    ),
]


@pytest.mark.parametrize("make, message", [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_load_array_bad_input(tmp_path, make, message):
    path = make(tmp_path)
    if message is None:
        assert load_array(path).shape == (4, 1)
        return
    with pytest.raises(FlowmatchError) as e:
        load_array(path)
    text = str(e.value)
    assert message in text
    assert os.fspath(path) in text  # names the file
    assert "\n" not in text
    assert not (tmp_path / "PWNED").exists(), "a pickle was loaded"


# --------------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["two-gaussians", "moons"])
def test_load_dataset_builtin(name):
    ds = load_dataset(name, n_test=300, seed=4)
    assert isinstance(ds, Dataset)
    assert (ds.name, ds.dim, ds.builtin, ds.train) == (name, 2, True, None)
    assert ds.test.shape == (300, 2) and ds.test.dtype == torch.float32
    assert torch.equal(ds.standardizer.mean, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(ds.standardizer.std, torch.ones(2, dtype=torch.float64))
    # Fixed test set, different from the draws a training run seeded with `seed` makes.
    assert torch.equal(ds.test, load_dataset(name, n_test=300, seed=4).test)
    assert not torch.equal(ds.test, load_dataset(name, n_test=300, seed=5).test)
    assert not torch.equal(ds.test, sample_builtin(name, 300, 4))
    batch = ds.sample(64, torch.Generator().manual_seed(0))
    assert batch.shape == (64, 2) and batch.dtype == torch.float32
    assert torch.equal(batch, sample_builtin(name, 64, 0))


def test_load_dataset_builtin_standardized():
    ds = load_dataset("two-gaussians", n_test=100, standardize=True)
    # Fitted on 100,000 fresh points: std of the mixture is sqrt(16 + 1) in x, 1 in y; SE of those stds
    # 0.0031 and 0.0022, so 0.03 is ~10 SE (measured 0.0005 and 0.0012 off)
    assert ds.standardizer.std.tolist() == pytest.approx([math.sqrt(17), 1.0], abs=0.03)
    batch = ds.sample(20_000, torch.Generator().manual_seed(1))
    # SE of the mean 1 / sqrt(20,000) = 0.007: 4.2 SE (measured 0.0038); SE of the std <= 0.0035 plus the
    # fitted std's error: 0.02 is ~5 SE (measured 0.0022)
    assert batch.double().mean(dim=0).numpy() == pytest.approx([0, 0], abs=0.03)
    assert batch.double().std(dim=0).numpy() == pytest.approx([1, 1], abs=0.02)
    assert ds.test.double().std(dim=0)[0].item() > 3  # test stays in data coordinates


def _distinct_points(n, d=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * [3.0, 0.5][:d] + [10.0, -1.0][:d]


def _rows(x):
    return {tuple(np.round(row, 4)) for row in np.asarray(x, dtype=np.float64)}


def test_load_dataset_file_split(tmp_path):
    x = _distinct_points(100)
    path = tmp_path / "points.npy"
    np.save(path, x)
    ds = load_dataset(str(path), seed=3)
    assert (ds.name, ds.dim, ds.builtin) == (str(path), 2, False)
    assert ds.test.shape == (20, 2) and ds.train.shape == (80, 2)
    assert ds.test.dtype == torch.float32 and ds.train.dtype == torch.float32
    # Train is standardised (fit on train only); test is in data coordinates. Float32 storage: ~6e-8 per
    # value (measured 6.4e-9 and 1.7e-9 off)
    assert ds.train.double().mean(dim=0).numpy() == pytest.approx([0, 0], abs=1e-5)
    assert ds.train.double().std(dim=0, correction=0).numpy() == pytest.approx([1, 1], abs=1e-5)
    train_data = ds.to_data(ds.train)
    assert _rows(train_data).isdisjoint(_rows(ds.test))
    assert _rows(train_data) | _rows(ds.test) == _rows(x)
    # Same seed, same split; another seed, another split.
    assert torch.equal(ds.test, load_dataset(path, seed=3).test)
    assert not torch.equal(ds.test, load_dataset(path, seed=4).test)
    # Batches are rows of train, drawn with the generator.
    batch = ds.sample(500, torch.Generator().manual_seed(0))
    assert batch.shape == (500, 2)
    assert _rows(batch) <= _rows(ds.train)
    assert torch.equal(batch, ds.sample(500, torch.Generator().manual_seed(0)))
    torch.testing.assert_close(ds.to_model(ds.to_data(batch)), batch, atol=1e-5, rtol=1e-5)  # float32 round trip (measured 2.4e-7)


@pytest.mark.parametrize(
    "n_rows, kwargs, n_held",
    [
        (100, {"test_fraction": 0.5}, 50),
        (100, {"n_test": 7}, 7),  # capped at n_test
        (10, {}, 2),  # round(0.2 * 10) = 2
        (4, {}, 2),  # at least 2 rows held out, 2 left to train
        (5, {"test_fraction": 0.9}, 3),  # at least 2 rows left to train
    ],
)
def test_load_dataset_split_sizes(tmp_path, n_rows, kwargs, n_held):
    path = tmp_path / "points.csv"
    np.savetxt(path, _distinct_points(n_rows), delimiter=",")
    ds = load_dataset(path, **kwargs)
    assert len(ds.test) == n_held and len(ds.train) == n_rows - n_held


def test_load_dataset_file_not_standardized(tmp_path):
    x = _distinct_points(50, d=1)
    path = tmp_path / "points.npz"
    np.savez(path, x=x, labels=np.arange(50))
    ds = load_dataset(path, standardize=False)
    assert ds.dim == 1 and ds.standardizer.log_abs_det() == 0.0
    assert _rows(ds.train) | _rows(ds.test) == _rows(x)


@pytest.mark.parametrize("name, rows, dim, classes", [("wine", 178, 13, 3), ("breast-cancer", 569, 30, 2)])
def test_bundled_tables_split_and_standardise_like_a_file(name, rows, dim, classes):
    from sklearn import datasets

    bunch = {"wine": datasets.load_wine, "breast-cancer": datasets.load_breast_cancer}[name]()
    ds = load_dataset(name, seed=3)
    n_test = round(0.2 * rows)
    assert (ds.dim, ds.builtin, ds.num_classes) == (dim, False, classes)
    assert ds.test.shape == (n_test, dim) and ds.train.shape == (rows - n_test, dim)
    # train rows are standardised on themselves; test rows stay in data coordinates (float32 storage:
    # measured <= 1.1e-8 off)
    assert ds.train.double().mean(0).abs().max().item() < 1e-5
    assert ds.train.double().std(0, unbiased=False).numpy() == pytest.approx(np.ones(dim), abs=1e-5)
    # every original row comes back once (float32 storage: relative error ~1e-7), with its label
    from scipy.spatial.distance import cdist

    back = np.vstack([ds.standardizer.inverse(ds.train.double()).numpy(), ds.test.double().numpy()])
    scale = bunch.data.std(0)
    nearest = cdist(back / scale, bunch.data / scale).argmin(1)
    assert sorted(nearest) == list(range(rows))
    assert np.abs(back - bunch.data[nearest]).max() / np.abs(bunch.data).max() < 1e-6  # measured 2.4e-8
    labels = np.concatenate([ds.train_labels.numpy(), ds.test_labels.numpy()])
    assert np.array_equal(labels, bunch.target[nearest])
    assert not torch.equal(ds.test, load_dataset(name, seed=4).test)


def test_load_dataset_unknown_spec(tmp_path):
    with pytest.raises(FlowmatchError, match="unknown data 'nosuch': not a file and not one of the built-in"):
        load_dataset("nosuch")
    with pytest.raises(FlowmatchError, match="did you mean 'moons'"):
        load_dataset("moon")
    with pytest.raises(FlowmatchError, match="did you mean 'wine'"):
        load_dataset("wien")
    for spec in ("points.npy", "data/points", str(tmp_path / "missing.csv")):
        with pytest.raises(FlowmatchError, match="no such file"):
            load_dataset(spec)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"n_test": 0}, "n_test"),
        ({"seed": -1}, "seed"),
        ({"standardize": "yes"}, "standardize"),
    ],
)
def test_load_dataset_bad_arguments(kwargs, message):
    with pytest.raises(FlowmatchError, match=message):
        load_dataset("moons", **kwargs)


def test_load_dataset_file_needs_two_test_rows(tmp_path):
    path = tmp_path / "points.npy"
    np.save(path, _distinct_points(10))
    with pytest.raises(FlowmatchError, match="n_test must be at least 2"):
        load_dataset(path, n_test=1)


def test_gaussian_mixture_density_in_model_coordinates():
    # The built-in mixtures as a posterior target's source. Their densities integrate to 1 and match
    # their samplers' entropy (tests/test_evaluation.py); here, the change of coordinates: under an
    # isotropic standardiser z = (x - m) / s, p_z(z) = p_x(s z + m) s^D.
    mixture = GAUSSIAN_MIXTURES["8gaussians"]
    dataset = load_dataset("8gaussians")
    torch.testing.assert_close(dataset.gaussian_mixture.means, mixture.means)  # float64 (measured exact)
    mean = torch.tensor([0.5, -1.0], dtype=torch.float64)
    scaled = dataclasses.replace(dataset, standardizer=Standardizer(mean, torch.tensor([2.0, 2.0])))
    z = torch.randn(100, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # float64 (assert_close's default rtol 1e-7; measured 1e-15 relative)
    torch.testing.assert_close(scaled.gaussian_mixture.log_prob(z), mixture.log_prob(2 * z + mean) + 2 * math.log(2.0))
    # per-column scales make the components anisotropic: no mixture; nor for sets that are not mixtures
    assert load_dataset("two-gaussians", standardize=True).gaussian_mixture is None
    assert load_dataset("moons").gaussian_mixture is None and load_dataset("wine").gaussian_mixture is None
