"""Child process of tests/test_sharded_pipelines.py: tiny Flux and Wan pipelines on 8 fake CPU devices.

Sets XLA_FLAGS before jax is imported, so run it as its own process. For each family it runs the
unsharded pipeline once (batch 8, a few steps, decoded) and then the same run with the modules placed
by `sharding.shard_module` and `mesh=` given, under data=8, fsdp=4×tensor=2, and (when
kernels/sequence_parallel.py exists) seq=2 / seq=4 with ulysses and ring attention and data=2×seq=4
with ulysses; it records the max
abs difference of the final latents to the unsharded run, of the sharded VAE's decode of the
unsharded final latents to the unsharded images/frames (the Wan VAE amplifies the fp32 rounding in
the latents about 4×, so pixels are compared per stage; Flux end-to-end pixels are recorded too),
whether each denoise step compiled
once, and how often the sequence-parallel kernel was traced. Then `jaxdiff generate --mesh …` runs end
to end for both families. Prints one JSON line prefixed `RESULT `. Never imports torch.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "  # compile-time flags: tiny models
                           "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
os.environ["JAXDIFF_COMPILE_CACHE"] = "off"

import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxdiff.models_flax.flux import FluxConfig, FluxTransformer2DModel  # noqa: E402
from jaxdiff.models_flax.vae_kl import AutoencoderKL, AutoencoderKLConfig  # noqa: E402
from jaxdiff.models_flax.vae_wan import AutoencoderKLWan, WanVAEConfig  # noqa: E402
from jaxdiff.models_flax.wan import WanConfig, WanTransformer3DModel  # noqa: E402
from jaxdiff.pipelines import flux as flux_pipeline  # noqa: E402
from jaxdiff.pipelines import wan as wan_pipeline  # noqa: E402
from jaxdiff.pipelines.flux import FluxPipeline  # noqa: E402
from jaxdiff.pipelines.placement import to_host  # noqa: E402
from jaxdiff.pipelines.wan import WanPipeline  # noqa: E402
from jaxdiff.sharding import make_mesh, shard_module  # noqa: E402

BATCH = 8
STEPS = 3
WEIGHT_STD = 0.05
TEXT_TOKENS = 8
# name → (mesh spec, devices, sequence_parallel, decode?)
CASES = {
    "data8": ("data=8", 8, None, True),
    "fsdp4_tensor2": ("fsdp=4,tensor=2", 8, None, True),
    "seq2_ulysses": ("seq=2", 2, "ulysses", False),
    "seq2_ring": ("seq=2", 2, "ring", False),
    "seq4_ulysses": ("seq=4", 4, "ulysses", False),
    "seq4_ring": ("seq=4", 4, "ring", False),
    "data2_seq4_ulysses": ("data=2,seq=4", 8, "ulysses", False),
}
HAVE_SEQUENCE_PARALLEL = importlib.util.find_spec("jaxdiff.kernels.sequence_parallel") is not None

# Flux: 4 heads (divisible by seq=4 for ulysses); VAE factor 2 → 16×16 pixels = 8×8 latents = 16 tokens,
# + 8 text tokens = 24 joint tokens (divisible by 2 and 4).
FLUX = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32,
            guidance_embeds=True, axes_dims_rope=(4, 4, 8))
FLUX_VAE = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                use_post_quant_conv=False)
FLUX_SIZE = 16
# Wan: 4 heads; 9 frames of 32×32 → 3 latent frames of 4×4 → 3·2·2 = 12 tokens (divisible by 2, 4).
WAN = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=12, in_channels=16,
           out_channels=16, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
           qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)
WAN_VAE = dict(base_dim=3, z_dim=16, dim_mult=(1, 1, 1, 1), num_res_blocks=1,
               temperal_downsample=(False, True, True))
WAN_SIZE, WAN_FRAMES = 32, 9


def _init(path, leaf, rng):
    """N(0, 0.05²) weights and biases, 1 + N(0, 0.05²) norm scales, N(0, 1/fan_in) conv kernels."""
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    name = [n for n in names if isinstance(n, str) and n != "value"][-1]
    noise = rng.standard_normal(leaf.shape)
    if name in ("scale", "gamma"):
        value = 1.0 + WEIGHT_STD * noise
    elif len(leaf.shape) > 2:
        value = noise / math.sqrt(math.prod(leaf.shape[:-1]))
    else:
        value = WEIGHT_STD * noise
    return value.astype(np.float32)


def build(make, seed: int):
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    rng = np.random.default_rng(seed)
    state = jax.tree_util.tree_map_with_path(lambda p, leaf: jnp.asarray(_init(p, leaf, rng)), abstract)
    return graphdef, state


def flux_models():
    def make():
        rngs = nnx.Rngs(0)
        return (FluxTransformer2DModel(FluxConfig(**FLUX), rngs=rngs),
                AutoencoderKL(AutoencoderKLConfig(**FLUX_VAE), rngs=rngs))

    rng = np.random.default_rng(10)
    inputs = (rng.standard_normal((BATCH, TEXT_TOKENS, 32), np.float32),
              rng.standard_normal((BATCH, 32), np.float32))
    return build(make, 1), inputs


def wan_models():
    def make():
        rngs = nnx.Rngs(0)
        return (WanTransformer3DModel(WanConfig(**WAN), rngs=rngs),
                AutoencoderKLWan(WanVAEConfig(**WAN_VAE), rngs=rngs))

    rng = np.random.default_rng(11)
    inputs = (rng.standard_normal((BATCH, TEXT_TOKENS, 16), np.float32),
              rng.standard_normal((BATCH, TEXT_TOKENS, 16), np.float32))
    return build(make, 2), inputs


SP_CALLS = [0]  # sequence_parallel_attention calls (at trace time)
if HAVE_SEQUENCE_PARALLEL:
    from jaxdiff.kernels import sequence_parallel as _sp

    _sp_attention = _sp.sequence_parallel_attention

    def _counted(*args, **kwargs):
        SP_CALLS[0] += 1
        return _sp_attention(*args, **kwargs)

    _sp.sequence_parallel_attention = _counted


def run_flux(pipe, inputs, decode: bool):
    out = pipe(*inputs, height=FLUX_SIZE, width=FLUX_SIZE, num_inference_steps=STEPS, seed=3,
               output_type="np" if decode else "latent")
    return out.latents, out.images, [pipe.denoise_step._cache_size()]


def decode_flux(pipe, latents):
    side = FLUX_SIZE // pipe.vae_scale_factor
    placed = pipe.placement.put(latents, flux_pipeline.LATENT_AXES)
    return pipe.decode(pipe.to_raw(placed, side, side))


def run_wan(pipe, inputs, decode: bool):
    out = pipe(*inputs, height=WAN_SIZE, width=WAN_SIZE, num_frames=WAN_FRAMES,
               num_inference_steps=STEPS, guidance_scale=5.0, seed=3,
               output_type="np" if decode else "latent")
    return out.latents, out.frames, [step._cache_size() for step in pipe.denoise_steps]


def decode_wan(pipe, latents):
    return pipe.decode(pipe.to_raw(pipe.placement.put(latents, wan_pipeline.LATENT_AXES)))


def run_family(name: str) -> dict:
    (graphdef, state), inputs = flux_models() if name == "flux" else wan_models()
    make_pipe, run, decode_only = ((FluxPipeline, run_flux, decode_flux) if name == "flux"
                                   else (WanPipeline, run_wan, decode_wan))
    t0 = time.perf_counter()
    ref_latents, ref_images, _ = run(make_pipe(*nnx.merge(graphdef, state)), inputs, True)
    results = {"ref_seconds": time.perf_counter() - t0,
               "ref_latents_abs_max": float(np.abs(ref_latents).max()),
               "ref_images_std": float(np.std(ref_images)), "cases": {}}
    for case, (spec, n, sequence_parallel, decode) in CASES.items():
        if sequence_parallel and not HAVE_SEQUENCE_PARALLEL:
            results["cases"][case] = {"skipped": "kernels/sequence_parallel.py not present"}
            continue
        t0 = time.perf_counter()
        try:
            mesh = make_mesh(spec, devices=jax.devices()[:n])
            copy = jax.tree.map(jnp.copy, state)  # merge shares Variables: keep `state` unsharded
            transformer, vae = nnx.merge(graphdef, copy)
            shard_module(transformer, mesh)
            shard_module(vae, mesh)
            pipe = make_pipe(transformer, vae, mesh=mesh, sequence_parallel=sequence_parallel)
            SP_CALLS[0] = 0
            end_to_end = decode and name == "flux"
            latents, images, cache_sizes = run(pipe, inputs, end_to_end)
            entry = {"latents_diff": float(np.abs(latents - ref_latents).max()),
                     "cache_sizes": cache_sizes, "host_numpy": isinstance(latents, np.ndarray),
                     "compile_status": pipe.compile_stats.status,
                     "sequence_parallel_calls": SP_CALLS[0],
                     "latents_sharding": str(pipe.placement.put(latents, pipe_axes(name)).sharding.spec)}
            if end_to_end:
                entry["images_diff_end_to_end"] = float(np.abs(images - ref_images).max())
            if decode:
                entry["decode_diff"] = float(np.abs(decode_only(pipe, ref_latents) - ref_images).max())
        except Exception as exc:  # reported, so one failing case does not hide the others
            entry = {"error": f"{type(exc).__name__}: {exc}"[:2000],
                     "traceback": traceback.format_exc()[-3000:]}
        entry["seconds"] = time.perf_counter() - t0
        results["cases"][case] = entry
    return results


def pipe_axes(name: str):
    return (flux_pipeline if name == "flux" else wan_pipeline).LATENT_AXES


def run_cli(argv: list[str]) -> dict:
    from jaxdiff import cli

    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
    out = Path(argv[argv.index("--out") + 1])
    return {"code": code, "stderr": err.getvalue()[-3000:], "exists": out.is_file(),
            "bytes": out.stat().st_size if out.is_file() else 0, "seconds": time.perf_counter() - t0}


def main() -> None:
    start = time.perf_counter()
    assert len(jax.devices()) == 8, jax.devices()
    results = {"have_sequence_parallel": HAVE_SEQUENCE_PARALLEL}
    for family in ("flux", "wan"):
        results[family] = run_family(family)
    with tempfile.TemporaryDirectory() as tmp:
        results["cli"] = {
            "flux": run_cli(["generate", "--mesh", "fsdp=4,tensor=2", "--steps", "2", "--height",
                             "32", "--width", "32", "--out", f"{tmp}/flux.png"]),
        }
        # 5 frames of 32×32: 2 latent frames × 2×2 = 8 tokens, split over seq=8
        wan = ["generate", "--family", "wan", "--steps", "2", "--frames", "5", "--height", "32",
               "--width", "32", "--out", f"{tmp}/wan.mp4", "--mesh"]
        results["cli"]["wan"] = run_cli(wan + (["seq=8", "--sequence-parallel", "ring"]
                                               if HAVE_SEQUENCE_PARALLEL else ["data=2,fsdp=4"]))
    results["seconds"] = time.perf_counter() - start
    results["torch_imported"] = "torch" in sys.modules
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
