"""Mixed-type tables through the engine's seam (:mod:`flowmatch.engine.seam`): numeric columns continuous,
categorical columns discrete, one network and one time.

The data are a CSV file (:func:`flowmatch.data.tables.read_table`: numbers, integers, categories, empty
cells) or a pandas DataFrame given in Python (:func:`flowmatch.data.tables.table_from_frame`), shuffled with
the run's seed and split into 20% test rows, then ``val_fraction`` of the rest for validation
(:func:`flowmatch.data.tables.split_table`). The codec (:class:`flowmatch.data.tables.TableCodec`) turns rows
into standardised numbers and tokens (a missing category is a category of its own; a missing number a mask).
A step (:mod:`flowmatch.modalities.mixture`) trains the mixed MLP (:class:`flowmatch.models.mixed.MixedMLP`,
or one's own ``model(x, tokens, t) -> (velocity, logits)``) from the masked source. The run's flow is a
:class:`flowmatch.flows.discrete.DiscreteFlow` whose samples are DataFrames; its report
(:func:`flowmatch.evaluation.tables.table_report`) scores columns, pairs, machine-learning efficiency and
memorisation against the test split, each beside the test split's own value.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from flowmatch.data.tables import TableData, load_table_data, split_table, table_from_frame
from flowmatch.discrete.paths import MixturePath
from flowmatch.engine.seam import Context, Modality, Objects
from flowmatch.errors import FlowmatchError
from flowmatch.flows.discrete import DiscreteFlow, build_discrete_flow
from flowmatch.modalities.mixture import VAL_ITEMS, MixtureTask, evaluation_options, keep_report, make_scheduler_of
from flowmatch.modalities.tables.options import KIND


def table_data(config: Any, objects: Objects) -> TableData:
    """The table of a run: a DataFrame given in Python, or the CSV file its config names, split."""
    columns = {"label_column": config.label_column, "condition_columns": config.condition_columns}
    if config.conditional != bool(config.label_column):
        raise FlowmatchError(
            "a table run conditions on class labels with conditional=True and label_column=NAME together (the label column "
            "is then a condition, not generated)" if config.conditional else
            f"label_column={config.label_column!r} names the class column a table run conditions on: pass conditional=True, "
            "or leave it out to generate that column with the rest"
        )  # fmt: skip
    if objects.data is not None:
        frame = table_from_frame(objects.data, missing=config.missing, name="data from Python")
        return split_table("data from Python", frame, seed=config.seed, val_fraction=config.val_fraction, **columns)
    if config.data == "python":
        raise FlowmatchError("this run was trained on a table given in Python, which its folder does not hold")
    if not config.data.lower().endswith(".csv"):
        raise FlowmatchError(f"kind table reads a .csv file or a pandas DataFrame, got '{config.data}'")
    return load_table_data(config.data, missing=config.missing, seed=config.seed, val_fraction=config.val_fraction, **columns)


class TableTask(MixtureTask):
    def __init__(self, config: Any, objects: Objects, context: Context):
        self.config, self.objects = config, objects
        self.data = data = table_data(config, objects)
        sizes = [int(v) for v in data.codec.vocab_sizes]
        if not sizes:
            raise FlowmatchError(f"{data.name}: the table has no categorical column; train it as continuous rows (kind continuous)")
        if config.discrete_source != "mask":
            raise FlowmatchError("a table's columns have different categories: train it with the masked source (discrete_source='mask')")
        self.sizes = sizes
        self.conditions = data.model_conditions
        self.path = MixturePath(make_scheduler_of(config), max(max(sizes), 2), "mask")
        self.n_train = len(data.train)
        self.finite = True
        self.target = ""
        if context.min_test_rows and len(data.test) < 4:
            raise FlowmatchError(f"{data.name}: the test split holds {len(data.test)} rows; the measurements need at least 4")
        self.setup_validation(context.device)

    def draw(self, n, generator):
        return self.data.batch(n, generator)

    def held_out(self, generator):
        if self.data.val is None:
            return None
        x, tokens = self.data.encoded("val")
        condition = {k: v[:VAL_ITEMS] for k, v in self.data.conditions.get("val", {}).items()}
        return x[:VAL_ITEMS], tokens[:VAL_ITEMS], condition

    def predict(self, net, x, tokens, t, **condition):
        if x is None:  # a table of categorical columns only: no continuous features
            x = torch.zeros(len(tokens), 0, device=tokens.device)
        return net(x, tokens, t, **condition)

    def initial_model(self) -> torch.nn.Module:
        from flowmatch.models.registry import build_model

        config = self.config
        if self.objects.model is not None:
            return self.objects.model
        return build_model(
            "mixed-mlp", self.data.codec.dim, vocab_sizes=self.sizes, width=config.width, depth=config.depth,
            activation=config.activation, dropout=config.dropout, num_classes=self.conditions.get("y", {}).get("classes", 0),
            condition_dim=self.conditions.get("c", {}).get("dim", 0),
        )  # fmt: skip

    def warm_start(self, flow: DiscreteFlow, folder: str) -> torch.nn.Module:
        if flow.codec.to_dict() != self.data.codec.to_dict():
            raise FlowmatchError(f"init_from '{folder}' is a table run of other columns than this run's")
        return flow.model.train()

    def flow(self, model: torch.nn.Module) -> DiscreteFlow:
        return DiscreteFlow(
            model,
            self.path,
            length=len(self.sizes),
            dim=self.data.codec.dim,
            codec=self.data.codec,
            config=self.config.to_dict(),
            conditions=self.conditions,
            given=self.data.given,
        )

    def progress_picture(self, flow: DiscreteFlow, folder: Path, step: int) -> None:
        from flowmatch.plots.tables import plot_table_marginals

        frame = flow.sample(len(self.data.test), seed=0, **rows_conditions(self.data, "test"))
        plot_table_marginals(frame, self.data.test, folder / f"step-{step:08d}.png", title=f"step {step}")


class Tables(Modality):
    kind = KIND
    label = "a table run"
    options = frozenset({"missing", "discrete_source", "discrete_loss"})
    unsupported = {
        "source": "a table run starts from N(0, I) for its numbers and the mask for its categories",
        "target": "the posterior-mean target is a property of continuous paths",
    }
    models = ("mixed-mlp", "python")
    rectify = "reflow and distillation train on (source, sample) pairs of continuous rows; a table's categories have no such pairs"
    sample_options = frozenset({"nfe", "temperature", "corrector", "label", "condition", "guidance", "precision"})
    eval_options = frozenset({"quick", "nfe", "temperature", "corrector", "seed", "target", "progress", "pictures"})
    pictures = ("samples",)
    picture_options = frozenset({"n", "seed", "progress"})
    suffixes = (".csv",)

    def prepare(self, config: Any, objects: Objects, context: Context) -> TableTask:
        return TableTask(config, objects, context)

    def load_flow(self, meta, weights, config, where, *, model=None, source=None, folder=None) -> DiscreteFlow:
        if source is not None:
            raise FlowmatchError(f"'{folder}' holds a table run, whose source is its mixture path's: load it without source=")
        return build_discrete_flow(meta, weights, config, where, model=model)

    def finish(self, result, folder: Path | None, *, evaluate: bool, reference: Any, n_eval: int) -> dict[str, Any]:
        """The quick report (columns, pairs, ML efficiency, memorisation against the test split), samples.csv
        and samples.png (each column's distribution beside the test split's)."""
        from flowmatch.evaluation.discrete import evaluate_table

        if reference is not None:
            raise FlowmatchError("reference= scores points and images; a table run is scored against its own test split")
        flow, config, data = result.flow, result.config, result.task.data
        metrics: dict[str, Any] = {}
        if evaluate:
            report = evaluate_table(flow, data, quick=True, seed=config.seed)
            marginals = report["marginals"]
            metrics.update(mean_w1=marginals["mean_w1"], mean_tv=marginals["mean_tv"])
            metrics["memorisation"] = report["memorisation"]
            metrics["report"] = report
            if folder is not None:
                from flowmatch.storage import write_json

                write_json(folder / "report.json", report)
        if folder is not None:
            write_samples_files(flow, data, folder, seed=config.seed)
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        if "mean_w1" not in metrics:
            return ""
        w1, tv = metrics["mean_w1"], metrics["mean_tv"]
        return f"mean W1 {w1['value']:.3f} (test split {w1['reference']:.3f}), mean TV {tv['value']:.3f} ({tv['reference']:.3f})"

    def write_samples(self, flow: DiscreteFlow, out: Path, *, n: int, seed: int, options: dict[str, Any]) -> str:
        from flowmatch.data.tables import write_table

        nfe: int = options["nfe"] if options.get("nfe") is not None else DiscreteFlow.DEFAULT_NFE
        labels, rows = options.get("label") or [None], list(options.get("condition") or [None])
        others = {k: options[k] for k in ("temperature", "corrector", "guidance", "precision") if k in options}
        frames = [
            flow.sample(n, nfe=nfe, seed=seed, label=label, condition=row, progress=True, **others) for label in labels for row in rows
        ]
        import pandas as pd

        write_table(pd.concat(frames, ignore_index=True), out)
        which = f", labels {','.join(map(str, labels))} ({n} each, in that order)" if labels != [None] else ""
        which += f", {len(rows)} condition rows ({n} each, in that order)" if rows != [None] else ""
        return f"{n * len(labels) * len(rows)} rows{which}, jump sampler NFE {nfe}"

    def evaluate(self, flow: DiscreteFlow, run_dir: Any, options: dict[str, Any]) -> dict[str, Any]:
        from flowmatch.evaluation.discrete import evaluate_table

        return keep_report(run_dir, evaluate_table(flow, table_data_of(flow), **evaluation_options(options, ("nfe",))))

    def format_report(self, report: dict[str, Any]) -> str:
        from flowmatch.evaluation.discrete import format_table_run_report

        return format_table_run_report(report)

    def picture(self, flow: DiscreteFlow, what: str, out: Path, options: dict[str, Any]) -> Path:
        from flowmatch.plots.tables import plot_table_marginals

        n = options.get("n", 2000)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise FlowmatchError(f"n must be a positive integer, got {n!r}")
        data = table_data_of(flow)
        plot_table_marginals(
            flow.sample(min(n, 20_000), seed=options.get("seed", 0)), data.test, out,
            title=f"{flow.config['data']}: samples against the test split",
        )  # fmt: skip
        return out


def table_data_of(flow: DiscreteFlow) -> TableData:
    """The data of the run a loaded flow comes from (its config names them)."""
    config = flow.config
    if config.get("data") in (None, "python"):
        raise FlowmatchError("this run was trained on data given in Python, which its folder does not hold")
    defaults = {"missing": "model", "val_fraction": 0.1, "label_column": "", "condition_columns": "", "conditional": False}
    return table_data(SimpleNamespace(**{**defaults, **config}), Objects())


def write_samples_files(flow: DiscreteFlow, data: TableData, folder: Path, *, seed: int = 0) -> Path:
    """samples.csv (as many rows as the test split, drawn under its rows' conditions where the table has them)
    and samples.png (each column's distribution beside the test split's)."""
    from flowmatch.data.tables import write_table
    from flowmatch.plots.tables import plot_table_marginals

    frame = flow.sample(len(data.test), seed=seed, **rows_conditions(data, "test"))
    write_table(frame, folder / "samples.csv")
    name = "data from Python" if flow.config.get("data") == "python" else Path(str(flow.config.get("data"))).name
    plot_table_marginals(frame, data.test, folder / "samples.png", title=f"{name}: samples against the test split")
    return folder / "samples.csv"


def rows_conditions(data: TableData, split: str) -> dict[str, torch.Tensor]:
    """The conditions of a split's rows as sampling options (``label``, ``condition``): samples of a conditional
    table run drawn under them compare with that split's rows."""
    rows = data.conditions.get(split, {})
    return {name: rows[key] for name, key in (("label", "y"), ("condition", "c")) if key in rows}


MODALITY = Tables()
