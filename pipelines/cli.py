"""`jaxdiff generate`: sample a Flux image to a PNG, or a Wan video to an MP4 / animated WebP.

With no `--model`, an embedded default runs: a tiny random-weight transformer and VAE built
in-process from a fixed seed, with random prompt embeddings, so the whole path (denoise loop,
decode, file) runs in seconds — Flux by default, Wan with `--family wan` (text-to-video, or
image-to-video with `--image`). With `--model PATH` the real model is loaded by
`jaxdiff.load_model` and the prompt comes as precomputed embeddings (`--prompt-embeds`).

Scale: `--mesh data=2,fsdp=2,tensor=2` places the model (loaded straight onto the mesh, or the
embedded one by `sharding.shard_module`) and the inputs over a device mesh; `--attention` picks the
attention kernel; `--sequence-parallel ulysses|ring` splits attention over the mesh's `seq` axis;
`--distributed` initialises multi-host jax (one process per host, same command on every host). The
persistent XLA compile cache is on by default (`--compile-cache DIR|off`, `$JAXDIFF_COMPILE_CACHE`);
the compile time of the denoise step is printed with cold / warm.

Top-level imports stay light (no jax) so `jaxdiff --help` is fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

FAMILIES = ("flux", "wan")
DEFAULT_OUT = "out/jaxdiff.png"
DEFAULT_VIDEO_OUT = "out/jaxdiff.mp4"
PROMPT_KEYS = ("prompt_embeds", "pooled_prompt_embeds")
WAN_PROMPT_KEY, WAN_NEGATIVE_KEY, WAN_IMAGE_KEY = "prompt_embeds", "negative_prompt_embeds", "image_embeds"
FLUX_GUIDANCE, WAN_GUIDANCE = 3.5, 5.0
EMBEDDED_SIZE = 64  # pixels
EMBEDDED_STEPS = 4
MODEL_SIZE = 1024
DEV_STEPS, SCHNELL_STEPS = 28, 4
EMBEDDED_WEIGHT_SEED = 0  # the embedded model's weights never change; --seed moves noise and prompt
EMBEDDED_TEXT_TOKENS = 8
# Tiny Flux-dev-shaped transformer: 16 latent channels × 2×2 packing, head dim 16 = sum(axes).
EMBEDDED_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
    axes_dims_rope=(4, 6, 6))
# Tiny Flux-shaped VAE: 4 blocks → spatial factor 8, 16 latent channels, Flux scale/shift.
EMBEDDED_VAE = dict(
    block_out_channels=(16, 16, 32, 32), layers_per_block=1, latent_channels=16,
    norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.3611, shift_factor=0.1159,
    use_quant_conv=False, use_post_quant_conv=False)
# Embedded Wan: 9 frames (3 latent frames) of 64×64 (8×8 latents → 4×4 tokens per latent frame).
EMBEDDED_WAN_FRAMES = 9
EMBEDDED_WAN_STEPS = 4
# Tiny Wan 2.1 T2V-shaped transformer (diffusers' test sizes) on 16 latent channels; the I2V variant
# (with --image) takes noise + 4 mask + image latents = 36 channels, like Wan 2.2 A14B I2V.
EMBEDDED_WAN_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
    out_channels=16, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)
EMBEDDED_WAN_I2V_CHANNELS = 36
# Tiny Wan 2.1 VAE (diffusers' test config): z 16, spatial /8, temporal /4, Wan 2.1 latent stats.
EMBEDDED_WAN_VAE = dict(base_dim=3, z_dim=16, dim_mult=(1, 1, 1, 1), num_res_blocks=1,
                        temperal_downsample=(False, True, True))
WAN_SIZE = (480, 832)  # height, width with --model (diffusers' WanPipeline defaults)
WAN_FRAMES, WAN_STEPS = 81, 50
WAN_FPS, WAN_TI2V_FPS = 16, 24
# kernels/attention.py IMPLEMENTATIONS / SEQUENCE_PARALLEL (not imported here: it imports jax)
ATTENTION_CHOICES = ("auto", "xla", "cudnn", "splash")
SEQUENCE_PARALLEL_CHOICES = ("ulysses", "ring")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=FAMILIES, default="flux",
                        help="flux (text-to-image, default) or wan (text/image-to-video)")
    parser.add_argument("--model", metavar="PATH",
                        help="transformer (diffusers dir, single-file .safetensors or converted "
                             "checkpoint) or a diffusers pipeline dir holding transformer/ (Wan 2.2 "
                             "A14B: also transformer_2/) and vae/; omit for the embedded tiny "
                             "random-weight default")
    parser.add_argument("--vae", metavar="PATH",
                        help="VAE (required with --model unless PATH holds vae/)")
    parser.add_argument("--scheduler-config", metavar="PATH",
                        help="scheduler_config.json (default: PATH/scheduler/ if present, else "
                             "FLUX.1-dev's when the model has guidance embeddings, schnell's if not; "
                             "Wan: UniPC flow, shift 3)")
    parser.add_argument("--prompt-embeds", metavar="FILE",
                        help=".safetensors or .npz; Flux: 'prompt_embeds' [B, S, D] and "
                             "'pooled_prompt_embeds' [B, P]; Wan: 'prompt_embeds' [B, S, D], "
                             "'negative_prompt_embeds' (for guidance > 1) and, for Wan 2.1 I2V, "
                             "CLIP-vision 'image_embeds' [1, S_img, 1280] (required with --model)")
    parser.add_argument("--height", type=int,
                        help=f"pixels, a multiple of 16 (32 for Wan TI2V-5B) (default "
                             f"{EMBEDDED_SIZE} embedded; with --model Flux {MODEL_SIZE}, Wan "
                             f"{WAN_SIZE[0]} or the --image size)")
    parser.add_argument("--width", type=int,
                        help=f"pixels, like --height (Wan with --model: {WAN_SIZE[1]})")
    parser.add_argument("--steps", type=int,
                        help=f"denoising steps (default {EMBEDDED_STEPS} embedded; with --model "
                             f"Flux {DEV_STEPS} for dev, {SCHNELL_STEPS} for schnell; Wan "
                             f"{WAN_STEPS})")
    parser.add_argument("--guidance", type=float,
                        help=f"Flux: guidance scale for models with guidance embeddings (default "
                             f"{FLUX_GUIDANCE}); Wan: classifier-free guidance scale, on when > 1 "
                             f"(default {WAN_GUIDANCE}; the high-noise expert's for A14B)")
    parser.add_argument("--guidance-2", type=float,
                        help="Wan 2.2 A14B: guidance of the low-noise expert (default --guidance)")
    parser.add_argument("--frames", type=int,
                        help=f"Wan: frames, 4k + 1 (default {EMBEDDED_WAN_FRAMES} embedded, "
                             f"{WAN_FRAMES} with --model)")
    parser.add_argument("--image", metavar="FILE",
                        help="Wan: first frame for image-to-video (resized to the video size)")
    parser.add_argument("--sampler", choices=("unipc", "euler"),
                        help="Wan: UniPC (flow) or FlowMatch Euler (default: the scheduler "
                             "config's, else UniPC)")
    parser.add_argument("--fps", type=float,
                        help=f"Wan: frames per second of the file (default {WAN_FPS}; "
                             f"{WAN_TI2V_FPS} for TI2V-5B)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--out",
                        help=f"output file (default {DEFAULT_OUT} for Flux, {DEFAULT_VIDEO_OUT} for "
                             "Wan; Wan writes .mp4 (H.264) or .webp by extension; a batch writes "
                             "NAME_i.EXT)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                        help="parameter/compute dtype (default float32 embedded, the checkpoint's "
                             "with --model)")
    scale = parser.add_argument_group("scale")
    scale.add_argument("--mesh", metavar="SPEC",
                       help="device mesh, e.g. 'data=8', 'fsdp=4,tensor=2', 'data=2,seq=4' (axes "
                            "data, fsdp, tensor, seq; sizes multiply to the device count, one may be "
                            "-1 for the rest); default: one device")
    scale.add_argument("--attention", choices=ATTENTION_CHOICES,
                       help="attention kernel: auto (default: splash on TPU, cuDNN on GPU where "
                            "shapes allow, else XLA), xla, cudnn, splash")
    scale.add_argument("--sequence-parallel", choices=SEQUENCE_PARALLEL_CHOICES,
                       help="split attention over the --mesh 'seq' axis: ulysses (all-to-all; heads "
                            "must divide by the seq size) or ring (any head count)")
    scale.add_argument("--distributed", action="store_true",
                       help="multi-host: call jax.distributed.initialize() first; run the same "
                            "command once per host (coordinator detected on Cloud TPU / SLURM / "
                            "Open MPI; --mesh then spans all hosts' devices); process 0 writes "
                            "the file")
    scale.add_argument("--compile-cache", metavar="DIR|off",
                       help="persistent XLA compile cache (default: $JAXDIFF_COMPILE_CACHE, else "
                            "~/.cache/jaxdiff/xla); 'off' disables it")
    scale.add_argument("--export-step", metavar="PATH",
                       help="Flux, one device: also write the denoise step at this run's shapes as "
                            "a jax.export file (weights as arguments; pipelines/export.py "
                            "load_exported_step reads it)")


class GenerationError(RuntimeError):
    """The sampled image is unusable (NaN/inf)."""


# ----------------------------------------------------------------------------- inputs


def _read_arrays(path: Path) -> dict:
    """All arrays of a `.safetensors` or `.npz` file (`--prompt-embeds`)."""
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"--prompt-embeds: no such file {path}")
    if path.suffix == ".safetensors":
        from safetensors.flax import load_file  # handles bfloat16, which numpy cannot

        return load_file(str(path))
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    raise ValueError(f"--prompt-embeds: {path} must be .safetensors or .npz")


def load_wan_embeds(path: str | os.PathLike) -> dict:
    """`{prompt_embeds [B, S, D], negative_prompt_embeds [B, S', D] | None, image_embeds
    [B', S_img, D_img] | None}` float32 numpy from a file; unbatched arrays get a batch axis of 1."""
    import numpy as np

    path = Path(path)
    arrays = _read_arrays(path)
    if WAN_PROMPT_KEY not in arrays:
        raise ValueError(f"--prompt-embeds: {path} lacks key {WAN_PROMPT_KEY} (found: "
                         f"{', '.join(sorted(arrays)) or 'none'})")
    out = {}
    for key in (WAN_PROMPT_KEY, WAN_NEGATIVE_KEY, WAN_IMAGE_KEY):
        if key not in arrays:
            out[key] = None
            continue
        value = np.asarray(arrays[key], dtype=np.float32)
        value = value[None] if value.ndim == 2 else value
        if value.ndim != 3:
            raise ValueError(f"--prompt-embeds: {path}: {key} must be [B, S, D], got {value.shape}")
        out[key] = value
    return out


def load_prompt_embeds(path: str | os.PathLike):
    """`(prompt_embeds [B, S, D], pooled_prompt_embeds [B, P])` float32 numpy from a file.

    Unbatched arrays (`[S, D]`, `[P]`) get a batch axis of 1.
    """
    import numpy as np

    path = Path(path)
    arrays = _read_arrays(path)
    missing = [k for k in PROMPT_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"--prompt-embeds: {path} lacks key(s) {', '.join(missing)} "
                         f"(found: {', '.join(sorted(arrays)) or 'none'})")
    prompt, pooled = (np.asarray(arrays[k], dtype=np.float32) for k in PROMPT_KEYS)
    if prompt.ndim == 2:
        prompt = prompt[None]
    if pooled.ndim == 1:
        pooled = pooled[None]
    if prompt.ndim != 3 or pooled.ndim != 2 or prompt.shape[0] != pooled.shape[0]:
        raise ValueError(f"--prompt-embeds: {path}: expected prompt_embeds [B, S, D] and "
                         f"pooled_prompt_embeds [B, P], got {prompt.shape} and {pooled.shape}")
    return prompt, pooled


def _host_init(path, leaf, rng):
    """Init value for one parameter, mirroring models_flax/layers.py (bias 0, norm scale / Wan VAE
    `gamma` 1, kernels N(0, 0.02²) for Linear and N(0, 1/fan_in) for Conv), drawn with numpy."""
    import math

    import numpy as np

    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    name = [n for n in names if isinstance(n, str) and n != "value"][-1]
    if name == "bias":
        value = np.zeros(leaf.shape)
    elif name in ("scale", "gamma"):
        value = np.ones(leaf.shape)
    else:
        std = 0.02 if len(leaf.shape) <= 2 else 1.0 / math.sqrt(math.prod(leaf.shape[:-1]))
        value = std * rng.standard_normal(leaf.shape)
    return value.astype(np.float32)


def build_from_host(make):
    """`make()`'s modules built abstractly and filled by `_host_init` from a fixed-seed numpy RNG:
    eager (or jitted) jax.random init of a few hundred small parameters costs ~20 s of
    dispatch/compile on CPU, numpy well under a second."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    rng = np.random.default_rng(EMBEDDED_WEIGHT_SEED)
    state = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(_host_init(path, leaf, rng), leaf.dtype), abstract)
    return nnx.merge(graphdef, state)


