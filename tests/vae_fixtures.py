"""Randomizing torch VAEs (diffusers AutoencoderKL / AutoencoderKLWan, ComfyUI's LDM VAE) for parity tests."""

import numpy as np

WEIGHT_STD = 0.5  # conv/linear weights ~ N(0, (WEIGHT_STD / sqrt(fan_in))²)
NORM_STD = 0.2  # norm scales / Wan RMS-norm gammas ~ 1 + N(0, NORM_STD²); all biases ~ N(0, NORM_STD²)


def randomize_vae_(module, seed: int = 0):
    """Overwrite every parameter with seeded noise so no bug hides behind zero/identity init."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("bias"):
                p.copy_(NORM_STD * noise)
            elif p.ndim == 1 or name.endswith("gamma"):  # norm scale ([C, 1, 1(, 1)] for Wan's gamma)
                p.copy_(1.0 + NORM_STD * noise)
            else:
                p.copy_(WEIGHT_STD / np.sqrt(p[0].numel()) * noise)
    return module
