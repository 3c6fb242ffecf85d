"""Benchmarks of the watcher, each figure measured beside its baseline in the same run.

Run ``python -m benchmarks`` (full, writes benchmarks/results.json, RESULTS.md and
policy.png) or ``python -m benchmarks --quick --output DIR`` (small sizes, seconds).
"""
