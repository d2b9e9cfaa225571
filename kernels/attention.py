"""Attention entry point with backend dispatch. Imports only jax.

Layout everywhere: q/k/v `[batch, seq, heads, head_dim]` (jax.nn.dot_product_attention's BTNH).
`implementation`: "xla" (portable einsum softmax), "cudnn" (GPU fused kernel), "splash" (TPU Pallas,
arrives with the scale issue) or None/"auto" = best for the current backend.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
                  mask: jax.Array | None = None) -> jax.Array:
    """Plain softmax attention; softmax in float32. mask: bool `[B or 1, 1 or H, Sq, Sk]`, True = keep.

    Runs head-major (`[B, H, S, D]`): XLA then fuses scores, softmax and the value product without
    transposing the `[B, H, Sq, Sk]` probabilities; only q/k/v and the output are swapped.
    """
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [B, H, S, D]
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", probs, v), 1, 2)  # [B, Sq, H, D]


def _cudnn_ok(q: jax.Array) -> bool:
    return (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
            and q.shape[-1] <= 128 and q.shape[-1] % 8 == 0)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float | None = None,
              mask: jax.Array | None = None, implementation: str | None = None) -> jax.Array:
    """softmax(q kᵀ · scale) v over `[B, S, H, D]` inputs; returns `[B, Sq, H, D]`."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    impl = implementation or "auto"
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose from {IMPLEMENTATIONS}")
    if impl == "auto":
        impl = "cudnn" if _cudnn_ok(q) and mask is None else "xla"
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    return xla_attention(q, k, v, scale=scale, mask=mask)
