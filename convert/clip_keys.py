"""CLIP text and vision single files (ComfyUI's `clip_l.safetensors`, `clip_vision_h.safetensors`):
detection and config from key names and shapes.

These files keep transformers' key names (`text_model.…` of `CLIPTextModel`, `vision_model.…` +
`visual_projection.weight` of `CLIPVisionModelWithProjection`), so they load through the identity key
map: the registry rows `families.CLIP_TEXT` / `CLIP_VISION` name `is_clip_text`/`clip_text_config`,
`is_clip_vision`/`clip_vision_config` as their `diffusers_single_file`, and their `ignored_keys` drop
what the files may carry beyond the towers (`…position_ids` buffers, `logit_scale`, and — text —
`text_projection`, since Flux's pooled output is unprojected). Only the config must be read from
shapes. What shapes cannot say — heads and activation — comes, like ComfyUI, from the released
model of that width (its config jsons: `sd1_clip_config.json`, `clip_config_bigg.json`,
`clip_vision_config_{vitl,h,g}.json`); a width none has gets head dim 64 (every released CLIP's) and
transformers' default `quick_gelu`; pass `config=` for anything else (tiny test models do).
transformers 5 saves a bare `CLIPTextModel` / `CLIPVisionModel` (`embeddings.…`, `encoder.layers.…`);
such keys are detected and read as if prefixed.
"""

from __future__ import annotations

from typing import Iterable, Mapping

TEXT_PREFIX = "text_model."
TEXT_DETECT_KEY = "text_model.encoder.layers.0.mlp.fc1.weight"  # ComfyUI's sd.py detect_te_model
TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"  # [vocab, D]
TEXT_POSITIONS = "text_model.embeddings.position_embedding.weight"  # [max_positions, D]
TEXT_PROJECTION = "text_projection.weight"  # [projection_dim, D] (CLIPTextModelWithProjection)

VISION_PREFIX = "vision_model."
VISION_DETECT_KEY = "vision_model.encoder.layers.0.layer_norm1.weight"  # ComfyUI's clip_vision.py
CLASS_EMBEDDING = "vision_model.embeddings.class_embedding"  # [D]
PATCH_EMBEDDING = "vision_model.embeddings.patch_embedding.weight"  # [D, C, p, p]
VISION_POSITIONS = "vision_model.embeddings.position_embedding.weight"  # [1 + patches, D]
VISUAL_PROJECTION = "visual_projection.weight"  # [projection_dim, D]

FC1 = "{}encoder.layers.0.mlp.fc1.weight"  # [intermediate, D]
HEAD_DIM = 64  # every released CLIP tower's; the fallback for widths ComfyUI has no config for
LAYER_NORM_EPS = 1e-5
CLIP_EOS_TOKEN_ID = 49407  # <|endoftext|>, the last id of CLIP's 49408-token vocabulary
UNKNOWN_WIDTH_ACT = "quick_gelu"  # transformers' CLIPTextConfig / CLIPVisionConfig default

# width → (heads, activation) of the released towers (ComfyUI's config jsons)
TEXT_TOWERS = {768: (12, "quick_gelu"),  # CLIP-L/14 (OpenAI): SD1, Flux, SD3 clip_l
               1024: (16, "gelu"),  # OpenCLIP ViT-H/14: SD2
               1280: (20, "gelu")}  # OpenCLIP ViT-bigG/14: SDXL, SD3 clip_g
VISION_TOWERS = {1024: (16, "quick_gelu"),  # CLIP ViT-L/14 (OpenAI)
                 1280: (16, "gelu"),  # OpenCLIP ViT-H/14: clip_vision_h (Wan 2.1 I2V, SD IP-Adapter)
                 1664: (16, "gelu")}  # OpenCLIP ViT-bigG/14: clip_vision_g


BARE_TEXT_KEY = TOKEN_EMBEDDING[len(TEXT_PREFIX):]  # `embeddings.token_embedding.weight`
BARE_VISION_KEY = CLASS_EMBEDDING[len(VISION_PREFIX):]  # `embeddings.class_embedding`


def _prefixed(names: Iterable[str], prefix: str, bare_key: str) -> dict[str, str]:
    """`{name as prefixed: name}`: transformers 5 saves a bare `CLIPTextModel` / `CLIPVisionModel`
    (`embeddings.…`, `encoder.layers.…`); ComfyUI's and older files say `text_model.…` /
    `vision_model.…` (the loader reads bare keys the same way, `Plan._wrap_bare_keys`)."""
    names = list(names)
    if bare_key in names and not any(k.startswith(prefix) for k in names):
        return {prefix + k: k for k in names}
    return {k: k for k in names}


