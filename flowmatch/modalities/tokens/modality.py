"""Token sequences (discrete flow matching) through the engine's seam (:mod:`flowmatch.engine.seam`).

The data are a text (characters are the tokens: a .txt file, the built-in ``pydoc`` corpus, or strings given
in Python) or token ids (a .npy file, or an integer tensor given in Python), one stream cut into a training
part (the first 90%), a validation part and a test part (5% each): contiguous pieces, so held-out text is text
the model never saw. A step trains on windows of ``seq_len`` tokens at random positions of the training part
(:mod:`flowmatch.modalities.mixture`); the network is the transformer (:class:`flowmatch.models.transformer.TokenTransformer`)
or one's own ``model(tokens, t) -> logits``. The run's flow is a :class:`flowmatch.flows.discrete.DiscreteFlow`;
its report (:func:`flowmatch.evaluation.discrete.evaluate_tokens`) gives the likelihood bound in bits per
token beside an n-gram model's, and n-gram statistics of samples beside held-out text's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowmatch.data.tokens import TokenData, load_tokens, tokens_from_python
from flowmatch.discrete.paths import MixturePath
from flowmatch.engine.seam import Context, Modality, Objects
from flowmatch.errors import FlowmatchError
from flowmatch.flows.discrete import DiscreteFlow, build_discrete_flow
from flowmatch.modalities.mixture import VAL_ITEMS, MixtureTask, evaluation_options, keep_report, make_scheduler_of
from flowmatch.modalities.tokens.options import KIND
from flowmatch.storage import atomic_file


def token_data(config: Any, objects: Objects) -> TokenData:
    """The tokens of a run: given in Python, or what its config names; labelled texts with ``conditional``."""
    if objects.data is not None:
        data = tokens_from_python(objects.data)
    elif config.data == "python":
        raise FlowmatchError("this run was trained on tokens given in Python, which its folder does not hold")
    else:
        data = load_tokens(config.data, config.label_column)
    if config.conditional != (data.labels is not None):
        raise FlowmatchError(
            "a class-conditional tokens run needs labelled texts: data={'x': texts, 'labels': classes} or a .csv with label_column"
            if config.conditional
            else "these texts carry labels: train with conditional=True to condition on them, or give the texts alone"
        )
    return data


class TokensTask(MixtureTask):
    def __init__(self, config: Any, objects: Objects, context: Context):
        self.config, self.objects = config, objects
        self.data = data = token_data(config, objects)
        self.path = MixturePath(make_scheduler_of(config), data.vocab.size, config.discrete_source)
        self.conditions = {"y": {"classes": len(data.classes)}} if data.classes else {}
        self.n_train = len(data.train)
        self.finite = True
        self.positions = config.seq_len
        self.target = ""
        if len(data.train) < config.seq_len:
            raise FlowmatchError(f"{data.name}: the training part has {len(data.train)} tokens, fewer than seq_len {config.seq_len}")
        self.setup_validation(context.device)

    def draw(self, n, generator):
        windows, labels = self.data.labelled_windows(n, self.config.seq_len, generator, "train")
        return None, windows, ({} if labels is None else {"y": labels})

    def held_out(self, generator):
        if len(self.data.val) < self.config.seq_len:
            return None
        windows, labels = self.data.labelled_windows(VAL_ITEMS, self.config.seq_len, generator, "val")
        return None, windows, ({} if labels is None else {"y": labels})

    def predict(self, net, x, tokens, t, **condition):
        return None, net(tokens, t, **condition)

    def initial_model(self) -> torch.nn.Module:
        from flowmatch.models.registry import build_model

        config = self.config
        if self.objects.model is not None:
            return self.objects.model
        return build_model(
            "transformer", config.seq_len, vocab_size=self.path.vocab_size, states=self.path.states, width=config.width,
            depth=config.depth, heads=config.heads, num_classes=self.conditions.get("y", {}).get("classes", 0),
        )  # fmt: skip

    def warm_start(self, flow: DiscreteFlow, folder: str) -> torch.nn.Module:
        if flow.length != self.config.seq_len or flow.path.vocab_size != self.path.vocab_size:
            raise FlowmatchError(
                f"init_from '{folder}' has sequences of {flow.length} of {flow.path.vocab_size} tokens; this run's are "
                f"{self.config.seq_len} of {self.path.vocab_size}"
            )
        return flow.model.train()

    def flow(self, model: torch.nn.Module) -> DiscreteFlow:
        given = {"classes": self.data.classes} if self.data.classes else {}
        return DiscreteFlow(
            model,
            self.path,
            length=self.config.seq_len,
            dim=0,
            codec=self.data.vocab,
            config=self.config.to_dict(),
            conditions=self.conditions,
            given=given,
        )

    def progress_picture(self, flow: DiscreteFlow, folder: Path, step: int) -> None:
        classes = len(self.data.classes or [])
        texts = flow.sample(4, seed=0, label=[k % classes for k in range(4)] if classes else None)
        body = texts if isinstance(texts, list) else [" ".join(map(str, row)) for row in texts]
        (folder / f"step-{step:08d}.txt").write_text(format_texts(body))


def format_texts(texts: list[str]) -> str:
    """Generated sequences as one text file, each under a line ``--- sample i ---``."""
    return "".join(f"--- sample {i} ---\n{text}\n" for i, text in enumerate(texts))


class Tokens(Modality):
    kind = KIND
    label = "a tokens run"
    options = frozenset({"seq_len", "heads", "discrete_source", "discrete_loss"})
    unsupported = {
        "source": "a tokens run starts from the mixture path's source (discrete_source: mask or uniform)",
        "target": "the posterior-mean target is a property of continuous paths",
        "condition_columns": "a tokens run conditions on class labels (texts of classes); float covariates of a text are not supported",
        "activation": "the transformer's activations are fixed (GELU)",
        "dropout": "the transformer has no dropout option",
    }
    models = ("transformer", "python")
    rectify = "reflow and distillation train on (source, sample) pairs of continuous rows; a tokens run's jump process has no such pairs"
    sample_options = frozenset({"nfe", "temperature", "corrector", "label", "guidance", "precision"})
    eval_options = frozenset({"quick", "n", "nfe", "temperature", "corrector", "seed", "progress", "pictures"})
    pictures = ()
    picture_options = frozenset()
    suffixes = (".txt", ".npy")

    def prepare(self, config: Any, objects: Objects, context: Context) -> TokensTask:
        return TokensTask(config, objects, context)

    def load_flow(self, meta, weights, config, where, *, model=None, source=None, folder=None) -> DiscreteFlow:
        if source is not None:
            raise FlowmatchError(f"'{folder}' holds a tokens run, whose source is its mixture path's: load it without source=")
        return build_discrete_flow(meta, weights, config, where, model=model)

    def finish(self, result, folder: Path | None, *, evaluate: bool, reference: Any, n_eval: int) -> dict[str, Any]:
        """The quick report (bits per token against the n-gram model, n-gram statistics), the memorisation
        figures (long stretches copied from the training text) and samples.txt."""
        from flowmatch.evaluation.discrete import evaluate_tokens

        if reference is not None:
            raise FlowmatchError("reference= scores points and images; a tokens run is scored against its own held-out text")
        flow, config, data = result.flow, result.config, result.task.data
        metrics: dict[str, Any] = {}
        if evaluate:
            report = evaluate_tokens(flow, data, quick=True, seed=config.seed)
            bits = report["bits_per_token"]
            metrics.update(bits_per_token=bits["value"], ngram_bits_per_token=bits["ngram_model"], ngram_order=bits["ngram_order"])
            if "memorisation" in report:
                metrics["memorisation"] = report["memorisation"]
            metrics["report"] = report
            if folder is not None:
                from flowmatch.storage import write_json

                write_json(folder / "report.json", report)
        if folder is not None:
            texts = flow.sample(8, seed=config.seed)
            body = texts if isinstance(texts, list) else [" ".join(map(str, row)) for row in texts]
            (folder / "samples.txt").write_text(format_texts(body))
        return metrics

    def summary(self, metrics: dict[str, Any]) -> str:
        if "bits_per_token" not in metrics:
            return ""
        return (
            f"bits per token (bound) {metrics['bits_per_token']:.3f} against the {metrics['ngram_order']}-gram model's "
            f"{metrics['ngram_bits_per_token']:.3f}"
        )

    def write_samples(self, flow: DiscreteFlow, out: Path, *, n: int, seed: int, options: dict[str, Any]) -> str:
        nfe: int = options["nfe"] if options.get("nfe") is not None else DiscreteFlow.DEFAULT_NFE
        labels = options.get("label") or [None]
        others = {k: options[k] for k in ("temperature", "corrector", "guidance", "precision") if k in options}
        tokens = torch.cat([flow.generate(n, nfe=nfe, seed=seed, label=label, progress=True, **others)[1] for label in labels])
        n = len(tokens)
        if out.suffix == ".npy":
            with atomic_file(out) as tmp:
                np.save(tmp, tokens.numpy())
        else:
            texts = flow.decode(None, tokens)
            if not isinstance(texts, list):
                raise FlowmatchError("this run's tokens are ids without text: write them to a .npy file")
            with atomic_file(out) as tmp:
                tmp.write_text(format_texts(texts))
        which = f", labels {','.join(map(str, labels))} ({n // len(labels)} each, in that order)" if labels != [None] else ""
        return f"{n} sequences{which}, jump sampler NFE {nfe}"

    def evaluate(self, flow: DiscreteFlow, run_dir: Any, options: dict[str, Any]) -> dict[str, Any]:
        from flowmatch.evaluation.discrete import evaluate_tokens

        return keep_report(run_dir, evaluate_tokens(flow, token_data_of(flow), **evaluation_options(options, ("n", "nfe"))))

    def format_report(self, report: dict[str, Any]) -> str:
        from flowmatch.evaluation.discrete import format_token_report

        return format_token_report(report)

    def picture(self, flow, what, out, options):
        raise FlowmatchError("a tokens run has no picture: its samples are text (samples.txt, flowmatch sample --out FILE.txt)")


def token_data_of(flow: DiscreteFlow) -> TokenData:
    """The data of the run a loaded flow comes from (its config names them)."""
    config = flow.config
    if config.get("data") in (None, "python"):
        raise FlowmatchError("this run was trained on data given in Python, which its folder does not hold")
    return load_tokens(config["data"], config.get("label_column", ""))


MODALITY = Tokens()
