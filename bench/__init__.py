"""Benchmarks: run by hand (`make bench`), reported as ratios measured in one run."""
