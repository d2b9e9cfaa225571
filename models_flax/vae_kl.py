"""AutoencoderKL (the Flux and SD image VAE) in Flax nnx.

Mirrors diffusers' `AutoencoderKL` (autoencoder_kl.py, vae.py Encoder/Decoder, DownEncoderBlock2D,
UpDecoderBlock2D, UNetMidBlock2D, ResnetBlock2D, Downsample2D, Upsample2D, the mid-block Attention):
attribute names are diffusers' own, so `convert.place.load_state_dict(vae, diffusers_state_dict)` needs
no renames. The public methods take and return NCHW like diffusers; everything inside is channels-last
`[B, H, W, C]`. Imports only jax/flax, layers.py and kernels/.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx

from ..kernels.attention import attention
from .layers import ConfigIO, Conv, GaussianPosterior, GroupNorm, Linear

RESNET_EPS = 1e-6  # diffusers' Encoder/Decoder pass resnet_eps=1e-6 to every norm
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # DiagonalGaussianDistribution clamps logvar to this range
DOWN_BLOCK = "DownEncoderBlock2D"
UP_BLOCK = "UpDecoderBlock2D"

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": partial(jax.nn.gelu, approximate=False),  # torch nn.GELU() is the exact erf form
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
}


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig(ConfigIO):
    """diffusers `AutoencoderKL` config.json fields, same names and defaults."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = (DOWN_BLOCK,)
    up_block_types: tuple[str, ...] = (UP_BLOCK,)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent along height and width (2 per downsampling block)."""
        return 2 ** (len(self.block_out_channels) - 1)

    temporal_factor = 1  # images: one latent per image

    def to_dict(self) -> dict[str, Any]:
        """Field values as stored (tuples stay tuples, unlike `ConfigIO.to_dict`): the VAE tests compare
        them with `from_dict`'s tuples. `json.dumps` writes them as lists all the same."""
        return dataclasses.asdict(self)


FLUX_VAE_CONFIG = AutoencoderKLConfig(
    down_block_types=(DOWN_BLOCK,) * 4,
    up_block_types=(UP_BLOCK,) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
)


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported act_fn {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _nchw_to_nhwc(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 2, 3, 1))


def _nhwc_to_nchw(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 3, 1, 2))


