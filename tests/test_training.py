"""Training: config validation, presets, reproducibility, and that a short run learns."""

import math
import time

import pytest
import torch

import flowmatch.api as api
import flowmatch.config as config_module
import flowmatch.engine as training
import flowmatch.engine.devices as devices
import flowmatch.modalities.points.objective as objective
import flowmatch.modalities.points.validation as points_validation
from flowmatch.api import train
from flowmatch.config import PRESETS, TrainConfig, resolve_config, resolve_target
from flowmatch.engine.devices import resolve_precision
from flowmatch.engine.schedules import batch_size_at, learning_rate
from flowmatch.errors import FlowmatchError, FlowmatchWarning
from flowmatch.evaluation.metrics import w2_exact

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
    assert (config.data, config.precision) == ("two-gaussians", "fp32")
    assert set(PRESETS) == {"seed"}
    model = train(config, steps=1, progress=False).flow.model
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(128, 3), (128,), (128, 128), (128,), (2, 128), (2,)]  # [t, x] -> 128 -> 128 -> 2


def test_learning_rate_schedule():
    config = TrainConfig(lr=1.0, steps=100, warmup=10, lr_schedule="cosine")
    # float64 arithmetic (approx's default 1e-6 relative); at the end 1 + cos(pi) = 0 to round-off
    assert learning_rate(config, 0) == pytest.approx(0.1)
    assert learning_rate(config, 9) == pytest.approx(1.0)
    assert learning_rate(config, 10) == pytest.approx(1.0)
    assert learning_rate(config, 55) == pytest.approx(0.5)
    assert learning_rate(config, 100) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(TrainConfig(lr=0.3, lr_schedule="constant"), 500) == 0.3


def test_batch_warmup_ramps_from_half_to_the_full_batch(monkeypatch):
    config = TrainConfig(batch_size=512, batch_warmup=1000, steps=3000)
    sizes = [batch_size_at(config, k) for k in range(3000)]
    assert (sizes[0], sizes[500], sizes[999]) == (256, 384, 504) and set(sizes[1000:]) == {512}
    assert all(a <= b for a, b in zip(sizes, sizes[1:])) and all(s % 8 == 0 for s in sizes)
    assert len(set(sizes)) == 33  # 256, 264, ..., 512: few shapes for the matmul kernels
    assert {batch_size_at(TrainConfig(batch_size=512, batch_warmup=0), k) for k in (0, 1, 10)} == {512}
    # the loop draws exactly those batches
    seen, real = [], objective.losses_sample_times
    monkeypatch.setattr(objective, "losses_sample_times", lambda n, g, **times: seen.append(n) or real(n, g, **times))
    options = dict(steps=12, width=16, depth=2, batch_size=32, batch_warmup=8)
    train(seed=0, progress=False, **options)
    assert seen == [batch_size_at(TrainConfig(**options), k) for k in range(12)]
    assert (seen[0], seen[4], seen[-1]) == (16, 24, 32)


def test_precision_auto_is_bf16_only_on_native_bf16_hardware_where_measured_faster(monkeypatch):
    cpu = torch.device("cpu")
    assert TrainConfig().precision == "auto"
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(devices, "_cpu_has_bf16_units", lambda: True)  # then a micro-benchmark decides (tests/test_precision.py)
    monkeypatch.setattr(devices, "matmul_probe", lambda device: lambda: ([1.0] * 3, [0.5] * 3))  # bf16 2x faster
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(devices, "matmul_probe", lambda device: lambda: ([1.0] * 3, [1.45] * 3))  # 0.69x: slower
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(devices, "_cpu_has_bf16_units", lambda: False)
    monkeypatch.setattr(devices, "matmul_probe", None)  # not measured at all
    assert resolve_precision("auto", cpu) == "fp32"
    # auto trains exactly as the precision it resolves to, and bf16 really changes the arithmetic
    weights = {p: train(seed=3, precision=p, progress=False, **TINY).flow.model.state_dict() for p in ("auto", "fp32", "bf16")}
    assert all(torch.equal(weights["auto"][k], weights["fp32"][k]) for k in weights["auto"])
    assert not all(torch.equal(weights["bf16"][k], weights["fp32"][k]) for k in weights["bf16"])


