"""Tiny T5 / UMT5 encoders from their two torch references, and ComfyUI's single-file layouts.

- transformers' `T5EncoderModel` / `UMT5EncoderModel` (what `save_pretrained` directories hold);
- ComfyUI's own `comfy/text_encoders/t5.py` `T5` (config_dict like its t5_config_xxl.json /
  umt5_config_xxl.json at a tiny size; it hard-codes 32 buckets and max distance 128), whose
  `state_dict()` is what ComfyUI's `t5xxl_*` / `umt5_xxl_*` files hold (transformers' key names, no
  `encoder.embed_tokens` alias). `comfy_file_state` turns it into the file variants people download:
  fp16, fp8_e4m3fn (every tensor fp8), and fp8 scaled (Linear weights fp8 with a per-tensor
  `scale_weight`, the `scaled_fp8` marker, UMT5's `spiece_model` uint8 tensor).

Weights are N(0, 0.1²) (norm weights 1 + N(0, 0.1²)): big enough that a misplaced tensor shows, small
enough that fp32 noise sits well below the 1e-5 parity tolerance (T5 has no softmax scale, so large
weights make the softmax peaky and amplify rounding). torch/transformers/ComfyUI imported lazily.
"""

from __future__ import annotations

import numpy as np

from comfy_fixtures import FP8_MAX, comfyui_root, import_comfy_flux

WEIGHT_STD = 0.1
SEQ = 12
# transformers config fields of the tiny encoders (ComfyUI's fixed 32 buckets / distance 128)
TINY = dict(vocab_size=64, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=3,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.0)
FEED_FORWARD = {"relu": ("relu", False), "gated-gelu": ("gelu_pytorch_tanh", True)}  # → ComfyUI's
SPIECE_BYTES = bytes(range(256)) * 3  # stands in for UMT5's serialized SentencePiece model


def randomize_(model, seed: int = 0, std: float = WEIGHT_STD):
    """Every parameter N(0, std²) in place, norm weights 1 + N(0, std²); returns the model in eval mode."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            offset = 1.0 if "layer_norm" in name else 0.0
            p.copy_(torch.randn(p.shape, generator=gen) * std + offset)
    return model.eval()


def transformers_encoder(umt5: bool, feed_forward_proj: str = "gated-gelu", seed: int = 0, **overrides):
    """A randomized fp32 transformers T5EncoderModel / UMT5EncoderModel."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kw = dict(TINY, feed_forward_proj=feed_forward_proj, **overrides)
    model = UMT5EncoderModel(UMT5Config(**kw)) if umt5 else T5EncoderModel(T5Config(**kw))
    return randomize_(model, seed)


def comfy_config(umt5: bool, feed_forward_proj: str = "gated-gelu") -> dict:
    """ComfyUI's config_dict (t5_config_xxl.json's keys) for the tiny encoder."""
    act, gated = FEED_FORWARD[feed_forward_proj]
    return dict(d_ff=TINY["d_ff"], d_kv=TINY["d_kv"], d_model=TINY["d_model"], num_heads=TINY["num_heads"],
                num_layers=TINY["num_layers"], vocab_size=TINY["vocab_size"], dense_act_fn=act,
                is_gated_act=gated, layer_norm_epsilon=1e-6, relative_attention_num_buckets=32,
                model_type="umt5" if umt5 else "t5")


def comfy_t5(tmp_dir, umt5: bool, *, feed_forward_proj: str = "gated-gelu", seed: int = 0,
             scaled_fp8: bool = False):
    """ComfyUI's T5 module, fp32 compute: randomized (plain ops), or empty with ComfyUI's scaled-fp8
    Linear ops (`scaled_fp8=True`, to load a scaled file's state dict as ComfyUI does)."""
    import torch

    _, ops = import_comfy_flux(comfyui_root(tmp_dir))  # ComfyUI on sys.path, CPU mode
    from comfy.text_encoders.t5 import T5

    config = comfy_config(umt5, feed_forward_proj)
    if scaled_fp8:
        operations = ops.scaled_fp8_ops(fp8_matrix_mult=False, override_dtype=torch.float8_e4m3fn)
        return T5(config, torch.float16, "cpu", operations).eval()
    model = T5(config, torch.float32, "cpu", ops.disable_weight_init)
    return randomize_(model, seed)


