"""The ComfyUI path per denoising step on CPU: core KSampler on ComfyUI's own torch Flux, core KSampler
on our JAX MODEL, and JaxSampler — plus the node's torch↔numpy boundary as a share of a step.

One random fp32 BFL single-file Flux per size feeds both sides: ComfyUI's MODEL is built from it as its
loader would (detect_unet_config, the widths it hard-codes fixed from the tensors), ours by
`comfy_nodes.loading.load_diffusion_model`. The sampled latents of (a), (b), (c) are cross-checked
before timing (exit 1 if they differ); then every row runs in interleaved rounds (min over rounds).
Besides the samplers: one forward each way (ComfyUI torch apply_model, our JAX denoiser on numpy, our
apply_model on torch tensors), and the node's own work timed directly rather than as a difference of
two noisy times: JaxFlux / apply_model with the JAX forward stubbed by its precomputed host result.

    python benchmarks/comfy_bench.py --sizes tiny,reduced --steps 4 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from jaxdiff.benchmarks.common import (AGREEMENT, Contender, cpu_count, cpu_model, interleaved_rounds,
                                       markdown_table, ms)

PREFIX = "model.diffusion_model."
FLUX = dict(mlp_ratio=4.0, axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True,
            guidance_embed=True, in_channels=16, out_channels=16)
# (params, latent side, text tokens): tests/comfy_fixtures.py TINY_BFL at 16 latent channels, and
# Flux-dev at width 512 (4 heads × 128) with 2 double + 4 single blocks at 512² px
SIZES = {"tiny": (dict(FLUX, vec_in_dim=32, context_in_dim=32, hidden_size=128, num_heads=1, depth=1,
                       depth_single_blocks=1), 32, 8),
         "reduced": (dict(FLUX, vec_in_dim=768, context_in_dim=512, hidden_size=512, num_heads=4, depth=2,
                          depth_single_blocks=4), 64, 128)}
A, B, C = "(a) KSampler, ComfyUI torch Flux", "(b) KSampler, jaxdiff MODEL", "(c) JaxSampler, jaxdiff MODEL"
F_TORCH, F_JAX, F_APPLY = ("forward: apply_model, ComfyUI torch", "forward: JAX denoiser, numpy in/out",
                           "forward: apply_model, jaxdiff (torch in/out)")
S_DM, S_APPLY = "JAX stubbed: JaxFlux (torch↔numpy boundary)", "JAX stubbed: apply_model (wrapper + boundary)"
STUB_REPS = 50  # the stubbed rows take microseconds: 50× the calls per round, same per-step unit


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", default="tiny,reduced", help=f"comma list of {', '.join(SIZES)}")
    p.add_argument("--steps", type=int, default=4, help="steps per sampler call (ms/step = call / steps)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cfg", type=float, default=1.0, help="1.0 = one forward per step (Flux-dev usage)")
    p.add_argument("--guidance", type=float, default=3.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=cpu_count(),
                   help="torch.set_num_threads (XLA:CPU uses every core)")
    p.add_argument("--comfyui", type=Path, default=Path("/tmp/comfyui"), help="ComfyUI source tree")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def import_comfy(root: Path) -> None:
    sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    import comfy.model_management  # noqa: F401

    import jaxdiff.comfy_nodes.loading  # noqa: F401  (before jax: the node pack sets XLA env vars)


def write_checkpoint(params: dict, path: Path, seed: int) -> dict:
    """ComfyUI's Flux at `params`, N(0, 0.02) weights (norm scales 1), saved BFL-style; its state dict."""
    import comfy.ops
    import torch
    from comfy.ldm.flux.model import Flux
    from safetensors.torch import save_file

    model = Flux(**params, operations=comfy.ops.disable_weight_init, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            w = torch.ones(p.shape) if name.endswith(".scale") else torch.randn(p.shape, generator=gen) * 0.02
            p.copy_(w)
    sd = {PREFIX + k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    return sd


def comfy_model(sd: dict):
    """ComfyUI's MODEL from a BFL state dict (widths fixed where detect_unet_config assumes Flux-dev's)."""
    import comfy.model_detection
    import comfy.model_patcher
    import torch

    unet_config = comfy.model_detection.detect_unet_config(sd, PREFIX)
    hidden = sd[PREFIX + "img_in.weight"].shape[0]
    unet_config.update(hidden_size=hidden, num_heads=hidden // 128,
                       context_in_dim=sd[PREFIX + "txt_in.weight"].shape[1])
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model(sd)
    model.load_model_weights(sd, PREFIX)
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


def run_size(name: str, args, log) -> dict[str, list]:
    import comfy.sample
    import comfy.samplers
    import torch

    from jaxdiff.comfy_nodes import loading, registry
    from jaxdiff.comfy_nodes.model import JaxFlux
    from jaxdiff.comfy_nodes.sampler import sample as jax_sample

    params, side, tokens = SIZES[name]
    with tempfile.TemporaryDirectory(prefix="comfy_bench_") as tmp:  # both sides hold copies once loaded
        path = Path(tmp) / f"flux-{name}.safetensors"
        sd = write_checkpoint(params, path, args.seed)
        ours, theirs = loading.load_diffusion_model(str(path), "float32", "", "auto"), comfy_model(sd)
    del sd
    gen = torch.Generator().manual_seed(args.seed + 1)
    extra = {"pooled_output": torch.randn(1, params["vec_in_dim"], generator=gen), "guidance": args.guidance}
    positive = [[torch.randn(1, tokens, params["context_in_dim"], generator=gen), extra]]
    negative = [[torch.randn(1, tokens, params["context_in_dim"], generator=gen), dict(extra)]]
    latent, steps, seed = torch.zeros(1, 16, side, side), args.steps, args.seed

    def ksampler(model):
        image = comfy.sample.fix_empty_latent_channels(model, latent)
        return comfy.sample.sample(model, comfy.sample.prepare_noise(image, seed), steps, args.cfg, "euler",
                                   "simple", positive, negative, image, seed=seed, disable_pbar=True)

    def jaxsampler():
        return jax_sample(ours, seed, steps, args.cfg, args.guidance, 0.0, "euler", positive, negative,
                          {"samples": latent})["samples"]

    log(f"[{name}] compiling / first calls …")
    out = {k: v.float().numpy().astype(np.float64)
           for k, v in {A: ksampler(theirs), B: ksampler(ours), C: jaxsampler()}.items()}
    scale, checks, failures = float(np.abs(out[A]).max()), [], []
    for p, q in ((B, A), (C, A), (C, B)):
        diff = float(np.abs(out[p] - out[q]).max())
        ok = diff / scale <= AGREEMENT["float32"]
        checks.append([name, f"{p[:3]} vs {q[:3]}", f"{diff:.2e}", f"{diff / scale:.2e}",
                       "ok" if ok else "DIFFERENT"])
        if not ok:
            failures.append(f"{name}: {p} vs {q} max abs {diff:.2e} (rel {diff / scale:.2e})")

    # one step's inputs as KSampler hands them on (step 0's sigma, a noised latent, the conditioning)
    msp = theirs.get_model_object("model_sampling")
    sigma = comfy.samplers.calculate_sigmas(msp, "simple", steps)[:1].float()
    x = msp.noise_scaling(sigma, torch.randn(1, 16, side, side, generator=gen), latent)
    t, ctx, y = msp.timestep(sigma).float(), positive[0][0], extra["pooled_output"]
    g = torch.tensor([args.guidance])
    den = ours.model.diffusion_model.denoiser
    xn, tn, cn, yn, gn = (a.numpy() for a in (x, t, ctx, y, g))
    jax_forward = lambda: den(xn, tn, cn, y=yn, guidance=gn)
    stub = JaxFlux(registry.Entry(("stub",), load=None, obj=lambda *a, _out=jax_forward(), **k: _out),
                   torch.float32)
    stub_model = copy.copy(ours.model)  # shallow: the same BaseModel with the stub as its diffusion model
    object.__setattr__(stub_model, "_modules", dict(ours.model._modules, diffusion_model=stub))
    apply = lambda m: lambda: m.apply_model(x, sigma, c_crossattn=ctx, y=y, guidance=g)

    def repeat(fn, n):
        def run():
            with torch.inference_mode():
                for _ in range(n):
                    fn()
        return run

    calls = {S_DM: STUB_REPS * steps, S_APPLY: STUB_REPS * steps}
    rows = [Contender(A, lambda: ksampler(theirs)), Contender(B, lambda: ksampler(ours)),
            Contender(C, jaxsampler), Contender(F_TORCH, repeat(apply(theirs.model), steps)),
            Contender(F_JAX, repeat(jax_forward, steps)), Contender(F_APPLY, repeat(apply(ours.model), steps)),
            Contender(S_DM, repeat(lambda: stub(x, t, ctx, y=y, guidance=g), calls[S_DM])),
            Contender(S_APPLY, repeat(apply(stub_model), calls[S_APPLY]))]
    interleaved_rounds(rows, args.rounds, log=log)
    per = {c.name: (c.min_s / calls.get(c.name, steps), c.median_s / calls.get(c.name, steps)) for c in rows}
    a, b, c, fwd, boundary = per[A][0], per[B][0], per[C][0], per[F_JAX][0], per[S_DM][0]
    fmt = lambda v: ms(v) if abs(v) >= 1e-3 else f"{v * 1e3:.3f}"
    share = lambda part, whole: f"{100 * part / whole:.{1 if abs(part) >= 0.01 * whole else 2}f} %"
    pct = lambda part, whole: f"{fmt(part)} ms = {share(part, whole)}"
    first = lambda r, v: v if r.name == A else ""
    table = [[first(r, name), first(r, f"{(side // 2) ** 2}+{tokens}"), r.name, fmt(per[r.name][0]),
              fmt(per[r.name][1]), f"{a / per[r.name][0]:.2f}×" if r.name in (A, B, C) else "–",
              share(per[r.name][0], b)] for r in rows]
    overhead = [[name, pct(boundary, b), pct(per[S_APPLY][0] - boundary, b), pct(b - fwd, b), pct(c - fwd, c),
                 pct(a - per[F_TORCH][0], a)]]
    targets = [[name, f"{a / c:.2f}× {'PASS' if a >= c else 'FAIL'}",
                f"{share(boundary, b)} {'PASS' if boundary <= 0.05 * b else 'FAIL'}"]]
    del ours, theirs
    return dict(checks=checks, tables=table, overheads=overhead, targets=targets, failures=failures)


def main(argv=None) -> int:
    args = parse_args(argv)
    import_comfy(args.comfyui)
    import jax
    import torch

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # JaxSampler's out
    torch.set_num_threads(args.torch_threads)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if any(s not in SIZES for s in sizes):
        raise SystemExit(f"unknown size in {sizes}; choose from {', '.join(SIZES)}")
    res = {k: [] for k in ("checks", "tables", "overheads", "targets", "failures")}
    for name in sizes:
        for k, v in run_size(name, args, log).items():
            res[k] += v
    print(f"{cpu_model()}, {cpu_count()} cores; jax {jax.__version__} ({jax.default_backend()}), torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); float32, batch 1, euler / simple, "
          f"{args.steps} steps, cfg {args.cfg}, guidance {args.guidance}; min (median) of {args.rounds} "
          "interleaved rounds\n")
    print(markdown_table(["max |Δ| of sampled latents", "pair", "abs", "rel (/ max |a|)", ""],
                         res["checks"]) + "\n")
    print(markdown_table(["size", "tokens (img+txt)", "per denoising step", "min ms", "median ms",
                          "speed-up vs (a)", "of a (b) step"], res["tables"]) + "\n")
    print(markdown_table(["size", "torch↔numpy boundary, of (b)", "BaseModel wrapper, of (b)",
                          "(b) − JAX forward, of (b)", "(c) − JAX forward, of (c)",
                          "(a) − torch forward, of (a)"], res["overheads"]) + "\n")
    print(markdown_table(["size", "target: (c) ≥ 1.0× (a)", "target: boundary ≤ 5 % of a (b) step"],
                         res["targets"]))
    for f in res["failures"]:
        print(f"MISMATCH {f}", file=sys.stderr)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
