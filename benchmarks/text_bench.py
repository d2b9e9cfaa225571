"""T5 and UMT5 text encoders on the current device: our Flax port vs transformers (eager, torchax-jit).

One batch of `--tokens` token ids (Flux's T5 and Wan's UMT5 both encode 512) through the same random
weights on every side: transformers' `T5EncoderModel` / `UMT5EncoderModel` (torch's seeded init), loaded
into ours with `convert.place`. Contenders are timed in interleaved rounds (min and median) and their
outputs compared, so a fast wrong model cannot pass (exit status 1 on a mismatch).

    python benchmarks/text_bench.py            # CPU-sized: 6 blocks, d_model 512 (8 heads × 64), d_ff 1280
    python benchmarks/text_bench.py --layers 24 --d-model 4096 --heads 64 --d-ff 10240 --dtype bfloat16

The default keeps T5-XXL's proportions (heads × d_kv = d_model, d_ff = 2.5 · d_model, gated-GELU,
32 buckets) at 1/8 of its width and 1/4 of its depth; both models use T5's 32128-row vocabulary (the
lookup costs the same at UMT5's 256384 rows, whose table would cost 0.5 GB per contender). T5 runs
unmasked, as Flux's pipelines call it; UMT5 with a padding mask after `--prompt-tokens`, as Wan's do.

Contenders: (a) ours, `jax.jit` of the nnx module (compile timed apart); (b) transformers torch eager
under `torch.inference_mode`; (c) the same transformers module traced by torchax, under `jax.jit`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from jaxdiff.benchmarks.common import (OURS, Contender, agreement, cpu_count, device_info, eager_contender,
                                       interleaved_rounds, jitted_flax_contender, markdown_table, mib, ms,
                                       peak_rss_mib, torchax_contender, write_json)

EAGER, TORCHAX = "transformers torch eager", "transformers torchax-jit"
ALIAS = "encoder.embed_tokens.weight"  # transformers' tied copy of `shared`: no parameter of ours
KINDS = ("t5", "umt5")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default="t5,umt5", help="comma-separated: t5, umt5")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-kv", type=int, default=64)
    p.add_argument("--d-ff", type=int, default=1280)
    p.add_argument("--vocab", type=int, default=32128)
    p.add_argument("--feed-forward-proj", default="gated-gelu", help="'gated-gelu' (T5 v1.1/XXL, UMT5) or 'relu'")
    p.add_argument("--tokens", type=int, default=512, help="sequence length")
    p.add_argument("--prompt-tokens", type=int, default=120, help="UMT5: unpadded tokens (mask)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--rounds", type=int, default=10, help="timed interleaved rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-torchax", action="store_true")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads (default: this process's cores)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--quiet", action="store_true", help="no per-round log")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in KINDS]
    if unknown:
        p.error(f"unknown --models {unknown}; choose from {KINDS}")
    return args


def encoder_config(args) -> dict[str, Any]:
    """transformers T5Config / UMT5Config kwargs."""
    return dict(vocab_size=args.vocab, d_model=args.d_model, d_kv=args.d_kv, d_ff=args.d_ff,
                num_layers=args.layers, num_heads=args.heads, relative_attention_num_buckets=32,
                relative_attention_max_distance=128, feed_forward_proj=args.feed_forward_proj,
                dropout_rate=0.0)


def encoder_inputs(kind: str, args) -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(args.seed + 1)
    ids = rng.integers(0, args.vocab, (args.batch, args.tokens)).astype(np.int32)
    mask = None
    if kind == "umt5":
        mask = (np.arange(args.tokens)[None, :] < min(args.prompt_tokens, args.tokens)).astype(np.int32)
        mask = np.repeat(mask, args.batch, axis=0)
    return dict(input_ids=ids, attention_mask=mask)


def forward_flops(args) -> int:
    """Matmul FLOPs of one forward (2·m·n·k; attention 4·B·N·S²·d_kv); norms and softmax left out."""
    tokens, inner = args.batch * args.tokens, args.heads * args.d_kv
    ff_mats = 3 if args.feed_forward_proj.startswith("gated-") else 2
    per_layer = (2 * tokens * args.d_model * inner * 4 + 2 * tokens * args.d_model * args.d_ff * ff_mats
                 + 4 * args.batch * args.tokens ** 2 * inner)
    return per_layer * args.layers


def contenders_for(kind: str, args, torch, jax_dtype, torch_dtype, log) -> list[tuple[Contender, Any]]:
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    from jaxdiff.models_flax.t5 import T5Config as OurT5Config, T5EncoderModel as OurT5
    from jaxdiff.models_flax.umt5 import UMT5Config as OurUMT5Config, UMT5EncoderModel as OurUMT5

    config = encoder_config(args)
    torch.manual_seed(args.seed)  # transformers' own init: T5's scaled normal weights
    if kind == "umt5":
        torch_model, ours_cls, ours_config = UMT5EncoderModel(UMT5Config(**config)), OurUMT5, OurUMT5Config
    else:
        torch_model, ours_cls, ours_config = T5EncoderModel(T5Config(**config)), OurT5, OurT5Config
    torch_model = torch_model.eval().to(torch_dtype)
    inputs = encoder_inputs(kind, args)
    log(f"{kind}: {sum(p.numel() for p in torch_model.parameters()) / 1e6:.1f} M parameters")
    ours_config = ours_config.from_dict(config)
    made = [jitted_flax_contender(OURS, lambda rngs: ours_cls(ours_config, param_dtype=jax_dtype, rngs=rngs),
                                  torch_model, inputs, jax_dtype, ignore_keys=(ALIAS,))]
    if not args.skip_torchax:
        made.append(torchax_contender(torch_model, inputs, jax_dtype, name=TORCHAX))
    made.append(eager_contender(torch_model, inputs, torch_dtype, torch.device("cpu"), name=EAGER))
    return made


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.torch_threads or cpu_count())
    import jax

    torch_dtype, jax_dtype = getattr(torch, args.dtype), getattr(jax.numpy, args.dtype)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    device = device_info(torch=torch.__version__, torch_threads=torch.get_num_threads())
    as_np = lambda out: (out.float().numpy() if hasattr(out, "numpy") else
                         np.asarray(out.astype(jax.numpy.float32)))
    order = (OURS, EAGER, TORCHAX)
    gflop = forward_flops(args) / 1e9
    results, ok = {}, True
    print(f"\nT5 / UMT5 encoder: {args.layers} blocks, d_model {args.d_model} ({args.heads} heads × {args.d_kv}), "
          f"d_ff {args.d_ff} ({args.feed_forward_proj}), vocab {args.vocab}, batch {args.batch} × "
          f"{args.tokens} tokens, {args.dtype}; {gflop:.2f} GFLOP per forward")
    print(f"device: {device['backend']} {device['device_kind']}, {device['cpu_cores']} CPU cores "
          f"({device['cpu_model']}), jax {device['jax']}, torch {device['torch']} "
          f"({device['torch_threads']} threads)")
    for kind in args.models:
        made = contenders_for(kind, args, torch, jax_dtype, torch_dtype, log)
        contenders = sorted((c for c, _ in made), key=lambda c: order.index(c.name))
        diffs = agreement({c.name: as_np(out) for c, out in made}, args.dtype)
        interleaved_rounds(contenders, args.rounds, warmup=args.warmup, log=log)
        ours = contenders[0]
        mask = f", mask after {args.prompt_tokens} tokens" if kind == "umt5" else ", no mask"
        print(f"\n{kind.upper()}{mask}\n")
        print(markdown_table(
            ("contender", "compile ms", "step min ms", "step median ms", "min / ours", "GFLOP/s (min)",
             "XLA temp MiB"),
            [(c.name, ms(c.compile_s), ms(c.min_s), ms(c.median_s), f"{c.min_s / ours.min_s:.2f}×",
              f"{gflop / c.min_s:.1f}", mib((c.memory.get("xla") or {}).get("temp_bytes")))
             for c in contenders]))
        for d in diffs:
            verdict = "(noise floor)" if not d["judged"] else "OK" if d["ok"] else "*** MISMATCH ***"
            print(f"agreement {d['a']} vs {d['b']}: max abs {d['max_abs']:.3e}, relative {d['rel']:.3e} {verdict}")
        ok = ok and all(d["ok"] for d in diffs)
        results[kind] = {"agreement": diffs, "contenders": {
            c.name: {"compile_s": c.compile_s, "times_s": c.times, "hlo": c.hlo, "memory": c.memory}
            for c in contenders}}
        del made, contenders
    print(f"\npeak RSS {peak_rss_mib():.0f} MiB (process, all contenders)")
    if args.json:
        write_json(args.json, {"args": vars(args), "device": device, "forward_flops": gflop * 1e9, **results})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
