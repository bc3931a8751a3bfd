"""Velocity models: shapes, time broadcasting, the seed architecture, rebuilding from config."""

import pytest
import torch

from flowmatch.errors import FlowmatchError
from flowmatch.models.mlp import MLP, SeedMLP, sinusoidal_embedding
from flowmatch.models.registry import build_model


@pytest.mark.parametrize("name", ["mlp", "seed-mlp"])
@pytest.mark.parametrize("dim", [1, 2, 13])
def test_output_shape_and_time_forms(name, dim):
    torch.manual_seed(0)
    model = build_model(name, dim)
    x = torch.randn(5, dim)
    out_scalar = model(x, 0.25)
    out_0d = model(x, torch.tensor(0.25))
    out_batch = model(x, torch.full((5,), 0.25))
    assert out_scalar.shape == x.shape
    # the same operations on a broadcast time (measured equal); assert_close's float32 default leaves round-off room
    torch.testing.assert_close(out_scalar, out_0d)
    torch.testing.assert_close(out_scalar, out_batch)


def test_seed_mlp_is_the_seed_architecture():
    model = SeedMLP(2)
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(128, 3), (128,), (128, 128), (128,), (2, 128), (2,)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 2
    # input is [t, x]: the first column of the first layer multiplies t
    x = torch.zeros(1, 2)
    with torch.no_grad():
        model.net[0].weight.zero_()
        model.net[0].weight[:, 0] = 1.0
        model.net[0].bias.zero_()
    h0 = model.net[1](model.net[0](torch.cat([torch.tensor([[0.5]]), x], 1)))
    assert torch.all(h0 == 0.5)


def test_rebuild_from_config_gives_same_function():
    torch.manual_seed(0)
    model = MLP(3, width=32, depth=2, activation="gelu")
    options = dict(model.config)
    clone = build_model(options.pop("name"), 3, **options)
    clone.load_state_dict(model.state_dict())
    x, t = torch.randn(4, 3), torch.rand(4)
    torch.testing.assert_close(model(x, t), clone(x, t))  # same weights, same operations (measured equal)


def test_time_changes_output():
    torch.manual_seed(0)
    model = MLP(2, width=32)
    x = torch.randn(8, 2)
    assert (model(x, 0.1) - model(x, 0.9)).abs().max() > 1e-3  # measured 0.0032; float32 round-off is ~1e-7


def test_bad_options():
    with pytest.raises(FlowmatchError, match="unknown model"):
        build_model("convnext", 2)
    with pytest.raises(FlowmatchError, match="activation"):
        build_model("mlp", 2, activation="swish2")
    with pytest.raises(FlowmatchError, match="bad options"):
        build_model("mlp", 2, widht=3)


@pytest.mark.parametrize("activation", ["relu", "silu", "gelu", "tanh", "softplus"])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_sampling_path_equals_training_path(activation, num_classes):
    # without autograd the MLP overwrites its activations in place: the same numbers, bit for bit,
    # and with autograd the in-place add of the time term still lets gradients through
    torch.manual_seed(0)
    model = MLP(2, width=32, activation=activation, num_classes=num_classes)
    x, t = torch.randn(40, 2), torch.rand(40)
    y = torch.randint(0, 3, (40,)) if num_classes else None
    with_grad = model(x, t, y)
    with torch.no_grad():
        without = model(x, t, y)
        reference = model.body(
            model.x_in(x) + model.t_in(sinusoidal_embedding(t.reshape(-1, 1), 64)) + (model.y_in(y) if num_classes else 0)
        )
    assert torch.equal(with_grad.detach(), without)
    assert torch.equal(without, reference)
    with_grad.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.x_in.parameters())
    assert model.t_in[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("runs", [[8, 8, 8, 8], [11, 7, 1, 13], [1] * 5])
def test_runs_of_equal_times_share_one_time_embedding(runs):
    # training times come in runs (training.sample_times' strata): the time branch is evaluated
    # once per run, and the output and the gradients are those of one evaluation per pair
    torch.manual_seed(0)
    model = MLP(3, width=32, num_classes=2)
    t = torch.cat([torch.full((r,), v) for r, v in zip(runs, torch.rand(len(runs)).tolist())])
    x, y = torch.randn(len(t), 3), torch.randint(0, 2, (len(t),))
    rows = []
    model.t_in.register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    shared = model(x, t, y)
    grads = torch.autograd.grad(shared.square().sum(), list(model.parameters()))
    assert rows == [len(runs)]
    pairwise = torch.cat([model(x[i : i + 1], t[i : i + 1], y[i : i + 1]) for i in range(len(t))])
    reference = torch.autograd.grad(pairwise.square().sum(), list(model.parameters()))
    # batches of 1 and of 32 rows take different float32 matmul kernels: round-off ~6e-8 per add over inner
    # products of 64 (~4e-6 relative at worst), and the weight gradients sum 32 rows in another order.
    # Measured: outputs 3e-8 apart (1.3% of the tolerance), gradients 9.5e-7 (0.4%), here and with AVX2
    # and scalar kernels
    torch.testing.assert_close(shared, pairwise, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, reference):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "name, dim, options",
    [
        ("mlp", 3, {"width": 24, "depth": 5}),
        ("seed-mlp", 2, {"width": 8}),
        ("unet", 64, {"image_shape": (1, 8, 8), "channels": 8, "num_res_blocks": 3}),
        ("transformer", 12, {"vocab_size": 7, "width": 32, "depth": 4, "heads": 4}),
        ("mixed-mlp", 3, {"vocab_sizes": [2, 5, 1], "width": 32, "depth": 4}),
        ("tangent-mlp", 3, {"manifold": {"name": "sphere", "dim": 2}, "width": 16, "depth": 6}),
    ],
)
def test_parameter_count_is_exact_without_building_the_depth(name, dim, options):
    """The size a model is checked against memory by (counted on the meta device, a depth past 2 from depths 1 and
    2) is exactly the number of values the built model holds."""
    from flowmatch.models.registry import parameter_count

    built = build_model(name, dim, **options)
    assert parameter_count(name, dim, **options) == sum(v.numel() for v in built.state_dict().values())
