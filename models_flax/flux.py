"""Flux transformer (diffusers `FluxTransformer2DModel`) as a Flax nnx module.

Attribute names mirror diffusers module names, so `convert.place.load_state_dict` reads a diffusers
state dict with no renames (`transformer_blocks.0.attn.to_out.0.weight` → `transformer_blocks[0]
.attn.to_out[0].kernel`). Parameterless torch modules (Dropout, SiLU, GELU, the affine-free norms) are
plain functions here; `ff.net[1]` (a Dropout) is a `None` slot so that `net.2` keeps its index.
The FFN, timestep MLP, RoPE rotation and LayerNorm are `layers.py`'s, shared with Wan.

Token order inside the blocks is [txt, img], like diffusers. Compute runs in the dtype of
`hidden_states`; norms, RoPE and softmax run in float32.
Imports only jax/flax, `layers` and `kernels`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..kernels.attention import attention
from .layers import (TOKENS, ConfigIO, FeedForward, Linear, MLPEmbedding, RMSNorm, apply_rope,
                     gelu_tanh, layer_norm, shard_activation, timestep_projection)

ROPE_THETA = 10000.0
TIMESTEP_CHANNELS = 256  # width of the sinusoidal timestep/guidance projection (diffusers `time_proj`)
TIME_SCALE = 1000.0  # sigma in [0, 1] → the model's timestep units (also applied to guidance)
NORM_EPS = 1e-6
MLP_RATIO = 4
FP16_MAX = 65504.0
EXACT_BITS = 12  # RoPE frequency head width: pos · head is exact in fp32 for |pos| < 2**12


@dataclasses.dataclass(frozen=True)
class FluxConfig(ConfigIO):
    """Field names and defaults of diffusers' `FluxTransformer2DModel` config.json."""

    patch_size: int = 1
    in_channels: int = 64
    out_channels: int | None = None
    num_layers: int = 19
    num_single_layers: int = 38
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


# ----------------------------------------------------------------------------- positional tables


