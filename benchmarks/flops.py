"""Analytical FLOP counts of one transformer forward, for achieved TFLOP/s and MFU.

Counts what the matrix units do: 2·m·n·k for every projection, FFN and embedder matmul, and
4·B·H·Sq·Sk·D per attention (q·kᵀ and probabilities·v). Norms, activations, softmax, RoPE rotations
and residual adds are left out (a few percent at real widths; `tests/test_bench.py` checks the count
against XLA's `cost_analysis()` on a tiny config). Attention counts the full Sq × Sk product (no
causal halving: diffusion transformers attend bidirectionally).

Each function returns `{term: flops}`; `sum(...)` is the forward. `flux(config, sizes)` and
`wan(config, sizes)` take the forward's `families.Sizes` (what the registry rows' `flops` name and
`StepProgram.sizes` holds). Widths the configs do not carry
(Flux's MLP ratio, its timestep projection width) come from models_flax/flux.py, imported when counted
(this module is loaded by `jaxdiff --help`, which must not pay for importing jax).
"""

from __future__ import annotations

import math


def matmul(m: int, n: int, k: int) -> int:
    """FLOPs of an `[m, k] @ [k, n]` product (one multiply and one add per term)."""
    return 2 * m * n * k


def attention(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int) -> int:
    """FLOPs of softmax(q kᵀ) v: two `[Sq, D] × [D, Sk]`-sized products per head."""
    return 4 * batch * heads * q_len * kv_len * head_dim


def flux_forward(config, *, batch: int, image_tokens: int, text_tokens: int) -> dict[str, int]:
    """One `FluxTransformer2DModel` forward (models_flax/flux.py) on `[B, S_img]` + `[B, S_txt]` tokens."""
    from ..models_flax.flux import MLP_RATIO, TIMESTEP_CHANNELS

    b, si, st = batch, image_tokens, text_tokens
    s = si + st
    d, heads, hd = config.inner_dim, config.num_attention_heads, config.attention_head_dim
    out = config.patch_size ** 2 * (config.out_channels or config.in_channels)
    embed = (matmul(b * si, d, config.in_channels) + matmul(b * st, d, config.joint_attention_dim)
             + matmul(b, d, TIMESTEP_CHANNELS) + matmul(b, d, d)  # timestep MLP
             + matmul(b, d, config.pooled_projection_dim) + matmul(b, d, d))  # pooled text MLP
    if config.guidance_embeds:
        embed += matmul(b, d, TIMESTEP_CHANNELS) + matmul(b, d, d)
    rope = 2 * matmul(s, hd, hd // 2)  # cos and sin tables expanded by a 0/±1 matrix
    double = (2 * matmul(b, 6 * d, d)  # AdaLN-Zero modulation, image and text streams
              + 3 * matmul(b * s, d, d)  # q, k, v of both streams
              + matmul(b * s, d, d)  # to_out (image) and to_add_out (text)
              + 2 * matmul(b * s, MLP_RATIO * d, d))  # ff and ff_context
    single = (matmul(b, 3 * d, d) + 3 * matmul(b * s, d, d) + matmul(b * s, MLP_RATIO * d, d)
              + matmul(b * s, d, (1 + MLP_RATIO) * d))  # proj_out over [attn, mlp]
    layers = config.num_layers + config.num_single_layers
    return {
        "embed": embed + rope,
        "projections": config.num_layers * double + config.num_single_layers * single,
        "attention": layers * attention(b, heads, s, s, hd),
        "out": matmul(b, 2 * d, d) + matmul(b * si, out, d),
    }


def wan_forward(config, *, batch: int, video_tokens: int, text_tokens: int, image_tokens: int = 0,
                timestep_tokens: int = 1) -> dict[str, int]:
    """One `WanTransformer3DModel` forward (models_flax/wan.py).

    `image_tokens`: CLIP-vision tokens (I2V with `image_dim`); `timestep_tokens`: 1, or the video
    tokens for per-token timesteps (Wan 2.2 TI2V `expand_timesteps`).
    """
    b, s, lt, li = batch, video_tokens, text_tokens, image_tokens
    d, heads, hd, f = config.inner_dim, config.num_attention_heads, config.attention_head_dim, config.ffn_dim
    patch = math.prod(config.patch_size)
    bt = b * timestep_tokens
    embed = (matmul(b * s, d, config.in_channels * patch)  # patchify Conv3d as a matmul
             + matmul(bt, d, config.freq_dim) + matmul(bt, d, d)  # time embedder
             + matmul(bt, 6 * d, d)  # time_proj → 6-way modulation
             + matmul(b * lt, d, config.text_dim) + matmul(b * lt, d, d))  # text embedder
    if config.image_dim is not None and li:
        embed += matmul(b * li, config.image_dim, config.image_dim) + matmul(b * li, d, config.image_dim)
    block = (4 * matmul(b * s, d, d)  # self-attention q, k, v, out
             + 2 * matmul(b * s, d, d) + 2 * matmul(b * lt, d, d)  # cross-attention q, out; k, v on text
             + 2 * matmul(b * s, f, d))  # FFN in and out
    attn = attention(b, heads, s, s, hd) + attention(b, heads, s, lt, hd)
    if config.added_kv_proj_dim is not None and li:
        block += 2 * matmul(b * li, d, config.added_kv_proj_dim)
        attn += attention(b, heads, s, li, hd)
    return {
        "embed": embed,
        "projections": config.num_layers * block,
        "attention": config.num_layers * attn,
        "out": matmul(b * s, config.output_channels * patch, d),
    }


def flux(config, sizes) -> dict[str, int]:
    """`flux_forward` at `families.Sizes` (height × width: the packed token grid)."""
    return flux_forward(config, batch=sizes.batch, image_tokens=sizes.height * sizes.width,
                        text_tokens=sizes.text_tokens)


def wan(config, sizes) -> dict[str, int]:
    """`wan_forward` at `families.Sizes` (frames × height × width: latents, patched inside)."""
    pt, ph, pw = config.patch_size
    return wan_forward(config, batch=sizes.batch,
                       video_tokens=(sizes.frames // pt) * (sizes.height // ph) * (sizes.width // pw),
                       text_tokens=sizes.text_tokens, image_tokens=sizes.image_tokens,
                       timestep_tokens=sizes.timestep_tokens)


def total(terms: dict[str, int]) -> int:
    return int(sum(terms.values()))
