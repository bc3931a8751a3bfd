"""The one training loop, for every modality.

A modality prepares a run (:meth:`flowmatch.engine.seam.Modality.prepare`: its data, default model,
validation loss and the objective of one step; :mod:`flowmatch.engine.seam`); :func:`train` does the rest,
once for all of them and reading top to bottom: seeds, device and precision (bf16 autocast of the network's
calls), torchrun data parallelism, the optimiser (Adam or AdamW, fused) with its learning-rate schedule and
gradient clipping, the EMA of the weights (which are the ones sampled), the validation loss every
``val_every`` steps with selection of the best weights and early stop, metrics.csv and TensorBoard every
``log_every`` steps, progress pictures every ``sample_every`` steps, callbacks, SIGINT/SIGTERM (stop after
the current step with a resumable checkpoint), crash-safe checkpoints every ``checkpoint_every`` steps and
exact resume from them (weights, optimiser, EMA, random-number-generator states and so the data order, the
validation's best weights, a stream's position), and a NaN or infinite loss, after which the run keeps its
last good checkpoint.

Under ``torchrun`` every process draws the same global batch of ``batch_size * world_size`` rows and takes its
own shard (the batch size is per process), so the result equals one process with the global batch, up to
floating-point rounding; only rank 0 writes.

Finite data (files, tables, texts, images): the modality holds out ``val_fraction`` of the training rows, and
by default the run keeps the weights of the lowest validation loss and stops ``early_stop`` steps after it.
Without these, a long run learns the training rows themselves (:mod:`flowmatch.evaluation.memorisation`).
"""

from __future__ import annotations

