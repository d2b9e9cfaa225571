"""T5 text encoder (transformers `T5EncoderModel`) as a Flax nnx module; UMT5 builds on it (umt5.py).

The stack is transformers' exactly: token embedding (`shared`), then per block a pre-norm
self-attention with an additive relative-position bias and **no** 1/√d scaling (T5 folds it into the
weights), a pre-norm feed-forward (`relu`, or gated-GELU for T5 v1.1 / XXL), T5's RMS layer norm
(no mean, no bias), and a final norm. T5 learns one bias table (`relative_attention_bias`, in block 0)
whose values every block reuses; UMT5 gives every block its own.

Attribute names mirror transformers' modules, so a `T5EncoderModel` state dict loads with no renames
(`encoder.block.0.layer.0.SelfAttention.q.weight` → `encoder.block[0].layer[0].SelfAttention.q.kernel`,
`…relative_attention_bias.weight` `[buckets, heads]` → `….relative_attention_bias.embedding`);
`encoder.embed_tokens` is transformers' tied alias of `shared` (families.T5_ENCODER.tied), not a
parameter of its own here.

Compute runs in the parameter dtype (the embedding's); norms and softmax run in float32. In float16
hidden states are clamped after each sub-layer as transformers does (`T5Block`), so XXL's large
activations saturate instead of overflowing to inf. Imports only jax/flax and `layers`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .layers import TOKENS, ConfigIO, Embed, Linear, RMSNorm, normal, param, shard_activation

FP16_CLAMP_MARGIN = 1000.0  # transformers clamps fp16 activations to ±(max − 1000) once any is inf

# transformers' ACT2FN entries a T5 `feed_forward_proj` may name (`[gated-]ACT`)
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact (erf)
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # tanh approximation
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config(ConfigIO):
    """Field names and defaults of transformers' `T5Config` (the encoder's share of them).

    `feed_forward_proj` is `ACT` or `gated-ACT`; as in transformers, `"gated-gelu"` means the tanh
    approximation (`gelu_new`, T5 v1.1 / XXL) while a plain `"gelu"` is exact.
    """

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"
    model_type: str = "t5"

    @classmethod
    def from_dict(cls, config):
        """`ConfigIO.from_dict`; a ComfyUI-style dict (`dense_act_fn` + `is_gated_act`, no
        `feed_forward_proj`, as in its t5_config_xxl.json) names the same feed-forward."""
        if "feed_forward_proj" not in config and "dense_act_fn" in config:
            gated = "gated-" if config.get("is_gated_act") else ""
            config = {**config, "feed_forward_proj": gated + config["dense_act_fn"]}
        return super().from_dict(config)

    def __post_init__(self):
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or self.dense_act_fn not in ACTIVATIONS:
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r}: expected 'ACT' or 'gated-ACT' "
                             f"with ACT one of {', '.join(ACTIVATIONS)}")

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        """transformers' derivation: the part after `gated-`, with `gated-gelu` → `gelu_new`."""
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv


# ----------------------------------------------------------------------------- position bias


def relative_position_bucket(relative: np.ndarray, num_buckets: int, max_distance: int) -> np.ndarray:
    """transformers' bidirectional `_relative_position_bucket` of (memory − query) offsets, int32.

    Computed on the host (lengths are static), in float32 like torch: half the buckets per direction,
    the first half of those exact offsets, the rest log-spaced up to `max_distance`.
    """
    half = num_buckets // 2
    buckets = (relative > 0).astype(np.int64) * half
    distance = np.abs(relative)
    max_exact = half // 2
    with np.errstate(divide="ignore"):  # log(0) lands in the exact branch, never used
        log_ratio = (np.log(distance.astype(np.float32) / np.float32(max_exact))
                     / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact))
    large = max_exact + np.where(distance < max_exact, 0, log_ratio).astype(np.int64)  # trunc, as .long()
    large = np.minimum(large, half - 1)
    return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int,
                              max_distance: int) -> np.ndarray:
    """`[Sq, Sk]` buckets of key − query (transformers' `compute_bias` table)."""
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]  # [Sq, Sk]
    return relative_position_bucket(relative, num_buckets, max_distance)


class RelativePositionBias(nnx.Module):
    """torch `nn.Embedding(num_buckets, num_heads)` holding T5's learned relative-position bias."""

    def __init__(self, num_buckets: int, num_heads: int, max_distance: int, *, param_dtype,
                 rngs: nnx.Rngs):
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.embedding = param(normal(), (num_buckets, num_heads), param_dtype, (None, "heads"), rngs)

    def __call__(self, seq_len: int) -> jax.Array:
        """Bias for self-attention over `seq_len` tokens: `[N, S, S]` float32."""
        buckets = relative_position_buckets(seq_len, seq_len, self.num_buckets, self.max_distance)
        values = jnp.take(self.embedding[...].astype(jnp.float32), buckets, axis=0)  # [S, S, N]
        return jnp.transpose(values, (2, 0, 1))  # [N, S, S]


