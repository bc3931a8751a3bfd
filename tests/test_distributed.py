"""Data-parallel training under torchrun (2 CPU processes, gloo) equals one process with the doubled batch."""

import json
import os
import shutil
import subprocess
import sys

from safetensors.torch import load_file

from flowmatch.api import fit
from flowmatch.config import TrainConfig
from flowmatch.engine.checkpoints import list_states

# fp32: the comparison is about sharding, and bf16's rounding (8-bit mantissas) would swamp the float32
# sum-order differences it looks for (100 bf16 steps differ by 2e-3)
COMMON = [
    "--steps",
    "100",
    "--width",
    "32",
    "--depth",
    "2",
    "--device",
    "cpu",
    "--quiet",
    "--ema",
    "0.99",
    "--no-eval",
    "--precision",
    "fp32",
]


def _failure(done) -> str:
    """The ranks' own messages (the head of stderr, where a rank that aborted says why) and torchrun's summary (the tail)."""
    err = done.stderr
    return err if len(err) <= 4000 else err[:2000] + "\n...\n" + err[-2000:]


def test_two_processes_match_one_process_with_doubled_batch(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun ships with torch"
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--standalone",
            "-m",
            "flowmatch",
            "train",
            "--out",
            str(ddp),
            "--batch-size",
            "32",
            *COMMON,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, _failure(done)
    agreement = json.loads((ddp / "distributed.json").read_text())
    assert agreement == {"world_size": 2, "max_weight_difference_across_ranks": 0.0}

    single = tmp_path / "single"
    fit(
        TrainConfig(steps=100, width=32, depth=2, device="cpu", ema=0.99, batch_size=64, precision="fp32"),
        out=single,
        progress=False,
        evaluate=False,
    )
    a = load_file(str(list_states(ddp)[-1] / "state.safetensors"))
    b = load_file(str(list_states(single)[-1] / "state.safetensors"))
    gap = max((a[k] - b[k]).abs().max().item() for k in a if k.startswith(("model.", "ema.")))
    # the same global batches; only the order of floating-point sums differs (measured 2e-7 over 200 steps)
    assert gap < 1e-5
    # only rank 0 wrote files: one metrics.csv header, one final checkpoint
    assert (ddp / "metrics.csv").read_text().count("step,loss") == 1
    assert (ddp / "checkpoint.safetensors").is_file()


def test_a_map_style_dataset_is_sharded_across_processes(tmp_path):
    """Each process reads its own DistributedSampler shard of a user's Dataset; the weights agree."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    here = os.path.dirname(__file__)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": here}
    command = [torchrun, "--nproc_per_node", "2", "--standalone", os.path.join(here, "ddp_stream_script.py"), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, _failure(done)
    seen = [json.load(open(out / f"seen-{rank}.json")) for rank in (0, 1)]
    # 4 steps x 32 rows each (the first peeked batch included): 128 of the 256 rows, disjoint halves of one epoch
    assert len(seen[0]) == len(seen[1]) == 4 * 32 and not set(seen[0]) & set(seen[1])
    agreement = json.load(open(out / "distributed.json"))
    assert agreement["world_size"] == 2 and agreement["max_weight_difference_across_ranks"] < 1e-6


def test_meanflow_trains_under_ddp_with_its_jvp_on_the_wrapped_module(tmp_path):
    """torch.func.jvp cannot run through DDP's forward: the MeanFlow target goes to the module inside, the
    prediction through DDP (one forward per backward); both processes end with the same weights."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun
    out = tmp_path / "mf"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [torchrun, "--nproc_per_node", "2", "--standalone", "-m", "flowmatch", "train", "--out", str(out), "--objective",
               "meanflow", "--batch-size", "32", "--steps", "20", *COMMON[2:]]  # COMMON less its 100 steps  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, _failure(done)
    assert json.loads((out / "distributed.json").read_text()) == {"world_size": 2, "max_weight_difference_across_ranks": 0.0}
    assert json.loads((out / "config.json").read_text())["objective"] == "meanflow"
