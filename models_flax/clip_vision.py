"""CLIP vision tower (transformers `CLIPVisionModelWithProjection`; ViT-H/14 as Wan 2.1 I2V uses it) as
a Flax nnx module, and CLIP's image preprocessing (`clip_preprocess`, host-side numpy).

The tower is transformers' exactly: a `[CLS]` token (`class_embedding`) before the image's patches
(a conv with kernel = stride = patch, no bias), learned position embeddings, `pre_layrnorm` (sic, the
checkpoint name), the CLIP encoder stack shared with the text model (clip.py, not causal, no mask),
then `post_layernorm` of the `[CLS]` row and `visual_projection` (no bias) → `image_embeds`.
Wan 2.1 I2V conditions on the penultimate layer's output instead (diffusers' WanImageToVideoPipeline:
`hidden_states[-2]`; ComfyUI's `penultimate_hidden_states`): every call returns it, and
`penultimate_hidden_states(pixel_values)` computes only that (one layer fewer, no head).
A config with `projection_dim=None` has no `visual_projection` (transformers' `CLIPVisionModel`,
e.g. the `image_encoder` of diffusers' Wan I2V repos); its `image_embeds` is the pooled output,
as ComfyUI does for configs without a projection.

Attribute names mirror transformers' modules (`vision_model.embeddings.patch_embedding.weight`
`[D, C, p, p]` → `….patch_embedding.kernel` `[p, p, C, D]`). Compute runs in the parameter dtype
(pixels are cast to it, as transformers does); norms and softmax in float32. Imports only jax/flax,
numpy, `layers`, `clip` and `kernels`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .clip import CLIPEncoder, PositionEmbedding, check_encoder_config
from .layers import TOKENS, ConfigIO, Conv, LayerNorm, Linear, normal, param, shard_activation

# OpenAI CLIP's normalisation (transformers' CLIPImageProcessor, ComfyUI's clip_preprocess defaults)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CUBIC_A = -0.5  # Keys' cubic, torch's antialiased bicubic (PIL's too)
CUBIC_SUPPORT = 2.0  # the cubic kernel is 0 beyond |x| ≥ 2 (input pixels, before antialias stretch)
PIXEL_LEVELS = 255.0  # ComfyUI rounds resized pixels to 8-bit levels before normalising


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(ConfigIO):
    """Field names and defaults of transformers' `CLIPVisionConfig` (the ones the model uses).

    Defaults are transformers' (ViT-B/32); ViT-H/14 (Wan 2.1 I2V's `clip_vision_h`) is `VIT_H_14`.
    `projection_dim=None`: no `visual_projection` (a `CLIPVisionModel`).
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int | None = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        check_encoder_config(self)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size "
                             f"{self.patch_size}")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "CLIPVisionConfig":
        """As `ConfigIO.from_dict`; a transformers config.json naming `CLIPVisionModel` (no projection
        head) lists a `projection_dim` anyway: its architecture decides, and it gets None."""
        if (config.get("architectures") or [None])[0] == "CLIPVisionModel":
            config = {**config, "projection_dim": None}
        return super().from_dict(config)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# laion/CLIP-ViT-H-14-laion2B-s32B-b79K's vision tower (ComfyUI's clip_vision_config_h.json)
VIT_H_14 = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, projection_dim=1024,
                            num_hidden_layers=32, num_attention_heads=16, patch_size=14, hidden_act="gelu")


