"""Training: regress a velocity model onto a conditional path's velocity.

For a batch of pairs (x0, x1) (noise or source points, and data), and times t, the conditional flow
matching loss is

    L(theta) = E_{t, (x0, x1)} w(t) || v_theta(x_t, t) - u_t(x0, x1) ||^2,
    x_t = alpha_t x1 + sigma_t x0,   u_t = alpha'_t x1 + sigma'_t x0   (see ``flowmatch.paths``),

whose minimiser (for w = 1) is the marginal velocity field that carries the source at t = 0 to the
data at t = 1. The pairs are independent draws by default, or re-paired by a coupling
(``flowmatch.couplings``), or fixed pairs from a file (reflow). For independent pairs from a
Gaussian or Gaussian-mixture source the target is by default (``target = "auto"``) not each pair's
own u_t but its posterior mean over the batch's data points (and the source's components;
``AffinePath.posterior_velocity``): the same
minimiser, with far less variance at early times, where a mixture's mass is divided between its
modes. With ``objective = "distill"`` the loss is instead || Phi_theta(x0) - x1 ||^2 where
Phi_theta integrates the model with a few-step solver: the student learns to reach the teacher's
endpoint x1 in ``distill_nfe`` calls.

Batch: ``batch_size`` pairs a step, after a warm-up during which the batch grows linearly from
half of it over the first ``batch_warmup`` steps (:func:`batch_size_at`). Early, when the gradient
is large against its noise, a small batch makes the same progress per step at less cost; later, the
larger batch lowers the noise floor that the cosine decay and the EMA then average away
(``bench/results/design-figures.md`` has the measurements behind this and the other defaults).

Times and loss weights are :mod:`flowmatch.losses`' (the losses themselves too: the loop calls
:func:`~flowmatch.losses.flow_matching_loss` and :func:`~flowmatch.losses.distillation_loss`). By
default the uniforms are stratified: a batch holds ``time_strata`` = 32 times, one in each of
[k/32, (k+1)/32), each shared by a run of pairs; the loss keeps its expectation, its variance over t
drops, and the model's time branch runs once per run instead of once per pair.

Finite data (files, tables, images): the trainer holds out ``val_fraction`` of the training rows and
scores the EMA weights on them every ``val_every`` steps (:class:`Validation`); by default it keeps
the weights of the lowest validation loss and stops ``early_stop`` steps after it, and it uses the
posterior target only from :data:`POSTERIOR_MIN_ROWS` training rows up. Without these, a long run
learns the exact velocity field of the training rows, whose flow lands on the rows themselves
(``flowmatch.evaluation.memorisation`` measures it).

The configuration is plain data (:class:`TrainConfig`), every field a ``flowmatch train`` flag and
a TOML key. :func:`train` is one loop that reads top to bottom; with a run folder it writes
crash-safe checkpoints (``flowmatch.training.checkpoints``) and resumes from them exactly: weights,
optimiser, EMA, schedule, random-number-generator states and so the data order. Under
``torchrun`` it trains data-parallel: every process draws the same global batch of
``batch_size * world_size`` pairs (the batch size is per process) and takes its own shard, so
the result equals one process with the global batch, up to floating-point rounding.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from flowmatch.errors import FlowmatchError
from flowmatch.leftovers import locks_run
from flowmatch.models.registry import build_model
from flowmatch.storage import atomic_folder, make_folder, reading, write_json, writing
from flowmatch.training.checkpoints import drop_states_from, latest_state, step_of, unprefixed
from flowmatch.training.config import TrainConfig, resolve_kind, resolve_select, resolve_target
from flowmatch.training.devices import resolve_device, resolve_precision
from flowmatch.training.distributed import _distributed_env, _record_rank_agreement
from flowmatch.training.ema import EMA
from flowmatch.training.inputs import TrainingData, check_arguments, resolve_path, resolve_source, split_objects, training_data
from flowmatch.training.objective import NonFiniteLoss, Objective
from flowmatch.training.pairs import PairSampler
from flowmatch.training.schedules import learning_rate
from flowmatch.training.state import TrainingState, stream_state
from flowmatch.training.threads import positions_of, thread_scope, use_threads
from flowmatch.training.validation import Validation


# -- the loop ------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What :func:`train` returns: the trained flow and a summary of the run."""

    flow: Any  # flowmatch.flow.Flow
    config: TrainConfig
    losses: list[float]
    seconds: float
    step: int
    interrupted: bool = False
    precision: str = "fp32"  # what the model was trained in ("auto" resolved on this device)
    target: str = "conditional"  # the regression target it trained on ("auto" resolved on this data)
    validation: dict[str, Any] | None = None  # best step and loss, selection, early stop (finite data)
    data_exhausted: bool = False  # a one-shot iterator of batches ran out before the last step
    threads: dict[str, Any] | None = None  # torch's intra-op thread count and what chose it (training.threads)

    @property
    def final_loss(self) -> float:
        tail = self.losses[-100:]
        return sum(tail) / len(tail) if tail else float("nan")


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
    callback: Callable[[int, Any, float], None] | None = None,
    callback_steps: Iterable[int] = (),
    min_test_rows: int = 0,
    **overrides,
) -> TrainResult:
    """Train a flow; ``train(steps=2000, data="moons")`` is the same as passing a TrainConfig.

    ``model``, ``data``, ``path`` and ``source`` take a name (as the config) or an object: one's own
    ``nn.Module``, a tensor, a torch Dataset, a DataLoader or any iterable of batches, an AffinePath or
    Schedule, rows or a sampler (see :mod:`flowmatch.training.inputs`). Every engine feature applies to
    them: EMA, schedules, bf16, compile, couplings, the posterior target where it applies, checkpoints
    and exact resume, SIGINT/SIGTERM, torchrun.

    With ``run_dir`` the folder gets ``config.json``, ``metrics.csv``, training checkpoints and
    sample pictures as training goes (see :func:`fit` for the finished run folder); with
    ``resume`` training continues from the folder's newest checkpoint (pass the same objects again).

    ``min_test_rows``: finite data (a file, a table, rows given in Python) must hold out at least this many
    test rows, checked before the first step (:func:`fit` asks for what its measurements need).

    ``callback(step, flow, seconds)`` is called after each step in ``callback_steps`` (on the main
    process) with a Flow holding the EMA weights of that moment and the training seconds so far, for
    example to score the model as it trains; the training clock (``TrainResult.seconds``, the
    ``seconds`` column) stops while it runs.
    """
    from flowmatch.flow import Flow, on_flat_rows
    from flowmatch.runs import build_flow, flow_meta, reopen_run

    check_arguments(run_dir, "run_dir", resume=resume, progress=progress)
    callback_steps = _callback_steps(callback, callback_steps)
    if isinstance(min_test_rows, bool) or not isinstance(min_test_rows, int) or min_test_rows < 0:
        raise FlowmatchError(f"min_test_rows must be a non-negative integer, got {min_test_rows!r}")
    config, objects = split_objects(config, overrides, resume=resume, model=model, data=data, path=path, source=source)
    if objects.data is None and config.kind != "continuous":
        kind = resolve_kind(config)
        if kind != "continuous":
            trainer = "flowmatch.manifolds.training.train_manifold" if kind == "manifold" else "flowmatch.discrete.training.train_discrete"
            raise FlowmatchError(f"data '{config.data}' is of kind {kind}: train it with flowmatch.fit (or {trainer})")
    world, rank, local_rank = _distributed_env()
    device = resolve_device(config.device, local_rank)
    own_group = world > 1 and not dist.is_initialized()  # a process group train() starts, it also ends
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_process = rank == 0

    # -- set-up: everything that can fail on bad input happens before any file is written ---------
    run = Path(run_dir) if run_dir is not None else None
    state = latest_state(run) if run is not None and resume else None
    start_step = state[2]["step"] if state is not None else 0
    inputs = training_data(
        config, objects, world=world, rank=rank, start_step=start_step, stream_state=stream_state(state), min_test_rows=min_test_rows
    )
    dataset, stream = inputs.dataset, inputs.stream
    source = resolve_source(config, objects, inputs.dim)
    pairs = PairSampler(config, inputs.source_of_batches, source, inputs.conditions)
    path = resolve_path(config, objects)
    shaped = partial(on_flat_rows, shape=inputs.shape)  # the model on flat rows, in the data's own row shape
    validation = None
    if dataset is not None and dataset.val is not None and config.objective == "flow-matching":
        validation = Validation(config, dataset, path, source, device, wrap=shaped)
    select = resolve_select(config, validation is not None)
    if select == "val-loss" and validation is None:
        raise FlowmatchError(f"select val-loss needs a validation split: data '{config.data}' has none (val_fraction > 0, finite data)")
    torch.manual_seed(config.seed)
    if state is not None:  # the checkpoint's own architecture (a warm start's teacher need not exist any more)
        model = build_flow(
            state[2]["flow"], unprefixed("model", state[1]), config.to_dict(), where=state[0], model=objects.model
        ).model.train()
    else:
        model = objects.model if objects.model is not None else _initial_model(config, inputs)
    if config.objective == "meanflow":
        _require_two_times(model)
    model = model.to(device)
    threads = use_threads(config.threads, model, config.batch_size, positions_of(inputs.shape))
    meta = None  # a path or source that a run folder cannot record is refused here, before the folder
    if run is not None:
        meta = flow_meta(
            Flow(model=model, path=path, standardizer=inputs.standardizer, config=config.to_dict(), source=source,
                 shape=inputs.shape, conditions=inputs.conditions)
        )  # fmt: skip
    ema = EMA(model, config.ema, config.ema_warmup)
    optimizer = _optimizer(config, model)
    # a stream's batches differ between processes; its noise and times do too
    generator = torch.Generator().manual_seed(config.seed + (_RANK_SEED * rank if stream is not None else 0))
    saved = TrainingState(
        model, ema, optimizer, generator, validation=validation, stream=stream, flow_meta=meta, keep=config.keep_checkpoints
    )
    elapsed, losses = saved.restore(state[1], state[2], state[0]) if state is not None else (0.0, [])
    if world > 1:
        dist.barrier()  # every process has checked its input before the run folder is touched

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    precision = resolve_precision(config.precision, device)
    target = _target(config, inputs)
    source_mixture = None if source is None else source.gaussian_mixture  # the posterior's source density
    if target == "posterior" and source is not None and source_mixture is None:
        raise FlowmatchError(f"target posterior: source '{config.source}' has no isotropic Gaussian-mixture density here")
    objective = Objective(
        config, pairs, path, shaped(net), device=device, world=world, rank=rank, streamed=stream is not None,
        posterior=target == "posterior", source_mixture=source_mixture, null_class=inputs.conditions.get("y", {}).get("classes", 0),
        autocast=torch.bfloat16 if precision == "bf16" else None,  # the model's calls under autocast
        target_net=shaped(model) if config.objective == "meanflow" else None,  # MeanFlow's jvp: not through DDP
    )  # fmt: skip

    def checkpoint(step: int, folder: Path | None = run) -> None:
        if folder is not None and main_process:
            saved.save(folder, step, elapsed + time.perf_counter() - started, losses)

    started = time.perf_counter()
    if run is not None and main_process and not resume:
        _start_run_folder(run, config, checkpoint, source)
    log = _Log(run if main_process else None, config, start_step)
    stop = _StopSignal()
    bar = _progress_bar(config.steps, start_step, progress and main_process)
    callback_steps = callback_steps if callback is not None and main_process else set()
    done, exhausted = start_step, False
    # a resumed run that had stopped early is finished (its best weights are already behind it)
    stopped_early = validation is not None and 0 < config.early_stop <= start_step - validation.best_step
    if run is not None and main_process and resume and not stopped_early and start_step < config.steps:
        reopen_run(run)  # a finished run trained further: its final weights and figures describe the old end
    shown: dict[str, str] = {}  # the progress bar's figures
    with stop:
        for step in range(start_step, start_step if stopped_early else config.steps):
            try:
                loss = objective(step, generator)
            except StopIteration:  # a one-shot iterator ran out
                exhausted = True
                break
            except NonFiniteLoss as exc:
                raise NonFiniteLoss(f"{exc}; {_last_good(run if main_process else None, exc.step, start_step)}", exc.step) from None
            lr = learning_rate(config, step)
            _descend(optimizer, model, loss, lr, config.grad_clip)
            ema.update(model)
            if validation is not None and ((step + 1) % config.val_every == 0 or step + 1 == config.steps):
                value = validation.update(step + 1, ema.copy_into(model, validation.scratch(model)))
                log.validation(step + 1, value)
                shown["val"] = f"{value:.4f}"
                stopped_early = config.early_stop > 0 and step + 1 - validation.best_step >= config.early_stop

            losses.append(_global_loss(loss, world))
            done = step + 1
            log.step(done, losses, lr, elapsed + time.perf_counter() - started)
            if bar is not None and (done % 25 == 0 or done == config.steps):
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", **shown, refresh=False)
                bar.update(done - bar.n)
            if done % config.checkpoint_every == 0 or done == config.steps or stop.requested or stopped_early:
                checkpoint(done)
            if main_process and config.sample_every and done % config.sample_every == 0 and run is not None and dataset is not None:
                _progress_picture(_flow_for(model, ema, path, inputs, config), run, done)
            if done in callback_steps:
                paused = time.perf_counter()
                assert callback is not None
                callback(done, _flow_for(model, ema, path, inputs, config, source=source), elapsed + paused - started)
                started += time.perf_counter() - paused  # the callback's time is not training time
            if stop.requested or stopped_early:
                break
    if exhausted:
        checkpoint(done)
    if bar is not None:
        bar.close()
    if main_process and progress:
        _say_why_it_stopped(done, start_step, config, validation if stopped_early else None, exhausted)
    log.close()
    if world > 1:
        _record_rank_agreement(model, run if main_process else None, world)
    if world > 1:
        # DDP's reducer hooks the model's parameters, which the result keeps: it would keep the process
        # group alive until interpreter exit, where gloo's threads die in a random order (SIGABRT)
        del objective, net
        gc.collect()
    if own_group:
        dist.barrier()  # no process closes its connections while another still uses them
        dist.destroy_process_group()
    chosen = validation.best_state if validation is not None and select == "val-loss" else None
    return TrainResult(
        _flow_for(model, ema, path, inputs, config, source=source, weights=chosen), config, losses,
        elapsed + time.perf_counter() - started, step=done, interrupted=stop.requested, precision=precision, target=target,
        validation=None if validation is None else validation.summary(select, stopped_early), data_exhausted=exhausted,
        threads=threads.to_dict(),
    )  # fmt: skip


