"""Tests for flowmatch.solvers: orders of accuracy, stage times, NFE accounting, grids, errors.

Reference problems (float64, exact solutions in closed form):

- autonomous linear ODE dx/dt = A x, x(1) = expm(A) x0 (torch.linalg.matrix_exp);
- time-dependent linear ODE dx/dt = 3 t^2 x, x(t) = exp(t^3) x0: a solver that evaluates the
  velocity at the wrong stage times loses its order here (checked below with broken tableaus).

Measured log2(error ratio) when the step count doubles from 32 to 64 (i.e. nfe 32s -> 64s):

    solver     dx/dt = A x    dx/dt = 3t^2 x
    euler         1.04           0.94
    midpoint      2.04           1.96
    heun          2.04           2.04
    rk4           3.99           4.00

so the tests assert |log2 ratio - order| < 0.3 at these step counts. The same tableaus with every
c_i = 0 (velocity always taken at t_n) measure 0.98 (heun) and 0.98 (rk4) on the second problem.
"""

from __future__ import annotations

import math

import pytest
import torch

from flowmatch.errors import FlowmatchError
from flowmatch.solvers.grids import TIME_GRIDS, time_grid
from flowmatch.solvers.integration import Solution, _integrate_fixed, integrate
from flowmatch.solvers.tableaus import ADAPTIVE_SOLVERS, FIXED_SOLVERS, SOLVERS, TABLEAUS, Tableau, steps_for

A = torch.tensor([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.0, -0.3, -1.0]], dtype=torch.float64)


