"""Sampling pipelines (host loop + jitted steps). May import models_flax, schedulers, sharding, kernels.

- `flux`: Flux text-to-image from precomputed prompt embeddings (`FluxPipeline`).
- `wan`: Wan 2.1 / 2.2 video (T2V, I2V, two-expert A14B, TI2V-5B) from precomputed embeddings.
- `cli`: the `jaxdiff generate` subcommand (kept import-light).
- `compile_cache`: the persistent XLA compile cache (`enable_compile_cache`) and `track_compiles`.
- `export`: `jax.export` of a fixed-shape Flux denoise step (`export_denoise_step`, `load_exported_step`).
- `image_io` / `video_io`: writing 0..1 float images as PNG, frames as MP4 / animated WebP.

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
    "WanPipeline": ".wan",
    "WanPipelineOutput": ".wan",
    "save_video": ".video_io",
    "save_videos": ".video_io",
    "read_video": ".video_io",
    "enable_compile_cache": ".compile_cache",
    "track_compiles": ".compile_cache",
    "CompileStats": ".compile_cache",
    "export_denoise_step": ".export",
    "load_exported_step": ".export",
    "step_weights": ".export",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
