"""T5 / UMT5 encoder single files (ComfyUI's `t5xxl_*.safetensors`, `umt5_xxl_*.safetensors`): detection
and config from key names and shapes.

These files keep transformers' `T5EncoderModel` key names (`shared.weight`, `encoder.block.N.…`,
`encoder.final_layer_norm.weight`), so they load through the identity key map (the registry rows
`families.T5_ENCODER` / `UMT5_ENCODER` name `is_t5`/`t5_config`, `is_umt5`/`umt5_config` as their
`diffusers_single_file`); only the config must be read from shapes, since no config.json comes with them.
Extra tensors some of them carry: `scaled_fp8` (an empty marker; fp8 weights with per-tensor
`*.scale_weight`, consumed by transform.find_scales) and `spiece_model` (UMT5's SentencePiece
tokenizer as uint8 bytes, an ignored key of the rows).

UMT5 differs from T5 only in a relative-position bias table per block, so block 1 holding one tells
them apart (a one-block file is T5, which computes the same thing). Like ComfyUI, the bias's maximum
distance is 128 and the norm epsilon 1e-6 (neither is stored).
"""

from __future__ import annotations

from typing import Mapping

RELATIVE_BIAS = "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
DETECT_KEY = RELATIVE_BIAS.format(0)  # [buckets, heads]
UMT5_KEY = RELATIVE_BIAS.format(1)  # UMT5: every block has its own table
FINAL_NORM = "encoder.final_layer_norm.weight"
EMBEDDINGS = ("shared.weight", "encoder.embed_tokens.weight")  # tied: either may be stored
QUERY = "encoder.block.0.layer.0.SelfAttention.q.weight"  # [heads · d_kv, d_model]
GATED_IN = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"  # [d_ff, d_model] (gated-GELU)
RELU_IN = "encoder.block.0.layer.1.DenseReluDense.wi.weight"  # [d_ff, d_model] (relu)
BLOCK_PREFIX = "encoder.block."
MAX_DISTANCE = 128  # not stored; transformers' default, hard-coded by ComfyUI
LAYER_NORM_EPS = 1e-6


def _is_encoder(names) -> bool:
    return DETECT_KEY in names and FINAL_NORM in names


def is_t5(names) -> bool:
    """A T5 encoder: block 0 holds the (shared) relative-position bias, block 1 none."""
    return _is_encoder(names) and UMT5_KEY not in names


def is_umt5(names) -> bool:
    """A UMT5 encoder: blocks 0 and 1 each hold a relative-position bias."""
    return _is_encoder(names) and UMT5_KEY in names


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, what: str, model: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"cannot detect the {model} config: key {key!r} ({what}) is missing")
    return tuple(shapes[key])


def _config(shapes: Mapping[str, tuple[int, ...]], model_type: str, model: str) -> dict:
    embedding = next((k for k in EMBEDDINGS if k in shapes), EMBEDDINGS[0])
    vocab_size, d_model = _shape(shapes, embedding, "token embedding", model)
    buckets, heads = _shape(shapes, DETECT_KEY, "relative position bias", model)
    inner = _shape(shapes, QUERY, "query projection", model)[0]
    if inner % heads:
        raise ValueError(f"cannot detect the {model} config: query width {inner} ({QUERY}) is not a "
                         f"multiple of the {heads} heads of {DETECT_KEY}")
    gated = GATED_IN in shapes
    d_ff = _shape(shapes, GATED_IN if gated else RELU_IN, "feed-forward input", model)[0]
    blocks = {int(k.split(".")[2]) for k in shapes
              if k.startswith(BLOCK_PREFIX) and k.split(".")[2].isdigit()}
    return {
        "vocab_size": vocab_size,
        "d_model": d_model,
        "d_kv": inner // heads,
        "d_ff": d_ff,
        "num_layers": max(blocks) + 1,
        "num_heads": heads,
        "relative_attention_num_buckets": buckets,
        "relative_attention_max_distance": MAX_DISTANCE,
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "feed_forward_proj": "gated-gelu" if gated else "relu",
        "model_type": model_type,
    }


def t5_config(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """A transformers `T5Config`-style dict from key names and shapes: d_model and vocab from the
    token embedding, layers by counting blocks, heads from the bias table `[buckets, heads]`, d_kv =
    query rows / heads, d_ff and gating from `wi_0` (gated-GELU) or `wi` (relu)."""
    return _config(shapes, "t5", "T5 encoder")


def umt5_config(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """`t5_config` for a UMT5 encoder (`model_type` "umt5")."""
    return _config(shapes, "umt5", "UMT5 encoder")
