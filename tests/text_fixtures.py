"""Tiny text / image encoder files in the layouts people download, written by transformers' own
modules: ComfyUI single files (`clip_l.safetensors`, `t5xxl_*.safetensors`, `umt5_xxl_*.safetensors`
with its `spiece_model` tensor, `clip_vision_h.safetensors` — transformers' key names, as ComfyUI
ships them) and transformers directories with their tokenizer files beside them.

The vocabularies are real where ComfyUI ships one (CLIP's BPE in comfy/sd1_tokenizer, T5's
tokenizer.json in comfy/text_encoders/t5_tokenizer), so the embeddings have those sizes (49408 / 32128
rows); UMT5's is a tiny sentencepiece model trained here (ComfyUI reads UMT5's from the file).
Widths fit the tiny Flux / Wan files of comfy_server.py: CLIP width 64 (one head of 64, the head
width single-file detection assumes), T5 / UMT5 width 32, CLIP vision width 1280 (ComfyUI fixes
Wan's image-embedding width). torch/transformers are imported lazily.
"""

from __future__ import annotations

import functools
import io
import random
import shutil
from pathlib import Path

import numpy as np

CLIP_WIDTH = 64
T5_WIDTH = 32
CLIP_VISION_WIDTH = 1280
CLIP_VISION_IMAGE = 32  # pixels (patch 16: 4 patches + the class token)


def comfy_root() -> Path:
    """A ComfyUI tree with its shipped tokenizers and `comfy` package (the unpacked snapshot)."""
    from comfy_server import _comfy_root

    return _comfy_root(None)


def clip_tokenizer_dir() -> Path:
    return comfy_root() / "comfy" / "sd1_tokenizer"


def t5_tokenizer_dir() -> Path:
    return comfy_root() / "comfy" / "text_encoders" / "t5_tokenizer"


def _training_lines() -> list[str]:
    rng = random.Random(0)
    words = ("a photo of cat dog red blue sky astronaut riding horse on the moon painting detailed "
             "sunset masterpiece café naïve straße 東京 の 猫").split()
    words += ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))
              for _ in range(200)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(1500)]


@functools.cache
def spiece_proto() -> bytes:
    """A tiny T5-style unigram sentencepiece model (pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece

    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_lines()), model_writer=buf, vocab_size=256, hard_vocab_limit=False,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", character_coverage=1.0, minloglevel=2, num_threads=1)
    return buf.getvalue()


def _randomize(model, seed: int, std: float = 0.05):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def _save(state: dict, path: Path, extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous() for k, v in state.items()}
    tensors.update(extra or {})
    save_file(tensors, str(path))
    return path


def tiny_clip_text(seed: int = 0, width: int = CLIP_WIDTH, layers: int = 2):
    """transformers CLIPTextModel with CLIP-L's vocabulary and special ids, one 64-wide head per 64."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=2 * width,
                            num_hidden_layers=layers, num_attention_heads=width // 64, max_position_embeddings=77,
                            hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
                            projection_dim=width)
    return _randomize(CLIPTextModel(config), seed)


def tiny_t5(seed: int = 0, width: int = T5_WIDTH, layers: int = 2, umt5: bool = False):
    """transformers T5EncoderModel (T5 v1.1: gated-gelu) with T5's vocabulary, or UMT5EncoderModel
    with the tiny sentencepiece vocabulary."""
    import sentencepiece
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    vocab = sentencepiece.SentencePieceProcessor(model_proto=spiece_proto()).get_piece_size() if umt5 else 32128
    kw = dict(vocab_size=vocab, d_model=width, d_kv=8, d_ff=2 * width, num_layers=layers, num_heads=width // 8,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              feed_forward_proj="gated-gelu", dropout_rate=0.0)
    model = UMT5EncoderModel(UMT5Config(**kw)) if umt5 else T5EncoderModel(T5Config(**kw))
    return _randomize(model, seed)


def tiny_clip_vision(seed: int = 0, width: int = CLIP_VISION_WIDTH, layers: int = 2):
    """transformers CLIPVisionModelWithProjection, ViT-H's width (16 heads of 80), 32-pixel images."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=width, intermediate_size=64, num_hidden_layers=layers,
                              num_attention_heads=16, image_size=CLIP_VISION_IMAGE, patch_size=16,
                              hidden_act="gelu", projection_dim=32)
    return _randomize(CLIPVisionModelWithProjection(config), seed, std=0.02)


def _comfy_state(model) -> dict:
    """transformers' state dict without the tied alias ComfyUI's files do not carry."""
    state = dict(model.state_dict())
    state.pop("encoder.embed_tokens.weight", None)
    return state


def write_clip_l(path, seed: int = 0) -> Path:
    """ComfyUI's `clip_l.safetensors` layout (`text_model.…`; transformers 5 saves a bare CLIPTextModel
    without that prefix, so it is added here)."""
    state = {k if k.startswith("text_model.") else "text_model." + k: v
             for k, v in _comfy_state(tiny_clip_text(seed)).items()}
    return _save(state, Path(path))


def write_t5xxl(path, seed: int = 0) -> Path:
    """ComfyUI's `t5xxl_fp16.safetensors` layout (`encoder.…`, `shared.weight`)."""
    return _save(_comfy_state(tiny_t5(seed)), Path(path))


def write_umt5(path, seed: int = 0, *, spiece: bool = True) -> Path:
    """ComfyUI's `umt5_xxl_fp16.safetensors` layout, its tokenizer as the uint8 `spiece_model` tensor."""
    import torch

    extra = {"spiece_model": torch.frombuffer(bytearray(spiece_proto()), dtype=torch.uint8)} if spiece else None
    return _save(_comfy_state(tiny_t5(seed, umt5=True)), Path(path), extra)


def write_clip_vision_h(path, seed: int = 0) -> Path:
    """ComfyUI's `clip_vision_h.safetensors` layout (`vision_model.…`, `visual_projection.weight`)."""
    return _save(dict(tiny_clip_vision(seed).state_dict()), Path(path))


def write_transformers_dir(model, path, tokenizer: Path | None = None) -> Path:
    """`save_pretrained` directory, with the tokenizer files copied in (as on the Hub)."""
    path = Path(path)
    model.save_pretrained(path)
    if tokenizer is not None:
        for f in Path(tokenizer).iterdir():
            if f.is_file():
                shutil.copy(f, path / f.name)
    return path


def write_spiece(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(spiece_proto())
    return path


def numpy_state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
