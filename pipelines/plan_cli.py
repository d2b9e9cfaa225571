"""`jaxdiff plan` as a command: arguments, the printed tables, `--json`.

The numbers come from pipelines/plan.py (`plan`, `search`, `compile_check`); this module only turns
arguments into a `plan.Request` and results into text. Top-level imports stay light (no jax) so
`jaxdiff --help` is fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .plan import (ATTENTION, GIB, MESH_AXES, SEQUENCE_PARALLEL, Request, as_dtype, compile_check, parse_mesh,
                   plan, preset_from_config, search)

SEARCH_COLUMNS = {"params": "transformer_params", "acts": "activations", "gather": "fsdp_gather",
                  "denoise": "denoise_peak", "decode": "decode_peak", "peak": "peak"}


# ----------------------------------------------------------------------------- output


ENCODER_LABELS = {"clip_text": "CLIP-L", "t5": "T5-XXL", "umt5": "UMT5-XXL", "clip_vision": "CLIP ViT-H"}


def _gib(n: int | float) -> str:
    return f"{n / GIB:8.2f}"


def format_plan(r: dict[str, Any]) -> str:
    """The human-readable table for one `plan` result."""
    shape = f"{r['height']}×{r['width']}" + (f"×{r['frames']} frames" if r["video"] else "")
    lines = [f"{r['model']} at {shape}, batch {r['batch']}, {r['dtype']}, mesh {r['mesh']} "
             f"({r['devices']} devices), attention {r['attention']}"
             + (f" ({r['sequence_parallel']})" if "seq=" in r["mesh"] else ""),
             f"tokens: {r['image_tokens']} image + {r['text_tokens']} text; per device: batch "
             f"{r['splits']['batch']}, {r['splits']['tokens']} tokens, {r['splits']['heads']} heads",
             "", "per device                                      GiB"]
    row = lambda name, n: lines.append(f"  {name:<44}{_gib(n)}")
    experts = f" ({r['experts']} experts)" if r["experts"] > 1 else ""
    row(f"transformer parameters{experts} [exact]", r["transformer_params"])
    row("VAE parameters (replicated) [exact]", r["vae_params"])
    names = " + ".join(ENCODER_LABELS.get(k, k) for k in r["text_encoder_parts"])
    row(f"encoders ({names}) [exact]", r["text_encoder"])
    row("encoding activations [est.]", r["encode_activations"])
    row("= encoding peak" + (" (encoders alone)" if r["text_encoder_offloaded"] else ""),
        r["encode_peak"])
    row("text encoders kept resident" if not r["text_encoder_offloaded"] else "text encoders (offloaded)",
        0 if r["text_encoder_offloaded"] else r["text_encoder"])
    row(f"activations, peak in {r['activation_phase']} [est.]", r["activations"])
    for name, n in r["activation_parts"].items():
        if n >= 0.01 * GIB:
            row(f"  {name}", n)
    row("FSDP all-gather of one block [est.]", r["fsdp_gather"])
    row("latents + sampler state", r["scheduler"])
    row("= denoising peak", r["denoise_peak"])
    row("VAE decode step [approx.]", r["vae_decode"])
    for name, n in r["vae_decode_parts"].items():
        if n >= 0.01 * GIB:
            row(f"  {name}", n)
    row("= decoding peak", r["decode_peak"])
    row("PEAK", r["peak"])
    kv = r["kv"]
    cross = kv["cross-attention K+V per layer"]
    lines.append(f"  KV per layer: self-attention K+V {kv['self-attention K+V per layer'] / 2**20:.1f} MiB"
                 + (f", text cross-attention K+V {cross / 2**20:.1f} MiB" if cross else "")
                 + f" ({kv['layers']} layers, not kept between layers)")
    lines.append(f"  transformer parameters, all devices: {r['transformer_params_total'] / GIB:.2f} GiB")
    if r.get("usable") is not None:
        verdict = "FITS" if r["fits"] else "DOES NOT FIT"
        lines.append(f"HBM {r['hbm']}: usable {r['usable'] / GIB:.2f} GiB → {verdict}, headroom "
                     f"{r['headroom'] / GIB:+.2f} GiB")
    if "compile" in r:
        c = r["compile"]
        lines.append(f"compiled one-block copy on {c['devices']} {c['backend'].upper()} device(s), "
                     f"{c['attention']} attention: temp "
                     f"{c['temp_bytes'] / GIB:.2f} GiB vs estimate {c['estimate_bytes'] / GIB:.2f} GiB "
                     f"(×{c['ratio']:.2f}); arguments {c['argument_bytes'] / GIB:.2f} GiB"
                     + ("" if c["sharded"] or r["devices"] == 1
                        else " — unsharded (not enough devices for the mesh)"))
        lines.append(f"compiled VAE decode step: {c['vae_bytes'] / GIB:.2f} GiB (arguments + outputs + temp, "
                     f"less parameters) vs estimate {c['vae_estimate_bytes'] / GIB:.2f} GiB")
        if c["backend"] == "cpu" and r["dtype"] != "float32":
            lines.append("note: XLA:CPU computes bf16/fp16 matmuls in fp32, so its temp bytes include fp32 "
                         "copies of the weights; compare with --dtype float32")
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def format_search(rows: list[dict[str, Any]]) -> str:
    head = rows[0]
    lines = [f"{head['model']} at {head['height']}×{head['width']}×{head['frames']}, "
             f"batch {head['batch']}, "
             f"{head['dtype']}, attention {head['attention']}, {head['devices']} devices"
             + (f", HBM {head['hbm']}" if head["hbm"] else ""),
             f"  {'mesh':<26}" + "".join(f"{c:>8}" for c in SEARCH_COLUMNS) + "  fits"]
    for r in rows:
        fits = "" if r.get("fits") is None else "yes" if r["fits"] else "no"
        mesh = r["mesh"] + (" (ring)" if r["sequence_parallel"] == "ring" and "seq=" in r["mesh"] else "")
        lines.append(f"  {mesh:<26}" + "".join(f"{r[k] / GIB:8.2f}" for k in SEARCH_COLUMNS.values())
                     + f"  {fits}")
    lines.append("GiB per device: transformer parameters exact, the rest estimated (`jaxdiff plan --help`); "
                 "denoise/decode = peak while denoising / decoding, parameters included")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


DTYPES = ("float32", "bfloat16", "float16")
EPILOG = """examples:
  jaxdiff plan --model flux-dev --mesh fsdp=4 --hbm h100
  jaxdiff plan --model wan2.1-t2v-14b --mesh fsdp=8 --height 720 --width 1280 --frames 81 --hbm v5e
  jaxdiff plan --model wan2.1-t2v-14b --mesh auto --devices 8 --hbm v5e   # compare every split
  jaxdiff plan --config FLUX.1-dev/transformer --json

