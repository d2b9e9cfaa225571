"""Streaming proof: conversion memory does not grow with checkpoint size.

Writes synthetic bf16 checkpoints (a small one and a large one with the same widths), then converts
each in a fresh subprocess and reports peak RSS (`ru_maxrss`). The large one's peak minus the small
one's should be a small fraction of the file size: conversion holds one unit (block) at a time.
Loading (`load_model`) must hold the whole model, so its growth is ≈ 1× the file, not more.

Two shapes: a BFL-layout Flux transformer (single file; blocks at `double_blocks.N`), and with
`--encoder` a T5-encoder-shaped transformers directory (config.json + model.safetensors; blocks
nested at `encoder.block.N`, T5EncoderModel's key names). Until a T5 port is registered, the encoder
is the test suite's toy kind (`tests/toy_encoder.py`, registered inside each subprocess), so that case
runs from a source checkout.

    python -m jaxdiff.benchmarks.convert_memory [--hidden 1024 --depth 12 --depth-single 24] [--load]
    python -m jaxdiff.benchmarks.convert_memory --encoder [--d-model 1024 --d-ff 6144 --layers 24]
"""

from __future__ import annotations

import argparse
import json
import os
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


def t5_encoder_shapes(d_model: int, d_ff: int, num_layers: int, *, d_kv: int = 64,
                      num_heads: int | None = None, vocab_size: int = 8192,
                      buckets: int = 32) -> dict[str, tuple[int, ...]]:
    """Key → shape of a transformers `T5EncoderModel` (relu feed-forward), in its state-dict order;
    heads default to d_model // d_kv. `encoder.embed_tokens.weight` (tied to `shared`) is not
    stored, as `save_pretrained` leaves it out."""
    heads = num_heads or d_model // d_kv
    inner = heads * d_kv
    shapes: dict[str, tuple[int, ...]] = {"shared.weight": (vocab_size, d_model)}
    for i in range(num_layers):
        block = f"encoder.block.{i}.layer"
        shapes.update({f"{block}.0.SelfAttention.q.weight": (inner, d_model),
                       f"{block}.0.SelfAttention.k.weight": (inner, d_model),
                       f"{block}.0.SelfAttention.v.weight": (inner, d_model),
                       f"{block}.0.SelfAttention.o.weight": (d_model, inner)})
        if i == 0:
            shapes[f"{block}.0.SelfAttention.relative_attention_bias.weight"] = (buckets, heads)
        shapes.update({f"{block}.0.layer_norm.weight": (d_model,),
                       f"{block}.1.DenseReluDense.wi.weight": (d_ff, d_model),
                       f"{block}.1.DenseReluDense.wo.weight": (d_model, d_ff),
                       f"{block}.1.layer_norm.weight": (d_model,)})
    shapes["encoder.final_layer_norm.weight"] = (d_model,)
    return shapes


def write_bf16_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], seed: int = 0, *,
                           sparse: bool = False) -> int:
    """Stream a bf16 safetensors file of `shapes` (N(0, 0.02²) values) tensor by tensor, never the
    whole model in memory; returns its bytes. `sparse=True` writes only the header and extends the
    file with a hole (real-size shapes for header-only checks, no disk or time spent)."""
    import ml_dtypes

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


def write_synthetic_bfl(path: Path, hidden: int, depth: int, depth_single: int, seed: int = 0, *,
                        sparse: bool = False, **widths) -> int:
    """A synthetic BFL Flux bf16 single file (see `write_bf16_safetensors`); `widths` go to
    `bfl_shapes`. Returns its bytes."""
    return write_bf16_safetensors(path, bfl_shapes(hidden, depth, depth_single, **widths), seed,
                                  sparse=sparse)


TOY_ENCODER = "toy_encoder:TOY_ENCODER"  # the encoder kind registered in the subprocesses
TOY_ENCODER_PATH = (str(Path(__file__).resolve().parents[1] / "tests"),)  # where it imports from
TOY_ENCODER_ARCHITECTURE = "ToyEncoderModel"


def write_synthetic_encoder(directory: Path, d_model: int, d_ff: int, num_layers: int, seed: int = 0,
                            *, architecture: str = TOY_ENCODER_ARCHITECTURE, d_kv: int = 64,
                            vocab_size: int = 8192, buckets: int = 32) -> int:
    """A synthetic transformers-layout T5 encoder dir (config.json naming `architecture`, bf16
    `model.safetensors`); returns the weight file's bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"architectures": [architecture], "model_type": "t5", "vocab_size": vocab_size,
              "d_model": d_model, "d_kv": d_kv, "num_heads": d_model // d_kv, "d_ff": d_ff,
              "num_layers": num_layers, "relative_attention_num_buckets": buckets,
              "feed_forward_proj": "relu", "torch_dtype": "bfloat16"}
    (directory / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    shapes = t5_encoder_shapes(d_model, d_ff, num_layers, d_kv=d_kv, vocab_size=vocab_size,
                               buckets=buckets)
    return write_bf16_safetensors(directory / "model.safetensors", shapes, seed)


CHILD = """
import resource, sys, time
from jaxdiff import families
from jaxdiff.convert import convert, load_model
for ref in sys.argv[4:]:  # model kinds to register first (import strings)
    families.register(families.resolve(ref))