class CLIPVisionEmbeddings(nnx.Module):
    def __init__(self, config: CLIPVisionConfig, *, param_dtype, rngs: nnx.Rngs):
        c, d = config, config.hidden_size
        self.patch_size = c.patch_size
        self.class_embedding = param(normal(1.0 / math.sqrt(d)), (d,), param_dtype, ("embed",), rngs)
        # kernel HWIO [p, p, C, D]; applied as a patchify + matmul in __call__
        self.patch_embedding = Conv(c.num_channels, d, c.patch_size, stride=c.patch_size, use_bias=False,
                                    param_dtype=param_dtype, rngs=rngs)
        self.position_embedding = PositionEmbedding(c.num_patches + 1, d, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """`[B, C, H, W]` → `[B, 1 + (H/p)·(W/p), D]`: [CLS] then patches in row-major order."""
        b, c, h, w = pixel_values.shape
        p = self.patch_size
        kernel = self.patch_embedding.kernel[...]  # [p, p, C, D]
        x = pixel_values.astype(kernel.dtype).reshape(b, c, h // p, p, w // p, p)
        patches = jnp.einsum("BCHaWb,abCD->BHWD", x, kernel).reshape(b, -1, kernel.shape[-1])  # [B, N, D]
        cls = jnp.broadcast_to(self.class_embedding[...].astype(kernel.dtype), (b, 1, kernel.shape[-1]))
        x = jnp.concatenate([cls, patches], axis=1)  # [B, 1 + N, D]
        return x + self.position_embedding.embedding[...].astype(kernel.dtype)[None]


class CLIPVisionTransformer(nnx.Module):
    """transformers' `vision_model`: embeddings → pre_layrnorm → encoder → post_layernorm ([CLS])."""

    def __init__(self, config: CLIPVisionConfig, *, param_dtype, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        norm = dict(eps=config.layer_norm_eps, param_dtype=param_dtype)
        self.embeddings = CLIPVisionEmbeddings(config, **kw)
        self.pre_layrnorm = LayerNorm(config.hidden_size, **norm)
        self.encoder = CLIPEncoder(config, **kw)
        self.post_layernorm = LayerNorm(config.hidden_size, **norm)


class CLIPVisionModelWithProjection(nnx.Module):
    """transformers `CLIPVisionModelWithProjection` (or `CLIPVisionModel` when `projection_dim` is None)."""

    def __init__(self, config: CLIPVisionConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.vision_model = CLIPVisionTransformer(config, param_dtype=param_dtype, rngs=rngs)
        self.visual_projection = (
            Linear(config.hidden_size, config.projection_dim, use_bias=False, axes=("embed", None),
                   param_dtype=param_dtype, rngs=rngs)
            if config.projection_dim is not None else None)

    def _embed(self, pixel_values: jax.Array) -> jax.Array:
        c = self.config
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (c.num_channels, c.image_size, c.image_size):
            raise ValueError(f"pixel_values must be [B, {c.num_channels}, {c.image_size}, {c.image_size}] "
                             f"(clip_preprocess makes them), got shape {tuple(pixel_values.shape)}")
        vm = self.vision_model
        return shard_activation(vm.pre_layrnorm(vm.embeddings(pixel_values)), TOKENS)  # [B, T, D]

    def __call__(self, pixel_values: jax.Array, *,
                 output_hidden_states: bool = False) -> dict[str, jax.Array | tuple[jax.Array, ...]]:
        """Encodes preprocessed images.

        Args:
          pixel_values: `[B, num_channels, image_size, image_size]` normalised pixels
            (`clip_preprocess`).
          output_hidden_states: also return `hidden_states`.

        Returns:
          `image_embeds` `[B, projection_dim]` (projected pooled output; the pooled output itself
          without a projection), `pooler_output` `[B, D]` (post_layernorm of the [CLS] row),
          `last_hidden_state` `[B, T, D]` (T = 1 + patches; the last layer's output, no post-norm),
          `penultimate_hidden_states` `[B, T, D]` (`hidden_states[-2]`, what Wan 2.1 I2V takes), and
          with `output_hidden_states` `hidden_states`: pre_layrnorm's output then each layer's
          (`num_hidden_layers + 1` arrays).
        """
        vm = self.vision_model
        last, states = vm.encoder(self._embed(pixel_values))
        pooled = vm.post_layernorm(last[:, 0])  # [B, D]
        embeds = pooled if self.visual_projection is None else self.visual_projection(pooled)
        out = {"image_embeds": embeds, "pooler_output": pooled, "last_hidden_state": last,
               "penultimate_hidden_states": states[-2]}
        if output_hidden_states:
            out["hidden_states"] = states
        return out

    def penultimate_hidden_states(self, pixel_values: jax.Array) -> jax.Array:
        """`hidden_states[-2]` `[B, T, D]` alone: the encoder stops one layer early and no head runs."""
        return self.vision_model.encoder(self._embed(pixel_values),
                                         num_layers=self.config.num_hidden_layers - 1)[0]


# ----------------------------------------------------------------------------- preprocessing


def _fma(a, b, c) -> np.ndarray:
    """float32 a·b + c with one rounding (a fused multiply-add: exact in float64, then rounded)."""
    return (np.float64(a) * np.asarray(b, np.float64) + np.float64(c)).astype(np.float32)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel (a = −0.5) at float32 `x`, evaluated as torch's CPU kernel does:
    in float32, its Horner steps contracted to fused multiply-adds (its weights bit for bit)."""
    a, x = np.float32(CUBIC_A), np.abs(x).astype(np.float32)
    near = _fma(_fma(a + 2, x, -(a + 3)) * x, x, 1)  # ((a+2)x − (a+3))·x·x + 1, |x| < 1
    far = _fma(_fma(_fma(a, x, -5 * a), x, 8 * a), x, -4 * a)  # ((a·x − 5a)·x + 8a)·x − 4a, |x| < 2
    return np.where(x < 1, near, np.where(x < 2, far, np.float32(0))).astype(np.float32)


def resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """torch's antialiased bicubic resampling along one axis (`F.interpolate(mode="bicubic",
    antialias=True, align_corners=False)`, PIL's scheme): `(index [out, K] int, weight [out, K]
    float32)`, weights summing to 1 per output, 0 on padding taps.

    Output i centres at (i + ½)·s input pixels (s = in/out); when shrinking, the kernel is stretched by
    s (antialias), so K grows with s; taps outside the image are dropped and the rest renormalised.
    Each step is rounded to float32 as torch computes it (weights then equal torch's bit for bit).
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    support = f32(CUBIC_SUPPORT * float(scale)) if scale >= 1 else f32(CUBIC_SUPPORT)
    width = int(math.ceil(float(support))) * 2 + 1
    invscale = f32(1.0 / float(scale)) if scale >= 1 else f32(1.0)
    center = (np.float64(scale) * (np.arange(out_size) + 0.5)).astype(f32)  # [out]
    first = np.maximum(np.trunc((center - support).astype(np.float64) + 0.5).astype(np.int64), 0)
    stop = np.minimum(np.trunc((center + support).astype(np.float64) + 0.5).astype(np.int64), in_size)
    count = np.clip(stop - first, 0, width)
    taps = np.arange(width)
    offset = ((first[:, None] + taps).astype(f32) - center[:, None]).astype(f32)  # [out, K]
    x = ((offset.astype(np.float64) + 0.5) * np.float64(invscale)).astype(f32)
    w = np.where(taps < count[:, None], _cubic(x), f32(0))
    total = np.cumsum(w, axis=1, dtype=f32)[:, -1]  # float32, in tap order
    w = np.where(total[:, None] != 0, w / np.where(total == 0, f32(1), total)[:, None], w).astype(f32)
    return np.minimum(first[:, None] + taps, in_size - 1), w


def _resize_last_axis(x: np.ndarray, out_size: int) -> np.ndarray:
    """Resample the last axis of float32 `x` to `out_size` (`resize_taps`), accumulated in float32 tap
    by tap, the order torch's kernel sums in (its source; a compiler's fused multiply-adds may still
    change the last bit of some sums)."""
    index, weight = resize_taps(x.shape[-1], out_size)
    out = x[..., index[:, 0]] * weight[:, 0]
    for k in range(1, index.shape[1]):
        out += x[..., index[:, k]] * weight[:, k]  # padding taps add exact zeros
    return out


def resize_bicubic_antialias(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`[B, C, H, W]` float32 → `[B, C, *size]`: torch's `F.interpolate(mode="bicubic", antialias=True)`
    on CPU — width first, then height, an axis whose size does not change is left as it is."""
    out = np.asarray(images, np.float32)
    if size[1] != out.shape[3]:
        out = _resize_last_axis(out, size[1])
    if size[0] != out.shape[2]:
        out = np.swapaxes(_resize_last_axis(np.swapaxes(out, 2, 3), size[0]), 2, 3)
    return np.ascontiguousarray(out)


def clip_preprocess(images: np.ndarray, size: int = 224, mean: Sequence[float] = CLIP_MEAN,
                    std: Sequence[float] = CLIP_STD, crop: bool = True) -> np.ndarray:
    """ComfyUI's `comfy.clip_vision.clip_preprocess`, host-side: resize, centre crop, 8-bit rounding,
    normalisation.

    With `crop`, the short side is scaled to `size` (the long side to round(size·long/short)) and
    the centre `size × size` kept; without, the image is squashed to `size × size`; an image already
    `size × size` is not resampled. Resampling is torch's antialiased bicubic (`resize_taps`); then
    pixels are clipped to [0, 1], rounded to 1/255 steps and normalised by `mean` / `std`.

    Args:
      images: `[B, H, W, C]` float 0..1 (ComfyUI IMAGE layout; channels beyond 3 are dropped).

    Returns:
      `[B, 3, size, size]` float32.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {images.shape}")
    x = np.transpose(images[..., :3], (0, 3, 1, 2))  # [B, 3, H, W]
    h, w = x.shape[2:]
    if (h, w) != (size, size):
        if crop:
            scale = size / min(h, w)
            resized = (round(scale * h), round(scale * w))
        else:
            resized = (size, size)
        x = resize_bicubic_antialias(x, resized)
        top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
        x = x[:, :, top:top + size, left:left + size]
    x = np.round(np.clip(np.float32(PIXEL_LEVELS) * x, 0, PIXEL_LEVELS)) / np.float32(PIXEL_LEVELS)
    mean = np.asarray(mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(std, np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((x.astype(np.float32) - mean) / std, dtype=np.float32)


# ----------------------------------------------------------------------------- example inputs

# Logical axes of the forward inputs (placement on a mesh).
INPUT_AXES = {"pixel_values": ("batch", None, None, None)}


def example_inputs(config: CLIPVisionConfig, sizes, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 `pixel_values` `[sizes.batch, C, image_size, image_size]` (normalised-pixel scale,
    N(0, 1)); the image size is the config's (the model takes no other)."""
    rng = np.random.default_rng(seed)
    shape = (sizes.batch, config.num_channels, config.image_size, config.image_size)
    return dict(pixel_values=rng.standard_normal(shape, np.float32))
