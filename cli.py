"""The `jaxdiff` command: wires subcommands to the modules that own them.

Each subcommand module exposes `add_arguments(parser)` and `run(args) -> int`, and keeps its
top-level imports light so `jaxdiff --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module relative to this package, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": (".pipelines.cli", "generate an image (embedded tiny default when no --model)"),
    "convert": (".convert.cli", "convert a torch checkpoint (diffusers dir / single file) to jaxdiff"),
    "verify": (".convert.verify", "compare our Flax module with the diffusers torch module (needs [verify])"),
    "bench": (".benchmarks.run", "time one denoising step of a released model shape (random weights): MFU, compile"),
    "plan": (".pipelines.plan", "per-device memory plan (parameters, activations, KV, VAE decode) vs HBM"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxdiff", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name, __package__)
        p = sub.add_parser(name, help=help_text, description=help_text)
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
