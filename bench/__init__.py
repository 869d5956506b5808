"""Benchmark harness: datasets, models, the timed training run, grids and the `safbench` command."""
