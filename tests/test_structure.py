"""The package's structure holds what the layers promise beyond import-linter's contracts (``make test`` runs
``lint-imports``): one training loop, and no underscore name imported from another folder (a folder's private
names stay inside it; what crosses is a public seam)."""

from bench.structure import cycles, modules, training_loops, underscore_imports


def test_there_is_one_training_loop():
    assert training_loops(modules()) == ["flowmatch.engine.loop.train"]


def test_no_underscore_name_crosses_a_folder():
    assert underscore_imports(modules()) == []


def test_no_module_imports_itself_through_others():
    assert cycles() == []
