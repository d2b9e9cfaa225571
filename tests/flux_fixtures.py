"""Tiny torch Flux models and inputs shared by the Flux tests (transformer, converter, pipeline).

Sizes follow diffusers' own FluxTransformer2DModel tests. torch/diffusers are imported lazily so that
importing this module stays cheap.
"""

from __future__ import annotations

import numpy as np

TEXT_TOKENS = 8
IMAGE_SIDE = 4  # 4 × 4 packed latent tokens
GUIDANCE = 3.5
WEIGHT_STD = 0.05


def tiny_flux_config(guidance_embeds: bool = True, *, num_layers: int = 1,
                     num_single_layers: int = 1) -> dict:
    """diffusers config kwargs for a tiny FluxTransformer2DModel (dev when `guidance_embeds`)."""
    return dict(patch_size=1, in_channels=4, out_channels=None, num_layers=num_layers,
                num_single_layers=num_single_layers, attention_head_dim=16, num_attention_heads=2,
                joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                axes_dims_rope=(4, 4, 8))


def randomize_(module, seed: int = 0, std: float = WEIGHT_STD):
    """Fill every parameter of a torch module with N(0, std²) in place (diffusers zero-inits some)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * std)
    return module


def tiny_torch_flux(guidance_embeds: bool = True, seed: int = 0, **config):
    """A randomized fp32 diffusers FluxTransformer2DModel in eval mode."""
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**tiny_flux_config(guidance_embeds, **config))
    return randomize_(model, seed).eval()


def torch_state_dict_numpy(module) -> dict[str, np.ndarray]:
    """`{torch_key: float32 numpy array}` for `convert.place.load_state_dict`."""
    return {k: v.detach().float().numpy() for k, v in module.state_dict().items()}


def image_ids(height: int = IMAGE_SIDE, width: int = IMAGE_SIDE) -> np.ndarray:
    """FluxPipeline latent ids `(0, row, col)` → `[height · width, 3]` float32."""
    ids = np.zeros((height, width, 3), np.float32)
    ids[..., 1] = np.arange(height)[:, None]
    ids[..., 2] = np.arange(width)[None, :]
    return ids.reshape(-1, 3)


def tiny_flux_inputs(config: dict, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray | None]:
    """Random forward kwargs (numpy, float32) matching diffusers' FluxTransformer2DModel.forward."""
    rng = np.random.default_rng(seed)
    n_img = IMAGE_SIDE * IMAGE_SIDE
    return dict(
        hidden_states=rng.standard_normal((batch, n_img, config["in_channels"]), np.float32),
        encoder_hidden_states=rng.standard_normal(
            (batch, TEXT_TOKENS, config["joint_attention_dim"]), np.float32),
        pooled_projections=rng.standard_normal((batch, config["pooled_projection_dim"]), np.float32),
        timestep=rng.uniform(0.05, 0.95, (batch,)).astype(np.float32),
        img_ids=image_ids(),
        txt_ids=np.zeros((TEXT_TOKENS, 3), np.float32),
        guidance=(np.full((batch,), GUIDANCE, np.float32) if config["guidance_embeds"] else None),
    )


def torch_flux_forward(model, inputs: dict) -> np.ndarray:
    """Run the diffusers model on numpy inputs; returns the output as numpy."""
    import torch

    kwargs = {k: (None if v is None else torch.from_numpy(np.asarray(v))) for k, v in inputs.items()}
    with torch.no_grad():
        return model(**kwargs, return_dict=False)[0].numpy()
