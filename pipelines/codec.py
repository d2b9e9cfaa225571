"""A loaded VAE as ComfyUI's `VAE` object speaks: pixels in −1..1 ↔ raw latents, images or videos.

`VAECodec(vae)` wraps our `AutoencoderKL` (Flux) or `AutoencoderKLWan` (Wan 2.1 / 2.2): `encode`
takes `[B, 3, H, W]` (images) or `[B, 3, F, H, W]` (videos, F = 4k + 1) in −1..1 and returns the raw
latent (posterior mean, ComfyUI's LATENT space); `decode` the reverse, clipped to −1..1. Sizes are
checked on the host first, with errors that say what fits. Host numpy in and out; no torch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import families
from .inputs import param_dtype
from ..sharding.mesh import param_bytes
from .placement import free, to_host, vae_attention_context


class VAECodec:
    """Attributes: `video` (Wan VAEs), `latent_channels`, `spatial` (pixels per latent),
    `temporal` (frames per latent frame after the first; 1 for images), `nbytes`."""

    def __init__(self, vae: nnx.Module, name: str = ""):
        kind = families.model_for_config(vae.config)
        family = None if kind is None else families.family_of(kind)
        if kind is None or kind.role != "vae" or family is None:
            raise ValueError(f"{name or type(vae).__name__} is not a VAE of a known family")
        self.family = family.name
        self.video = family.output == "video"
        config = vae.config
        self.name = name or type(vae).__name__
        if self.video:
            self.latent_channels, self.spatial, self.temporal = config.z_dim, config.spatial_factor, config.temporal_factor
        else:
            self.latent_channels = config.latent_channels
            self.spatial, self.temporal = 2 ** (len(config.block_out_channels) - 1), 1
        self.vae, self.dtype = vae, param_dtype(vae)
        graph = nnx.graphdef(vae)
        if self.video:  # AutoencoderKLWan jits its per-chunk steps itself
            self._decode = lambda state, z: nnx.merge(graph, state).decode(z)
            self._encode = lambda state, x: nnx.merge(graph, state).encode_mode(x)
        else:
            self._decode = jax.jit(lambda state, z: nnx.merge(graph, state).decode(z))
            self._encode = jax.jit(lambda state, x: nnx.merge(graph, state).encode_mode(x))

    @property
    def nbytes(self) -> int:
        return param_bytes(self.vae)

    def release(self) -> None:
        """Free the weights' device memory now; the codec is unusable afterwards."""
        free(nnx.state(self.vae))

    def check_latent(self, z: np.ndarray) -> None:
        dims = 3 if self.video else 2
        if z.ndim != 2 + dims or z.shape[1] != self.latent_channels:
            want = "[B, C, T, h, w]" if self.video else "[B, C, h, w]"
            raise ValueError(f"this {self.family} VAE ({self.name}) decodes {want} latents with "
                             f"{self.latent_channels} channels; got a latent of shape {tuple(z.shape)}: use "
                             "the VAE that matches the model that made the latent")

    def decode(self, z) -> np.ndarray:
        """Raw latents → pixels in −1..1: `[B, 3, H, W]` or `[B, 3, F, H, W]` float32."""
        z = np.asarray(z, np.float32)
        self.check_latent(z)
        with vae_attention_context():
            out = self._decode(nnx.state(self.vae), jnp.asarray(z, self.dtype))
        return np.clip(to_host(out.astype(jnp.float32)), -1.0, 1.0)

    def encode(self, pixels) -> np.ndarray:
        """Pixels in −1..1 (`[B, 3, H, W]` or `[B, 3, F, H, W]`) → raw latents float32."""
        pixels = np.asarray(pixels, np.float32)
        dims = 3 if self.video else 2
        if pixels.ndim != 2 + dims or pixels.shape[1] != 3:
            raise ValueError(f"this {self.family} VAE encodes {'videos [B, 3, F, H, W]' if self.video else 'images [B, 3, H, W]'}, "
                             f"got pixels of shape {tuple(pixels.shape)}")
        h, w = pixels.shape[-2:]
        if h % self.spatial or w % self.spatial:
            raise ValueError(f"image size {h}×{w} is not a multiple of the VAE's {self.spatial}")
        if self.video and (pixels.shape[2] - 1) % self.temporal:
            f = pixels.shape[2]
            lo = f - (f - 1) % self.temporal
            raise ValueError(f"the Wan VAE encodes 4k+1 frames ({self.temporal}k+1); got {f} frames: use {lo} "
                             f"or {lo + self.temporal} (e.g. set WanImageToVideo's length to one of them)")
        with vae_attention_context():
            out = self._encode(nnx.state(self.vae), jnp.asarray(pixels, self.dtype))
        return to_host(out.astype(jnp.float32))
