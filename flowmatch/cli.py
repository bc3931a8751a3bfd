"""The ``flowmatch`` command: a thin layer that parses flags, calls the Python API and reports.

Errors in what the user gave (flags, files, configs, checkpoints) print one line on stderr and
exit with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FlowmatchError
from .solvers import SOLVERS, TIME_GRIDS
from .training import PRESETS, TrainConfig, fit, resume_config


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


# -- train ---------------------------------------------------------------------------------------
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a flow and write a run folder",
        description="Train a flow matching model. Options come from defaults, then --preset, then --config "
        "(TOML with the same keys, underscores for dashes), then flags. The batch size is per process under torchrun.",
    )
    p.add_argument("--out", help="run folder to write")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its newest checkpoint (--steps may be raised)")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a named recipe (seed: the seed document's)")
    p.add_argument("--config", help="TOML file of training options; flags override it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    for f in dataclasses.fields(TrainConfig):
        meta, flag = f.metadata, "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=f"{meta['help']} (default: {f.default})")
            continue
        p.add_argument(
            flag,
            dest=f.name,
            type={"str": str, "int": int, "float": float}[f.type],
            choices=meta.get("choices"),
            default=argparse.SUPPRESS,
            help=f"{meta['help']} (default: {f.default})",
        )


def _load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            values = tomllib.load(fh)
    except FileNotFoundError:
        raise FlowmatchError(f"config file '{path}' does not exist") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FlowmatchError(f"config file '{path}': {exc}") from None
    preset = values.pop("preset", None)
    if preset is not None and not isinstance(preset, str):
        raise FlowmatchError(f"config file '{path}': preset must be a string")
    return {"preset": preset, "values": values}


def _cmd_train(args) -> int:
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if args.resume:
        if args.out or args.preset or args.config or args.force or set(flags) - {"steps"}:
            raise FlowmatchError("--resume continues a run with its saved config; only --steps may be given with it")
        out = args.resume
        config = resume_config(Path(out), None)
        if "steps" in flags:
            config = TrainConfig.from_dict({**config.to_dict(), "steps": flags["steps"]}, source="flags")
    else:
        if not args.out:
            raise FlowmatchError("--out RUN_DIR is required (or --resume RUN_DIR)")
        out = args.out
        preset, file_values, source = args.preset, {}, "config"
        if args.config:
            loaded = _load_toml(args.config)
            preset = preset or loaded["preset"]
            file_values, source = loaded["values"], f"config file '{args.config}'"
        if preset is not None and preset not in PRESETS:
            raise FlowmatchError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
        base = TrainConfig.from_dict({**PRESETS.get(preset, {}), **file_values}, source=source)
        config = TrainConfig.from_dict({**base.to_dict(), **flags}, source="flags")
    result, metrics = fit(config, out=out, force=args.force, resume=bool(args.resume), progress=not args.quiet)
    if result.interrupted:
        print(f"stopped at step {result.step} of {config.steps}; checkpoint saved. Resume with: flowmatch train --resume {out}")
        return 0
    if metrics:
        print(
            f"wrote {out}: loss {metrics['final_loss']:.4f}, W2 {metrics['w2']:.4f} "
            f"(floor {metrics['w2_floor']:.4f}, ratio {metrics['w2_ratio']:.2f}), {metrics['train_seconds']:.1f} s"
        )
    return 0


# -- sample --------------------------------------------------------------------------------------
def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate samples from a run", description="Generate samples from a trained run.")
    p.add_argument("--run", required=True, help="run folder written by 'flowmatch train'")
    p.add_argument("-n", type=int, default=1000, help="number of samples (default: 1000)")
    p.add_argument("--out", required=True, help="output file, .npy or .csv (data coordinates)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    _add_solver_flags(p)
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--trajectory", action="store_true", help="save the whole trajectory, shape (steps + 1, n, D); .npy only")


def _add_solver_flags(p) -> None:
    p.add_argument("--solver", default="rk4", choices=SOLVERS, help="ODE solver (default: rk4)")
    p.add_argument("--nfe", type=int, default=100, help="velocity evaluations for fixed-step solvers (default: 100)")
    p.add_argument("--grid", default="uniform", choices=TIME_GRIDS, help="time grid of fixed-step solvers")
    p.add_argument("--atol", type=float, default=1e-5, help="dopri5 absolute tolerance (default: 1e-5)")
    p.add_argument("--rtol", type=float, default=1e-5, help="dopri5 relative tolerance (default: 1e-5)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")


def _cmd_sample(args) -> int:
    from .runs import load
    from .training import resolve_device

    out = Path(args.out)
    if out.suffix not in (".npy", ".csv"):
        raise FlowmatchError(f"output '{out}' must end in .npy or .csv")
    if args.trajectory and out.suffix != ".npy":
        raise FlowmatchError("--trajectory needs a .npy output")
    if out.exists() and not args.force:
        raise FlowmatchError(f"output '{out}' already exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise FlowmatchError(f"output folder '{out.parent}' does not exist")
    flow = load(args.run, device=str(resolve_device(args.device)))
    result = flow.generate(
        args.n,
        solver=args.solver,
        nfe=args.nfe,
        grid=args.grid,
        atol=args.atol,
        rtol=args.rtol,
        seed=args.seed,
        return_trajectory=args.trajectory,
    )
    array = (result.trajectory if args.trajectory else result.x).numpy()
    write_array(out, array)
    print(f"wrote {out}: {args.n} samples, shape {array.shape}, solver {args.solver}, NFE {result.nfe}")
    return 0


def write_array(path: Path, array: np.ndarray) -> None:
    """Write .npy or .csv atomically (temporary file in the same folder, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if path.suffix == ".npy":
                np.save(fh, array)
            else:
                np.savetxt(fh, array, delimiter=",", fmt="%.8g")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- entry point ---------------------------------------------------------------------------------
COMMANDS = {"train": (_add_train, _cmd_train), "sample": (_add_sample, _cmd_sample)}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flowmatch", description="Flow matching: train, sample, evaluate and plot.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except FlowmatchError as exc:
        print(f"flowmatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flowmatch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