def comfy_forward(model, input_ids: np.ndarray, attention_mask: np.ndarray | None) -> np.ndarray:
    """ComfyUI's T5 forward (fp32 out): its `(x, intermediate)` → x."""
    import torch

    mask = None if attention_mask is None else torch.from_numpy(attention_mask)
    with torch.no_grad():
        out, _ = model(torch.from_numpy(input_ids).long(), attention_mask=mask, dtype=torch.float32)
    return out.float().numpy()


def is_linear_weight(key: str) -> bool:
    return key.endswith(".weight") and (".SelfAttention." in key or ".DenseReluDense." in key) \
        and "relative_attention_bias" not in key


def comfy_file_state(state: dict, variant: str, umt5: bool) -> dict:
    """ComfyUI's state dict as one of its file variants: "fp16" | "fp8" | "fp8_scaled" (UMT5 files
    carry `spiece_model` in every variant)."""
    import torch

    out = {}
    for key, tensor in state.items():
        tensor = tensor.detach().float()
        if variant == "fp16":
            out[key] = tensor.half()
        elif variant == "fp8":
            out[key] = tensor.to(torch.float8_e4m3fn)
        elif is_linear_weight(key):
            scale = tensor.abs().max() / FP8_MAX
            out[key] = (tensor / scale).to(torch.float8_e4m3fn)
            out[key[: -len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            out[key] = tensor.half()
    if variant == "fp8_scaled":
        out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    if umt5:
        out["spiece_model"] = torch.frombuffer(bytearray(SPIECE_BYTES), dtype=torch.uint8)
    return out


def without_extras(state: dict) -> dict:
    """The file's model tensors (no `scaled_fp8` marker or `spiece_model`)."""
    return {k: v for k, v in state.items() if k not in ("scaled_fp8", "spiece_model")}


ALIAS = "encoder.embed_tokens.weight"  # transformers' tied copy of `shared`: no parameter of ours


def ours_like(torch_model, umt5: bool):
    """Our encoder holding transformers `torch_model`'s weights (built abstractly, filled by name)."""
    from flax import nnx

    from jaxdiff.convert.place import load_state_dict
    from jaxdiff.models_flax.t5 import T5Config, T5EncoderModel
    from jaxdiff.models_flax.umt5 import UMT5Config, UMT5EncoderModel

    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_cls.from_dict(torch_model.config.to_dict())
    model = nnx.eval_shape(lambda: model_cls(config, rngs=nnx.Rngs(0)))
    load_state_dict(model, {k: v.numpy() for k, v in torch_model.state_dict().items() if k != ALIAS})
    return model


def torch_encode(model, ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """transformers encoder forward → `last_hidden_state` (numpy)."""
    import torch

    kw = {"input_ids": torch.from_numpy(ids)}
    if mask is not None:
        kw["attention_mask"] = torch.from_numpy(mask)
    with torch.no_grad():
        return model(**kw).last_hidden_state.numpy()


def encode(model, ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Our encoder's forward under one jit (int32 ids and mask)."""
    from parity import run_jitted

    return run_jitted(model, {"input_ids": ids.astype(np.int32),
                              "attention_mask": None if mask is None else mask.astype(np.int32)})


def tokens(batch: int = 2, seq: int = SEQ, seed: int = 0, padded: bool = True):
    """(input_ids int64 [B, S], attention_mask int64 [B, S] or None): item b keeps S − 3b tokens."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, TINY["vocab_size"], (batch, seq)).astype(np.int64)
    if not padded:
        return ids, None
    lengths = np.array([seq - 3 * b for b in range(batch)])
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return ids, mask
