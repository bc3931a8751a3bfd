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

import numpy as np

from flowmatch.errors import FlowmatchError, FlowmatchWarning
from flowmatch.flow import PRECISIONS
from flowmatch.manifolds.flow import RiemannianFlow
from flowmatch.paths.affine import PATHS
from flowmatch.solvers.grids import time_grid
from flowmatch.solvers.tableaus import SOLVERS
from flowmatch.storage import atomic_file
from flowmatch.training.config import PRESETS, TrainConfig, kind_defaults, resolve_kind
from flowmatch.training.fitting import fit, resume_config
from flowmatch.training.threads import thread_scope

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
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if args.resume:
        if args.out or args.preset or args.config or args.force or set(flags) - {"steps", "threads"}:
            raise FlowmatchError("--resume continues a run with its saved config; only --steps (and --threads) may be given with it")
        out = args.resume
        config = resume_config(Path(out), None)
        if config.kind in ("tokens", "table", "manifold"):
            raise FlowmatchError(f"'{out}' is a {config.kind} run, which cannot be resumed yet: train it again with more steps")
        if flags:
            config = TrainConfig.from_dict({**config.to_dict(), **flags}, source="flags")
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
        kind = resolve_kind(config)
        if kind != "continuous":  # token sequences and tables: their network and batches under what was given
            given = {**PRESETS.get(preset, {}), **file_values, **flags}
            base = TrainConfig.from_dict(
                {**kind_defaults(kind, given), "kind": kind, **PRESETS.get(preset, {}), **file_values}, source=source
            )
            config = TrainConfig.from_dict({**base.to_dict(), **flags}, source="flags")
    result, metrics = fit(config, out=out, force=args.force, resume=bool(args.resume), progress=not args.quiet, evaluate=args.evaluate)
    if metrics.get("kind") in ("tokens", "table"):
        return _report_discrete_run(out, result, metrics)
    if metrics.get("kind") == "manifold":
        return _report_manifold_run(out, result, metrics)
    if result.interrupted:
        print(f"stopped at step {result.step} of {config.steps}; checkpoint saved. Resume with: flowmatch train --resume {out}")
        return 0
    if metrics:
        print(
            f"wrote {out}: loss {metrics['final_loss']:.4f}, W2 {metrics['w2']:.4f} "
            f"(floor {metrics['w2_floor']:.4f}, ratio {metrics['w2_ratio']:.2f}), {metrics['train_seconds']:.1f} s"
        )
        if "report" in metrics:
            from flowmatch.evaluation.report import summary_line

            print(f"quick evaluation (report.json): {summary_line(metrics['report'])}")
        if metrics.get("memorisation", {}).get("warning"):
            print(f"flowmatch train: {as_flags(metrics['memorisation']['warning'], build_parser())}", file=sys.stderr)
    return 0


def _report_discrete_run(out: str, result, metrics: dict[str, Any]) -> int:
    stopped = f" (stopped at step {result.step} of {result.config.steps})" if result.interrupted else ""
    line = f"wrote {out}{stopped}: loss {metrics['final_loss']:.4f}"
    report = metrics.get("report")
    if report and report["kind"] == "tokens":
        b = report["bits_per_token"]
        line += f", bits per token (bound) {b['value']:.3f} against the {b['ngram_order']}-gram model's {b['ngram_model']:.3f}"
    elif report:
        m = report["marginals"]
        line += f", mean W1 {m['mean_w1']['value']:.3f} (test split {m['mean_w1']['reference']:.3f}), mean TV {m['mean_tv']['value']:.3f} ({m['mean_tv']['reference']:.3f})"
    print(line + f", {metrics['train_seconds']:.1f} s")
    return 0


def _report_manifold_run(out: str, result, metrics: dict[str, Any]) -> int:
    stopped = f" (stopped at step {result.step} of {result.config.steps})" if result.interrupted else ""
    line = f"wrote {out}{stopped}: loss {metrics['final_loss']:.4f}"
    if "w2" in metrics:
        line += f", geodesic W2 {metrics['w2']:.4f} (floor {metrics['w2_floor']:.4f})"
    if "nll" in metrics:
        line += f", NLL {metrics['nll']:.3f} nats"
        if "entropy_reference" in metrics:
            line += f" (entropy {metrics['entropy_reference']:.3f})"
    on = metrics.get("on_manifold")
    if on and on["projected"]:
        line += f", mean distance off the manifold {on['mean_distance']:.3g} (projected)"
    print(line + f", {metrics['train_seconds']:.1f} s")
    return 0


