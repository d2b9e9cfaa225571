"""Streaming proof: converting a ~1.3 GB checkpoint grows peak RSS by a small fraction of its size.

Each conversion runs in a fresh subprocess; peak RSS (`ru_maxrss`) of the large checkpoint minus that
of a 1+1-block checkpoint of the same width must stay far below the file size. Full table:
`python -m jaxdiff.benchmarks.convert_memory --load`.
"""

from __future__ import annotations

import shutil

from jaxdiff.benchmarks.convert_memory import MIB, measure

HIDDEN, DEPTH, DEPTH_SINGLE = 1024, 10, 20  # ≈ 1.3 GB of bf16; the largest unit (a double block) ≈ 75 MB
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
