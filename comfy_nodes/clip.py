"""ComfyUI's `CLIP` and `CLIP_VISION` with our JAX encoders inside (Flux: CLIP-L + T5-XXL; Wan: UMT5-XXL;
Wan 2.1 I2V: CLIP ViT-H vision).

The drop-in pattern of model.py, for text: `JaxCLIP` is a `comfy.sd.CLIP` whose tokenizer is
ComfyUI's own (`FluxTokenizer`, `WanT5Tokenizer` fed the file's `spiece_model`), so prompt weighting
`(word:1.2)`, chunking and lengths are exactly core's, and whose `cond_stage_model` hands each token
batch to a JAX encoder through ComfyUI's own `ClipTokenWeightEncoder` (the weighting arithmetic stays
ComfyUI's). Core CLIPTextEncode / CLIPTextEncodeFlux then build the usual CONDITIONING
(`[B, S, 4096]` + `pooled_output`). Token lengths that vary with the prompt (T5 ≥ 256, UMT5 ≥ 512
tokens) are padded to a few buckets with the padding masked out, so a new prompt length does not
recompile. `JaxClipVision` is a `comfy.clip_vision.ClipVisionModel` whose `encode_image` runs ours
(CLIPVisionEncode → WanImageToVideo read `penultimate_hidden_states`).
"""

from __future__ import annotations

import numbers
import os

import numpy as np
import torch

import comfy.clip_vision
import comfy.model_management
import comfy.sd
import comfy.sd1_clip

from . import registry
from .model import JaxModelPatcher

CLIP_LENGTH = 77


def bucket(length: int) -> int:
    """The padded token length for `length`: 77 (CLIP's), else the next power of two."""
    return CLIP_LENGTH if length <= CLIP_LENGTH else 1 << (length - 1).bit_length()


class JaxTokenEncoder(comfy.sd1_clip.ClipTokenWeightEncoder):
    """One of ComfyUI's text encoders ("l", "t5xxl", "umt5xxl") run by a JAX `TextEncoder`:
    `encode(token lists)` → (z `[N, L, D]`, pooled `[N, D]` or None) as ComfyUI's `SDClipModel`
    computes them (its attention mask rule, mask into the model only where ComfyUI uses one, padded
    positions zeroed where it zeroes them)."""

    def __init__(self, entry: registry.Entry, special_tokens: dict, *, use_mask: bool, zero_out: bool):
        self.entry, self.special_tokens = entry, special_tokens
        self.use_mask, self.zero_out = use_mask, zero_out

    def _ids_and_mask(self, token_lists) -> tuple[np.ndarray, np.ndarray]:
        end = self.special_tokens.get("end")
        stop = self.special_tokens.get("pad", -1) if end is None else end
        rows, masks = [], []
        for tokens in token_lists:
            ids, mask, seen_end = [], [], False
            for t in tokens:
                if not isinstance(t, numbers.Integral):
                    raise ValueError("textual-inversion embeddings in the prompt are not supported by the JAX "
                                     "text encoder; remove the embedding:… name")
                ids.append(int(t))
                mask.append(0 if seen_end else 1)
                if not seen_end and int(t) == stop:
                    if end is None:
                        mask[-1] = 0
                    seen_end = True
            rows.append(ids)
            masks.append(mask)
        return rows, masks

    def encode(self, token_lists):
        rows, masks = self._ids_and_mask(token_lists)
        length = max(len(r) for r in rows)
        padded = bucket(length)
        pad = self.special_tokens["pad"]
        ids = np.full((len(rows), padded), pad, np.int32)
        mask = np.zeros((len(rows), padded), np.int32)
        valid = np.zeros((len(rows), padded), np.int32)  # the positions ComfyUI's model sees at all
        for i, (r, m) in enumerate(zip(rows, masks)):
            ids[i, :len(r)], mask[i, :len(m)], valid[i, :len(r)] = r, m, 1
        encoder = self.entry.get()
        model_mask = mask if self.use_mask else valid
        needs_mask = self.use_mask or padded != length or any(len(r) != length for r in rows)
        out = encoder.encode_ids(ids, model_mask if needs_mask else None)
        z = out["last_hidden_state"][:, :length]
        if self.zero_out:
            z = z * mask[:, :length, None]
        pooled = out.get("pooler_output")
        device = comfy.model_management.intermediate_device()
        return (torch.from_numpy(np.array(z, np.float32)).to(device),
                None if pooled is None else torch.from_numpy(np.array(pooled, np.float32)).to(device))


class JaxTextEncoders(torch.nn.Module):
    """`cond_stage_model` of a `JaxCLIP`: `encode_token_weights` over ComfyUI's tokenizer output
    (`{"l": …, "t5xxl": …}` for Flux, `{"umt5xxl": …}` for Wan), as core's FluxClipModel / WanT5Model."""

    def __init__(self, family: str, encoders: dict[str, JaxTokenEncoder]):
        super().__init__()
        self.family, self.encoders = family, encoders
        self.entries = [e.entry for e in encoders.values()]
        self.dtypes = {torch.float32}
        self.layer_idx = None

    def set_clip_options(self, options):
        layer = options.get("layer")
        if layer is not None:  # core would take a hidden layer of every encoder (T5's too for Flux)
            raise ValueError("'CLIP Set Last Layer' is not supported by the JAX text encoders; remove it")

    def reset_clip_options(self):
        pass

    def encode_token_weights(self, token_weight_pairs):
        if self.family == "flux":
            t5_out, _ = self.encoders["t5xxl"].encode_token_weights(token_weight_pairs["t5xxl"])
            _, pooled = self.encoders["l"].encode_token_weights(token_weight_pairs["l"])
            return t5_out, pooled
        return self.encoders["umt5xxl"].encode_token_weights(token_weight_pairs["umt5xxl"])

    def load_sd(self, sd):
        raise ValueError("the JAX text encoder's weights come from its file; it takes no state dict")