def linear(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dx/dt = A x on a batch of row vectors."""
    return x @ A.to(x.dtype).T


def cubic_rate(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dx/dt = 3 t^2 x, so x(t) = exp(t^3 - t0^3) x(t0)."""
    return 3 * t**2 * x


def x0_batch(seed: int = 0, n: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=generator, dtype=torch.float64)


class Counter:
    """Wraps a velocity, recording every call's time."""

    def __init__(self, f):
        self.f = f
        self.times: list[torch.Tensor] = []

    def __call__(self, x, t):
        self.times.append(t)
        return self.f(x, t)


# --------------------------------------------------------------------------------------------
# Tableaus and the solver registry
# --------------------------------------------------------------------------------------------


def test_registry():
    assert FIXED_SOLVERS == ("euler", "midpoint", "heun", "rk4", "rk38")
    assert ADAPTIVE_SOLVERS == ("dopri5",)
    assert SOLVERS == FIXED_SOLVERS + ADAPTIVE_SOLVERS
    assert {name: t.stages for name, t in TABLEAUS.items()} == {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "rk38": 4}
    assert {name: t.order for name, t in TABLEAUS.items()} == {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "rk38": 4}
    assert "uniform" in TIME_GRIDS and "cosine" in TIME_GRIDS


@pytest.mark.parametrize("name", FIXED_SOLVERS)
def test_tableau_consistency(name):
    """Row sums give the stage times; the weights meet the order conditions up to order 2."""
    t = TABLEAUS[name]
    # sums of a few float64 coefficients such as 1/6 and 1/3: round-off ~1e-16, approx's default 1e-6 relative
    for row, c_i in zip(t.a, t.c):
        assert sum(row) == pytest.approx(c_i)
    assert sum(t.b) == pytest.approx(1.0)
    if t.order >= 2:
        assert sum(b * c for b, c in zip(t.b, t.c)) == pytest.approx(0.5)


def test_tableau_rejects_bad_shapes():
    with pytest.raises(ValueError):
        Tableau("bad", a=((), (1.0,)), b=(1.0,), c=(0.0, 1.0), order=1)


# --------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------


def observed_order(f, exact, solver, x0, steps=32):
    stages = TABLEAUS[solver].stages
    err = [(integrate(f, x0, solver=solver, nfe=n * stages).x - exact).abs().max().item() for n in (steps, 2 * steps)]
    return math.log2(err[0] / err[1])


@pytest.mark.parametrize("solver", FIXED_SOLVERS)
def test_order_autonomous_linear(solver):
    x0 = x0_batch(1)
    exact = x0 @ torch.linalg.matrix_exp(A).T
    assert observed_order(linear, exact, solver, x0) == pytest.approx(TABLEAUS[solver].order, abs=0.3)  # measured: docstring


@pytest.mark.parametrize("solver", FIXED_SOLVERS)
def test_order_time_dependent(solver):
    x0 = x0_batch(2)
    exact = x0 * math.e
    assert observed_order(cubic_rate, exact, solver, x0) == pytest.approx(TABLEAUS[solver].order, abs=0.3)  # measured: docstring


@pytest.mark.parametrize("solver", ["heun", "rk4", "rk38"])
def test_order_test_catches_wrong_stage_times(solver):
    """The time-dependent problem sees stage times: with every c_i = 0 the order falls to 1."""
    good = TABLEAUS[solver]
    broken = Tableau("broken", a=good.a, b=good.b, c=(0.0,) * good.stages, order=good.order)
    x0 = x0_batch(3)
    err = []
    for steps in (32, 64):
        x, _ = _integrate_fixed(cubic_rate, x0, broken, time_grid("uniform", steps), False, False)
        err.append((x - x0 * math.e).abs().max().item())
    assert math.log2(err[0] / err[1]) == pytest.approx(1.0, abs=0.3)  # measured 0.98


@pytest.mark.parametrize("solver", FIXED_SOLVERS)
def test_backward_integration_inverts_forward(solver):
    """Integrating from t = 1 back to t = 0 undoes the forward solve (up to both solves' errors)."""
    x0 = x0_batch(4)
    nfe = 64 * TABLEAUS[solver].stages
    x1 = integrate(linear, x0, solver=solver, nfe=nfe).x
    exact_back = x1 @ torch.linalg.matrix_exp(-A).T
    back = integrate(linear, x1, solver=solver, nfe=nfe, t0=1.0, t1=0.0)
    # measured max |error| of the backward solve alone: euler 5.6e-2, midpoint/heun 6.3e-4, rk4 3.6e-8
    # (|x| < 2.3, float64). rtol=0: allclose's default rtol 1e-5 would add ~2e-5 and make rk4's bound moot
    assert torch.allclose(back.x, exact_back, rtol=0, atol={1: 0.1, 2: 2e-3, 4: 1e-7}[TABLEAUS[solver].order])
    if solver == "rk4":
        assert torch.allclose(back.x, x0, rtol=0, atol=1e-7)  # measured 2.0e-9


def test_backward_time_dependent_and_times_in_range():
    """dx/dt = 3 t^2 x from t = 1 to t = 0 divides by e; every t passed lies in [0, 1]."""
    x1 = x0_batch(5)
    f = Counter(cubic_rate)
    sol = integrate(f, x1, solver="rk4", nfe=256, t0=1.0, t1=0.0, grid="cosine")
    # rk4, 64 steps: measured 5.7e-9, float64; the bound is explicit (atol=1e-8 alone was 1.7x that and the
    # default rtol 1e-5 carried the rest)
    assert torch.allclose(sol.x, x1 / math.e, rtol=0, atol=2e-8)
    ts = torch.stack(f.times)
    assert ts.min() >= 0.0 and ts.max() <= 1.0
    assert ts[0] == 1.0 and ts[-1] == 0.0


def test_any_state_shape():
    """The state may have any shape, e.g. (batch, channels, H, W) or (batch, D + 1)."""
    x0 = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    sol = integrate(lambda x, t: -x, x0, solver="rk4", nfe=40)
    assert sol.x.shape == x0.shape
    # 10 RK4 steps: the relative error is 10 h^5 e^h / 120 = 9.2e-7 (measured 6.4e-7 absolute at |x| < 0.71).
    # atol=1e-7 was below that and held only through allclose's default rtol 1e-5; say the bound instead
    assert torch.allclose(sol.x, x0 * math.exp(-1), rtol=2e-6, atol=0)


# --------------------------------------------------------------------------------------------
# NFE accounting and what f receives
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", FIXED_SOLVERS)
@pytest.mark.parametrize("grid", TIME_GRIDS)
def test_fixed_solvers_call_f_exactly_nfe_times(solver, grid):
    nfe = 12  # a multiple of 1, 2 and 4
    f = Counter(linear)
    x0 = x0_batch(7).float()
    sol = integrate(f, x0, solver=solver, nfe=nfe, grid=grid, t0=0.25, t1=0.75)
    assert len(f.times) == nfe == sol.nfe
    for t in f.times:
        assert t.dim() == 0 and t.dtype == x0.dtype and t.device == x0.device
        assert 0.25 <= t.item() <= 0.75
    assert f.times[0].item() == 0.25


def test_stage_times_are_exact():
    """rk4 on a uniform grid of 2 steps evaluates at t_n, t_n + h/2 (twice), t_n + h."""
    f = Counter(linear)
    integrate(f, x0_batch(8), solver="rk4", nfe=8)
    assert [t.item() for t in f.times] == [0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0]


def test_x0_is_not_modified_and_gradients_flow():
    """The solver neither mutates x0 nor forces no_grad: d x(1) / d x0 = expm(A) (rk4 at h = 1/32: error
    ~ C h^4, h^4 = 9.5e-7; measured 1.9e-7)."""
    x0 = x0_batch(9, n=1).requires_grad_()
    before = x0.detach().clone()
    sol = integrate(linear, x0, solver="rk4", nfe=128)
    assert torch.equal(x0.detach(), before)
    jacobian = torch.stack([torch.autograd.grad(sol.x[0, i], x0, retain_graph=True)[0][0] for i in range(3)])
    # atol=1e-7 was below the measured 1.9e-7 and held only through allclose's default rtol 1e-5: h^4 instead
    assert torch.allclose(jacobian, torch.linalg.matrix_exp(A), rtol=0, atol=1e-6)
    with torch.no_grad():
        assert not integrate(linear, x0, solver="rk4", nfe=8).x.requires_grad


def test_progress_bar_gives_the_same_answer():
    x0 = x0_batch(10)
    plain = integrate(linear, x0, solver="heun", nfe=20).x
    shown = integrate(linear, x0, solver="heun", nfe=20, progress=True).x
    assert torch.equal(plain, shown)


# --------------------------------------------------------------------------------------------
# Adaptive solver
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tol", [1e-5, 1e-8])
def test_dopri5_meets_tolerance_and_counts_nfe(tol):
    x0 = x0_batch(11)
    exact = x0 @ torch.linalg.matrix_exp(A).T
    f = Counter(linear)
    sol = integrate(f, x0, solver="dopri5", atol=tol, rtol=tol, nfe=7)  # nfe is ignored
    assert sol.nfe == len(f.times) > 0
    # measured max over entries of |error| / (tol + tol |x|): 1.3 at tol 1e-5, 1.6 at 1e-8
    assert ((sol.x - exact).abs() < 10 * (tol + tol * exact.abs())).all()
    # f gets 0-dim times in x's dtype, never outside [t0, t1] (the last step lands on t1)
    assert all(t.dim() == 0 and t.dtype == x0.dtype and 0.0 <= t.item() <= 1.0 for t in f.times)


def test_dopri5_tighter_tolerance_uses_more_evaluations():
    x0 = x0_batch(12)
    loose = integrate(linear, x0, solver="dopri5", atol=1e-4, rtol=1e-4).nfe
    tight = integrate(linear, x0, solver="dopri5", atol=1e-8, rtol=1e-8).nfe
    assert tight > loose  # measured 104 vs 26


def test_dopri5_float32_backward():
    x1 = x0_batch(13).float()
    f = Counter(cubic_rate)
    sol = integrate(f, x1, solver="dopri5", t0=1.0, t1=0.0, atol=1e-6, rtol=1e-6)
    assert sol.x.dtype == torch.float32
    assert torch.allclose(sol.x, x1 / math.e, atol=1e-5)  # measured 1.8e-6
    assert all(t.dtype == torch.float32 and 0.0 <= t.item() <= 1.0 for t in f.times)


def test_dopri5_trajectory():
    x0 = x0_batch(14)
    sol = integrate(linear, x0, solver="dopri5", atol=1e-8, rtol=1e-8, return_trajectory=True)
    assert sol.times.shape == (101,) and sol.trajectory.shape == (101, *x0.shape)
    assert sol.times[0] == 0.0 and sol.times[-1] == 1.0
    assert torch.allclose(sol.times, torch.linspace(0, 1, 101, dtype=torch.float64))  # measured equal
    assert torch.equal(sol.trajectory[0], x0) and torch.equal(sol.trajectory[-1], sol.x)
    mid = x0 @ torch.linalg.matrix_exp(0.5 * A).T
    assert torch.allclose(sol.trajectory[50], mid, atol=1e-6)  # dopri5 at 1e-8 (measured 1.2e-8)


# --------------------------------------------------------------------------------------------
# Time grids and trajectories
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0), (0.2, 0.9)])
@pytest.mark.parametrize("name", TIME_GRIDS)
def test_named_grids(name, t0, t1):
    grid = time_grid(name, 10, t0, t1)
    assert grid.shape == (11,) and grid.dtype == torch.float64
    assert grid[0].item() == t0 and grid[-1].item() == t1
    assert ((grid.diff() * (t1 - t0)) > 0).all()


