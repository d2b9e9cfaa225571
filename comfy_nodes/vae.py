"""A ComfyUI `VAE` that encodes and decodes with our JAX VAEs (Flux KL, Wan 2.1, Wan 2.2).

`JaxVAE` subclasses `comfy.sd.VAE` (core nodes only call its methods and read its ratios) without
building a torch model: VAEDecode, VAEEncode, VAEDecodeTiled / VAEEncodeTiled (decoded whole: our
VAEs decode video chunk by chunk already) and WanImageToVideo accept it. Pixels are ComfyUI's IMAGE
(`[B, H, W, C]` float32 0..1 CPU; video = a frame batch); latents stay in the raw VAE space, so core
and JAX VAE nodes mix freely.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

import comfy.sd

from . import registry

log = logging.getLogger("jaxdiff")


class JaxVAE(comfy.sd.VAE):
    def __init__(self, entry: registry.Entry):  # no super().__init__: there is no torch model
        self.entry = entry
        codec = entry.get()
        self.codec_family = codec.family
        self.latent_channels = codec.latent_channels
        self.output_channels = 3
        self.latent_dim = 3 if codec.video else 2
        self.not_video = not codec.video
        s, t = codec.spatial, codec.temporal
        if codec.video:
            self.upscale_ratio = (lambda a: max(0, a * t - (t - 1)), s, s)
            self.downscale_ratio = (lambda a: max(0, math.floor((a + t - 1) / t)), s, s)
        else:
            self.upscale_ratio = self.downscale_ratio = s
        self.upscale_index_formula = self.downscale_index_formula = None
        self.crop_input = True
        self.extra_1d_channel = None
        self.first_stage_model = self  # throw_exception_if_invalid checks it is not None
        self.output_device = torch.device("cpu")
        self.vae_dtype = torch.float32
        self.disable_offload = True
        self.patcher = None

    @property
    def codec(self):
        return self.entry.get()

    def decode(self, samples_in, vae_options={}):
        z = samples_in.detach().to("cpu", torch.float32).numpy()
        pixels = self.codec.decode(z)  # [B, 3, H, W] / [B, 3, F, H, W] in −1..1
        images = torch.from_numpy(np.clip((pixels + 1.0) / 2.0, 0.0, 1.0))
        return images.movedim(1, -1)  # [B, H, W, 3] / [B, F, H, W, 3]

    def decode_tiled(self, samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        log.info("jaxdiff: the JAX VAE decodes whole (tiles are not needed); tile settings ignored")
        return self.decode(samples)

    def encode(self, pixel_samples):
        pixel_samples = self.vae_encode_crop_pixels(pixel_samples)[..., :3]
        x = pixel_samples.detach().to("cpu", torch.float32).numpy() * 2.0 - 1.0
        x = np.moveaxis(x, -1, 1)  # [B, 3, H, W] (images) / [F, 3, H, W] (a video's frames)
        if self.latent_dim == 3 and x.ndim == 4:
            x = np.moveaxis(x, 0, 1)[None]  # frames → one video [1, 3, F, H, W]
        return torch.from_numpy(self.codec.encode(x))

    def encode_tiled(self, pixel_samples, tile_x=None, tile_y=None, overlap=None, tile_t=None, overlap_t=None):
        return self.encode(pixel_samples)

    def get_sd(self):
        raise ValueError("a JAX VAE has no torch state dict to save; save the source file instead")
