"""Benchmark scripts with printed tables, not tests (`python -m jaxdiff.benchmarks.<name> --help`).

`flux_bench` / `wan_bench` time our transformers (and the Wan VAE decode) against diffusers (torch
eager, torchax-jit) on the current device; `convert_memory` shows conversion memory does not grow
with checkpoint size; `common` holds the shared timing, contender and agreement helpers. May import
anything, torch included; library code never imports benchmarks/ (tests may).
"""
