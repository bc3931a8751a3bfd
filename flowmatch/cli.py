"""The ``flowmatch`` command: a thin layer that parses flags, calls the Python API and reports.

Errors in what the user gave (flags, files, configs, checkpoints) print one line on stderr and
exit with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tomllib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flowmatch.api import PICTURES, PRECISIONS
from flowmatch.config import PRESETS, TrainConfig
from flowmatch.engine.threads import thread_scope
from flowmatch.errors import FlowmatchError, FlowmatchWarning
from flowmatch.paths.affine import PATHS
from flowmatch.solvers.grids import time_grid
from flowmatch.solvers.tableaus import SOLVERS

SAMPLERS = (*SOLVERS, "meanflow")  # the ODE solvers, and a MeanFlow model's average-velocity jumps


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
    p.add_argument("--no-eval", dest="evaluate", action="store_false", help="skip the quick evaluation (report.json) at the end")
    for f in dataclasses.fields(TrainConfig):
        meta, flag = f.metadata, "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{meta['help']} (default: {f.default})",
            )
            continue
        p.add_argument(
            flag,
            dest=f.name,
            type={"str": str, "int": int, "float": float}[str(f.type)],
            choices=[c for c in meta["choices"] if c != "python"] if meta.get("choices") else None,  # objects are Python's
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
    from flowmatch.api import fit, resume_config
    from flowmatch.config import build_config, modality

    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if args.resume:
        if args.out or args.preset or args.config or args.force or set(flags) - {"steps", "threads"}:
            raise FlowmatchError("--resume continues a run with its saved config; only --steps (and --threads) may be given with it")
        out = args.resume
        saved = resume_config(Path(out), None)
        config = TrainConfig.from_dict({**saved.to_dict(), **flags}, source="flags") if flags else None
        result, metrics = fit(config, out=out, resume=True, progress=not args.quiet, evaluate=args.evaluate)
    else:
        if not args.out:
            raise FlowmatchError("--out RUN_DIR is required (or --resume RUN_DIR)")
        out = args.out
        file_values, source, preset = {}, "config", args.preset
        if args.config:
            loaded = _load_toml(args.config)
            preset = preset or loaded["preset"]
            file_values, source = loaded["values"], f"config file '{args.config}'"
        config = build_config(preset, file_values, flags, source=source)
        result, metrics = fit(config, out=out, force=args.force, progress=not args.quiet, evaluate=args.evaluate)
    config = result.config
    if result.interrupted:
        print(f"stopped at step {result.step} of {config.steps}; checkpoint saved. Resume with: flowmatch train --resume {out}")
        return 0
    if metrics:
        chosen = modality(metrics["kind"])
        figures = chosen.summary(metrics)
        print(f"wrote {out}: loss {metrics['final_loss']:.4f}{', ' + figures if figures else ''}, {metrics['train_seconds']:.1f} s")
        line = chosen.report_line(metrics["report"]) if "report" in metrics else ""
        if line:
            print(f"quick evaluation (report.json): {line}")
        if metrics.get("memorisation", {}).get("warning"):
            print(f"flowmatch train: {as_flags(metrics['memorisation']['warning'], build_parser())}", file=sys.stderr)
    return 0


# -- sample, eval, plot --------------------------------------------------------------------------
#: Flags whose value is the modality's to take or refuse: given only when the user sets them (argparse.SUPPRESS).
GIVEN = argparse.SUPPRESS


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="generate samples from a run",
        description="Generate samples from a trained run, in its own terms: rows for points, images and manifolds, a table "
        "for a table run, text or token ids for a tokens run. Options that the run's kind does not take are refused by name.",
    )
    p.add_argument("--run", required=True, help="run folder written by 'flowmatch train'")
    p.add_argument("-n", type=int, default=1000, help="number of samples (default: 1000)")
    p.add_argument(
        "--out",
        required=True,
        help="output file: .npy or .csv (data coordinates); a table run: .csv; a tokens run: .txt (text) or .npy (token ids); "
        "a manifold run: .npy (ambient coordinates: unit vectors, angles in radians, quaternions w,x,y,z) or .csv (sphere: "
        "lat,lon in degrees, or the run's --units; torus: angles in the run's units; so3: w,x,y,z; with a header)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    _add_solver_flags(p)
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    p.add_argument("--trajectory", action="store_true", default=GIVEN, help="save the whole trajectory, shape (steps + 1, n, D); .npy only")
    p.add_argument(
        "--label", type=_label_list, default=GIVEN,
        help="class label(s) of a conditional model, e.g. 3 or 0,1,2: n samples of each, in that order",
    )  # fmt: skip
    p.add_argument(
        "--condition",
        metavar="FILE",
        default=GIVEN,
        help="rows of the float condition c (a .npy or .csv file, one row per line, as the training's condition columns): "
        "n samples for each row, in that order",
    )
    p.add_argument(
        "--guidance", type=float, default=GIVEN, help="classifier-free guidance weight w (1 = plain conditional; default: 1)"
    )  # fmt: skip
    p.add_argument(
        "--noise",
        type=float,
        default=GIVEN,
        help="stochastic sampling: Euler-Maruyama with the ODE's marginals and diffusion g^2 = noise * sigma_t, --nfe steps "
        "(N(0, I) source, Gaussian path); 0 = the ODE (default: 0)",
    )
    p.add_argument(
        "--schedule",
        default=GIVEN,
        choices=PATHS,
        help="sample under this path's schedule instead of the one trained on (the velocity is rewritten; same endpoints for an exact field)",
    )
    _add_discrete_flags(p)
    p.add_argument(
        "--precision", default=GIVEN, choices=PRECISIONS,
        help="precision of the network: bf16 runs it in bfloat16 (faster on GPUs and CPUs with bf16 units); auto: the precision the run "
        "trained in, as its config.json records it; the ODE state stays float32 (default: fp32)",
    )  # fmt: skip


def _add_discrete_flags(p) -> None:
    p.add_argument(
        "--temperature", type=float, default=GIVEN, help="tokens and table runs: divide the posterior's logits by this (default: 1)"
    )
    p.add_argument(
        "--corrector",
        type=float,
        default=GIVEN,
        help="tokens and table runs: corrector strength alpha of the jump sampler (0 = none; default: 0)",
    )


def _label_list(text: str) -> list[int]:
    try:
        labels = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"labels must be integers separated by commas, got '{text}'") from None
    return labels


def _grid(text: str) -> str:
    """A time grid name (uniform, cosine, shift:K), checked by the solvers' own parser."""
    try:
        time_grid(text, 1)
    except FlowmatchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _add_solver_flags(p) -> None:
    p.add_argument(
        "--solver",
        default=GIVEN,
        choices=SAMPLERS,
        help='ODE solver (default: rk4; a distilled student: euler; rk38: the 3/8 rule, torchdiffeq\'s "rk4"; a manifold run: euler, midpoint, heun, rk4 or rk38, '
        "stepping through the exponential map); meanflow: --nfe jumps of a MeanFlow run's average velocity (its default, NFE 1)",
    )
    p.add_argument(
        "--nfe", type=int, default=GIVEN,
        help="velocity evaluations for fixed-step solvers (default: 100; a distilled student: its own; tokens and tables: jump steps, 64)",
    )  # fmt: skip
    p.add_argument(
        "--grid",
        default=GIVEN,
        type=_grid,
        help="time grid of fixed-step solvers: uniform, cosine or shift:K (noise levels shifted by K, as diffusers' flow-match schedulers)",
    )
    p.add_argument("--atol", type=float, default=GIVEN, help="dopri5 absolute tolerance (default: 1e-5)")
    p.add_argument("--rtol", type=float, default=GIVEN, help="dopri5 relative tolerance (default: 1e-5)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    _add_threads_flag(p)


def _add_threads_flag(p) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="intra-op CPU threads of torch (0 = choose: one for small models, up to the cores this process may use for "
        "large ones; left to torch when OMP_NUM_THREADS is set) (default: 0)",
    )


