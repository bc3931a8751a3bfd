"""Precision ``auto`` (issue 28, item 2): bf16 only where a start-up micro-benchmark of the run's own model
measures it faster, recorded with the run and used again on resume and by ``precision="auto"`` sampling
(flowmatch.engine.devices, flowmatch.engine.loop, flowmatch.saving.recorded_precision).

The decision is tested as a pure function of injected timings, never by timing here: the tests pass on
any CPU, with or without bf16 units."""

import json

import pytest
import torch

import flowmatch
import flowmatch.engine.devices as devices
import flowmatch.engine.loop as loop
from flowmatch.data.toy import sample_builtin
from flowmatch.engine.devices import BF16_MIN_SPEEDUP, PROBE_MIN_PASSES, PrecisionChoice, choose_precision, decide_precision
from flowmatch.errors import FlowmatchError

SMALL = dict(steps=12, width=16, depth=2, batch_size=32, batch_warmup=0, progress=False, threads=1)


def _never():
    raise AssertionError("nothing may be measured here")


# -- the decision: a pure function of the timings ------------------------------------------------------
def test_bf16_only_where_its_median_pass_is_at_least_1_1x_faster():
    assert BF16_MIN_SPEEDUP == 1.1
    fp32 = [10.0, 10.2, 9.9, 10.1, 10.0]
    # 1.05x: within a short measurement's noise, fp32
    assert choose_precision(fp32, [9.52] * 5) == PrecisionChoice("fp32", 10.0 / 9.52, "measured")
    assert choose_precision(fp32, [9.0] * 5).precision == "bf16"  # 1.11x
    assert choose_precision(fp32, [5.0] * 5) == PrecisionChoice("bf16", 2.0, "measured")
    # the Intel Xeon with avx512_bf16 and no AMX of issue 28: bf16 trains the default MLP at 0.69x
    intel = choose_precision([1.0] * 5, [1 / 0.69] * 5)
    assert intel.precision == "fp32" and intel.bf16_speedup == pytest.approx(0.69)
    # medians: one stalled pass (a page fault, another process) does not decide; a mean would (bf16 mean 22 > fp32 10)
    assert choose_precision(fp32, [5.0, 5.0, 100.0]).precision == "bf16"
    assert choose_precision([10.0, 10.0, 300.0], [12.0] * 3).precision == "fp32"
    for bad in ([], [0.0], [float("nan")]):
        with pytest.raises(FlowmatchError, match="choose_precision"):
            choose_precision(bad, [1.0])


def test_auto_measures_only_where_the_device_has_bf16_units():
    cpu = torch.device("cpu")
    for asked in ("fp32", "bf16"):  # as asked, nothing measured
        assert decide_precision(asked, cpu, _never, bf16_units=True) == PrecisionChoice(asked, None, "asked")
    # no bf16 units (an AMD or Intel CPU without AVX512-BF16 or AMX): fp32 directly
    assert decide_precision("auto", cpu, _never, bf16_units=False) == PrecisionChoice("fp32", None, "no bf16 units")
    slower = decide_precision("auto", cpu, lambda: ([1.0] * 3, [1.45] * 3), bf16_units=True)
    faster = decide_precision("auto", cpu, lambda: ([1.0] * 3, [0.5] * 3), bf16_units=True)
    assert (slower.precision, faster.precision) == ("fp32", "bf16") and faster.bf16_speedup == 2.0
    with pytest.raises(FlowmatchError, match="precision must be one of auto, fp32, bf16"):
        decide_precision("fp16", cpu)
    # this machine, as flowmatch sees it: without bf16 units auto never measures
    if not devices.has_bf16_units(cpu):
        assert decide_precision("auto", cpu, _never) == PrecisionChoice("fp32", None, "no bf16 units")


def test_the_micro_benchmark_leaves_the_model_and_the_random_state_as_they_were():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 4)).train()
    x = torch.randn(16, 4)
    before = torch.get_rng_state()
    fp32, bf16 = devices.time_precisions(lambda: model(x).square().mean(), model, torch.device("cpu"))
    assert len(fp32) == len(bf16) >= PROBE_MIN_PASSES and min(fp32 + bf16) > 0
    assert model.training and all(p.grad is None for p in model.parameters())  # eval mode while timed; no .grad
    assert torch.equal(torch.get_rng_state(), before)


# -- a run: the decision recorded, resumed and sampled with --------------------------------------------
def _pretend(monkeypatch, fp32: float, bf16: float, probes: list | None = None):
    """A machine with bf16 units whose micro-benchmark of the run's model gives these medians; the run's
    own probe is called once (``probes`` counts the calls), so that it is checked to be a loss with a graph."""

    def timings(forward, model, device):
        loss = forward()
        assert loss.ndim == 0 and loss.requires_grad
        if probes is not None:
            probes.append(1)
        return [fp32] * 3, [bf16] * 3

    monkeypatch.setattr(devices, "has_bf16_units", lambda device: True)
    monkeypatch.setattr(loop, "time_precisions", timings)