# -- sample --------------------------------------------------------------------------------------
def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate samples from a run", description="Generate samples from a trained run.")
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
    p.add_argument("--trajectory", action="store_true", help="save the whole trajectory, shape (steps + 1, n, D); .npy only")
    p.add_argument(
        "--label", type=_label_list, help="class label(s) of a conditional model, e.g. 3 or 0,1,2: n samples of each, in that order"
    )
    p.add_argument(
        "--condition",
        metavar="FILE",
        help="rows of the float condition c (a .npy or .csv file, one row per line, as the training's condition columns): "
        "n samples for each row, in that order",
    )
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight w (1 = plain conditional; default: 1)")
    p.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="stochastic sampling: Euler-Maruyama with the ODE's marginals and diffusion g^2 = noise * sigma_t, --nfe steps "
        "(N(0, I) source, Gaussian path); 0 = the ODE (default: 0)",
    )
    p.add_argument(
        "--schedule",
        default=None,
        choices=PATHS,
        help="sample under this path's schedule instead of the one trained on (the velocity is rewritten; same endpoints for an exact field)",
    )
    _add_discrete_flags(p)
    p.add_argument(
        "--precision", default="fp32", choices=PRECISIONS,
        help="precision of the network: bf16 runs it in bfloat16 (faster on CPUs and GPUs with bf16 units); the ODE state stays float32 (default: fp32)",
    )  # fmt: skip


def _add_discrete_flags(p) -> None:
    p.add_argument(
        "--temperature", type=float, default=1.0, help="tokens and table runs: divide the posterior's logits by this (default: 1)"
    )
    p.add_argument(
        "--corrector",
        type=float,
        default=0.0,
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
        default=None,
        choices=SAMPLERS,
        help="ODE solver (default: rk4; a distilled student: euler; a manifold run: euler, midpoint, heun or rk4, "
        "stepping through the exponential map); meanflow: --nfe jumps of a MeanFlow run's average velocity (its default, NFE 1)",
    )
    p.add_argument(
        "--nfe", type=int, default=None, help="velocity evaluations for fixed-step solvers (default: 100; a distilled student: its own)"
    )
    p.add_argument(
        "--grid",
        default="uniform",
        type=_grid,
        help="time grid of fixed-step solvers: uniform, cosine or shift:K (noise levels shifted by K, as diffusers' flow-match schedulers)",
    )
    p.add_argument("--atol", type=float, default=1e-5, help="dopri5 absolute tolerance (default: 1e-5)")
    p.add_argument("--rtol", type=float, default=1e-5, help="dopri5 relative tolerance (default: 1e-5)")
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


def _use_threads(args, flow) -> None:
    """``--threads`` for a command's network calls (:mod:`flowmatch.training.threads`), the work being one call
    on -n rows, at most the CPU_BATCH_SIZE rows that sampling calls the network on."""
    from flowmatch.flow import CPU_BATCH_SIZE
    from flowmatch.training.threads import positions_of, use_threads

    rows = min(args.n if args.n else CPU_BATCH_SIZE, CPU_BATCH_SIZE)
    positions = flow.length if getattr(flow, "kind", None) == "tokens" else positions_of(getattr(flow, "shape", None))
    use_threads(args.threads, flow.model, rows, positions)