import gc
import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from flowmatch.engine.checkpoints import drop_states_from, latest_state, step_of, unprefixed
from flowmatch.engine.devices import REASONS, PrecisionChoice, decide_precision, resolve_device, time_precisions, width_probe
from flowmatch.engine.distributed import distributed_env, record_rank_agreement
from flowmatch.engine.ema import EMA
from flowmatch.engine.options import resolve_select
from flowmatch.engine.runs import config_record, reopen_run, write_config
from flowmatch.engine.schedules import learning_rate
from flowmatch.engine.seam import Context, Modality, NonFiniteLoss, Objects, Task
from flowmatch.engine.state import TrainingState, stream_state
from flowmatch.engine.threads import use_threads
from flowmatch.engine.validation import Validation
from flowmatch.errors import FlowmatchError
from flowmatch.saving import RESOLVED
from flowmatch.storage import atomic_folder, make_folder, reading, writing


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained flow and a summary of the run."""

    flow: Any  # the modality's flow (EMA weights, or the selected step's)
    config: Any  # the run's TrainConfig
    losses: list[float]
    seconds: float
    step: int
    interrupted: bool = False
    precision: str = "fp32"  # what the model was trained in ("auto" resolved on this device)
    bf16_speedup: float | None = None  # precision auto's measured bf16 speed ratio (None: not measured)
    target: str = "conditional"  # the regression target it trained on ("auto" resolved on this data)
    validation: dict[str, Any] | None = None  # best step and loss, selection, early stop (finite data)
    data_exhausted: bool = False  # a one-shot iterator of batches ran out before the last step
    threads: dict[str, Any] | None = None  # torch's intra-op thread count and what chose it (engine.threads)
    task: Task | None = None  # the modality's prepared run: its data, for the measurements after training

    @property
    def data(self) -> Any:
        """The run's data as its modality split them (a Dataset, a TableData, a TokenData, a ManifoldRunData;
        None for a stream)."""
        return getattr(self.task, "data", None)

    @property
    def final_loss(self) -> float:
        tail = self.losses[-100:]
        return sum(tail) / len(tail) if tail else float("nan")


def train(
    config: Any,
    modality: Modality,
    objects: Objects,
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, Any, float], None] | None = None,
    callback_steps: Iterable[int] = (),
    min_test_rows: int = 0,
) -> TrainResult:
    """Train ``config`` (a resolved TrainConfig) on ``modality`` with the user's ``objects``; the public entry
    is :func:`flowmatch.train`, which resolves both. With ``run_dir`` the folder gets ``config.json``,
    ``metrics.csv``, training checkpoints and progress pictures as training goes; with ``resume`` training
    continues from its newest checkpoint. ``callback(step, flow, seconds)`` runs after each step in
    ``callback_steps`` on the main process (the training clock stops while it runs)."""
    callback_steps = _callback_steps(callback, callback_steps)
    world, rank, local_rank = distributed_env()
    device = resolve_device(config.device, local_rank)
    own_group = world > 1 and not dist.is_initialized()  # a process group train() starts, it also ends
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_process = rank == 0

    # -- set-up: everything that can fail on bad input happens before any file is written ---------
    run = Path(run_dir) if run_dir is not None else None
    state = latest_state(run) if run is not None and resume else None
    start_step = state[2]["step"] if state is not None else 0
    context = Context(
        device, world, rank, start_step, stream_state(state), min_test_rows, state[2].get("flow") if state is not None else None
    )
    task = modality.prepare(config, objects, context)
    validation = Validation(task.validation) if task.validation is not None else None
    select = resolve_select(config, validation is not None)
    if select == "val-loss" and validation is None:
        raise FlowmatchError(f"select val-loss needs a validation split: data '{config.data}' has none (val_fraction > 0, finite data)")
    torch.manual_seed(config.seed)
    if state is not None:  # the checkpoint's own architecture (a warm start's teacher need not exist any more)
        weights = unprefixed("model", state[1])
        model = modality.load_flow(state[2]["flow"], weights, config.to_dict(), state[0], model=objects.model).model.train()
        if objects.model is None and not config.init_from and config.model != "python":  # a built-in model, by name
            _check_resumed_model(task, state[2]["flow"].get("model"), run)
    elif config.init_from:
        model = _warm_start(config.init_from, modality, task)
    else:
        model = task.initial_model()
    _check_materialised(model)
    task.check_model(model)
    _check_training_memory(model, device)
    model = model.to(device)
    threads = use_threads(config.threads, model, config.batch_size, task.positions)
    meta = task.flow(model).checkpoint_meta() if run is not None else None  # what cannot be recorded is refused here
    ema = EMA(model, config.ema, config.ema_warmup)
    optimizer = _optimizer(config, model)
    choice = _precision(config, task, model, device, run if resume else None, world, rank)
    precision, record = choice.precision, choice.to_dict()
    # a stream's batches differ between processes; its noise and times do too
    generator = torch.Generator().manual_seed(config.seed + (RANK_SEED * rank if task.stream is not None else 0))
    saved = TrainingState(
        model, ema, optimizer, generator, validation=validation, stream=task.stream, flow_meta=meta, keep=config.keep_checkpoints
    )
    elapsed, losses = saved.restore(state[1], state[2], state[0]) if state is not None else (0.0, [])
    if world > 1:
        dist.barrier()  # every process has checked its input before the run folder is touched

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    objective = task.objective(net, model, device=device, world=world, rank=rank, autocast=torch.bfloat16 if precision == "bf16" else None)

    def checkpoint(step: int, folder: Path | None = run) -> None:
        if folder is not None and main_process:
            saved.save(folder, step, elapsed + time.perf_counter() - started, losses)

    started = time.perf_counter()
    if run is not None and main_process and not resume:
        _start_run_folder(run, config, checkpoint, task, record)
    elif run is not None and main_process:  # a resumed run: its new steps, and the record of a run saved before runs kept one
        write_config(run / "config.json", config.to_dict(), record, run)

    def sampling_flow(weights: torch.nn.Module) -> Any:
        """The task's flow around ``weights``, its config with the run's record (``precision="auto"`` samples in it)."""
        flow = task.flow(weights)
        flow.config = {**flow.config, RESOLVED: record}
        return flow

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
            value = _global_loss(loss, world)  # one synchronisation a step: the value logged, and checked here
            if not math.isfinite(value):
                last = _last_good(run if main_process else None, step, start_step)
                raise NonFiniteLoss(f"{task.non_finite_message(value, step)}; {last}", step)
            lr = learning_rate(config, step)
            descend(optimizer, model, loss, lr, config.grad_clip)
            ema.update(model)
            if validation is not None and ((step + 1) % config.val_every == 0 or step + 1 == config.steps):
                value = validation.update(step + 1, ema.copy_into(model, validation.scratch(model)))
                log.validation(step + 1, value)
                shown["val"] = f"{value:.4f}"
                stopped_early = config.early_stop > 0 and step + 1 - validation.best_step >= config.early_stop

            losses.append(value)
            done = step + 1
            log.step(done, losses, lr, elapsed + time.perf_counter() - started)
            if bar is not None and (done % 25 == 0 or done == config.steps):
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", **shown, refresh=False)
                bar.update(done - bar.n)
            if done % config.checkpoint_every == 0 or done == config.steps or stop.requested or stopped_early:
                checkpoint(done)
            if main_process and config.sample_every and done % config.sample_every == 0 and run is not None:
                task.progress_picture(sampling_flow(ema.sampling_copy(model)), make_folder(run / "progress"), done)
            if done in callback_steps:
                paused = time.perf_counter()
                assert callback is not None
                callback(done, sampling_flow(ema.sampling_copy(model)), elapsed + paused - started)
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
        record_rank_agreement(model, run if main_process else None, world)
        # DDP's reducer hooks the model's parameters, which the result keeps: it would keep the process
        # group alive until interpreter exit, where gloo's threads die in a random order (SIGABRT)
        del objective, net
        gc.collect()
    if own_group:
        dist.barrier()  # no process closes its connections while another still uses them
        dist.destroy_process_group()
    chosen = validation.best_state if validation is not None and select == "val-loss" else None
    return TrainResult(
        sampling_flow(ema.sampling_copy(model, chosen)), config, losses, elapsed + time.perf_counter() - started, step=done,
        interrupted=stop.requested, precision=precision, bf16_speedup=choice.bf16_speedup, target=task.target,
        validation=None if validation is None else validation.summary(select, stopped_early), data_exhausted=exhausted,
        threads=threads.to_dict(), task=task,
    )  # fmt: skip


def _precision(
    config: Any, task: Task, model: torch.nn.Module, device: torch.device, resumed: Path | None, world: int, rank: int
) -> PrecisionChoice:
    """What the run trains in (:func:`~flowmatch.engine.devices.decide_precision`): ``auto`` measured on the
    task's own batch (:meth:`Task.speed_probe`; without one, a matmul of the model's width), on the first
    process only, which tells the others; a resumed run continues in the precision its config.json records."""
    if resumed is not None and config.precision == "auto":
        record = config_record(resumed)
        if record is not None:
            return PrecisionChoice.from_dict(record, str(resumed / "config.json"))

    def measure() -> tuple[list[float], list[float]]:
        forward = task.speed_probe(model, device)
        if forward is None:
            return width_probe(model, config.batch_size, device)()
        return time_precisions(forward, model, device)

    if world == 1 or config.precision != "auto":
        return decide_precision(config.precision, device, measure)
    return _agree(decide_precision(config.precision, device, measure) if rank == 0 else None, device)


def _agree(choice: PrecisionChoice | None, device: torch.device) -> PrecisionChoice:
    """The first process's choice on every process (one broadcast), so that all train in one precision."""
    values = torch.zeros(3, dtype=torch.float64, device=device)
    if choice is not None:
        speedup = math.nan if choice.bf16_speedup is None else choice.bf16_speedup
        values = torch.tensor([choice.precision == "bf16", speedup, REASONS.index(choice.reason)], dtype=torch.float64, device=device)
    dist.broadcast(values, src=0)
    bf16, speedup, reason = values.tolist()
    return PrecisionChoice("bf16" if bf16 else "fp32", None if math.isnan(speedup) else speedup, REASONS[int(reason)])


