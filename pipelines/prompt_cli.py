"""`jaxdiff generate --prompt`: the text (and Wan I2V image) encoders the CLI runs before denoising.

Which files: `--text-encoder` / `--text-encoder-2` / `--image-encoder`, else a diffusers pipeline
dir's `text_encoder*/` and `image_encoder/` under `--model`. Every encoder is checked from its
headers against the transformer before any weights load (pipelines/text.py `LazyTextEncoder`);
prompts already in the embedding cache skip their encoder entirely; with `--offload-text-encoder`
(default: when the encoders and the transformer do not fit the device together) each encoder's
memory is freed as soon as it has encoded. Returns the pipeline's conditioning dict.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .. import families


def _encoder_paths(args, family: families.Family) -> list[tuple[str, str | None]]:
    """[(encoder path, tokenizer path or None)] from the flags, else the pipeline dir's folders."""
    given = [(args.text_encoder, args.tokenizer), (getattr(args, "text_encoder_2", None),
                                                   getattr(args, "tokenizer_2", None))]
    paths = [(str(p), t) for p, t in given if p]
    if paths:
        return paths
    from .loading import pipeline_root

    root = pipeline_root(Path(args.model)) if args.model else None
    names = ["text_encoder", "text_encoder_2"][:len(family.text_encoders)]
    found = [(str(root / n), None) for n in names if root is not None and (root / n).is_dir()]
    if not found:
        raise ValueError("--prompt needs text encoders: --text-encoder PATH"
                         + (" and --text-encoder-2 PATH" if len(family.text_encoders) > 1 else "")
                         + (f" ({args.model} has no text_encoder/ folder)" if args.model else ""))
    return found


def _image_encoder_path(args) -> str | None:
    if getattr(args, "image_encoder", None):
        return args.image_encoder
    from .loading import pipeline_root

    root = pipeline_root(Path(args.model)) if args.model else None
    return str(root / "image_encoder") if root is not None and (root / "image_encoder").is_dir() else None


def _device_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def _offload(args, encoders_bytes: int, pipe) -> bool:
    """--offload-text-encoder, else on when encoders + transformer(s) + VAE exceed a device's memory
    (never on CPU, whose memory is the host's)."""
    if args.offload_text_encoder is not None:
        return args.offload_text_encoder
    limit = _device_bytes()
    if limit is None or pipe is None:
        return False
    from ..sharding.mesh import param_bytes

    models = (getattr(pipe, name, None) for name in ("transformer", "transformer_2", "vae"))
    resident = sum(param_bytes(m) for m in models if m is not None)
    return encoders_bytes + resident > 0.9 * limit


def encode_for_cli(args, family: families.Family, shapes_only, mesh) -> dict:
    """The conditioning dict for `args.prompt` (and `--image` for Wan 2.1 I2V)."""
    from ..convert.loader import detect_kind, load_model
    from ..sharding.mesh import param_bytes
    from .text import (EmbeddingCache, Found, LazyTextEncoder, assign_encoders, default_cache_dir,
                       encode_prompts, load_image_encoder)

    cache_dir = args.embedding_cache
    cache = None if cache_dir == "off" else EmbeddingCache(cache_dir or default_cache_dir())
    paths = _encoder_paths(args, family)
    assign_encoders(family, [Found(detect_kind(path).name, path) for path, _ in paths])  # family first
    encoders = [LazyTextEncoder(path, tokenizer=tok, dtype=args.dtype, mesh=mesh, cache=cache)
                for path, tok in paths]
    config = (shapes_only.transformer.config if shapes_only is not None
              else _transformer_config(args))
    needs_image = family.image_encoder is not None and getattr(config, "image_dim", None) and args.image
    image_path = _image_encoder_path(args) if needs_image else None
    if needs_image and image_path is None:
        raise ValueError("this Wan transformer takes CLIP-vision image embeddings: pass --image-encoder "
                         "PATH (clip_vision_h.safetensors or a CLIPVisionModelWithProjection dir)")
    if getattr(args, "image_encoder", None) and not needs_image:
        raise ValueError("--image-encoder applies only to a Wan 2.1 I2V transformer (one with image_dim) "
                         "and --image")
    image_bytes = 0
    if image_path:
        abstract = load_model(image_path, abstract=True)
        kind = families.model_for_config(abstract.config)
        if kind is None or kind.role != "image_encoder":
            raise ValueError(f"{image_path}: not a CLIP vision encoder (found {type(abstract).__name__})")
        if abstract.config.hidden_size != config.image_dim:
            raise ValueError(f"{image_path}: CLIP vision width {abstract.config.hidden_size} does not fit this "
                             f"transformer (image_dim {config.image_dim})")
        image_bytes = param_bytes(abstract)
    offload = _offload(args, sum(e.nbytes for e in encoders) + image_bytes, shapes_only)
    for encoder in encoders:
        encoder.offload = offload
    scale = args.guidance if args.guidance is not None else (
        shapes_only.defaults()["guidance"] if shapes_only is not None else 5.0)
    guidance = scale > 1.0  # Wan: the negative prompt is encoded only for classifier-free guidance
    conditioning = encode_prompts(config, encoders, args.prompt, args.negative_prompt,
                                  max_sequence_length=args.max_sequence_length, guidance=guidance)
    encoded = sum(e.encoded for e in encoders)
    texts = sum(1 + (e.kind == "umt5" and guidance) for e in encoders)
    print(f"prompt: {encoded} of {texts} encodings computed, the rest from the embedding cache"
          + (" (encoders offloaded)" if offload else ""), file=sys.stderr)
    if image_path:
        from .image_io import read_image

        image_encoder = load_image_encoder(image_path, dtype=args.dtype, mesh=mesh)
        conditioning["image_embeds"] = image_encoder(read_image(args.image, what="--image"))
        if offload:
            image_encoder.release()
    return conditioning


def _transformer_config(args):
    from ..convert.loader import load_model
    from .loading import resolve_paths

    return load_model(resolve_paths(args.model).transformer, abstract=True).config
