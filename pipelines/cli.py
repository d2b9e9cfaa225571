"""`jaxdiff generate`: sample a Flux image to a PNG.

With no `--model`, an embedded default runs: a tiny random-weight Flux transformer and VAE built
in-process from a fixed seed, with random prompt embeddings, so the whole path (denoise loop,
decode, PNG) runs in seconds. With `--model PATH` the real model is loaded by `jaxdiff.load_model`
and the prompt comes as precomputed embeddings (`--prompt-embeds`).

Top-level imports stay light (no jax) so `jaxdiff --help` is fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_OUT = "out/jaxdiff.png"
PROMPT_KEYS = ("prompt_embeds", "pooled_prompt_embeds")
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="PATH",
                        help="Flux transformer (diffusers dir, single-file .safetensors or converted "
                             "checkpoint) or a diffusers pipeline dir holding transformer/ and vae/; "
                             "omit for the embedded tiny random-weight default")
    parser.add_argument("--vae", metavar="PATH",
                        help="Flux VAE (required with --model unless PATH holds vae/)")
    parser.add_argument("--scheduler-config", metavar="PATH",
                        help="scheduler_config.json (default: PATH/scheduler/ if present, else "
                             "FLUX.1-dev's when the model has guidance embeddings, schnell's if not)")
    parser.add_argument("--prompt-embeds", metavar="FILE",
                        help=".safetensors or .npz with 'prompt_embeds' [B, S, D] and "
                             "'pooled_prompt_embeds' [B, P] (required with --model)")
    parser.add_argument("--height", type=int,
                        help=f"pixels, a multiple of 16 (default {EMBEDDED_SIZE} embedded, "
                             f"{MODEL_SIZE} with --model)")
    parser.add_argument("--width", type=int, help="pixels, like --height")
    parser.add_argument("--steps", type=int,
                        help=f"denoising steps (default {EMBEDDED_STEPS} embedded; with --model "
                             f"{DEV_STEPS} for dev, {SCHNELL_STEPS} for schnell)")
    parser.add_argument("--guidance", type=float, default=3.5,
                        help="guidance scale, for models with guidance embeddings (default 3.5)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"output PNG (default {DEFAULT_OUT}; a batch writes NAME_i.png)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                        help="parameter/compute dtype (default float32 embedded, the checkpoint's "
                             "with --model)")


class GenerationError(RuntimeError):
    """The sampled image is unusable (NaN/inf)."""


# ----------------------------------------------------------------------------- inputs


def load_prompt_embeds(path: str | os.PathLike):
    """`(prompt_embeds [B, S, D], pooled_prompt_embeds [B, P])` float32 numpy from a file.

    Unbatched arrays (`[S, D]`, `[P]`) get a batch axis of 1.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompt-embeds: no such file {path}")
    if path.suffix == ".safetensors":
        from safetensors.flax import load_file  # handles bfloat16, which numpy cannot

        arrays = load_file(str(path))
    elif path.suffix == ".npz":
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    else:
        raise ValueError(f"--prompt-embeds: {path} must be .safetensors or .npz")
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
    """Init value for one parameter, mirroring models_flax/layers.py (bias 0, scale 1, kernels
    N(0, 0.02²) for Linear and N(0, 1/fan_in) for Conv), drawn with numpy."""
    import math

    import numpy as np

    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    name = [n for n in names if isinstance(n, str) and n != "value"][-1]
    if name == "bias":
        value = np.zeros(leaf.shape)
    elif name == "scale":
        value = np.ones(leaf.shape)
    else:
        std = 0.02 if len(leaf.shape) <= 2 else 1.0 / math.sqrt(math.prod(leaf.shape[:-1]))
        value = std * rng.standard_normal(leaf.shape)
    return value.astype(np.float32)


