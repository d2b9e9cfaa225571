"""A throw-away T5-encoder-shaped model kind for converter tests (registered per test, never shipped).

`ToyEncoder` has the parameter tree of transformers' `T5EncoderModel` (relu feed-forward):
`shared` (token embedding), `encoder.block.N.layer.0.SelfAttention.{q,k,v,o}` (block 0 also holds
`relative_attention_bias`, an embedding), `encoder.block.N.layer.{0,1}.layer_norm`,
`encoder.block.N.layer.1.DenseReluDense.{wi,wo}` and `encoder.final_layer_norm` — so a tiny
`T5EncoderModel.save_pretrained` directory (or `benchmarks.convert_memory.write_synthetic_encoder`)
fills it once its config.json names `ToyEncoderModel`. Parameters only (no forward): the tests check
where weights land, not what the model computes. Imports jax/flax and models_flax.layers only (no
torch, so the streaming benchmark's subprocess can register it).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Mapping

import jax.numpy as jnp
from flax import nnx

from jaxdiff import families
from jaxdiff.families import ModelKind
from jaxdiff.models_flax.layers import ZEROS, Linear, RMSNorm, param

ARCHITECTURE = "ToyEncoderModel"
# transformers T5 ties `shared` and `encoder.embed_tokens`; save_pretrained keeps one of the two
TIED = (("shared.weight", "encoder.embed_tokens.weight"),)


@dataclasses.dataclass(frozen=True)
class ToyEncoderConfig:
    """T5Config's field names (the ones the parameter shapes need)."""

    vocab_size: int = 32
    d_model: int = 16
    d_kv: int = 4
    num_heads: int = 2
    d_ff: int = 24
    num_layers: int = 2
    relative_attention_num_buckets: int = 8
    layer_norm_epsilon: float = 1e-6

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "ToyEncoderConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ToyEmbed(nnx.Module):
    """torch `nn.Embedding`: leaf `embedding` `[num, dim]`, stored untransposed."""

    def __init__(self, num: int, dim: int, *, param_dtype, rngs: nnx.Rngs):
        self.embedding = param(ZEROS, (num, dim), param_dtype, ("vocab", "embed"))


class ToyAttention(nnx.Module):
    def __init__(self, config: ToyEncoderConfig, relative_bias: bool, *, param_dtype, rngs: nnx.Rngs):
        inner, kw = config.num_heads * config.d_kv, dict(use_bias=False, param_dtype=param_dtype, rngs=rngs)
        self.q = Linear(config.d_model, inner, axes=("embed", "heads"), **kw)
        self.k = Linear(config.d_model, inner, axes=("embed", "heads"), **kw)
        self.v = Linear(config.d_model, inner, axes=("embed", "heads"), **kw)
        self.o = Linear(inner, config.d_model, axes=("heads", "embed"), **kw)
        if relative_bias:
            self.relative_attention_bias = ToyEmbed(config.relative_attention_num_buckets,
                                                    config.num_heads, param_dtype=param_dtype, rngs=rngs)


class ToySelfAttentionLayer(nnx.Module):
    def __init__(self, config: ToyEncoderConfig, relative_bias: bool, *, param_dtype, rngs: nnx.Rngs):
        self.SelfAttention = ToyAttention(config, relative_bias, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon, param_dtype=param_dtype)


class ToyDenseReluDense(nnx.Module):
    def __init__(self, config: ToyEncoderConfig, *, param_dtype, rngs: nnx.Rngs):
        kw = dict(use_bias=False, param_dtype=param_dtype, rngs=rngs)
        self.wi = Linear(config.d_model, config.d_ff, axes=("embed", "mlp"), **kw)
        self.wo = Linear(config.d_ff, config.d_model, axes=("mlp", "embed"), **kw)


class ToyFeedForwardLayer(nnx.Module):
    def __init__(self, config: ToyEncoderConfig, *, param_dtype, rngs: nnx.Rngs):
        self.DenseReluDense = ToyDenseReluDense(config, param_dtype=param_dtype, rngs=rngs)
        self.layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon, param_dtype=param_dtype)


class ToyBlock(nnx.Module):
    def __init__(self, config: ToyEncoderConfig, index: int, *, param_dtype, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.layer = nnx.List([ToySelfAttentionLayer(config, index == 0, **kw),
                               ToyFeedForwardLayer(config, **kw)])


class ToyStack(nnx.Module):
    def __init__(self, config: ToyEncoderConfig, *, param_dtype, rngs: nnx.Rngs):
        self.block = nnx.List([ToyBlock(config, i, param_dtype=param_dtype, rngs=rngs)
                               for i in range(config.num_layers)])
        self.final_layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon,
                                        param_dtype=param_dtype)


class ToyEncoder(nnx.Module):
    """`shared` + `encoder` (T5EncoderModel's tree; `encoder.embed_tokens` is the tied alias)."""

    def __init__(self, config: ToyEncoderConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.shared = ToyEmbed(config.vocab_size, config.d_model, param_dtype=param_dtype, rngs=rngs)
        self.encoder = ToyStack(config, param_dtype=param_dtype, rngs=rngs)


TOY_ENCODER = ModelKind(name="toy_encoder", role="text_encoder", class_name=ARCHITECTURE,
                        config_class=ToyEncoderConfig, model_class=ToyEncoder, tied=TIED)


@contextlib.contextmanager
def registered(kind: ModelKind = TOY_ENCODER) -> Iterator[ModelKind]:
    """`kind` in the family registry inside the block, removed after it."""
    families.register(kind)
    try:
        yield kind
    finally:
        families.unregister(kind.name)
