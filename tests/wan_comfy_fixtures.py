"""ComfyUI's own Wan modules at a tiny size: independent references for Comfy-Org Wan single files.

`comfy.ldm.wan.model.WanModel` (transformer, T2V / I2V / TI2V-shaped) and `comfy.ldm.wan.vae.WanVAE`
(Wan 2.1 VAE) are imported from the ComfyUI snapshot (see comfy_fixtures.py). Widths keep ComfyUI's
head-dim assumption (dim 128, 1 head) so detection needs no config override.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from comfy_fixtures import import_comfy_flux

# Tiny WanModel kwargs (ComfyUI names). ComfyUI fixes the CLIP-vision width of `img_emb` at 1280.
TINY_WAN = dict(patch_size=(1, 2, 2), in_dim=4, dim=128, ffn_dim=64, freq_dim=256, text_dim=16,
                out_dim=4, num_heads=1, num_layers=2, window_size=(-1, -1), qk_norm=True,
                cross_attn_norm=True, eps=1e-6)
VARIANTS = {
    "t2v": dict(model_type="t2v"),
    "i2v": dict(model_type="i2v", in_dim=12),
    "ti2v": dict(model_type="t2v", in_dim=8, out_dim=8),  # TI2V-5B shape: in = out, per-token t
}
COMFY_IMAGE_DIM = 1280
LATENT_SHAPE = (3, 8, 8)
TEXT_TOKENS = 8
I2V_TEXT_TOKENS = 512  # diffusers' I2V splits [image, text] context at len − 512 (third reference)
IMAGE_TOKENS = 5
WEIGHT_STD = 0.05
NORM_NAMES = ("norm_q.weight", "norm_k.weight", "norm_k_img.weight", "norm3.weight",
              "img_emb.proj.0.weight", "img_emb.proj.4.weight")


def tiny_comfy_wan(root: Path, variant: str, seed: int = 0, **overrides):
    """A randomized fp32 ComfyUI WanModel in eval mode: weights N(0, 0.05²), norm weights
    1 + N(0, 0.05²)."""
    import torch

    _, ops = import_comfy_flux(root)  # puts ComfyUI on sys.path in CPU mode
    from comfy.ldm.wan.model import WanModel

    torch.manual_seed(seed)
    model = WanModel(**{**TINY_WAN, **VARIANTS[variant], **overrides}, operations=ops.disable_weight_init,
                     dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            offset = 1.0 if name.endswith(NORM_NAMES) else 0.0
            p.copy_(torch.randn(p.shape, generator=gen) * WEIGHT_STD + offset)
    return model.float().eval()


def comfy_wan_inputs(variant: str, batch: int = 2, seed: int = 0) -> dict:
    """ComfyUI WanModel forward inputs (numpy): x, timestep (sigma·1000), context, clip_fea."""
    rng = np.random.default_rng(seed)
    cfg = {**TINY_WAN, **VARIANTS[variant]}
    frames, height, width = LATENT_SHAPE
    timestep = rng.uniform(0.0, 1000.0, (batch,)).astype(np.float32)
    if variant == "ti2v":  # Wan 2.2 TI2V: per-token timesteps, the first latent frame at 0
        per_frame = (height // 2) * (width // 2)
        timestep = np.repeat(timestep[:, None], frames * per_frame, axis=1)
        timestep[:, :per_frame] = 0.0
    return dict(
        x=rng.standard_normal((batch, cfg["in_dim"], *LATENT_SHAPE), np.float32),
        timestep=timestep,
        context=rng.standard_normal(
            (batch, I2V_TEXT_TOKENS if cfg["model_type"] == "i2v" else TEXT_TOKENS, cfg["text_dim"]),
            np.float32),
        clip_fea=(rng.standard_normal((batch, IMAGE_TOKENS, COMFY_IMAGE_DIM), np.float32)
                  if cfg["model_type"] == "i2v" else None))


def comfy_wan_forward(model, inputs: dict) -> np.ndarray:
    import torch

    kw = {k: None if v is None else torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        return model(kw["x"], kw["timestep"], kw["context"], clip_fea=kw["clip_fea"]).numpy()


def diffusers_wan_inputs(inputs: dict) -> dict:
    """The same call in diffusers' / our WanTransformer3DModel convention."""
    return dict(hidden_states=inputs["x"], timestep=inputs["timestep"],
                encoder_hidden_states=inputs["context"],
                encoder_hidden_states_image=inputs["clip_fea"])


# Tiny Wan 2.1 VAE (ComfyUI WanVAE kwargs; real: dim 96, z 16, dim_mult [1, 2, 4, 4], 2 resnets).
TINY_WAN_VAE = dict(dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                    temperal_downsample=[False, True, True], dropout=0.0)


def tiny_comfy_wan_vae(root: Path, seed: int = 0, **overrides):
    """ComfyUI's Wan 2.1 WanVAE, randomized (weights N(0, 0.25/fan_in), gammas 1 + N(0, 0.04),
    biases N(0, 0.04)), fp32, eval mode."""
    import torch

    import_comfy_flux(root)
    from comfy.ldm.wan.vae import WanVAE

    return _randomize_vae(WanVAE(**{**TINY_WAN_VAE, **overrides}), seed)


def _randomize_vae(model, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("bias"):
                p.copy_(0.2 * noise)
            elif name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.5 / np.sqrt(p[0].numel()) * noise)
    return model.float().eval()


# Tiny Wan 2.2 VAE (ComfyUI vae2_2.WanVAE kwargs; real: dim 160, dec_dim 256, z 48, dim_mult [1, 2, 4, 4]).
TINY_WAN22_VAE = dict(dim=8, dec_dim=16, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                      attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)


def tiny_comfy_wan22_vae(root: Path, seed: int = 0):
    """ComfyUI's Wan 2.2 WanVAE (vae2_2.py), randomized like `tiny_comfy_wan_vae`."""
    import_comfy_flux(root)
    from comfy.ldm.wan.vae2_2 import WanVAE

    return _randomize_vae(WanVAE(**TINY_WAN22_VAE), seed)