def test_same_seed_same_weights_different_seed_different():
    a = train(seed=1, progress=False, **TINY).flow.model.state_dict()
    b = train(seed=1, progress=False, **TINY).flow.model.state_dict()
    c = train(seed=2, progress=False, **TINY).flow.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_callback_sees_the_ema_flow_and_stops_the_clock():
    calls = []

    def callback(step, flow, seconds):
        calls.append((step, seconds, {k: v.clone() for k, v in flow.model.state_dict().items()}))
        time.sleep(0.3)  # a slow probe must not count as training time

    options = {**TINY, "steps": 30, "ema": 0.9}
    started = time.perf_counter()
    result = train(**options, progress=False, callback=callback, callback_steps=[10, 30, 99])
    wall = time.perf_counter() - started
    assert [c[0] for c in calls] == [10, 30]  # steps past the end are never reached
    assert 0 < calls[0][1] < calls[1][1] <= result.seconds < wall - 0.6  # the 0.6 s of sleep is not in the clock
    final = result.flow.model.state_dict()  # the EMA weights at the end
    assert all(torch.equal(calls[1][2][k], final[k]) for k in final)
    assert not all(torch.equal(calls[0][2][k], final[k]) for k in final)
    # the callback does not change training
    plain = train(**options, progress=False).flow.model.state_dict()
    assert all(torch.equal(plain[k], final[k]) for k in final)


def test_ema_follows_its_warm_up_then_its_decay():
    # one weight set to k + 1 before update k: the average follows d_k = min(decay, (1 + k) / (warmup + k))
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema, expected = training.EMA(model, 0.6, warmup=5), 0.0
    for k in range(8):
        with torch.no_grad():
            model.weight.fill_(k + 1.0)
        ema.update(model)
        d = min(0.6, (1 + k) / (5 + k))
        expected = d * expected + (1 - d) * (k + 1.0)
        # float32 weights: a few roundings of ~6e-8 per update, damped by the decay (<= 0.6): <= ~5e-7 relative
        # (measured 5.4e-8, also with AVX2 and scalar kernels)
        assert ema.state_dict(model)["weight"].item() == pytest.approx(expected, rel=1e-6)
    assert min(0.6, 8 / 12) == 0.6  # the last steps ran at the decay itself


def test_short_training_learns_two_gaussians():
    # 600 steps of a small MLP: measured W2 0.57 (bf16 and fp32 training alike), about the W2 between two
    # draws of 1,000 points (0.58); untrained W2 is 3.2. Final loss measured 0.21; 6.7 at the first step
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
    # per-dimension means and stds come back in data coordinates (tolerance: a short run on a Gaussian;
    # measured: means at 22% of the bound (x off by 0.66 of 3.0), stds within 2.5%, bf16 and fp32 alike)
    torch.testing.assert_close(samples.mean(0), torch.tensor([100.0, -5.0, 0.0]), atol=1.0, rtol=0.02)
    torch.testing.assert_close(samples.std(0), torch.tensor([10.0, 0.1, 1.0]), rtol=0.15, atol=0.0)


# -- the engine: resume, config files, time sampling, loss weights, divergence ---------------------
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

from safetensors.torch import load_file  # noqa: E402

from flowmatch.api import fit  # noqa: E402
from flowmatch.cli import main  # noqa: E402
from flowmatch.engine.checkpoints import list_states  # noqa: E402
from flowmatch.engine.schedules import sample_times  # noqa: E402
from flowmatch.losses import loss_weights  # noqa: E402
from flowmatch.paths.affine import make_path  # noqa: E402

ENGINE = dict(
    steps=60,
    width=16,
    depth=2,
    batch_size=32,
    checkpoint_every=20,
    keep_checkpoints=10,
    optimizer="adamw",
    weight_decay=0.01,
    warmup=5,
    grad_clip=1.0,
    time_sampling="logit-normal",
    time_shift=2.0,
)


