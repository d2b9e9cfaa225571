"""Pallas splash attention (TPU) behind our `[B, S, H, D]` attention layout. Imports only jax.

The installed kernel (`jax.experimental.pallas.ops.tpu.splash_attention`) works on one batch item
`[heads, seq, head_dim]`, applies no softmax scale, and needs block sizes (multiples of 128) that
divide the sequence lengths. This wrapper:

- scales q itself (in float32, then back to q's dtype),
- transposes to head-major and vmaps the kernel over the batch,
- pads Sq/Sk up to multiples of the chosen blocks and masks the padding with `SegmentIds`: padded
  query rows and padded keys get `PAD_SEGMENT_ID`, which no real token carries, so no real query ever
  attends a padded key (zero K/V padding alone would still take softmax mass),
- slices the padded query rows off the output.

A per-key keep-mask (`key_mask`, e.g. padded text tokens) becomes kv segment ids too: masked keys get a
segment id no query carries. Off TPU the kernel runs with `interpret=True` (slow; for tests).
Forward only: the kernel is built without backward block sizes, so it is not differentiable.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as _splash

LANES = 128  # splash block sizes must be multiples of this
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_KV = 1024
DEFAULT_BLOCK_KV_COMPUTE = 512
# Segment ids of padded query rows / padded keys; never carried by a real token.
PAD_SEGMENT_ID = int(jnp.iinfo(jnp.int32).min)
# Segment id of keys dropped by `key_mask` (real queries carry 0 unless segment ids are given).
_MASKED_KEY_SEGMENT_ID = PAD_SEGMENT_ID + 1


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def choose_block(length: int, target: int) -> tuple[int, int]:
    """(block, padded_length) for one sequence axis.

    The block is a multiple of 128, at most `target` and at most the length rounded up to 128 (so short
    sequences use one block). Among multiples of 128 in (cap/2, cap] the one padding least wins (ties to
    the larger block): e.g. 4173 tokens with target 512 → block 384, padded to 4224, not 512 → 4608.
    """
    if length <= 0:
        raise ValueError(f"sequence length must be positive, got {length}")
    if target < LANES or target % LANES:
        raise ValueError(f"block size must be a positive multiple of {LANES}, got {target}")
    cap = min(target, _round_up(length, LANES))
    best = None
    for block in range(cap, max(cap // 2, LANES - 1), -LANES):
        padded = _round_up(length, block)
        if best is None or padded < best[1]:
            best = (block, padded)
    return best


def _largest_divisor_block(n: int, at_most: int) -> int:
    """Largest multiple of 128 that divides n (itself a multiple of 128) and is ≤ at_most."""
    for block in range(min(at_most, n) // LANES * LANES, 0, -LANES):
        if n % block == 0:
            return block
    return LANES


def _block_targets(block_sizes) -> tuple[int, int, int | None]:
    if block_sizes is None:
        return DEFAULT_BLOCK_Q, DEFAULT_BLOCK_KV, None
    if isinstance(block_sizes, _splash.BlockSizes):
        return block_sizes.block_q, block_sizes.block_kv, block_sizes.block_kv_compute
    if isinstance(block_sizes, Sequence) and len(block_sizes) in (2, 3):
        block_q, block_kv, *rest = (int(b) for b in block_sizes)
        return block_q, block_kv, (rest[0] if rest else None)
    raise TypeError("block_sizes must be None, a splash BlockSizes, or (block_q, block_kv[, "
                    f"block_kv_compute]); got {block_sizes!r}")


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, sq: int, sk: int, block_q: int, block_kv: int, block_kv_compute: int,
            interpret: bool):
    mask = _splash.MultiHeadMask([_splash.FullMask((sq, sk)) for _ in range(heads)])
    sizes = _splash.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv_compute)
    with jax.ensure_compile_time_eval():  # mask-info arrays become constants, never tracers
        return _splash.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)


def _segment_ids(ids, batch: int, length: int, name: str) -> jax.Array:
    ids = jnp.asarray(ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2 or ids.shape[1] != length or ids.shape[0] not in (1, batch):
        raise ValueError(f"{name} must be [{batch}, {length}] (or [{length}]), got {ids.shape}")
    return jnp.broadcast_to(ids.astype(jnp.int32), (batch, length))


def _pad_axis1(x: jax.Array, padded: int, value=0) -> jax.Array:
    extra = padded - x.shape[1]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
                     q_segment_ids: jax.Array | None = None,
                     kv_segment_ids: jax.Array | None = None,
                     key_mask: jax.Array | None = None,
                     block_sizes=None, interpret: bool | None = None) -> jax.Array:
    """softmax(q kᵀ · scale) v with the splash kernel; q `[B, Sq, H, D]`, k/v `[B, Sk, Hkv, D]`.

    Returns `[B, Sq, H, Dv]` in q's dtype. Hkv must divide H (grouped-query attention is allowed).
    q_segment_ids `[B, Sq]` / kv_segment_ids `[B, Sk]` (or unbatched `[S]`), int32: a query attends only
    keys with the same id (give both or neither; `PAD_SEGMENT_ID` and `PAD_SEGMENT_ID + 1` are
    reserved). key_mask: bool `[B, Sk]` (or `[1, Sk]`), True = attend; masked keys are never attended
    (a query row with no key left gets a finite but meaningless average, as in the XLA path).
    block_sizes: None (defaults 512 / 1024 / 512), a splash `BlockSizes` (only block_q, block_kv and
    block_kv_compute are used) or `(block_q, block_kv[, block_kv_compute])`; multiples of 128, clamped
    to the padded lengths, see `choose_block`. interpret: None = True unless running on TPU.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"expected [B, S, H, D] q/k/v, got {q.shape}, {k.shape}, {v.shape}")
    batch, sq, heads, _ = q.shape
    sk = k.shape[1]
    if k.shape[:3] != v.shape[:3] or k.shape[0] != batch or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"incompatible q/k/v shapes {q.shape}, {k.shape}, {v.shape}")
    if heads % k.shape[2]:
        raise ValueError(f"key/value heads ({k.shape[2]}) must divide query heads ({heads})")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("give both q_segment_ids and kv_segment_ids, or neither")
    if interpret is None:
        interpret = jax.default_backend() != "tpu"

    target_q, target_kv, target_kv_compute = _block_targets(block_sizes)
    block_q, sq_pad = choose_block(sq, target_q)
    block_kv, sk_pad = choose_block(sk, target_kv)
    if target_kv_compute is None:
        block_kv_compute = _largest_divisor_block(block_kv, DEFAULT_BLOCK_KV_COMPUTE)
    else:
        block_kv_compute = min(target_kv_compute, block_kv)
        if block_kv_compute % LANES or block_kv % block_kv_compute:
            raise ValueError(f"block_kv_compute {target_kv_compute} must be a multiple of {LANES} "
                             f"dividing the block_kv in use ({block_kv})")

    # Segment ids: only when something must be masked (padding, a key mask or given ids).
    padded = sq_pad != sq or sk_pad != sk
    if q_segment_ids is not None or key_mask is not None or padded:
        q_ids = (jnp.zeros((batch, sq), jnp.int32) if q_segment_ids is None
                 else _segment_ids(q_segment_ids, batch, sq, "q_segment_ids"))
        kv_ids = (jnp.zeros((batch, sk), jnp.int32) if kv_segment_ids is None
                  else _segment_ids(kv_segment_ids, batch, sk, "kv_segment_ids"))
        if key_mask is not None:
            key_mask = jnp.asarray(key_mask)
            if key_mask.ndim != 2 or key_mask.shape[1] != sk or key_mask.shape[0] not in (1, batch):
                raise ValueError(f"key_mask must be bool [{batch}, {sk}], got {key_mask.shape}")
            kv_ids = jnp.where(key_mask.astype(bool), kv_ids, _MASKED_KEY_SEGMENT_ID)
        segment_ids = _splash.SegmentIds(q=_pad_axis1(q_ids, sq_pad, PAD_SEGMENT_ID),
                                         kv=_pad_axis1(kv_ids, sk_pad, PAD_SEGMENT_ID))
    else:
        segment_ids = None

    dtype = q.dtype
    q = (q.astype(jnp.float32) * scale).astype(dtype)
    # [B, S, H, D] -> [B, H, S_pad, D]
    q, k, v = (jnp.swapaxes(_pad_axis1(x, n), 1, 2) for x, n in ((q, sq_pad), (k, sk_pad), (v, sk_pad)))
    kernel = _kernel(heads, sq_pad, sk_pad, block_q, block_kv, block_kv_compute, bool(interpret))
    if segment_ids is None:
        out = jax.vmap(kernel)(q, k, v)
    else:
        out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=s))(q, k, v, segment_ids)
    return jnp.swapaxes(out, 1, 2)[:, :sq].astype(dtype)  # [B, Sq, H, Dv]
