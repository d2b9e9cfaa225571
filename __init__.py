"""jaxdiff: pure JAX/Flax (nnx) inference for Flux and Wan, converted from torch checkpoints.

This file is both the package root (`import jaxdiff`) and a ComfyUI custom-node pack entry
(`NODE_CLASS_MAPPINGS`). Keep it light: everything heavy is imported lazily.
"""

__version__ = "0.1.0"
WEB_DIRECTORY = "./web"  # ComfyUI: per-node help pages in web/docs/<NodeName>.md



def __getattr__(name):
    """ComfyUI's node mappings, imported on first access (ComfyUI reads them at start-up); empty when
    ComfyUI (`folder_paths`) is not importable, so plain `import jaxdiff` never needs it."""
    if name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
        try:
            import folder_paths  # noqa: F401  (only inside ComfyUI)
        except ImportError:
            return {}
        from . import comfy_nodes

        return getattr(comfy_nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_model(path, *, dtype=None, mesh=None, config=None, abstract=False):
    """Load a diffusers or transformers directory, a single-file safetensors or a converted jaxdiff
    checkpoint.

    Returns a ready Flax nnx module (family detected from config/keys; `config` overrides what a
    single file cannot say, e.g. a head dim other than 128); `abstract=True` reads headers only and
    returns the module with shape-only parameters. See convert/loader.py.
    """
    from .convert.loader import load_model as _load_model

    return _load_model(path, dtype=dtype, mesh=mesh, config=config, abstract=abstract)


def load_tokenizer(path):
    """A text encoder's tokenizer: a directory with tokenizer.json, vocab.json + merges.txt (CLIP BPE) or
    spiece.model (a diffusers pipeline's `tokenizer*/` folder is one), a sentencepiece `*.model` file, or a
    ComfyUI UMT5 `.safetensors` holding a `spiece_model` tensor. `tok(prompts, max_length)` returns int32
    `input_ids` / `attention_mask` `[B, max_length]` as diffusers' pipelines tokenise. See
    pipelines/tokenizer.py."""
    from .pipelines.tokenizer import load_tokenizer as _load_tokenizer

    return _load_tokenizer(path)


def load_pipeline(model, **options):
    """The family's pipeline (FluxPipeline, WanPipeline, …) for a diffusers pipeline dir or a
    transformer path plus `vae=`; see `pipelines.loading.load_pipeline` for the options."""
    from .pipelines.loading import load_pipeline as _load_pipeline

    return _load_pipeline(model, **options)


def enable_compile_cache(path=None):
    """Persistent XLA compilation cache at `path` (None = `$JAXDIFF_COMPILE_CACHE` or
    ~/.cache/jaxdiff/xla; "off" disables). The CLI turns it on by itself. See pipelines/compile_cache.py."""
    from .pipelines.compile_cache import enable_compile_cache as _enable

    return _enable(path)


__all__ = ["enable_compile_cache", "load_model", "load_pipeline", "load_tokenizer", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "__version__"]
