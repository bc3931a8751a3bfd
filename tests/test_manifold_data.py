"""Manifold data sets, file readers, metrics and pictures: flowmatch.data.manifolds, .metrics and flowmatch.plots.manifolds."""

import math

import numpy as np
import pytest
import torch
from scipy import special

from flowmatch.data.manifolds import (
    ENTROPY,
    MANIFOLD_SETS,
    AntipodalVMFMixture,
    load_manifold_data,
    sample_vmf,
    sphere_to_latlon,
    vmf_log_normaliser,
)
from flowmatch.errors import FlowmatchError
from flowmatch.evaluation.geodesic import (
    format_manifold_report,
    geodesic_mmd,
    geodesic_w2,
    kernel_features,
    manifold_report,
    mmd_kernel,
)
from flowmatch.manifolds.manifolds import make_manifold, quaternion_to_matrix
from flowmatch.plots.manifolds import plot_manifold, plot_so3, plot_sphere, plot_torus

PNG = b"\x89PNG\r\n\x1a\n"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- built-in sets -------------------------------------------------------------------------------------
def _assert_on_manifold(x: torch.Tensor, name: str, tol: float) -> None:
    if name == "torus":
        assert bool(((x >= -math.pi) & (x < math.pi)).all())
    else:
        assert float((x.norm(dim=1) - 1).abs().max()) < tol
    if name == "so3":
        assert bool((x[:, 0] >= 0).all())


@pytest.mark.parametrize("name", list(MANIFOLD_SETS))
def test_samples_lie_on_the_manifold(name):
    data = load_manifold_data(name)
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-5)):
        x = data.sample(2000, generator=3, dtype=dtype)
        assert x.dtype == dtype and x.shape == (2000, data.manifold.ambient_dim)
        _assert_on_manifold(x, data.manifold.name, tol)
        data.manifold.check(x)
    assert torch.equal(data.sample(50, generator=5), data.sample(50, generator=5))


@pytest.mark.parametrize("name", list(MANIFOLD_SETS))
def test_densities_integrate_to_one(name):
    """E_u[p(x) / u(x)] = 1 under the uniform law u of the manifold's volume measure, to 4 standard errors;
    and the sampler agrees with the density: -E_p[log p] from samples = -E_u[(p/u) log p]."""
    data = load_manifold_data(name)
    m = data.manifold
    u = m.random_uniform(200_000, generator=_gen(11), dtype=torch.float64)
    log_p = data.log_prob(u)
    ratio = torch.exp(log_p - m.uniform_log_prob(u))
    se = float(ratio.std()) / math.sqrt(len(ratio))
    assert abs(float(ratio.mean()) - 1) < 4 * se + 1e-12, (float(ratio.mean()), se)

    weighted = torch.where(ratio > 0, -ratio * log_p, torch.zeros_like(ratio))  # p log p = 0 where p = 0
    h_uniform, h_uniform_se = float(weighted.mean()), float(weighted.std()) / math.sqrt(len(weighted))
    h_samples, h_samples_se = data.entropy(n=50_000, seed=1)
    assert abs(h_uniform - h_samples) < 4 * math.hypot(h_uniform_se, h_samples_se) + 1e-12
    h_table, h_table_se = ENTROPY[name]
    assert abs(h_table - h_samples) < 4 * math.hypot(h_table_se, h_samples_se) + 1e-3


def test_checkerboard_is_exactly_log_2pi():
    data = load_manifold_data("S2-checkerboard")
    x = data.sample(1000, generator=0, dtype=torch.float64)
    assert torch.allclose(data.log_prob(x), torch.full((1000,), -math.log(2 * math.pi), dtype=torch.float64))
    u = data.manifold.random_uniform(20_000, generator=_gen(1), dtype=torch.float64)
    assert abs(float(torch.isfinite(data.log_prob(u)).double().mean()) - 0.5) < 0.02  # black cells are half the sphere


