"""Benchmark scripts with printed tables, not tests (`python -m jaxdiff.benchmarks.<name> --help`).

`run` is `jaxdiff bench`: one denoising step of a released model shape (pipelines/presets.py) with
random weights — compile cold/warm, step time, images or frames/s, TFLOP/s and MFU (`flops` counts
the FLOPs), peak memory; JSON and a table. `flux_bench` / `wan_bench` time our transformers (and the
Wan VAE decode) against diffusers (torch eager, torchax-jit) on the current device, with outputs
cross-checked; `convert_memory` shows conversion memory does not grow with checkpoint size; `common`
holds the shared device info, timing, contender, agreement and JSON helpers. May import anything,
torch included (lazily, only where a torch contender runs); library code never imports benchmarks/
(tests may).
"""
