"""`jaxdiff bench`: time one denoising step of a released model shape with random weights.

What is timed is the step the pipelines run every iteration, jitted once and reused, exactly as the
pipeline runs it (its `step_program`, pipelines/loop.py `StepProgram`): for Flux one transformer
forward + the FlowMatch Euler update; for Wan the transformer on the [cond; uncond] batch
(classifier-free guidance, for presets that use it) + the UniPC update. Reported: device, model,
shape, mesh, attention kernel, compile time cold (empty persistent cache) and warm (same program,
cache populated), step time (median/min over `--repeats` after warm-up), images or frames per
second for a full `--steps` run (steps × median step, plus VAE decode with `--decode`), achieved
TFLOP/s from the analytical count of `benchmarks/flops.py`, MFU against the device's peak
(`pipelines/hardware.py`, or `--peak-tflops`), and peak device memory. A table on stdout, all fields
in `--json`.

    jaxdiff bench                                    # flux-dev shapes; reduced on CPU (see --shape)
    jaxdiff bench --model wan2.1-t2v-1.3b --json out/wan.json
    jaxdiff bench --model flux-dev --shape full --dtype bfloat16 --torch     # on an H100
    python -m jaxdiff.benchmarks.run --summarize out/*.json                  # one table from runs

`--shape auto` (default) runs the preset at full depth and resolution on GPU/TPU and a reduced
version on CPU, so that `jaxdiff bench` finishes in seconds there (each family row's `reduced` in
`jaxdiff.families`): Flux 1 double + 2 single blocks, Wan 2 layers, 4 heads (width 512; an FFN
width scales with the heads), 256×256 (Wan: 9 frames), 128 text tokens, float32. Every field can be
overridden (`--layers`, `--heads`, `--height`, …).

Nothing here knows a family: models, pipeline, FLOP count and torch reference come from the
registry row of the preset's family; `--layers`/`--single-layers`/`--heads`/`--ffn` set the config
fields `CONFIG_FLAGS` names (a preset whose config lacks the field refuses the flag).
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

from .. import families
from . import common, flops

DEFAULT_MODEL = "flux-dev"
SHAPES = ("auto", "full", "reduced")
INITS = ("auto", "host", "device")
# flag (argparse dest) -> the transformer config field it sets
CONFIG_FLAGS = {"layers": "num_layers", "single_layers": "num_single_layers",
                "heads": "num_attention_heads", "ffn": "ffn_dim"}
SIZE_FIELDS = ("height", "width", "frames", "text_tokens")  # `Family.reduced` keys that are sizes
FFN_MULTIPLE = 64  # an FFN width scaled with --heads (Wan's) is rounded to this
UNITS = {"image": "images", "video": "frames"}  # what `per_second` counts, by the family's output


def reduced_sizes() -> dict[str, dict[str, Any]]:
    """`--shape reduced` per family from the registry rows' `reduced`, config fields named by their
    flags (`layers`, `single_layers`, `heads`, `ffn`), sizes as they are."""
    flag_of = {field: flag for flag, field in CONFIG_FLAGS.items()}
    return {row.name: {flag_of.get(k, k): v for k, v in row.reduced.items()}
            for row in families.FAMILIES.values() if row.reduced}


def __getattr__(name: str):
    if name == "REDUCED":  # the registry's reduced sizes now (rows may be registered after import)
        return reduced_sizes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _describe_reduced(sizes: dict[str, Any], text_tokens: bool) -> str:
    """'1 double + 2 single blocks, 4 heads, 256×256' for one `reduced_sizes()` entry."""
    words = []
    if "layers" in sizes and "single_layers" in sizes:
        words.append(f"{sizes['layers']} double + {sizes['single_layers']} single blocks")
    elif "layers" in sizes:
        words.append(f"{sizes['layers']} layers")
    elif "single_layers" in sizes:
        words.append(f"{sizes['single_layers']} single blocks")
    for key in ("heads", "ffn"):
        if key in sizes:
            words.append(f"{sizes[key]} {key.upper() if key == 'ffn' else key}")
    if "height" in sizes and "width" in sizes:
        words.append(f"{sizes['height']}×{sizes['width']}"
                     + (f"×{sizes['frames']} frames" if "frames" in sizes else ""))
    if text_tokens and "text_tokens" in sizes:
        words.append(f"{sizes['text_tokens']} text tokens")
    known = {"layers", "single_layers", "heads", "ffn", *SIZE_FIELDS}
    words += [f"{k} {v}" for k, v in sizes.items() if k not in known]
    return ", ".join(words)


def reduced_help() -> str:
    """The `--shape reduced` sizes of every family, in words (for `--help`)."""
    rows = reduced_sizes()
    texts = {r.get("text_tokens") for r in rows.values()}
    shared = len(texts) == 1 and None not in texts  # said once at the end
    parts = [f"{name.capitalize()} {_describe_reduced(r, not shared)}" for name, r in rows.items()]
    return "; ".join(parts) + (f"; {texts.pop()} text tokens" if shared else "") + ", float32"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    reduced = reduced_help()  # --shape reduced, listed in --help
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
    transformer: Any  # the family's transformer config, overrides applied
    height: int
    width: int
    frames: int  # pixel frames (1 for images)
    batch: int
    text_tokens: int
    steps: int
    dtype: str
    guidance: float  # the pipeline's guidance scale (1.0 with --no-cfg: one pass per step)
    expand_timesteps: bool
    reduced: bool
    seed: int = 0

    @property
    def family(self) -> str:
        return self.preset.family

    @property
    def row(self) -> families.Family:
        return self.preset.row


def _config_fields(row: families.Family) -> set[str]:
    config_cls, _ = row.transformer.classes()
    return {f.name for f in dataclasses.fields(config_cls)}


def _families_where(keep) -> str:
    """'Flux or Wan': the registered families `keep(row)` is true for."""
    return " or ".join(row.name.capitalize() for row in families.FAMILIES.values() if keep(row)) or "no"


def _transformer_config(args, preset, small: dict[str, Any]):
    """The preset's transformer config with the reduced row's fields and the flags applied; widths
    derived from the model width (`ffn_dim`, `added_kv_proj_dim`) follow the heads unless given (the
    head dim is kept, so heads set the width)."""
    config = preset.transformer
    fields = _config_fields(preset.row)
    for flag, field in CONFIG_FLAGS.items():
        if getattr(args, flag, None) is not None and field not in fields:
            raise ValueError(f"--{flag.replace('_', '-')} applies to "
                             f"{_families_where(lambda row: field in _config_fields(row))} presets, "
                             f"not {preset.name}")
    changes = {k: v for k, v in small.items() if k not in SIZE_FIELDS}
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ValueError(f"family {preset.family!r}: reduced names {', '.join(unknown)}, which "
                         f"{type(config).__name__} does not have")
    changes.update({field: getattr(args, flag) for flag, field in CONFIG_FLAGS.items()
                    if getattr(args, flag, None) is not None})
    if "num_attention_heads" in fields:
        heads, full = changes.get("num_attention_heads", config.num_attention_heads), config.num_attention_heads
        if "ffn_dim" in fields and "ffn_dim" not in changes:
            changes["ffn_dim"] = max(FFN_MULTIPLE, round(config.ffn_dim * heads / full / FFN_MULTIPLE)
                                     * FFN_MULTIPLE)
        # the image K/V projections' input is the model width (Wan 2.1 I2V: 5120 = 40 × 128)
        if getattr(config, "added_kv_proj_dim", None) is not None and "added_kv_proj_dim" not in changes:
            changes["added_kv_proj_dim"] = config.added_kv_proj_dim * heads // full
    return dataclasses.replace(config, **changes)


def resolve(args, platform: str) -> Setup:
    """Preset + overrides → Setup; ValueError on an unknown preset or options that do not fit it
    (checked by the family's pipeline on shape-only models, before anything is built)."""
    from ..pipelines.presets import get_preset, image_tokens

    preset = get_preset(args.model)
    row = preset.row
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise ValueError(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    reduced = args.shape == "reduced" or (args.shape == "auto" and platform == "cpu")
    small = dict(row.reduced) if reduced else {}
    pick = lambda name, full: (getattr(args, name) if getattr(args, name, None) is not None
                               else small.get(name, full))
    for name in ("layers", "single_layers", "heads", "ffn", "height", "width", "frames", "batch",
                 "text_tokens", "steps", "repeats"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.frames is not None and row.output != "video":
        raise ValueError(f"--frames applies to {_families_where(lambda r: r.output == 'video')} presets, "
                         f"not {preset.name}")
    if row.flops is None:
        raise ValueError(f"family {row.name!r} has no FLOP count (families.Family.flops)")
    if args.torch and row.transformer.torch_class is None:
        raise ValueError(f"--torch: {row.transformer.name} has no torch reference class")
    config = _transformer_config(args, preset, small)
    frames = pick("frames", preset.frames)
    height, width = pick("height", preset.height), pick("width", preset.width)
    image_tokens(preset, height, width, frames)  # raises ValueError for sizes the latents do not fit
    dtype = args.dtype or ("float32" if platform == "cpu" else "bfloat16")
    pipe = pipeline(preset, *abstract_models(row, config, preset.vae, dtype))
    try:
        pipe.check_inputs(height, width, frames if pipe.output == "video" else None)
    except ValueError as e:
        raise ValueError(f"{preset.name}: {e}") from None
    no_cfg = args.no_cfg and preset.guidance_passes > 1  # guidance-distilled models keep theirs
    setup = Setup(preset=preset, transformer=config, height=height, width=width, frames=frames,
                  batch=args.batch, text_tokens=pick("text_tokens", preset.text_tokens),
                  steps=args.steps or preset.steps, dtype=dtype,
                  guidance=1.0 if no_cfg else pipe.defaults()["guidance"],
                  expand_timesteps=preset.expand_timesteps, reduced=reduced, seed=args.seed)
    if args.end_to_end:
        try:
            pipe.check_call(**call_arguments(setup, pipe, "latent"))
        except ValueError as e:
            raise ValueError(f"--end-to-end runs text-to-{pipe.output}; {preset.name} is "
                             f"image-to-{pipe.output}: {e}") from None
    return setup


def call_arguments(setup: Setup, pipe, output_type: str) -> dict[str, Any]:
    """The pipeline `__call__` keywords of a text-to-image/video run at the setup's sizes, on the
    pipeline's stand-in embeddings (`random_conditioning`, repeated to the batch)."""
    conditioning = {k: None if v is None else v.repeat(setup.batch, axis=0)
                    for k, v in pipe.random_conditioning(setup.seed, setup.text_tokens).items()}
    kwargs = dict(conditioning, height=setup.height, width=setup.width,
                  num_inference_steps=setup.steps, guidance_scale=setup.guidance, seed=setup.seed,
                  output_type=output_type)
    if pipe.output == "video":
        kwargs["num_frames"] = setup.frames
    return kwargs


def forward_flops(setup: Setup, sizes: families.Sizes) -> dict[str, int]:
    """FLOPs of the transformer work in one step (`sizes`: the step's transformer call, all guidance
    passes in its batch), by the family row's count."""
    return families.call(setup.row.flops, setup.transformer, sizes)


# ----------------------------------------------------------------------------- building


def build(model_cls, config, dtype: str, init: str, mesh=None, seed: int = 0):
    """`model_cls(config)` with random weights: drawn by numpy on the host (models_flax/build.py's
    `random_module`, the default on CPU) or by the models' own initialisers in one jitted program.
    With `mesh`, parameters end up placed by their logical axes (`sharding.shard_module`'s
    placement); the device init creates each shard where it lives, so a model larger than one chip
    can be built."""
    import jax.numpy as jnp
    from flax import nnx

    if init == "host":
        from ..models_flax.build import random_module

        module = random_module(model_cls, config, dtype, seed)
        if mesh is not None:
            from ..sharding import shard_module

            shard_module(module, mesh)
        return module
    make = lambda: model_cls(config, param_dtype=jnp.dtype(dtype), rngs=nnx.Rngs(seed))
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


def abstract_module(model_cls, config, dtype: str):
    """`model_cls(config)` with shape-only parameters (nothing allocated)."""
    from flax import nnx

    from ..models_flax.build import abstract_split

    return nnx.merge(*abstract_split(model_cls, config, dtype))


def abstract_models(row: families.Family, transformer_config, vae_config, dtype: str) -> tuple:
    """(transformer, VAE) of the family with shape-only parameters."""
    return tuple(abstract_module(families.resolve(kind.model_class), config, dtype)
                 for kind, config in zip(row.models, (transformer_config, vae_config)))


def pipeline(preset, transformer, vae, **options):
    """The family's pipeline over the models, with its default scheduler; the preset's per-token
    timesteps flag goes in as the `model_index.json` entry a checkpoint would carry."""
    pipeline_cls = families.resolve(preset.row.pipeline)
    return pipeline_cls.from_models(transformer, vae, pipeline_cls.default_scheduler(transformer.config),
                                    index={"expand_timesteps": preset.expand_timesteps}, **options)


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


def torch_contender(setup: Setup, sizes: families.Sizes, log, threads: int | None = None) -> common.Contender:
    """The family's torch reference transformer (`ModelKind.torch_class`, diffusers) in eager mode, on
    the GPU when JAX runs on one (else the host CPU), on the model's example inputs at the sizes of
    our step's transformer call (`sizes`: batch ×2 with CFG)."""
    import jax
    import torch

    torch.set_num_threads(threads or common.cpu_count())
    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = getattr(torch, setup.dtype)
    kind = setup.row.transformer
    cls = families.resolve(kind.torch_class)
    inputs = families.call(kind.example_inputs, setup.transformer, sizes, setup.seed)
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
    preset, row, c = setup.preset, setup.row, setup.transformer

    # -- models: the family row's classes, random weights
    _, transformer_cls = row.transformer.classes()
    _, vae_cls = row.vae.classes()
    start = time.perf_counter()
    transformer = build(transformer_cls, c, setup.dtype, init, mesh, seed=args.seed)
    init_s = time.perf_counter() - start
    vae = (build(vae_cls, preset.vae, setup.dtype, init, seed=args.seed) if args.decode
           else abstract_module(vae_cls, preset.vae, setup.dtype))  # abstract: config only
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(transformer, nnx.Param)))
    log(f"{preset.name}: {n_params / 1e6:.1f} M parameters ({setup.dtype}), {init} init in {init_s:.1f} s")

    # -- the step (the pipeline's own program): compile cold/warm, then time it
    pipe = pipeline(preset, transformer, vae, mesh=mesh, attention=args.attention,
                    sequence_parallel=args.sequence_parallel)
    program = pipe.step_program(setup.batch, setup.height, setup.width,
                                setup.frames if pipe.output == "video" else None, setup.text_tokens,
                                setup.steps, setup.seed, guidance_scale=setup.guidance)
    with trace_context(pipe):
        compiled, cold_s, warm_s = compile_cold_warm(program.step, program.args)
    log(f"compiled: cold {cold_s:.1f} s, warm {warm_s:.1f} s")
    ours = common.Contender(common.OURS, lambda: jax.block_until_ready(compiled(*program.args)),
                            compile_s=cold_s, memory={"xla": common.xla_memory(compiled)},
                            hlo=common.hlo_stats(compiled))
    contenders = [ours]
    if args.torch:
        contenders.append(torch_contender(setup, program.sizes, log, args.torch_threads))
    common.interleaved_rounds(contenders, args.repeats, warmup=args.warmup, log=log)
    memory_bytes, memory_source = peak_memory(compiled)

    # -- decode (optional)
    decode_s = None
    if args.decode:
        decode_s = time_decode(pipe, program.raw(compiled(*program.args)), log)

    # -- derived figures
    terms = forward_flops(setup, program.sizes)
    step_flops = flops.total(terms)
    peak, peak_source = peak_tflops(device, setup.dtype, args.peak_tflops)
    end_to_end_s = None
    if args.end_to_end:  # the pipeline applies its own attention options and placement
        end_to_end_s = time_end_to_end(setup, pipe, args.decode, log)
    estimate_s = setup.steps * ours.median_s + (decode_s or 0.0)
    run_s = estimate_s if end_to_end_s is None else end_to_end_s
    per_run = setup.batch * setup.frames
    from ..pipelines.presets import image_tokens

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "model": {"preset": preset.name, "family": setup.family, "reduced": setup.reduced,
                  "config": c.to_dict(), "parameters": int(n_params), "init": init, "init_s": init_s},
        "shape": {"batch": setup.batch, "height": setup.height, "width": setup.width,
                  "frames": setup.frames, "text_tokens": setup.text_tokens,
                  "image_tokens": image_tokens(preset, setup.height, setup.width, setup.frames),
                  "latents": list(program.args[1].shape)},
        "dtype": setup.dtype, "mesh": args.mesh, "attention": args.attention,
        "sequence_parallel": args.sequence_parallel,
        "step": program.what, "transformer_batch": program.sizes.batch,
        "compile_s": {"cold": cold_s, "warm": warm_s},
        "step_s": {"median": ours.median_s, "min": ours.min_s, "times": ours.times},
        "steps": setup.steps, "decode_s": decode_s, "run_s": run_s,
        "run_measured": end_to_end_s is not None, "run_estimate_s": estimate_s,
        "unit": UNITS[row.output],
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


def time_end_to_end(setup: Setup, pipe, decode: bool, log) -> float:
    """Wall seconds of the pipeline's own `__call__` (the second call; the first compiles) on its
    stand-in embeddings; images or frames come back as numpy, so the work is done on return."""
    kwargs = call_arguments(setup, pipe, "np" if decode else "latent")
    call = lambda: pipe(**kwargs)
    first, _ = common.timed(call)
    seconds, _ = common.timed(call)
    log(f"end to end: first call {first:.1f} s (compiles), then {seconds:.2f} s")
    return seconds


def time_decode(pipe, raw, log) -> float:
    """Seconds of the pipeline's `decode` of raw latents (the first call compiles and is not counted)."""
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
    details = []  # depth and width, by the config fields the model has
    if "num_single_layers" in c:  # double- and single-stream blocks
        details.append(f"{c['num_layers']}+{c['num_single_layers']} blocks")
    elif "num_layers" in c:
        details.append(f"{c['num_layers']} layers")
    if "num_attention_heads" in c and "attention_head_dim" in c:
        details.append(f"D={c['num_attention_heads'] * c['attention_head_dim']}")
    size = f"{s['height']}×{s['width']}"
    if result["unit"] == UNITS["video"]:
        size = f"{s['frames']}×{size}"
    d = result["device"]
    mfu = result.get("mfu")
    t = result.get("torch")
    return (f"{m['preset']} ({', '.join(details)})" if details else m["preset"],
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
