"""The `jaxdiff` command: wires subcommands to the modules that own them.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int`, and keeps its
top-level imports light so `jaxdiff --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module relative to this package, one-line help: what the user gets)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": (".pipelines.cli", "make a Flux image or a Wan video (no --model: a tiny demo model)"),
    "convert": (".convert.cli", "make a fast-loading jaxdiff checkpoint from torch weights"),
    "verify": (".convert.verify", "check a model's output against diffusers (needs jaxdiff[verify])"),
    "bench": (".benchmarks.run", "time a denoising step at a released size: speed, MFU, memory"),
    "plan": (".pipelines.plan_cli", "plan per-device memory for a model, size and mesh: will it fit?"),
}
DESCRIPTION = ("Flux images and Wan videos with JAX, on one device or a mesh of many: convert torch "
               "checkpoints (diffusers, ComfyUI, BFL single files), generate, check against "
               "diffusers, benchmark and plan memory.")
EPILOG = "Run `jaxdiff COMMAND --help` for a command's options."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxdiff", description=DESCRIPTION, epilog=EPILOG,
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name, __package__)
        # no abbreviations: `--prompt` must not silently mean `--prompt-embeds`
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
