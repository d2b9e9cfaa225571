"""UMT5 text encoder (transformers `UMT5EncoderModel`, Wan's text encoder) as a Flax nnx module.

T5 (t5.py) with one difference: every block learns its own relative-position bias table
(`encoder.block.N.layer.0.SelfAttention.relative_attention_bias`), where T5 computes block 0's once and
shares it. Same parameter names, same forward. Imports only jax/flax and t5.py.
"""

from __future__ import annotations

import dataclasses

from .t5 import INPUT_AXES, T5Config, T5EncoderModel, example_inputs

__all__ = ["INPUT_AXES", "UMT5Config", "UMT5EncoderModel", "example_inputs"]


@dataclasses.dataclass(frozen=True)
class UMT5Config(T5Config):
    """Field names and defaults of transformers' `UMT5Config` (umt5-small's shapes; Wan's UMT5-XXL is
    d_model 4096, 64 heads × 64, d_ff 10240, 24 layers, vocab 256384)."""

    vocab_size: int = 250112
    d_ff: int = 1024
    num_layers: int = 8
    num_heads: int = 6
    feed_forward_proj: str = "gated-gelu"
    model_type: str = "umt5"


class UMT5EncoderModel(T5EncoderModel):
    """transformers `UMT5EncoderModel`: a T5 encoder with a relative-position bias in every block."""

    per_layer_position_bias = True
