"""The Python API that the CLI is a thin layer over: :func:`train`, :func:`fit` and resuming a run, for every
modality. Each resolves the config and the user's objects (:mod:`flowmatch.config`), finds the modality of the
run, refuses every option that would not take effect (:func:`flowmatch.engine.seam.check_applicable`), and
hands the run to the engine (:mod:`flowmatch.engine`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from flowmatch.config import (
    MODALITIES,
    TrainConfig,
    check_arguments,
    defaults_of,
    modality,
    posterior_obstacle,
    resolve_kind,
    split_objects,
)
from flowmatch.engine import fitting, loop
from flowmatch.engine.runs import check_writable_run, config_from_file, config_values
from flowmatch.engine.seam import Modality, Objects, check_applicable
from flowmatch.engine.threads import thread_scope
from flowmatch.errors import FlowmatchError
from flowmatch.flows.continuous import PRECISIONS  # noqa: F401  (what sampling's network runs in, for the CLI's choices)
from flowmatch.leftovers import locks_run, tidy_parent, tidy_run
from flowmatch.models.registry import MODEL_OPTIONS
from flowmatch.plots import PICTURES  # noqa: F401  (every picture of a run and its default file, for the CLI)
from flowmatch.storage import read_json


def prepare(config: TrainConfig, objects: Objects) -> tuple[TrainConfig, Modality]:
    """The config with its kind resolved, and the modality that trains it; every option set that it would not use
    is refused here, before any work."""
    kind = resolve_kind(config, objects.data)
    if kind != config.kind:
        config = dataclasses.replace(config, kind=kind)
    chosen = modality(kind)
    check_applicable(config, chosen, defaults_of(kind, config.to_dict()), MODEL_OPTIONS)
    chosen.check(config)
    return config, chosen


@thread_scope
@locks_run("run_dir")
def train(
    config: TrainConfig | None = None,
    *,
    model: Any = None,
    data: Any = None,
    path: Any = None,
    source: Any = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    callback=None,
    callback_steps=(),
    min_test_rows: int = 0,
    **overrides,
) -> loop.TrainResult:
    """Train a flow; ``train(steps=2000, data="moons")`` is the same as passing a TrainConfig.

    ``model``, ``data``, ``path`` and ``source`` take a name (as the config) or an object: one's own
    ``nn.Module``; data as the modality takes it (a tensor, a torch Dataset, a DataLoader or any iterable of
    batches for points and images; a pandas DataFrame for a table; a list of strings or an integer tensor of
    token ids for tokens; points for a manifold); an AffinePath or Schedule; rows or a sampler for the source.
    Every engine feature applies to them: EMA, schedules, bf16, compile, the validation split, checkpoints and
    exact resume, SIGINT/SIGTERM, torchrun.

    With ``run_dir`` the folder gets ``config.json``, ``metrics.csv``, training checkpoints and progress
    pictures as training goes (see :func:`fit` for the finished run folder); with ``resume`` training
    continues from the folder's newest checkpoint (pass the same objects again).

    ``min_test_rows``: finite data must hold out at least this many test rows, checked before the first step.

    ``callback(step, flow, seconds)`` is called after each step in ``callback_steps`` (on the main process)
    with a flow holding the EMA weights of that moment and the training seconds so far, for example to score
    the model as it trains; the training clock (``TrainResult.seconds``) stops while it runs.
    """
    check_arguments(run_dir, "run_dir", resume=resume, progress=progress)
    if isinstance(min_test_rows, bool) or not isinstance(min_test_rows, int) or min_test_rows < 0:
        raise FlowmatchError(f"min_test_rows must be a non-negative integer, got {min_test_rows!r}")
    config, objects = split_objects(config, overrides, resume=resume, model=model, data=data, path=path, source=source)
    config, chosen = prepare(config, objects)
    return loop.train(
        config, chosen, objects, run_dir=run_dir, resume=resume, progress=progress, callback=callback,
        callback_steps=callback_steps, min_test_rows=min_test_rows,
    )  # fmt: skip


@thread_scope
@locks_run("out")
def fit(
    config: TrainConfig | None = None,
    out: str | os.PathLike | None = None,
    *,
    model: Any = None,
    data: Any = None,
    path: Any = None,
    source: Any = None,
    reference: Any = None,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    n_eval: int = 2000,
    **overrides,
) -> tuple[loop.TrainResult, dict[str, Any]]:
    """Train, measure, and (with ``out``) write the finished run folder, for any modality.

    ``model``, ``data``, ``path`` and ``source`` are as for :func:`train`. Other keywords override the
    config's fields (``fit(out="runs/x", data="moons", steps=2000)``); without a config, the data's kind
    gives the defaults beneath them (a tokens run its transformer, a table its mixed MLP, ...).

    ``resume=True`` continues the run in ``out`` from its newest checkpoint with its saved config
    (``config`` may then only raise ``steps``).

    The measurements are the modality's (:meth:`flowmatch.engine.seam.Modality.finish`), with ``evaluate``
    (the default) a quick evaluation written as ``report.json``: for points and images, exact W2 between
    ``n_eval`` samples and as many held-out points beside its floor (``reference``: held-out points of one's
    own, replacing the data's test split); for tables the columns' distances to the test split; for tokens
    bits per token against an n-gram model; on manifolds geodesic W2 and the NLL. Finite data also get the
    memorisation figures, with a warning when the samples copy training rows.
    """
    check_arguments(out, "out", force=force, resume=resume, progress=progress, evaluate=evaluate)
    if isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 2:
        raise FlowmatchError(f"n_eval must be an integer >= 2, got {n_eval!r}")
    if out is not None and resume:  # what killed processes left (flowmatch.leftovers), the run folder locked
        tidy_run(out)
    elif out is not None:
        tidy_parent(out)
    given = {"model": model, "data": data, "path": path, "source": source}
    if resume:
        if out is None:
            raise FlowmatchError("resume needs the run folder")
        if Path(out).is_dir():  # a read-only run, or one holding links: refused before any work
            from flowmatch.storage import check_no_links, check_writable

            check_writable(Path(out) / "config.json")
            check_no_links(Path(out))
        from flowmatch.engine.checkpoints import check_newest_state

        check_newest_state(Path(out))  # metadata changed by hand: refused before config.json is rewritten
        saved = resume_config(Path(out), None)
        rebuilt = {"model": "python"} if model is None and saved.model == "python" else {}  # the checkpoint rebuilds it
        asked, objects = split_objects(config if config is not None else saved, {**rebuilt, **overrides}, resume=True, **given)
        asked, chosen = prepare(asked, objects)
        config = resume_config(Path(out), asked)
    else:
        config, objects = split_objects(config, overrides, **given)  # "python" where an object is given
        config, chosen = prepare(config, objects)
        if out is not None:
            check_writable_run(Path(out), force)  # fail before spending time on training
    folder = Path(out) if out is not None else None
    return fitting.run(
        config, chosen, objects, folder, resume=resume, progress=progress, evaluate=evaluate, reference=reference, n_eval=n_eval
    )


#: Keys added to TrainConfig after runs were first saved, with the value that reproduces a run saved
#: without them (its config.json lacks the key): resuming such a run continues it as it started.
ADDED_KEYS = {"batch_warmup": 0, "time_strata": 0, "target": "conditional", "val_fraction": 0.0, "select": "last", "early_stop": 0}


def resume_config(run: Path, config: TrainConfig | None) -> TrainConfig:
    """The saved config of a run to resume; ``config`` may differ from it only by more steps and its
    ``threads`` (a machine's setting: a different count may change float rounding, not what is trained). Nothing is
    written here: the training loop records the config once everything that can refuse the run has passed."""
    if not (run / "config.json").is_file():
        raise FlowmatchError(f"cannot resume: '{run}' is not a flowmatch run folder (config.json is missing)")
    values = config_from_file(read_json(run / "config.json"), run)  # paths relative to the run folder resolved
    if isinstance(values, dict):
        values = config_values(values)  # without what the run recorded beside its config (the precision auto chose)
        old = "val_fraction" not in values  # saved before the finite-data rules (target auto by data size)
        values = {**ADDED_KEYS, **values}
        if old and values["target"] == "auto":  # auto then meant the posterior wherever it applies
            probe = TrainConfig.from_dict({**values, "target": "conditional"}, source=f"{run / 'config.json'}")
            # (a source given in Python was then always the conditional target's)
            values["target"] = "conditional" if posterior_obstacle(probe) or probe.source == "python" else "posterior"
    saved = TrainConfig.from_dict(values, source=f"{run / 'config.json'}")
    if config is None:
        return saved
    if saved.kind == "auto":  # saved before kinds were resolved in config.json: the kind it trained as
        saved = dataclasses.replace(saved, kind=config.kind)
    changed = [k for k, v in config.to_dict().items() if k not in ("steps", "threads") and saved.to_dict()[k] != v]
    if changed:
        raise FlowmatchError(f"cannot change {', '.join(changed)} when resuming; only steps may be raised (and threads set)")
    if config.steps < saved.steps:
        raise FlowmatchError(f"cannot resume with fewer steps ({config.steps}) than the run had ({saved.steps})")
    return config  # config.json takes the new steps once the resumed run has set up (flowmatch.engine.loop)


# -- a loaded flow: evaluate, sample to a file, draw ------------------------------------------------------
def modality_of(flow: Any, what: str) -> Modality:
    """The modality of a flow (``flowmatch.load`` gives one of every kind); anything else is refused, naming ``what``."""
    if isinstance(flow, (str, os.PathLike)):
        raise FlowmatchError(f"{what} takes a flow, not its run folder: {what}(flowmatch.load({str(flow)!r}), ...)")
    kind = getattr(flow, "kind", None)
    if not isinstance(kind, str) or not callable(getattr(flow, "checkpoint_meta", None)):
        raise FlowmatchError(f"{what} takes a Flow (flowmatch.load(run) gives one), got {type(flow).__name__}")
    return modality(kind)


def evaluate(flow: Any, run_dir: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """The report of a flow, whatever its modality, written as ``run_dir/report.json`` (with pictures unless
    ``quick``). Each modality takes its own options (:attr:`~flowmatch.engine.seam.Modality.eval_options`:
    points ``n``, ``solver``, ``nfe``, ``likelihood_solver``, ``reference``, ...; tokens ``n``, ``nfe``,
    ``temperature``; tables ``target``; manifolds ``sets``, ...); any other is refused by name."""
    chosen = modality_of(flow, "evaluate")
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise FlowmatchError(f"run_dir must be a path to a run folder or None, got {type(run_dir).__name__} {run_dir!r}")
    from flowmatch.engine.seam import check_command_options

    check_command_options(options, chosen.eval_options, chosen.label)
    return chosen.evaluate(flow, run_dir, options)


def format_report(flow: Any, report: dict[str, Any]) -> str:
    """A report of :func:`evaluate` as the text table ``flowmatch eval`` prints."""
    return modality_of(flow, "format_report").format_report(report)


def check_output_file(out: Path, force: bool) -> None:
    """Refuse, before any work, an output file that cannot be written: an existing file without ``force``, a
    folder (``force`` replaces a file, never a folder), a missing folder, or one where nothing can be written."""
    from flowmatch.storage import check_writable

    if out.is_dir():
        raise FlowmatchError(f"output '{out}' is a folder; only a file can be replaced")
    if out.exists() and not force:
        raise FlowmatchError(f"output '{out}' already exists; pass force=True to replace it")
    if out.parent.exists() and not out.parent.is_dir():
        raise FlowmatchError(f"output folder '{out.parent}' is a file, not a folder")
    if not out.parent.is_dir():
        raise FlowmatchError(f"output folder '{out.parent}' does not exist")
    check_writable(out)


def sample_to_file(
    run: str | os.PathLike, out: str | os.PathLike, *, n: int = 1000, seed: int = 0, force: bool = False, device: str = "cpu",
    threads: int = 0, **options: Any,
) -> str:  # fmt: skip
    """Draw ``n`` samples of the run in folder ``run`` into the file ``out`` (what ``flowmatch sample`` does),
    in the run's own terms: rows (.npy, .csv) for points, images and manifolds, a table (.csv), text (.txt) or
    token ids (.npy) for tokens. ``options`` are the modality's (:attr:`~flowmatch.engine.seam.Modality.sample_options`:
    the solver and NFE, ``label`` (a list of classes: n samples of each), ``condition`` (rows, or a .npy or
    .csv file of them: n samples of each), ``guidance``, ...); any other is refused by name. Returns what was
    written, in words."""
    from flowmatch.engine.devices import resolve_device
    from flowmatch.engine.seam import check_command_options
    from flowmatch.runs import load

    out = Path(out)
    suffixes = list(dict.fromkeys(s for kind in reversed(MODALITIES) for s in modality(kind).suffixes))
    if out.suffix not in suffixes:
        raise FlowmatchError(f"output '{out}' must end in {', '.join(suffixes[:-1])} or {suffixes[-1]}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise FlowmatchError(f"-n must be a positive integer, got {n}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise FlowmatchError(f"seed must be a non-negative integer, got {seed!r}")
    check_output_file(out, force)
    flow = load(run, device=str(resolve_device(device)))
    chosen = modality(flow.kind)
    check_command_options(options, chosen.sample_options, chosen.label)
    if out.suffix not in chosen.suffixes:
        raise FlowmatchError(f"{chosen.label} writes {' or '.join(chosen.suffixes)}, not '{out.suffix}'")
    if isinstance(options.get("condition"), (str, os.PathLike)):
        from flowmatch.data.files import read_condition_rows

        file = str(options["condition"])
        rows = read_condition_rows(file)
        spec = (getattr(flow, "conditions", None) or {}).get("c")
        if spec is not None and "dim" in spec and rows.shape[1] != spec["dim"]:
            raise FlowmatchError(
                f"condition file '{file}' has rows of {rows.shape[1]} values; the model's condition c takes {spec['dim']} "
                f"(one row per line, as the training's condition columns)"
            )
        options["condition"] = list(rows)
    use_threads_for(flow, threads, n)
    return chosen.write_samples(flow, out, n=n, seed=seed, options=options)


def use_threads_for(flow: Any, threads: int, n: int | None) -> None:
    """``threads`` for a command's network calls on a loaded flow (:mod:`flowmatch.engine.threads`), the work
    being one call on ``n`` rows, at most the rows sampling calls the network on."""
    from flowmatch.engine.threads import use_threads
    from flowmatch.flows.continuous import CPU_BATCH_SIZE

    rows = min(n if n else CPU_BATCH_SIZE, CPU_BATCH_SIZE)
    use_threads(threads, flow.model, rows, getattr(flow, "positions", 1))


def picture(flow: Any, what: str, out: str | os.PathLike, **options: Any) -> Path:
    """Draw picture ``what`` of a flow into ``out`` (what ``flowmatch plot`` does): each modality draws its
    own (:attr:`~flowmatch.engine.seam.Modality.pictures`: samples for every one; points also density,
    trajectories, field, animation and nfe); ``options`` (``n``, ``seed``, ``progress``) as it takes them."""
    from flowmatch.engine.seam import check_command_options

    chosen = modality_of(flow, "picture")
    if not chosen.pictures:  # its own words say why (a tokens run's samples are text), before its options are weighed
        return chosen.picture(flow, what, Path(out), options)
    if what not in chosen.pictures:
        raise FlowmatchError(f"{chosen.label} draws {', '.join(chosen.pictures)}, not {what}")
    check_command_options(options, chosen.picture_options, chosen.label)
    return chosen.picture(flow, what, Path(out), options)
