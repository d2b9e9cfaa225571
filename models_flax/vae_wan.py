"""AutoencoderKLWan (the Wan 2.1 and Wan 2.2 video VAE) in Flax nnx.

Mirrors diffusers' `AutoencoderKLWan` (autoencoder_kl_wan.py): attribute names are diffusers' own, so
`convert.place.load_state_dict(vae, diffusers_state_dict)` needs no renames. Public methods take and
return NCTHW like diffusers; inside everything is channels-last `[B, T, H, W, C]`.

Time is processed chunk by chunk exactly like diffusers (encode: the first frame, then 4 frames per
chunk; decode: one latent frame per chunk). The feature cache diffusers keeps in a mutable list is an
explicit list of arrays here, threaded through every block (`(x, cache) -> (y, new_cache)`) in
diffusers' `feat_idx` order; `None` entries mean "first chunk, nothing cached yet". A chunk step is a
pure function of (parameters, chunk, cache), jitted once per (first / later) chunk kind and reused for
every later chunk, so memory does not grow with the frame count beyond the cache.

Cache slots (all `[B, t, h, w, c]`): a causal 3×3×3 conv keeps the last CACHE_T frames of its
zero/cache-padded input; an `upsample3d` keeps the same for its time conv (zeros after the first chunk,
diffusers' "Rep"); a `downsample3d` keeps the last frame it saw. Imports only jax/flax, layers.py and
kernels/.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx

from ..kernels.attention import attention
from .layers import ONES, ConfigIO, Conv, GaussianPosterior, param

CACHE_T = 2  # frames a causal conv keeps from the previous chunk (its time padding)
ENCODE_CHUNK_FRAMES = 4  # frames per encoder chunk after the first frame
NORM_EPS = 1e-12  # torch.nn.functional.normalize's default eps
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # DiagonalGaussianDistribution clamps logvar to this range
UPSAMPLE_MODES = ("upsample2d", "upsample3d")
DOWNSAMPLE_MODES = ("downsample2d", "downsample3d")

Cache = list  # list[jax.Array | None], one entry per cache slot, diffusers' feat_idx order

WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)
# Wan2.2-TI2V-5B vae/config.json (the same numbers as ComfyUI's latent_formats.Wan22).
WAN22_LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)
WAN22_LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)


@dataclasses.dataclass(frozen=True)
class WanVAEConfig(ConfigIO):
    """diffusers `AutoencoderKLWan` config.json fields, same names and defaults (the defaults are the
    Wan 2.1 VAE). `dropout` is accepted and ignored (inference only)."""

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent along height and width (8; 16 for the 2.2 VAE)."""
        return self.scale_factor_spatial or 8

    @property
    def temporal_factor(self) -> int:
        """Frames per latent frame after the first (4)."""
        return self.scale_factor_temporal or 4

    @property
    def latent_channels(self) -> int:
        return self.z_dim

    def to_dict(self) -> dict[str, Any]:
        """Field values as stored (tuples stay tuples, unlike `ConfigIO.to_dict`): the VAE tests compare
        them with `from_dict`'s tuples. `json.dumps` writes them as lists all the same."""
        return dataclasses.asdict(self)


WAN21_VAE_CONFIG = WanVAEConfig()
WAN22_VAE_CONFIG = WanVAEConfig(
    base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
    patch_size=2, scale_factor_spatial=16,
    latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD)


def _check_config(cfg: WanVAEConfig) -> None:
    if len(cfg.temperal_downsample) != len(cfg.dim_mult) - 1:
        raise ValueError(f"temperal_downsample={cfg.temperal_downsample!r} needs one entry per "
                         f"downsampling stage ({len(cfg.dim_mult) - 1} for dim_mult={cfg.dim_mult!r})")


def _run(layers: Sequence[nnx.Module], x: jax.Array, cache: Sequence, **kw) -> tuple[jax.Array, Cache]:
    """Apply cached `layers` in turn, each taking its own `cache_size` slots of `cache`."""
    new, i = [], 0
    for layer in layers:
        x, c = layer(x, cache[i:i + layer.cache_size], **kw)
        new += c
        i += layer.cache_size
    return x, new