def _warm_start(folder: str, modality: Modality, task: Task) -> torch.nn.Module:
    """The network of the run in ``folder`` (``init_from``), rebuilt by this run's modality and checked by its task."""
    import warnings

    from flowmatch.engine.runs import read_run
    from flowmatch.errors import FlowmatchWarning

    saved = read_run(folder)
    if saved.note is not None:
        warnings.warn(saved.note, FlowmatchWarning, stacklevel=3)
    if saved.kind != modality.kind:
        raise FlowmatchError(f"init_from '{folder}' is a run of kind {saved.kind}; this run is {modality.label} (kind {modality.kind})")
    teacher = modality.load_flow(saved.meta, saved.weights, saved.config, saved.where, folder=saved.folder)
    saved.check_meta()
    return task.warm_start(teacher, folder)


def _check_resumed_model(task: Task, saved: Any, run: Path | None) -> None:
    """Refuse to resume a run whose config.json asks for another built-in model than its checkpoint holds (the
    config changed by hand after the run started): the run would go on training the checkpoint's model while its
    config records another. The config's model is built on the meta device (nothing allocated) to compare."""
    where = run / "config.json" if run is not None else "the config"
    try:
        with torch.device("meta"):
            asked = getattr(task.initial_model(), "config", None)
    except FlowmatchError as exc:  # a size beyond memory, say
        raise FlowmatchError(f"{where}: {exc}") from None
    except Exception:  # noqa: BLE001 a model that cannot be built on the meta device is not compared
        return
    if not isinstance(asked, dict) or not isinstance(saved, dict) or asked == saved:
        return
    keys = [k for k in sorted(set(asked) | set(saved)) if asked.get(k) != saved.get(k)]
    raise FlowmatchError(
        f"{where} asks for a model with "
        + ", ".join(f"{k} {asked.get(k)!r}" for k in keys)
        + "; the run's checkpoint holds one with "
        + ", ".join(f"{k} {saved.get(k)!r}" for k in keys)
        + " (config.json was changed after the run started): restore it to resume"
    )


