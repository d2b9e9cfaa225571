"""CLIP text encoder (transformers `CLIPTextModel`; CLIP-L/14 as Flux uses it) as a Flax nnx module,
and the CLIP encoder stack that the vision tower (clip_vision.py) shares.

The stack is transformers' exactly: learned token + position embeddings, pre-norm layers (LayerNorm →
multi-head self-attention with 1/√d scaling → residual, LayerNorm → fc1 → activation → fc2 →
residual), and a final LayerNorm. The text model is causal (query i sees keys ≤ i) and masks padded
keys; its pooled output is the final-norm state at the end-of-text token: the first position equal
to `eos_token_id`, or, for configs still carrying the legacy `eos_token_id == 2`, the position of the
largest id (transformers' rule for both). Flux conditions on that pooled output unprojected, so
`text_projection` (CLIPTextModelWithProjection) is not a parameter here (the registry row ignores it).

Attribute names mirror transformers' modules, so a state dict loads with no renames
(`text_model.encoder.layers.0.self_attn.q_proj.weight` →
`text_model.encoder.layers[0].self_attn.q_proj.kernel`,
`text_model.embeddings.token_embedding.weight` `[vocab, D]` → `….token_embedding.embedding`).

Compute runs in the parameter dtype; norms and softmax run in float32. CLIP's sequences are short (77
text / 257 image tokens), so attention never splits over a mesh (no sequence parallelism); the
backend's kernel choice applies to unmasked attention, masked attention uses XLA (the causal mask is
no per-key mask). Imports only jax/flax, `layers` and `kernels`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..kernels.attention import current_options, local_attention
from .layers import TOKENS, ConfigIO, Embed, LayerNorm, Linear, normal, param, shard_activation

QUICK_GELU_ALPHA = 1.702  # x · sigmoid(1.702 x), OpenAI CLIP's GELU approximation
LEGACY_EOS_TOKEN_ID = 2  # configs from before transformers PR #24773: pool at argmax(input_ids)

# transformers' ACT2FN entries CLIP configs name (ComfyUI's clip_model.ACTIVATIONS: the same three)
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(QUICK_GELU_ALPHA * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact (erf)
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def check_encoder_config(config) -> None:
    """ValueError unless heads divide the width and the activation is one CLIP uses."""
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                         f"{config.num_attention_heads}")
    if config.hidden_act not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {config.hidden_act!r}; known: {', '.join(ACTIVATIONS)}")


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(ConfigIO):
    """Field names and defaults of transformers' `CLIPTextConfig` (the ones the model uses).

    Defaults are transformers' (ViT-B/32's text tower); CLIP-L/14 (Flux) is `CLIP_L_TEXT`.
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512  # text_projection's width (not a parameter here; kept for config.json)
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407

    def __post_init__(self):
        check_encoder_config(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


# openai/clip-vit-large-patch14's text model (FLUX.1's text_encoder, ComfyUI's sd1_clip_config.json)
CLIP_L_TEXT = CLIPTextConfig(hidden_size=768, intermediate_size=3072, projection_dim=768,
                             num_hidden_layers=12, num_attention_heads=12)


# ----------------------------------------------------------------------------- encoder (shared)


class PositionEmbedding(nnx.Module):
    """A learned position table (torch `nn.Embedding` used whole): `embedding` `[positions, dim]`."""

    def __init__(self, num_positions: int, dim: int, *, param_dtype, rngs: nnx.Rngs):
        self.embedding = param(normal(), (num_positions, dim), param_dtype, (None, "embed"), rngs)


class CLIPAttention(nnx.Module):
    """Multi-head self-attention: q/k/v/out projections with biases, softmax(q kᵀ / √d)."""

    def __init__(self, dim: int, heads: int, *, param_dtype, rngs: nnx.Rngs):
        self.heads, self.head_dim = heads, dim // heads
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.q_proj, self.k_proj, self.v_proj = (Linear(dim, dim, axes=("embed", "heads"), **kw)
                                                 for _ in range(3))
        self.out_proj = Linear(dim, dim, axes=("heads", "embed"), **kw)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x `[B, S, D]`, mask bool `[B, 1, S, S]` (True = attend) or None → `[B, S, D]`."""
        split = lambda y: y.reshape(*y.shape[:-1], self.heads, self.head_dim)  # [B, S, N, H]
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        implementation = "xla" if mask is not None else current_options().implementation
        out = local_attention(q, k, v, scale=1.0 / math.sqrt(self.head_dim), mask=mask,
                              implementation=implementation)  # [B, S, N, H]
        return self.out_proj(out.reshape(*out.shape[:2], -1))


class CLIPMLP(nnx.Module):
    """fc1 → activation → fc2."""

    def __init__(self, dim: int, hidden: int, act: str, *, param_dtype, rngs: nnx.Rngs):
        self.act = ACTIVATIONS[act]
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Linear(dim, hidden, axes=("embed", "mlp"), **kw)
        self.fc2 = Linear(hidden, dim, axes=("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config, *, param_dtype, rngs: nnx.Rngs):
        c, kw = config, dict(param_dtype=param_dtype, rngs=rngs)
        self.self_attn = CLIPAttention(c.hidden_size, c.num_attention_heads, **kw)
        self.layer_norm1 = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, param_dtype=param_dtype)
        self.mlp = CLIPMLP(c.hidden_size, c.intermediate_size, c.hidden_act, **kw)
        self.layer_norm2 = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    """The layer stack (`config.num_hidden_layers` `CLIPEncoderLayer`s), text and vision alike."""

    def __init__(self, config, *, param_dtype, rngs: nnx.Rngs):
        self.layers = nnx.List([CLIPEncoderLayer(config, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(config.num_hidden_layers)])

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
                 num_layers: int | None = None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """Runs the first `num_layers` layers (all when None).

        Returns:
          (output `[B, S, D]`, hidden states: the input then each layer's output, transformers'
          `hidden_states` — `num_layers + 1` arrays, the last being the output).
        """
        states = [x]
        for layer in self.layers[:num_layers]:
            x = shard_activation(layer(x, mask), TOKENS)
            states.append(x)
        return x, tuple(states)


# ----------------------------------------------------------------------------- text model


class CLIPTextEmbeddings(nnx.Module):
    def __init__(self, config: CLIPTextConfig, *, param_dtype, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.token_embedding = Embed(config.vocab_size, config.hidden_size, **kw)
        self.position_embedding = PositionEmbedding(config.max_position_embeddings, config.hidden_size, **kw)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        """`[B, S]` ids → `[B, S, D]` token + position embeddings (positions 0..S−1)."""
        positions = self.position_embedding.embedding[...][: input_ids.shape[1]]  # [S, D]
        return self.token_embedding(input_ids) + positions[None]


class CLIPTextTransformer(nnx.Module):
    """transformers' `text_model`: embeddings → encoder → final_layer_norm."""

    def __init__(self, config: CLIPTextConfig, *, param_dtype, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.embeddings = CLIPTextEmbeddings(config, **kw)
        self.encoder = CLIPEncoder(config, **kw)
        self.final_layer_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps,
                                          param_dtype=param_dtype)


def text_attention_mask(attention_mask: jax.Array | None, seq_len: int) -> jax.Array:
    """Causal mask, with padded keys masked when `attention_mask` `[B, S]` (1 = token) is given:
    bool `[B or 1, 1, S, S]`, True = attend. A query with no key left (left padding) gets a
    meaningless average, as in transformers."""
    causal = jnp.tril(jnp.ones((seq_len, seq_len), bool))[None, None]  # [1, 1, S, S]
    if attention_mask is None:
        return causal
    return causal & attention_mask.astype(bool)[:, None, None, :]  # [B, 1, S, S]


def eos_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """`[B]` pooling positions: the first `eos_token_id` (0 when absent), or argmax(ids) for the legacy
    `eos_token_id == 2` (transformers' two rules)."""
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax((input_ids == eos_token_id).astype(jnp.int32), axis=-1)


class CLIPTextModel(nnx.Module):
    """transformers `CLIPTextModel` (also the towers of `CLIPTextModelWithProjection` files, whose
    `text_projection` is not used)."""

    def __init__(self, config: CLIPTextConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.text_model = CLIPTextTransformer(config, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 output_hidden_states: bool = False) -> dict[str, jax.Array | tuple[jax.Array, ...]]:
        """Encodes token ids.

        Args:
          input_ids: `[B, S]` integer ids, S ≤ max_position_embeddings (each row should hold an
            end-of-text token; the pooled output is taken there).
          attention_mask: `[B, S]` 1 for tokens, 0 for padding (padded keys are never attended), or
            None (all tokens; attention is causal either way).
          output_hidden_states: also return `hidden_states`.

        Returns:
          `last_hidden_state` `[B, S, D]` (after final_layer_norm), `pooler_output` `[B, D]` (its row
          at the end-of-text token), and with `output_hidden_states` `hidden_states`: the embeddings
          then each layer's output (`num_hidden_layers + 1` arrays `[B, S, D]`, before the final norm;
          `[-2]` is the penultimate layer, ComfyUI's "clip skip 2").
        """
        c, tm = self.config, self.text_model
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {input_ids.shape}")
        b, s = input_ids.shape
        if s > c.max_position_embeddings:
            raise ValueError(f"sequence length {s} exceeds max_position_embeddings "
                             f"{c.max_position_embeddings}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {attention_mask.shape} does not match input_ids "
                             f"{input_ids.shape}")
        x = shard_activation(tm.embeddings(input_ids), TOKENS)  # [B, S, D]
        x, states = tm.encoder(x, text_attention_mask(attention_mask, s))
        last = tm.final_layer_norm(x)
        pooled = jnp.take_along_axis(last, eos_positions(input_ids, c.eos_token_id)[:, None, None],
                                     axis=1)[:, 0]  # [B, D]
        out = {"last_hidden_state": last, "pooler_output": pooled}
        if output_hidden_states:
            out["hidden_states"] = states
        return out


# ----------------------------------------------------------------------------- example inputs

# Logical axes of the forward inputs (placement on a mesh).
INPUT_AXES = {"input_ids": ("batch", None), "attention_mask": ("batch", None)}


def example_text_inputs(config: CLIPTextConfig, sizes, seed: int = 0) -> dict[str, np.ndarray]:
    """Random forward arguments for `sizes` (`families.Sizes`: batch × text_tokens, capped at
    max_position_embeddings): int32 ids, each row ending its text with `eos_token_id` and padded with
    it after that (as CLIP's tokenizer pads), and an int32 mask whose later items are padded (item i
    keeps S − i·S/(2B) tokens)."""
    rng = np.random.default_rng(seed)
    b, s = sizes.batch, min(sizes.text_tokens, config.max_position_embeddings)
    lengths = np.asarray([max(s - (i * s) // (2 * b), 1) for i in range(b)])
    mask = (np.arange(s)[None, :] < lengths[:, None]).astype(np.int32)
    eos = config.eos_token_id
    ids = rng.integers(0, config.vocab_size, (b, s))
    if eos != LEGACY_EOS_TOKEN_ID:
        ids = np.where(ids == eos, (eos + 1) % config.vocab_size, ids)  # one end-of-text per row
        ids = np.where(np.arange(s)[None, :] >= lengths[:, None] - 1, eos, ids)
    return dict(input_ids=ids.astype(np.int32), attention_mask=mask)
