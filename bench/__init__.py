"""Benchmarks: `make bench` (python -m bench) runs them and writes tables to bench/results/."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(stem: str, result: dict, table: str) -> None:
    """``bench/results/STEM.json`` (the figures) and ``STEM.md`` (the Markdown table), and the table printed."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(table)
    print(table)
