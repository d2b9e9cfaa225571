"""Small input rules the pipelines share: pixel arrays in, the `denoise` range, parameter dtypes.

Host-side numpy; imports jax/flax only for `param_dtype`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def param_dtype(module: nnx.Module):
    """The dtype of the module's floating-point parameters (its compute dtype here)."""
    for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.dtype
    return jnp.float32


def check_denoise(denoise) -> float:
    """`denoise` (diffusers' `strength`) as a float in (0, 1]; ValueError otherwise."""
    if isinstance(denoise, bool) or not isinstance(denoise, (int, float, np.floating, np.integer)) \
            or not 0.0 < float(denoise) <= 1.0:
        raise ValueError(f"denoise must be in (0, 1] (1 = start from pure noise), got {denoise!r}")
    return float(denoise)


def pixels_in(images, what: str = "image") -> np.ndarray:
    """`[..., H, W, 3]` float 0..1 or uint8 → float32 in −1..1, channels first: `[H, W, 3]` and
    `[B, H, W, 3]` give `[B, 3, H, W]`; `[B, F, H, W, 3]` (video) gives `[B, 3, F, H, W]`."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim not in (4, 5) or images.shape[-1] != 3:
        raise ValueError(f"{what} must be [H, W, 3], [B, H, W, 3] (or a video [B, F, H, W, 3]), got "
                         f"{images.shape}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / np.float32(255)
    images = images.astype(np.float32)
    if not np.isfinite(images).all():
        raise ValueError(f"{what} contains NaN or inf")
    pixels = images * np.float32(2) - np.float32(1)  # diffusers' normalize: 2x − 1
    return np.moveaxis(pixels, -1, 1)


def pixels_at(images, batch: int, height: int, width: int, what: str = "image") -> np.ndarray:
    """`images` (`[H, W, 3]` or `[1 or batch, H, W, 3]`, or videos `[1 or batch, F, H, W, 3]`) checked
    against the output size and repeated to `batch`; values as given (0..1 float or uint8)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim not in (4, 5) or images.shape[-1] != 3 or images.shape[0] not in (1, batch):
        raise ValueError(f"{what} must be [H, W, 3] or [1 or {batch}, H, W, 3] (video: [1 or {batch}, "
                         f"F, H, W, 3]), got {images.shape}")
    if images.shape[-3:-1] != (height, width):
        raise ValueError(f"{what} is {images.shape[-3]}×{images.shape[-2]}, the output {height}×{width}; "
                         "resize it first")
    return np.repeat(images, batch // images.shape[0], axis=0)