@pytest.mark.parametrize("kappa", [0.5, 5.0, 50.0])
def test_vmf_on_s2_mean_resultant_length(kappa):
    """E[mu . x] = A(kappa) = coth(kappa) - 1/kappa for the exact inverse-CDF sampler on S^2."""
    mean = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    mean = mean / mean.norm()
    x = sample_vmf(mean, kappa, 40_000, generator=7)
    assert float((x.norm(dim=1) - 1).abs().max()) < 1e-12
    t = x @ mean
    expected = 1 / math.tanh(kappa) - 1 / kappa
    assert abs(float(t.mean()) - expected) < 4 * float(t.std()) / math.sqrt(len(t))
    resultant = x.mean(0)
    assert float(resultant @ mean / resultant.norm()) > 0.99  # the mean direction is mu


@pytest.mark.parametrize("kappa", [1.0, 10.0, 100.0])
def test_wood_sampler_on_s3_mean_resultant_length(kappa):
    """Wood's rejection sampler on S^3: E[mu . x] = I_2(kappa) / I_1(kappa)."""
    mean = torch.tensor([0.5, 0.5, -0.5, 0.5], dtype=torch.float64)
    x = sample_vmf(mean, kappa, 40_000, generator=8)
    t = x @ mean
    expected = special.ive(2, kappa) / special.ive(1, kappa)
    assert abs(float(t.mean()) - expected) < 4 * float(t.std()) / math.sqrt(len(t))


def test_vmf_normalisers_match_the_closed_forms():
    for kappa in (0.3, 4.0, 40.0):
        assert math.isclose(vmf_log_normaliser(kappa, 3) - kappa, math.log(kappa / (4 * math.pi * math.sinh(kappa))), rel_tol=1e-12)
        c4 = kappa / (4 * math.pi**2 * special.iv(1, kappa))
        assert math.isclose(vmf_log_normaliser(kappa, 4) - kappa, math.log(c4), rel_tol=1e-12)


def test_so3_density_is_the_doubled_symmetric_vmf():
    """One component: p_SO3(q) = 2 C_4 cosh(kappa mu.q) w.r.t. the S^3/± volume, the same for q and -q."""
    kappa, mu = 7.0, torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    data = AntipodalVMFMixture("one", make_manifold("so3"), [1.0], mu[None], [kappa])
    q = make_manifold("so3").random_uniform(100, generator=_gen(2), dtype=torch.float64)
    c4 = kappa / (4 * math.pi**2 * special.iv(1, kappa))
    expected = torch.log(2 * c4 * torch.cosh(kappa * (q @ mu)))
    assert torch.allclose(data.log_prob(q), expected, atol=1e-10)
    assert torch.allclose(data.log_prob(-q), expected, atol=1e-10)


# -- user files ----------------------------------------------------------------------------------------
LATLON = [(10.5, 20.25), (-45.0, 170.0), (60.0, -120.0), (0.0, 0.0), (89.0, 45.0)]


def _write(path, text):
    path.write_text(text)
    return path


def test_latitude_longitude_round_trip(tmp_path):
    rows = "\n".join(f"{lat},{lon},site{i}" for i, (lat, lon) in enumerate(LATLON))
    data = load_manifold_data(_write(tmp_path / "sites.csv", f"Latitude,Lon,name\n{rows}\n"))
    assert data.manifold.name == "sphere" and len(data) == len(LATLON)
    x = data.points
    assert float((x.norm(dim=1) - 1).abs().max()) < 1e-12
    lat, lon = sphere_to_latlon(x)
    expected = torch.tensor(LATLON, dtype=torch.float64)
    assert torch.allclose(torch.rad2deg(lat), expected[:, 0], atol=1e-9)
    assert torch.allclose(torch.rad2deg(lon), expected[:, 1], atol=1e-9)
    # longitudes in [180, 360] are the same places as lon - 360; a (n, 2) .npy with manifold="sphere"
    np.save(tmp_path / "east.npy", np.array([[10.0, 350.0], [20.0, 190.0], [0.0, 90.0], [-5.0, 0.0]]))
    lat, lon = sphere_to_latlon(load_manifold_data(tmp_path / "east.npy", "sphere").points)
    assert torch.allclose(torch.rad2deg(lon), torch.tensor([-10.0, -170.0, 90.0, 0.0], dtype=torch.float64), atol=1e-9)
    assert data.sample(3, generator=0).shape == (3, 3)