# ----------------------------------------------------------------------------- layers


def clamp_fp16(x: jax.Array) -> jax.Array:
    """transformers' fp16 guard: clamp to ±max, or ±(max − 1000) once any value is inf; else x."""
    if x.dtype != jnp.float16:
        return x
    big = float(jnp.finfo(jnp.float16).max)
    limit = jnp.where(jnp.isinf(x).any(), big - FP16_CLAMP_MARGIN, big).astype(x.dtype)
    return jnp.clip(x, -limit, limit)


def t5_layer_norm(config: T5Config, param_dtype) -> RMSNorm:
    """T5LayerNorm: x · rsqrt(mean(x²) + eps) · weight, statistics in float32."""
    return RMSNorm(config.d_model, eps=config.layer_norm_epsilon, axis_name="embed", param_dtype=param_dtype)


class T5Attention(nnx.Module):
    """transformers `T5Attention` (encoder self-attention): q/k/v/o without bias or softmax scale;
    `relative_attention_bias` only in the blocks that learn one."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool, *, param_dtype,
                 rngs: nnx.Rngs):
        self.num_heads, self.d_kv = config.num_heads, config.d_kv
        inner, dim = config.inner_dim, config.d_model
        kw = dict(use_bias=False, param_dtype=param_dtype, rngs=rngs)
        self.q = Linear(dim, inner, axes=("embed", "heads"), **kw)
        self.k = Linear(dim, inner, axes=("embed", "heads"), **kw)
        self.v = Linear(dim, inner, axes=("embed", "heads"), **kw)
        self.o = Linear(inner, dim, axes=("heads", "embed"), **kw)
        self.relative_attention_bias = (
            RelativePositionBias(config.relative_attention_num_buckets, config.num_heads,
                                 config.relative_attention_max_distance, param_dtype=param_dtype, rngs=rngs)
            if has_relative_attention_bias else None)

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """softmax(q kᵀ + bias) v, projected back.

        Args:
          x: `[B, S, D]` normed hidden states.
          bias: `[B or 1, N, S, S]` float32 added to the scores: the relative-position bias, finfo.min
            on padded keys.

        Returns:
          `[B, S, D]`.
        """
        b, s, _ = x.shape
        # head-major throughout (as kernels.attention.xla_attention): XLA then fuses scores, softmax
        # and the value product, instead of materialising the [B, N, S, S] probabilities
        q, k, v = (jnp.swapaxes(p(x).reshape(b, s, self.num_heads, self.d_kv), 1, 2)
                   for p in (self.q, self.k, self.v))  # [B, N, S, H]
        logits = jnp.einsum("BNQH,BNKH->BNQK", q, k, preferred_element_type=jnp.float32)  # [B, N, S, S]
        probs = jax.nn.softmax(logits + bias, axis=-1).astype(v.dtype)
        out = jnp.einsum("BNQK,BNKH->BNQH", probs, v)  # [B, N, S, H]
        return self.o(jnp.swapaxes(out, 1, 2).reshape(b, s, -1))  # [B, S, D]


class T5LayerSelfAttention(nnx.Module):
    """Pre-norm self-attention with a residual."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool, *, param_dtype,
                 rngs: nnx.Rngs):
        self.SelfAttention = T5Attention(config, has_relative_attention_bias, param_dtype=param_dtype,
                                         rngs=rngs)
        self.layer_norm = t5_layer_norm(config, param_dtype)

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5DenseActDense(nnx.Module):
    """wo(act(wi(x))) (`relu` T5)."""

    def __init__(self, config: T5Config, *, param_dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=False, param_dtype=param_dtype, rngs=rngs)
        self.act = ACTIVATIONS[config.dense_act_fn]
        self.wi = Linear(config.d_model, config.d_ff, axes=("embed", "mlp"), **kw)
        self.wo = Linear(config.d_ff, config.d_model, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.wo(self.act(self.wi(x)))


class T5DenseGatedActDense(nnx.Module):
    """wo(act(wi_0(x)) · wi_1(x)) (gated T5 v1.1 / XXL, UMT5)."""

    def __init__(self, config: T5Config, *, param_dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=False, param_dtype=param_dtype, rngs=rngs)
        self.act = ACTIVATIONS[config.dense_act_fn]
        self.wi_0 = Linear(config.d_model, config.d_ff, axes=("embed", "mlp"), **kw)
        self.wi_1 = Linear(config.d_model, config.d_ff, axes=("embed", "mlp"), **kw)
        self.wo = Linear(config.d_ff, config.d_model, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))


