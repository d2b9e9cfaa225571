"""Sampling pipelines (host loop + jitted steps). May import models_flax, schedulers, sharding, kernels.

- `flux`: Flux text-to-image from precomputed prompt embeddings (`FluxPipeline`).
- `cli`: the `jaxdiff generate` subcommand (kept import-light).
- `image_io`: writing `[B, H, W, C]` 0..1 float images as PNG.

Names are imported lazily so that `jaxdiff --help` does not import jax.
"""

from importlib import import_module

_LAZY = {
    "FluxPipeline": ".flux",
    "FluxPipelineOutput": ".flux",
    "pack_latents": ".flux",
    "unpack_latents": ".flux",
    "latent_image_ids": ".flux",
    "text_ids": ".flux",
    "save_images": ".image_io",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
