"""The family-specific part of `jaxdiff plan`'s estimates, one `FamilyEstimates` per family, named by
the registry row (`families.Family.plan_estimates`, e.g. "pipelines.plan_estimates:FLUX").

What a module's shapes do not say and plan.py therefore cannot derive: which tokens the blocks'
stream holds, how latents become tokens, the live tensors of each phase of one block, and how the
VAE decodes (one call for the whole image, or chunk by chunk with a feature cache). Everything
generic (parameters, block lists, splits, attention workspace, the plan, the compile check) is in
plan.py, which reaches this module only through the registry; this module imports plan.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
from flax import nnx

from ..models_flax.vae_wan import CACHE_T
from ..models_flax.wan import NUM_MODULATIONS
from .flux import PATCH
from .plan import VAE_WORKING_COPIES, BlockTerms, Request, as_dtype, latent_dims, vae_step

CLIP_IMAGE_TOKENS = 257  # CLIP ViT-H/14 features per image (Wan I2V cross-attention)


@dataclasses.dataclass(frozen=True)
class FamilyEstimates:
    """What `jaxdiff plan` needs to know of a family beyond its modules' shapes.

    text_in_stream: the blocks' token stream holds the text tokens too (Flux's single blocks run
        [text, image]); False: image tokens only (Wan: text enters through cross-attention).
    packing: latent rows (and columns) the pipeline folds into one transformer input position
        (Flux's 2×2 packing); 1 where the model patchifies its latents itself.
    token_patch(transformer config) -> (rows, cols): latent rows × columns per image token, so
        height and width must be multiples of VAE factor × these.
    phases(BlockTerms) -> (model-level parts, {phase: parts}, cross-attention K+V bytes per layer):
        live bytes on one device outside the blocks and in each phase of one block.
    vae_step(req, graphdef, state) -> (fn, abstract args): the VAE call that peaks while decoding.
    vae_decode(req) -> {"peak", "parts", "output" (the decoded pixels among the parts), "cache"
        (a feature cache among the parts, 0 if none)}: approximate peak of the decode on one device.
    """

    text_in_stream: bool
    packing: int
    token_patch: Callable[[Any], tuple[int, int]]
    phases: Callable[[BlockTerms], tuple[dict[str, int], dict[str, dict[str, int]], int]]
    vae_step: Callable[..., tuple[Callable, tuple]]
    vae_decode: Callable[[Request], dict[str, Any]]


# ----------------------------------------------------------------------------- Flux


def flux_phases(b: BlockTerms):
    """Double blocks (joint attention over [text, image], then each stream's MLP) and single blocks
    (attention and MLP side by side on the joint stream, packed into one output projection)."""
    p, cfg, sp, a = b.req.preset, b.req.preset.transformer, b.splits, b.itemsize
    text, T, Dl, Fl, D = p.text_tokens, b.tokens, b.attention_width, b.ffn_width, cfg.inner_dim
    latents = sp.batch * (sp.tokens - text) * cfg.in_channels * a
    model = {"RoPE tables": 3 * b.rope,  # fp32 sin/cos of the angle parts, then the tables
             "text context": sp.batch * text * cfg.joint_attention_dim * a, "latents in/out": 2 * latents}
    phases = {
        "joint attention": {**b.stream, "q/k/v per stream + joined": 6 * T * Dl * a, **b.self_attention},
        "mlp": {**b.stream, **{f"mlp {k}": v for k, v in b.mlp.items()}},
        "single block": {**b.stream, "attention out": T * Dl * a,
                         "mlp hidden (pre/post GELU)": 2 * T * Fl * a,
                         "packed [attn, mlp]": T * (Dl + Fl) * a, "out": T * D * a},
    }
    return model, phases, 0


def flux_vae_step(req: Request, graphdef, state):
    """`decode` of the whole batch at once."""
    p = req.preset
    z = jax.ShapeDtypeStruct((req.batch, p.vae.latent_channels, *latent_dims(req)), as_dtype(req.vae_dtype))
    return (lambda st, z: nnx.merge(graphdef, st).decode(z)), (state, z)


def flux_vae_decode(req: Request) -> dict[str, Any]:
    """The whole image: working set from the full-resolution width, plus the mid-block attention
    workspace and the image."""
    p = req.preset
    a = as_dtype(req.vae_dtype).itemsize
    pixels = req.batch * req.frames * req.height * req.width * 3 * a
    c = p.vae.block_out_channels
    # widest full-resolution tensor: the last up block's input, upsampled, c[1] channels
    act = req.batch * req.height * req.width * c[min(1, len(c) - 1)] * a
    s = (req.height // p.spatial_factor) * (req.width // p.spatial_factor)
    attn = req.batch * s * s * (4 + (0 if a == 4 else a)) if req.attention == "xla" else req.batch * s * 8
    parts = {"working set": VAE_WORKING_COPIES * act, "mid-block attention": attn, "image": 2 * pixels}
    return {"peak": sum(parts.values()), "parts": parts, "output": parts["image"], "cache": 0}


FLUX = FamilyEstimates(text_in_stream=True, packing=PATCH, token_patch=lambda config: (PATCH, PATCH),
                       phases=flux_phases, vae_step=flux_vae_step, vae_decode=flux_vae_decode)


# ----------------------------------------------------------------------------- Wan


def wan_phases(b: BlockTerms):
    """Self-attention over the video tokens, cross-attention to text (+ CLIP image tokens for I2V),
    FFN; per-token timesteps (TI2V) add a modulation per token."""
    p, cfg, sp, a = b.req.preset, b.req.preset.transformer, b.splits, b.itemsize
    T, Dl, D = b.tokens, b.attention_width, cfg.inner_dim
    ctx = p.text_tokens + (CLIP_IMAGE_TOKENS if cfg.image_dim else 0)
    latents = sp.batch * cfg.in_channels * math.prod(latent_dims(b.req)) * a * sp.tokens // sp.seq_total
    model = {"RoPE tables": b.rope, "text context": sp.batch * ctx * (D + cfg.text_dim) * a,
             "latents in/out": 2 * latents}
    stream = dict(b.stream)
    if p.expand_timesteps:  # per-token timesteps: temb and modulation per token, fp32 per block
        model["per-token modulation"] = T * (1 + NUM_MODULATIONS) * D * a
        stream["per-token modulation (fp32)"] = T * NUM_MODULATIONS * D * 4
    cross_kv = 2 * sp.batch * ctx * Dl * a
    phases = {
        "self-attention": {**stream, "q/k/v": 3 * T * Dl * a, **b.self_attention},
        "cross-attention": {**stream, "q": T * Dl * a, "text k/v": cross_kv,
                            "attention out": T * Dl * a * (2 if cfg.image_dim else 1),
                            "attention workspace": b.workspace(ctx)},
        "ffn": {**stream, **{f"ffn {k}": v for k, v in b.mlp.items()}},
    }
    return model, phases, cross_kv


def wan_vae_step(req: Request, graphdef, state):
    """`decode_chunk` of one latent frame with a full feature cache (a later chunk)."""
    p = req.preset
    step = lambda st, z, cache: nnx.merge(graphdef, st).decode_chunk(z, cache)
    z = jax.ShapeDtypeStruct((req.batch, 1, *latent_dims(req)[1:], p.vae.z_dim), as_dtype(req.vae_dtype))
    _, cache = jax.eval_shape(step, state, z, [None] * nnx.merge(graphdef, state).decoder.cache_size)
    return step, (state, z, cache)


def wan_vae_decode(req: Request) -> dict[str, Any]:
    """One latent frame per call with a feature cache, donated to the step (vae_wan.decode_step), so
    the cache coming out takes the buffers of the one going in: one cache live (exact sizes from
    `jax.eval_shape`); the working set is VAE_WORKING_COPIES × the largest activation (the widest
    cached layer over CACHE_T + 4 frames), plus the decoded video (chunks and their concatenation)."""
    a = as_dtype(req.vae_dtype).itemsize
    pixels = req.batch * req.frames * req.height * req.width * 3 * a
    step, args = vae_step(req)
    cache = args[2]
    frames = jax.eval_shape(step, *args)[0]
    cache_bytes = sum(c.size * c.dtype.itemsize for c in cache)
    widest = max(cache, key=lambda c: c.size)
    act = widest.size // CACHE_T * (CACHE_T + frames.shape[1]) * widest.dtype.itemsize
    parts = {"feature cache (donated)": cache_bytes, "working set": VAE_WORKING_COPIES * act,
             "video (chunks + joined)": 2 * pixels}
    return {"peak": sum(parts.values()), "parts": parts, "output": parts["video (chunks + joined)"],
            "cache": cache_bytes}


WAN = FamilyEstimates(text_in_stream=False, packing=1,
                      token_patch=lambda config: tuple(config.patch_size[1:]),  # (1, 2, 2): rows, cols
                      phases=wan_phases, vae_step=wan_vae_step, vae_decode=wan_vae_decode)