def _cmd_sample(args) -> int:
    from flowmatch.runs import load
    from flowmatch.training.devices import resolve_device

    out = Path(args.out)
    if out.suffix not in (".npy", ".csv", ".txt"):
        raise FlowmatchError(f"output '{out}' must end in .npy, .csv or .txt (a tokens run)")
    if args.trajectory and out.suffix != ".npy":
        raise FlowmatchError("--trajectory needs a .npy output")
    _check_output_file(out, args.force)
    flow = load(args.run, device=str(resolve_device(args.device)))
    _use_threads(args, flow)
    if isinstance(flow, RiemannianFlow):
        return _sample_manifold(args, flow, out)
    if hasattr(flow, "kind"):
        return _sample_discrete(args, flow, out)
    if out.suffix == ".txt":
        raise FlowmatchError(f"a continuous run writes .npy or .csv, not '{out.suffix}'")
    if args.temperature != 1.0 or args.corrector:
        raise FlowmatchError("--temperature and --corrector apply to tokens and table runs")
    labels = args.label or [None]
    rows = list(_condition_file(args.condition)) if args.condition else [None]
    options = dict(
        solver=args.solver, nfe=args.nfe, grid=args.grid, schedule=args.schedule, atol=args.atol, rtol=args.rtol,
        guidance=args.guidance, precision=args.precision, noise=args.noise,
    )  # fmt: skip
    combos = [(label, row) for label in labels for row in rows]
    if args.trajectory:  # (steps + 1, n, D): drawn whole (Flow.generate checks that it fits in memory)
        parts = []
        for label, row in combos:
            result = flow.generate(args.n, seed=args.seed, return_trajectory=True, label=label, condition=row, **options)
            assert result.trajectory is not None
            parts.append(result.trajectory.numpy())
        array = np.concatenate(parts, axis=1)
        write_array(out, array)
        shape, nfe = array.shape, result.nfe
    else:
        shape, nfe = (args.n * len(combos), flow.dim), _stream_samples(flow, args, out, combos, options)
    which = f", labels {','.join(map(str, labels))} ({args.n} each, in that order)" if args.label else ""
    which += f", {len(rows)} condition rows ({args.n} each, in that order)" if args.condition else ""
    sampler = (
        f"the SDE (Euler-Maruyama, noise {args.noise:g})" if args.noise else f"solver {flow.resolve_sampler(args.solver, args.nfe)[0]}"
    )
    print(f"wrote {out}: shape {shape}{which}, {sampler}, NFE {nfe}")
    return 0


#: Memory one block of streamed samples may take (its state and the solver's stages), at most.
STREAM_BYTES = 256 << 20


