"""Released model shapes by name, built from the family registry's preset rows (`jaxdiff.families`).

Each `Preset` holds the family row, the transformer and VAE config objects, a default size and run
length. `jaxdiff plan`, `jaxdiff bench` and the benchmarks build random-weight or abstract
(`nnx.eval_shape`) models from these; loading real weights never uses them (configs then come from
the checkpoint). Nothing here branches on a family: sizes come from the VAE config
(`spatial_factor`, `temporal_factor`, `latent_channels`) and the pipeline class (`image_tokens`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from .. import families


@dataclasses.dataclass(frozen=True)
class Preset:
    """A released model's shapes. `experts`: transformers run per step (Wan 2.2 A14B has two, but only
    one is resident per step if they are swapped; the planner counts both as resident)."""

    name: str
    row: families.Family
    transformer: Any  # the family's transformer config object
    vae: Any  # the family's VAE config object
    height: int
    width: int
    frames: int = 1  # pixel frames (video: 4k+1)
    text_tokens: int = 512
    experts: int = 1
    steps: int = 28
    guidance_passes: int = 1  # transformer calls per step (2 with classifier-free guidance)
    expand_timesteps: bool = False  # per-token timesteps `[B, S]` (Wan 2.2 TI2V-5B)

    @property
    def family(self) -> str:
        return self.row.name

    @property
    def video(self) -> bool:
        return self.row.output == "video"

    @property
    def spatial_factor(self) -> int:
        return self.vae.spatial_factor

    @property
    def temporal_factor(self) -> int:
        return self.vae.temporal_factor


def _config(kind: families.ModelKind, value):
    """A config object from a preset row's dict, import string or None (the class defaults)."""
    config_cls, _ = kind.classes()
    if value is None:
        return config_cls()
    value = families.resolve(value)
    return value if isinstance(value, config_cls) else config_cls.from_dict(dict(value))


def from_row(row: families.Family, preset: families.Preset) -> Preset:
    return Preset(name=preset.name, row=row, transformer=_config(row.transformer, preset.transformer),
                  vae=_config(row.vae, preset.vae), height=preset.height, width=preset.width,
                  frames=preset.frames, text_tokens=preset.text_tokens, experts=preset.experts,
                  steps=preset.steps, guidance_passes=preset.guidance_passes,
                  expand_timesteps=preset.expand_timesteps)


@functools.lru_cache(maxsize=None)
def get_preset(name: str) -> Preset:
    """The preset called `name` (case-insensitive); a ValueError lists the known names otherwise."""
    return from_row(*families.preset(name))


def latent_shape(preset: Preset, height: int, width: int, frames: int = 1, batch: int = 1) -> tuple[int, ...]:
    """Raw VAE latent shape for a pixel size: images `[B, C, H/s, W/s]`, videos `[B, C, T', H/s, W/s]`."""
    s = preset.spatial_factor
    if height % s or width % s:
        raise ValueError(f"{preset.name}: height and width must be multiples of {s}, got {height}×{width}")
    channels = preset.vae.latent_channels
    if not preset.video:
        return (batch, channels, height // s, width // s)
    if (frames - 1) % preset.temporal_factor:
        raise ValueError(f"{preset.name}: frames must be {preset.temporal_factor}k+1, got {frames}")
    return (batch, channels, (frames - 1) // preset.temporal_factor + 1, height // s, width // s)


def image_tokens(preset: Preset, height: int, width: int, frames: int = 1) -> int:
    """Transformer sequence length of the latent (without text), by the family's pipeline."""
    pipeline_cls = families.resolve(preset.row.pipeline)
    return pipeline_cls.image_tokens(preset.transformer, latent_shape(preset, height, width, frames))