def build_embedded(dtype: str = "float32"):
    """The embedded default: (tiny random Flux transformer, tiny random VAE), fixed seed."""
    import jax.numpy as jnp
    from flax import nnx

    from ..models_flax.flux import FluxConfig, FluxTransformer2DModel
    from ..models_flax.vae_kl import AutoencoderKL, AutoencoderKLConfig

    param_dtype = jnp.dtype(dtype)

    def make():
        rngs = nnx.Rngs(EMBEDDED_WEIGHT_SEED)
        return (FluxTransformer2DModel(FluxConfig(**EMBEDDED_TRANSFORMER),
                                       param_dtype=param_dtype, rngs=rngs),
                AutoencoderKL(AutoencoderKLConfig(**EMBEDDED_VAE), param_dtype=param_dtype,
                              rngs=rngs))

    return build_from_host(make)


def random_prompt_embeds(seed: int, config):
    """Stand-in text conditioning for the embedded model: N(0, 1) from `seed`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    prompt = rng.standard_normal((1, EMBEDDED_TEXT_TOKENS, config.joint_attention_dim), np.float32)
    pooled = rng.standard_normal((1, config.pooled_projection_dim), np.float32)
    return prompt, pooled


def _model_paths(args) -> tuple[Path, Path, Path | None]:
    """(transformer path, vae path, scheduler config or None) from --model/--vae/--scheduler-config."""
    model = Path(args.model)
    if not model.exists():
        raise FileNotFoundError(f"--model: no such file or directory {model}")
    vae = Path(args.vae) if args.vae else None
    scheduler = Path(args.scheduler_config) if args.scheduler_config else None
    root = model if (model / "transformer").is_dir() else None  # a diffusers pipeline dir
    if root is None and model.is_dir() and (model.parent / "scheduler").is_dir():
        root = model.parent  # .../FLUX.1-dev/transformer
    if (model / "transformer").is_dir():
        model = model / "transformer"
    if vae is None and root is not None and (root / "vae").is_dir():
        vae = root / "vae"
    if vae is None:
        raise ValueError("--vae PATH is required with --model (or point --model at a diffusers "
                         "pipeline dir holding transformer/ and vae/)")
    if not vae.exists():
        raise FileNotFoundError(f"--vae: no such file or directory {vae}")
    if scheduler is None and root is not None and (root / "scheduler").is_dir():
        scheduler = root / "scheduler"
    return model, vae, scheduler


def load_models(args, mesh=None):
    """(transformer, vae, scheduler config) for --model, loaded with `jaxdiff.load_model` (straight
    onto `mesh` when given)."""
    from .. import load_model
    from ..schedulers.flow_match import (FLUX_DEV_SCHEDULER_CONFIG, FLUX_SCHNELL_SCHEDULER_CONFIG,
                                         FlowMatchEulerConfig)

    model_path, vae_path, scheduler_path = _model_paths(args)
    transformer = load_model(model_path, dtype=args.dtype, mesh=mesh)
    if not hasattr(getattr(transformer, "config", None), "guidance_embeds"):
        raise ValueError(f"--model {model_path} loaded as {type(transformer).__name__}, "
                         "not a Flux transformer")
    vae = load_model(vae_path, dtype=args.dtype, mesh=mesh)
    if not hasattr(vae, "unscale_latents"):
        raise ValueError(f"--vae {vae_path} loaded as {type(vae).__name__}, not a Flux VAE")
    if scheduler_path is not None:
        scheduler = FlowMatchEulerConfig.from_json(scheduler_path)
    elif transformer.config.guidance_embeds:
        scheduler = FLUX_DEV_SCHEDULER_CONFIG
    else:
        scheduler = FLUX_SCHNELL_SCHEDULER_CONFIG
    return transformer, vae, scheduler


# ----------------------------------------------------------------------------- Wan inputs


def build_embedded_wan(dtype: str = "float32", *, image_to_video: bool = False):
    """The embedded Wan default: (tiny random transformer, tiny random Wan 2.1 VAE), fixed seed.

    `image_to_video` gives the transformer 36 input channels (noise + mask + image latents).
    Built abstractly and filled from numpy, like `build_embedded`.
    """
    import jax.numpy as jnp
    from flax import nnx

    from ..models_flax.vae_wan import AutoencoderKLWan, WanVAEConfig
    from ..models_flax.wan import WanConfig, WanTransformer3DModel

    param_dtype = jnp.dtype(dtype)
    transformer_config = dict(EMBEDDED_WAN_TRANSFORMER)
    if image_to_video:
        transformer_config["in_channels"] = EMBEDDED_WAN_I2V_CHANNELS

    def make():
        rngs = nnx.Rngs(EMBEDDED_WEIGHT_SEED)
        return (WanTransformer3DModel(WanConfig(**transformer_config), param_dtype=param_dtype,
                                      rngs=rngs),
                AutoencoderKLWan(WanVAEConfig(**EMBEDDED_WAN_VAE), param_dtype=param_dtype,
                                 rngs=rngs))

    return build_from_host(make)


def random_wan_embeds(seed: int, config) -> dict:
    """Stand-in text conditioning for the embedded Wan: prompt and negative N(0, 1) from `seed`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (1, EMBEDDED_TEXT_TOKENS, config.text_dim)
    return {WAN_PROMPT_KEY: rng.standard_normal(shape, np.float32),
            WAN_NEGATIVE_KEY: rng.standard_normal(shape, np.float32), WAN_IMAGE_KEY: None}