def test_cosine_grid_values():
    n = 8
    grid = time_grid("cosine", n)
    expected = [(1 - math.cos(math.pi * i / n)) / 2 for i in range(n + 1)]
    assert grid.tolist() == pytest.approx(expected, abs=1e-15)  # float64 cos in torch and math: <= 1 ulp (measured 0)
    steps = grid.diff()
    assert steps[0] < 1 / n and steps[-1] < 1 / n and steps[n // 2] > 1 / n  # small at both ends
    assert torch.allclose(grid + grid.flip(0), torch.ones(n + 1, dtype=torch.float64))  # float64 (measured 1.1e-16)


def test_euler_uses_the_grid():
    """Euler on dx/dt = 1 is exact on any grid; on dx/dt = 2t it gives sum_n 2 t_n h_n, grid-specific."""
    n = 8
    x0 = torch.zeros(1, 1, dtype=torch.float64)
    ones = integrate(lambda x, t: torch.ones_like(x), x0, solver="euler", nfe=n, grid="cosine")
    assert ones.x.item() == pytest.approx(1.0, abs=1e-15)  # 8 float64 additions of steps <= 1: <= 9e-16 (measured 0)

    cos_grid = [(1 - math.cos(math.pi * i / n)) / 2 for i in range(n + 1)]
    for grid, points in (("uniform", [i / n for i in range(n + 1)]), ("cosine", cos_grid)):
        expected = sum(2 * points[i] * (points[i + 1] - points[i]) for i in range(n))
        sol = integrate(lambda x, t: 2 * t * torch.ones_like(x), x0, solver="euler", nfe=n, grid=grid)
        assert sol.x.item() == pytest.approx(expected, abs=1e-14)  # float64, 8 terms (measured equal)
        # uniform: 1 - 1/n = 0.875; cosine: 0.8477590650 (computed independently of the solver)
        assert sol.x.item() == pytest.approx({"uniform": 0.875, "cosine": 0.8477590650225735}[grid], abs=1e-12)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_explicit_grid(as_tensor):
    times = [0.0, 0.1, 0.3, 0.6, 1.0]
    grid = torch.tensor(times) if as_tensor else times
    f = Counter(lambda x, t: torch.ones_like(x))
    sol = integrate(f, torch.zeros(2, 1), solver="euler", nfe=4, grid=grid, return_trajectory=True)
    # float32 times against Python floats: ~6e-8 relative, inside approx's default 1e-6
    assert [t.item() for t in f.times] == pytest.approx(times[:-1])
    assert sol.times.tolist() == pytest.approx(times)
    assert sol.trajectory[:, 0, 0].tolist() == pytest.approx(times)  # x(t) = t


@pytest.mark.parametrize("solver", FIXED_SOLVERS)
def test_fixed_trajectory(solver):
    x0 = x0_batch(15)
    nfe = 8 * TABLEAUS[solver].stages
    sol = integrate(linear, x0, solver=solver, nfe=nfe, grid="cosine", return_trajectory=True)
    assert isinstance(sol, Solution)
    assert torch.equal(sol.times, time_grid("cosine", 8))
    assert sol.trajectory.shape == (9, *x0.shape)
    assert torch.equal(sol.trajectory[0], x0) and torch.equal(sol.trajectory[-1], sol.x)
    plain = integrate(linear, x0, solver=solver, nfe=nfe, grid="cosine")
    assert plain.times is None and plain.trajectory is None
    assert torch.equal(plain.x, sol.x)


# --------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------


def test_steps_for():
    assert steps_for("rk4", 100) == 25
    assert steps_for("euler", 7) == 7
    assert steps_for("heun", 2) == 1
    with pytest.raises(FlowmatchError, match=r"rk4 uses 4 .* nfe=10 is not a multiple of 4 \(try 8 or 12\)"):
        steps_for("rk4", 10)
    with pytest.raises(FlowmatchError, match=r"\(try 4\)"):
        steps_for("rk4", 3)
    with pytest.raises(FlowmatchError, match="adaptive"):
        steps_for("dopri5", 10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(solver="rk5"), "unknown solver 'rk5'"),
        (dict(solver="rk4", nfe=10), "not a multiple of 4"),
        (dict(solver="heun", nfe=3), "not a multiple of 2"),
        (dict(nfe=0), "positive integer"),
        (dict(nfe=-4), "positive integer"),
        (dict(nfe=4.0), "positive integer"),
        (dict(nfe=True), "positive integer"),
        (dict(grid="linear"), "unknown time grid 'linear'"),
        (dict(solver="dopri5", grid="linear"), "unknown time grid"),
        (dict(solver="euler", nfe=4, grid=[0.0, 0.5, 0.4, 0.8, 1.0]), "strictly increasing"),
        (dict(solver="euler", nfe=4, grid=[0.0, 0.5, 0.5, 0.8, 1.0]), "strictly increasing"),
        (dict(solver="euler", nfe=2, grid=[0.0, 0.5, 1.0], t0=1.0, t1=0.0), "from t0 = 1.0"),
        (dict(solver="euler", nfe=2, grid=[1.0, 0.5, 0.7], t0=1.0, t1=0.7), "strictly decreasing"),
        (dict(solver="euler", nfe=2, grid=[0.1, 0.5, 1.0]), "from t0 = 0.0"),
        (dict(solver="rk4", nfe=12, grid=[0.0, 0.5, 1.0]), r"has 2 steps, so rk4 needs nfe=8 \(got 12\)"),
        (dict(solver="euler", nfe=1, grid=[[0.0, 1.0]]), "1-D"),
        (dict(solver="euler", nfe=1, grid=[0.0, float("nan")]), "finite"),
        (dict(t0=0.5, t1=0.5), "must differ"),
        (dict(t1=float("inf")), "finite"),
        (dict(solver="dopri5", atol=0.0), "atol must be a positive number"),
        (dict(solver="dopri5", rtol=-1e-5), "rtol must be a positive number"),
        (dict(solver="dopri5", rtol="tight"), "rtol must be a positive number"),
    ],
)
def test_bad_arguments(kwargs, message):
    f = Counter(linear)
    with pytest.raises(FlowmatchError, match=message):
        integrate(f, x0_batch(16), **kwargs)
    assert not f.times  # rejected before any evaluation


