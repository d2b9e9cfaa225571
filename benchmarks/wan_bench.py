"""Wan on the current device: one transformer forward (ours vs diffusers eager / torchax-jit) and VAE
decode time per frame (ours, chunked with the feature cache, vs diffusers eager).

Same weights on every side (torch's seeded init, loaded into ours with `convert.place`), interleaved
rounds, outputs cross-checked (exit 1 on a mismatch: a fast wrong model must not pass).

    python benchmarks/wan_bench.py                 # DESIGN's CPU baseline: 4 layers, D=512, 1280 video + 512 text tokens
    python benchmarks/wan_bench.py --layers 30 --heads 12 --ffn 8960 --dtype bfloat16 --frames 21 --size 60x104

Device info, JSON, TFLOP/s and MFU come from the `jaxdiff bench` harness (`benchmarks/run.py`,
`benchmarks/flops.py`); this script adds the same-weights comparison that one does not make.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from jaxdiff.benchmarks import flops
from jaxdiff.benchmarks.common import (EAGER, OURS, TORCHAX, Contender, agreement, cpu_count, device_info,
                                       eager_contender, interleaved_rounds, jitted_flax_contender,
                                       markdown_table, mib, ms, peak_rss_mib, timed, torchax_contender,
                                       write_json)
from jaxdiff.benchmarks.run import throughput

SIGMA_T = 500.0  # Wan's transformer takes timesteps in [0, 1000]
VAE_OURS, VAE_EAGER = "VAE decode, ours (chunked, jit)", "VAE decode, diffusers eager"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--ffn", type=int, default=2048, help="FFN width")
    p.add_argument("--in-channels", type=int, default=16)
    p.add_argument("--text-dim", type=int, default=4096)
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--frames", type=int, default=5, help="latent frames")
    p.add_argument("--size", type=str, default="32x32", help="latent HxW (tokens = frames·H·W/4)")
    p.add_argument("--vae-base-dim", type=int, default=32, help="VAE width (the real one is 96)")
    p.add_argument("--vae-frames", type=int, default=3, help="latent frames to decode (video 4k+1)")
    p.add_argument("--vae-size", type=str, default="16x16", help="latent HxW to decode")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-torchax", action="store_true")
    p.add_argument("--skip-vae", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def _hw(spec: str) -> tuple[int, int]:
    h, w = (int(v) for v in spec.lower().split("x"))
    return h, w


def transformer_contenders(args, torch, jax_dtype, torch_dtype, log):
    from diffusers import WanTransformer3DModel

    from jaxdiff.models_flax.wan import WanConfig, WanTransformer3DModel as OurWan

    config = dict(patch_size=(1, 2, 2), num_attention_heads=args.heads, attention_head_dim=args.head_dim,
                  in_channels=args.in_channels, out_channels=args.in_channels, text_dim=args.text_dim,
                  freq_dim=256, ffn_dim=args.ffn, num_layers=args.layers, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
    torch.manual_seed(args.seed)
    torch_model = WanTransformer3DModel(**config).eval().to(torch_dtype)
    h, w = _hw(args.size)
    rng = np.random.default_rng(args.seed + 1)
    inputs = dict(
        hidden_states=rng.standard_normal((args.batch, args.in_channels, args.frames, h, w), np.float32),
        timestep=np.full((args.batch,), SIGMA_T, np.float32),
        encoder_hidden_states=rng.standard_normal((args.batch, args.text_tokens, args.text_dim), np.float32),
    )
    log(f"transformer: {sum(p.numel() for p in torch_model.parameters()) / 1e6:.1f} M parameters, "
        f"{args.frames * h * w // 4} video + {args.text_tokens} text tokens")
    wan_config = WanConfig.from_dict(config)
    made = [jitted_flax_contender(OURS, lambda rngs: OurWan(wan_config, param_dtype=jax_dtype, rngs=rngs),
                                  torch_model, inputs, jax_dtype)]
    if not args.skip_torchax:
        made.append(torchax_contender(torch_model, inputs, jax_dtype))
    made.append(eager_contender(torch_model, inputs, torch_dtype, torch.device("cpu")))
    return config, made


def vae_contenders(args, torch, jax_dtype, torch_dtype):
    """Decode of the same latent by ours (per-frame jitted chunks) and diffusers (eager)."""
    import jax.numpy as jnp
    from diffusers import AutoencoderKLWan
    from flax import nnx

    from jaxdiff.convert.place import load_state_dict
    from jaxdiff.models_flax.vae_wan import AutoencoderKLWan as OurVAE, WanVAEConfig

    config = dict(base_dim=args.vae_base_dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                  temperal_downsample=[False, True, True])  # lists: diffusers concatenates them
    torch.manual_seed(args.seed)
    torch_vae = AutoencoderKLWan(**config).eval().to(torch_dtype)
    ours = nnx.eval_shape(lambda: OurVAE(WanVAEConfig.from_dict(config), param_dtype=jax_dtype,
                                         rngs=nnx.Rngs(0)))
    load_state_dict(ours, {k: v.detach().float().numpy() for k, v in torch_vae.state_dict().items()},
                    source="diffusers AutoencoderKLWan", dtype=jax_dtype)
    h, w = _hw(args.vae_size)
    z = np.random.default_rng(args.seed + 2).standard_normal((1, 16, args.vae_frames, h, w), np.float32)
    z_jax, z_torch = jnp.asarray(z, jax_dtype), torch.from_numpy(z).to(torch_dtype)

    def ours_step():
        return ours.decode(z_jax).block_until_ready()

    def eager_step():
        with torch.inference_mode():
            return torch_vae.decode(z_torch, return_dict=False)[0]

    compile_s, first = timed(ours_step)  # the first call compiles the first-chunk and later-chunk steps
    frames = 1 + 4 * (args.vae_frames - 1)
    return frames, [(Contender(VAE_OURS, ours_step, compile_s=compile_s), first),
                    (Contender(VAE_EAGER, eager_step), eager_step())]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(cpu_count())
    import jax

    torch_dtype, jax_dtype = getattr(torch, args.dtype), getattr(jax.numpy, args.dtype)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    device = device_info(torch=torch.__version__)
    as_np = lambda out: (out.float().numpy() if hasattr(out, "numpy") else
                         np.asarray(out.astype(jax.numpy.float32)))

    config, made = transformer_contenders(args, torch, jax_dtype, torch_dtype, log)
    order = (OURS, EAGER, TORCHAX)
    contenders = sorted((c for c, _ in made), key=lambda c: order.index(c.name))
    diffs = agreement({c.name: as_np(out) for c, out in made}, args.dtype)
    interleaved_rounds(contenders, args.rounds, log=log)

    vae_rows, vae_diffs, frames = [], [], 0
    if not args.skip_vae:
        frames, vae_made = vae_contenders(args, torch, jax_dtype, torch_dtype)
        vae = [c for c, _ in vae_made]
        (_, a), (_, b) = vae_made
        a, b = as_np(a).astype(np.float64), as_np(b).astype(np.float64)
        vae_diffs = [{"max_abs": float(np.abs(a - b).max()),
                      "ok": bool(np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max()))
                      if args.dtype == "float32" else True}]
        interleaved_rounds(vae, max(2, args.rounds // 2), log=log)
        ours_vae = vae[0]
        vae_rows = [(c.name, ms(c.compile_s), ms(c.min_s), ms(c.median_s), ms(c.min_s / frames),
                     f"{c.min_s / ours_vae.min_s:.2f}×") for c in vae]

    ours = contenders[0]
    h, w = _hw(args.size)
    from jaxdiff.models_flax.wan import WanConfig

    forward = flops.total(flops.wan_forward(WanConfig.from_dict(config), batch=args.batch,
                                            video_tokens=args.frames * h * w // 4,
                                            text_tokens=args.text_tokens))
    rates = {c.name: throughput(forward, c.median_s, device, args.dtype) for c in contenders}
    print(f"\nWan transformer {args.layers} layers, D={args.heads * args.head_dim} ({args.heads} heads × "
          f"{args.head_dim}), ffn {args.ffn}, {args.frames * h * w // 4} video + {args.text_tokens} text "
          f"tokens, batch {args.batch}, {args.dtype}")
    print(f"device: {device['backend']} {device['device_kind']}, {device['cpu_cores']} CPU cores, "
          f"jax {device['jax']}, torch {device['torch']}\n")
    print(markdown_table(("contender", "compile ms", "step min ms", "step median ms", "min / ours",
                          "XLA temp MiB", "TFLOP/s", "MFU"),
                         [(c.name, ms(c.compile_s), ms(c.min_s), ms(c.median_s),
                           f"{c.min_s / ours.min_s:.2f}×", mib((c.memory.get("xla") or {}).get("temp_bytes")),
                           f"{rates[c.name]['achieved_tflops']:.3g}", rates[c.name]["mfu_text"])
                          for c in contenders]))
    print(f"\n{forward / 1e9:.2f} GFLOP per forward (benchmarks/flops.py); TFLOP/s and MFU from the "
          f"median step; MFU {rates[OURS]['peak_source']}")
    if vae_rows:
        hv, wv = _hw(args.vae_size)
        print(f"\nWan 2.1-style VAE (base_dim {args.vae_base_dim}) decode: {args.vae_frames} latent frames "
              f"→ {frames} frames of {hv * 8}×{wv * 8}\n")
        print(markdown_table(("contender", "first call ms (compiles)", "min ms", "median ms",
                              "min ms / frame", "min / ours"), vae_rows))
    print(f"\npeak RSS {peak_rss_mib():.0f} MiB (process, all contenders)")
    for d in diffs:
        verdict = ("(noise floor)" if not d["judged"] else "OK" if d["ok"] else "*** MISMATCH ***")
        print(f"agreement {d['a']} vs {d['b']}: max abs {d['max_abs']:.3e}, relative {d['rel']:.3e} {verdict}")
    for d in vae_diffs:
        print(f"agreement VAE decode ours vs diffusers eager: max abs {d['max_abs']:.3e} "
              f"{'OK' if d['ok'] else '*** MISMATCH ***'}")
    if args.json:
        write_json(args.json, {
            "config": config, "device": device, "agreement": diffs + vae_diffs, "forward_flops": forward,
            "transformer": {c.name: {"compile_s": c.compile_s, "times_s": c.times, **rates[c.name]}
                            for c in contenders},
            "vae": {r[0]: r[1:] for r in vae_rows}})
    return 0 if all(d["ok"] for d in diffs + vae_diffs) else 1


if __name__ == "__main__":
    sys.exit(main())