def _last_good(run: Path | None, step: int, start: int) -> str:
    """After a non-finite loss at ``step``: the checkpoints that cannot be trusted are deleted
    (:func:`~flowmatch.training.checkpoints.drop_states_from`) and the words name the one kept."""
    if run is None:
        return "no run folder, so no checkpoint"
    kept = drop_states_from(run, step, start)
    if kept is None:
        return f"no checkpoint is left in '{run}'"
    if step_of(kept) >= step:
        return f"the run keeps the checkpoint it started from, step {step_of(kept)} ({kept})"
    return f"the run keeps its last good checkpoint, step {step_of(kept)} ({kept}): finite weights whose loss was finite"


def _callback_steps(callback: Any, steps: Any) -> set[int]:
    """The steps to call ``callback`` after, checked before training: a callable and integers."""
    if callback is not None and not callable(callback):
        raise FlowmatchError(f"callback must be callable as callback(step, flow, seconds), got {type(callback).__name__} {callback!r}")
    try:
        chosen = set(steps)
    except TypeError:
        raise FlowmatchError(f"callback_steps must be an iterable of step numbers, got {type(steps).__name__} {steps!r}") from None
    bad = [k for k in chosen if isinstance(k, bool) or not isinstance(k, int)]
    if bad:
        raise FlowmatchError(f"callback_steps must hold integers, got {bad[0]!r}")
    return chosen