#: The flags of sample, eval and plot that a run's modality takes or refuses (their dest = the API's keyword).
SAMPLE_OPTIONS = ("solver", "nfe", "grid", "atol", "rtol", "trajectory", "label", "condition", "guidance", "noise", "schedule",
                  "temperature", "corrector", "precision")  # fmt: skip


def _given(args, names) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _cmd_sample(args) -> int:
    from flowmatch.api import sample_to_file

    options = _given(args, SAMPLE_OPTIONS)
    what = sample_to_file(
        args.run, args.out, n=args.n, seed=args.seed, force=args.force, device=args.device, threads=args.threads, **options
    )
    print(f"wrote {args.out}: {what}")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a run: sample quality, likelihood, memorisation, pictures",
        description="Evaluate a trained run, each figure beside its reference, and write report.json (and pictures) into "
        "the run folder. Points and images: sample-quality metrics beside their floors, NLL by the instantaneous change of "
        "variables, KL(data || model) for built-in sets. Tables: the columns' distances, pair associations, ML efficiency "
        "and memorisation against the test split. Tokens: bits per token (bound) against an n-gram model, n-gram "
        "statistics of samples. Manifolds: geodesic W2 and MMD^2 of --sets generated sets (-n points each, default 5 x 2000; "
        "quick 3 x 500), each against its own held-out set, beside their floors; memorisation; the NLL on the manifold.",
    )
    p.add_argument("--run", required=True, help="run folder written by 'flowmatch train'")
    p.add_argument(
        "--quick", action="store_true", help="the cheap report 'flowmatch train' writes: 1,000 samples, rk4 NLL of 500 points, no pictures"
    )
    p.add_argument("-n", type=int, default=GIVEN, help="samples for the quality metrics (default: 5000; quick: 1000)")
    p.add_argument("--n-likelihood", type=int, default=GIVEN, help="held-out points to score (default: 2000; quick: 500)")
    p.add_argument(
        "--solver",
        default=GIVEN,
        choices=SAMPLERS,
        help="sampler for the quality metrics (default: rk4; a distilled student: euler; a MeanFlow run: meanflow, NFE 1)",
    )
    p.add_argument("--nfe", type=int, default=GIVEN, help="sampler NFE (default: 100; a distilled student: its own)")
    p.add_argument("--likelihood-solver", default=GIVEN, choices=SOLVERS, help="solver for the NLL (default: dopri5; quick: rk4)")
    p.add_argument("--likelihood-nfe", type=int, default=GIVEN, help="NFE of a fixed-step likelihood solver (default: 100; quick: 40)")
    p.add_argument("--atol", type=float, default=GIVEN, help="dopri5 absolute tolerance (default: 1e-5)")
    p.add_argument("--rtol", type=float, default=GIVEN, help="dopri5 relative tolerance (default: 1e-5)")
    p.add_argument(
        "--divergence",
        default=GIVEN,
        choices=("auto", "exact", "hutchinson"),
        help="exact (D backward passes) or Hutchinson; auto: exact up to D = 16",
    )
    p.add_argument("--probes", type=int, default=GIVEN, help="Rademacher probes per point for Hutchinson (default: 1)")
    p.add_argument(
        "--sets",
        type=int,
        default=GIVEN,
        help="manifold runs: generated sets, each of -n points scored against its own held-out set (default: 5; quick: 3); "
        "a file's run cuts its test split into sets + 1 blocks",
    )
    p.add_argument("--no-pictures", dest="pictures", action="store_false", default=GIVEN, help="write report.json only")
    _add_discrete_flags(p)
    p.add_argument(
        "--target", default=GIVEN, help="table runs: the column the ML-efficiency model predicts (default: the last categorical)"
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out draws, noise and probes (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    _add_threads_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


EVAL_OPTIONS = ("n", "n_likelihood", "solver", "nfe", "likelihood_solver", "likelihood_nfe", "atol", "rtol", "divergence", "probes",
                "sets", "pictures", "temperature", "corrector", "target")  # fmt: skip


def _cmd_eval(args) -> int:
    from flowmatch.api import evaluate, format_report, use_threads_for
    from flowmatch.engine.devices import resolve_device
    from flowmatch.runs import load
    from flowmatch.storage import check_writable

    flow = load(args.run, device=str(resolve_device(args.device)))
    use_threads_for(flow, args.threads, getattr(args, "n", None))
    check_writable(Path(args.run) / "report.json")  # a read-only run folder: refused before any work
    options = {**_given(args, EVAL_OPTIONS), "quick": args.quick, "seed": args.seed, "progress": not args.quiet}
    report = evaluate(flow, args.run, **options)
    print(format_report(flow, report))
    print(f"wrote {Path(args.run) / 'report.json'}")
    if report.get("memorisation", {}).get("warning"):
        print(f"flowmatch eval: {as_flags(report['memorisation']['warning'], build_parser())}", file=sys.stderr)
    return 0


def _add_plot(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="draw one picture of a run",
        description="Draw one picture of a trained run: samples over data (pairwise plots for D > 2), the "
        "log-density heat map (2-D), trajectories, the velocity field (2-D), an animated GIF, or quality against NFE. "
        "A manifold run draws its samples on the manifold (equal-area sphere map, the torus square, SO(3) by axis and "
        "angle) beside held-out data; a table run its columns' distributions beside the test split's.",
    )
    p.add_argument("--run", required=True, help="run folder written by 'flowmatch train'")
    p.add_argument(
        "--what",
        default="samples",
        choices=list(PICTURES),
        help="which picture (default: samples; manifold and table runs draw only samples)",
    )
    p.add_argument("--out", default=None, help="output file (default: RUN/<what>.png, animation.gif for the animation)")
    p.add_argument(
        "-n", type=int, default=2000, help="samples and held-out points to draw (default: 2000; the NFE sweep uses at most 1000)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out draws and noise (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    _add_threads_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _cmd_plot(args) -> int:
    from flowmatch.api import check_output_file, picture, use_threads_for
    from flowmatch.engine.devices import resolve_device
    from flowmatch.runs import load

    out = Path(args.out) if args.out else Path(args.run) / PICTURES[args.what]
    wanted = Path(PICTURES[args.what]).suffix
    if out.suffix.lower() != wanted:
        raise FlowmatchError(f"output '{out}' must end in {wanted} for --what {args.what}")
    flow = load(args.run, device=str(resolve_device(args.device)))  # a bad run folder is the first error
    use_threads_for(flow, args.threads, args.n)
    check_output_file(out, force=True)  # a picture replaces its old self, never a folder
    picture(flow, args.what, out, n=args.n, seed=args.seed, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


# -- reflow and distill --------------------------------------------------------------------------
def _add_reflow(sub, name: str = "reflow") -> None:
    if name == "reflow":
        p = sub.add_parser(
            "reflow",
            help="train a rectified (straighter) flow on a run's own (noise, sample) pairs",
            description="Reflow: integrate the run's flow from --pairs source draws to get (x0, x1) pairs, then train a new "
            "model on them, starting from the run's weights, with its data, source and architecture. The pairs are kept in "
            "NEW_DIR/pairs.npz; repeat on NEW_DIR to reflow again; an interrupted run resumes with 'flowmatch train --resume NEW_DIR'.",
        )
    else:
        p = sub.add_parser(
            "distill",
            help="distil a run into a student that samples in --nfe Euler steps",
            description="Distillation: integrate the run's flow (the teacher) from --pairs source draws, then train a student, "
            "starting from the teacher's weights, whose --nfe Euler steps map each x0 to the teacher's x1. Sample the "
            "student with --solver euler --nfe N. The pairs are kept in NEW_DIR/pairs.npz.",
        )
        p.add_argument("--nfe", type=int, default=1, help="the student's velocity evaluations (Euler steps) (default: 1)")
    p.add_argument("--run", required=True, help="run folder of the teacher flow")
    p.add_argument("--out", required=True, help="new run folder to write")
    p.add_argument("--force", action="store_true", help="replace an existing run folder")
    p.add_argument("--pairs", type=int, default=20_000, help="number of (x0, x1) pairs to generate (default: 20000)")
    p.add_argument("--steps", type=int, default=3000, help="optimiser steps (default: 3000)")
    p.add_argument("--teacher-solver", default="rk4", choices=SOLVERS, help="solver that makes the pairs (default: rk4)")
    p.add_argument("--teacher-nfe", type=int, default=100, help="its velocity evaluations (default: 100)")
    p.add_argument("--pair-seed", type=int, default=None, help="seed of the x0 draws (default: the run's seed + 1000003)")
    for flag, kind, what in (
        ("--lr", float, "learning rate"),
        ("--batch-size", int, "batch size"),
        ("--ema", float, "EMA decay"),
        ("--warmup", int, "warm-up steps"),
        ("--lr-schedule", str, "learning-rate schedule (constant, cosine)"),
        ("--device", str, "device (cpu, cuda, cuda:N, auto)"),
        ("--threads", int, "intra-op CPU threads of torch (0 = choose)"),
    ):
        p.add_argument(flag, type=kind, default=None, help=f"{what} (default: the teacher run's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _rectify_options(args) -> dict[str, Any]:
    names = ("lr", "batch_size", "ema", "warmup", "lr_schedule", "device", "threads")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _report_rectified(out: str, result, metrics: dict[str, Any], steps: int) -> int:
    if result.interrupted:
        print(f"stopped at step {result.step} of {steps}; checkpoint saved. Resume with: flowmatch train --resume {out}")
        return 0
    if metrics:
        few = ", ".join(f"{k} W2 {v:.4f}" for k, v in metrics.get("few_step", {}).items() if k != "floor")
        print(
            f"wrote {out}: loss {metrics['final_loss']:.4f}, W2 {metrics['w2']:.4f} "
            f"({metrics['sampler']['solver']} NFE {metrics['sampler']['nfe']}; floor {metrics['w2_floor']:.4f})"
            + (f", {few}" if few else "")
            + f", pairs {metrics['pair_seconds']:.1f} s, training {metrics['train_seconds']:.1f} s"
        )
    return 0


def _cmd_reflow(args) -> int:
    from flowmatch.rectify import reflow

    result, metrics = reflow(
        args.run, args.out, n_pairs=args.pairs, steps=args.steps, teacher_solver=args.teacher_solver,
        teacher_nfe=args.teacher_nfe, pair_seed=args.pair_seed, force=args.force, progress=not args.quiet,
        **_rectify_options(args),
    )  # fmt: skip
    return _report_rectified(args.out, result, metrics, args.steps)


def _add_distill(sub) -> None:
    _add_reflow(sub, "distill")


def _cmd_distill(args) -> int:
    from flowmatch.rectify import distill

    result, metrics = distill(
        args.run, args.out, nfe=args.nfe, n_pairs=args.pairs, steps=args.steps, teacher_solver=args.teacher_solver,
        teacher_nfe=args.teacher_nfe, pair_seed=args.pair_seed, force=args.force, progress=not args.quiet,
        **_rectify_options(args),
    )  # fmt: skip
    return _report_rectified(args.out, result, metrics, args.steps)


# -- entry point ---------------------------------------------------------------------------------
COMMANDS = {
    "train": (_add_train, _cmd_train),
    "sample": (_add_sample, _cmd_sample),
    "eval": (_add_eval, _cmd_eval),
    "plot": (_add_plot, _cmd_plot),
    "reflow": (_add_reflow, _cmd_reflow),
    "distill": (_add_distill, _cmd_distill),
}


def as_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """A library message in API terms (``nfe=50``, ``force=True``) in the CLI's (``--nfe 50``, ``--force``),
    for the names that are flags of some command."""
    import re

    flags = {a.dest for sub in parser._subparsers._group_actions for p in sub.choices.values() for a in p._actions}  # type: ignore[union-attr]

    def flag(match: re.Match) -> str:
        name, value = match.group(1), match.group(2).strip("'\"")
        if name not in flags:
            return match.group(0)
        dashed = "--" + name.replace("_", "-")
        return {"True": dashed, "False": f"--no-{name.replace('_', '-')}"}.get(value, f"{dashed} {value}")

    return re.sub(r"\b([a-z][a-z_]*)=('[^']*'|\"[^\"]*\"|[^\s,;)]+)", flag, message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flowmatch", description="Flow matching: train, sample, evaluate and plot.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


@contextmanager
def _notes(command: str) -> Iterator[None]:
    """Each :class:`~flowmatch.errors.FlowmatchWarning` (such as which checkpoint a run was loaded from) as one
    ``note:`` line on stderr, every time; other warnings (a library's own, such as torch's UserWarnings, two
    lines each) as Python shows them once the command has succeeded: a command that fails answers with its
    one error line alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", FlowmatchWarning)
        shown = warnings.showwarning
        held: list[tuple] = []

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, FlowmatchWarning):
                print(f"flowmatch {command}: note: {message}", file=sys.stderr)
            else:
                held.append((message, category, filename, lineno, file, line))

        warnings.showwarning = show
        yield
        for args in held:  # reached only when the command succeeded
            shown(*args)


@thread_scope  # torch's thread count is restored when a command returns (main called in-process)
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _notes(args.command):
            return COMMANDS[args.command][1](args)
    except FlowmatchError as exc:
        print(f"flowmatch {args.command}: error: {as_flags(str(exc), parser)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flowmatch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
