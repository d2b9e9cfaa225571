"""Sampling pipelines (host loop + jitted steps). May import models_flax, schedulers, sharding, kernels.

- `flux`: Flux text-to-image / image-to-image from precomputed prompt embeddings (`FluxPipeline`).
- `wan`: Wan 2.1 / 2.2 video (T2V, I2V, two-expert A14B, TI2V-5B, video-to-video) from precomputed
  embeddings (`WanPipeline`). Both are prepare → sample → decode, each step public.
- `loop`: the denoise loop both run; `inputs`: pixel/denoise input rules they share.
- `loading`: the library loading API (`load_pipeline`, `build_random`, `embedded_pipeline`,
  `scheduler_config`, `read_conditioning`); the only pipelines module that reaches the converter, and
  only through `jaxdiff.load_model`.
- `presets`: released model shapes from the family registry; `plan`: `jaxdiff plan`.
- `cli`: the `jaxdiff generate` subcommand (argument parsing and output writing; kept import-light).
- `compile_cache`: the persistent XLA compile cache (`enable_compile_cache`) and `track_compiles`.
- `export`: `jax.export` of a fixed-shape Flux denoise step (`export_denoise_step`, `load_exported_step`).
- `tokenizer`: text-encoder tokenizers from the files beside the weights (`load_tokenizer`, `Tokenizer`,
  `check_vocab`) and Wan's `wan_prompt_clean`; tokenizers / sentencepiece only.
- `text`: prompts → conditioning through our text encoders (`load_text_encoder`, `LazyTextEncoder`,
  `load_image_encoder`, `encode_prompts`, the embedding cache); `prompt_cli`: what `generate --prompt`
  runs before denoising.
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
    "load_pipeline": ".loading",
    "load_text_encoder": ".text",
    "load_image_encoder": ".text",
    "encode_prompts": ".text",
    "build_random": ".loading",
    "embedded_pipeline": ".loading",
    "enable_compile_cache": ".compile_cache",
    "track_compiles": ".compile_cache",
    "CompileStats": ".compile_cache",
    "export_denoise_step": ".export",
    "load_exported_step": ".export",
    "step_weights": ".export",
    "load_tokenizer": ".tokenizer",
    "Tokenizer": ".tokenizer",
    "check_vocab": ".tokenizer",
    "wan_prompt_clean": ".tokenizer",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