def rope_tables(ids: jax.Array, axes_dims: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """RoPE tables for position ids `[S, n_axes]` (diffusers `FluxPosEmbed`, theta 10000).

    Returns (cos, sin) each `[S, sum(axes_dims)]`, interleaved pairs; `sin` carries the rotation's
    sign (−sin on even lanes) so that `apply_rope` is two multiplies and a pair swap.
    diffusers works in float64; we split each frequency into a 12-bit head (so `pos · head` is
    exact in fp32 for integer |pos| < 2¹²) and a tail, and use the angle-addition formulas: the
    tables then match float64 to ~1 ulp instead of ~1e-5 at positions ~100.
    """
    freqs, axis_of = [], []
    for axis, dim in enumerate(axes_dims):
        freqs.append(1.0 / ROPE_THETA ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
        axis_of += [axis] * (dim // 2)
    freqs = np.concatenate(freqs)  # [D/2] float64
    mantissa, exponent = np.frexp(freqs)
    head = np.ldexp(np.round(mantissa * 2.0 ** EXACT_BITS) / 2.0 ** EXACT_BITS, exponent)
    tail = (freqs - head).astype(np.float32)
    pos = ids.astype(jnp.float32)[:, np.asarray(axis_of)]  # [S, D/2]
    coarse, fine = pos * head.astype(np.float32), pos * tail  # angle = coarse + fine
    cos_c, sin_c, cos_f, sin_f = jnp.cos(coarse), jnp.sin(coarse), jnp.cos(fine), jnp.sin(fine)
    cos = cos_c * cos_f - sin_c * sin_f  # [S, D/2]
    sin = sin_c * cos_f + cos_c * sin_f  # [S, D/2]
    # Repeat-interleave (and sign) as a product with a 0/±1 matrix: exact, and the matmul makes XLA
    # materialise the tables once instead of fusing their sin/cos into every q/k rotation.
    expand = np.repeat(np.eye(len(freqs), dtype=np.float32), 2, axis=1)  # [D/2, D]
    sign = np.tile(np.array([-1.0, 1.0], np.float32), len(freqs))  # [D]
    return (jnp.dot(cos, expand, precision=jax.lax.Precision.HIGHEST),  # [S, D]
            jnp.dot(sin, expand * sign, precision=jax.lax.Precision.HIGHEST))  # [S, D]


# ----------------------------------------------------------------------------- small layers


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """Affine-free LayerNorm(x) · (1 + scale) + shift with per-sample `[B, D]` shift/scale."""
    return layer_norm(x, NORM_EPS) * (1 + scale[:, None]) + shift[:, None]


def _clip_fp16(x: jax.Array) -> jax.Array:
    """diffusers clamps fp16 residual streams to the finite range (no-op for other dtypes)."""
    return jnp.clip(x, -FP16_MAX, FP16_MAX) if x.dtype == jnp.float16 else x


class TimeTextEmbed(nnx.Module):
    """diffusers `CombinedTimestep[Guidance]TextProjEmbeddings`: temb = t + [g] + pooled text."""

    def __init__(self, dim: int, pooled_dim: int, guidance_embeds: bool, *, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(act=jax.nn.silu, param_dtype=param_dtype, rngs=rngs)  # Flux's text projection is SiLU too
        self.timestep_embedder = MLPEmbedding(TIMESTEP_CHANNELS, dim, **kw)
        if guidance_embeds:
            self.guidance_embedder = MLPEmbedding(TIMESTEP_CHANNELS, dim, **kw)
        self.text_embedder = MLPEmbedding(pooled_dim, dim, **kw)

    def __call__(self, timestep: jax.Array, guidance: jax.Array | None,
                 pooled: jax.Array) -> jax.Array:
        dtype = pooled.dtype
        proj = timestep_projection(timestep, TIMESTEP_CHANNELS)  # [B, 256] fp32
        temb = self.timestep_embedder(proj.astype(dtype))  # [B, D]
        if guidance is not None:
            proj = timestep_projection(guidance, TIMESTEP_CHANNELS)
            temb = temb + self.guidance_embedder(proj.astype(dtype))
        return temb + self.text_embedder(pooled)


class AdaLayerNorm(nnx.Module):
    """`linear(silu(temb))` split in `n` chunks (diffusers AdaLayerNormZero[Single] / Continuous).

    The modulation output stays unsharded over heads/mlp: it is indexed by chunks of the full width.
    """

    def __init__(self, dim: int, n: int, *, param_dtype, rngs: nnx.Rngs):
        self.n = n
        self.linear = Linear(dim, n * dim, axes=("embed", None), param_dtype=param_dtype, rngs=rngs)

    def __call__(self, temb: jax.Array, dtype=None) -> list[jax.Array]:
        emb = jax.nn.silu(temb).astype(dtype or temb.dtype)
        return jnp.split(self.linear(emb), self.n, axis=-1)  # n × [B, D]


# ----------------------------------------------------------------------------- attention


def _project_heads(x: jax.Array, linear: Linear, heads: int) -> jax.Array:
    """`[B, S, D]` → `[B, S, N, H]` through a Linear whose output is N·H wide."""
    kernel = linear.kernel[...].astype(x.dtype)
    kernel = kernel.reshape(kernel.shape[0], heads, -1)  # [D, N, H]
    y = jnp.einsum("BSD,DNH->BSNH", x, kernel)
    return y + linear.bias[...].astype(x.dtype).reshape(heads, -1)


def _merge_heads(x: jax.Array, linear: Linear) -> jax.Array:
    """`[B, S, N, H]` → `[B, S, D]` through a Linear whose input is N·H wide."""
    b, s, n, h = x.shape
    return linear(x.reshape(b, s, n * h))


class FluxAttention(nnx.Module):
    """diffusers `FluxAttention` + `FluxAttnProcessor`; joint [txt, img] when `added_kv_proj_dim`."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, added_kv: bool, pre_only: bool,
                 param_dtype, rngs: nnx.Rngs):
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        qkv = dict(axes=("embed", "heads"), **kw)
        self.norm_q = RMSNorm(head_dim, eps=NORM_EPS, param_dtype=param_dtype)
        self.norm_k = RMSNorm(head_dim, eps=NORM_EPS, param_dtype=param_dtype)
        self.to_q, self.to_k, self.to_v = (Linear(dim, inner, **qkv) for _ in range(3))
        if not pre_only:  # to_out[1] is a Dropout in diffusers: nothing to hold
            self.to_out = nnx.List([Linear(inner, dim, axes=("heads", "embed"), **kw)])
        if added_kv:
            self.norm_added_q = RMSNorm(head_dim, eps=NORM_EPS, param_dtype=param_dtype)
            self.norm_added_k = RMSNorm(head_dim, eps=NORM_EPS, param_dtype=param_dtype)
            self.add_q_proj, self.add_k_proj, self.add_v_proj = (Linear(dim, inner, **qkv)
                                                                 for _ in range(3))
            self.to_add_out = Linear(inner, dim, axes=("heads", "embed"), **kw)

    def _qkv(self, x, to_q, to_k, to_v, norm_q, norm_k):
        """`[B, S, D]` → normalised q, k and v, each `[B, S, N, H]`."""
        q = norm_q(_project_heads(x, to_q, self.heads))
        k = norm_k(_project_heads(x, to_k, self.heads))
        return q, k, _project_heads(x, to_v, self.heads)

    def _attend(self, q, k, v, rope, mask=None):
        """RoPE then softmax attention over `[B, S, N, H]`; the softmax scale rides on q's rotation
        (an S·H multiply fused into RoPE instead of an S·S one on the logits). `mask`: per-key keep
        mask `[B, 1, 1, S]` (padded text tokens) or None."""
        cos, sin = rope
        scale = 1.0 / math.sqrt(self.head_dim)
        q, k = apply_rope(q, cos * scale, sin * scale), apply_rope(k, cos, sin)
        return attention(q, k, v, scale=1.0, mask=mask)  # [B, S, N, H]

    def joint(self, img: jax.Array, txt: jax.Array, rope, mask=None) -> tuple[jax.Array, jax.Array]:
        """Double-stream attention: returns (img_out `[B, Si, D]`, txt_out `[B, St, D]`)."""
        qi, ki, vi = self._qkv(img, self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)
        qt, kt, vt = self._qkv(txt, self.add_q_proj, self.add_k_proj, self.add_v_proj,
                               self.norm_added_q, self.norm_added_k)
        cat = lambda a, b: jnp.concatenate([a, b], axis=1)  # [B, St + Si, N, H]
        out = self._attend(cat(qt, qi), cat(kt, ki), cat(vt, vi), rope, mask)
        n_txt = txt.shape[1]
        return _merge_heads(out[:, n_txt:], self.to_out[0]), _merge_heads(out[:, :n_txt], self.to_add_out)

    def __call__(self, x: jax.Array, rope, mask=None) -> jax.Array:
        """Single-stream attention without output projection: `[B, S, D]` → `[B, S, N, H]`."""
        q, k, v = self._qkv(x, self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)
        return self._attend(q, k, v, rope, mask)


# ----------------------------------------------------------------------------- blocks


class FluxTransformerBlock(nnx.Module):
    """Double-stream (MMDiT) block with AdaLN-Zero modulation for each stream."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, param_dtype, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.norm1 = AdaLayerNorm(dim, 6, **kw)
        self.norm1_context = AdaLayerNorm(dim, 6, **kw)
        self.attn = FluxAttention(dim, heads, head_dim, added_kv=True, pre_only=False, **kw)
        # diffusers FeedForward(activation_fn="gelu-approximate"): dim → MLP_RATIO·dim → dim
        self.ff = FeedForward(dim, MLP_RATIO * dim, approximate=True, **kw)
        self.ff_context = FeedForward(dim, MLP_RATIO * dim, approximate=True, **kw)

    def __call__(self, img, txt, temb, rope, mask=None):
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = self.norm1(temb)  # 6 × [B, D]
        c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(temb)
        img_attn, txt_attn = self.attn.joint(_modulate(img, shift, scale),
                                             _modulate(txt, c_shift, c_scale), rope, mask)
        img = img + gate[:, None] * img_attn
        img = img + gate_mlp[:, None] * self.ff(_modulate(img, shift_mlp, scale_mlp))
        txt = txt + c_gate[:, None] * txt_attn
        txt = txt + c_gate_mlp[:, None] * self.ff_context(_modulate(txt, c_shift_mlp, c_scale_mlp))
        return img, _clip_fp16(txt)


class FluxSingleTransformerBlock(nnx.Module):
    """Single-stream block on the joint sequence: parallel attention and MLP, one output projection."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, param_dtype, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.norm = AdaLayerNorm(dim, 3, **kw)
        self.proj_mlp = Linear(dim, MLP_RATIO * dim, axes=("embed", "mlp"), **kw)
        # proj_out reads [attn (heads), mlp] packed along its input axis, so that axis is unnamed.
        self.proj_out = Linear(dim + MLP_RATIO * dim, dim, axes=(None, "embed"), **kw)
        self.attn = FluxAttention(dim, heads, head_dim, added_kv=False, pre_only=True, **kw)

    def __call__(self, x, temb, rope, mask=None):
        shift, scale, gate = self.norm(temb)  # 3 × [B, D]
        h = _modulate(x, shift, scale)
        attn = self.attn(h, rope, mask)  # [B, S, N, H]
        mlp = gelu_tanh(self.proj_mlp(h))  # [B, S, 4D]
        b, s, n, hd = attn.shape
        packed = jnp.concatenate([attn.reshape(b, s, n * hd), mlp], axis=-1)  # [B, S, 5D]
        return _clip_fp16(x + gate[:, None] * self.proj_out(packed))


# ----------------------------------------------------------------------------- model


class FluxTransformer2DModel(nnx.Module):
    """diffusers `FluxTransformer2DModel` (dev: `guidance_embeds=True`, schnell: False)."""

    def __init__(self, config: FluxConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        c, dim = config, config.inner_dim
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        out_channels = c.out_channels or c.in_channels
        self.time_text_embed = TimeTextEmbed(dim, c.pooled_projection_dim, c.guidance_embeds, **kw)
        self.context_embedder = Linear(c.joint_attention_dim, dim, axes=(None, "embed"), **kw)
        self.x_embedder = Linear(c.in_channels, dim, axes=(None, "embed"), **kw)
        block = (dim, c.num_attention_heads, c.attention_head_dim)
        self.transformer_blocks = nnx.List(
            [FluxTransformerBlock(*block, **kw) for _ in range(c.num_layers)])
        self.single_transformer_blocks = nnx.List(
            [FluxSingleTransformerBlock(*block, **kw) for _ in range(c.num_single_layers)])
        self.norm_out = AdaLayerNorm(dim, 2, **kw)  # AdaLayerNormContinuous: (scale, shift)
        self.proj_out = Linear(dim, c.patch_size ** 2 * out_channels, axes=("embed", None), **kw)

    def __call__(self, hidden_states: jax.Array, encoder_hidden_states: jax.Array,
                 pooled_projections: jax.Array, timestep: jax.Array, img_ids: jax.Array,
                 txt_ids: jax.Array, guidance: jax.Array | None = None,
                 encoder_attention_mask: jax.Array | None = None) -> jax.Array:
        """Predicts the flow for packed latents.

        Args:
          hidden_states: `[B, S_img, in_channels]` packed latents.
          encoder_hidden_states: `[B, S_txt, joint_attention_dim]` T5 embeddings.
          pooled_projections: `[B, pooled_projection_dim]` CLIP pooled embedding.
          timestep: `[B]` sigma in [0, 1] (×1000 inside).
          img_ids: `[S_img, 3]` position ids (row, col in the last two); txt_ids: `[S_txt, 3]`.
          guidance: `[B]` guidance scale (×1000 inside); required iff `guidance_embeds`.
          encoder_attention_mask: `[B, S_txt]` bool, False for padded text tokens: no token attends
            to them (so text padded to a fixed length gives the unpadded result), or None.

        Returns:
          `[B, S_img, patch_size² · out_channels]`.
        """
        if (guidance is not None) != self.config.guidance_embeds:
            raise ValueError(f"guidance is {'given' if guidance is not None else 'missing'} but "
                             f"guidance_embeds={self.config.guidance_embeds}")
        dtype = hidden_states.dtype
        encoder_hidden_states = encoder_hidden_states.astype(dtype)
        pooled_projections = pooled_projections.astype(dtype)
        txt_ids = txt_ids[0] if txt_ids.ndim == 3 else txt_ids  # diffusers' deprecated batched ids
        img_ids = img_ids[0] if img_ids.ndim == 3 else img_ids
        img = self.x_embedder(hidden_states)  # [B, Si, D]
        timestep = timestep.astype(dtype) * TIME_SCALE
        guidance = None if guidance is None else guidance.astype(dtype) * TIME_SCALE
        temb = self.time_text_embed(timestep, guidance, pooled_projections)  # [B, D]
        txt = self.context_embedder(encoder_hidden_states)  # [B, St, D]
        rope = rope_tables(jnp.concatenate([txt_ids, img_ids], axis=0),
                           self.config.axes_dims_rope)  # 2 × [St + Si, H]

        mask = None
        if encoder_attention_mask is not None:  # keys: [txt (as given), img (all kept)]
            keep_img = jnp.ones((img.shape[0], img.shape[1]), bool)
            mask = jnp.concatenate([encoder_attention_mask.astype(bool), keep_img], axis=1)[:, None, None, :]

        img = shard_activation(img, TOKENS)
        for block in self.transformer_blocks:
            img, txt = block(img, txt, temb, rope, mask)
            img = shard_activation(img, TOKENS)
        n_txt = txt.shape[1]
        x = shard_activation(jnp.concatenate([txt, img], axis=1), TOKENS)  # [B, St + Si, D]
        for block in self.single_transformer_blocks:
            x = shard_activation(block(x, temb, rope, mask), TOKENS)
        img = x[:, n_txt:]  # [B, Si, D]

        scale, shift = self.norm_out(temb, dtype)
        return self.proj_out(_modulate(img, shift, scale))


# ----------------------------------------------------------------------------- example inputs

# Logical axes of the forward inputs (placement on a mesh; `families` names this table).
INPUT_AXES = {"hidden_states": ("batch", "seq", None), "encoder_hidden_states": ("batch", None, None),
              "pooled_projections": ("batch", None), "timestep": ("batch",), "img_ids": (None, None),
              "txt_ids": (None, None), "guidance": ("batch",)}
EXAMPLE_GUIDANCE = 3.5


def example_inputs(config: FluxConfig, sizes, seed: int = 0) -> dict[str, np.ndarray | None]:
    """Random float32 forward arguments for `sizes` (`families.Sizes`: height × width packed tokens,
    text_tokens, batch) with FluxPipeline's id layout: ids (0, row, col), zero text ids, sigma in
    (0.05, 0.95), guidance 3.5 when the model takes it."""
    rng = np.random.default_rng(seed)
    b, h, w, t = sizes.batch, sizes.height, sizes.width, sizes.text_tokens
    img_ids = np.zeros((h, w, 3), np.float32)
    img_ids[..., 1] = np.arange(h, dtype=np.float32)[:, None]
    img_ids[..., 2] = np.arange(w, dtype=np.float32)[None, :]
    return dict(
        hidden_states=rng.standard_normal((b, h * w, config.in_channels), np.float32),
        encoder_hidden_states=rng.standard_normal((b, t, config.joint_attention_dim), np.float32),
        pooled_projections=rng.standard_normal((b, config.pooled_projection_dim), np.float32),
        timestep=rng.uniform(0.05, 0.95, (b,)).astype(np.float32),  # sigma; ×1000 inside
        img_ids=img_ids.reshape(-1, 3), txt_ids=np.zeros((t, 3), np.float32),
        guidance=np.full((b,), EXAMPLE_GUIDANCE, np.float32) if config.guidance_embeds else None)
