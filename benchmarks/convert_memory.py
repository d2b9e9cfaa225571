"""Streaming proof: conversion memory does not grow with checkpoint size.

Writes synthetic BFL-layout Flux bf16 checkpoints (a small one and a large one with the same width),
then converts each in a fresh subprocess and reports peak RSS (`ru_maxrss`). The large one's peak
minus the small one's should be a small fraction of the file size: conversion holds one block at a
time. Loading (`load_model`) must hold the whole model, so its growth is ≈ 1× the file, not more.

    python -m jaxdiff.benchmarks.convert_memory [--hidden 1024 --depth 12 --depth-single 24] [--load]
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MIB = 1 << 20
BF16_BYTES = 2


def bfl_shapes(hidden: int, depth: int, depth_single: int, *, in_channels: int = 64,
               context: int = 256, pooled: int = 64) -> dict[str, tuple[int, ...]]:
    """Key → shape of a BFL Flux transformer (guidance-distilled, head dim 128)."""
    h = hidden
    shapes = {"img_in": (h, in_channels), "txt_in": (h, context), "time_in.in_layer": (h, 256),
              "time_in.out_layer": (h, h), "vector_in.in_layer": (h, pooled),
              "vector_in.out_layer": (h, h), "guidance_in.in_layer": (h, 256),
              "guidance_in.out_layer": (h, h), "final_layer.linear": (in_channels, h),
              "final_layer.adaLN_modulation.1": (2 * h, h)}
    for i in range(depth):
        for s in ("img", "txt"):
            shapes.update({f"double_blocks.{i}.{s}_mod.lin": (6 * h, h),
                           f"double_blocks.{i}.{s}_attn.qkv": (3 * h, h),
                           f"double_blocks.{i}.{s}_attn.proj": (h, h),
                           f"double_blocks.{i}.{s}_mlp.0": (4 * h, h),
                           f"double_blocks.{i}.{s}_mlp.2": (h, 4 * h)})
    for i in range(depth_single):
        shapes.update({f"single_blocks.{i}.linear1": (7 * h, h), f"single_blocks.{i}.linear2": (h, 5 * h),
                       f"single_blocks.{i}.modulation.lin": (3 * h, h)})
    out = {}
    for module, shape in shapes.items():
        out[f"{module}.weight"], out[f"{module}.bias"] = shape, shape[:1]
    norms = [f"double_blocks.{i}.{s}_attn.norm" for i in range(depth) for s in ("img", "txt")]
    norms += [f"single_blocks.{i}.norm" for i in range(depth_single)]
    for norm in norms:
        out[f"{norm}.query_norm.scale"] = out[f"{norm}.key_norm.scale"] = (128,)
    return out


def write_synthetic_bfl(path: Path, hidden: int, depth: int, depth_single: int, seed: int = 0, *,
                        sparse: bool = False, **widths) -> int:
    """Stream a bf16 safetensors file tensor by tensor (never the whole model in memory); returns bytes.

    `sparse=True` writes only the header and extends the file with a hole (real-size shapes for
    header-only checks, no disk or time spent); `widths` go to `bfl_shapes`.
    """
    import ml_dtypes

    shapes = bfl_shapes(hidden, depth, depth_single, **widths)
    header, offset = {}, 0
    for key, shape in shapes.items():
        n = int(np.prod(shape)) * BF16_BYTES
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        if sparse:
            f.truncate(8 + len(raw) + offset)
            return path.stat().st_size
        for key, shape in shapes.items():
            f.write((0.02 * rng.standard_normal(shape, np.float32)).astype(ml_dtypes.bfloat16).tobytes())
    return path.stat().st_size


CHILD = """
import resource, sys, time
from jaxdiff.convert import convert, load_model
t = time.perf_counter()
if sys.argv[1] == "convert":
    convert(sys.argv[2], sys.argv[3])
else:
    model = load_model(sys.argv[2])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, time.perf_counter() - t)
"""


def peak_rss(mode: str, src: Path, out: Path) -> tuple[int, float]:
    """(peak RSS bytes, seconds) of converting/loading `src` in a fresh Python process."""
    res = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(out)], check=True,
                         capture_output=True, text=True)
    rss, seconds = res.stdout.split()[-2:]
    return int(rss), float(seconds)


def measure(workdir: Path, hidden: int, depth: int, depth_single: int, modes=("convert",)) -> dict:
    """Peak RSS of a 1+1-block baseline and of the full synthetic checkpoint, per mode."""
    small, large = workdir / "small.safetensors", workdir / "large.safetensors"
    result = {"file_bytes": write_synthetic_bfl(large, hidden, depth, depth_single),
              "small_file_bytes": write_synthetic_bfl(small, hidden, 1, 1)}
    for mode in modes:
        base, _ = peak_rss(mode, small, workdir / f"{mode}-small")
        peak, seconds = peak_rss(mode, large, workdir / f"{mode}-large")
        result[mode] = {"baseline_rss": base, "peak_rss": peak, "growth": peak - base, "seconds": seconds}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--depth-single", type=int, default=24)
    p.add_argument("--load", action="store_true", help="also measure load_model (holds the whole model)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        start = time.perf_counter()
        r = measure(Path(tmp), args.hidden, args.depth, args.depth_single,
                    ("convert", "load") if args.load else ("convert",))
    size = r["file_bytes"]
    print(f"synthetic BFL Flux bf16: hidden {args.hidden}, {args.depth} double + {args.depth_single} "
          f"single blocks, {size / MIB:.0f} MiB (baseline file {r['small_file_bytes'] / MIB:.0f} MiB)")
    print(f"{'mode':8} {'baseline RSS':>13} {'peak RSS':>10} {'growth':>8} {'growth/file':>12} {'time':>7}")
    for mode in ("convert", "load"):
        if mode in r:
            m = r[mode]
            print(f"{mode:8} {m['baseline_rss'] / MIB:>10.0f} MiB {m['peak_rss'] / MIB:>6.0f} MiB "
                  f"{m['growth'] / MIB:>4.0f} MiB {m['growth'] / size:>11.1%} {m['seconds']:>6.1f}s")
    print(f"total {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