def _descend(optimizer: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor, lr: float, grad_clip: float) -> None:
    """One optimiser step on ``loss`` at learning rate ``lr`` (the gradient norm clipped to ``grad_clip`` > 0)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def _global_loss(loss: torch.Tensor, world: int) -> float:
    """The loss of the global batch, as one process with the whole batch would report it."""
    if world > 1:
        loss = loss.detach().clone()
        dist.all_reduce(loss)
        loss /= world
    return loss.item()


def _say_why_it_stopped(done: int, start: int, config: TrainConfig, early: Validation | None, exhausted: bool) -> None:
    if early is not None:
        print(
            f"stopped early at step {done}: the validation loss was lowest at step {early.best_step} "
            f"({early.best_loss:.4f}) and has not improved for {config.early_stop} steps"
        )
    if exhausted:
        print(f"the data ran out after {done - start} batches: stopped at step {done} of {config.steps}")


_RANK_SEED = 1_000_003  # a streamed run's generator on process r: seed + r * this


def _target(config: TrainConfig, inputs: TrainingData) -> str:
    """:func:`resolve_target`, and the conditional target where conditions other than class labels
    (which the posterior cannot average over) or a stream's labels come with the data."""
    target = resolve_target(config, inputs.n_train)
    if target == "posterior" and (set(inputs.conditions) - {"y"} or (inputs.stream is not None and inputs.conditions)):
        if config.target == "posterior":
            raise FlowmatchError(
                f"target posterior averages over class labels only; these data carry conditions {', '.join(inputs.conditions)}"
            )
        return "conditional"
    return target


