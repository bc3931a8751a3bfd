"""Benchmarks: `make bench` (python -m bench) runs them and writes tables to bench/results/."""
