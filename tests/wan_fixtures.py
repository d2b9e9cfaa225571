"""Tiny torch Wan transformers and inputs shared by the Wan tests (transformer, converter, pipeline).

Sizes follow diffusers' own WanTransformer3DModel tests. torch/diffusers are imported lazily so that
importing this module stays cheap.
"""

from __future__ import annotations

import numpy as np

from flux_fixtures import randomize_, torch_state_dict_numpy  # noqa: F401  (re-exported)

LATENT_SHAPE = (3, 8, 8)  # frames, height, width → 3 × 4 × 4 = 48 tokens with patch (1, 2, 2)
TEXT_TOKENS = 8
I2V_TEXT_TOKENS = 512  # diffusers' WanAttnProcessor splits [image, text] context at len − 512
IMAGE_TOKENS = 5  # stands in for CLIP-vision's 257
MAX_TIMESTEP = 1000.0


def tiny_wan_config(**overrides) -> dict:
    """diffusers config kwargs for a tiny WanTransformer3DModel (T2V unless overridden)."""
    config = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                  out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2,
                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
                  added_kv_proj_dim=None, rope_max_seq_len=32, pos_embed_seq_len=None)
    config.update(overrides)
    return config


def tiny_i2v_config(**overrides) -> dict:
    """Wan 2.1 I2V-shaped: noise + mask + image latents on channels, CLIP-vision image tokens."""
    return tiny_wan_config(**{**dict(in_channels=12, out_channels=4, image_dim=20,
                                     added_kv_proj_dim=24), **overrides})


def randomize_wan_(module, seed: int = 0):
    """`randomize_`, then norm weights moved to 1 + N(0, std²): with weights near 0 the RMS-normed q/k
    would make every softmax nearly uniform, and a RoPE or q/k bug would hide below the tolerance."""
    import torch

    randomize_(module, seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            *_, owner, leaf = ("." + name).split(".")
            if owner.startswith("norm") and leaf == "weight":
                p.add_(1.0)
    return module


def tiny_torch_wan(seed: int = 0, **overrides):
    """A randomized fp32 diffusers WanTransformer3DModel in eval mode (every parameter random)."""
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**tiny_wan_config(**overrides))
    return randomize_wan_(model, seed).eval()


def tiny_wan_inputs(config: dict, batch: int = 2, seed: int = 0, *, text_tokens: int = TEXT_TOKENS,
                    image_tokens: int | None = None, image_batch: int | None = None,
                    per_token_timesteps: bool = False) -> dict[str, np.ndarray | None]:
    """Random forward kwargs (numpy, float32) matching diffusers' WanTransformer3DModel.forward.

    `image_tokens` adds `encoder_hidden_states_image` `[image_batch or B, image_tokens, image_dim]`;
    `per_token_timesteps` gives Wan 2.2 TI2V-style `[B, S]` timesteps with the first latent frame at 0
    (the conditioning frame), the rest at one timestep per sample.
    """
    rng = np.random.default_rng(seed)
    frames, height, width = LATENT_SHAPE
    timestep = rng.uniform(0.0, MAX_TIMESTEP, (batch,)).astype(np.float32)
    if per_token_timesteps:
        pt, ph, pw = config["patch_size"]
        per_frame = (height // ph) * (width // pw)
        timestep = np.repeat(timestep[:, None], (frames // pt) * per_frame, axis=1)
        timestep[:, :per_frame] = 0.0
    inputs = dict(
        hidden_states=rng.standard_normal((batch, config["in_channels"], *LATENT_SHAPE), np.float32),
        timestep=timestep,
        encoder_hidden_states=rng.standard_normal((batch, text_tokens, config["text_dim"]),
                                                  np.float32),
        encoder_hidden_states_image=None)
    if image_tokens is not None:
        inputs["encoder_hidden_states_image"] = rng.standard_normal(
            (image_batch or batch, image_tokens, config["image_dim"]), np.float32)
    return inputs


def torch_wan_forward(model, inputs: dict) -> np.ndarray:
    """Run the diffusers model on numpy inputs; returns the output as numpy."""
    import torch

    kwargs = {k: (None if v is None else torch.from_numpy(np.asarray(v))) for k, v in inputs.items()}
    with torch.no_grad():
        return model(**kwargs, return_dict=False)[0].numpy()