class ResnetBlock2D(nnx.Module):
    """norm → act → conv, twice, plus a (1×1-projected when widths differ) residual; no time embedding."""

    def __init__(self, in_channels: int, out_channels: int, *, groups: int, act_fn: str,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.act_fn = act_fn
        self.norm1 = GroupNorm(groups, in_channels, eps=RESNET_EPS, param_dtype=param_dtype)
        self.conv1 = Conv(in_channels, out_channels, 3, padding=1, param_dtype=param_dtype, rngs=rngs)
        self.norm2 = GroupNorm(groups, out_channels, eps=RESNET_EPS, param_dtype=param_dtype)
        self.conv2 = Conv(out_channels, out_channels, 3, padding=1, param_dtype=param_dtype, rngs=rngs)
        self.conv_shortcut = (Conv(in_channels, out_channels, 1, param_dtype=param_dtype, rngs=rngs)
                              if in_channels != out_channels else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        act = _activation(self.act_fn)
        h = self.conv1(act(self.norm1(x)))  # [B, H, W, C_out]
        h = self.conv2(act(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h


class Attention(nnx.Module):
    """The VAE mid-block self-attention: GroupNorm → single-head attention over H·W → residual."""

    def __init__(self, channels: int, *, groups: int, param_dtype=jnp.float32, rngs: nnx.Rngs):
        # diffusers sets attention_head_dim = channels, so heads = 1 with head_dim = channels.
        self.heads = 1
        self.group_norm = GroupNorm(groups, channels, eps=RESNET_EPS, param_dtype=param_dtype)
        qkv = dict(axes=("embed", "heads"), param_dtype=param_dtype, rngs=rngs)
        self.to_q = Linear(channels, channels, **qkv)
        self.to_k = Linear(channels, channels, **qkv)
        self.to_v = Linear(channels, channels, **qkv)
        self.to_out = nnx.List([Linear(channels, channels, axes=("heads", "embed"),
                                       param_dtype=param_dtype, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        head_dim = c // self.heads
        t = self.group_norm(x).reshape(b, h * w, c)  # [B, S, C]
        q = self.to_q(t).reshape(b, h * w, self.heads, head_dim)  # [B, S, N, D]
        k = self.to_k(t).reshape(b, h * w, self.heads, head_dim)
        v = self.to_v(t).reshape(b, h * w, self.heads, head_dim)
        o = attention(q, k, v, scale=head_dim ** -0.5).reshape(b, h * w, c)  # [B, S, C]
        return x + self.to_out[0](o).reshape(b, h, w, c)


class Downsample2D(nnx.Module):
    """Stride-2 3×3 conv after a (0, 1) pad on the bottom/right, as diffusers with padding=0."""

    def __init__(self, channels: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, 3, stride=2, padding=((0, 1), (0, 1)),
                         param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)  # [B, H/2, W/2, C]


class Upsample2D(nnx.Module):
    """Nearest-neighbour ×2 then a 3×3 conv."""

    def __init__(self, channels: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.conv = Conv(channels, channels, 3, padding=1, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # [B, 2H, 2W, C]
        return self.conv(x)


class DownEncoderBlock2D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, add_downsample: bool,
                 groups: int, act_fn: str, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(groups=groups, act_fn=act_fn, param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List([ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, **kw)
                                 for i in range(num_layers)])
        self.downsamplers = (nnx.List([Downsample2D(out_channels, param_dtype=param_dtype, rngs=rngs)])
                             if add_downsample else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        for downsampler in self.downsamplers or ():
            x = downsampler(x)
        return x


class UpDecoderBlock2D(nnx.Module):
    def __init__(self, in_channels: int, out_channels: int, *, num_layers: int, add_upsample: bool,
                 groups: int, act_fn: str, param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(groups=groups, act_fn=act_fn, param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List([ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, **kw)
                                 for i in range(num_layers)])
        self.upsamplers = (nnx.List([Upsample2D(out_channels, param_dtype=param_dtype, rngs=rngs)])
                           if add_upsample else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        for upsampler in self.upsamplers or ():
            x = upsampler(x)
        return x


class UNetMidBlock2D(nnx.Module):
    """resnet → [attention] → resnet at the lowest resolution."""

    def __init__(self, channels: int, *, groups: int, act_fn: str, add_attention: bool,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        kw = dict(groups=groups, act_fn=act_fn, param_dtype=param_dtype, rngs=rngs)
        self.resnets = nnx.List([ResnetBlock2D(channels, channels, **kw) for _ in range(2)])
        # diffusers keeps a `None` placeholder when attention is off; it has no weights either way.
        self.attentions = nnx.List([Attention(channels, groups=groups, param_dtype=param_dtype,
                                              rngs=rngs)] if add_attention else [])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Encoder(nnx.Module):
    """Image `[B, H, W, C_in]` → `[B, H/f, W/f, 2·latent]` (mean ‖ logvar), f = 2^(blocks-1)."""

    def __init__(self, cfg: AutoencoderKLConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        ch, groups = cfg.block_out_channels, cfg.norm_num_groups
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.act_fn = cfg.act_fn
        self.conv_in = Conv(cfg.in_channels, ch[0], 3, padding=1, **kw)
        self.down_blocks = nnx.List([
            DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], num_layers=cfg.layers_per_block,
                               add_downsample=i < len(ch) - 1, groups=groups, act_fn=cfg.act_fn, **kw)
            for i in range(len(ch))])
        self.mid_block = UNetMidBlock2D(ch[-1], groups=groups, act_fn=cfg.act_fn,
                                        add_attention=cfg.mid_block_add_attention, **kw)
        self.conv_norm_out = GroupNorm(groups, ch[-1], eps=RESNET_EPS, param_dtype=param_dtype)
        self.conv_out = Conv(ch[-1], 2 * cfg.latent_channels, 3, padding=1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)  # [B, H, W, ch0]
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)  # [B, H/f, W/f, ch-1]
        return self.conv_out(_activation(self.act_fn)(self.conv_norm_out(x)))


class Decoder(nnx.Module):
    """Latent `[B, h, w, latent]` → image `[B, h·f, w·f, C_out]`."""

    def __init__(self, cfg: AutoencoderKLConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        ch, groups = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.act_fn = cfg.act_fn
        self.conv_in = Conv(cfg.latent_channels, ch[0], 3, padding=1, **kw)
        self.mid_block = UNetMidBlock2D(ch[0], groups=groups, act_fn=cfg.act_fn,
                                        add_attention=cfg.mid_block_add_attention, **kw)
        self.up_blocks = nnx.List([
            UpDecoderBlock2D(ch[max(i - 1, 0)], ch[i], num_layers=cfg.layers_per_block + 1,
                             add_upsample=i < len(ch) - 1, groups=groups, act_fn=cfg.act_fn, **kw)
            for i in range(len(ch))])
        self.conv_norm_out = GroupNorm(groups, ch[-1], eps=RESNET_EPS, param_dtype=param_dtype)
        self.conv_out = Conv(ch[-1], cfg.out_channels, 3, padding=1, **kw)

    def __call__(self, z: jax.Array) -> jax.Array:
        x = self.mid_block(self.conv_in(z))  # [B, h, w, ch-1]
        for block in self.up_blocks:
            x = block(x)  # ×2 spatially except the last
        return self.conv_out(_activation(self.act_fn)(self.conv_norm_out(x)))


def _check_config(cfg: AutoencoderKLConfig) -> None:
    n = len(cfg.block_out_channels)
    for field, kinds, want in (("down_block_types", cfg.down_block_types, DOWN_BLOCK),
                               ("up_block_types", cfg.up_block_types, UP_BLOCK)):
        if len(kinds) != n or any(k != want for k in kinds):
            raise ValueError(f"{field}={kinds!r}: only {n} × {want!r} (one per block_out_channels "
                             f"entry {cfg.block_out_channels}) is supported")
    _activation(cfg.act_fn)


class AutoencoderKL(GaussianPosterior, nnx.Module):
    """diffusers `AutoencoderKL`; arrays are NCHW at every public method."""

    def __init__(self, config: AutoencoderKLConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        _check_config(config)
        self.config = config
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        z = config.latent_channels
        self.encoder = Encoder(config, **kw)
        self.decoder = Decoder(config, **kw)
        self.quant_conv = Conv(2 * z, 2 * z, 1, **kw) if config.use_quant_conv else None
        self.post_quant_conv = Conv(z, z, 1, **kw) if config.use_post_quant_conv else None

    def encode(self, sample: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Posterior of `sample` `[B, C_in, H, W]`.

        Returns:
          (mean, logvar), each `[B, latent, H/f, W/f]` (diffusers `latent_dist.mean` / `.logvar`).
        """
        h = self.encoder(_nchw_to_nhwc(sample))  # [B, H/f, W/f, 2·latent]
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(_nhwc_to_nchw(h), 2, axis=1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: jax.Array) -> jax.Array:
        """Raw latent `[B, latent, h, w]` → image `[B, C_out, h·f, w·f]` (diffusers `decode(z).sample`)."""
        x = _nchw_to_nhwc(z)  # [B, h, w, latent]
        if self.post_quant_conv is not None:
            x = self.post_quant_conv(x)
        return _nhwc_to_nchw(self.decoder(x))

    def scale_latents(self, z_raw: jax.Array) -> jax.Array:
        """Raw VAE latent → the diffusion model's latent space: (z − shift) · scaling."""
        return (z_raw - (self.config.shift_factor or 0.0)) * self.config.scaling_factor

    def unscale_latents(self, z: jax.Array) -> jax.Array:
        """The diffusion model's latent → raw VAE latent: z / scaling + shift."""
        return z / self.config.scaling_factor + (self.config.shift_factor or 0.0)


def example_inputs(config: AutoencoderKLConfig, sizes, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 inputs for `sizes` (`families.Sizes`: latent height × width, batch): an image
    in [−1, 1] to encode (`sample`, NCHW) and a latent to decode (`latent`)."""
    rng = np.random.default_rng(seed)
    f = 2 ** (len(config.block_out_channels) - 1)
    b, h, w = sizes.batch, sizes.height, sizes.width
    return dict(sample=rng.uniform(-1.0, 1.0, (b, config.in_channels, h * f, w * f)).astype(np.float32),
                latent=rng.standard_normal((b, config.latent_channels, h, w), np.float32))