def _per_frame(fn, x: jax.Array) -> jax.Array:
    """Apply a 2-D `[N, H, W, C]` op to every frame of `[B, T, H, W, C]`."""
    b, t = x.shape[:2]
    y = fn(x.reshape(b * t, *x.shape[2:]))
    return y.reshape(b, t, *y.shape[1:])


class CausalConv3d(Conv):
    """WanCausalConv3d: 3-D conv whose time axis is padded 2·p on the left only (kernel DHWIO)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], *,
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        super().__init__(in_channels, out_channels, kernel_size, ndim=3, stride=stride,
                         padding=((0, 0), (ph, ph), (pw, pw)), param_dtype=param_dtype, rngs=rngs)
        self.time_pad = 2 * pt

    def __call__(self, x: jax.Array) -> jax.Array:
        """No cache: zero frames on the left. `[B, T, H, W, C_in]` → `[B, T', H', W', C_out]`."""
        x = jnp.pad(x, ((0, 0), (self.time_pad, 0), (0, 0), (0, 0), (0, 0)))
        return super().__call__(x)

    def step(self, x: jax.Array, cache: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """One chunk with the previous chunk's last CACHE_T input frames in place of the zero padding.

        Returns (output, new cache `[B, CACHE_T, H, W, C_in]`). A missing cache is zeros: that is what
        diffusers' shorter first-chunk cache plus zero padding amounts to.
        """
        if self.time_pad != CACHE_T:
            raise ValueError(f"a cached causal conv needs time padding {CACHE_T}, got {self.time_pad}")
        if cache is None:
            cache = jnp.zeros((x.shape[0], CACHE_T, *x.shape[2:]), x.dtype)
        x = jnp.concatenate([cache.astype(x.dtype), x], axis=1)  # [B, CACHE_T + T, H, W, C]
        return super().__call__(x), x[:, -CACHE_T:]


class RMSNorm(nnx.Module):
    """WanRMS_norm: x / ‖x‖₂ over channels · √C · gamma (F.normalize, eps 1e-12; no bias in Wan).

    `gamma` keeps diffusers' name and channel-first shape `[C, 1, 1(, 1)]` so checkpoints load as is.
    """

    def __init__(self, dim: int, *, images: bool = True, param_dtype=jnp.float32):
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.dim = dim
        self.gamma = param(ONES, shape, param_dtype, ("conv_out",) + (None,) * (len(shape) - 1))

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(x32), axis=-1, keepdims=True))
        y = (x32 / jnp.maximum(norm, NORM_EPS)).astype(dtype)
        return y * (self.dim ** 0.5) * self.gamma[...].reshape(self.dim).astype(dtype)


class ResidualBlock(nnx.Module):
    """WanResidualBlock: (RMS norm → SiLU → causal conv) ×2 plus a shortcut (1×1×1 conv if widths differ)."""

    cache_size = 2

    def __init__(self, in_dim: int, out_dim: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.norm1 = RMSNorm(in_dim, images=False, param_dtype=param_dtype)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1, **kw)
        self.norm2 = RMSNorm(out_dim, images=False, param_dtype=param_dtype)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1, **kw)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1, **kw) if in_dim != out_dim else None

    def __call__(self, x: jax.Array, cache: Sequence) -> tuple[jax.Array, Cache]:
        h = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        x, c1 = self.conv1.step(jax.nn.silu(self.norm1(x)), cache[0])  # [B, T, H, W, out]
        x, c2 = self.conv2.step(jax.nn.silu(self.norm2(x)), cache[1])
        return x + h, [c1, c2]


class AttentionBlock(nnx.Module):
    """WanAttentionBlock: per-frame single-head self-attention over H·W, 1×1 conv qkv and projection."""

    cache_size = 0

    def __init__(self, dim: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.norm = RMSNorm(dim, images=True, param_dtype=param_dtype)
        self.to_qkv = Conv(dim, 3 * dim, 1, param_dtype=param_dtype, rngs=rngs)  # torch [3C, C, 1, 1]
        self.proj = Conv(dim, dim, 1, param_dtype=param_dtype, rngs=rngs)

    def _frames(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(n, h * w, 3 * c)  # [N, S, 3C]
        q, k, v = (a[:, :, None, :] for a in jnp.split(qkv, 3, axis=-1))  # [N, S, 1, C] each
        o = attention(q, k, v, scale=c ** -0.5)  # [N, S, 1, C]
        return self.proj(o.reshape(n, h, w, c))

    def __call__(self, x: jax.Array, cache: Sequence = ()) -> tuple[jax.Array, Cache]:
        return x + _per_frame(self._frames, x), []


class NearestUpsample2x(nnx.Module):
    """WanUpsample(scale 2, "nearest-exact"): at an integer factor that is plain pixel repetition."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # [N, 2H, 2W, C]


