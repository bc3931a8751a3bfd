"""Your own model on your own DataLoader, through flowmatch's trainer; saved, loaded in a fresh process,
sampled and evaluated there.

    python examples/own_model.py --out runs/own-model [--steps 3000]

The model (examples/models.py) is built with ``flowmatch.models.from_factory``, so the run folder
records ``models:ResMLP`` and its arguments next to the safetensors weights, and ``flowmatch.load``
rebuilds it without pickle.
"""

import argparse
import json
import os
import subprocess
import sys

import torch
from models import ResMLP
from torch.utils.data import DataLoader, TensorDataset

import flowmatch
from flowmatch.data.toy import sample_builtin
from flowmatch.models import from_factory

LOAD_AND_EVALUATE = """
import json, sys, torch, flowmatch
run, reference = sys.argv[1], torch.load(sys.argv[2], weights_only=True)
flow = flowmatch.load(run)                      # rebuilds models:ResMLP from the run folder
report = flowmatch.evaluate(flow, quick=True, reference=reference, pictures=False)
w2 = report["quality"]["w2"]
print(json.dumps({"model": type(flow.model).__name__, "w2": w2["value"], "w2_floor": w2["floor"], "nll": report["likelihood"]["nll"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/own-model")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()

    train_rows = sample_builtin("moons", args.rows, 0)  # stand-ins for your data
    held_out = sample_builtin("moons", 4000, 1)
    loader = DataLoader(TensorDataset(train_rows), batch_size=256, shuffle=True)
    model = from_factory(ResMLP, dim=2, width=128, blocks=3)
    result, metrics = flowmatch.fit(
        out=args.out, model=model, data=loader, reference=held_out, steps=args.steps, lr=2e-3, force=True, evaluate=False
    )
    print(f"trained {result.step} steps in {result.seconds:.1f} s: W2 {metrics['w2']:.3f} (floor {metrics['w2_floor']:.3f})")

    torch.save(held_out, os.path.join(args.out, "held_out.pt"))
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    fresh = subprocess.run(
        [sys.executable, "-c", LOAD_AND_EVALUATE, args.out, os.path.join(args.out, "held_out.pt")],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    report = json.loads(fresh.stdout.strip().splitlines()[-1])
    print(
        f"fresh process: loaded a {report['model']}; W2 {report['w2']:.3f} (floor {report['w2_floor']:.3f}), NLL {report['nll']:.3f} nats"
    )


if __name__ == "__main__":
    main()