def _initial_model(config: TrainConfig, inputs: TrainingData) -> torch.nn.Module:
    """The config's model for these data (or a warm start's, ``init_from``)."""
    dim, dataset = inputs.dim, inputs.dataset
    if config.init_from:
        from flowmatch.runs import load

        teacher = load(config.init_from)
        if teacher.dim != dim:
            raise FlowmatchError(f"init_from '{config.init_from}' has dimension {teacher.dim}, data has {dim}")
        return teacher.model.train()
    classes = inputs.conditions.get("y", {}).get("classes", 0)
    covariates = inputs.conditions.get("c", {}).get("dim", 0)
    times = {"times": 2} if config.objective == "meanflow" else {}  # MeanFlow's u(x, r, t)
    if config.model == "unet":
        if dataset is None or dataset.image_shape is None:
            raise FlowmatchError(f"model=unet needs image data; '{config.data}' is not a set of images")
        return build_model(
            "unet",
            dim,
            image_shape=list(dataset.image_shape),
            channels=config.channels,
            channel_mult=[int(m) for m in config.channel_mult.split(",")],
            num_res_blocks=config.num_res_blocks,
            attention_resolutions=[min(dataset.image_shape[1:]) // 2 ** (len(config.channel_mult.split(",")) - 1)]
            if config.attention
            else [],
            dropout=config.dropout,
            num_classes=classes,
            **times,
        )
    if config.model == "seed-mlp":
        if classes or covariates:
            raise FlowmatchError("the seed-mlp model takes no conditions; use model=mlp for conditional training")
        if times:
            raise FlowmatchError("the seed-mlp model takes one time; objective meanflow needs model=mlp or unet")
        return build_model("seed-mlp", dim, width=config.width)
    options = {"condition_dim": covariates, **times} if covariates else times
    return build_model(
        "mlp", dim, width=config.width, depth=config.depth, activation=config.activation, num_classes=classes, dropout=config.dropout,
        **options,
    )  # fmt: skip


def _require_two_times(model) -> None:
    """MeanFlow calls the model as ``model(x, t, r=r)``: refuse one that cannot take r before training."""
    import inspect

    config = getattr(model, "config", None)  # flowmatch's models record times=2 (a one-time model omits it)
    if type(model).__module__.startswith("flowmatch.") and isinstance(config, dict) and config.get("times", 1) != 2:
        raise FlowmatchError(f"objective meanflow needs a two-time model u(x, r, t): build the {type(model).__name__} with times=2")
    try:
        parameters = inspect.signature(model.forward if isinstance(model, torch.nn.Module) else model).parameters
    except (TypeError, ValueError):  # no signature to read: the first call says
        return
    if "r" not in parameters and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        raise FlowmatchError(f"objective meanflow calls the model as model(x, t, r=r); {type(model).__name__}.forward takes no argument r")


def _optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW, fused: one kernel updates every parameter (on the CPU torch's default is a
    Python loop over the tensors; bench/results/design-figures.md)."""
    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def _flow_for(model, ema, path, inputs: TrainingData, config, *, source=None, weights=None):
    """A Flow that samples with a copy of the model holding the EMA weights (or ``weights``)."""
    from flowmatch.flow import Flow

    return Flow(
        model=ema.sampling_copy(model, weights), path=path, standardizer=inputs.standardizer, dataset=inputs.dataset, source=source,
        config=config.to_dict(), shape=inputs.shape, conditions=inputs.conditions,
    )  # fmt: skip


class _StopSignal:
    """Turns SIGINT and SIGTERM into a request to stop after the current step (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        self.requested = True

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Log:
    """metrics.csv and validation.csv (and TensorBoard when installed) every ``log_every`` steps, main process
    only. Each write opens, appends and closes: an error midway (a full disk) leaves no open file behind."""

    def __init__(self, run: Path | None, config: TrainConfig, start_step: int):
        self.every = config.log_every
        self.path = self.val_path = None
        self.tensorboard = None
        self.last_time: float | None = None
        if run is None:
            return
        self.path, self.val_path = run / "metrics.csv", run / "validation.csv"
        _restart_log(self.path, "step,loss,lr,steps_per_s,seconds", start_step)
        _restart_log(self.val_path, "step,val_loss", start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run / "tensorboard"), purge_step=start_step + 1)
        except ImportError:
            self.tensorboard = None

    def step(self, step: int, losses: list[float], lr: float, seconds: float) -> None:
        if self.path is None or step % self.every:
            return
        recent = losses[-self.every :]
        loss = sum(recent) / len(recent)
        rate = self.every / (seconds - self.last_time) if self.last_time is not None and seconds > self.last_time else float("nan")
        self.last_time = seconds
        _append(self.path, f"{step},{loss:.6g},{lr:.6g},{rate:.4g},{seconds:.3f}\n")
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("loss", loss, step)
            self.tensorboard.add_scalar("lr", lr, step)

    def validation(self, step: int, loss: float) -> None:
        if self.val_path is None:
            return
        _append(self.val_path, f"{step},{loss:.6g}\n")
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("val_loss", loss, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _restart_log(path: Path, header: str, start_step: int) -> None:
    """``path`` (a CSV log of a run) rewritten with the rows up to ``start_step``: a resumed run drops those
    past its checkpoint (and rows that are not ``step,...``)."""
    with reading(path):
        rows = path.read_text(errors="replace").splitlines()[1:] if path.exists() else []
    kept = [r for r in rows if r.split(",")[0].isdigit() and int(r.split(",")[0]) <= start_step]
    with writing(path):
        path.write_text("\n".join([header, *kept]) + "\n")


def _append(path: Path, line: str) -> None:
    with writing(path), open(path, "a") as fh:  # a full disk: one line naming the file
        fh.write(line)


def _start_run_folder(run: Path, config: TrainConfig, checkpoint, source=None) -> None:
    """Create the run folder with its config and a step-0 checkpoint, atomically.

    From the moment the folder exists it holds a loadable, resumable checkpoint. An old run in its
    place (which :func:`fit` allowed with ``force``) is removed only then.
    """
    from flowmatch.runs import config_for_file

    with atomic_folder(run) as staging:
        write_json(staging / "config.json", config_for_file(config.to_dict(), run))  # paths relative to the run
        if config.source == "python":  # rows of a source given in Python are kept with the run
            from flowmatch.data.sources import save_source_rows

            save_source_rows(source, staging)
        checkpoint(0, staging)


def _progress_picture(flow, run: Path, step: int) -> None:
    from flowmatch.plots.figures import plot_samples

    folder = make_folder(run / "progress")
    test = flow.dataset.test[:1000]
    samples = flow.sample(len(test), solver="rk4", nfe=40, seed=0)
    plot_samples(samples, test, folder / f"step-{step:08d}.png", title=f"step {step}")


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