class ZeroPadBottomRight(nnx.Module):
    """nn.ZeroPad2d((0, 1, 0, 1))."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))


class Resample(nnx.Module):
    """WanResample: per-frame ×2 up/down conv, plus a causal time conv in the `*3d` modes.

    `resample` is a list mirroring diffusers' nn.Sequential (index 0 has no weights, index 1 is the conv).
    """

    def __init__(self, dim: int, mode: str, *, upsample_out_dim: int | None = None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.mode = mode
        if mode in UPSAMPLE_MODES:
            out = dim // 2 if upsample_out_dim is None else upsample_out_dim
            self.resample = nnx.List([NearestUpsample2x(), Conv(dim, out, 3, padding=1, **kw)])
        elif mode in DOWNSAMPLE_MODES:
            self.resample = nnx.List([ZeroPadBottomRight(), Conv(dim, dim, 3, stride=2, **kw)])
        else:
            raise ValueError(f"unsupported resample mode {mode!r}; choose from "
                             f"{UPSAMPLE_MODES + DOWNSAMPLE_MODES}")
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0), **kw)
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), **kw)
        else:
            self.time_conv = None
        self.cache_size = 1 if self.time_conv is not None else 0

    def _spatial(self, x: jax.Array) -> jax.Array:
        return _per_frame(lambda f: self.resample[1](self.resample[0](f)), x)

    def __call__(self, x: jax.Array, cache: Sequence) -> tuple[jax.Array, Cache]:
        new: Cache = []
        if self.mode == "upsample3d":
            b, t, h, w, c = x.shape
            if cache[0] is None:  # first chunk: diffusers marks the slot "Rep" and skips the time conv
                new = [jnp.zeros((b, CACHE_T, h, w, c), x.dtype)]
            else:
                y, c_new = self.time_conv.step(x, cache[0])  # [B, T, H, W, 2C]
                # channel halves are frames 2t and 2t+1: [B, T, H, W, 2, C] → [B, 2T, H, W, C]
                x = jnp.moveaxis(y.reshape(b, t, h, w, 2, c), 4, 2).reshape(b, 2 * t, h, w, c)
                new = [c_new]
        x = self._spatial(x)  # [B, T, H·2^±1, W·2^±1, C']
        if self.mode == "downsample3d":
            new = [x[:, -1:]]
            if cache[0] is not None:  # the first chunk only primes the cache
                x = self.time_conv(jnp.concatenate([cache[0].astype(x.dtype), x], axis=1))  # stride 2 in T
        return x, new


class AvgDown3D(nnx.Module):
    """Wan 2.2 shortcut: fold a (t, s, s) neighbourhood into channels, then average channel groups."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1):
        factor = factor_t * factor_s * factor_s
        if in_channels * factor % out_channels != 0:
            raise ValueError(f"in_channels ({in_channels}) × factor ({factor}) must be divisible by "
                             f"out_channels ({out_channels})")
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        self.group_size = in_channels * factor // out_channels

    def __call__(self, x: jax.Array) -> jax.Array:
        ft, fs = self.factor_t, self.factor_s
        pad_t = (ft - x.shape[1] % ft) % ft
        x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
        b, t, h, w, c = x.shape
        x = x.reshape(b, t // ft, ft, h // fs, fs, w // fs, fs, c)
        x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)  # [B, T', H', W', C, ft, fs_h, fs_w]
        x = x.reshape(b, t // ft, h // fs, w // fs, self.out_channels, self.group_size)
        return jnp.mean(x, axis=-1)  # [B, T', H', W', out]


class DupUp3D(nnx.Module):
    """Wan 2.2 shortcut: repeat channels, unfold them into a (t, s, s) neighbourhood."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1):
        factor = factor_t * factor_s * factor_s
        if out_channels * factor % in_channels != 0:
            raise ValueError(f"out_channels ({out_channels}) × factor ({factor}) must be divisible by "
                             f"in_channels ({in_channels})")
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        self.repeats = out_channels * factor // in_channels

    def __call__(self, x: jax.Array, first_chunk: bool = False) -> jax.Array:
        ft, fs, o = self.factor_t, self.factor_s, self.out_channels
        b, t, h, w, _ = x.shape
        x = jnp.repeat(x, self.repeats, axis=-1).reshape(b, t, h, w, o, ft, fs, fs)
        x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4)  # [B, T, ft, H, fs_h, W, fs_w, out]
        x = x.reshape(b, t * ft, h * fs, w * fs, o)
        return x[:, ft - 1:] if first_chunk else x


class MidBlock(nnx.Module):
    """WanMidBlock: resnet → (attention → resnet)."""

    def __init__(self, dim: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List([ResidualBlock(dim, dim, **kw) for _ in range(2)])
        self.attentions = nnx.List([AttentionBlock(dim, **kw)])
        self.cache_size = 2 * ResidualBlock.cache_size

    def __call__(self, x: jax.Array, cache: Sequence) -> tuple[jax.Array, Cache]:
        return _run([self.resnets[0], self.attentions[0], self.resnets[1]], x, cache)


class ResidualDownBlock(nnx.Module):
    """WanResidualDownBlock (Wan 2.2 encoder): resnets → downsampler, plus an AvgDown3D shortcut."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, *, temperal_downsample: bool,
                 down_flag: bool, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, factor_t=2 if temperal_downsample else 1,
                                      factor_s=2 if down_flag else 1)
        self.resnets = nnx.List([ResidualBlock(in_dim if i == 0 else out_dim, out_dim, **kw)
                                 for i in range(num_res_blocks)])
        mode = "downsample3d" if temperal_downsample else "downsample2d"
        self.downsampler = Resample(out_dim, mode, **kw) if down_flag else None
        self.cache_size = sum(m.cache_size for m in self._layers())

    def _layers(self) -> list[nnx.Module]:
        return [*self.resnets] + ([self.downsampler] if self.downsampler is not None else [])

    def __call__(self, x: jax.Array, cache: Sequence) -> tuple[jax.Array, Cache]:
        y, new = _run(self._layers(), x, cache)
        return y + self.avg_shortcut(x), new


