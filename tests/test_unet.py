"""The U-Net velocity model: shapes, labels, time forms, rebuilding, zero-initialised output, gradients."""

import json

import pytest
import torch

from flowmatch.errors import FlowmatchError
from flowmatch.models.registry import MODELS, build_model
from flowmatch.models.unet import UNet

SMALL = {"channels": 8, "channel_mult": [1, 2]}


def _randomise_output(model: UNet, seed: int = 0) -> UNet:
    """Give the (zero-initialised) output conv random weights so outputs depend on everything."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.conv_out.weight.copy_(0.1 * torch.randn(model.conv_out.weight.shape, generator=g))
        model.conv_out.bias.copy_(0.1 * torch.randn(model.conv_out.bias.shape, generator=g))
    return model


@pytest.mark.parametrize(
    "dim, options",
    [
        (64, {}),  # 1x8x8 inferred from a square dimension
        (64, {"image_shape": [1, 8, 8], "attention_resolutions": [4]}),
        (3 * 16 * 16, {"image_shape": [3, 16, 16], "attention_resolutions": [8], "attention_heads": 2}),
        (3 * 16 * 16, {"image_shape": (3, 16, 16), "channel_mult": [1, 2, 2], "num_res_blocks": 2}),
    ],
)
@pytest.mark.parametrize("num_classes", [0, 10])
def test_shapes_with_and_without_labels(dim, options, num_classes):
    torch.manual_seed(0)
    model = _randomise_output(UNet(dim, num_classes=num_classes, **{**SMALL, **options}))
    x = torch.randn(5, dim)
    out = model(x, torch.rand(5))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    if num_classes:
        y = torch.tensor([0, 3, 9, 10, 2])
        assert model(x, 0.5, y).shape == x.shape


def test_default_model_is_small_and_for_digits():
    model = build_model("unet", 64)
    assert model.image_shape == (1, 8, 8)
    assert model.config["channels"] == 16 and model.config["channel_mult"] == [1, 2]
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_time_forms_broadcast_alike():
    torch.manual_seed(0)
    model = _randomise_output(UNet(64, num_classes=3, **SMALL))
    x, y = torch.randn(4, 64), torch.tensor([0, 1, 2, 1])
    ref = model(x, 0.3, y)
    # the same batch and operations (measured equal); assert_close's float32 default leaves round-off room
    torch.testing.assert_close(model(x, torch.tensor(0.3), y), ref)
    torch.testing.assert_close(model(x, torch.full((4,), 0.3), y), ref)
    torch.testing.assert_close(model(x, torch.tensor([0.3]), y), ref)
    # one time per example: row i equals a batch-of-one call at that time
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    per_row = torch.cat([model(x[i : i + 1], t[i], y[i : i + 1]) for i in range(4)])
    # batches of 1 and 4 take other float32 conv and matmul kernels: measured 1.4e-6 apart (2.0e-6 with AVX2
    # oneDNN, MKL's compatible kernels and 2 threads), a fifth of the bound
    torch.testing.assert_close(model(x, t, y), per_row, atol=1e-5, rtol=1e-5)
    assert (model(x, 0.1, y) - model(x, 0.9, y)).abs().max() > 1e-4  # measured 0.16; round-off is ~1e-6
    with pytest.raises(FlowmatchError, match="one time per example"):
        model(x, torch.rand(3), y)


def test_labels_and_null_label():
    torch.manual_seed(0)
    model = _randomise_output(UNet(64, num_classes=4, **SMALL))
    x = torch.randn(4, 64)
    null = model(x, 0.5, torch.full((4,), 4))
    torch.testing.assert_close(model(x, 0.5), null)  # y=None is the learned null label (measured equal)
    torch.testing.assert_close(model(x, 0.5, torch.tensor(4)), null)  # one label broadcasts to the batch
    assert (model(x, 0.5, torch.zeros(4, dtype=torch.long)) - null).abs().max() > 1e-4  # measured 0.87
    for bad in (torch.tensor([0, 1, 5, 0]), torch.tensor([-1, 0, 0, 0])):
        with pytest.raises(FlowmatchError, match="labels must lie in 0..4"):
            model(x, 0.5, bad)
    with pytest.raises(FlowmatchError, match="integers"):
        model(x, 0.5, torch.zeros(4))
    # an unconditional U-Net ignores labels entirely and has no class embedding
    plain = UNet(64, **SMALL)
    assert plain.label_emb is None


def test_rebuild_from_config_gives_same_outputs():
    torch.manual_seed(0)
    model = _randomise_output(UNet(3 * 8 * 8, image_shape=[3, 8, 8], num_classes=5, attention_resolutions=[4], dropout=0.1, **SMALL)).eval()
    options = json.loads(json.dumps(model.config))  # through JSON, as a checkpoint stores it
    assert options["name"] == "unet" and options["image_shape"] == [3, 8, 8]
    clone = build_model(options.pop("name"), 3 * 8 * 8, **options).eval()
    assert clone.config == model.config
    clone.load_state_dict(model.state_dict(), strict=True)
    x, t, y = torch.randn(6, 192), torch.rand(6), torch.tensor([0, 1, 2, 3, 4, 5])
    torch.testing.assert_close(clone(x, t, y), model(x, t, y))  # same weights, same operations
    assert MODELS["unet"] is UNet


def test_output_is_zero_at_initialisation():
    torch.manual_seed(0)
    model = UNet(64, num_classes=10)
    x = torch.randn(8, 64)
    # exact in any order: a zero weight and bias make every term of the output 0
    assert torch.equal(model(x, torch.rand(8), torch.randint(0, 11, (8,))), torch.zeros_like(x))
    assert torch.equal(model.conv_out.weight, torch.zeros_like(model.conv_out.weight))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = UNet(64, num_classes=3, attention_resolutions=[8, 4], **SMALL)
    x, t, y = torch.randn(8, 64), torch.rand(8), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    # at initialisation only the output conv receives a gradient (everything behind it is multiplied by 0)
    model(x, t, y).pow(2).sum().backward()
    assert model.conv_out.weight.grad.abs().sum() == 0  # output is 0, so d/dW of |out|^2 is 0 too
    loss = (model(x, t, y) - x).pow(2).mean()
    model.zero_grad()
    loss.backward()
    assert model.conv_out.weight.grad.abs().sum() > 0
    # with a non-zero output layer every parameter gets a gradient
    _randomise_output(model)
    model.zero_grad()
    (model(x, t, y) - x).pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_fits_a_small_batch():
    torch.manual_seed(0)
    model = UNet(64, num_classes=2, **SMALL)
    x, t, y = torch.randn(16, 64), torch.rand(16), torch.randint(0, 2, (16,))
    target = torch.randn(16, 64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = (model(x, t, y) - target).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first  # measured 0.003 x the first loss (also with AVX2 kernels and 2 threads)


@pytest.mark.parametrize(
    "dim, options, message",
    [
        (60, {}, "not a square single-channel image"),
        (64, {"image_shape": [3, 8, 8]}, "has 192 values"),
        (64, {"image_shape": [8, 8]}, "three positive integers"),
        (3 * 6 * 6, {"image_shape": [3, 6, 6], "channel_mult": [1, 2, 2]}, "divisible by 4"),
        (64, {"attention_resolutions": [2]}, "not resolutions of this U-Net"),
        (64, {"attention_resolutions": [8], "attention_heads": 3}, "must divide"),
        (64, {"channels": 0}, "channels must be an integer >= 1"),
        (64, {"channel_mult": 2}, "channel_mult must be a list"),
        (64, {"dropout": 1.5}, "dropout"),
        (64, {"num_classes": -1}, "num_classes"),
        (64, {"depth": 3}, "bad options for model 'unet'"),
    ],
)
def test_bad_options(dim, options, message):
    with pytest.raises(FlowmatchError, match=message):
        build_model("unet", dim, **options)


def test_wrong_input_width():
    model = UNet(64, **SMALL)
    with pytest.raises(FlowmatchError, match=r"shape \(batch, 64\)"):
        model(torch.randn(2, 65), 0.5)
