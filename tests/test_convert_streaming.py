"""Streaming proof: converting a ~1.3 GB Flux checkpoint or a ~0.8 GB encoder-shaped directory grows
peak RSS by a small fraction of its size.

Each conversion runs in a fresh subprocess; peak RSS (`ru_maxrss`) of the large checkpoint minus that
of a 1+1-block (Flux) or 1-block (encoder) checkpoint of the same widths must stay far below the file
size. The encoder's blocks sit at `encoder.block.N` (T5's names; the toy kind of toy_encoder.py,
registered in the subprocess), so it holds only if units split at nested list indices. Full tables:
`python -m jaxdiff.benchmarks.convert_memory --load` and `… --encoder --load`.
"""

from __future__ import annotations

import shutil

from jaxdiff.benchmarks.convert_memory import MIB, measure, measure_encoder

HIDDEN, DEPTH, DEPTH_SINGLE = 1024, 10, 20  # ≈ 1.3 GB of bf16; the largest unit (a double block) ≈ 75 MB
D_MODEL, D_FF, ENCODER_LAYERS = 1024, 6144, 24  # ≈ 0.8 GB of bf16; one block ≈ 34 MB
MAX_GROWTH_FRACTION = 0.25


def test_conversion_peak_rss_does_not_scale_with_checkpoint_size(tmp_path):
    try:
        r = measure(tmp_path, HIDDEN, DEPTH, DEPTH_SINGLE)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # 2.7 GB of files; pytest keeps old tmp dirs
    size, growth = r["file_bytes"], r["convert"]["growth"]
    print(f"converting {size / MIB:.0f} MiB: peak RSS {r['convert']['peak_rss'] / MIB:.0f} MiB, "
          f"+{growth / MIB:.0f} MiB over the 1+1-block baseline")
    assert size > 1200 * MIB
    assert growth < MAX_GROWTH_FRACTION * size, (
        f"peak RSS grew {growth / MIB:.0f} MiB over the 1+1-block baseline converting a "
        f"{size / MIB:.0f} MiB checkpoint")


def test_encoder_conversion_peak_rss_does_not_scale_with_depth(tmp_path):
    try:
        r = measure_encoder(tmp_path, D_MODEL, D_FF, ENCODER_LAYERS)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # 1.7 GB of files
    size, growth = r["file_bytes"], r["convert"]["growth"]
    print(f"converting a {ENCODER_LAYERS}-block encoder of {size / MIB:.0f} MiB: peak RSS "
          f"{r['convert']['peak_rss'] / MIB:.0f} MiB, +{growth / MIB:.0f} MiB over the 1-block baseline")
    assert size > 750 * MIB
    assert growth < MAX_GROWTH_FRACTION * size, (
        f"peak RSS grew {growth / MIB:.0f} MiB over the 1-block baseline converting a "
        f"{size / MIB:.0f} MiB encoder (blocks at encoder.block.N)")