class UpBlock(nnx.Module):
    """WanUpBlock (Wan 2.1 decoder): num_res_blocks + 1 resnets → optional upsampler."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, *, upsample_mode: str | None,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List([ResidualBlock(in_dim if i == 0 else out_dim, out_dim, **kw)
                                 for i in range(num_res_blocks + 1)])
        self.upsamplers = (nnx.List([Resample(out_dim, upsample_mode, **kw)])
                           if upsample_mode is not None else None)
        self.cache_size = sum(m.cache_size for m in self._layers())

    def _layers(self) -> list[nnx.Module]:
        return [*self.resnets, *(self.upsamplers or ())]

    def __call__(self, x: jax.Array, cache: Sequence, first_chunk: bool = False) -> tuple[jax.Array, Cache]:
        return _run(self._layers(), x, cache)


class ResidualUpBlock(nnx.Module):
    """WanResidualUpBlock (Wan 2.2 decoder): resnets → upsampler, plus a DupUp3D shortcut."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, *, temperal_upsample: bool,
                 up_flag: bool, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.avg_shortcut = (DupUp3D(in_dim, out_dim, factor_t=2 if temperal_upsample else 1, factor_s=2)
                             if up_flag else None)
        self.resnets = nnx.List([ResidualBlock(in_dim if i == 0 else out_dim, out_dim, **kw)
                                 for i in range(num_res_blocks + 1)])
        mode = "upsample3d" if temperal_upsample else "upsample2d"
        self.upsampler = Resample(out_dim, mode, upsample_out_dim=out_dim, **kw) if up_flag else None
        self.cache_size = sum(m.cache_size for m in self._layers())

    def _layers(self) -> list[nnx.Module]:
        return [*self.resnets] + ([self.upsampler] if self.upsampler is not None else [])

    def __call__(self, x: jax.Array, cache: Sequence, first_chunk: bool = False) -> tuple[jax.Array, Cache]:
        y, new = _run(self._layers(), x, cache)
        if self.avg_shortcut is not None:
            y = y + self.avg_shortcut(x, first_chunk=first_chunk)
        return y, new


