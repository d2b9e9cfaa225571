"""`jaxdiff bench`: time one denoising step of a released model shape with random weights.

What is timed is the step the pipelines run every iteration, jitted once and reused: for Flux
(`FluxPipeline.denoise_step`) one transformer forward + the FlowMatch Euler update; for Wan
(`WanPipeline.denoise_steps[0]`) the transformer on the [cond; uncond] batch (classifier-free
guidance, for presets that use it) + the UniPC update. Reported: device, model, shape, mesh,
attention kernel, compile time cold (empty persistent cache) and warm (same program, cache
populated), step time (median/min over `--repeats` after warm-up), images or frames per second for
a full `--steps` run (steps × median step, plus VAE decode with `--decode`), achieved TFLOP/s from
the analytical count of `benchmarks/flops.py`, MFU against the device's peak
(`pipelines/hardware.py`, or `--peak-tflops`), and peak device memory. A table on stdout, all fields
in `--json`.

    jaxdiff bench                                    # flux-dev shapes; reduced on CPU (see --shape)
    jaxdiff bench --model wan2.1-t2v-1.3b --json out/wan.json
    jaxdiff bench --model flux-dev --shape full --dtype bfloat16 --torch     # on an H100
    python -m jaxdiff.benchmarks.run --summarize out/*.json                  # one table from runs

`--shape auto` (default) runs the preset at full depth and resolution on GPU/TPU and a reduced
version on CPU, so that `jaxdiff bench` finishes in seconds there: Flux 1 double + 2 single blocks,
Wan 2 layers, 4 heads (width 512; Wan's FFN scaled with the width), 256×256 (Wan: 9 frames),
128 text tokens, float32. Every field can be overridden (`--layers`, `--heads`, `--height`, …).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import common, flops

DEFAULT_MODEL = "flux-dev"
SHAPES = ("auto", "full", "reduced")
INITS = ("auto", "host", "device")
# --shape reduced: what `jaxdiff bench` runs on CPU unless told otherwise
REDUCED = {
    "flux": dict(layers=1, single_layers=2, heads=4, height=256, width=256, text_tokens=128),
    "wan": dict(layers=2, heads=4, height=256, width=256, frames=9, text_tokens=128),
}
WAN_IMAGE_TOKENS = 257  # CLIP ViT-H/14 features per image (Wan 2.1 I2V)
FFN_MULTIPLE = 64  # Wan's FFN width, scaled with --heads, is rounded to this
FLUX_GUIDANCE, WAN_GUIDANCE = 3.5, 5.0
SIGMA = 0.5  # Flux: where in the schedule the timed step sits (the cost does not depend on it)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    f, w = REDUCED["flux"], REDUCED["wan"]  # --shape reduced, listed in --help
    reduced = (f"Flux {f['layers']} double + {f['single_layers']} single blocks, {f['heads']} heads, "
               f"{f['height']}×{f['width']}; Wan {w['layers']} layers, {w['heads']} heads, "
               f"{w['height']}×{w['width']}×{w['frames']} frames; {f['text_tokens']} text tokens, float32")
    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="PRESET",
                        help=f"released model shape from pipelines/presets.py (default {DEFAULT_MODEL}; "
                             "e.g. flux-schnell, wan2.1-t2v-1.3b, wan2.1-t2v-14b, wan2.2-ti2v-5b)")
    parser.add_argument("--shape", choices=SHAPES, default="auto",
                        help="full: the preset's depth, width and resolution; reduced: small sizes that "
                             f"run in seconds on a CPU ({reduced}); auto (default): full on "
                             "GPU/TPU, reduced on CPU")
    parser.add_argument("--layers", type=int, help="transformer blocks (Flux: double-stream)")
    parser.add_argument("--single-layers", type=int, help="Flux single-stream blocks")
    parser.add_argument("--heads", type=int,
                        help="attention heads (head dim kept, so this sets the width)")
    parser.add_argument("--ffn", type=int, help="Wan FFN width (default: the preset's, scaled with --heads)")
    parser.add_argument("--height", type=int, help="pixels (default: the preset's)")
    parser.add_argument("--width", type=int, help="pixels (default: the preset's)")
    parser.add_argument("--frames", type=int, help="Wan: pixel frames, 4k+1 (default: the preset's)")
    parser.add_argument("--batch", type=int, default=1, help="images/videos per step (default 1)")
    parser.add_argument("--text-tokens", type=int, help="text tokens (default: the preset's, 512)")
    parser.add_argument("--steps", type=int,
                        help="denoising steps of the run images/s is quoted for (default: the preset's)")
    parser.add_argument("--no-cfg", action="store_true",
                        help="Wan: one transformer pass per step instead of [cond; uncond]")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                        help="parameters and compute (default bfloat16 on GPU/TPU, float32 on CPU)")
    parser.add_argument("--mesh", metavar="SPEC",
                        help="device mesh, e.g. 'fsdp=4,tensor=2' or 'data=-1' (default: one device)")
    parser.add_argument("--attention", choices=("auto", "xla", "cudnn", "splash"), default="auto",
                        help="attention kernel (default auto: splash on TPU, cuDNN on GPU, else XLA)")
    parser.add_argument("--sequence-parallel", choices=("ulysses", "ring"),
                        help="split attention's sequence over the mesh's 'seq' axis")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--decode", action="store_true",
                        help="also time the VAE decode of one run's latents (random-weight VAE)")
    parser.add_argument("--end-to-end", action="store_true",
                        help="also run the whole pipeline call (--steps steps, + decode with --decode) "
                             "twice and report the second's wall time (text-to-image/video presets)")
    parser.add_argument("--torch", action="store_true",
                        help="also time the diffusers transformer (torch eager, same shapes and dtype, "
                             "its own random weights) and report its time over ours (needs [verify])")
    parser.add_argument("--torch-threads", type=int, metavar="N",
                        help="torch intra-op threads on CPU (default: this process's cores)")
    parser.add_argument("--peak-tflops", type=float, metavar="X",
                        help="peak TFLOP/s per device for MFU (default: pipelines/hardware.py's figure "
                             "for the device and dtype; none on CPU)")
    parser.add_argument("--init", choices=INITS, default="auto",
                        help="random weights drawn on the host (numpy) or on the device (jitted Flax "
                             "init); auto: host on CPU, device elsewhere")
    parser.add_argument("--seed", type=int, default=0, help="random weights and inputs (default 0)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every field here")
    parser.add_argument("--summarize", nargs="+", type=Path, metavar="JSON",
                        help="print one table from earlier --json files and exit (nothing is run)")
    parser.add_argument("--quiet", action="store_true", help="no progress log on stderr")


# ----------------------------------------------------------------------------- what to run


@dataclasses.dataclass
class Setup:
    """The resolved benchmark: preset with overrides applied, sizes and dtype."""

    preset: Any
    transformer: Any  # FluxConfig | WanConfig
    height: int
    width: int
    frames: int
    batch: int
    text_tokens: int
    steps: int
    dtype: str
    passes: int  # transformer batch multiple per step (2 with classifier-free guidance)
    expand_timesteps: bool
    reduced: bool
    seed: int = 0

    @property
    def family(self) -> str:
        return self.preset.family


def resolve(args, platform: str) -> Setup:
    """Preset + overrides → Setup; ValueError on an unknown preset or options that do not fit it."""
    from ..pipelines.presets import get_preset, image_tokens

    preset = get_preset(args.model)
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise ValueError(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    reduced = args.shape == "reduced" or (args.shape == "auto" and platform == "cpu")
    small = REDUCED[preset.family] if reduced else {}
    pick = lambda name, full: (getattr(args, name) if getattr(args, name, None) is not None
                               else small.get(name, full))
    config = preset.transformer
    for name in ("layers", "single_layers", "heads", "ffn", "height", "width", "frames", "batch",
                 "text_tokens", "steps", "repeats"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if preset.family == "flux":
        for name in ("ffn", "frames"):
            if getattr(args, name, None) is not None:
                raise ValueError(f"--{name} applies to Wan presets, not {preset.name}")
        config = dataclasses.replace(config, num_layers=pick("layers", config.num_layers),
                                     num_single_layers=pick("single_layers", config.num_single_layers),
                                     num_attention_heads=pick("heads", config.num_attention_heads))
        frames = 1
    else:
        if args.single_layers is not None:
            raise ValueError(f"--single-layers applies to Flux presets, not {preset.name}")
        heads = pick("heads", config.num_attention_heads)
        ffn = args.ffn or max(FFN_MULTIPLE, round(config.ffn_dim * heads / config.num_attention_heads
                                                  / FFN_MULTIPLE) * FFN_MULTIPLE)
        config = dataclasses.replace(config, num_layers=pick("layers", config.num_layers),
                                     num_attention_heads=heads, ffn_dim=ffn)
        frames = pick("frames", preset.frames)
    height, width = pick("height", preset.height), pick("width", preset.width)
    image_tokens(preset, height, width, frames)  # raises ValueError for sizes the latents do not fit
    multiple = preset.spatial_factor * 2  # Flux packs 2×2; Wan patches (1, 2, 2)
    if height % multiple or width % multiple:
        raise ValueError(f"{preset.name}: height and width must be multiples of {multiple}, "
                         f"got {height}×{width}")
    if (args.end_to_end and preset.family == "wan"
            and (config.in_channels != preset.vae.z_dim or config.image_dim is not None)):
        raise ValueError(f"--end-to-end runs text-to-video; {preset.name} is image-to-video")
    passes = 1 if preset.family == "flux" or args.no_cfg else preset.guidance_passes
    return Setup(preset=preset, transformer=config, height=height, width=width, frames=frames,
                 batch=args.batch, text_tokens=pick("text_tokens", preset.text_tokens),
                 steps=args.steps or preset.steps,
                 dtype=args.dtype or ("float32" if platform == "cpu" else "bfloat16"),
                 passes=passes, expand_timesteps=preset.expand_timesteps, reduced=reduced,
                 seed=args.seed)


def forward_flops(setup: Setup) -> dict[str, int]:
    """FLOPs of the transformer work in one step (all guidance passes)."""
    from ..pipelines.presets import image_tokens

    tokens = image_tokens(setup.preset, setup.height, setup.width, setup.frames)
    batch = setup.batch * setup.passes
    if setup.family == "flux":
        return flops.flux_forward(setup.transformer, batch=batch, image_tokens=tokens,
                                  text_tokens=setup.text_tokens)
    c = setup.transformer
    return flops.wan_forward(c, batch=batch, video_tokens=tokens, text_tokens=setup.text_tokens,
                             image_tokens=WAN_IMAGE_TOKENS if c.image_dim else 0,
                             timestep_tokens=tokens if setup.expand_timesteps else 1)


# ----------------------------------------------------------------------------- building


def build(make, init: str, mesh=None):
    """`make()`'s module with random weights: drawn by numpy on the host (`pipelines/cli.py`'s fast
    init, the default on CPU) or by the models' own initialisers in one jitted program. With `mesh`,
    parameters end up placed by their logical axes (`sharding.shard_module`'s placement); the device
    init creates each shard where it lives, so a model larger than one chip can be built."""
    from flax import nnx

    if init == "host":
        from ..models_flax.build import random_state

        graphdef, abstract = nnx.split(nnx.eval_shape(make))
        module = nnx.merge(graphdef, random_state(abstract, 0))
        if mesh is not None:
            from ..sharding import shard_module

            shard_module(module, mesh)
        return module
    if mesh is None:
        return nnx.jit(make)()
    import jax

    from ..sharding import named_shardings

    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    shardings = named_shardings(abstract, mesh)

    def init_state():
        state = nnx.state(make())
        for path, var in nnx.to_flat_state(state):
            var.set_value(jax.lax.with_sharding_constraint(var.get_value(), shardings[tuple(path)]))
        return state

    return nnx.merge(graphdef, jax.jit(init_state)())


def denoise_program(setup: Setup, transformer, vae, *, mesh=None, attention: str = "auto",
                    sequence_parallel: str | None = None):
    """(pipeline, jitted step, its arguments as a tuple, description) for the timed step.

    The pipeline is built with the mesh and attention options and the arguments are placed as its
    `__call__` places them (`pipe.placement`), so on a mesh the timed program is the pipeline's own;
    trace it inside `trace_context(pipe)`.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    rng = np.random.default_rng(1)
    normal = lambda *shape: rng.standard_normal(shape, np.float32)
    b, c = setup.batch, setup.transformer
    options = dict(mesh=mesh, attention=attention, sequence_parallel=sequence_parallel)
    if setup.family == "flux":
        from ..pipelines.flux import LATENT_AXES, FluxPipeline, latent_image_ids, pack_latents, text_ids

        pipe = FluxPipeline(transformer, vae, **options)
        put = pipe.placement.put
        h, w = setup.height // pipe.vae_scale_factor, setup.width // pipe.vae_scale_factor
        latents = pack_latents(pipe.prepare_latents(b, setup.height, setup.width, setup.seed))
        f32 = lambda x: put(np.float32(x))
        args = (nnx.state(transformer), put(latents, LATENT_AXES), f32(SIGMA), f32(SIGMA),
                f32(SIGMA - 1 / setup.steps), put(normal(b, setup.text_tokens, c.joint_attention_dim),
                                                  ("batch", None, None)),
                put(normal(b, c.pooled_projection_dim), ("batch", None)),
                put(latent_image_ids(h // 2, w // 2)), put(text_ids(setup.text_tokens)),
                put(np.full((b,), FLUX_GUIDANCE, np.float32), ("batch",)) if c.guidance_embeds else None)
        return pipe, pipe.denoise_step, args, "transformer forward + FlowMatch Euler update"

    from ..pipelines.wan import LATENT_AXES, WanPipeline

    pipe = WanPipeline(transformer, vae, expand_timesteps=setup.expand_timesteps, **options)
    put = pipe.placement.put
    shape = pipe.latent_shape(b, setup.height, setup.width, setup.frames)
    _, t_lat, h_lat, w_lat = shape[1:]
    timesteps, sched = pipe.schedule(setup.steps, shape)
    latents = jax.random.normal(jax.random.key(setup.seed), shape, jnp.float32)
    latents, sched = pipe.place_like_latents((latents, sched), shape, put)
    text = lambda: put(normal(b, setup.text_tokens, c.text_dim), ("batch", None, None))
    prompt = text()
    negative = text() if setup.passes == 2 else None
    image_embeds = put(normal(b, WAN_IMAGE_TOKENS, c.image_dim), ("batch", None, None)) if c.image_dim else None
    condition = token_mask = None
    if c.in_channels != pipe.num_channels_latents:  # I2V: [mask, image latents] on channels
        condition = put(np.zeros((b, c.in_channels - pipe.num_channels_latents, t_lat, h_lat, w_lat),
                                 np.float32), LATENT_AXES)
    if setup.expand_timesteps:
        _, ph, pw = c.patch_size
        token_mask = put(np.ones((t_lat * (h_lat // ph) * (w_lat // pw),), np.float32))
    args = (nnx.state(transformer), latents, sched, put(np.float32(timesteps[0])), prompt, negative,
            image_embeds, condition, None, token_mask, put(np.float32(WAN_GUIDANCE)))
    what = ("transformer forward on the [cond; uncond] batch (CFG) + UniPC update" if setup.passes == 2
            else "transformer forward + UniPC update")
    return pipe, pipe.denoise_steps[0], args, what


def trace_context(pipe):
    """The scope the pipeline traces its denoise step in (attention options, activation sharding)."""
    from ..pipelines.placement import attention_context

    return attention_context(pipe.attention, pipe.sequence_parallel, pipe.mesh)


# ----------------------------------------------------------------------------- measuring


def compile_cold_warm(fn, fn_args) -> tuple[Any, float, float]:
    """(compiled, cold s, warm s): compile into an empty persistent cache, then again from it.

    The cache directory is a fresh temporary one (removed after); the cache setting in force before
    is restored. `timed_compile` clears jax's in-memory caches, so both are what a new process pays.
    """
    from ..pipelines.compile_cache import cache_dir_in_use, enable_compile_cache, timed_compile

    before = cache_dir_in_use()
    directory = Path(tempfile.mkdtemp(prefix="jaxdiff-bench-cache-"))
    try:
        enable_compile_cache(directory, min_compile_seconds=0.0)
        compiled, cold = timed_compile(fn, *fn_args)
        _, warm = timed_compile(fn, *fn_args)
    finally:
        enable_compile_cache(before if before is not None else "off")  # also closes the temporary dir
        shutil.rmtree(directory, ignore_errors=True)
    return compiled, cold, warm


def peak_memory(compiled) -> tuple[int | None, str]:
    """(bytes, source): the device's `peak_bytes_in_use` where the runtime reports it (GPU/TPU),
    else XLA's `memory_analysis()` of the step (arguments + temporaries + outputs, per device)."""
    peak = common.jax_peak_bytes()
    if peak:
        return int(peak), "device peak_bytes_in_use"
    xla = common.xla_memory(compiled)
    if xla:
        return sum(xla.values()), "XLA memory_analysis (arguments + outputs + temporaries)"
    return None, "unavailable"


def peak_tflops(device: dict, dtype: str, override: float | None) -> tuple[float | None, str]:
    """(per-device peak TFLOP/s, source) for MFU."""
    if override is not None:
        return override, "--peak-tflops"
    from ..pipelines.hardware import match_device_kind

    accelerator = match_device_kind(device["device_kind"])
    if accelerator is None:
        return None, f"no peak known for {device['device_kind']!r} (pass --peak-tflops)"
    return accelerator.peak_tflops(dtype), f"pipelines/hardware.py {accelerator.name} {dtype}"


def utilisation(flop_count: float, seconds: float, peak: float | None, devices: int) -> dict[str, Any]:
    """Achieved TFLOP/s and MFU (achieved / (peak per device × devices); None without a peak)."""
    achieved = flop_count / seconds / 1e12
    return {"achieved_tflops": achieved,
            "mfu": None if peak is None else achieved / (peak * devices)}


def throughput(flop_count: float, seconds: float, device: dict, dtype: str, *,
               peak_override: float | None = None, devices: int = 1) -> dict[str, Any]:
    """`utilisation` with the peak looked up for `device` (a `common.device_info()` dict), plus the
    peak's source and MFU as printable text: what flux_bench/wan_bench add to their tables."""
    peak, source = peak_tflops(device, dtype, peak_override)
    rates = utilisation(flop_count, seconds, peak, devices)
    return dict(rates, peak_tflops_per_device=peak, peak_source=source,
                mfu_text="n/a" if rates["mfu"] is None else f"{rates['mfu']:.1%}")


def torch_contender(setup: Setup, log, threads: int | None = None) -> common.Contender:
    """diffusers' transformer in torch eager, on the GPU when JAX runs on one (else the host CPU),
    at the batch our step runs the transformer on (×2 with CFG)."""
    import jax
    import numpy as np
    import torch

    torch.set_num_threads(threads or common.cpu_count())
    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = getattr(torch, setup.dtype)
    c = setup.transformer
    rng = np.random.default_rng(2)
    normal = lambda *shape: rng.standard_normal(shape, np.float32)
    b = setup.batch * setup.passes
    if setup.family == "flux":
        from diffusers import FluxTransformer2DModel

        from ..pipelines.flux import latent_image_ids, text_ids

        h, w = setup.height // 16, setup.width // 16  # packed grid
        inputs = dict(hidden_states=normal(b, h * w, c.in_channels),
                      encoder_hidden_states=normal(b, setup.text_tokens, c.joint_attention_dim),
                      pooled_projections=normal(b, c.pooled_projection_dim),
                      timestep=np.full((b,), SIGMA, np.float32), img_ids=latent_image_ids(h, w),
                      txt_ids=text_ids(setup.text_tokens),
                      guidance=np.full((b,), FLUX_GUIDANCE, np.float32) if c.guidance_embeds else None)
        cls = FluxTransformer2DModel
    else:
        from diffusers import WanTransformer3DModel

        from ..pipelines.presets import latent_shape

        _, _, t, h, w = latent_shape(setup.preset, setup.height, setup.width, setup.frames)
        inputs = dict(hidden_states=normal(b, c.in_channels, t, h, w),
                      timestep=np.full((b,), 500.0, np.float32),
                      encoder_hidden_states=normal(b, setup.text_tokens, c.text_dim))
        if c.image_dim:
            inputs["encoder_hidden_states_image"] = normal(b, WAN_IMAGE_TOKENS, c.image_dim)
        cls = WanTransformer3DModel
    torch.manual_seed(setup.seed)
    start = time.perf_counter()
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # no float32 copy first: Flux-dev's would be 48 GB
    try:
        with torch.device(device):  # initialise where it runs: a host init of 12 B parameters takes minutes
            model = cls(**setup.transformer.to_dict()).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    log(f"torch: built {cls.__name__} on {device} in {time.perf_counter() - start:.1f} s")
    contender, _ = common.eager_contender(model, inputs, dtype, device)
    contender.memory["torch_device"] = str(device)
    return contender


# ----------------------------------------------------------------------------- the run


def device_facts(mesh_devices: int) -> dict[str, Any]:
    facts = common.device_info()
    facts["devices_used"] = mesh_devices
    return facts


def bench(args, log) -> dict[str, Any]:
    """Runs the benchmark `args` describe; returns the result dict (what `--json` writes)."""
    if args.torch:  # torch and JAX share the GPU: JAX must not grab 75 % of it up front
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    platform = jax.default_backend()
    setup = resolve(args, platform)
    mesh = None
    if args.mesh:
        from ..sharding import make_mesh

        mesh = make_mesh(args.mesh)
    elif args.sequence_parallel:
        raise ValueError("--sequence-parallel needs --mesh with a 'seq' axis, e.g. --mesh seq=-1")
    n_devices = mesh.devices.size if mesh is not None else 1
    device = device_facts(n_devices)
    init = args.init if args.init != "auto" else ("host" if platform == "cpu" else "device")
    param_dtype = jnp.dtype(setup.dtype)
    preset, c = setup.preset, setup.transformer

    # -- models
    if setup.family == "flux":
        from ..models_flax.flux import FluxTransformer2DModel as Transformer
        from ..models_flax.vae_kl import AutoencoderKL as VAE
    else:
        from ..models_flax.vae_wan import AutoencoderKLWan as VAE
        from ..models_flax.wan import WanTransformer3DModel as Transformer
    start = time.perf_counter()
    transformer = build(lambda: Transformer(c, param_dtype=param_dtype, rngs=nnx.Rngs(args.seed)), init,
                        mesh)
    init_s = time.perf_counter() - start
    make_vae = lambda: VAE(preset.vae, param_dtype=param_dtype, rngs=nnx.Rngs(args.seed))
    vae = build(make_vae, init) if args.decode else nnx.eval_shape(make_vae)  # abstract: config only
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(transformer, nnx.Param)))
    log(f"{preset.name}: {n_params / 1e6:.1f} M parameters ({setup.dtype}), {init} init in {init_s:.1f} s")

    # -- the step: compile cold/warm, then time it
    pipe, step_fn, step_args, what = denoise_program(setup, transformer, vae, mesh=mesh,
                                                     attention=args.attention,
                                                     sequence_parallel=args.sequence_parallel)
    with trace_context(pipe):
        compiled, cold_s, warm_s = compile_cold_warm(step_fn, step_args)
    log(f"compiled: cold {cold_s:.1f} s, warm {warm_s:.1f} s")
    ours = common.Contender(common.OURS, lambda: jax.block_until_ready(compiled(*step_args)),
                            compile_s=cold_s, memory={"xla": common.xla_memory(compiled)},
                            hlo=common.hlo_stats(compiled))
    contenders = [ours]
    if args.torch:
        contenders.append(torch_contender(setup, log, args.torch_threads))
    common.interleaved_rounds(contenders, args.repeats, warmup=args.warmup, log=log)
    memory_bytes, memory_source = peak_memory(compiled)

    # -- decode (optional)
    decode_s = None
    if args.decode:
        out = compiled(*step_args)  # Flux: latents; Wan: (latents, scheduler state)
        decode_s = time_decode(setup, pipe, vae, out if setup.family == "flux" else out[0], log)

    # -- derived figures
    terms = forward_flops(setup)
    step_flops = flops.total(terms)
    peak, peak_source = peak_tflops(device, setup.dtype, args.peak_tflops)
    end_to_end_s = None
    if args.end_to_end:  # the pipeline applies its own attention options and placement
        end_to_end_s = time_end_to_end(setup, pipe, step_args, args.decode, log)
    estimate_s = setup.steps * ours.median_s + (decode_s or 0.0)
    run_s = estimate_s if end_to_end_s is None else end_to_end_s
    per_run = setup.batch * (setup.frames if setup.family == "wan" else 1)
    from ..pipelines.presets import image_tokens

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "model": {"preset": preset.name, "family": setup.family, "reduced": setup.reduced,
                  "config": c.to_dict(), "parameters": int(n_params), "init": init, "init_s": init_s},
        "shape": {"batch": setup.batch, "height": setup.height, "width": setup.width,
                  "frames": setup.frames, "text_tokens": setup.text_tokens,
                  "image_tokens": image_tokens(preset, setup.height, setup.width, setup.frames),
                  "latents": list(step_args[1].shape)},
        "dtype": setup.dtype, "mesh": args.mesh, "attention": args.attention,
        "sequence_parallel": args.sequence_parallel,
        "step": what, "transformer_batch": setup.batch * setup.passes,
        "compile_s": {"cold": cold_s, "warm": warm_s},
        "step_s": {"median": ours.median_s, "min": ours.min_s, "times": ours.times},
        "steps": setup.steps, "decode_s": decode_s, "run_s": run_s,
        "run_measured": end_to_end_s is not None, "run_estimate_s": estimate_s,
        "unit": "frames" if setup.family == "wan" else "images",
        "per_second": per_run / run_s,
        "flops": {"step": step_flops, "terms": terms,
                  "xla_cost_analysis": (ours.hlo or {}).get("flops")},
        "peak_tflops_per_device": peak, "peak_source": peak_source,
        **utilisation(step_flops, ours.median_s, peak, n_devices),
        "memory": {"peak_bytes": memory_bytes, "source": memory_source,
                   "xla": ours.memory.get("xla"), "host_peak_rss_mib": common.peak_rss_mib()},
        "command": command_line(args),
    }
    if args.torch:
        eager = contenders[1]
        result["torch"] = {"name": common.EAGER, "device": eager.memory.get("torch_device"),
                           "median_s": eager.median_s, "min_s": eager.min_s, "times": eager.times,
                           "what": "diffusers transformer forward only (no scheduler update)",
                           "speedup_median": eager.median_s / ours.median_s,
                           "speedup_min": eager.min_s / ours.min_s,
                           **utilisation(step_flops, eager.median_s, peak, 1)}
    return result


def time_end_to_end(setup: Setup, pipe, step_args: tuple, decode: bool, log) -> float:
    """Wall seconds of the pipeline's own `__call__` (the second call; the first compiles), with the
    step's prompt embeddings; images or frames come back as numpy, so the work is done on return."""
    output_type = "np" if decode else "latent"
    if setup.family == "flux":
        prompt, pooled = step_args[5], step_args[6]
        call = lambda: pipe(prompt, pooled, height=setup.height, width=setup.width,
                            num_inference_steps=setup.steps, guidance_scale=FLUX_GUIDANCE,
                            seed=setup.seed, output_type=output_type)
    else:
        prompt, negative = step_args[4], step_args[5]
        call = lambda: pipe(prompt, negative, height=setup.height, width=setup.width,
                            num_frames=setup.frames, num_inference_steps=setup.steps,
                            guidance_scale=WAN_GUIDANCE if setup.passes == 2 else 1.0, seed=setup.seed,
                            output_type=output_type)
    first, _ = common.timed(call)
    seconds, _ = common.timed(call)
    log(f"end to end: first call {first:.1f} s (compiles), then {seconds:.2f} s")
    return seconds


def time_decode(setup: Setup, pipe, vae, latents, log) -> float:
    """Seconds to decode one step's output (the first call compiles and is not counted)."""
    import jax
    from flax import nnx

    if setup.family == "flux":
        h, w = setup.height // pipe.vae_scale_factor, setup.width // pipe.vae_scale_factor
        raw = pipe.to_raw(latents, h, w)
    else:
        raw = pipe.to_raw(latents)
    decode = lambda: pipe.decode(raw)  # numpy: done when it returns
    first, _ = common.timed(decode)
    seconds, _ = common.timed(decode)
    log(f"decode: first call {first:.1f} s (compiles), then {seconds:.2f} s")
    return seconds


# ----------------------------------------------------------------------------- reporting


TABLE_HEADERS = ("model", "shape", "dtype", "device", "mesh", "attention", "compile cold s",
                 "compile warm s", "step median ms", "step min ms", "run s", "per s", "TFLOP/s", "MFU",
                 "peak mem MiB", "torch eager / ours")


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table_row(result: dict[str, Any]) -> tuple:
    """One row of the summary table for a result dict (as `bench` returns or `--json` wrote)."""
    m, s, c = result["model"], result["shape"], result["model"]["config"]
    if m["family"] == "flux":
        depth = f"{c['num_layers']}+{c['num_single_layers']} blocks"
        size = f"{s['height']}×{s['width']}"
    else:
        depth = f"{c['num_layers']} layers"
        size = f"{s['frames']}×{s['height']}×{s['width']}"
    width = c["num_attention_heads"] * c["attention_head_dim"]
    d = result["device"]
    mfu = result.get("mfu")
    t = result.get("torch")
    return (f"{m['preset']} ({depth}, D={width})",
            f"{size}, b{s['batch']}, {s['image_tokens']}+{s['text_tokens']} tok",
            result["dtype"], f"{d['device_kind']} ×{d['devices_used']}", result["mesh"] or "–",
            result["attention"], _fmt(result["compile_s"]["cold"], ".1f"),
            _fmt(result["compile_s"]["warm"], ".1f"), _fmt(result["step_s"]["median"] * 1e3, ".1f"),
            _fmt(result["step_s"]["min"] * 1e3, ".1f"),
            f"{result['run_s']:.2f} ({result['steps']} steps{' + decode' if result['decode_s'] else ''}"
            f"{', measured' if result.get('run_measured') else ''})",
            f"{result['per_second']:.3g} {result['unit']}",
            _fmt(result["achieved_tflops"], ".3g"), "n/a" if mfu is None else f"{mfu:.1%}",
            _fmt(None if result["memory"]["peak_bytes"] is None else result["memory"]["peak_bytes"] / common.MIB,
                 ".0f"),
            f"{t['speedup_median']:.2f}× ({t['device']})" if t else "–")


def summary_table(results: list[dict[str, Any]]) -> str:
    return common.markdown_table(TABLE_HEADERS, [table_row(r) for r in results])


def report(result: dict[str, Any]) -> str:
    """The printed report: the table, then what each figure means for this run."""
    d = result["device"]
    lines = [summary_table([result]), "",
             f"device: {d['backend']} {d['device_kind']} ×{d['device_count']} (using {d['devices_used']}), "
             f"host {d['cpu_model']} ({d['cpu_cores']} cores), jax {d['jax']}",
             f"step: {result['step']}, transformer batch {result['transformer_batch']}; "
             f"{result['flops']['step'] / 1e9:.1f} GFLOP analytical"
             + (f" (XLA cost analysis {result['flops']['xla_cost_analysis'] / 1e9:.1f}"
                + (" per device)" if result["mesh"] else ")")
                if result["flops"].get("xla_cost_analysis") else ""),
             f"MFU: median step vs {result['peak_source']}"
             + (f" = {result['peak_tflops_per_device']:g} TFLOP/s per device"
                if result["peak_tflops_per_device"] else ""),
             f"memory: {result['memory']['source']}; host peak RSS "
             f"{result['memory']['host_peak_rss_mib']:.0f} MiB"]
    if result["model"]["reduced"]:
        lines.append("shape: reduced (CPU default; --shape full for the released sizes)")
    t = result.get("torch")
    if t:
        lines.append(f"{t['name']} on {t['device']}: median {t['median_s'] * 1e3:.1f} ms, min "
                     f"{t['min_s'] * 1e3:.1f} ms ({t['what']}); torch / ours: {t['speedup_median']:.2f}× "
                     f"by median, {t['speedup_min']:.2f}× by min")
    return "\n".join(lines)


def command_line(args: argparse.Namespace) -> str:
    """`jaxdiff bench` with the options of `args` that differ from their defaults."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    words = ["jaxdiff", "bench"]
    for name, default in defaults.items():
        value = getattr(args, name, default)
        if value == default or name == "summarize":
            continue
        flag = "--" + name.replace("_", "-")
        words += [flag] if value is True else [flag, str(value)]
    return " ".join(words)


def run(args: argparse.Namespace) -> int:
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        if args.summarize:
            results = []
            for path in args.summarize:
                if not path.is_file():
                    raise FileNotFoundError(f"--summarize: no such file {path}")
                results.append(json.loads(path.read_text()))
            print(summary_table(results))
            return 0
        if args.torch:  # fail before building anything, not after our half has run
            try:
                import torch  # noqa: F401
                import diffusers  # noqa: F401
            except ImportError as e:
                raise ValueError(f"--torch needs the verify extra: pip install 'jaxdiff[verify]' ({e})") from e
        result = bench(args, log)
    except (ValueError, FileNotFoundError) as e:
        print(f"jaxdiff bench: error: {e}", file=sys.stderr)
        return 2
    print(report(result))
    if args.json:
        common.write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxdiff.benchmarks.run",
                                     description=__doc__.splitlines()[0], allow_abbrev=False)
    add_arguments(parser)
    argv = sys.argv[1:] if argv is None else argv
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
