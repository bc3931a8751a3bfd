"""Training: config validation, presets, reproducibility, and that a short run learns."""

import pytest
import torch

from flowmatch.errors import FlowmatchError
from flowmatch.metrics import w2_exact
from flowmatch.training import PRESETS, TrainConfig, learning_rate, resolve_config, train

TINY = dict(steps=40, width=16, depth=2, batch_size=32)


def test_config_validation_names_the_key():
    with pytest.raises(FlowmatchError, match="unknown key 'stpes'"):
        TrainConfig.from_dict({"stpes": 3})
    with pytest.raises(FlowmatchError, match="steps must be a int"):
        TrainConfig.from_dict({"steps": "3"})
    with pytest.raises(FlowmatchError, match="lr must be >= 0"):
        TrainConfig.from_dict({"lr": -1.0})
    with pytest.raises(FlowmatchError, match="path must be one of"):
        TrainConfig.from_dict({"path": "curvy"})
    with pytest.raises(FlowmatchError, match="batch_size must be a int"):
        TrainConfig.from_dict({"batch_size": True})
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0  # ints are fine where floats are expected


def test_seed_preset_is_the_seed_recipe():
    config = resolve_config("seed")
    assert (config.path, config.sigma_min, config.model) == ("gaussian", 0.0, "seed-mlp")
    assert (config.batch_size, config.steps, config.lr, config.lr_schedule, config.ema) == (128, 10_000, 1e-3, "constant", 0.0)
    assert config.data == "two-gaussians"
    assert set(PRESETS) == {"seed"}


def test_learning_rate_schedule():
    config = TrainConfig(lr=1.0, steps=100, warmup=10, lr_schedule="cosine")
    assert learning_rate(config, 0) == pytest.approx(0.1)
    assert learning_rate(config, 9) == pytest.approx(1.0)
    assert learning_rate(config, 10) == pytest.approx(1.0)
    assert learning_rate(config, 55) == pytest.approx(0.5)
    assert learning_rate(config, 100) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(TrainConfig(lr=0.3, lr_schedule="constant"), 500) == 0.3


def test_same_seed_same_weights_different_seed_different():
    a = train(seed=1, progress=False, **TINY).flow.model.state_dict()
    b = train(seed=1, progress=False, **TINY).flow.model.state_dict()
    c = train(seed=2, progress=False, **TINY).flow.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_short_training_learns_two_gaussians():
    # 600 steps of a small MLP: measured W2 0.67 against a floor of 0.28; untrained W2 is ~4
    result = train(steps=600, width=64, depth=2, batch_size=256, lr=3e-3, progress=False)
    held = result.flow.dataset.test[:1000]
    w2 = w2_exact(result.flow.sample(1000, solver="rk4", nfe=40, seed=0), held)
    assert w2 < 0.9
    assert result.final_loss < 4.0


def test_file_data_is_standardised_and_mapped_back(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 3, generator=g) * torch.tensor([10.0, 0.1, 1.0]) + torch.tensor([100.0, -5.0, 0.0])
    import numpy as np

    np.save(tmp_path / "d.npy", x.numpy())
    result = train(data=str(tmp_path / "d.npy"), steps=400, width=64, batch_size=256, lr=3e-3, progress=False)
    samples = result.flow.sample(2000, nfe=20, seed=0)
    assert samples.shape == (2000, 3)
    # per-dimension means and stds come back in data coordinates (tolerance: a short run on a Gaussian)
    torch.testing.assert_close(samples.mean(0), torch.tensor([100.0, -5.0, 0.0]), atol=1.0, rtol=0.02)
    torch.testing.assert_close(samples.std(0), torch.tensor([10.0, 0.1, 1.0]), rtol=0.15, atol=0.0)
