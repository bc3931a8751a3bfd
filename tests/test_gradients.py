"""Differentiable sampling and likelihood (``grad=True``): gradients through the solver and the
divergence, checked against closed forms (a linear field) and central finite differences."""

import pytest
import torch

from flowmatch.data.standardize import Standardizer
from flowmatch.errors import FlowmatchError
from flowmatch.flows.continuous import Flow
from flowmatch.models.mlp import MLP
from flowmatch.paths.affine import make_path


class LinearField(torch.nn.Module):
    """v(x, t) = A x: the flow is x(t) = expm(t A) x(0), and from N(0, I) its density at t = 1 is
    log p(x) = log N(expm(-A) x; 0, I) - tr(A)."""

    def __init__(self, a):
        super().__init__()
        self.a = torch.nn.Parameter(a)

    def forward(self, x, t, y=None):
        return x @ self.a.T


def _flow(model):
    return Flow(model, make_path("linear"), Standardizer.identity(2), {"source": "gaussian", "seed": 0})


A = torch.tensor([[-0.3, 0.8], [-0.5, 0.2]], dtype=torch.float64)


def test_sample_gradients_match_the_closed_form_of_a_linear_field():
    flow = _flow(LinearField(A.clone()))
    x0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    x1 = flow.generate(5, x0=x0, solver="rk4", nfe=200, grad=True).x
    # rk4's global error ~ C h^4 = C 6e-10 at h = 1/200 (measured 2.4e-10, float64). atol=1e-10 alone was
    # below that and held only through allclose's default rtol 1e-5; say the bound: 4x the measured error
    assert torch.allclose(x1, x0 @ torch.linalg.matrix_exp(A).T, rtol=0, atol=1e-9)
    x1.sum().backward()
    # d sum(x1) / d x0 = expm(A)^T 1 for every row
    expected = (torch.linalg.matrix_exp(A).T @ torch.ones(2, dtype=torch.float64)).expand(5, 2)
    torch.testing.assert_close(x0.grad, expected, rtol=1e-9, atol=1e-9)  # the same rk4 error, on the map (measured 1.3e-10)
    # without grad the solve records nothing
    assert not flow.generate(5, x0=x0.detach(), solver="rk4", nfe=8).x.requires_grad


def test_sample_gradients_with_respect_to_the_weights_match_finite_differences():
    torch.manual_seed(0)
    model = MLP(2, width=8, depth=2).double()
    flow = _flow(model)
    x0 = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w = torch.randn(6, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss():
        return (flow.generate(6, x0=x0, solver="midpoint", nfe=8, grad=True).x * w).sum()

    loss().backward()
    weight = model.x_in.weight
    analytic = weight.grad.clone()
    numeric = torch.zeros_like(weight)
    eps = 1e-6
    with torch.no_grad():
        for index in [(0, 0), (3, 1), (7, 0)]:
            weight[index] += eps
            up = loss().item()
            weight[index] -= 2 * eps
            down = loss().item()
            weight[index] += eps
            numeric[index] = (up - down) / (2 * eps)
            # central differences in float64: error ~ eps^2 * f''' + rounding 1e-16 / eps (measured <= 2.3e-10
            # absolute, 2.5e-7 relative at the smallest entry, 9e-4)
            assert analytic[index].item() == pytest.approx(numeric[index].item(), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_log_prob_gradients_match_the_closed_form_of_a_linear_field(divergence):
    flow = _flow(LinearField(A.clone()))
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
    lp = flow.log_prob(x, solver="rk4", nfe=100, divergence=divergence, probes=64, grad=True)
    back = torch.linalg.matrix_exp(-A)
    z = x.detach() @ back.T
    exact = -0.5 * z.pow(2).sum(1) - torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64)) - torch.trace(A)
    # Hutchinson's eps^T A eps = tr(A) + eps_0 eps_1 (A_01 + A_10) is off by at most |A_01 + A_10| = 0.3 at
    # any probes; it does not depend on x, so the gradient below is exact for both
    tol = 1e-8 if divergence == "exact" else 0.3 + 1e-8  # rk4 at h = 0.01: measured 2.2e-9 (exact), 0.0375 (probes)
    torch.testing.assert_close(lp, exact, rtol=0, atol=tol)
    lp.sum().backward()
    expected = -(z @ back)  # d/dx of -|expm(-A) x|^2 / 2
    torch.testing.assert_close(x.grad, expected, rtol=1e-8, atol=1e-8)  # rk4 at h = 0.01, float64 (measured 3.2e-9)


def test_log_prob_gradient_with_respect_to_the_field_matches_finite_differences():
    field = LinearField(A.clone())
    flow = _flow(field)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    flow.log_prob(x, solver="rk4", nfe=40, grad=True).sum().backward()
    analytic = field.a.grad.clone()
    eps = 1e-6
    with torch.no_grad():
        for index in [(0, 0), (0, 1), (1, 0)]:
            field.a[index] += eps
            up = flow.log_prob(x, solver="rk4", nfe=40).sum().item()
            field.a[index] -= 2 * eps
            down = flow.log_prob(x, solver="rk4", nfe=40).sum().item()
            field.a[index] += eps
            # central differences in float64, as above (measured <= 6.7e-10 relative)
            assert analytic[index].item() == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-9)


def test_grad_must_be_a_bool():
    with pytest.raises(FlowmatchError, match="grad must be True or False"):
        _flow(LinearField(A.clone())).generate(2, grad="yes")