class _EntryHolder(torch.nn.Module):
    """What a JaxModelPatcher wraps for encoders: registry entries, no torch parameters."""

    def __init__(self, entries):
        super().__init__()
        self.entries = list(entries)


class JaxCLIP(comfy.sd.CLIP):
    """A standard CLIP for core CLIPTextEncode / CLIPTextEncodeFlux; encoders run in JAX."""

    def __init__(self, family: str, encoders: dict[str, JaxTokenEncoder], tokenizer):
        # no super().__init__: it would build ComfyUI's torch encoders
        self.cond_stage_model = JaxTextEncoders(family, encoders)
        self.tokenizer = tokenizer
        self.patcher = JaxModelPatcher(self.cond_stage_model,
                                       load_device=comfy.model_management.text_encoder_device(),
                                       offload_device=comfy.model_management.text_encoder_offload_device(),
                                       size=sum(e.nbytes for e in self.cond_stage_model.entries))
        self.patcher.is_clip = True
        self.apply_hooks_to_conds = None
        self.layer_idx = None
        self.use_clip_schedule = False
        self.tokenizer_options = {}

    def get_sd(self):
        raise ValueError("a JAX text encoder has no torch state dict to save; save the source files instead")


class JaxClipVision(comfy.clip_vision.ClipVisionModel):
    """A standard CLIP_VISION for core CLIPVisionEncode; the encoder runs in JAX."""

    def __init__(self, entry: registry.Entry):  # no super().__init__: no torch model
        self.entry = entry
        encoder = entry.get()
        self.image_size = encoder.image_size
        self.image_mean, self.image_std = None, None  # ours: CLIP's (models_flax.clip_vision)
        self.return_all_hidden_states = False
        self.model = _EntryHolder([entry])
        self.load_device = comfy.model_management.text_encoder_device()
        self.patcher = JaxModelPatcher(self.model, load_device=self.load_device,
                                       offload_device=comfy.model_management.text_encoder_offload_device(),
                                       size=entry.nbytes)

    def encode_image(self, image, crop=True):
        comfy.model_management.load_model_gpu(self.patcher)
        pixels = image.detach().to("cpu", torch.float32).numpy()[..., :3]
        out = self.entry.get().encode(pixels, crop=crop)
        device = comfy.model_management.intermediate_device()
        outputs = comfy.clip_vision.Output()
        for key in ("last_hidden_state", "image_embeds", "penultimate_hidden_states"):
            outputs[key] = torch.from_numpy(np.array(out[key], np.float32)).to(device)
        outputs["mm_projected"] = None
        return outputs

    def get_sd(self):
        raise ValueError("a JAX CLIP vision model has no torch state dict to save; save the source file instead")

    def load_sd(self, sd):
        raise ValueError("the JAX CLIP vision model's weights come from its file; it takes no state dict")


# ----------------------------------------------------------------------------- building them

# ComfyUI's SDClipModel settings per tokenizer key: special tokens, mask into the model, zero-out
COMFY_ENCODERS = {
    "l": ({"start": 49406, "end": 49407, "pad": 49407}, False, False),
    "t5xxl": ({"end": 1, "pad": 0}, False, False),
    "umt5xxl": ({"end": 1, "pad": 0}, True, True),
}
KEY_OF_KIND = {"clip_text": "l", "t5": "t5xxl", "umt5": "umt5xxl"}


def token_encoder(kind: str, entry: registry.Entry) -> tuple[str, JaxTokenEncoder]:
    key = KEY_OF_KIND[kind]
    special, use_mask, zero_out = COMFY_ENCODERS[key]
    return key, JaxTokenEncoder(entry, special, use_mask=use_mask, zero_out=zero_out)


def tokenizer_for(family: str, spiece_model=None):
    """ComfyUI's own tokenizer for the family (its shipped CLIP / T5 vocabularies; UMT5's from the file)."""
    if family == "flux":
        from comfy.text_encoders.flux import FluxTokenizer

        return FluxTokenizer(embedding_directory=None)
    from comfy.text_encoders.wan import WanT5Tokenizer

    return WanT5Tokenizer(embedding_directory=None, tokenizer_data={"spiece_model": spiece_model})


def spiece_model_of(path: str):
    """The UMT5 sentencepiece model for `path` (what ComfyUI's tokenizer takes): the proto bytes of its
    `spiece_model` tensor, or the path of a spiece.model beside or inside it (converted checkpoints,
    transformers dirs); None if none."""
    from ..pipelines.text import find_tokenizer
    from ..pipelines.tokenizer import SPIECE_MODEL, read_spiece_tensor

    found = find_tokenizer(path) if os.path.isfile(path) else None
    if found is not None:
        return read_spiece_tensor(found)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    candidate = os.path.join(directory, SPIECE_MODEL)
    return candidate if os.path.isfile(candidate) else None
