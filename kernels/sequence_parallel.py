"""Sequence-parallel attention with `shard_map`: Ulysses and ring. Imports jax only.

Long video sequences (Wan 720p × 81 frames is 75 600 tokens) are split over the mesh axis `seq`; the
rest of the model is per-token work that GSPMD shards along the same axis. Attention needs every key
for every query, so it is done one of two ways, chosen by `attention_options(sequence_parallel=...)`:

- **ulysses** (DeepSpeed-Ulysses): an all-to-all trades the sequence split for a heads split — each
  device then holds the *whole* sequence for `heads / n` heads, runs the ordinary local kernel (splash,
  cuDNN or XLA) and a second all-to-all trades back. Two all-to-alls of q/k/v/out per layer; needs the
  heads on each device to divide by the `seq` axis size (refused with a clear error otherwise).
- **ring**: each device keeps its query block and passes its K/V block around the ring (`ppermute`),
  `n` steps; the softmax is accumulated online in float32 (running max, running sum), so the result is
  the exact softmax. Works for any head count; communication overlaps compute on real interconnects.

Cross-attention (keys shorter or longer than queries, e.g. Wan's 512 text tokens) splits only the
queries: K/V are replicated over `seq` and each device attends its query block to all keys.

Sequences whose length the axis size does not divide are zero-padded and the padded keys masked (never
attended); padded query rows are sliced off. A per-key padding mask `[B or 1, 1, 1, Sk]` is honoured by
both modes. Batch and heads keep whatever `batch_axes`/`head_axes` split they have on the mesh.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, PartitionSpec as P

from .attention import AttentionOptions, local_attention


def seq_mesh(options: AttentionOptions):
    """The mesh to split over, or None when sequence parallelism is inactive (no mesh, or the mesh has
    no `seq_axis` / it has size 1). A given mesh is taken with Auto axis types (as sharding.auto_axes;
    kernels import jax only): on Explicit ones (plain `jax.make_mesh`) shard_map would demand that q/k/v
    already carry its in_specs as types, but ours are placed GSPMD-style."""
    mesh = options.mesh
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty:
            return None
    elif any(t != AxisType.Auto for t in mesh.axis_types):
        mesh = mesh.update(axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    if mesh.shape.get(options.seq_axis, 1) <= 1:
        return None
    return mesh


def _axes_for(dim: int, names, mesh, exclude: str):
    """Mesh axes among `names` (present, not `exclude`, size > 1) whose product divides `dim`: longest
    dividing prefix, as sharding.fit_spec does. Returns a PartitionSpec entry."""
    axes = [n for n in names if n in mesh.shape and n != exclude and mesh.shape[n] > 1]
    while axes and dim % math.prod(mesh.shape[n] for n in axes):
        axes.pop()
    return None if not axes else axes[0] if len(axes) == 1 else tuple(axes)


def _size(mesh, entry) -> int:
    if entry is None:
        return 1
    return math.prod(mesh.shape[n] for n in ((entry,) if isinstance(entry, str) else entry))


def _pad_seq(x: jax.Array, length: int) -> jax.Array:
    if x.shape[1] == length:
        return x
    return jnp.pad(x, [(0, 0), (0, length - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


def sequence_parallel_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
                                mask: jax.Array | None, options: AttentionOptions, mesh,
                                implementation: str = "auto") -> jax.Array:
    """Exact softmax attention over `[B, S, H, D]` with the sequence split over `options.seq_axis`.

    mask: None or a per-key keep-mask `[B or 1, 1, 1, Sk]` (general masks are refused: pass
    implementation="xla" without sequence parallelism for those).
    """
    axis = options.seq_axis
    n = mesh.shape[axis]
    b, sq, heads, _ = q.shape
    sk = k.shape[1]
    if mask is not None and not (mask.ndim == 4 and mask.shape[1:3] == (1, 1) and mask.shape[3] == sk
                                 and mask.shape[0] in (1, b)):
        raise ValueError(f"sequence-parallel attention takes only a per-key mask [B or 1, 1, 1, Sk={sk}], "
                         f"got {tuple(mask.shape)}")
    batch = _axes_for(b, options.batch_axes, mesh, axis)
    head = _axes_for(heads, options.head_axes, mesh, axis)
    self_attention = sq == sk
    mode = options.sequence_parallel if self_attention else "cross"
    if mode == "ulysses" and (heads // _size(mesh, head)) % n:
        raise ValueError(
            f"Ulysses sequence parallelism needs the attention heads on each device ({heads} heads"
            f"{'' if head is None else f' / {_size(mesh, head)} on {head!r}'} = {heads // _size(mesh, head)})"
            f" to divide by the {axis!r} mesh axis size {n}; use sequence_parallel='ring' (any head count) "
            f"or a {axis!r} size that divides the heads")

    # Pad the split sequence(s) to a multiple of n; padded keys are masked out below.
    sq_pad = -(-sq // n) * n
    sk_pad = -(-sk // n) * n if self_attention else sk
    if sk_pad != sk or mask is not None:
        keep = jnp.ones((1, sk), bool) if mask is None else mask.reshape(mask.shape[0], sk).astype(bool)
        key_mask = _pad_seq(keep, sk_pad).reshape(keep.shape[0], 1, 1, sk_pad)
    else:
        key_mask = None
    q = _pad_seq(q, sq_pad)
    if self_attention:
        k, v = _pad_seq(k, sk_pad), _pad_seq(v, sk_pad)

    mask_batch = batch if key_mask is not None and key_mask.shape[0] == b else None
    qspec = P(batch, axis, head, None)
    kvspec = qspec if self_attention else P(batch, None, head, None)
    if mode == "ring":
        mspec = P(mask_batch, None, None, axis)
    else:
        mspec = P(mask_batch, None, None, None)

    def body(q, k, v, key_mask):
        if mode == "ulysses":
            q, k, v = (jax.lax.all_to_all(x, axis, split_axis=2, concat_axis=1, tiled=True) for x in (q, k, v))
            out = local_attention(q, k, v, scale=scale, mask=key_mask, implementation=implementation)
            return jax.lax.all_to_all(out, axis, split_axis=1, concat_axis=2, tiled=True)
        if mode == "ring":
            return _ring(q, k, v, key_mask, scale=scale, axis=axis, n=n)
        return local_attention(q, k, v, scale=scale, mask=key_mask, implementation=implementation)

    fn = jax.shard_map(body, mesh=mesh, in_specs=(qspec, kvspec, kvspec, mspec), out_specs=qspec,
                       check_vma=False)
    return fn(q, k, v, key_mask)[:, :sq]  # key_mask None: an empty pytree, its spec unused


def _ring(q, k, v, key_mask, *, scale: float, axis: str, n: int):
    """Blockwise exact attention: this device's queries against every device's K/V block in turn.

    Running max `m`, running denominator `l` and unnormalised output `o` are float32; masked keys add
    exactly zero. K/V (and the key mask) move one device along the ring per step.
    """
    qh = jnp.swapaxes(q, 1, 2)  # [b, h, sq, d]
    b, h, sq, d = qh.shape
    neg = jnp.finfo(jnp.float32).min
    m = jnp.full((b, h, sq, 1), neg, jnp.float32)
    l = jnp.zeros((b, h, sq, 1), jnp.float32)
    o = jnp.zeros((b, h, sq, d), jnp.float32)
    perm = [(i, (i + 1) % n) for i in range(n)]
    for step in range(n):
        kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
        logits = jnp.einsum("bhqd,bhkd->bhqk", qh, kh, preferred_element_type=jnp.float32) * scale
        if key_mask is not None:
            logits = jnp.where(key_mask, logits, neg)
        m_new = jnp.maximum(m, logits.max(axis=-1, keepdims=True))
        p = jnp.exp(logits - m_new)
        if key_mask is not None:
            p = jnp.where(key_mask, p, 0.0)
        alpha = jnp.exp(m - m_new)
        l = l * alpha + p.sum(axis=-1, keepdims=True)
        o = o * alpha + jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), vh,
                                   preferred_element_type=jnp.float32)
        m = m_new
        if step + 1 < n:
            k, v = jax.lax.ppermute(k, axis, perm), jax.lax.ppermute(v, axis, perm)
            if key_mask is not None:
                key_mask = jax.lax.ppermute(key_mask, axis, perm)
    out = o / jnp.where(l == 0, 1.0, l)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)