def _text_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {k: shapes[v] for k, v in _prefixed(shapes, TEXT_PREFIX, BARE_TEXT_KEY).items()}


def _vision_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {k: shapes[v] for k, v in _prefixed(shapes, VISION_PREFIX, BARE_VISION_KEY).items()}


def is_clip_text(names) -> bool:
    """A CLIP text tower alone (a file holding a vision tower too is left to `is_clip_vision`)."""
    names = _prefixed(names, TEXT_PREFIX, BARE_TEXT_KEY)
    return TEXT_DETECT_KEY in names and not any(k.startswith(VISION_PREFIX) for k in names)


def is_clip_vision(names) -> bool:
    """A CLIP vision tower (SigLIP's too; its config then fails on the missing class token)."""
    return VISION_DETECT_KEY in _prefixed(names, VISION_PREFIX, BARE_VISION_KEY)


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, what: str, model: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"cannot detect the {model} config: key {key!r} ({what}) is missing")
    return tuple(shapes[key])


def _count_layers(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int:
    start = prefix + "encoder.layers."
    indices = {int(k[len(start):].split(".")[0]) for k in shapes
               if k.startswith(start) and k[len(start):].split(".")[0].isdigit()}
    return max(indices) + 1


def _heads_and_act(width: int, towers: dict[int, tuple[int, str]], where: str, model: str) -> tuple[int, str]:
    if width in towers:
        return towers[width]
    if width % HEAD_DIM:
        raise ValueError(f"cannot detect the {model} config: width {width} ({where}) matches no released "
                         f"CLIP and is no multiple of head dim {HEAD_DIM}; pass config=")
    return width // HEAD_DIM, UNKNOWN_WIDTH_ACT


def clip_text_config(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """A transformers `CLIPTextConfig`-style dict: vocab and width from the token embedding, positions
    from the position table, layers by counting them, intermediate width from `fc1`, heads and
    activation by width (`TEXT_TOWERS`, else head dim 64 and quick_gelu), projection_dim from
    `text_projection` (else the width), eos_token_id 49407 (the vocabulary's last id if smaller)."""
    model, shapes = "CLIP text", _text_shapes(shapes)
    vocab, width = _shape(shapes, TOKEN_EMBEDDING, "token embedding", model)
    positions = _shape(shapes, TEXT_POSITIONS, "position embedding", model)[0]
    intermediate = _shape(shapes, FC1.format(TEXT_PREFIX), "feed-forward input", model)[0]
    heads, act = _heads_and_act(width, TEXT_TOWERS, TOKEN_EMBEDDING, model)
    return {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": intermediate,
        "projection_dim": tuple(shapes[TEXT_PROJECTION])[0] if TEXT_PROJECTION in shapes else width,
        "num_hidden_layers": _count_layers(shapes, TEXT_PREFIX),
        "num_attention_heads": heads,
        "max_position_embeddings": positions,
        "hidden_act": act,
        "layer_norm_eps": LAYER_NORM_EPS,
        "eos_token_id": min(CLIP_EOS_TOKEN_ID, vocab - 1),
    }


def clip_vision_config(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """A transformers `CLIPVisionConfig`-style dict: width, channels and patch from the patch
    embedding `[D, C, p, p]`, image size from the position table (1 + (size/p)² rows), layers by
    counting them, intermediate width from `fc1`, heads and activation by width (`VISION_TOWERS`,
    else head dim 64 and quick_gelu), projection_dim from `visual_projection` (None without one)."""
    model, shapes = "CLIP vision", _vision_shapes(shapes)
    _shape(shapes, CLASS_EMBEDDING, "class token", model)
    width, channels, patch, _ = _shape(shapes, PATCH_EMBEDDING, "patch embedding", model)
    positions = _shape(shapes, VISION_POSITIONS, "position embedding", model)[0]
    grid = round((positions - 1) ** 0.5)
    if grid * grid != positions - 1:
        raise ValueError(f"cannot detect the {model} config: {positions} positions ({VISION_POSITIONS}) "
                         "are not 1 + a square number of patches")
    intermediate = _shape(shapes, FC1.format(VISION_PREFIX), "feed-forward input", model)[0]
    heads, act = _heads_and_act(width, VISION_TOWERS, PATCH_EMBEDDING, model)
    return {
        "hidden_size": width,
        "intermediate_size": intermediate,
        "projection_dim": tuple(shapes[VISUAL_PROJECTION])[0] if VISUAL_PROJECTION in shapes else None,
        "num_hidden_layers": _count_layers(shapes, VISION_PREFIX),
        "num_attention_heads": heads,
        "num_channels": channels,
        "image_size": grid * patch,
        "patch_size": patch,
        "hidden_act": act,
        "layer_norm_eps": LAYER_NORM_EPS,
    }