def _check_materialised(model: torch.nn.Module) -> None:
    """Refuse a model whose parameters or buffers lie on the meta device (shapes without values), naming the first."""
    for name, value in [*model.named_parameters(), *model.named_buffers()]:
        if value.is_meta:
            raise FlowmatchError(
                f"model {type(model).__name__}: {name} is on the meta device and holds no values; materialise the model "
                "(model.to_empty(device='cpu') and initialise it, or load its weights) before training it"
            )


def _check_training_memory(model: torch.nn.Module, device: torch.device) -> None:
    """Refuse a model whose training state (the weights on ``device``, their gradients, the EMA and the optimiser's
    two moments: five copies) is more than the memory left, before any of it is allocated."""
    from flowmatch.memory import require_memory

    values = sum(p.numel() * p.element_size() for p in model.parameters())
    count = sum(p.numel() for p in model.parameters())
    require_memory(5 * values, f"training a model of {count:,} parameters (weights, gradients, EMA, two optimiser moments)", device=device)


#: A streamed run's generator on process r: seed + r * this.
RANK_SEED = 1_000_003


def _last_good(run: Path | None, step: int, start: int) -> str:
    """After a non-finite loss at ``step``: the checkpoints that cannot be trusted are deleted
    (:func:`~flowmatch.engine.checkpoints.drop_states_from`) and the words name the one kept."""
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


def descend(optimizer: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor, lr: float, grad_clip: float) -> None:
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


def _say_why_it_stopped(done: int, start: int, config: Any, early: Validation | None, exhausted: bool) -> None:
    if early is not None:
        print(
            f"stopped early at step {done}: the validation loss was lowest at step {early.best_step} "
            f"({early.best_loss:.4f}) and has not improved for {config.early_stop} steps"
        )
    if exhausted:
        print(f"the data ran out after {done - start} batches: stopped at step {done} of {config.steps}")


def _optimizer(config: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam or AdamW, fused: one kernel updates every parameter (on the CPU torch's default is a
    Python loop over the tensors; bench/results/design-figures.md)."""
    if not any(True for _ in model.parameters()):
        raise FlowmatchError(f"the model ({type(model).__name__}) has no parameters to train")
    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return optimizer(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


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

    def __init__(self, run: Path | None, config: Any, start_step: int):
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


def _start_run_folder(run: Path, config: Any, checkpoint, task: Task, record: dict[str, Any]) -> None:
    """Create the run folder with its config (and beside it the ``record`` of what the run decided at its
    start: :data:`~flowmatch.saving.RESOLVED`), what the task keeps beside it and a step-0 checkpoint, atomically.

    From the moment the folder exists it holds a loadable, resumable checkpoint. An old run in its
    place (which :func:`fit` allowed with ``force``) is removed only then.
    """
    with atomic_folder(run) as staging:
        write_config(staging / "config.json", config.to_dict(), record, run)  # paths relative to the run
        task.keep(staging)
        checkpoint(0, staging)


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