def test_a_run_records_auto_as_decided_resumes_and_samples_in_it(tmp_path, monkeypatch):
    probes: list = []
    _pretend(monkeypatch, fp32=3.0, bf16=2.0, probes=probes)  # 1.5x: bf16
    run = tmp_path / "run"
    result, metrics = flowmatch.fit(out=run, data="two-gaussians", **{**SMALL, "steps": 6}, evaluate=False)
    config = json.loads((run / "config.json").read_text())
    assert config["precision"] == "auto"  # as asked, and beside it what ran
    assert config["resolved"] == {"precision": "bf16", "bf16_speedup": 1.5, "precision_reason": "measured"}
    assert (result.precision, result.bf16_speedup, metrics["precision"], metrics["bf16_speedup"]) == ("bf16", 1.5, "bf16", 1.5)
    assert len(probes) == 1
    # a resumed run continues in what it recorded, whatever a new measurement would say
    _pretend(monkeypatch, fp32=1.0, bf16=2.0, probes=probes)  # 0.5x now
    resumed, _ = flowmatch.fit(out=run, data="two-gaussians", **{**SMALL, "steps": 12}, resume=True, evaluate=False)
    assert resumed.precision == "bf16" and len(probes) == 1
    assert json.loads((run / "config.json").read_text()) == {**config, "steps": 12}
    # sampling with "auto" uses the recorded decision: the run's flow and the loaded one alike
    flow = flowmatch.load(run)
    for each in (flow, resumed.flow):
        auto = each.sample(64, nfe=4, seed=1, precision="auto")
        assert torch.equal(auto, each.sample(64, nfe=4, seed=1, precision="bf16"))
        assert not torch.equal(auto, each.sample(64, nfe=4, seed=1, precision="fp32"))  # bf16 rounds differently


def test_a_run_that_measures_bf16_slower_trains_in_fp32_and_says_so(tmp_path, monkeypatch):
    _pretend(monkeypatch, fp32=1.0, bf16=1 / 0.69)
    result, _ = flowmatch.fit(out=tmp_path / "run", data="two-gaussians", **SMALL, evaluate=False)
    record = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert record["precision"] == result.precision == "fp32" and record["bf16_speedup"] == pytest.approx(0.69)
    assert torch.equal(result.flow.sample(16, nfe=4, seed=0, precision="auto"), result.flow.sample(16, nfe=4, seed=0))


@pytest.mark.parametrize("data", ["rows", "stream"])
def test_measuring_leaves_the_run_as_it_would_have_been(monkeypatch, data):
    """The probe draws its batch with a generator of its own (a stream's first batch is peeked, not consumed) and
    leaves the model and torch's random state alone: a run that measured (and chose fp32) has the bits of one that
    did not measure."""
    x = sample_builtin("two-gaussians", 4096, 0)

    def given():
        if data == "rows":
            return x
        return (x[i : i + 64] for i in range(0, len(x), 64))

    monkeypatch.setattr(devices, "has_bf16_units", lambda device: False)  # fp32, not measured
    plain = flowmatch.train(data=given(), **SMALL).flow
    real = devices.time_precisions
    monkeypatch.setattr(devices, "has_bf16_units", lambda device: True)
    monkeypatch.setattr(loop, "time_precisions", lambda f, m, d: (real(f, m, d), ([1.0] * 3, [1.0] * 3))[1])  # runs it; 1.0x
    measured = flowmatch.train(data=given(), **SMALL)
    assert measured.precision == "fp32" and measured.bf16_speedup == 1.0
    for key, value in plain.model.state_dict().items():
        assert torch.equal(value, measured.flow.model.state_dict()[key]), key


def test_sampling_auto_needs_a_record():
    flow = flowmatch.train(data="two-gaussians", **SMALL).flow
    assert flow.config["resolved"]["precision"] in ("fp32", "bf16")
    flow.config = {**flow.config, "precision": "fp32"}  # as asked: that
    flow.config.pop("resolved")
    assert torch.equal(flow.sample(8, nfe=4, seed=0, precision="auto"), flow.sample(8, nfe=4, seed=0))
    flow.config["precision"] = "auto"  # a run saved before runs recorded what auto chose
    with pytest.raises(FlowmatchError, match="records none.*sample with precision 'fp32' or 'bf16'"):
        flow.sample(8, precision="auto")
    flow.config["resolved"] = {"precision": "fp16"}
    with pytest.raises(FlowmatchError, match="must record precision fp32 or bf16"):
        flow.sample(8, precision="auto")
    made = flowmatch.Flow(flow.model, "linear", dim=2)  # by hand: fp32
    assert torch.equal(made.sample(8, nfe=4, seed=0, precision="auto"), made.sample(8, nfe=4, seed=0))


def test_under_torchrun_every_process_takes_the_first_ones_choice(tmp_path):
    """The broadcast that carries the first process's choice to the others, on a one-process gloo group: what it
    sends is what arrives (precision, ratio or none, reason)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        for choice in (PrecisionChoice("bf16", 1.37, "measured"), PrecisionChoice("fp32", None, "no bf16 units")):
            assert loop._agree(choice, torch.device("cpu")) == choice
    finally:
        dist.destroy_process_group()