Nothing is downloaded or run: the figures come from the model's shapes. Per device:
  transformer parameters  exact (the real model's shapes, split over the mesh as jaxdiff splits them)
  activations             estimated: the working memory of one transformer block at its peak
  FSDP all-gather         estimated: one block's weights gathered while it runs
  VAE decode              approximate: the decoder's working set after denoising
  text encoders           not modelled; add your own figure with --text-encoder-gib
--compile builds a one-block copy on this machine and prints the compiler's own figures next to
the estimate, as a check."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG  # the module docstring says the same for developers
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="released model preset, e.g. wan2.1-t2v-14b, flux-dev")
    src.add_argument("--config",
                     help="transformer config.json, a diffusers model dir or a converted checkpoint")
    parser.add_argument("--mesh", default="fsdp=1",
                        help="mesh sizes, e.g. fsdp=8 or fsdp=2,seq=4 (devices = product); 'auto' tries "
                             "every fsdp×tensor×seq split of --devices (default: %(default)s, one device)")
    parser.add_argument("--devices", type=int, help="device count for --mesh auto")
    parser.add_argument("--height", type=int, help="pixels (default: the preset's)")
    parser.add_argument("--width", type=int, help="pixels (default: the preset's)")
    parser.add_argument("--frames", type=int, help="video frames, 4k+1 (default: the preset's)")
    parser.add_argument("--batch", type=int, default=1,
                        help="prompts per call; guidance doubles it inside (default: %(default)s)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                        help="transformer parameters and activations (default: %(default)s)")
    parser.add_argument("--vae-dtype", choices=DTYPES,
                        help="VAE parameters and activations (default: --dtype)")
    parser.add_argument("--attention", choices=ATTENTION, default="flash",
                        help="flash = splash (TPU) / cuDNN (GPU), memory linear in the sequence; xla = "
                             "the full attention matrix in memory (default: %(default)s)")
    parser.add_argument("--sequence-parallel", choices=SEQUENCE_PARALLEL, default="ulysses",
                        help="how a seq mesh axis splits attention (default: %(default)s)")
    parser.add_argument("--hbm", help="accelerator (v4, v5e, v5p, v6e, v7x, a100, h100, h200) or usable GiB")
    parser.add_argument("--text-encoder-gib", type=float, default=0.0,
                        help="text-encoder GiB per device to use instead of the counted released encoders "
                             "(default: count them)")
    parser.add_argument("--offload-text-encoder", action=argparse.BooleanOptionalAction, default=None,
                        help="free the encoders before denoising (default: when they do not fit beside the "
                             "transformer on --hbm)")
    parser.add_argument("--compile", action="store_true",
                        help="also compile a one-block copy here and print the compiler's memory figures")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def request_from_args(args: argparse.Namespace, mesh: str | None = None) -> Request:
    """A Request from parsed arguments; `mesh` a spec (default: one device)."""
    from .presets import get_preset

    preset = get_preset(args.model) if args.model else preset_from_config(args.config)
    for name in ("height", "width", "frames", "batch"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be positive, got {value}")
    if args.text_encoder_gib < 0:
        raise ValueError(f"--text-encoder-gib must be ≥ 0, got {args.text_encoder_gib}")
    frames = args.frames if args.frames is not None else preset.frames
    if preset.video and (frames - 1) % preset.temporal_factor:
        raise ValueError(f"{preset.name}: --frames must be {preset.temporal_factor}k+1, got {frames}")
    as_dtype(args.dtype)
    as_dtype(args.vae_dtype or args.dtype)
    sizes, axes = parse_mesh(mesh) if mesh else (dict.fromkeys(MESH_AXES, 1), ())
    return Request(preset=preset, height=args.height or preset.height, width=args.width or preset.width,
                   frames=frames, batch=args.batch, mesh=sizes, axes=axes,
                   dtype=args.dtype, vae_dtype=args.vae_dtype or args.dtype, attention=args.attention,
                   sequence_parallel=args.sequence_parallel,
                   text_encoder_bytes=int(args.text_encoder_gib * GIB),
                   offload_text_encoder=args.offload_text_encoder)


def run(args: argparse.Namespace) -> int:
    try:
        if args.mesh.strip().lower() == "auto":
            if not args.devices or args.devices <= 0:
                raise ValueError("--mesh auto needs --devices N")
            rows = search(request_from_args(args), args.devices, args.hbm)
            print(json.dumps(rows, indent=1) if args.json else format_search(rows))
            return 0
        req = request_from_args(args, args.mesh)
        if args.devices is not None and args.devices != req.devices:
            raise ValueError(f"mesh {args.mesh} uses {req.devices} devices, --devices says {args.devices}")
        result = plan(req, args.hbm)
        if args.compile:
            result["compile"] = compile_check(req)
    except (ValueError, FileNotFoundError) as err:
        print(f"jaxdiff plan: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if args.json else format_plan(result))
    return 0


def plan_doc_line() -> str:
    from . import plan as plan_module

    return plan_module.__doc__.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxdiff plan", description=plan_doc_line(),
                                     allow_abbrev=False)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # a usage error (2) or --help (0): the status, as for run's errors
        return int(exit_.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