t = time.perf_counter()
if sys.argv[1] == "convert":
    convert(sys.argv[2], sys.argv[3])
else:
    model = load_model(sys.argv[2])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, time.perf_counter() - t)
"""


def peak_rss(mode: str, src: Path, out: Path, register: tuple[str, ...] = (),
             path: tuple[str, ...] = ()) -> tuple[int, float]:
    """(peak RSS bytes, seconds) of converting/loading `src` in a fresh Python process, after
    registering the model kinds `register` names (import strings, importable from `path` entries)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*path, *filter(None, [env.get("PYTHONPATH")])])
    res = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(out), *register],
                         capture_output=True, text=True, env=env)
    if res.returncode:
        raise RuntimeError(f"{mode} {src} failed in the measuring subprocess:\n{res.stderr[-3000:]}")
    rss, seconds = res.stdout.split()[-2:]
    return int(rss), float(seconds)


def _peaks(workdir: Path, small: Path, large: Path, modes, **child) -> dict:
    result = {}
    for mode in modes:
        base, _ = peak_rss(mode, small, workdir / f"{mode}-small", **child)
        peak, seconds = peak_rss(mode, large, workdir / f"{mode}-large", **child)
        result[mode] = {"baseline_rss": base, "peak_rss": peak, "growth": peak - base, "seconds": seconds}
    return result


def measure(workdir: Path, hidden: int, depth: int, depth_single: int, modes=("convert",)) -> dict:
    """Peak RSS of a 1+1-block baseline and of the full synthetic Flux checkpoint, per mode."""
    small, large = workdir / "small.safetensors", workdir / "large.safetensors"
    result = {"file_bytes": write_synthetic_bfl(large, hidden, depth, depth_single),
              "small_file_bytes": write_synthetic_bfl(small, hidden, 1, 1)}
    result.update(_peaks(workdir, small, large, modes))
    return result


def measure_encoder(workdir: Path, d_model: int, d_ff: int, num_layers: int, modes=("convert",), *,
                    kind: str = TOY_ENCODER, path: tuple[str, ...] = TOY_ENCODER_PATH,
                    architecture: str = TOY_ENCODER_ARCHITECTURE) -> dict:
    """Peak RSS of a 1-block baseline and of the full synthetic T5-encoder dir (blocks at
    `encoder.block.N`), per mode; `kind` (an import string, from `path`) is registered in each
    subprocess (None: `architecture` is a registered kind already)."""
    small, large = workdir / "encoder-small", workdir / "encoder-large"
    widths = dict(architecture=architecture)
    result = {"file_bytes": write_synthetic_encoder(large, d_model, d_ff, num_layers, **widths),
              "small_file_bytes": write_synthetic_encoder(small, d_model, d_ff, 1, **widths)}
    result.update(_peaks(workdir, small, large, modes, register=(kind,) if kind else (), path=path))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--depth-single", type=int, default=24)
    p.add_argument("--encoder", action="store_true",
                   help="a T5-encoder-shaped transformers dir (encoder.block.N) instead of Flux")
    p.add_argument("--d-model", type=int, default=1024, help="--encoder: width")
    p.add_argument("--d-ff", type=int, default=6144, help="--encoder: feed-forward width")
    p.add_argument("--layers", type=int, default=24, help="--encoder: blocks")
    p.add_argument("--load", action="store_true", help="also measure load_model (holds the whole model)")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    modes = ("convert", "load") if args.load else ("convert",)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        start = time.perf_counter()
        if args.encoder:
            r = measure_encoder(Path(tmp), args.d_model, args.d_ff, args.layers, modes)
            what = (f"synthetic T5-shaped encoder bf16: d_model {args.d_model}, d_ff {args.d_ff}, "
                    f"{args.layers} blocks at encoder.block.N; baseline 1 block")
        else:
            r = measure(Path(tmp), args.hidden, args.depth, args.depth_single, modes)
            what = (f"synthetic BFL Flux bf16: hidden {args.hidden}, {args.depth} double + "
                    f"{args.depth_single} single blocks; baseline 1+1 blocks")
    size = r["file_bytes"]
    print(f"{what}: {size / MIB:.0f} MiB (baseline file {r['small_file_bytes'] / MIB:.0f} MiB)")
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
