"""The package's structure in figures: training loops, import cycles, underscore names imported across
folders, the longest functions and the CLI's length.

    python -m bench.structure

Import cycles come from grimp (import-linter's graph): each strongly connected set of modules of more
than one, counting every import (those inside functions too). A training loop is a function whose body
calls an optimiser step in a ``for`` or ``while`` loop.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flowmatch"


def modules() -> dict[str, ast.Module]:
    out = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(file.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(file.read_text(), str(file))
    return out


def folder_of(module: str, trees: dict[str, ast.Module]) -> str:
    """The package (folder) a module lives in: itself for a package's __init__."""
    is_package = (PACKAGE.parent / module.replace(".", "/") / "__init__.py").is_file()
    return module if is_package else module.rpartition(".")[0]


def underscore_imports(trees: dict[str, ast.Module]) -> list[str]:
    """``from flowmatch.x import _name`` where x is in another folder than the importing module."""
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flowmatch"):
                for alias in node.names:
                    if alias.name.startswith("_") and folder_of(node.module, trees) != folder_of(name, trees):
                        found.append(f"{name}: {node.module}.{alias.name}")
    return found


def longest_functions(trees: dict[str, ast.Module], k: int = 10) -> list[tuple[int, str]]:
    sizes = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                sizes.append((node.end_lineno - node.lineno + 1, f"{name}.{node.name}"))  # type: ignore[operator]
    return sorted(sizes, reverse=True)[:k]


def training_loops(trees: dict[str, ast.Module]) -> list[str]:
    """Functions with a loop whose body steps an optimiser (``optimizer.step()`` or a helper that does)."""
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for loop in ast.walk(node):
                if isinstance(loop, (ast.For, ast.While)):
                    calls = [c for c in ast.walk(loop) if isinstance(c, ast.Call)]
                    names = {ast.unparse(c.func) for c in calls}
                    if any(n.endswith("optimizer.step") or n.endswith("descend") for n in names):
                        found.append(f"{name}.{node.name}")
                        break
    return found


def cycles() -> list[set[str]]:
    import grimp

    graph = grimp.build_graph("flowmatch", include_external_packages=False)
    names = sorted(graph.modules)
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.add(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(part)

    for v in names:
        if v not in index:
            visit(v)
    return out


def main() -> None:
    trees = modules()
    loops = training_loops(trees)
    print(f"training loops: {len(loops)}: {', '.join(loops)}")
    found = cycles()
    print(f"import cycles: {len(found)} ({', '.join(str(len(c)) + ' modules' for c in found) or 'none'})")
    for part in found:
        print("   ", ", ".join(sorted(part)))
    under = underscore_imports(trees)
    print(f"underscore names imported across folders: {len(under)}")
    for line in under:
        print("   ", line)
    print("ten longest functions (lines):")
    for size, name in longest_functions(trees):
        print(f"    {size:4d}  {name}")
    cli = PACKAGE / "cli.py"
    cli_lines = (
        len(cli.read_text().splitlines())
        if cli.is_file()
        else sum(len(f.read_text().splitlines()) for f in (PACKAGE / "cli").rglob("*.py"))
    )
    print(f"cli: {cli_lines} lines")


if __name__ == "__main__":
    main()