class T5LayerFF(nnx.Module):
    """Pre-norm feed-forward with a residual."""

    def __init__(self, config: T5Config, *, param_dtype, rngs: nnx.Rngs):
        ff = T5DenseGatedActDense if config.is_gated_act else T5DenseActDense
        self.DenseReluDense = ff(config, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = t5_layer_norm(config, param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nnx.Module):
    """`layer[0]` self-attention, `layer[1]` feed-forward, each followed by the fp16 clamp."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool, *, param_dtype,
                 rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.layer = nnx.List([T5LayerSelfAttention(config, has_relative_attention_bias, **kw),
                               T5LayerFF(config, **kw)])

    @property
    def position_bias(self) -> RelativePositionBias | None:
        return self.layer[0].SelfAttention.relative_attention_bias

    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        x = clamp_fp16(self.layer[0](x, bias))
        return clamp_fp16(self.layer[1](x))


class T5Stack(nnx.Module):
    """transformers `T5Stack` (encoder): blocks then `final_layer_norm`. With `per_layer_position_bias`
    (UMT5) every block learns its own bias table; otherwise block 0's is computed once and shared."""

    def __init__(self, config: T5Config, *, per_layer_position_bias: bool = False, param_dtype,
                 rngs: nnx.Rngs):
        self.block = nnx.List([T5Block(config, per_layer_position_bias or i == 0, param_dtype=param_dtype,
                                       rngs=rngs) for i in range(config.num_layers)])
        self.final_layer_norm = t5_layer_norm(config, param_dtype)

    def __call__(self, x: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
        """x `[B, S, D]`, attention_mask `[B, S]` (1 = token, 0 = padding) or None → `[B, S, D]`."""
        b, s, _ = x.shape
        keep = None if attention_mask is None else attention_mask.astype(bool).reshape(b, 1, 1, s)
        bias = None
        x = shard_activation(x, TOKENS)
        for block in self.block:
            if block.position_bias is not None:  # block 0 (T5) or every block (UMT5)
                bias = block.position_bias(s)[None]  # [1, N, S, S]
                if keep is not None:
                    # transformers adds finfo.min on padded keys; bias + finfo.min rounds to finfo.min
                    # in fp32, and a select fuses into the bias gather (one [B, N, S, S] operand)
                    bias = jnp.where(keep, bias, jnp.finfo(jnp.float32).min)  # [B, N, S, S]
            x = shard_activation(block(x, bias), TOKENS)
        return self.final_layer_norm(x)


# ----------------------------------------------------------------------------- model


class T5EncoderModel(nnx.Module):
    """transformers `T5EncoderModel`: `shared` token embedding + `encoder` stack."""

    per_layer_position_bias = False  # UMT5EncoderModel: True

    def __init__(self, config: T5Config, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.shared = Embed(config.vocab_size, config.d_model, param_dtype=param_dtype, rngs=rngs)
        self.encoder = T5Stack(config, per_layer_position_bias=self.per_layer_position_bias,
                               param_dtype=param_dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Encodes token ids.

        Args:
          input_ids: `[B, S]` integer token ids.
          attention_mask: `[B, S]` 1 for tokens, 0 for padding (padded keys are never attended; padded
            positions still get outputs, as in transformers), or None (all tokens).

        Returns:
          `last_hidden_state` `[B, S, d_model]` in the parameter dtype.
        """
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {attention_mask.shape} does not match input_ids "
                             f"{input_ids.shape}")
        x = self.shared(input_ids)  # [B, S, D]
        return self.encoder(x, attention_mask)


# ----------------------------------------------------------------------------- example inputs

# Logical axes of the forward inputs (placement on a mesh; `families` names this table).
INPUT_AXES = {"input_ids": ("batch", None), "attention_mask": ("batch", None)}


def example_inputs(config: T5Config, sizes, seed: int = 0) -> dict[str, np.ndarray | None]:
    """Random forward arguments for `sizes` (`families.Sizes`: batch × text_tokens): int32 ids in
    [0, vocab) and an int32 mask whose later items are padded (item i keeps S − i·S/(2B) tokens)."""
    rng = np.random.default_rng(seed)
    b, s = sizes.batch, sizes.text_tokens
    lengths = [s - (i * s) // (2 * b) for i in range(b)]
    mask = (np.arange(s)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    return dict(input_ids=rng.integers(0, config.vocab_size, (b, s)).astype(np.int32),
                attention_mask=mask)
