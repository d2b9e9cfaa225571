"""Attention entry point with backend dispatch. Imports only jax.

Layout everywhere: q/k/v `[batch, seq, heads, head_dim]` (jax.nn.dot_product_attention's BTNH).
`implementation`: "xla" (portable einsum softmax), "cudnn" (GPU fused kernel), "splash" (TPU Pallas,
kernels/splash.py; interpret mode off TPU) or None/"auto" = best for the current backend: splash on
TPU (when the mask, if any, is a per-key padding mask), cuDNN on GPU where shapes allow, else XLA.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")


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


def _is_key_mask(mask, batch: int, sk: int) -> bool:
    """Whether mask is a per-key padding mask `[B or 1, 1, 1, Sk]` (the only kind splash takes)."""
    shape = tuple(mask.shape)
    return len(shape) == 4 and shape[0] in (1, batch) and shape[1:3] == (1, 1) and shape[3] == sk


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float | None = None,
              mask: jax.Array | None = None, implementation: str | None = None) -> jax.Array:
    """softmax(q kᵀ · scale) v over `[B, S, H, D]` inputs; returns `[B, Sq, H, D]`."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    impl = implementation or "auto"
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention implementation {impl!r}; choose from {IMPLEMENTATIONS}")
    key_mask_ok = mask is None or _is_key_mask(mask, q.shape[0], k.shape[1])
    if impl == "auto":
        if jax.default_backend() == "tpu" and key_mask_ok:
            impl = "splash"
        else:
            impl = "cudnn" if _cudnn_ok(q) and mask is None else "xla"
    if impl == "splash":
        if not key_mask_ok:
            raise ValueError("splash attention takes only a per-key padding mask of shape "
                             f"[B or 1, 1, 1, Sk={k.shape[1]}], got mask of shape {tuple(mask.shape)}; "
                             "use implementation='xla' for general masks")
        from .splash import splash_attention  # pallas imports only when splash is used
        key_mask = None if mask is None else jnp.reshape(mask, (mask.shape[0], k.shape[1]))
        return splash_attention(q, k, v, scale=scale, key_mask=key_mask)
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
    return xla_attention(q, k, v, scale=scale, mask=mask)