def test_torus_and_quaternion_files(tmp_path):
    angles = _write(tmp_path / "dihedral.csv", "phi,psi\n-60,-45\n350,10\n180,-180\n90,270\n")
    data = load_manifold_data(angles, "torus", units="degrees")
    expected = torch.deg2rad(torch.tensor([[-60.0, -45.0], [-10.0, 10.0], [-180.0, -180.0], [90.0, -90.0]], dtype=torch.float64))
    assert data.manifold.name == "torus" and torch.allclose(data.points, expected, atol=1e-12)
    swapped = load_manifold_data(angles, make_manifold("torus", 2), columns="psi, phi", units="degrees")
    assert torch.allclose(swapped.points, expected.flip(1), atol=1e-12)
    with pytest.raises(FlowmatchError, match="the file holds 2 coordinates per point, torus has 3"):
        load_manifold_data(angles, make_manifold("torus", 3), units="degrees")
    with pytest.raises(FlowmatchError, match="no column 'omega'"):
        load_manifold_data(angles, "torus", columns=["phi", "omega"], units="degrees")
    np.save(tmp_path / "rad.npy", np.array([[0.5, 4.0], [-3.5, 1.0], [0.0, 0.0], [1.0, 2.0]]))
    rad = load_manifold_data(tmp_path / "rad.npy", "torus", units="radians").points
    assert float(rad.max()) < math.pi and float(rad.min()) >= -math.pi
    assert math.isclose(float(rad[0, 1]), 4.0 - 2 * math.pi)

    q = torch.nn.functional.normalize(torch.randn(6, 4, generator=_gen(4), dtype=torch.float64), dim=1)
    text = "w,x,y,z\n" + "\n".join(",".join(f"{v:.17g}" for v in row) for row in q.tolist())
    so3 = load_manifold_data(_write(tmp_path / "rot.csv", text))
    assert so3.manifold.name == "so3"
    assert bool((so3.points[:, 0] >= 0).all())
    assert torch.allclose(quaternion_to_matrix(so3.points), quaternion_to_matrix(q), atol=1e-12)  # same rotations
    np.save(tmp_path / "rot.npy", q.numpy())
    assert load_manifold_data(tmp_path / "rot.npy").manifold.name == "so3"


BAD_CSV = [
    ("lat,lon\n10,20\n0,0\n91,5\n1,1\n", None, r"row 3, column 'lat': latitude 91 degrees is outside \[-90, 90\]"),
    ("lat,lon\n10,20\n0,400\n5,5\n1,1\n", None, r"row 2, column 'lon': longitude 400 degrees is outside \[-180, 360\]"),
    ("w,x,y,z\n1,0,0,0\n0,1,0,0\n1.2,0,0,0\n0,0,0,1\n", None, r"row 3: quaternion norm 1\.2, not 1"),
    ("lat,lon\n10,20\nnan,5\n5,5\n1,1\n", None, r"row 2, column 'lat': empty or NaN cell"),
    ("lat,lon\n10,20\n3,\n5,5\n1,1\n", None, r"row 2, column 'lon': empty or NaN cell"),
    ("lat,lon\n10,20\n3,4\n5,5\nabc,1\n", None, r"row 4, column 'lat': 'abc' is not a number"),
    ("lat,lon\n10,20\n3,4\n5,5\n1,inf\n", None, r"column 'lon' has a non-finite value \(inf\) at line 5"),
    ("lat,elevation\n10,20\n3,4\n5,5\n1,1\n", "sphere", r"no longitude column \(looked for lon, lng, long, longitude"),
    ("a,b\n10,20\n3,4\n5,5\n1,1\n", None, r"cannot tell which manifold"),
    ("a,b\n10,20\n3,4\n5,5\n1,1\n", "torus", r"units='degrees' or units='radians'"),
    ("lat,lon\n10,20\n3,4\n", None, r"2 data rows; a table needs at least 4"),
    ("10,20\n3,4\n5,5\n1,1\n2,2\n", None, r"a CSV needs a header row"),
]


