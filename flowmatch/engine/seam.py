"""The seam between the engine and a modality.

A modality (points and arrays with images, tables, token sequences, points on manifolds, and whatever comes
next) is one folder under ``flowmatch/modalities/`` holding a :class:`Modality`, and one line in the registry
(:data:`flowmatch.config.MODALITIES`). The engine (the one training loop, :func:`flowmatch.engine.loop.train`,
and the run folders, :func:`flowmatch.engine.fitting.run`) talks to it through this seam and nothing else, so
every feature the engine has is written once and works for every modality:

- :meth:`Modality.prepare` turns a config and the user's objects into a :class:`Task`: the data split and its
  batches, the validation loss, the default model, the objective of one step, and the flow around a set of
  weights. The engine owns the rest: seeds, devices and precision, DDP, the EMA, the optimiser and its
  schedule, checkpoints and exact resume, signals, logging, selection and early stop, callbacks.
- :meth:`Modality.load_flow` rebuilds a flow from checkpoint metadata (a run folder's or a training
  checkpoint's), :meth:`Modality.finish` measures a finished run and writes its samples and report, and
  :meth:`Modality.write_samples`, :meth:`Modality.evaluate` and :meth:`Modality.picture` are what
  ``flowmatch sample``, ``eval`` and ``plot`` do with a loaded flow.
- Declarations say which options apply: the config fields a modality reads beyond the engine's
  (``options``), the engine's that it cannot honour (``unsupported``), its objectives, and the options of
  its samples, evaluation and pictures. :func:`check_applicable` and :func:`check_command_options` refuse
  everything else by name before any work.

A flow (what :meth:`Task.flow` and :meth:`Modality.load_flow` return) has ``kind`` (its modality's),
``config`` (the run's, a dict), ``model`` (an ``nn.Module``), ``checkpoint_meta()`` (what rebuilds it, as
JSON, with the model's weights) and ``sample(n, **options)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowmatch.engine.options import ENGINE_FIELDS
from flowmatch.errors import FlowmatchError


@dataclass
class Objects:
    """What a user gave ``train``/``fit`` in place of the config's names (None: the config's name)."""

    model: torch.nn.Module | None = None
    data: Any = None
    path: Any = None
    source: Any = None


@dataclass
class Context:
    """What the engine tells a modality about the run it prepares."""

    device: torch.device
    world: int = 1
    rank: int = 0
    start_step: int = 0
    stream_state: dict[str, Any] | None = None  # a stream's position at the checkpoint resumed from
    min_test_rows: int = 0  # finite data must hold out at least this many test rows
    resumed_flow: dict[str, Any] | None = None  # the flow metadata of the checkpoint resumed from (a stream's standardiser, say)


class Task:
    """One run, prepared by :meth:`Modality.prepare` before any weight exists.

    The engine reads these attributes and calls these methods, in this order: ``validation`` (None or a
    callable scoring an eval-mode model on fixed held-out data), :meth:`initial_model` (after the engine
    seeds torch; :meth:`warm_start` instead with ``init_from``), :meth:`check_model`, :meth:`flow` (to record what rebuilds the run, and for samples),
    :meth:`speed_probe` (precision ``auto``'s micro-benchmark), :meth:`objective` (the loss of one step), :meth:`progress_picture`.
    """

    #: the data as the modality split them (a Dataset, a TableData, a TokenData, a ManifoldRunData; None for a stream)
    data: Any = None
    #: rows of the data the model trains on (None: fresh draws or unknown)
    n_train: int | None = None
    #: whether the data are finite (a file, a table, a text, rows given in Python): memorisation applies
    finite: bool = False
    #: positions a network call handles per row (a token sequence's length; an image's pixels; 1): the thread rule
    positions: int = 1
    #: a stream of batches whose position a checkpoint keeps (None: batches drawn from the run's generator)
    stream: Any = None
    #: the regression target trained on ("conditional", "posterior"; "" where the distinction does not apply)
    target: str = "conditional"
    #: the held-out loss of a model's weights (eval mode): the same fixed draws every time; None without a validation split
    validation: Callable[[torch.nn.Module], float] | None = None

    def initial_model(self) -> torch.nn.Module:
        """The network to train: the user's, a run's (``init_from``) or the modality's default for these data."""
        raise NotImplementedError

    def warm_start(self, flow: Any, folder: str) -> torch.nn.Module:
        """The network to train from a run's flow (``init_from``: a run of this modality, rebuilt by it), once its
        data are checked to be this run's kind of data (their dimension, a sequence's length, a manifold)."""
        return flow.model.train()

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse, before training, a model this objective cannot train (MeanFlow's second time, say)."""

    def flow(self, model: torch.nn.Module) -> Any:
        """The flow that samples with ``model`` (the engine passes an eval-mode copy holding the EMA weights)."""
        raise NotImplementedError

    def objective(
        self, net: Callable, model: torch.nn.Module, *, device: torch.device, world: int, rank: int, autocast: torch.dtype | None
    ) -> Callable[[int, torch.Generator], torch.Tensor]:
        """``loss(step, generator)``: step ``step``'s loss on this process, a 0-dim tensor with a graph.

        ``net`` is the network to call (DDP-wrapped or compiled), ``model`` the bare module (for what cannot
        run through DDP). Every process draws the same global batch of ``batch_size * world`` rows and takes
        its own shard, unless the data are a stream (each process its own batch). ``autocast`` (bf16 or None)
        is the dtype the network's calls run in. Raises StopIteration when a one-shot iterator has run out; a NaN
        or infinite loss is the engine's to find (:meth:`non_finite_message` says what the error tells)."""
        raise NotImplementedError

    def speed_probe(self, model: torch.nn.Module, device: torch.device) -> Callable[[], torch.Tensor] | None:
        """A forward pass of ``model`` (on ``device``) on a batch like a training batch, as a 0-dim tensor: what
        precision ``auto`` times in fp32 and under bf16 autocast, with its backward, before training
        (:func:`flowmatch.engine.devices.time_precisions`). Called only where the device has bf16 units; it
        must not draw from the run's generator or consume its data. None: the engine times a matmul of the
        model's width instead."""
        return None

    def non_finite_message(self, value: float, step: int) -> str:
        """What the error says when step ``step``'s loss is ``value``, NaN or infinite (the engine adds which
        checkpoint the run keeps)."""
        return f"training stopped: the loss is {value} at step {step}; try a smaller lr or grad_clip=1.0"

    def keep(self, folder: Path) -> None:
        """Write what the run folder keeps from its start beside its config (the rows of a source given in Python, say)."""

    def progress_picture(self, flow: Any, folder: Path, step: int) -> None:
        """``--sample-every``: a look at what ``flow`` generates at ``step``, written into ``folder``."""


class Modality:
    """A kind of data: its declarations and what the engine asks of it (module docstring)."""

    #: the config's ``kind`` and checkpoint.json's
    kind: str = ""
    #: how messages name its runs ("a tokens run")
    label: str = ""
    #: the config fields it reads beyond the engine's (:data:`flowmatch.engine.options.ENGINE_FIELDS`)
    options: frozenset[str] = frozenset()
    #: the engine's fields it does not honour, each with the reason given when one is set
    unsupported: Mapping[str, str] = {}
    #: the objectives it trains
    objectives: tuple[str, ...] = ("flow-matching",)
    #: the models it builds by name (``python``: one's own model, given in Python)
    models: tuple[str, ...] = ("python",)
    #: None where ``flowmatch reflow`` / ``distill`` work on its runs, else why they do not
    rectify: str | None = "reflow and distillation train on (source, sample) pairs of continuous rows"
    #: the keyword options of :meth:`write_samples` (beyond -n, --seed, --out), of :meth:`evaluate` and its pictures
    sample_options: frozenset[str] = frozenset()
    eval_options: frozenset[str] = frozenset()
    pictures: tuple[str, ...] = ("samples",)
    picture_options: frozenset[str] = frozenset()
    #: sample file suffixes it writes
    suffixes: tuple[str, ...] = (".npy",)

    # -- training ------------------------------------------------------------------------------
    def check(self, config: Any) -> None:
        """Its own checks of a config, before any work (a source it cannot start from, say)."""

    def prepare(self, config: Any, objects: Objects, context: Context) -> Task:
        raise NotImplementedError

    def load_flow(
        self, meta: dict[str, Any], weights: dict[str, torch.Tensor], config: dict[str, Any], where: Any, *,
        model: torch.nn.Module | None = None, source: Any = None, folder: Path | None = None,
    ) -> Any:  # fmt: skip
        """The flow of checkpoint metadata ``meta`` with ``weights`` (checked: names, shapes, dtypes, finite)."""
        raise NotImplementedError

    def finish(self, result: Any, folder: Path | None, *, evaluate: bool, reference: Any, n_eval: int) -> dict[str, Any]:
        """A finished run's measurements (beside the engine's training figures), with its samples, pictures and
        (``evaluate``) report.json written into ``folder``; the final weights are the engine's to save. The
        memorisation figures of finite data go under ``memorisation``, with a ``warning`` when it copies."""
        raise NotImplementedError

    def summary(self, metrics: dict[str, Any]) -> str:
        """The figures of :meth:`finish` in one line for ``flowmatch train``."""
        return ""

    def report_line(self, report: dict[str, Any]) -> str:
        """The quick evaluation's report in one line for ``flowmatch train`` ('' where :meth:`summary` says it all)."""
        return ""

    # -- a loaded flow --------------------------------------------------------------------------
    def write_samples(self, flow: Any, out: Path, *, n: int, seed: int, options: dict[str, Any]) -> str:
        """n samples (``options``: what the user gave of :attr:`sample_options`) into ``out``; returns what was written."""
        raise NotImplementedError

    def evaluate(self, flow: Any, run_dir: Any, options: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def format_report(self, report: dict[str, Any]) -> str:
        return ""

    def picture(self, flow: Any, what: str, out: Path, options: dict[str, Any]) -> Path:
        raise NotImplementedError


class NonFiniteLoss(FlowmatchError):
    """A NaN or infinite loss at ``step``, that is of the weights after ``step`` updates: the training loop
    keeps the last checkpoint before them and names it."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


def flag(name: str) -> str:
    """A config field or keyword option as the CLI spells it."""
    return "--" + name.replace("_", "-")


def check_applicable(config: Any, modality: Modality, defaults: Any, model_options: Mapping[str, frozenset[str]]) -> None:
    """Refuse, before any work, every option set in ``config`` that ``modality`` would not use: a field other
    than the engine's and the modality's own, an engine field it does not honour, an objective it does not
    train, a model it does not build, an option of another model than the run's (``model_options``: the
    fields each model reads; none of them applies to one's own model, and a warm start's architecture is its
    teacher's). "Set" means other than in ``defaults`` (the config the modality's own defaults give), so the
    modality's defaults never count as set."""
    label = modality.label or f"kind {modality.kind}"
    if config.objective not in modality.objectives:
        raise FlowmatchError(f"objective {config.objective} does not apply to {label} (it trains {', '.join(modality.objectives)})")
    if config.model not in modality.models:
        raise FlowmatchError(
            f"model {config.model} does not apply to {label}: it builds {', '.join(m for m in modality.models if m != 'python')}, "
            "or pass your own model in Python"
        )
    every_model = frozenset().union(*model_options.values())
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value == getattr(defaults, f.name):
            continue
        if f.name in every_model and not config.init_from and f.name not in model_options.get(config.model, frozenset()):
            whose = "your own model (its options are its constructor's)" if config.model == "python" else f"model {config.model}"
            raise FlowmatchError(f"{f.name}={value!r} does not apply to {whose}")
        if f.name in modality.unsupported:
            raise FlowmatchError(f"{f.name}={value!r} does not apply to {label}: {modality.unsupported[f.name]}")
        if f.name not in ENGINE_FIELDS and f.name not in modality.options:
            raise FlowmatchError(f"{f.name}={value!r} does not apply to {label}")


def check_command_options(given: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    """Refuse the options in ``given`` (what the user set) that are not in ``allowed``, naming them and ``what``."""
    extra = [k for k in given if k not in allowed]
    if extra:
        names = ", ".join(f"{k}={_shown(given[k])}" for k in extra)
        raise FlowmatchError(f"{names} {'does' if len(extra) == 1 else 'do'} not apply to {what}")


def _shown(value: Any) -> str:
    """A value as an option's message shows it (a list as its items, comma separated, as the CLI takes it)."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return repr(value)
