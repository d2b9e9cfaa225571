"""`jaxdiff convert SRC OUT [--dtype] [--overwrite]`: torch checkpoint → converted jaxdiff checkpoint."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="diffusers model directory (config.json + *.safetensors, sharded "
                        "or not: Flux / Wan transformer, AutoencoderKL / AutoencoderKLWan) or a single "
                        ".safetensors file (BFL / ComfyUI Flux, Comfy-Org Wan, LDM / Wan VAE; fp8 "
                        "included)")
    parser.add_argument("out", help="output directory (written atomically: complete or absent)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="parameter dtype (default: the checkpoint's; fp8 → bfloat16)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it is a converted jaxdiff checkpoint (or an empty "
                        "directory); anything else is refused and left alone")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .checkpoint import check_output
    from .loader import open_plan, write_plan

    try:
        check_output(args.out, overwrite=args.overwrite)  # before any work or progress bar
        with open_plan(args.src, dtype=args.dtype) as plan, \
                tqdm(total=plan.num_tensors, unit="tensor", desc=f"convert {plan.family}") as bar:
            out = write_plan(plan, args.out, overwrite=args.overwrite, progress=bar.update)
            summary = f"{plan.family}, {plan.dtype.name}, {plan.num_tensors} tensors"
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"jaxdiff convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({summary})")
    return 0
