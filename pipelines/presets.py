"""Released model shapes by name, for planning and benchmarking without weights.

Each preset holds the transformer config (field values of the released `transformer/config.json`),
the VAE config, the family, the latent layout and a default resolution. `jaxdiff plan`, `jaxdiff bench`
and the benchmarks build random-weight or abstract (`nnx.eval_shape`) models from these; loading real
weights never uses them (configs then come from the checkpoint).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..models_flax.flux import FluxConfig
from ..models_flax.vae_kl import FLUX_VAE_CONFIG
from ..models_flax.vae_wan import WAN22_VAE_CONFIG, WanVAEConfig
from ..models_flax.wan import WanConfig


@dataclasses.dataclass(frozen=True)
class Preset:
    """A released model's shapes. `experts`: transformers run per step (Wan 2.2 A14B has two, but only
    one is resident per step if they are swapped; the planner counts both as resident)."""

    name: str
    family: str  # "flux" | "wan"
    transformer: Any  # FluxConfig | WanConfig
    vae: Any  # AutoencoderKLConfig | WanVAEConfig
    height: int
    width: int
    frames: int = 1  # pixel frames (Wan: 4k+1)
    text_tokens: int = 512
    experts: int = 1
    spatial_factor: int = 8  # pixels per latent along height/width
    temporal_factor: int = 4  # pixel frames per latent frame after the first (Wan)
    steps: int = 28
    guidance_passes: int = 1  # transformer calls per step (2 with classifier-free guidance)
    expand_timesteps: bool = False  # per-token timesteps `[B, S]` (Wan 2.2 TI2V-5B)


_FLUX = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
             axes_dims_rope=(16, 56, 56))
_WAN = dict(patch_size=(1, 2, 2), attention_head_dim=128, text_dim=4096, freq_dim=256, eps=1e-6,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
WAN21_1_3B = WanConfig(num_attention_heads=12, ffn_dim=8960, num_layers=30, in_channels=16, out_channels=16,
                       **_WAN)
WAN21_14B = WanConfig(num_attention_heads=40, ffn_dim=13824, num_layers=40, in_channels=16, out_channels=16,
                      **_WAN)
WAN21_I2V_14B = dataclasses.replace(WAN21_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120)
WAN22_5B = WanConfig(num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48,
                     **_WAN)

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("flux-dev", "flux", FluxConfig(guidance_embeds=True, **_FLUX), FLUX_VAE_CONFIG, 1024, 1024),
    Preset("flux-schnell", "flux", FluxConfig(guidance_embeds=False, **_FLUX), FLUX_VAE_CONFIG, 1024, 1024,
           steps=4),
    Preset("wan2.1-t2v-1.3b", "wan", WAN21_1_3B, WanVAEConfig(), 480, 832, 81, steps=50, guidance_passes=2),
    Preset("wan2.1-t2v-14b", "wan", WAN21_14B, WanVAEConfig(), 720, 1280, 81, steps=50, guidance_passes=2),
    Preset("wan2.1-i2v-14b", "wan", WAN21_I2V_14B, WanVAEConfig(), 720, 1280, 81, steps=40,
           guidance_passes=2),
    Preset("wan2.2-t2v-a14b", "wan", WAN21_14B, WanVAEConfig(), 720, 1280, 81, experts=2, steps=40,
           guidance_passes=2),
    Preset("wan2.2-i2v-a14b", "wan", dataclasses.replace(WAN21_14B, in_channels=36), WanVAEConfig(),
           720, 1280, 81, experts=2, steps=40, guidance_passes=2),
    Preset("wan2.2-ti2v-5b", "wan", WAN22_5B, WAN22_VAE_CONFIG, 704, 1280, 121, spatial_factor=16,
           steps=50, guidance_passes=2, expand_timesteps=True),
)}


def get_preset(name: str) -> Preset:
    """The preset called `name` (case-insensitive); a ValueError lists the known names otherwise."""
    preset = PRESETS.get(name.strip().lower())
    if preset is None:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return preset


def latent_shape(preset: Preset, height: int, width: int, frames: int = 1, batch: int = 1) -> tuple[int, ...]:
    """Raw VAE latent shape for a pixel size: Flux `[B, 16, H/8, W/8]`, Wan `[B, z, T', H/s, W/s]`."""
    s = preset.spatial_factor
    if height % s or width % s:
        raise ValueError(f"{preset.name}: height and width must be multiples of {s}, got {height}×{width}")
    if preset.family == "flux":
        return (batch, preset.vae.latent_channels, height // s, width // s)
    if (frames - 1) % preset.temporal_factor:
        raise ValueError(f"{preset.name}: frames must be {preset.temporal_factor}k+1, got {frames}")
    return (batch, preset.vae.z_dim, (frames - 1) // preset.temporal_factor + 1, height // s, width // s)


def image_tokens(preset: Preset, height: int, width: int, frames: int = 1) -> int:
    """Transformer sequence length of the latent (without text): Flux packs 2×2, Wan patches (1,2,2)."""
    shape = latent_shape(preset, height, width, frames)
    if preset.family == "flux":
        return (shape[2] // 2) * (shape[3] // 2)
    pt, ph, pw = preset.transformer.patch_size
    return (shape[2] // pt) * (shape[3] // ph) * (shape[4] // pw)
