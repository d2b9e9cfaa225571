"""Tiny CLIP text / vision towers for the CLIP tests: transformers' own modules and ComfyUI's
(`comfy/clip_model.py`, from the ComfyUI tree `comfy_server.ensure_comfyui` sets up), randomized, plus
helpers to save them in the layouts users have on disk. torch/transformers/comfy import lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


# transformers configs (CLIPTextConfig / CLIPVisionConfig kwargs); the EOS id 7 is deliberately not the
# largest id of the vocabulary, so the first-EOS pooling rule and argmax(ids) disagree
TEXT = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=16, projection_dim=24, eos_token_id=7, bos_token_id=0, pad_token_id=1,
            hidden_act="quick_gelu")
VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4, image_size=28,
              patch_size=7, num_channels=3, projection_dim=24, hidden_act="gelu")

# ComfyUI config dicts (comfy/clip_model.py reads these keys). Its text embeddings are always 49408 ×
# width and it adds the whole position table, so inputs are exactly max_position_embeddings long.
COMFY_VOCAB = 49408
COMFY_TEXT = dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=37,
                  hidden_act="quick_gelu", max_position_embeddings=16, eos_token_id=49407)
COMFY_VISION = dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=37,
                    hidden_act="gelu", model_type="clip_vision_model", num_channels=3, patch_size=7,
                    image_size=28, projection_dim=24)
# widths a file alone is read by (head dim 64, quick_gelu: convert.clip_keys' fallback)
DETECTABLE = dict(hidden_size=64, num_attention_heads=1, hidden_act="quick_gelu")


def randomize_(module, seed: int = 0):
    """Every parameter of a torch module drawn in place: matrices N(0, 1/fan_in), norm scales
    1 + N(0, 0.1²), other vectors N(0, 0.1²) — distinct values everywhere, so a misplaced tensor shows."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim >= 2:
                p.copy_(noise / np.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return module.eval()


def hf_text(seed: int = 0, projection: bool = False, **changes):
    """A randomized transformers `CLIPTextModel` (`CLIPTextModelWithProjection` with `projection`)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return randomize_(cls(CLIPTextConfig(**{**TEXT, **changes})), seed)


def hf_vision(seed: int = 0, projection: bool = True, **changes):
    """A randomized transformers `CLIPVisionModelWithProjection` (`CLIPVisionModel` without)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cls = CLIPVisionModelWithProjection if projection else CLIPVisionModel
    return randomize_(cls(CLIPVisionConfig(**{**VISION, **changes})), seed)


def import_comfy(tmp_dir: Path):
    """ComfyUI's `comfy.clip_model` and `comfy.clip_vision` (CPU mode set before model_management).

    `comfy.clip_vision` imports ComfyUI's model patcher and with it every model class (torchvision
    among their requirements), so this takes the ComfyUI tree `comfy_server.ensure_comfyui` sets up,
    requirements installed, not the bare snapshot."""
    import sys

    from comfy_server import ensure_comfyui

    root = ensure_comfyui()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import comfy.clip_model
    import comfy.clip_vision

    return comfy.clip_model, comfy.clip_vision


def comfy_text(tmp_dir: Path, seed: int = 0, **changes):
    """ComfyUI's `CLIPTextModel` (clip_l's module) at a tiny size, randomized, fp32."""
    import torch

    clip_model, _ = import_comfy(tmp_dir)
    import comfy.ops

    model = clip_model.CLIPTextModel({**COMFY_TEXT, **changes}, torch.float32, "cpu", comfy.ops.manual_cast)
    return randomize_(model, seed)


def comfy_vision(tmp_dir: Path, seed: int = 0, **changes):
    """ComfyUI's `CLIPVisionModelProjection` (clip_vision_h's module) at a tiny size, randomized, fp32."""
    import torch

    clip_model, _ = import_comfy(tmp_dir)
    import comfy.ops

    config = {**COMFY_VISION, **changes}
    model = clip_model.CLIPVisionModelProjection(config, torch.float32, "cpu", comfy.ops.manual_cast)
    return randomize_(model, seed)


def save_state(module, path: Path, dtype=None, extra: dict | None = None) -> tuple[Path, dict]:
    """`module.state_dict()` (cast to `dtype`, plus `extra` tensors) saved with safetensors at `path`,
    as ComfyUI's files are; returns (path, {key: float32 numpy of what was saved})."""
    from safetensors.torch import save_file

    state = {k: (v if dtype is None else v.to(dtype)).contiguous() for k, v in module.state_dict().items()}
    state.update(extra or {})
    save_file(state, str(path))
    return path, {k: v.float().numpy() for k, v in state.items() if v.is_floating_point()}


def load_weights_(module, tensors: dict):
    """Copy float32 numpy `tensors` (e.g. fp16-rounded ones) into a torch module's state dict."""
    import torch

    state = module.state_dict()
    with torch.no_grad():
        for key, value in tensors.items():
            if key in state:
                state[key].copy_(torch.from_numpy(value))
    return module