class Encoder3d(nnx.Module):
    """WanEncoder3d: video chunk `[B, T, H, W, C_in]` → `[B, T', H/8, W/8, 2·z]` (mean ‖ logvar)."""

    def __init__(self, cfg: WanVAEConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        dims = [cfg.base_dim * u for u in (1, *cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1, **kw)
        blocks: list[nnx.Module] = []
        scale = 1.0
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if cfg.is_residual:
                blocks.append(ResidualDownBlock(
                    in_dim, out_dim, cfg.num_res_blocks, down_flag=i != last,
                    temperal_downsample=cfg.temperal_downsample[i] if i != last else False, **kw))
                continue
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, **kw))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(out_dim, **kw))
                in_dim = out_dim
            if i != last:
                mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
                blocks.append(Resample(out_dim, mode, **kw))
                scale /= 2.0
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], **kw)
        self.norm_out = RMSNorm(dims[-1], images=False, param_dtype=param_dtype)
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1, **kw)
        self.cache_size = 2 + sum(b.cache_size for b in blocks) + self.mid_block.cache_size

    def __call__(self, x: jax.Array, cache: Sequence) -> tuple[jax.Array, Cache]:
        x, c_in = self.conv_in.step(x, cache[0])
        x, c_mid = _run([*self.down_blocks, self.mid_block], x, cache[1:-1])
        x, c_out = self.conv_out.step(jax.nn.silu(self.norm_out(x)), cache[-1])
        return x, [c_in, *c_mid, c_out]


class Decoder3d(nnx.Module):
    """WanDecoder3d: latent chunk `[B, t, h, w, z]` → video `[B, T, 8h, 8w, C_out]`."""

    def __init__(self, cfg: WanVAEConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        base = cfg.decoder_base_dim if cfg.decoder_base_dim is not None else cfg.base_dim
        mult = cfg.dim_mult
        dims = [base * u for u in (mult[-1], *mult[::-1])]
        temperal_upsample = cfg.temperal_downsample[::-1]
        last = len(mult) - 1
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1, **kw)
        self.mid_block = MidBlock(dims[0], **kw)
        blocks: list[nnx.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            up_flag = i != last
            if cfg.is_residual:
                blocks.append(ResidualUpBlock(
                    in_dim, out_dim, cfg.num_res_blocks, up_flag=up_flag,
                    temperal_upsample=temperal_upsample[i] if up_flag else False, **kw))
                continue
            if i > 0:  # Wan 2.1: the previous upsampler halved the width
                in_dim //= 2
            mode = None if not up_flag else "upsample3d" if temperal_upsample[i] else "upsample2d"
            blocks.append(UpBlock(in_dim, out_dim, cfg.num_res_blocks, upsample_mode=mode, **kw))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1], images=False, param_dtype=param_dtype)
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, 3, padding=1, **kw)
        self.cache_size = 2 + self.mid_block.cache_size + sum(b.cache_size for b in blocks)

    def __call__(self, x: jax.Array, cache: Sequence) -> tuple[jax.Array, Cache]:
        first_chunk = cache[0] is None  # diffusers passes first_chunk=True exactly when nothing is cached
        x, c_in = self.conv_in.step(x, cache[0])
        x, c_mid = self.mid_block(x, cache[1:1 + self.mid_block.cache_size])
        x, c_up = _run(self.up_blocks, x, cache[1 + self.mid_block.cache_size:-1],
                       first_chunk=first_chunk)
        x, c_out = self.conv_out.step(jax.nn.silu(self.norm_out(x)), cache[-1])
        return x, [c_in, *c_mid, *c_up, c_out]


