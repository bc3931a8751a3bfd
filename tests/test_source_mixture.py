"""The posterior target for any source that declares its Gaussian mixture (issue 28, item 2): a callable or an
object with a ``gaussian_mixture`` attribute (flowmatch.data.sources), and the refusal, naming why, for one that
declares none when the posterior is asked for."""

import json

import pytest
import torch
from user_objects import blob_source

import flowmatch
from flowmatch.data.sources import declared_mixture
from flowmatch.densities import GaussianMixture
from flowmatch.errors import FlowmatchError

SMALL = dict(steps=40, width=32, depth=2, batch_size=128, batch_warmup=0, progress=False, threads=1, precision="fp32", seed=3)


def _normal(n, generator):
    return torch.randn(n, 2, generator=generator)


def _undeclared(n, generator):
    return torch.randn(n, 2, generator=generator)


_normal.gaussian_mixture = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.ones(1))  # N(0, I), one component


def _weights(result):
    return result.flow.model.state_dict()


def _same(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_callable_that_declares_its_mixture_trains_on_the_posterior_target():
    """A callable drawing N(0, I) as the default source does (the same draws from the run's generator) and
    declaring it: target auto is the posterior, and the run has the bits of the default source's posterior
    run (measured equal), not those of the conditional target's. Left undeclared, the same callable trains on
    the conditional target, as before."""
    declared = flowmatch.train(data="moons", source=_normal, **SMALL)
    assert declared.target == "posterior" and declared.task.source_mixture is not None
    posterior = flowmatch.train(data="moons", target="posterior", **SMALL)
    conditional = flowmatch.train(data="moons", target="conditional", **SMALL)
    assert _same(_weights(declared), _weights(posterior)) and not _same(_weights(declared), _weights(conditional))
    undeclared = flowmatch.train(data="moons", source=_undeclared, **SMALL)
    assert undeclared.target == "conditional" and _same(_weights(undeclared), _weights(conditional))


def test_a_declared_mixture_source_is_saved_with_the_run(tmp_path):
    result = flowmatch.train(data="moons", source=blob_source, run_dir=tmp_path / "run", **SMALL)
    result.flow.save_checkpoint(tmp_path / "run")
    assert result.target == "posterior"
    mixture = result.task.source_mixture
    assert torch.equal(mixture.means, torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64))
    flow = flowmatch.load(tmp_path / "run")  # the sampler is saved by reference, its declaration with it
    assert flow.draw_source(4000, torch.Generator().manual_seed(0))[:, 0].abs().mean() == pytest.approx(2.0, abs=0.05)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["target"] == "auto"


def test_an_object_with_sample_and_a_gaussian_mixture_property_gets_it_too():
    class Blobs:
        dim = 2

        def sample(self, n, generator):
            return blob_source(n, generator)

        @property
        def gaussian_mixture(self):
            return blob_source.gaussian_mixture

    result = flowmatch.train(data="moons", source=Blobs(), **SMALL)
    assert result.target == "posterior" and len(result.task.source_mixture.weights) == 2


def test_a_source_that_declares_nothing_is_refused_the_posterior_naming_why(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(
        FlowmatchError, match=r"target posterior needs the source's density, and the source given in Python declares none.*gaussian_mixture"
    ):
        flowmatch.fit(out=run, data="moons", source=_undeclared, target="posterior", **SMALL)
    assert not run.exists()  # before any work
    with pytest.raises(FlowmatchError, match="declares none"):
        flowmatch.train(data="moons", source=torch.randn(100, 2), target="posterior", **SMALL)  # rows declare nothing
    assert flowmatch.train(data="moons", source=torch.randn(100, 2), **SMALL).target == "conditional"
    # a named source that is no mixture is refused when the config is read, as before, and the message names the attribute
    with pytest.raises(FlowmatchError, match="not 'moons' .*gaussian_mixture attribute"):
        flowmatch.train(data="two-gaussians", source="moons", target="posterior", **SMALL)


@pytest.mark.parametrize(
    "mixture, words",
    [
        ("two blobs", "must be a flowmatch.densities.GaussianMixture"),
        (GaussianMixture(torch.ones(1), torch.zeros(1, 3), torch.ones(1)), r"means \(K, 2\)"),
        (GaussianMixture(torch.tensor([0.5, 0.6]), torch.zeros(2, 2), torch.ones(2)), "sum to 1"),
        (GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.zeros(1)), "positive stds"),
        (GaussianMixture(torch.ones(1), torch.full((1, 2), float("nan")), torch.ones(1)), "finite values"),
    ],
)
def test_a_wrong_declaration_is_refused(mixture, words):
    def source(n, generator):
        return torch.randn(n, 2, generator=generator)

    source.gaussian_mixture = mixture
    with pytest.raises(FlowmatchError, match=words):
        declared_mixture(source, 2)
    with pytest.raises(FlowmatchError, match=words):
        flowmatch.train(data="moons", source=source, **SMALL)
