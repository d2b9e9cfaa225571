"""One Flux transformer forward on the current device: our Flax port vs diffusers (eager, torchax-jit).

The same random weights go into diffusers' `FluxTransformer2DModel` (torch's seeded init) and ours
(`convert.place.load_state_dict`); contenders are timed in interleaved rounds and their outputs are
compared, so a fast wrong model cannot pass unnoticed (exit status 1 on a mismatch).

    python benchmarks/flux_bench.py                      # DESIGN's CPU baseline: 3+3 blocks, D=512, 1024+64 tokens
    python benchmarks/flux_bench.py --depth-double 19 --depth-single 38 --heads 24 --dtype bfloat16
    python benchmarks/flux_bench.py --rounds 2 --img-tokens 64 --txt-tokens 16 --json out/bench.json

Contenders: (a) ours, `jax.jit` of the nnx module (compile timed apart); (b) diffusers torch eager
under `torch.inference_mode`; (c) the diffusers module traced by torchax, under `jax.jit`.
Device info, JSON, TFLOP/s and MFU come from the `jaxdiff bench` harness (`benchmarks/run.py`,
`benchmarks/flops.py`); this script adds the same-weights comparison that one does not make.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxdiff.benchmarks import flops
from jaxdiff.benchmarks.common import (EAGER, OURS, TORCHAX, Contender, agreement, cpu_count,
                                       current_rss_mib, device_info, eager_contender, interleaved_rounds,
                                       jax_peak_bytes, jitted_flax_contender, markdown_table, mib, ms,
                                       peak_rss_mib, torchax_contender, write_json)
from jaxdiff.benchmarks.run import throughput

GUIDANCE = 3.5
SIGMA = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--depth-double", type=int, default=3, help="double-stream blocks (num_layers)")
    p.add_argument("--depth-single", type=int, default=3, help="single-stream blocks (num_single_layers)")
    p.add_argument("--dim", type=int, default=512, help="model width = heads × head dim")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--axes", type=str, default=None,
                   help="RoPE axes dims, comma separated, summing to the head dim "
                        "(default: (16, 56, 56) scaled to the head dim)")
    p.add_argument("--in-channels", type=int, default=64, help="packed latent channels")
    p.add_argument("--joint-dim", type=int, default=4096, help="text (T5) embedding width")
    p.add_argument("--pooled-dim", type=int, default=768, help="pooled (CLIP) embedding width")
    p.add_argument("--no-guidance", action="store_true", help="schnell-style: no guidance embedding")
    p.add_argument("--img-tokens", type=int, default=1024, help="image tokens (packed latent h·w)")
    p.add_argument("--txt-tokens", type=int, default=64, help="text tokens")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--rounds", type=int, default=10, help="timed interleaved rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-torch", action="store_true", help="skip diffusers torch eager")
    p.add_argument("--skip-torchax", action="store_true", help="skip diffusers traced by torchax")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads (default: this process's cores); on a loaded machine "
                        "torch's OpenMP pool can run far slower with all cores than with fewer")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--quiet", action="store_true", help="no per-round log")
    return p.parse_args(argv)


def rope_axes(head_dim: int, spec: str | None) -> tuple[int, ...]:
    """Flux's (16, 56, 56) for head dim 128, the same proportions (even sizes) otherwise."""
    if spec:
        axes = tuple(int(a) for a in spec.split(","))
    else:
        first = 2 * max(1, head_dim // 16)
        second = (head_dim - first) // 4 * 2
        axes = (first, second, head_dim - first - second)
    if sum(axes) != head_dim or any(a % 2 for a in axes):
        raise ValueError(f"RoPE axes {axes} must be even and sum to the head dim {head_dim}")
    return axes


def flux_config(args: argparse.Namespace) -> dict[str, Any]:
    """diffusers `FluxTransformer2DModel` kwargs."""
    if args.dim % args.heads:
        raise ValueError(f"--dim {args.dim} is not divisible by --heads {args.heads}")
    head_dim = args.dim // args.heads
    return dict(patch_size=1, in_channels=args.in_channels, out_channels=None,
                num_layers=args.depth_double, num_single_layers=args.depth_single,
                attention_head_dim=head_dim, num_attention_heads=args.heads,
                joint_attention_dim=args.joint_dim, pooled_projection_dim=args.pooled_dim,
                guidance_embeds=not args.no_guidance, axes_dims_rope=rope_axes(head_dim, args.axes))


def flux_inputs(config: dict[str, Any], *, batch: int, img_tokens: int, txt_tokens: int,
                seed: int) -> dict[str, np.ndarray | None]:
    """Random float32 forward kwargs; image ids are (0, row, col) on a near-square grid."""
    rng = np.random.default_rng(seed)
    width = math.ceil(math.sqrt(img_tokens))
    index = np.arange(img_tokens)
    img_ids = np.stack([np.zeros_like(index), index // width, index % width], -1).astype(np.float32)
    return dict(
        hidden_states=rng.standard_normal((batch, img_tokens, config["in_channels"]), np.float32),
        encoder_hidden_states=rng.standard_normal((batch, txt_tokens, config["joint_attention_dim"]),
                                                  np.float32),
        pooled_projections=rng.standard_normal((batch, config["pooled_projection_dim"]), np.float32),
        timestep=np.full((batch,), SIGMA, np.float32),
        img_ids=img_ids,
        txt_ids=np.zeros((txt_tokens, 3), np.float32),
        guidance=np.full((batch,), GUIDANCE, np.float32) if config["guidance_embeds"] else None,
    )


# ----------------------------------------------------------------------------- contenders


def ours_contender(torch_model, inputs, jax_dtype) -> tuple[Contender, Any]:
    """Our Flux module with the torch model's weights, jitted; returns (contender, first output)."""
    from jaxdiff.models_flax.flux import FluxConfig, FluxTransformer2DModel

    config = FluxConfig.from_dict(dict(torch_model.config))
    return jitted_flax_contender(OURS, lambda rngs: FluxTransformer2DModel(config, param_dtype=jax_dtype, rngs=rngs),
                                 torch_model, inputs, jax_dtype)


def forward_flops(args, config) -> int:
    """Analytical FLOPs of one forward (benchmarks/flops.py, as `jaxdiff bench` counts them)."""
    from jaxdiff.models_flax.flux import FluxConfig

    return flops.total(flops.flux_forward(FluxConfig.from_dict(config), batch=args.batch,
                                          image_tokens=args.img_tokens, text_tokens=args.txt_tokens))


def report(args, config, device: dict, contenders: list[Contender], diffs, rss: dict) -> dict[str, Any]:
    by_name = {c.name: c for c in contenders}
    ours = by_name.get(OURS)
    forward = forward_flops(args, config)
    rows, rates = [], {}
    for c in contenders:
        ratio = f"{c.min_s / ours.min_s:.2f}×" if ours else "–"
        xla, hlo = c.memory.get("xla") or {}, c.hlo or {}
        moves = (f"{hlo['transpose']}/{hlo['copy']}/{hlo['reverse']}" if hlo else "–")
        gb = f"{hlo['bytes_accessed'] / 1e9:.2f}" if hlo else "–"
        rates[c.name] = rate = throughput(forward, c.median_s, device, args.dtype)
        rows.append((c.name, ms(c.compile_s), ms(c.min_s), ms(c.median_s), ratio,
                     mib(xla.get("temp_bytes")), gb, moves, f"{rate['achieved_tflops']:.3g}",
                     rate["mfu_text"], len(c.times)))
    tokens = f"{args.img_tokens}+{args.txt_tokens}"
    print()
    print(f"Flux {args.depth_double}+{args.depth_single} blocks, D={args.dim} ({args.heads} heads × "
          f"{args.dim // args.heads}), axes {config['axes_dims_rope']}, {tokens} tokens, batch {args.batch}, "
          f"{args.dtype}, guidance {'on' if config['guidance_embeds'] else 'off'}")
    print(f"device: {device['backend']} {device['device_kind']} ×{device['device_count']}, "
          f"{device['cpu_cores']} CPU cores, torch threads {device['torch_threads']}, "
          f"jax {device['jax']}, torch {device['torch']}")
    print()
    print(markdown_table(("contender", "compile ms", "step min ms", "step median ms", "min / ours",
                          "XLA temp MiB", "XLA GB accessed", "transpose/copy/reverse", "TFLOP/s",
                          "MFU", "rounds"), rows))
    print(f"\n{forward / 1e9:.2f} GFLOP per forward (benchmarks/flops.py); TFLOP/s and MFU from the "
          f"median step; MFU {next(iter(rates.values()))['peak_source']}")
    print()
    if ours:
        for name in (TORCHAX, EAGER):
            if name in by_name:
                print(f"{name} / ours (min): {by_name[name].min_s / ours.min_s:.2f}×   "
                      f"(median: {by_name[name].median_s / ours.median_s:.2f}×)")
    print(f"memory: peak RSS {rss['peak']:.0f} MiB (process, all contenders); RSS after setting up each "
          "(cumulative) "
          + ", ".join(f"{k} {v:.0f}" for k, v in rss["after"].items()) + " MiB"
          + (f"; JAX device peak {mib(rss['jax_peak'])} MiB" if rss.get("jax_peak") else "")
          + (f"; torch CUDA peak {mib(rss['torch_cuda_peak'])} MiB" if rss.get("torch_cuda_peak") else ""))
    for d in diffs:
        verdict = ("(reference: noise floor)" if not d["judged"] else "OK" if d["ok"] else
                   f"*** MISMATCH (relative > {d['limit']:.1e}): these numbers benchmark a wrong model ***")
        print(f"agreement {d['a']} vs {d['b']}: max abs {d['max_abs']:.3e}, relative {d['rel']:.3e} {verdict}")
    return {
        "config": config, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "device": device,
        "contenders": {c.name: {"compile_s": c.compile_s, "min_s": c.min_s, "median_s": c.median_s,
                                "times_s": c.times, "memory": c.memory, "hlo": c.hlo} for c in contenders},
        "ratios_min": ({c.name: c.min_s / ours.min_s for c in contenders} if ours else {}),
        "forward_flops": forward, "throughput": rates,
        "agreement": diffs, "memory_mib": rss,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.torch_threads or cpu_count())
    import jax
    from diffusers import FluxTransformer2DModel

    config = flux_config(args)
    torch_dtype = getattr(torch, args.dtype)
    jax_dtype = getattr(jax.numpy, args.dtype)
    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    device_t = torch.device("cuda" if on_gpu else "cpu")  # on TPU torch stays on the host
    device = device_info(torch_threads=torch.get_num_threads(), torch=torch.__version__,
                         torch_device=str(device_t))
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))

    torch.manual_seed(args.seed)  # torch's own init: every weight non-zero, activations well scaled
    torch_model = FluxTransformer2DModel(**config).eval()
    if torch_dtype != torch.float32:
        torch_model = torch_model.to(torch_dtype)
    inputs = flux_inputs(config, batch=args.batch, img_tokens=args.img_tokens,
                         txt_tokens=args.txt_tokens, seed=args.seed + 1)
    n_params = sum(p.numel() for p in torch_model.parameters())
    log(f"{n_params / 1e6:.1f} M parameters; building contenders")

    contenders, outputs, rss_after = [], {}, {}

    def add(contender: Contender, output: np.ndarray, t0: float) -> None:
        contenders.append(contender)
        outputs[contender.name] = output
        rss_after[contender.name] = current_rss_mib()
        if contender.compile_s is not None:
            log(f"{contender.name}: compiled in {contender.compile_s:.1f} s "
                f"({time.perf_counter() - t0:.1f} s with setup)")

    t0 = time.perf_counter()
    c, out = ours_contender(torch_model, inputs, jax_dtype)
    add(c, np.asarray(out.astype(jax.numpy.float32)), t0)
    if not args.skip_torchax:  # traced from the host copy of the weights
        t0 = time.perf_counter()
        c, out = torchax_contender(torch_model, inputs, jax_dtype)
        add(c, np.asarray(out.astype(jax.numpy.float32)), t0)
    if args.skip_torch:
        del torch_model
    else:
        torch_model.to(device_t)
        c, out = eager_contender(torch_model, inputs, torch_dtype, device_t)
        add(c, out.float().cpu().numpy(), time.perf_counter())
    contenders.sort(key=lambda c: (OURS, EAGER, TORCHAX).index(c.name))  # A, B, C in every round

    interleaved_rounds(contenders, args.rounds, warmup=args.warmup, log=log)
    rss = {"peak": peak_rss_mib(), "after": rss_after, "jax_peak": jax_peak_bytes(),
           "torch_cuda_peak": torch.cuda.max_memory_allocated() if on_gpu else None}
    diffs = agreement(outputs, args.dtype)
    result = report(args, config, device, contenders, diffs, rss)
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0 if all(d["ok"] for d in diffs) else 1


if __name__ == "__main__":
    sys.exit(main())
