"""Attention entry point with backend dispatch. Imports only jax.

Layout everywhere: q/k/v `[batch, seq, heads, head_dim]` (jax.nn.dot_product_attention's BTNH).
`implementation`: "xla" (portable einsum softmax), "cudnn" (GPU fused kernel), "splash" (TPU Pallas,
kernels/splash.py; interpret mode off TPU) or None/"auto" = best for the current backend: splash on
TPU (when the mask, if any, is a per-key padding mask), cuDNN on GPU where shapes allow, else XLA.

Model code never names a kernel or a mesh: callers choose both for a region of code with the
`attention_options(...)` context manager, read at trace time, e.g.

    with attention_options(implementation="splash", sequence_parallel="ulysses", mesh=mesh):
        step = jax.jit(denoise_step)   # trace (first call) inside the context
        latents = step(...)

`sequence_parallel` ("ulysses" or "ring", kernels/sequence_parallel.py) splits the sequence over the mesh
axis `seq_axis` (default "seq") with `shard_map`; it is inactive when the mesh lacks that axis or its size
is 1. Options are scoped (a `contextvars.ContextVar`), not a global: nested contexts override fields
they set and restore the outer ones on exit. jit caches by function and arguments, not by context:
build (or first call) a jitted function inside the context it should be traced under.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
SEQUENCE_PARALLEL = ("ulysses", "ring")


@dataclasses.dataclass(frozen=True)
class AttentionOptions:
    """What `attention` does when its caller passes no `implementation`.

    implementation: one of IMPLEMENTATIONS ("auto" picks by backend).
    sequence_parallel: None, "ulysses" (all-to-all sequence↔heads; heads per device must divide by
      the seq axis size) or "ring" (K/V blocks passed around the seq axis, online softmax; any heads).
    mesh: the `jax.sharding.Mesh` to split over; None = the mesh set by `jax.set_mesh`, if any.
    seq_axis: mesh axis that splits the sequence.
    batch_axes / head_axes: mesh axes that may already split the batch / heads of q, k, v (kept split
      inside shard_map when present in the mesh and dividing the dimension; others replicate).
    """

    implementation: str = "auto"
    sequence_parallel: str | None = None
    mesh: Any = None
    seq_axis: str = "seq"
    batch_axes: tuple[str, ...] = ("data", "fsdp")
    head_axes: tuple[str, ...] = ("tensor",)

    def __post_init__(self):
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"unknown attention implementation {self.implementation!r}; "
                             f"choose from {IMPLEMENTATIONS}")
        if self.sequence_parallel not in (None, *SEQUENCE_PARALLEL):
            raise ValueError(f"unknown sequence_parallel {self.sequence_parallel!r}; choose from "
                             f"{SEQUENCE_PARALLEL} or None")


_OPTIONS: contextvars.ContextVar[AttentionOptions] = contextvars.ContextVar(
    "jaxdiff_attention_options", default=AttentionOptions())


def current_options() -> AttentionOptions:
    """The options in force (defaults outside any `attention_options` context)."""
    return _OPTIONS.get()


@contextlib.contextmanager
def attention_options(**changes) -> Iterator[AttentionOptions]:
    """Set AttentionOptions fields (`implementation=`, `sequence_parallel=`, `mesh=`, `seq_axis=`, …)
    for the code traced inside the block; fields not given keep their outer values. A value of None for
    `implementation` means "auto". Yields the options in force."""
    if changes.get("implementation", "auto") is None:
        changes["implementation"] = "auto"
    unknown = set(changes) - {f.name for f in dataclasses.fields(AttentionOptions)}
    if unknown:
        raise TypeError(f"unknown attention option(s) {sorted(unknown)}")
    options = dataclasses.replace(_OPTIONS.get(), **changes)
    token = _OPTIONS.set(options)
    try:
        yield options
    finally:
        _OPTIONS.reset(token)


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
    """softmax(q kᵀ · scale) v over `[B, S, H, D]` inputs; returns `[B, Sq, H, D]`.

    `implementation` None takes `current_options()`; so does sequence parallelism (see module doc).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    options = current_options()
    if options.sequence_parallel is not None:
        from .sequence_parallel import sequence_parallel_attention, seq_mesh
        mesh = seq_mesh(options)
        if mesh is not None:
            return sequence_parallel_attention(q, k, v, scale=scale, mask=mask, options=options, mesh=mesh,
                                               implementation=implementation or options.implementation)
    return local_attention(q, k, v, scale=scale, mask=mask,
                           implementation=implementation or options.implementation)


def local_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float,
                    mask: jax.Array | None = None, implementation: str = "auto") -> jax.Array:
    """`attention` on the arrays as given (no sequence parallelism): the backend dispatch."""
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
