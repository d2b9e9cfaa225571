"""Wan transformer (diffusers `WanTransformer3DModel`) as a Flax nnx module.

One config-driven class covers Wan 2.1 T2V (1.3B / 14B), Wan 2.1 I2V / FLF2V (image embeddings through
`condition_embedder.image_embedder` and `add_k_proj`/`add_v_proj` in every cross-attention), Wan 2.2
A14B (shapes of 2.1 14B) and Wan 2.2 TI2V-5B (per-token timesteps `[B, S]`).

Attribute names mirror diffusers module names, so `convert.place.load_state_dict` reads a diffusers
state dict with no renames (`blocks.0.attn1.to_q.weight` → `blocks[0].attn1.to_q.kernel`,
`patch_embedding.weight` `[O, I, t, h, w]` → `patch_embedding.kernel` DHWIO). Parameterless torch
modules are affine-free norms or functions; `ffn.net[1]` (a Dropout) is a `None` slot so that `net.2`
keeps its index. The FFN, time/text MLPs and RoPE rotation are `layers.py`'s, shared with Flux.

Compute runs in the dtype of `hidden_states`; the time embedder, modulation, norms, RoPE and softmax
run in float32 (diffusers' `_keep_in_fp32_modules`). Imports only jax/flax, `layers` and `kernels`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..kernels.attention import attention
from .layers import (TOKENS, ConfigIO, Conv, FeedForward, LayerNorm, Linear, MLPEmbedding, RMSNorm,
                     ZEROS, apply_rope, gelu_tanh, normal, param, shard_activation,
                     timestep_projection)

ROPE_THETA = 10000.0
NUM_MODULATIONS = 6  # shift/scale/gate for self-attention and for the FFN
IMAGE_NORM_EPS = 1e-5  # diffusers FP32LayerNorm default inside WanImageEmbedding


@dataclasses.dataclass(frozen=True)
class WanConfig(ConfigIO):
    """Field names and defaults of diffusers' `WanTransformer3DModel` config.json."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int | None = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None

    def __post_init__(self):
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size must be (t, h, w), got {self.patch_size}")
        if self.attention_head_dim % 2 or rope_axis_dims(self.attention_head_dim)[0] % 2:
            raise ValueError(f"attention_head_dim {self.attention_head_dim} does not split into even "
                             "(t, h, w) RoPE widths")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        """diffusers' `out_channels or in_channels`."""
        return self.out_channels or self.in_channels