def patchify(x: jax.Array, p: int | None) -> jax.Array:
    """diffusers `patchify`: `[B, T, H, W, C]` → `[B, T, H/p, W/p, C·p·p]`, channel c·p² + pw·p + ph."""
    if not p or p == 1:
        return x
    b, t, h, w, c = x.shape
    if h % p or w % p:
        raise ValueError(f"height ({h}) and width ({w}) must be divisible by patch_size ({p})")
    x = x.reshape(b, t, h // p, p, w // p, p, c)  # [B, T, H', ph, W', pw, C]
    x = x.transpose(0, 1, 2, 4, 6, 5, 3)  # [B, T, H', W', C, pw, ph]
    return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int | None) -> jax.Array:
    """Inverse of `patchify`: `[B, T, h, w, C·p·p]` → `[B, T, h·p, w·p, C]`."""
    if not p or p == 1:
        return x
    b, t, h, w, cp = x.shape
    c = cp // (p * p)
    x = x.reshape(b, t, h, w, c, p, p)  # [B, T, h, w, C, pw, ph]
    x = x.transpose(0, 1, 2, 6, 3, 5, 4)  # [B, T, h, ph, w, pw, C]
    return x.reshape(b, t, h * p, w * p, c)


def _ncthw_to_nthwc(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 2, 3, 4, 1))


def _nthwc_to_ncthw(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 4, 1, 2, 3))


def _encode_step(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array,
                 cache: Cache) -> tuple[jax.Array, Cache]:
    return nnx.merge(graphdef, state).encode_chunk(x, cache)


def _decode_step(graphdef: nnx.GraphDef, state: nnx.State, z: jax.Array,
                 cache: Cache) -> tuple[jax.Array, Cache]:
    return nnx.merge(graphdef, state).decode_chunk(z, cache)


# One compiled program per (model structure, chunk shape, first/later chunk); reused for every chunk.
# The incoming feature cache is donated: the new cache takes its buffers, so a chunk holds one cache,
# not two (4 GiB less at 720p for the 2.1 VAE in bf16).
encode_step = jax.jit(_encode_step, static_argnums=0, donate_argnums=3)
decode_step = jax.jit(_decode_step, static_argnums=0, donate_argnums=3)