@pytest.mark.parametrize(("text", "manifold", "message"), BAD_CSV)
def test_bad_csv_files_name_the_row_and_column(tmp_path, text, manifold, message):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(FlowmatchError, match=message) as info:
        load_manifold_data(path, manifold)
    assert str(path) in str(info.value)


def test_bad_arrays_and_names(tmp_path):
    a = np.ones((5, 4)) * 0.5
    a[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", a)
    with pytest.raises(FlowmatchError, match=r"row 3, column 2: nan is not a finite number"):
        load_manifold_data(tmp_path / "nan.npy")
    b = np.ones((5, 4)) * 0.5
    b[3] *= 1.1
    np.save(tmp_path / "norm.npy", b)
    with pytest.raises(FlowmatchError, match=r"row 4: quaternion norm 1\.1, not 1"):
        load_manifold_data(tmp_path / "norm.npy")
    np.save(tmp_path / "few.npy", np.ones((2, 4)) * 0.5)
    with pytest.raises(FlowmatchError, match="2 rows; need at least 4"):
        load_manifold_data(tmp_path / "few.npy")
    with pytest.raises(FlowmatchError, match="did you mean 'S2-vmf'"):
        load_manifold_data("S2-vfm")
    with pytest.raises(FlowmatchError, match="lives on the sphere S\\^2, not torus"):
        load_manifold_data("S2-vmf", "torus")


# -- metrics -------------------------------------------------------------------------------------------
def test_w2_of_a_set_with_itself_is_zero():
    for name in MANIFOLD_SETS:
        data = load_manifold_data(name)
        x = data.sample(150, generator=1, dtype=torch.float64)
        assert geodesic_w2(x, x, data.manifold) < 1e-6
    so3 = load_manifold_data("SO3-multimodal")
    q = so3.sample(150, generator=2, dtype=torch.float64)
    assert geodesic_w2(q, -q, so3.manifold) < 1e-6  # q and -q are the same rotations


@pytest.mark.parametrize("centre", [(0.0, 0.0), (3.0, -3.0)])
def test_torus_w2_of_a_shift_is_the_shift(centre):
    """A concentrated set and its copy shifted by a constant angle a: W2 = |a|, also across the seam at ±pi."""
    torus = make_manifold("torus", 2)
    x = torus.projx(torch.tensor(centre, dtype=torch.float64) + 0.3 * torch.randn(200, 2, generator=_gen(3), dtype=torch.float64))
    a = torch.tensor([0.2, -0.15], dtype=torch.float64)
    assert math.isclose(geodesic_w2(x, torus.projx(x + a), torus), float(a.norm()), rel_tol=1e-6)


@pytest.mark.parametrize(("name", "other"), [("S2-vmf", "S2-checkerboard"), ("T2-wrapped", None), ("SO3-multimodal", None)])
def test_mmd_floor_and_separation(name, other):
    """MMD^2 of two independent draws of one law is within a tolerance of 4 rms of the null values measured on
    5 other seeded pairs; between different laws (or the law and the uniform one) it is above twice that."""
    data = load_manifold_data(name)
    m, n = data.manifold, 1000
    draw = lambda seed: data.sample(n, generator=seed, dtype=torch.float64)  # noqa: E731
    null = [geodesic_mmd(draw(2 * s), draw(2 * s + 1), m) for s in range(5)]
    tolerance = 4 * math.sqrt(sum(v * v for v in null) / len(null))
    assert abs(geodesic_mmd(draw(100), draw(101), m)) < tolerance
    different = (
        load_manifold_data(other).sample(n, generator=102, dtype=torch.float64) if other else m.random_uniform(n, _gen(102), torch.float64)
    )
    assert geodesic_mmd(different, draw(103), m) > 2 * tolerance
    assert mmd_kernel(m)


def test_kernels_are_positive_definite_and_sign_invariant():
    for name in MANIFOLD_SETS:
        data = load_manifold_data(name)
        x = data.sample(200, generator=4, dtype=torch.float64)
        f = kernel_features(x, data.manifold)
        gram = torch.exp(-(torch.cdist(f, f) ** 2) / (2 * 0.5**2))
        assert float(torch.linalg.eigvalsh(gram).min()) > -1e-9
    so3 = make_manifold("so3")
    q, p = so3.random_uniform(50, _gen(5), torch.float64), so3.random_uniform(50, _gen(6), torch.float64)
    frobenius = (kernel_features(q, so3) - kernel_features(p, so3)).norm(dim=1)
    assert torch.allclose(frobenius, 2 * math.sqrt(2) * torch.sin(so3.dist(q, p) / 2), atol=1e-10)
    assert math.isclose(geodesic_mmd(q, p, so3, bandwidth=1.0), geodesic_mmd(q, -p, so3, bandwidth=1.0), abs_tol=1e-12)


def test_report_floors_memorisation_and_likelihood():
    data = load_manifold_data("S2-vmf")
    m, n = data.manifold, 300
    samples = [data.sample(n, generator=10 + k, dtype=torch.float64) for k in range(3)]
    held = [data.sample(n, generator=20 + k, dtype=torch.float64) for k in range(3)]
    train = data.sample(1000, generator=30, dtype=torch.float64)
    uniform = m.uniform_log_prob
    report = manifold_report(samples, held, train, m, log_prob=data.log_prob, model_log_prob=uniform)
    assert len(report["w2"]["values"]) == len(report["w2"]["floor"]["values"]) == 3
    assert math.isclose(report["w2"]["floor"]["values"][0], geodesic_w2(held[1], held[0], m))
    assert 0 < report["w2"]["floor"]["median"] and report["w2"]["median"] < 2 * report["w2"]["floor"]["median"]
    memo = report["memorisation"]
    assert abs(memo["near_share"]["median"] - 0.5) < 0.15 and abs(memo["near_share"]["heldout"] - 0.5) < 0.15
    assert not memo["flagged"]
    lik = report["likelihood"]
    assert abs(lik["entropy"] - ENTROPY["S2-vmf"][0]) < 4 * lik["entropy_se"]
    assert math.isclose(lik["kl"], math.log(4 * math.pi) - lik["entropy"], rel_tol=1e-9)  # KL(p || uniform) = log vol - H
    assert math.isclose(lik["nll"], math.log(4 * math.pi))
    assert "floor" in format_manifold_report(report)

    copies = [train[k * n : (k + 1) * n] for k in range(3)]
    copied = manifold_report(copies, held, train, m, log_prob=data.log_prob, model_log_prob=data.log_prob)
    assert copied["memorisation"]["flagged"] and copied["memorisation"]["near_share"]["median"] == 1.0
    assert copied["memorisation"]["dcr_ratio"]["median"] < 1e-3
    assert copied["likelihood"]["kl"] == 0.0
    with pytest.raises(FlowmatchError, match="held-out sets"):
        manifold_report(samples, held[:1], train, m)


# -- pictures ------------------------------------------------------------------------------------------
def test_pictures_are_written(tmp_path):
    for name in MANIFOLD_SETS:
        data = load_manifold_data(name)
        out = plot_manifold(
            data.sample(400, generator=1), data.manifold, reference=data.sample(400, generator=2), path=tmp_path / f"{name}.png"
        )
        assert out.read_bytes()[:8] == PNG
    sphere = load_manifold_data("S2-vmf").sample(300, generator=3)
    plot_sphere(sphere, path=tmp_path / "scatter.png", kind="scatter")
    plot_torus(load_manifold_data("T2-wrapped").sample(300, generator=3), path=tmp_path / "rad.png", degrees=False)
    plot_so3(load_manifold_data("SO3-multimodal").sample(300, generator=3), path=tmp_path / "so3.png")
    plot_manifold(torch.randn(100, 2, generator=_gen(0)), make_manifold("euclidean", 2), path=tmp_path / "flat.png")
    for file in ("scatter.png", "rad.png", "so3.png", "flat.png"):
        assert (tmp_path / file).read_bytes()[:8] == PNG
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
