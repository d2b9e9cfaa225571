"""Shared building blocks for every model.

Holds: `Linear`, `Embed`; `layer_norm` / `LayerNorm`, `RMSNorm`, `GroupNorm`; `Conv`; `gelu_tanh`,
`GELU`, `FeedForward` (diffusers' FFN); `timestep_projection`, `MLPEmbedding` (timestep/text MLP);
`apply_rope`; `GaussianPosterior` (VAE mixin); `ConfigIO` (config dataclass ↔ config.json dict);
`param`, `shard_activation` / `activation_sharding` (logical axis names).

Conventions (the converter relies on them):
- Attribute names mirror the diffusers module that a layer replaces, so a diffusers state-dict key
  `a.b.0.c.weight` is our parameter path `('a', 'b', 0, 'c', 'kernel' | 'scale')`.
- `Linear.kernel` is `[in, out]` (torch `[out, in]` transposed); `Conv*.kernel` is channels-last
  `HWIO` / `DHWIO` (torch `OIHW` / `OIDHW` permuted); norm weights are `scale`.
- Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `conv_in`, `conv_out`, …);
  `sharding/rules.py` maps them to mesh axes. Layers never name mesh axes.
- Activations are annotated with logical names too (`shard_activation(x, ("batch", "seq", None))`); the
  annotation does nothing unless a caller installed a constraint with `activation_sharding(...)`
  (pipelines pass `sharding.activation_constraint(mesh)`), so models never see a mesh.
This module imports only jax/flax.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Axes = tuple[str | None, ...]
INIT_STD = 0.02


TOKENS: Axes = ("batch", "seq", None)  # logical names of a `[B, S, D]` token stream

_ACTIVATION_CONSTRAINT: contextvars.ContextVar[Callable | None] = contextvars.ContextVar(
    "jaxdiff_activation_constraint", default=None)


@contextlib.contextmanager
def activation_sharding(constrain: Callable[[jax.Array, Axes], jax.Array] | None) -> Iterator[None]:
    """Inside the block (at trace time), `shard_activation(x, axes)` returns `constrain(x, axes)`;
    None turns annotations off. Scoped, like kernels.attention_options."""
    token = _ACTIVATION_CONSTRAINT.set(constrain)
    try:
        yield
    finally:
        _ACTIVATION_CONSTRAINT.reset(token)


def shard_activation(x: jax.Array, axes: Axes) -> jax.Array:
    """Annotate activation `x` with logical axis names (identity without `activation_sharding`)."""
    constrain = _ACTIVATION_CONSTRAINT.get()
    return x if constrain is None else constrain(x, axes)


@dataclasses.dataclass(frozen=True)
class Init:
    """A parameter's init rule: N(0, std²) when `std` > 0, else the constant `value`. Recorded on the
    parameter (`init_rule` metadata), so random weights can be drawn by numpy on the host from the
    same rule (models_flax/build.py) instead of a re-encoded copy of it."""

    std: float = 0.0
    value: float = 0.0

    def __call__(self, rngs: nnx.Rngs | None, shape: tuple[int, ...], dtype) -> jax.Array:
        if self.std:
            return (self.std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
        return jnp.full(shape, self.value, dtype)

    def host(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """The same rule drawn by numpy, float32."""
        if self.std:
            return (self.std * rng.standard_normal(shape)).astype(np.float32)
        return np.full(shape, self.value, np.float32)


ZEROS, ONES = Init(), Init(value=1.0)


def normal(std: float = INIT_STD) -> Init:
    return Init(std=std)


def param(init: Init, shape: Sequence[int], dtype, axes: Axes, rngs: nnx.Rngs | None = None) -> nnx.Param:
    """A parameter drawn by `init`, with logical axis names (placement on a mesh happens later,
    sharding/) and its init rule as metadata."""
    return nnx.Param(init(rngs, tuple(shape), dtype), out_sharding=tuple(axes), eager_sharding=False,
                     init_rule=init)


class Linear(nnx.Module):
    """y = x @ kernel + bias, with kernel `[in, out]`."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 axes: Axes = ("embed", "mlp"), param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.in_features, self.out_features = in_features, out_features
        self.kernel = param(normal(), (in_features, out_features), param_dtype, axes, rngs)
        self.bias = (param(ZEROS, (out_features,), param_dtype, (axes[1],))
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...i,io->...o", x, self.kernel[...].astype(x.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class Embed(nnx.Module):
    """Token embedding (torch `nn.Embedding`): `embedding` `[vocab, dim]`, rows looked up by id."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.embedding = param(normal(), (num_embeddings, embedding_dim), param_dtype, ("vocab", "embed"),
                               rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """`[...]` integer ids → `[..., dim]` rows, in the parameter dtype."""
        return jnp.take(self.embedding[...], ids, axis=0)

    def attend(self, x: jax.Array) -> jax.Array:
        """Tied output head: `[..., dim]` → `[..., vocab]` logits (x @ embeddingᵀ)."""
        return jnp.einsum("...d,vd->...v", x, self.embedding[...].astype(x.dtype))


def layer_norm(x: jax.Array, eps: float, scale: jax.Array | None = None,
               bias: jax.Array | None = None) -> jax.Array:
    """LayerNorm over the last axis with fp32 statistics and optional `[D]` affine, cast back to x's dtype."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis; `elementwise_affine=False` matches torch's affine-free norm."""

    def __init__(self, dim: int, *, eps: float = 1e-6, elementwise_affine: bool = True,
                 use_bias: bool = True, axis_name: str | None = "embed",
                 param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = (param(ONES, (dim,), param_dtype, (axis_name,))
                      if elementwise_affine else None)
        self.bias = (param(ZEROS, (dim,), param_dtype, (axis_name,))
                     if elementwise_affine and use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.eps, None if self.scale is None else self.scale[...],
                          None if self.bias is None else self.bias[...])


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis (diffusers `RMSNorm`: normalise in fp32, then scale)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, elementwise_affine: bool = True,
                 axis_name: str | None = None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = (param(ONES, (dim,), param_dtype, (axis_name,))
                      if elementwise_affine else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        if self.scale is not None:
            y = y * self.scale[...].astype(jnp.float32)
        return y.astype(dtype)


class GroupNorm(nnx.Module):
    """GroupNorm on channels-last input `[B, ..., C]` (torch GroupNorm semantics)."""

    def __init__(self, num_groups: int, num_channels: int, *, eps: float = 1e-6,
                 param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
        self.num_groups, self.eps = num_groups, eps
        self.scale = param(ONES, (num_channels,), param_dtype, ("conv_out",))
        self.bias = param(ZEROS, (num_channels,), param_dtype, ("conv_out",))

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        b, *spatial, c = x.shape
        g = x.astype(jnp.float32).reshape(b, -1, self.num_groups, c // self.num_groups)
        mean = jnp.mean(g, axis=(1, 3), keepdims=True)
        var = jnp.mean(jnp.square(g - mean), axis=(1, 3), keepdims=True)
        g = (g - mean) * jax.lax.rsqrt(var + self.eps)
        y = g.reshape(b, *spatial, c) * self.scale[...] + self.bias[...]
        return y.astype(dtype)


class Conv(nnx.Module):
    """N-d convolution on channels-last input; kernel `[*window, in, out]` (HWIO / DHWIO).

    `padding` is per spatial dim `(lo, hi)` pairs or an int applied symmetrically.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], *,
                 ndim: int = 2, stride: int | Sequence[int] = 1,
                 padding: int | Sequence[tuple[int, int]] = 0, use_bias: bool = True,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        ks = (kernel_size,) * ndim if isinstance(kernel_size, int) else tuple(kernel_size)
        self.stride = (stride,) * ndim if isinstance(stride, int) else tuple(stride)
        self.padding = (((padding, padding),) * ndim if isinstance(padding, int)
                        else tuple(tuple(p) for p in padding))
        fan_in = in_channels * math.prod(ks)
        self.kernel = param(normal(1.0 / math.sqrt(fan_in)), (*ks, in_channels, out_channels), param_dtype,
                            (None,) * ndim + ("conv_in", "conv_out"), rngs)
        self.bias = (param(ZEROS, (out_channels,), param_dtype, ("conv_out",))
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        nd = len(self.stride)
        spatial = "DHW"[-nd:] if nd <= 3 else None
        dn = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
        y = jax.lax.conv_general_dilated(x, self.kernel[...].astype(x.dtype), self.stride,
                                         self.padding, dimension_numbers=dn)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


def timestep_projection(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`: `[N]` → `[N, dim]` fp32.

    Frequencies are float64-exact constants rounded to fp32 (torch's fp32 `exp` is nearly correctly
    rounded; `jnp.exp` is off by an ulp more often, which matters at arguments ~1000 and guidance×1000).
    """
    half = dim // 2
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32) / np.float32(half)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)  # [half]
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]  # [N, half]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)  # [N, dim]


class MLPEmbedding(nnx.Module):
    """linear_1 → act → linear_2 (diffusers `TimestepEmbedding` with SiLU, `PixArtAlphaTextProjection`
    with tanh-GELU)."""

    def __init__(self, in_features: int, dim: int, *, act: Callable[[jax.Array], jax.Array] = jax.nn.silu,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.act = act
        self.linear_1 = Linear(in_features, dim, axes=(None, "mlp"), param_dtype=param_dtype, rngs=rngs)
        self.linear_2 = Linear(dim, dim, axes=("mlp", "embed"), param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear_2(self.act(self.linear_1(x)))


def gelu_tanh(x: jax.Array) -> jax.Array:
    """torch `gelu(approximate="tanh")`."""
    return jax.nn.gelu(x, approximate=True)


class GELU(nnx.Module):
    """diffusers `GELU`: gelu(proj(x)), tanh-approximate or exact (erf)."""

    def __init__(self, dim: int, hidden: int, *, approximate: bool = True,
                 axes: Axes = ("embed", "mlp"), param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.approximate = approximate
        self.proj = Linear(dim, hidden, axes=axes, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(self.proj(x), approximate=self.approximate)


class FeedForward(nnx.Module):
    """diffusers `FeedForward`: net = [GELU(proj), Dropout, Linear] (`gelu-approximate` or `gelu`).

    `dim` → `hidden` → `dim_out` (default `dim`); `in_axis` names the input axis of `net[0].proj`.
    `net[1]` (a Dropout) is a `None` slot so that `net[2]` keeps diffusers' index.
    """

    def __init__(self, dim: int, hidden: int, dim_out: int | None = None, *, approximate: bool = True,
                 in_axis: str | None = "embed", param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.net = nnx.List([
            GELU(dim, hidden, approximate=approximate, axes=(in_axis, "mlp"), **kw),
            None,  # Dropout slot
            Linear(hidden, dim_out or dim, axes=("mlp", "embed"), **kw)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net[2](self.net[0](x))


def apply_rope(x: jax.Array, cos: jax.Array, signed_sin: jax.Array) -> jax.Array:
    """diffusers `apply_rotary_emb(use_real_unbind_dim=-1)` on `[B, S, N, H]`, in fp32.

    `cos`, `signed_sin` are `[S, H]` tables of interleaved pairs (a model's `rope_tables`), `signed_sin`
    carrying the rotation's sign (−sin on even lanes), so the rotation is two multiplies and a pair swap.
    """
    x32 = x.astype(jnp.float32)
    swapped = x32.reshape(*x.shape[:-1], -1, 2)[..., ::-1].reshape(x.shape)  # (x1, x0) per pair
    out = x32 * cos[None, :, None, :] + swapped * signed_sin[None, :, None, :]
    return out.astype(x.dtype)


class GaussianPosterior:
    """Mixin for VAEs whose `encode(sample)` returns `(mean, logvar)` of a diagonal Gaussian and whose
    `decode(z)` maps a raw latent back to pixels."""

    def __call__(self, sample: jax.Array) -> jax.Array:
        """Reconstruction through the posterior mode (diffusers `forward(sample_posterior=False)`)."""
        return self.decode(self.encode_mode(sample))

    def encode_mode(self, sample: jax.Array) -> jax.Array:
        """Raw (unscaled) latent: the posterior mean."""
        return self.encode(sample)[0]

    def encode_sample(self, sample: jax.Array, key: jax.Array) -> jax.Array:
        """A draw mean + std·ε from the posterior (diffusers `latent_dist.sample()`, JAX RNG)."""
        mean, logvar = self.encode(sample)
        return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


class ConfigIO:
    """Mixin for frozen config dataclasses whose fields mirror a diffusers config.json."""

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]):
        """Build from a config dict; unknown keys (`_class_name`, `_diffusers_version`, …) are ignored
        and lists (JSON's only sequence) become tuples, so the config stays hashable."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in diffusers' layout (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