def test_bad_state_and_steps():
    with pytest.raises(FlowmatchError, match="floating-point tensor"):
        integrate(linear, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(FlowmatchError, match="positive integer"):
        time_grid("uniform", 0)
    with pytest.raises(FlowmatchError, match="has 3 times but 4 steps need 5"):
        time_grid([0.0, 0.5, 1.0], 4)
    assert issubclass(FlowmatchError, ValueError)


def test_shifted_grid_is_diffusers_shift_and_an_exact_field_lands_where_it_does_on_the_uniform_grid():
    from flowmatch.solvers.grids import time_grid

    grid = time_grid("shift:3", 4)
    r = 1 - torch.arange(5, dtype=torch.float64) / 4
    # sigma -> k sigma / (1 + (k - 1) sigma); float64, default tolerances (measured equal)
    torch.testing.assert_close(grid, 1 - 3 * r / (1 + 2 * r))
    assert grid[1] - grid[0] < 0.25 / 2  # more steps near the noise end
    torch.testing.assert_close(time_grid("shift:1", 7), time_grid("uniform", 7))
    # dx/dt = -x / (1 + t): x(1) = x(0) / 2 on any grid, up to rk4's error (h^4 at 50 steps: ~1e-8; measured
    # <= 1.3e-15)
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    for spec in ("uniform", "shift:3", "shift:0.3"):
        x1 = integrate(lambda x, t: -x / (1 + t), x0, solver="rk4", nfe=200, grid=spec).x
        torch.testing.assert_close(x1, x0 / 2, rtol=0, atol=1e-8)
    for bad in ("shift:0", "shift:-2", "shift:x", "shift:"):
        with pytest.raises(FlowmatchError, match="the shift must be a positive number"):
            time_grid(bad, 4)


def test_rk38_is_torchdiffeqs_rk4_and_rk4_is_the_classic_method():
    """torchdiffeq's (and so Meta flow_matching's) method "rk4" is Kutta's 3/8 rule: flowmatch's "rk38" matches it
    to float64 rounding on a nonlinear, time-dependent problem (measured 8.9e-16 over 2 steps), while the classic
    "rk4" differs by 6.9e-3 there. On a linear autonomous problem every 4-stage fourth-order method is the same
    polynomial of h A, so only a problem like this one tells them apart."""
    from torchdiffeq import odeint

    def f(x, t):
        return torch.cos(3 * t) * x.sin() + x * t**2

    x0 = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reference = odeint(lambda t, x: f(x, t), x0, torch.linspace(0, 1, 3, dtype=torch.float64), method="rk4")[-1]
    assert torch.allclose(integrate(f, x0, solver="rk38", nfe=8).x, reference, rtol=0, atol=1e-13)  # a few ulps of |x| < 8
    assert (integrate(f, x0, solver="rk4", nfe=8).x - reference).abs().max() > 1e-3