def _final_state(run: Path):
    return load_file(str(list_states(run)[-1] / "state.safetensors"))


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    config = TrainConfig(**ENGINE)
    fit(config, out=tmp_path / "whole", progress=False, evaluate=False)
    fit(config, out=tmp_path / "cut", progress=False, evaluate=False)
    cut = tmp_path / "cut"
    # stop at step 20: drop everything written after that checkpoint, as a crash would
    for folder in list_states(cut)[2:]:  # step-0 and step-20 stay
        shutil.rmtree(folder)
    for name in ["checkpoint.safetensors", "checkpoint.json", "metrics.json", "samples.png"]:
        (cut / name).unlink()
    assert list_states(cut)[-1].name == "step-00000020"
    fit(None, out=cut, resume=True, progress=False, evaluate=False)
    whole, resumed = _final_state(tmp_path / "whole"), _final_state(cut)
    assert list_states(cut)[-1].name == "step-00000060"
    assert set(whole) == set(resumed)
    for key in whole:  # model, EMA, optimiser moments and RNG states
        assert torch.equal(whole[key], resumed[key]), key
    a, b = load_file(str(tmp_path / "whole" / "checkpoint.safetensors")), load_file(str(cut / "checkpoint.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)

    def logged(run):  # step, loss, lr (timings differ)
        return [r.split(",")[:3] for r in (run / "metrics.csv").read_text().splitlines()]

    assert logged(cut) == logged(tmp_path / "whole") and [r[0] for r in logged(cut)] == ["step", "50"]


def test_resume_refuses_changed_config(tmp_path, capsys):
    run = tmp_path / "run"
    fit(TrainConfig(steps=10, width=8, batch_size=8), out=run, progress=False, evaluate=False)
    code = main(["train", "--resume", str(run), "--lr", "0.1"])
    assert code == 2 and "only --steps" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--steps", "20", "--quiet", "--no-eval"]) == 0
    assert list_states(run)[-1].name == "step-00000020"


def test_resuming_a_run_saved_before_a_key_existed_keeps_its_old_behaviour(tmp_path):
    import json

    run = tmp_path / "run"
    old = dict(batch_warmup=0, time_strata=0, target="conditional")
    fit(TrainConfig(steps=10, width=8, batch_size=16, **old), out=run, progress=False, evaluate=False)
    saved = json.loads((run / "config.json").read_text())
    for key in old:  # as written before these keys existed
        del saved[key]
    (run / "config.json").write_text(json.dumps(saved))
    resumed = api.resume_config(run, None)
    assert {key: getattr(resumed, key) for key in old} == old
    fit(TrainConfig.from_dict({**resumed.to_dict(), "steps": 12}), out=run, resume=True, progress=False, evaluate=False)
    (run / "config.json").write_text("[1, 2]")
    with pytest.raises(FlowmatchError, match="config must be a mapping"):
        api.resume_config(run, None)
    fresh = TrainConfig.from_dict(saved)  # a new run: the defaults
    assert {key: getattr(fresh, key) for key in old} == {key: getattr(TrainConfig(), key) for key in old}


def test_a_run_saved_before_the_finite_data_rules_resumes_on_the_posterior_it_started_with(tmp_path):
    import json

    run = tmp_path / "run"
    config = TrainConfig(
        data=_small_file(tmp_path), steps=10, width=8, batch_size=16, target="posterior", val_fraction=0.0, select="last", early_stop=0
    )
    fit(config, out=run, progress=False, evaluate=False)
    saved = json.loads((run / "config.json").read_text())
    for key in ("val_fraction", "select", "early_stop", "val_every"):
        del saved[key]
    (run / "config.json").write_text(json.dumps({**saved, "target": "auto"}))  # as such a run wrote it
    resumed = api.resume_config(run, None)
    assert (resumed.target, resumed.val_fraction, resumed.select, resumed.early_stop) == ("posterior", 0.0, "last", 0)
    (run / "config.json").write_text(json.dumps({**saved, "target": "auto", "coupling": "ot"}))
    assert api.resume_config(run, None).target == "conditional"  # auto never was the posterior there


def test_toml_config_and_flag_override(tmp_path, capsys):
    toml = tmp_path / "train.toml"
    toml.write_text('steps = 12\nwidth = 8\nbatch_size = 16\nlr = 0.01\ntime_sampling = "logit-normal"\n')
    run = tmp_path / "run"
    assert main(["train", "--config", str(toml), "--out", str(run), "--lr", "0.02", "--quiet", "--no-eval"]) == 0
    import json

    saved = json.loads((run / "config.json").read_text())
    assert (saved["steps"], saved["width"], saved["lr"], saved["time_sampling"]) == (12, 8, 0.02, "logit-normal")
    for text, needle in [
        ("stepz = 3\n", "unknown key 'stepz'"),
        ('steps = "many"\n', "steps must be a int"),
        ("steps = -1\n", "steps must be >= 1"),
        ("steps = [\n", "config file"),
    ]:
        toml.write_text(text)
        assert main(["train", "--config", str(toml), "--out", str(tmp_path / "x"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()


def test_time_sampling_distributions():
    g = torch.Generator().manual_seed(0)
    t = sample_times(TrainConfig(time_strata=0), 200_000, g)
    # SE of the mean of 200,000 uniform draws: 0.00065, so 0.005 is 7.7 SE (measured 0.0008)
    assert 0 <= t.min() and t.max() <= 1 and abs(t.mean() - 0.5) < 0.005
    ln = sample_times(TrainConfig(time_strata=0, time_sampling="logit-normal", time_loc=1.0, time_scale=0.5), 200_000, g)
    logit = torch.log(ln / (1 - ln))
    # SE 0.0011 (mean) and 0.0008 (std): 9 and 12 SE (measured 0.0016 and 0.0006)
    assert abs(logit.mean() - 1.0) < 0.01 and abs(logit.std() - 0.5) < 0.01
    # shift k: noise level r = 1 - t becomes k r / (1 + (k - 1) r); for uniform t, median r -> k / (1 + k)
    shifted = sample_times(TrainConfig(time_strata=0, time_shift=3.0), 200_000, g)
    # SE of the median: sqrt(p (1 - p) / n) / density = 0.0011 / 1.33 = 0.0008, so 0.005 is 6 SE (measured 8e-5)
    assert abs((1 - shifted).median() - 0.75) < 0.005


def test_stratified_times_hold_one_time_per_stratum_in_runs():
    g = torch.Generator().manual_seed(0)
    t = sample_times(TrainConfig(time_strata=32), 100, g)  # 100 = 4 runs of 4, then 28 of 3
    values, runs = torch.unique_consecutive(t, return_counts=True)
    assert runs.tolist() == [4] * 4 + [3] * 28
    assert torch.equal(torch.floor(values * 32), torch.arange(32, dtype=values.dtype))
    # one offset v per batch; float32 values < 1 round by <= 6e-8, inside 1e-8 + 1e-5 v (v = 0.0155 here:
    # 1.6e-7; measured 2.2e-8)
    assert torch.allclose(values - torch.arange(32) / 32, values[0].expand(32))
    assert len(torch.unique(sample_times(TrainConfig(time_strata=32), 8, g))) == 8  # K > n: n strata


def test_stratified_times_have_the_configured_marginals_and_less_variance():
    from scipy import stats

    g = torch.Generator().manual_seed(0)
    uniform = torch.cat([sample_times(TrainConfig(time_strata=16), 64, g) for _ in range(4000)])
    # the floor of 256,000 iid draws: 0.0027 (95%); measured 0.00096
    assert stats.kstest(uniform.numpy(), "uniform").statistic < 0.004
    config = TrainConfig(time_strata=16, time_sampling="logit-normal", time_loc=1.0, time_scale=0.5, time_shift=3.0)
    both = torch.cat([sample_times(config, 64, g) for _ in range(4000)]).double()
    # the same transforms of independent draws: logit-normal, then the shift toward noise
    n = torch.sigmoid(1.0 + 0.5 * torch.randn(256_000, generator=g, dtype=torch.float64))
    reference = 1 - 3 * (1 - n) / (1 + 2 * (1 - n))
    # two samples of 256,000: the 95% floor is 1.36 sqrt(2 / 256,000) = 0.0038; measured 0.0013
    assert stats.ks_2samp(both.numpy(), reference.numpy()).statistic < 0.006
    # the point of the strata: the batch mean of a smooth f(t) varies far less than with independent times
    f = lambda t: torch.sin(3 * t)  # noqa: E731
    means = {k: torch.stack([f(sample_times(TrainConfig(time_strata=k), 64, g)).mean() for _ in range(2000)]) for k in (0, 16)}
    assert abs(means[16].mean() - (1 - math.cos(3)) / 3) < 5e-4  # measured 1e-5 to 6e-5 on seeds 0-2
    assert means[16].var() < means[0].var() / 50  # measured 181 times less


def test_loss_weights_turn_velocity_error_into_endpoint_error():
    path = make_path("cosine")
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 2, generator=g, dtype=torch.float64), torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.8 + 0.1
    s = path.sample(x0, x1, t)
    error = torch.randn(64, 2, generator=g, dtype=torch.float64)
    for kind, truth in [("x1", x1), ("x0", x0)]:
        implied = path.convert(s.velocity + error, s.x_t, t, "velocity", kind)
        weighted = loss_weights(path, t, kind) * error.pow(2).sum(1)
        torch.testing.assert_close(weighted, (implied - truth).pow(2).sum(1))  # float64 identity, default 1e-7 relative


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), "--steps", "200", "--lr", "1e6", "--width", "8", "--quiet", "--ema", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "loss is" in err and len(err.strip().splitlines()) == 1
    assert list_states(run), "the step-0 checkpoint is kept"
    import flowmatch

    with pytest.warns(FlowmatchWarning, match="training checkpoint step 0"):
        flowmatch.load(run)  # still loadable, from the last good training checkpoint


# -- conditional generation -----------------------------------------------------------------------
import numpy as np  # noqa: E402


def test_conditional_training_generates_the_asked_class():
    result = train(data="8gaussians", conditional=True, steps=800, width=64, batch_size=256, lr=3e-3, cond_dropout=0.1, progress=False)
    flow = result.flow
    for k in (0, 3):
        x = flow.sample(400, nfe=20, seed=k, label=k)
        centre = 4 * torch.tensor([math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)]) / 1.414
        # measured: mean within 0.05 of the centre (bf16 and fp32 training); the nearest other centre is 2.16 away
        assert (x.mean(0) - centre).norm() < 0.4
    # guidance w: v = v_u + w (v_c - v_u); w = 1 is the conditional model itself
    a = flow.sample(50, nfe=8, seed=1, label=2)
    b = flow.sample(50, nfe=8, seed=1, label=2, guidance=1.0)
    torch.testing.assert_close(a, b)  # float32 default tolerance for a rearranged sum (measured equal)
    x, t = torch.randn(5, 2), torch.tensor(0.3)
    y = torch.full((5,), 2)
    v_c, v_u = flow.model(x, t, y), flow.model(x, t, None)
    # float32, possibly one batch of 10 against two of 5 (other matmul kernels): ~1e-7 |v| times w = 3
    # (measured equal)
    torch.testing.assert_close(flow.velocity(y, 3.0)(x, t), v_u + 3.0 * (v_c - v_u), rtol=1e-5, atol=1e-5)
    with pytest.raises(FlowmatchError, match="out of range"):
        flow.sample(3, label=8)


def test_conditional_needs_labels(tmp_path):
    with pytest.raises(FlowmatchError, match="no class labels"):
        train(data="swissroll", conditional=True, steps=2, progress=False)
    unconditional = train(steps=2, width=8, progress=False).flow
    with pytest.raises(FlowmatchError, match="without labels"):
        unconditional.sample(3, label=0)


def test_csv_label_column_and_npz_labels(tmp_path):
    g = np.random.default_rng(0)
    rows = ["x,y,kind"] + [f"{g.normal() + 5 * (i % 2)},{g.normal()},{'ab'[i % 2]}" for i in range(200)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    result = train(data=str(tmp_path / "d.csv"), label_column="kind", conditional=True, steps=5, width=8, progress=False)
    assert result.flow.dataset.class_names == ["a", "b"] and result.flow.dataset.dim == 2
    np.savez(tmp_path / "d.npz", data=g.normal(size=(50, 3)), labels=np.arange(50) % 5)
    result = train(data=str(tmp_path / "d.npz"), conditional=True, steps=5, width=8, progress=False)
    assert result.flow.num_classes == 5
    with pytest.raises(FlowmatchError, match="no label column 'colour'"):
        train(data=str(tmp_path / "d.csv"), label_column="colour", steps=1, progress=False)


# -- data paths and options the other tests do not reach ---------------------------------------------
def test_memory_mapped_npy_trains_without_reading_the_training_rows(tmp_path):
    from flowmatch.data.dataset import load_dataset

    g = np.random.default_rng(0)
    np.save(tmp_path / "big.npy", g.normal(size=(5000, 3)).astype(np.float32) * 2 + 1)
    ds = load_dataset(str(tmp_path / "big.npy"), mmap=True)
    assert ds.train is None and ds.mapped is not None and len(ds.mapped) == 5000 - len(ds.test)
    batch = ds.sample(4000, torch.Generator().manual_seed(0))
    # standardised rows: mean 0 and std 1 within sampling error (4,000 draws: se ~0.016 for the mean, ~0.011 for
    # the std, so 0.08 is 5 and 7 SE; measured 0.049 and 0.017)
    assert batch.mean(0).abs().max() < 0.08 and (batch.std(0) - 1).abs().max() < 0.08
    result = train(data=str(tmp_path / "big.npy"), mmap="yes", steps=5, width=8, progress=False)
    assert result.flow.sample(4, nfe=4).shape == (4, 3)


def test_sample_pictures_during_training_and_bf16(tmp_path):
    run = tmp_path / "run"
    fit(TrainConfig(steps=20, width=8, batch_size=16, sample_every=10, precision="bf16"), out=run, progress=False, evaluate=False)
    assert sorted(p.name for p in (run / "progress").iterdir()) == ["step-00000010.png", "step-00000020.png"]
    assert (run / "progress" / "step-00000020.png").stat().st_size > 1000


def test_target_auto_is_the_posterior_where_it_applies(tmp_path, capsys):
    assert TrainConfig().target == "auto" and resolve_target(TrainConfig()) == "posterior"
    for mixture in ("8gaussians", "two-gaussians"):  # Gaussian-mixture sources have it too
        assert resolve_target(TrainConfig(source=mixture, data="moons")) == "posterior"
    for other in [dict(source="moons"), dict(coupling="ot"), dict(pairs="p.npz"), dict(pairs="p.npz", objective="distill")]:
        assert resolve_target(TrainConfig(**other)) == "conditional", other
    assert resolve_target(TrainConfig(target="conditional")) == "conditional"
    with pytest.raises(
        FlowmatchError,
        match=r"target posterior needs a gaussian or gaussian-mixture source \(gaussian, "
        r"two-gaussians, 8gaussians\), or the uniform law on a manifold \(kind manifold\), not 'moons'",
    ):
        TrainConfig.from_dict({"target": "posterior", "source": "moons"})
    with pytest.raises(FlowmatchError, match="target posterior needs independent pairs, not coupling ot"):
        TrainConfig.from_dict({"target": "posterior", "coupling": "ot"})
    run = tmp_path / "run"
    assert main(["train", "--target", "posterior", "--coupling", "sinkhorn", "--out", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "target posterior needs independent pairs" in err and not run.exists()


@pytest.mark.parametrize("source, data, seed", [("gaussian", "two-gaussians", 2), ("8gaussians", "moons", 3)])
def test_posterior_target_trains_and_changes_the_regression(tmp_path, source, data, seed):
    # The same seed and batches: the targets differ, so the weights do; the run records what it used.
    # With the 8gaussians source the posterior runs over (point, component) pairs; auto picks it too.
    weights = {}
    for target in ("conditional", "posterior"):
        config = TrainConfig(source=source, data=data, target=target, seed=seed, **TINY)
        result, metrics = fit(config, out=tmp_path / target, progress=False, evaluate=False)
        assert metrics["target"] == target and math.isfinite(metrics["w2"])
        weights[target] = result.flow.model.state_dict()
    assert any(not torch.equal(weights["conditional"][k], weights["posterior"][k]) for k in weights["posterior"])
    auto = fit(TrainConfig(source=source, data=data, seed=seed, **TINY), progress=False, evaluate=False)
    assert auto[1]["target"] == "posterior"
    assert all(torch.equal(auto[0].flow.model.state_dict()[k], weights["posterior"][k]) for k in weights["posterior"])


def test_posterior_target_of_a_conditional_model_averages_within_the_class():
    labels = torch.tensor([0, 1, 2, 2])  # the last pair's label was dropped: 2 is the null label here
    classes = torch.tensor([0, 1, 1, 0, 1])  # the global batch's true classes
    allowed = objective.same_class(labels, classes, null=2)
    assert allowed.tolist() == [
        [True, False, False, True, False],
        [False, True, True, False, True],
        [True, True, True, True, True],
        [True, True, True, True, True],
    ]
    assert objective.same_class(None, None, null=2) is None


# -- finite data: validation split, selection, early stop ------------------------------------------
def _small_file(tmp_path, n=160, seed=0):
    import numpy as np

    g = np.random.default_rng(seed)
    rows = np.concatenate([g.normal(-3, 1, (n // 2, 2)), g.normal(3, 0.5, (n - n // 2, 2))])
    path = tmp_path / "small.npy"
    np.save(path, rows)
    return str(path)


def test_target_auto_is_conditional_on_small_finite_data(tmp_path):
    config = TrainConfig()
    assert resolve_target(config, n_train=None) == "posterior"  # fresh draws
    assert resolve_target(config, n_train=config_module.POSTERIOR_MIN_ROWS) == "posterior"
    assert resolve_target(config, n_train=config_module.POSTERIOR_MIN_ROWS - 1) == "conditional"
    assert resolve_target(TrainConfig(target="posterior"), n_train=10) == "posterior"  # asked for: kept
    result = train(data=_small_file(tmp_path), steps=2, width=8, batch_size=8, progress=False)
    assert result.target == "conditional"


def test_validation_rows_are_held_out_of_the_training_rows(tmp_path):
    from flowmatch.flows.continuous import dataset_from_config

    config = TrainConfig(data=_small_file(tmp_path)).to_dict()
    full = dataset_from_config({**config, "val_fraction": 0.0})
    ds = dataset_from_config(config)
    assert (len(full.train), len(ds.train), len(ds.val), len(ds.test)) == (128, 115, 13, 32)  # 10% of 128
    rows = {tuple(r.tolist()) for r in ds.train}
    assert not rows & {tuple(r.tolist()) for r in ds.val}
    assert rows | {tuple(r.tolist()) for r in ds.val} == {tuple(r.tolist()) for r in full.train}
    again = dataset_from_config(config)
    assert torch.equal(again.val, ds.val) and torch.equal(again.train, ds.train)
    assert dataset_from_config({**TrainConfig().to_dict()}).val is None  # built-in sets draw fresh points
    with pytest.raises(FlowmatchError, match="select val-loss needs a validation split"):
        train(select="val-loss", steps=1, progress=False)


def test_selection_keeps_the_lowest_validation_loss_and_early_stop_ends_the_run(tmp_path):
    import numpy as np

    run = tmp_path / "run"
    config = TrainConfig(
        data=_small_file(tmp_path),
        steps=3000,
        width=64,
        batch_size=64,
        batch_warmup=0,
        val_every=25,
        early_stop=200,
        lr=1e-2,
        precision="fp32",
    )
    result, metrics = fit(config, out=run, progress=False, evaluate=False)
    log = np.loadtxt(run / "validation.csv", delimiter=",", skiprows=1)
    best = int(log[np.argmin(log[:, 1]), 0])
    v = result.validation
    # the CSV keeps 6 significant digits: <= 5e-6 relative (measured 3.5e-6)
    assert v["best_step"] == best and v["best_loss"] == pytest.approx(log[:, 1].min(), rel=1e-5)
    # this small set overfits: the loss rises after its minimum and the run stops 200 steps later
    assert v["stopped_early"] and result.step == best + 200 < 3000 and log[-1, 0] == result.step
    assert metrics["validation"] == v and metrics["steps_run"] == result.step
    # the saved weights are those of the best step: their validation loss is the minimum
    validation = points_validation.ValidationSet(config, result.flow.dataset, result.flow.path, None, "cpu")
    from flowmatch.runs import load

    # the same computation on the saved float32 weights (measured equal); 1e-5 leaves float32 round-off room
    assert validation.loss(load(run).model) == pytest.approx(v["best_loss"], rel=1e-5)
    last = fit(TrainConfig.from_dict({**config.to_dict(), "select": "last"}), progress=False, evaluate=False)[0]
    assert validation.loss(last.flow.model) > v["best_loss"]  # measured 1.0812 against 1.0744


def test_resume_with_validation_is_bitwise_identical(tmp_path):
    config = TrainConfig(
        data=_small_file(tmp_path),
        steps=60,
        width=16,
        depth=2,
        batch_size=16,
        batch_warmup=0,
        val_every=10,
        checkpoint_every=20,
        early_stop=0,
        precision="fp32",
    )
    fit(config, out=tmp_path / "whole", progress=False, evaluate=False)
    cut = tmp_path / "cut"
    fit(config, out=cut, progress=False, evaluate=False)
    for folder in list_states(cut)[2:]:  # keep step 0 and 20, as a crash after step 20 would
        shutil.rmtree(folder)
    for name in ["checkpoint.safetensors", "checkpoint.json", "metrics.json", "samples.png"]:
        (cut / name).unlink()
    fit(None, out=cut, resume=True, progress=False, evaluate=False)
    a, b = load_file(str(tmp_path / "whole" / "checkpoint.safetensors")), load_file(str(cut / "checkpoint.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (cut / "validation.csv").read_text() == (tmp_path / "whole" / "validation.csv").read_text()


def test_mlp_dropout_is_a_training_time_regulariser():
    from flowmatch.models.registry import build_model

    model = build_model("mlp", 3, width=32, depth=2, dropout=0.5)
    x, t = torch.randn(64, 3, generator=torch.Generator().manual_seed(0)), torch.full((64,), 0.3)
    torch.manual_seed(1)
    assert not torch.equal(model(x, t), model(x, t))  # training mode: a fresh mask each call
    model.eval()
    assert torch.equal(model(x, t), model(x, t))
    assert model.config["dropout"] == 0.5 and "dropout" not in build_model("mlp", 3).config
    with pytest.raises(FlowmatchError, match="dropout must be in"):
        build_model("mlp", 3, dropout=1.0)


def test_a_run_that_copies_its_rows_says_so_in_one_line(tmp_path, capsys):
    import json

    data, run = _small_file(tmp_path, n=40), tmp_path / "run"
    flags = [
        "--data",
        data,
        "--out",
        str(run),
        "--steps",
        "1500",
        "--select",
        "last",
        "--target",
        "posterior",
        "--width",
        "64",
        "--batch-size",
        "64",
        "--batch-warmup",
        "0",
        "--precision",
        "fp32",
        "--quiet",
    ]
    assert main(["train", *flags]) == 0
    err = capsys.readouterr().err
    memo = json.loads((run / "metrics.json").read_text())["memorisation"]
    # measured 0.41 (29 generated rows, 8 test rows; the test split's own 0.125, also with AVX2 kernels); the
    # warning needs > max(0.10, twice the test split's own)
    assert memo["copy_share"]["value"] > max(0.25, 2 * memo["copy_share"]["test"])
    lines = [line for line in err.splitlines() if "copies its training data" in line]
    assert len(lines) == 1 and "--select val-loss" in lines[0]
    assert main(["eval", "--run", str(run), "--quick", "--quiet"]) == 0
    assert "flowmatch eval: warning" in capsys.readouterr().err


def test_a_run_that_stopped_early_is_finished_when_resumed(tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(
        data=_small_file(tmp_path),
        steps=3000,
        width=64,
        batch_size=64,
        batch_warmup=0,
        val_every=25,
        early_stop=200,
        lr=1e-2,
        precision="fp32",
    )
    first = fit(config, out=run, progress=False, evaluate=False)[0]
    assert first.validation["stopped_early"]
    weights = load_file(str(run / "checkpoint.safetensors"))
    again = fit(TrainConfig.from_dict({**config.to_dict(), "steps": 4000}), out=run, resume=True, progress=False, evaluate=False)[0]
    assert again.step == first.step and again.validation == first.validation
    assert all(torch.equal(weights[k], v) for k, v in load_file(str(run / "checkpoint.safetensors")).items())