class AutoencoderKLWan(GaussianPosterior, nnx.Module):
    """diffusers `AutoencoderKLWan`; arrays are NCTHW at every public method."""

    def __init__(self, config: WanVAEConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        _check_config(config)
        self.config = config
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        z = config.z_dim
        self.encoder = Encoder3d(config, **kw)
        self.quant_conv = CausalConv3d(2 * z, 2 * z, 1, **kw)
        self.post_quant_conv = CausalConv3d(z, z, 1, **kw)
        self.decoder = Decoder3d(config, **kw)

    # -- per-chunk steps (channels-last, pure in (params, chunk, cache)) --

    def encode_chunk(self, x: jax.Array, cache: Sequence) -> tuple[jax.Array, Cache]:
        """Patchified frames `[B, t, H, W, C_in]` (1 first, then 4) → (`[B, t', h, w, 2·z]`, cache)."""
        h, cache = self.encoder(x, cache)
        return self.quant_conv(h), cache  # 1×1×1 conv: per chunk equals diffusers' whole-video call

    def decode_chunk(self, z: jax.Array, cache: Sequence) -> tuple[jax.Array, Cache]:
        """One latent frame `[B, 1, h, w, z]` → (clamped frames `[B, 1 or 4, H, W, C_out]`, cache)."""
        x, cache = self.decoder(self.post_quant_conv(z), cache)
        x = unpatchify(x, self.config.patch_size)
        return jnp.clip(x, -1.0, 1.0), cache

    # -- public API (NCTHW) --

    def encode(self, sample: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Posterior of a video `[B, C, T, H, W]` (T = 1 + 4k; extra frames are dropped like diffusers).

        Returns:
          (mean, logvar), each `[B, z, 1 + k, H/f, W/f]` (diffusers `latent_dist.mean` / `.logvar`).
        """
        x = patchify(_ncthw_to_nthwc(sample), self.config.patch_size)  # [B, T, H', W', C']
        graphdef, state = nnx.split(self)
        cache: Cache = [None] * self.encoder.cache_size
        outs = []
        for i in range(1 + (x.shape[1] - 1) // ENCODE_CHUNK_FRAMES):
            lo = 0 if i == 0 else 1 + ENCODE_CHUNK_FRAMES * (i - 1)
            hi = 1 + ENCODE_CHUNK_FRAMES * i
            h, cache = encode_step(graphdef, state, x[:, lo:hi], cache)  # [B, 1, h, w, 2z]
            outs.append(h)
        mean, logvar = jnp.split(_nthwc_to_ncthw(jnp.concatenate(outs, axis=1)), 2, axis=1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: jax.Array) -> jax.Array:
        """Raw latent `[B, z, T', h, w]` → video `[B, C_out, 1 + 4(T'−1), H, W]` in [−1, 1]
        (diffusers `decode(z).sample`)."""
        x = _ncthw_to_nthwc(z)  # [B, T', h, w, z]
        graphdef, state = nnx.split(self)
        cache: Cache = [None] * self.decoder.cache_size
        outs = []
        for i in range(x.shape[1]):
            frames, cache = decode_step(graphdef, state, x[:, i:i + 1], cache)
            outs.append(frames)
        return _nthwc_to_ncthw(jnp.concatenate(outs, axis=1))

    def _latent_stats(self, dtype) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        # diffusers' own tiny configs keep the 16 default stats with other z_dims; only using them fails.
        for name in ("latents_mean", "latents_std"):
            if len(getattr(cfg, name)) != cfg.z_dim:
                raise ValueError(f"config.{name} has {len(getattr(cfg, name))} entries, z_dim is {cfg.z_dim}")
        shape = (1, cfg.z_dim, 1, 1, 1)
        return (jnp.asarray(cfg.latents_mean, dtype).reshape(shape),
                jnp.asarray(cfg.latents_std, dtype).reshape(shape))

    def normalize_latents(self, z_raw: jax.Array) -> jax.Array:
        """Raw VAE latent `[B, z, T', h, w]` → the transformer's latent space: (z − mean) / std."""
        mean, std = self._latent_stats(z_raw.dtype)
        return (z_raw - mean) / std

    def denormalize_latents(self, z: jax.Array) -> jax.Array:
        """The transformer's latent → raw VAE latent: z · std + mean (WanPipeline before decode)."""
        mean, std = self._latent_stats(z.dtype)
        return z * std + mean


def example_inputs(config: WanVAEConfig, sizes, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 inputs for `sizes` (`families.Sizes`: latent frames × height × width, batch): a
    video in [−1, 1] of 1 + 4·(frames − 1) frames to encode (`sample`, NCTHW) and a latent to decode."""
    rng = np.random.default_rng(seed)
    fs, ft = config.scale_factor_spatial or 8, config.scale_factor_temporal or 4
    b, t, h, w = sizes.batch, sizes.frames, sizes.height, sizes.width
    return dict(sample=rng.uniform(-1.0, 1.0, (b, 3, 1 + ft * (t - 1), h * fs, w * fs)).astype(np.float32),
                latent=rng.standard_normal((b, config.z_dim, t, h, w), np.float32))