def load_image(path: str | os.PathLike, height: int | None = None, width: int | None = None):
    """An RGB image file → uint8 `[H, W, 3]`, resized (Lanczos, like diffusers' preprocessing) to
    `height` × `width` when given."""
    import numpy as np
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--image: no such file {path}")
    with Image.open(path) as image:
        image = image.convert("RGB")
        if height and width and image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        return np.asarray(image)


def _image_size(path: str | os.PathLike, multiple: int) -> tuple[int, int]:
    """(height, width) of an image file rounded down to `multiple` (diffusers does the same)."""
    from PIL import Image

    if not Path(path).is_file():
        raise FileNotFoundError(f"--image: no such file {path}")
    with Image.open(path) as image:
        width, height = image.size
    return max(multiple, height // multiple * multiple), max(multiple, width // multiple * multiple)


def _wan_model_paths(args):
    """(transformer, transformer_2 or None, vae, scheduler config or None, model_index dict)."""
    import json

    model, vae, scheduler = _model_paths(args)
    given = Path(args.model)
    root = given if (given / "transformer").is_dir() else None
    if root is None and given.is_dir() and (given.parent / "scheduler").is_dir():
        root = given.parent
    transformer_2 = root / "transformer_2" if root is not None else None
    if transformer_2 is not None and not transformer_2.is_dir():
        transformer_2 = None
    index = {}
    if root is not None and (root / "model_index.json").is_file():
        with open(root / "model_index.json", encoding="utf-8") as f:
            index = json.load(f)
    return model, transformer_2, vae, scheduler, index


def wan_scheduler(path, sampler: str | None):
    """UniPC or FlowMatch Euler config from `scheduler_config.json` (by its `_class_name`), or
    Wan's UniPC default; `sampler` forces one (Euler keeps the config's shift)."""
    import dataclasses
    import json

    from ..schedulers.flow_match import FlowMatchEulerConfig
    from ..schedulers.unipc import WAN_SCHEDULER_CONFIG, UniPCConfig

    config = WAN_SCHEDULER_CONFIG
    if path is not None:
        path = Path(path)
        file = path / "scheduler_config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"--scheduler-config: no scheduler config at {file}")
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
        name = data.get("_class_name", "UniPCMultistepScheduler")
        if name == "FlowMatchEulerDiscreteScheduler":
            config = FlowMatchEulerConfig.from_dict(data)
        elif name == "UniPCMultistepScheduler":
            config = UniPCConfig.from_dict(data)
        else:
            raise ValueError(f"{file}: unsupported scheduler {name!r} (UniPCMultistepScheduler or "
                             "FlowMatchEulerDiscreteScheduler)")
    if sampler == "euler" and isinstance(config, UniPCConfig):
        config = FlowMatchEulerConfig(num_train_timesteps=config.num_train_timesteps,
                                      shift=config.flow_shift)
    elif sampler == "unipc" and isinstance(config, FlowMatchEulerConfig):
        config = dataclasses.replace(WAN_SCHEDULER_CONFIG, flow_shift=config.shift,
                                     num_train_timesteps=config.num_train_timesteps)
    return config


def load_wan_models(args, mesh=None):
    """(transformer, transformer_2 or None, vae, scheduler config, boundary_ratio, expand_timesteps)
    for --model, loaded with `jaxdiff.load_model` (straight onto `mesh` when given)."""
    from .. import load_model
    from ..models_flax.vae_wan import AutoencoderKLWan
    from ..models_flax.wan import WanConfig

    model_path, model_2_path, vae_path, scheduler_path, index = _wan_model_paths(args)
    experts = []
    for path in (model_path, model_2_path):
        if path is None:
            continue
        model = load_model(path, dtype=args.dtype, mesh=mesh)
        if not isinstance(getattr(model, "config", None), WanConfig):
            raise ValueError(f"--model {path} loaded as {type(model).__name__}, not a Wan "
                             "transformer")
        experts.append(model)
    vae = load_model(vae_path, dtype=args.dtype, mesh=mesh)
    if not isinstance(vae, AutoencoderKLWan):
        raise ValueError(f"--vae {vae_path} loaded as {type(vae).__name__}, not a Wan VAE")
    scheduler = wan_scheduler(scheduler_path, args.sampler)
    boundary_ratio = index.get("boundary_ratio") if len(experts) == 2 else None
    # model_index.json says so for TI2V-5B; without one, its 48-channel VAE does.
    expand = bool(index.get("expand_timesteps", vae.config.z_dim == 48))
    transformer_2 = experts[1] if len(experts) == 2 else None
    return experts[0], transformer_2, vae, scheduler, boundary_ratio, expand


# ----------------------------------------------------------------------------- run


WAN_ONLY_OPTIONS = ("frames", "image", "guidance_2", "sampler", "fps")


def setup_runtime(args):
    """Distributed init (before anything touches devices), compile cache, mesh: the mesh or None.

    Raises ValueError (exit code 2) for a bad --mesh or a --sequence-parallel without a seq axis.
    """
    from ..sharding.mesh import make_mesh, maybe_initialize_distributed
    from .compile_cache import enable_compile_cache

    if getattr(args, "distributed", False):
        maybe_initialize_distributed(True)
    mesh = make_mesh(args.mesh) if getattr(args, "mesh", None) else None
    sequence_parallel = getattr(args, "sequence_parallel", None)
    if sequence_parallel and (mesh is None or mesh.shape.get("seq", 1) == 1):
        raise ValueError(f"--sequence-parallel {sequence_parallel} needs a --mesh with a 'seq' axis "
                         "larger than 1, e.g. --mesh seq=2")
    enable_compile_cache(getattr(args, "compile_cache", None))
    return mesh


def _place_embedded(mesh, *modules):
    """The embedded modules on `mesh` by their logical axis names (no-op without a mesh)."""
    if mesh is not None:
        from ..sharding.mesh import shard_module

        for module in modules:
            shard_module(module, mesh)


def _is_primary() -> bool:
    """Whether this process writes files: always on one host; process 0 of a --distributed run."""
    import jax

    return jax.process_index() == 0


def _export_step(pipe, path, prompt_shape, height: int, width: int) -> None:
    from .export import export_denoise_step
    from .placement import attention_context

    batch, text_len = prompt_shape[0], prompt_shape[1]
    try:
        with attention_context(pipe.attention, None, None):
            export_denoise_step(pipe, path, batch=batch, height=height, width=width,
                                text_len=text_len)
    except ImportError as e:
        raise ValueError(f"--export-step: {e}") from None
    print(f"exported denoise step (batch {batch}, {height}x{width}, {text_len} text tokens) to {path}",
          file=sys.stderr)


def _report_compile(pipe, mesh) -> None:
    stats = pipe.compile_stats
    if stats is not None:
        where = "" if mesh is None else f" on mesh {dict(mesh.shape)}"
        print(f"compiled denoise step{where} in {stats.describe()}", file=sys.stderr)


def _generate(args) -> list[Path]:
    if args.family != "wan":
        given = [f"--{name.replace('_', '-')}" for name in WAN_ONLY_OPTIONS
                 if getattr(args, name, None) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to --family wan")
    if getattr(args, "export_step", None):
        if args.family == "wan":
            raise ValueError("--export-step supports --family flux only")
        if args.mesh:
            raise ValueError("--export-step exports a one-device step; drop --mesh")
    mesh = setup_runtime(args)
    if args.family == "wan":
        return _generate_wan(args, mesh)
    return _generate_flux(args, mesh)


def _require_prompt_embeds(args) -> None:
    if not args.prompt_embeds:
        raise ValueError("--prompt-embeds FILE is required with --model (text encoders are "
                         "not part of generate yet)")


def _denoise_with_progress(steps: int, call):
    """`call(callback)` with a tqdm bar on stderr advanced by the pipeline's per-step callback."""
    from tqdm import tqdm

    with tqdm(total=steps, desc="denoising", unit="step", file=sys.stderr) as bar:
        return call(lambda step, total: bar.update(1))


def _check_pixels(pixels, what: str) -> None:
    """GenerationError (nothing written) on NaN/inf; a warning for a constant result."""
    import numpy as np

    if not np.isfinite(pixels).all():
        raise GenerationError(f"generated {what} has NaN/inf values ({np.isnan(pixels).sum()} NaN); "
                              "nothing written")
    if float(pixels.max() - pixels.min()) == 0.0:
        print(f"warning: the {what} is constant ({float(pixels.min()):.3f})", file=sys.stderr)


def _generate_flux(args, mesh=None) -> list[Path]:
    from .flux import FluxPipeline
    from .image_io import save_images
    from ..schedulers.flow_match import FLUX_DEV_SCHEDULER_CONFIG

    embedded = args.model is None
    if embedded:
        if args.vae:
            raise ValueError("--vae needs --model (the embedded default has its own tiny VAE)")
        transformer, vae = build_embedded(args.dtype or "float32")
        _place_embedded(mesh, transformer, vae)
        scheduler = FLUX_DEV_SCHEDULER_CONFIG
        size, steps = EMBEDDED_SIZE, EMBEDDED_STEPS
        print(f"no --model: embedded tiny random-weight Flux (seed {EMBEDDED_WEIGHT_SEED})",
              file=sys.stderr)
    else:
        _require_prompt_embeds(args)
        transformer, vae, scheduler = load_models(args, mesh)
        size = MODEL_SIZE
        steps = DEV_STEPS if transformer.config.guidance_embeds else SCHNELL_STEPS
    if args.prompt_embeds:
        prompt, pooled = load_prompt_embeds(args.prompt_embeds)
    else:
        prompt, pooled = random_prompt_embeds(args.seed, transformer.config)
    height, width = args.height or size, args.width or size
    steps = args.steps or steps

    pipe = FluxPipeline(transformer, vae, scheduler, mesh=mesh, attention=args.attention,
                        sequence_parallel=args.sequence_parallel)
    if getattr(args, "export_step", None):
        _export_step(pipe, args.export_step, prompt.shape, height, width)
    start = time.perf_counter()
    result = _denoise_with_progress(steps, lambda callback: pipe(
        prompt, pooled, height=height, width=width, num_inference_steps=steps,
        guidance_scale=FLUX_GUIDANCE if args.guidance is None else args.guidance, seed=args.seed,
        callback=callback))
    images = result.images
    _check_pixels(images, "image")
    paths = save_images(images, args.out or DEFAULT_OUT) if _is_primary() else []
    _report_compile(pipe, mesh)
    print(f"{height}x{width}, {steps} steps, {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return paths


def _generate_wan(args, mesh=None) -> list[Path]:
    from .video_io import _check_suffix, save_videos
    from .wan import WanPipeline

    out = Path(args.out or DEFAULT_VIDEO_OUT)
    _check_suffix(out)  # before any model is built
    embedded = args.model is None
    i2v = args.image is not None
    boundary_ratio, expand, transformer_2 = None, False, None
    if embedded:
        for flag, value in (("--vae", args.vae), ("--scheduler-config", args.scheduler_config)):
            if value:
                raise ValueError(f"{flag} needs --model (the embedded default has its own)")
        transformer, vae = build_embedded_wan(args.dtype or "float32", image_to_video=i2v)
        _place_embedded(mesh, transformer, vae)
        scheduler = wan_scheduler(None, args.sampler)
        size, frames, steps = (EMBEDDED_SIZE, EMBEDDED_SIZE), EMBEDDED_WAN_FRAMES, EMBEDDED_WAN_STEPS
        kind = "image-to-video" if i2v else "text-to-video"
        print(f"no --model: embedded tiny random-weight Wan {kind} (seed {EMBEDDED_WEIGHT_SEED})",
              file=sys.stderr)
    else:
        _require_prompt_embeds(args)
        transformer, transformer_2, vae, scheduler, boundary_ratio, expand = load_wan_models(args,
                                                                                             mesh)
        size, frames, steps = WAN_SIZE, WAN_FRAMES, WAN_STEPS
    embeds = (load_wan_embeds(args.prompt_embeds) if args.prompt_embeds
              else random_wan_embeds(args.seed, transformer.config))

    pipe = WanPipeline(transformer, vae, scheduler, transformer_2=transformer_2,
                       boundary_ratio=boundary_ratio, expand_timesteps=expand, mesh=mesh,
                       attention=args.attention, sequence_parallel=args.sequence_parallel)
    if i2v and not embedded and not (args.height or args.width):
        size = _image_size(args.image, pipe.size_multiple)
    height, width = args.height or size[0], args.width or size[1]
    frames, steps = args.frames or frames, args.steps or steps
    pipe.check_inputs(height, width, frames)  # before reading the image or any compute
    image = load_image(args.image, height, width) if i2v else None
    fps = args.fps or (WAN_TI2V_FPS if expand else WAN_FPS)
    guidance = WAN_GUIDANCE if args.guidance is None else args.guidance

    start = time.perf_counter()
    result = _denoise_with_progress(steps, lambda callback: pipe(
        embeds[WAN_PROMPT_KEY], embeds[WAN_NEGATIVE_KEY], image=image, image_embeds=embeds[WAN_IMAGE_KEY],
        height=height, width=width, num_frames=frames, num_inference_steps=steps, guidance_scale=guidance,
        guidance_scale_2=args.guidance_2, seed=args.seed, callback=callback))
    videos = result.frames
    _check_pixels(videos, "video")
    paths = save_videos(videos, out, fps=fps) if _is_primary() else []
    _report_compile(pipe, mesh)
    print(f"{frames} frames {height}x{width}, {steps} steps, "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return paths


def run(args: argparse.Namespace) -> int:
    try:
        paths = _generate(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"jaxdiff generate: error: {e}", file=sys.stderr)
        return 2
    except GenerationError as e:
        print(f"jaxdiff generate: error: {e}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0
