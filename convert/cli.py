"""`jaxdiff convert SRC OUT [--dtype] [--overwrite]`: torch checkpoint → converted jaxdiff checkpoint."""

from __future__ import annotations

import argparse
import sys


EXAMPLES = """examples:
  jaxdiff convert FLUX.1-dev/transformer flux-dev-jax --dtype bfloat16
  jaxdiff convert flux1-dev-fp8.safetensors flux-dev-jax       # ComfyUI / BFL single file
  jaxdiff generate --model flux-dev-jax --vae FLUX.1-dev/vae --prompt-embeds embeds.safetensors"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument("src", metavar="SRC",
                        help="diffusers model folder (config.json + *.safetensors, sharded "
                        "or not: Flux / Wan transformer, AutoencoderKL / AutoencoderKLWan) or a single "
                        ".safetensors file (BFL / ComfyUI Flux, Comfy-Org Wan, LDM / Wan VAE; fp8 "
                        "included)")
    parser.add_argument("out", metavar="OUT",
                        help="folder to write the checkpoint to (it appears complete or not at all)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="parameter dtype (default: the checkpoint's; fp8 → bfloat16)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT if it is a converted jaxdiff checkpoint (or an empty "
                        "folder); anything else is refused and left alone")


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
