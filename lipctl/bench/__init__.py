"""Benchmarks: side-by-side comparisons in one run, written to results/."""