def build_embedded(dtype: str = "float32"):
    """The embedded default: (tiny random Flux transformer, tiny random VAE), fixed seed.

    Built abstractly and filled from numpy: eager (or jitted) jax.random init of a few hundred
    small parameters costs ~20 s of dispatch/compile on CPU, numpy well under a second.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
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

    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    rng = np.random.default_rng(EMBEDDED_WEIGHT_SEED)
    state = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(_host_init(path, leaf, rng), leaf.dtype), abstract)
    transformer, vae = nnx.merge(graphdef, state)
    return transformer, vae


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


def load_models(args):
    """(transformer, vae, scheduler config) for --model, loaded with `jaxdiff.load_model`."""
    from .. import load_model
    from ..schedulers.flow_match import (FLUX_DEV_SCHEDULER_CONFIG, FLUX_SCHNELL_SCHEDULER_CONFIG,
                                         FlowMatchEulerConfig)

    model_path, vae_path, scheduler_path = _model_paths(args)
    transformer = load_model(model_path, dtype=args.dtype)
    if not hasattr(getattr(transformer, "config", None), "guidance_embeds"):
        raise ValueError(f"--model {model_path} loaded as {type(transformer).__name__}, "
                         "not a Flux transformer")
    vae = load_model(vae_path, dtype=args.dtype)
    if not hasattr(vae, "unscale_latents"):
        raise ValueError(f"--vae {vae_path} loaded as {type(vae).__name__}, not a Flux VAE")
    if scheduler_path is not None:
        scheduler = FlowMatchEulerConfig.from_json(scheduler_path)
    elif transformer.config.guidance_embeds:
        scheduler = FLUX_DEV_SCHEDULER_CONFIG
    else:
        scheduler = FLUX_SCHNELL_SCHEDULER_CONFIG
    return transformer, vae, scheduler


# ----------------------------------------------------------------------------- run


def _generate(args) -> list[Path]:
    import numpy as np
    from tqdm import tqdm

    from .flux import FluxPipeline
    from .image_io import save_images
    from ..schedulers.flow_match import FLUX_DEV_SCHEDULER_CONFIG

    embedded = args.model is None
    if embedded:
        if args.vae:
            raise ValueError("--vae needs --model (the embedded default has its own tiny VAE)")
        transformer, vae = build_embedded(args.dtype or "float32")
        scheduler = FLUX_DEV_SCHEDULER_CONFIG
        size, steps = EMBEDDED_SIZE, EMBEDDED_STEPS
        print(f"no --model: embedded tiny random-weight Flux (seed {EMBEDDED_WEIGHT_SEED})",
              file=sys.stderr)
    else:
        if not args.prompt_embeds:
            raise ValueError("--prompt-embeds FILE is required with --model (text encoders are "
                             "not part of generate yet)")
        transformer, vae, scheduler = load_models(args)
        size = MODEL_SIZE
        steps = DEV_STEPS if transformer.config.guidance_embeds else SCHNELL_STEPS
    if args.prompt_embeds:
        prompt, pooled = load_prompt_embeds(args.prompt_embeds)
    else:
        prompt, pooled = random_prompt_embeds(args.seed, transformer.config)
    height, width = args.height or size, args.width or size
    steps = args.steps or steps

    pipe = FluxPipeline(transformer, vae, scheduler)
    start = time.perf_counter()
    with tqdm(total=steps, desc="denoising", unit="step", file=sys.stderr) as bar:
        result = pipe(prompt, pooled, height=height, width=width, num_inference_steps=steps,
                      guidance_scale=args.guidance, seed=args.seed,
                      callback=lambda step, total: bar.update(1))
    images = result.images
    if not np.isfinite(images).all():
        raise GenerationError(f"generated image has NaN/inf values ({np.isnan(images).sum()} NaN); "
                           "nothing written")
    if float(images.max() - images.min()) == 0.0:
        print(f"warning: the image is constant ({float(images.min()):.3f})", file=sys.stderr)
    paths = save_images(images, args.out)
    print(f"{height}x{width}, {steps} steps, {time.perf_counter() - start:.1f} s", file=sys.stderr)
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