def _stream_samples(flow, args, out: Path, combos: list, options: dict[str, Any]) -> int:
    """Write ``args.n`` samples for each (label, condition row) in ``combos`` to ``out`` in blocks of rows, so
    that memory stays bounded however large ``-n`` is (the file is checked against the free disk first).

    Each combination's noise comes from one generator seeded with ``--seed``; blocks are multiples of 16 rows,
    so that the N(0, I) draws equal one draw of all ``-n`` rows (torch draws normals in groups of 16): the file
    is the same as one :meth:`Flow.generate` call's, however it is cut. Returns the NFE used."""
    import torch

    from flowmatch.memory import available_bytes
    from flowmatch.solvers.tableaus import TABLEAUS
    from flowmatch.storage import atomic_rows, require_disk

    if isinstance(args.n, bool) or args.n < 1:
        raise FlowmatchError(f"-n must be a positive integer, got {args.n}")
    solver, nfe = flow.resolve_sampler(args.solver, args.nfe)
    total = args.n * len(combos)
    require_disk(out, 128 + 4 * total * flow.dim if out.suffix == ".npy" else 2 * total * flow.dim)
    per_row = 4 * flow.dim * ((TABLEAUS[solver].stages if solver in TABLEAUS else 7) + 3)
    budget = min(STREAM_BYTES, (available_bytes() or STREAM_BYTES) // 4)
    block = max(16, budget // per_row // 16 * 16)
    used = nfe
    with atomic_rows(out, (total, flow.dim)) as write:
        for label, row in combos:
            if args.n <= block:  # one call, exactly as Flow.generate(n, seed=...) draws it
                result = flow.generate(args.n, seed=args.seed, label=label, condition=row, **options)
                write(result.x.numpy())
                used = result.nfe
                continue
            generator = torch.Generator().manual_seed(args.seed)
            for index, start in enumerate(range(0, args.n, block)):
                rows = min(block, args.n - start)
                x0 = flow.draw_source(rows, generator)
                result = flow.generate(rows, x0=x0, seed=args.seed + 1 + index, label=label, condition=row, **options)
                write(result.x.numpy())
                used = result.nfe
    return used


def _check_output_file(out: Path, force: bool) -> None:
    """Refuse, before any work, an output file that cannot be written: an existing file without ``--force``, a
    folder (``--force`` replaces a file, never a folder), a missing folder, or one where nothing can be written."""
    from flowmatch.storage import check_writable

    if out.is_dir():
        raise FlowmatchError(f"output '{out}' is a folder; only a file can be replaced")
    if out.exists() and not force:
        raise FlowmatchError(f"output '{out}' already exists; pass --force to replace it")
    if out.parent.exists() and not out.parent.is_dir():
        raise FlowmatchError(f"output folder '{out.parent}' is a file, not a folder")
    if not out.parent.is_dir():
        raise FlowmatchError(f"output folder '{out.parent}' does not exist")
    check_writable(out)


def _sample_discrete(args, flow, out: Path) -> int:
    """A tokens run writes text (.txt) or token ids (.npy); a table run writes rows (.csv)."""
    from flowmatch.discrete.training import format_texts

    allowed = (".txt", ".npy") if flow.kind == "tokens" else (".csv",)
    if out.suffix not in allowed:
        raise FlowmatchError(f"a {flow.kind} run writes {' or '.join(allowed)}, not '{out.suffix}'")
    if (
        args.solver
        or args.grid != "uniform"
        or args.label
        or args.condition
        or args.trajectory
        or args.schedule
        or args.guidance != 1.0
        or args.noise
    ):
        raise FlowmatchError(f"a {flow.kind} run samples with the jump sampler: give --nfe, --temperature, --corrector and --seed only")
    nfe = args.nfe if args.nfe is not None else 64
    x, tokens = flow.generate(args.n, nfe=nfe, temperature=args.temperature, corrector=args.corrector, seed=args.seed, progress=True)
    if out.suffix == ".npy":
        write_array(out, tokens.numpy())
    elif out.suffix == ".txt":
        texts = flow.decode(None, tokens)
        if not isinstance(texts, list):
            raise FlowmatchError("this run's tokens are ids without text: write them to a .npy file")
        with atomic_file(out) as tmp:
            tmp.write_text(format_texts(texts))
    else:
        from flowmatch.data.tables import write_table

        write_table(flow.decode(x, tokens), out)
    print(f"wrote {out}: {args.n} {'sequences' if flow.kind == 'tokens' else 'rows'}, jump sampler NFE {nfe}")
    return 0


def _manifold_solver(solver: str | None, flag: str = "--solver") -> str:
    from flowmatch.manifolds.solvers import MANIFOLD_SOLVERS

    if solver is not None and solver not in MANIFOLD_SOLVERS:
        raise FlowmatchError(
            f"{flag} {solver}: a manifold run integrates with {', '.join(MANIFOLD_SOLVERS)} (fixed steps through the exponential map)"
        )
    return solver or "rk4"


def _sample_manifold(args, flow, out: Path) -> int:
    """A manifold run writes .npy (canonical ambient coordinates) or .csv (the data file's terms, with a header)."""
    from flowmatch.manifolds.data import points_to_columns

    if out.suffix not in (".npy", ".csv"):
        raise FlowmatchError(f"a manifold run writes .npy or .csv, not '{out.suffix}'")
    continuous_only = (
        args.grid != "uniform" or args.label or args.condition or args.trajectory or args.schedule or args.guidance != 1.0 or args.noise
    )
    if continuous_only or args.precision != "fp32" or args.temperature != 1.0 or args.corrector:
        raise FlowmatchError("a manifold run samples with --solver (euler, midpoint, heun, rk4), --nfe and --seed only")
    if args.n < 1:
        raise FlowmatchError(f"-n must be a positive integer, got {args.n}")
    solver, nfe = _manifold_solver(args.solver), args.nfe if args.nfe is not None else 100
    x = flow.generate(args.n, solver=solver, nfe=nfe, seed=args.seed).cpu()
    where = f"on {flow.manifold.label}"
    if out.suffix == ".npy":
        write_array(out, x.numpy())
    else:
        units = flow.config.get("units", "auto")
        if flow.manifold.name == "torus" and units == "auto":
            units = "radians"
        names, values = points_to_columns(
            x, flow.manifold, units=None if units == "auto" else units, columns=flow.config.get("columns") or None
        )
        with atomic_file(out) as tmp:
            np.savetxt(tmp, values, delimiter=",", fmt="%.10g", header=",".join(names), comments="")
        unit = f" in {units if units != 'auto' else 'degrees'}" if flow.manifold.name in ("sphere", "torus") else ""
        where += f" ({', '.join(names)}{unit})"
    if flow.manifold != flow.data_manifold:
        off = flow.on_data_manifold(x)[1]
        where += f"; the Euclidean comparison's points as generated, mean distance {float(off.mean()):.3g} off {flow.data_manifold.label}"
    print(f"wrote {out}: {args.n} points {where}, solver {solver}, NFE {nfe} (exactly {nfe} velocity evaluations)")
    return 0


def _condition_file(path: str) -> np.ndarray:
    """Condition rows (k, d) from a .npy or a .csv file (an optional header row)."""
    from flowmatch.data.files import _csv_numbers, _csv_rows

    if not Path(path).is_file():
        raise FlowmatchError(f"condition file '{path}' does not exist")
    if path.endswith(".npy"):
        try:
            rows = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FlowmatchError(f"condition file '{path}': cannot read it ({exc})") from None
        if not isinstance(rows, np.ndarray):  # a zip archive (an .npz, a torch.save file) under a .npy name
            rows.close()
            raise FlowmatchError(f"condition file '{path}': not a .npy array (the file is a zip archive)")
    elif path.endswith(".csv"):
        header, lines = _csv_rows(path)
        rows = _csv_numbers(path, header, lines)
    else:
        raise FlowmatchError(f"condition file '{path}' must end in .npy or .csv")
    try:
        rows = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        raise FlowmatchError(
            f"condition file '{path}': expected rows of numbers, got {getattr(rows, 'dtype', type(rows).__name__)}"
        ) from None
    rows = rows.reshape(len(rows), -1) if rows.ndim else rows.reshape(1, 1)
    if not len(rows) or not np.isfinite(rows).all():
        raise FlowmatchError(f"condition file '{path}': expected finite rows of numbers, got shape {rows.shape}")
    return rows


def write_array(path: Path, array: np.ndarray) -> None:
    """Write .npy or .csv atomically."""
    with atomic_file(path) as tmp:
        if path.suffix == ".npy":
            np.save(tmp, array)
        else:
            np.savetxt(tmp, array, delimiter=",", fmt="%.8g")


# -- eval and plot -------------------------------------------------------------------------------
def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a run: sample quality, likelihood, KL, pictures",
        description="Evaluate a trained run: sample-quality metrics beside their floors, NLL by the instantaneous "
        "change of variables, KL(data || model) for built-in sets, and pictures. Writes report.json and the "
        "pictures into the run folder (each atomically) and prints a table. A manifold run: geodesic W2 and MMD^2 of "
        "--sets generated sets (-n points each, default 5 x 2000; quick 3 x 500), each against its own held-out set, "
        "beside their floors; memorisation; the NLL on the manifold (rk4, exact divergence; --likelihood-nfe, default "
        "64, quick 32) beside the entropy and KL for built-in sets; samples.png.",
    )
    p.add_argument("--run", required=True, help="run folder written by 'flowmatch train'")
    p.add_argument(
        "--quick", action="store_true", help="the cheap report 'flowmatch train' writes: 1,000 samples, rk4 NLL of 500 points, no pictures"
    )
    p.add_argument("-n", type=int, default=None, help="samples for the quality metrics (default: 5000; quick: 1000)")
    p.add_argument("--n-likelihood", type=int, default=None, help="held-out points to score (default: 2000; quick: 500)")
    p.add_argument(
        "--solver",
        default=None,
        choices=SAMPLERS,
        help="sampler for the quality metrics (default: rk4; a distilled student: euler; a MeanFlow run: meanflow, NFE 1)",
    )
    p.add_argument("--nfe", type=int, default=None, help="sampler NFE (default: 100; a distilled student: its own)")
    p.add_argument("--likelihood-solver", default=None, choices=SOLVERS, help="solver for the NLL (default: dopri5; quick: rk4)")
    p.add_argument("--likelihood-nfe", type=int, default=None, help="NFE of a fixed-step likelihood solver (default: 100; quick: 40)")
    p.add_argument("--atol", type=float, default=1e-5, help="dopri5 absolute tolerance (default: 1e-5)")
    p.add_argument("--rtol", type=float, default=1e-5, help="dopri5 relative tolerance (default: 1e-5)")
    p.add_argument(
        "--divergence",
        default="auto",
        choices=("auto", "exact", "hutchinson"),
        help="exact (D backward passes) or Hutchinson; auto: exact up to D = 16",
    )
    p.add_argument("--probes", type=int, default=1, help="Rademacher probes per point for Hutchinson (default: 1)")
    p.add_argument(
        "--sets",
        type=int,
        default=None,
        help="manifold runs: generated sets, each of -n points scored against its own held-out set (default: 5; quick: 3); "
        "a file's run cuts its test split into sets + 1 blocks",
    )
    p.add_argument("--no-pictures", action="store_true", help="write report.json only")
    _add_discrete_flags(p)
    p.add_argument("--target", default=None, help="table runs: the column the ML-efficiency model predicts (default: the last categorical)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out draws, noise and probes (default: 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    _add_threads_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _cmd_eval(args) -> int:
    from flowmatch.evaluation.report import evaluate, format_report
    from flowmatch.runs import load
    from flowmatch.storage import check_writable
    from flowmatch.training.devices import resolve_device

    flow = load(args.run, device=str(resolve_device(args.device)))
    _use_threads(args, flow)
    check_writable(Path(args.run) / "report.json")  # a read-only run folder: refused before any work
    if isinstance(flow, RiemannianFlow):
        return _eval_manifold(args, flow)
    if hasattr(flow, "kind"):
        return _eval_discrete(args, flow)
    _not_for(args, "a continuous run", sets=None, temperature=1.0, corrector=0.0, target=None)
    report = evaluate(
        flow,
        args.run,
        quick=args.quick,
        n=args.n,
        n_likelihood=args.n_likelihood,
        solver=args.solver,
        nfe=args.nfe,
        likelihood_solver=args.likelihood_solver,
        likelihood_nfe=args.likelihood_nfe,
        atol=args.atol,
        rtol=args.rtol,
        divergence=args.divergence,
        probes=args.probes,
        seed=args.seed,
        pictures=False if args.no_pictures else None,
        progress=not args.quiet,
    )
    print(format_report(report))
    print(f"wrote {Path(args.run) / 'report.json'}")
    if report.get("memorisation", {}).get("warning"):
        print(f"flowmatch eval: {as_flags(report['memorisation']['warning'], build_parser())}", file=sys.stderr)
    return 0


def _eval_discrete(args, flow) -> int:
    from flowmatch.discrete.training import data_from_config
    from flowmatch.evaluation.discrete import evaluate_discrete, format_discrete_report
    from flowmatch.storage import write_json

    if args.n is not None and args.n < 1:
        raise FlowmatchError(f"-n must be a positive integer, got {args.n}")
    if args.nfe is not None and args.nfe < 1:
        raise FlowmatchError(f"--nfe must be a positive integer, got {args.nfe}")
    _not_for(
        args, f"a {flow.kind} run", sets=None, n_likelihood=None, solver=None, likelihood_solver=None, likelihood_nfe=None,
        atol=1e-5, rtol=1e-5, divergence="auto", probes=1,
    )  # fmt: skip
    if args.seed < 0:
        raise FlowmatchError(f"--seed must be a non-negative integer, got {args.seed}")
    data = data_from_config(flow.config)
    report = evaluate_discrete(
        flow, data, quick=args.quick, n=args.n, nfe=args.nfe, temperature=args.temperature, corrector=args.corrector,
        seed=args.seed, target=args.target, progress=not args.quiet,
    )  # fmt: skip
    write_json(Path(args.run) / "report.json", report)
    print(format_discrete_report(report))
    print(f"wrote {Path(args.run) / 'report.json'}")
    return 0


def _not_for(args, what: str, **defaults) -> None:
    """Refuse the flags of ``args`` given (not at their ``defaults``) that do not apply to ``what``."""
    given = [name for name, default in defaults.items() if getattr(args, name) != default]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise FlowmatchError(f"{flags} {'does' if len(given) == 1 else 'do'} not apply to {what}")


def _eval_manifold(args, flow) -> int:
    from flowmatch.evaluation.manifolds import evaluate_manifold, format_run_report

    if args.temperature != 1.0 or args.corrector or args.target:
        raise FlowmatchError("--temperature, --corrector and --target apply to tokens and table runs")
    if args.probes < 1:
        raise FlowmatchError(f"--probes must be a positive integer, got {args.probes}")
    _not_for(args, "a manifold run (rk4 and the exact divergence, or Hutchinson's)", atol=1e-5, rtol=1e-5)
    report = evaluate_manifold(
        flow, args.run, quick=args.quick, sets=args.sets, n=args.n, solver=_manifold_solver(args.solver), nfe=args.nfe,
        n_likelihood=args.n_likelihood, likelihood_solver=_manifold_solver(args.likelihood_solver, "--likelihood-solver"),
        likelihood_nfe=args.likelihood_nfe, probes=args.probes if args.divergence == "hutchinson" else 0, seed=args.seed,
        pictures=False if args.no_pictures else None,
    )  # fmt: skip
    print(format_run_report(report))
    print(f"wrote {Path(args.run) / 'report.json'}")
    return 0


def _add_plot(sub) -> None:
    from flowmatch.evaluation.report import PICTURES

    p = sub.add_parser(
        "plot",
        help="draw one picture of a run",
        description="Draw one picture of a trained run: samples over data (pairwise plots for D > 2), the "
        "log-density heat map (2-D), trajectories, the velocity field (2-D), an animated GIF, or quality against NFE. "
        "A manifold run draws its samples on the manifold (equal-area sphere map, the torus square, SO(3) by axis and "
        "angle) beside held-out data.",
    )
    p.add_argument("--run", required=True, help="run folder written by 'flowmatch train'")
    p.add_argument(
        "--what", default="samples", choices=list(PICTURES), help="which picture (default: samples; a manifold run draws only samples)"
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
    from flowmatch.evaluation.report import PICTURES, picture
    from flowmatch.runs import load
    from flowmatch.training.devices import resolve_device

    out = Path(args.out) if args.out else Path(args.run) / PICTURES[args.what]
    wanted = Path(PICTURES[args.what]).suffix
    if out.suffix.lower() != wanted:
        raise FlowmatchError(f"output '{out}' must end in {wanted} for --what {args.what}")
    flow = load(args.run, device=str(resolve_device(args.device)))  # a bad run folder is the first error
    _use_threads(args, flow)
    _check_output_file(out, force=True)  # a picture replaces its old self, never a folder
    if isinstance(flow, RiemannianFlow):
        return _plot_manifold(args, flow, out)
    if hasattr(flow, "kind"):
        return _plot_discrete(args, flow, out)
    picture(flow, args.what, out, n=args.n, seed=args.seed, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def _plot_discrete(args, flow, out: Path) -> int:
    """A table run draws its columns' distributions (``--what samples``); a tokens run has no picture."""
    if flow.kind != "table" or args.what != "samples":
        raise FlowmatchError(f"a {flow.kind} run draws only --what samples (a table's columns); text is in samples.txt")
    from flowmatch.discrete.training import data_from_config
    from flowmatch.plots.tables import plot_table_marginals

    data = data_from_config(flow.config)
    plot_table_marginals(
        flow.sample(min(args.n, 20_000), seed=args.seed), data.test, out, title=f"{flow.config['data']}: samples against the test split"
    )
    print(f"wrote {out}")
    return 0


def _plot_manifold(args, flow, out: Path) -> int:
    from flowmatch.evaluation.manifolds import manifold_picture

    if args.what != "samples":
        raise FlowmatchError(f"a manifold run draws only --what samples (its points on {flow.data_manifold.label}), not {args.what}")
    if args.n < 2:
        raise FlowmatchError(f"-n must be at least 2, got {args.n}")
    manifold_picture(flow, out, n=args.n, seed=args.seed)
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
    from flowmatch.training.rectify import reflow

    result, metrics = reflow(
        args.run, args.out, n_pairs=args.pairs, steps=args.steps, teacher_solver=args.teacher_solver,
        teacher_nfe=args.teacher_nfe, pair_seed=args.pair_seed, force=args.force, progress=not args.quiet,
        **_rectify_options(args),
    )  # fmt: skip
    return _report_rectified(args.out, result, metrics, args.steps)


def _add_distill(sub) -> None:
    _add_reflow(sub, "distill")


def _cmd_distill(args) -> int:
    from flowmatch.training.rectify import distill

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
