"""Benchmark scripts with printed tables, not tests (`python -m jaxdiff.benchmarks.<name> --help`).

`flux_bench` times our Flux transformer against diffusers (torch eager, torchax-jit) on the current
device; `convert_memory` shows conversion memory does not grow with checkpoint size; `common` holds
shared timing helpers. May import anything, torch included; nothing imports benchmarks/.
"""
