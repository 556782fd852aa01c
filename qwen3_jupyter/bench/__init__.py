"""Benchmarks: `python -m qwen3_jupyter.bench <name>`; each prints ratios measured in one run."""