# ----------------------------------------------------------------------------- positional tables


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) widths of diffusers `WanRotaryPosEmbed`: h = w = 2·(head_dim // 6), t the rest."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_tables(grid: tuple[int, int, int], head_dim: int,
                max_seq_len: int) -> tuple[jax.Array, jax.Array]:
    """RoPE tables for a (frames, height, width) token grid, row-major (f, h, w) token order.

    Returns (cos, signed_sin) each `[F·H·W, head_dim]`, interleaved pairs; `signed_sin` carries the
    rotation's sign (−sin on even lanes) so that `apply_rope` is two multiplies and a pair swap.
    Per-axis tables are float64 numpy constants rounded to fp32 (bit-equal to diffusers' buffers);
    only their broadcast to the grid happens in jax, so no `[S, D]` constant is baked into the graph.
    """
    if max(grid) > max_seq_len:
        raise ValueError(f"patch grid {grid} exceeds rope_max_seq_len={max_seq_len}")
    cos_axes, sin_axes = [], []
    for n, dim in zip(grid, rope_axis_dims(head_dim)):
        freqs = 1.0 / ROPE_THETA ** (np.arange(0, dim, 2, dtype=np.float64) / dim)  # [dim/2]
        angles = np.outer(np.arange(n, dtype=np.float64), freqs)  # [n, dim/2]
        cos_axes.append(np.repeat(np.cos(angles), 2, axis=1).astype(np.float32))  # [n, dim]
        sign = np.tile(np.array([-1.0, 1.0]), dim // 2)
        sin_axes.append((np.repeat(np.sin(angles), 2, axis=1) * sign).astype(np.float32))

    def on_grid(tables):
        f, h, w = grid
        parts = [jnp.broadcast_to(tables[0][:, None, None], (f, h, w, tables[0].shape[-1])),
                 jnp.broadcast_to(tables[1][None, :, None], (f, h, w, tables[1].shape[-1])),
                 jnp.broadcast_to(tables[2][None, None, :], (f, h, w, tables[2].shape[-1]))]
        return jnp.concatenate(parts, axis=-1).reshape(f * h * w, head_dim)  # [S, head_dim]

    return on_grid(cos_axes), on_grid(sin_axes)


# ----------------------------------------------------------------------------- small layers


class WanImageEmbedding(nnx.Module):
    """CLIP-vision features → model width: FP32LayerNorm → FeedForward(gelu) → FP32LayerNorm.

    With `pos_embed_seq_len` (FLF2V) consecutive pairs of images are joined along the sequence and
    get a learned position embedding, as diffusers does (`view(-1, 2·S, D) + pos_embed`).
    """

    def __init__(self, in_features: int, dim: int, pos_embed_seq_len: int | None, *, param_dtype,
                 rngs: nnx.Rngs):
        self.norm1 = LayerNorm(in_features, eps=IMAGE_NORM_EPS, axis_name=None, param_dtype=param_dtype)
        self.ff = FeedForward(in_features, in_features, dim, approximate=False, in_axis=None,
                              param_dtype=param_dtype, rngs=rngs)
        self.norm2 = LayerNorm(dim, eps=IMAGE_NORM_EPS, param_dtype=param_dtype)
        self.pos_embed = (param(ZEROS, (1, pos_embed_seq_len, in_features), param_dtype, (None, None, None))
                          if pos_embed_seq_len is not None else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.pos_embed is not None:
            _, s, d = x.shape
            x = x.reshape(-1, 2 * s, d) + self.pos_embed[...].astype(x.dtype)  # [B/2, 2S, Di]
        return self.norm2(self.ff(self.norm1(x)))


class WanTimeTextImageEmbedding(nnx.Module):
    """diffusers `WanTimeTextImageEmbedding`: timestep → (temb, 6-way modulation), text/image → width."""

    def __init__(self, config: WanConfig, *, param_dtype, rngs: nnx.Rngs):
        c, dim = config, config.inner_dim
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.freq_dim = c.freq_dim
        self.time_embedder = MLPEmbedding(c.freq_dim, dim, act=jax.nn.silu, **kw)
        self.time_proj = Linear(dim, NUM_MODULATIONS * dim, axes=("embed", None), **kw)
        self.text_embedder = MLPEmbedding(c.text_dim, dim, act=gelu_tanh, **kw)
        self.image_embedder = (WanImageEmbedding(c.image_dim, dim, c.pos_embed_seq_len, **kw)
                               if c.image_dim is not None else None)

    def __call__(self, timestep: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
        """`[B, T]` timesteps → temb `[B, T, D]` and modulation `[B, T, 6, D]` (both in `dtype`).

        The time embedder runs in float32 whatever the parameter dtype (diffusers keeps it fp32).
        """
        b, t = timestep.shape
        proj = timestep_projection(timestep.reshape(-1), self.freq_dim)  # [B·T, freq_dim] fp32
        temb = self.time_embedder(proj).astype(dtype).reshape(b, t, -1)  # [B, T, D]
        modulation = self.time_proj(jax.nn.silu(temb))  # [B, T, 6·D]
        return temb, modulation.reshape(b, t, NUM_MODULATIONS, -1)  # [B, T, 6, D]


# ----------------------------------------------------------------------------- attention


class WanAttention(nnx.Module):
    """diffusers `WanAttention` + `WanAttnProcessor`: q/k RMS-normed across all heads; cross-attention
    adds a second softmax over image tokens (`add_k_proj`/`add_v_proj`) when `added_kv_proj_dim`."""

    def __init__(self, dim: int, heads: int, head_dim: int, *, eps: float,
                 added_kv_proj_dim: int | None = None, param_dtype, rngs: nnx.Rngs):
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        qkv = dict(axes=("embed", "heads"), **kw)
        self.to_q, self.to_k, self.to_v = (Linear(dim, inner, **qkv) for _ in range(3))
        self.to_out = nnx.List([Linear(inner, dim, axes=("heads", "embed"), **kw)])  # [1]: Dropout
        norm = dict(eps=eps, axis_name="heads", param_dtype=param_dtype)
        self.norm_q, self.norm_k = RMSNorm(inner, **norm), RMSNorm(inner, **norm)
        if added_kv_proj_dim is not None:
            self.add_k_proj = Linear(added_kv_proj_dim, inner, **qkv)
            self.add_v_proj = Linear(added_kv_proj_dim, inner, **qkv)
            self.norm_added_k = RMSNorm(inner, **norm)
        else:
            self.add_k_proj = self.add_v_proj = self.norm_added_k = None

    def _split_heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.heads, self.head_dim)  # [B, S, N, H]

    def __call__(self, x: jax.Array, context: jax.Array | None = None, rope=None,
                 image_context: jax.Array | None = None, context_mask: jax.Array | None = None) -> jax.Array:
        """Self-attention (`context=None`, with `rope`) or cross-attention to `context`.

        Args:
          x: `[B, S, D]` queries' source.
          context: `[B, S_txt, D]` embedded text (cross-attention) or None (self-attention).
          rope: (cos, signed_sin) from `rope_tables`, each `[S, H]`; self-attention only.
          image_context: `[B, S_img, D]` embedded image tokens (I2V cross-attention).
          context_mask: `[B, S_txt]` bool keep-mask of the text keys (padding False), or None.

        Returns:
          `[B, S, D]`.
        """
        kv_source = x if context is None else context
        q = self._split_heads(self.norm_q(self.to_q(x)))  # [B, S, N, H]
        k = self._split_heads(self.norm_k(self.to_k(kv_source)))  # [B, Skv, N, H]
        v = self._split_heads(self.to_v(kv_source))
        # the softmax scale rides on q (an S·H multiply instead of an S·S one on the logits)
        scale = 1.0 / math.sqrt(self.head_dim)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos * scale, sin * scale), apply_rope(k, cos, sin)
        else:
            q = q * jnp.asarray(scale, q.dtype)
        mask = None if context_mask is None else context_mask.astype(bool)[:, None, None, :]
        out = attention(q, k, v, scale=1.0, mask=mask)  # [B, S, N, H]
        if image_context is not None:
            if self.add_k_proj is None:
                raise ValueError("image context given but the model has no added_kv_proj_dim")
            k_img = self._split_heads(self.norm_added_k(self.add_k_proj(image_context)))
            v_img = self._split_heads(self.add_v_proj(image_context))  # [B, S_img, N, H]
            out = out + attention(q, k_img, v_img, scale=1.0)
        return self.to_out[0](out.reshape(*out.shape[:2], -1))


# ----------------------------------------------------------------------------- blocks


def _modulated(norm: LayerNorm, x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """norm(x) · (1 + scale) + shift in fp32, cast back to x's dtype; shift/scale `[B, 1 or S, D]`."""
    return (norm(x.astype(jnp.float32)) * (1 + scale) + shift).astype(x.dtype)


class WanTransformerBlock(nnx.Module):
    """Self-attention (RoPE) → cross-attention (text [+ image]) → tanh-GELU FFN, AdaLN modulated by
    `scale_shift_table + timestep_proj`."""

    def __init__(self, config: WanConfig, *, param_dtype, rngs: nnx.Rngs):
        c, dim = config, config.inner_dim
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        attn = (dim, c.num_attention_heads, c.attention_head_dim)
        self.norm1 = LayerNorm(dim, eps=c.eps, elementwise_affine=False)
        self.attn1 = WanAttention(*attn, eps=c.eps, **kw)
        self.attn2 = WanAttention(*attn, eps=c.eps, added_kv_proj_dim=c.added_kv_proj_dim, **kw)
        self.norm2 = LayerNorm(dim, eps=c.eps, param_dtype=param_dtype) if c.cross_attn_norm else None
        self.ffn = FeedForward(dim, c.ffn_dim, approximate=True, **kw)
        self.norm3 = LayerNorm(dim, eps=c.eps, elementwise_affine=False)
        self.scale_shift_table = param(normal(1.0 / math.sqrt(dim)), (1, NUM_MODULATIONS, dim), param_dtype,
                                       (None, None, None), rngs)

    def __call__(self, x: jax.Array, context: jax.Array, image_context: jax.Array | None,
                 modulation: jax.Array, rope, context_mask: jax.Array | None = None) -> jax.Array:
        """x `[B, S, D]`, modulation `[B, 1 or S, 6, D]` → `[B, S, D]`."""
        table = self.scale_shift_table[...].astype(jnp.float32)[None]  # [1, 1, 6, D]
        mod = table + modulation.astype(jnp.float32)  # [B, T, 6, D]
        shift, scale, gate, c_shift, c_scale, c_gate = (mod[:, :, i] for i in range(NUM_MODULATIONS))

        attn = self.attn1(_modulated(self.norm1, x, shift, scale), rope=rope)
        x = (x.astype(jnp.float32) + attn * gate).astype(x.dtype)

        h = x if self.norm2 is None else self.norm2(x.astype(jnp.float32)).astype(x.dtype)
        x = x + self.attn2(h, context, image_context=image_context, context_mask=context_mask)

        ff = self.ffn(_modulated(self.norm3, x, c_shift, c_scale))
        return (x.astype(jnp.float32) + ff.astype(jnp.float32) * c_gate).astype(x.dtype)


# ----------------------------------------------------------------------------- model


class WanTransformer3DModel(nnx.Module):
    """diffusers `WanTransformer3DModel` (Wan 2.1 T2V/I2V/FLF2V, Wan 2.2 A14B and TI2V-5B)."""

    def __init__(self, config: WanConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        c, dim = config, config.inner_dim
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        # kernel DHWIO [pt, ph, pw, C_in, D]; applied as a patchify + matmul in `_embed_patches`
        self.patch_embedding = Conv(c.in_channels, dim, c.patch_size, ndim=3, stride=c.patch_size,
                                    **kw)
        self.condition_embedder = WanTimeTextImageEmbedding(c, **kw)
        self.blocks = nnx.List([WanTransformerBlock(c, **kw) for _ in range(c.num_layers)])
        self.norm_out = LayerNorm(dim, eps=c.eps, elementwise_affine=False)
        self.proj_out = Linear(dim, c.output_channels * math.prod(c.patch_size), axes=("embed", None),
                               **kw)
        self.scale_shift_table = param(normal(1.0 / math.sqrt(dim)), (1, 2, dim), param_dtype,
                                       (None, None, None), rngs)

    def _embed_patches(self, x: jax.Array) -> jax.Array:
        """Conv3d with kernel = stride = patch as one einsum: `[B, C, F, H, W]` → `[B, F'·H'·W', D]`."""
        b, c, f, h, w = x.shape
        pt, ph, pw = self.config.patch_size
        nf, nh, nw = f // pt, h // ph, w // pw
        x = x[:, :, :nf * pt, :nh * ph, :nw * pw]  # Conv3d drops a partial last patch
        x = x.reshape(b, c, nf, pt, nh, ph, nw, pw)
        kernel = self.patch_embedding.kernel[...].astype(x.dtype)  # [pt, ph, pw, C, D]
        y = jnp.einsum("BCFaHbWc,abcCD->BFHWD", x, kernel)  # [B, F', H', W', D]
        y = y + self.patch_embedding.bias[...].astype(x.dtype)
        return y.reshape(b, nf * nh * nw, -1)

    def _unpatchify(self, x: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
        """`[B, S, pt·ph·pw·C]` → `[B, C, F'·pt, H'·ph, W'·pw]` (diffusers' reshape/permute)."""
        nf, nh, nw = grid
        pt, ph, pw = self.config.patch_size
        b = x.shape[0]
        x = x.reshape(b, nf, nh, nw, pt, ph, pw, -1)
        x = jnp.transpose(x, (0, 7, 1, 4, 2, 5, 3, 6))  # [B, C, F', pt, H', ph, W', pw]
        return x.reshape(b, -1, nf * pt, nh * ph, nw * pw)

    def __call__(self, hidden_states: jax.Array, timestep: jax.Array,
                 encoder_hidden_states: jax.Array,
                 encoder_hidden_states_image: jax.Array | None = None,
                 encoder_attention_mask: jax.Array | None = None) -> jax.Array:
        """Predicts the flow for video latents.

        Args:
          hidden_states: `[B, in_channels, F, H, W]` latents (I2V: noise, mask and image latents
            concatenated on channels, as the pipelines do).
          timestep: `[B]` timestep in [0, 1000], or `[B, F'·H'·W']` per-token timesteps (Wan 2.2
            TI2V `expand_timesteps`; `[B, 1]` is also accepted).
          encoder_hidden_states: `[B, S_txt, text_dim]` UMT5 embeddings (any length; no 512 split).
          encoder_hidden_states_image: `[B, S_img, image_dim]` CLIP-vision features (I2V/FLF2V; FLF2V
            passes `[2B, S_img, image_dim]`, first/last frame pairs), or None.
          encoder_attention_mask: `[B, S_txt]` bool, False for padded text tokens (never attended,
            so text padded to a fixed length gives the unpadded result), or None.

        Returns:
          `[B, out_channels, F, H, W]` (F, H, W rounded down to whole patches).
        """
        c = self.config
        dtype = hidden_states.dtype
        b, _, f, h, w = hidden_states.shape
        pt, ph, pw = c.patch_size
        grid = (f // pt, h // ph, w // pw)
        n_tokens = math.prod(grid)

        if timestep.ndim == 1:
            timestep = timestep[:, None]  # [B, 1]: one timestep for all tokens
        if timestep.ndim != 2 or timestep.shape[0] != b or timestep.shape[1] not in (1, n_tokens):
            raise ValueError(f"timestep must be [B] or [B, {n_tokens}] (B={b}), got {timestep.shape}")
        if encoder_hidden_states_image is not None and self.condition_embedder.image_embedder is None:
            raise ValueError("encoder_hidden_states_image given but the config has no image_dim")

        x = self._embed_patches(hidden_states)  # [B, S, D]
        rope = rope_tables(grid, c.attention_head_dim, c.rope_max_seq_len)  # 2 × [S, H]
        temb, modulation = self.condition_embedder(timestep, dtype)  # [B, T, D], [B, T, 6, D]
        context = self.condition_embedder.text_embedder(encoder_hidden_states.astype(dtype))
        image_context = None
        if encoder_hidden_states_image is not None:
            image_context = self.condition_embedder.image_embedder(
                encoder_hidden_states_image.astype(dtype))  # [B, S_img, D]

        x = shard_activation(x, TOKENS)
        for block in self.blocks:
            x = shard_activation(block(x, context, image_context, modulation, rope, encoder_attention_mask),
                                 TOKENS)

        table = self.scale_shift_table[...].astype(jnp.float32)[None]  # [1, 1, 2, D]
        mod = table + temb.astype(jnp.float32)[:, :, None]  # [B, T, 2, D]
        x = _modulated(self.norm_out, x, mod[:, :, 0], mod[:, :, 1])
        return self._unpatchify(self.proj_out(x), grid)


# ----------------------------------------------------------------------------- example inputs

# Logical axes of the forward inputs (placement on a mesh; `families` names this table).
INPUT_AXES = {"hidden_states": ("batch", None, "seq", None, None), "timestep": ("batch",),
              "encoder_hidden_states": ("batch", None, None),
              "encoder_hidden_states_image": ("batch", None, None)}


def example_inputs(config: WanConfig, sizes, seed: int = 0) -> dict[str, np.ndarray | None]:
    """Random float32 forward arguments for `sizes` (`families.Sizes`: frames × height × width
    latents, text_tokens, image_tokens for I2V, batch); timestep in (50, 950)."""
    rng = np.random.default_rng(seed)
    b = sizes.batch
    image = None
    if config.image_dim is not None:
        image = rng.standard_normal((b, sizes.image_tokens or 257, config.image_dim), np.float32)
    return dict(
        hidden_states=rng.standard_normal((b, config.in_channels, sizes.frames, sizes.height, sizes.width),
                                          np.float32),
        timestep=rng.uniform(50.0, 950.0, (b,)).astype(np.float32),
        encoder_hidden_states=rng.standard_normal((b, sizes.text_tokens, config.text_dim), np.float32),
        encoder_hidden_states_image=image)
