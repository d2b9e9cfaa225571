"""AutoencoderKL key map: original LDM / BFL / ComfyUI VAE names → diffusers names, config from shapes.

(Step 2 of read → rename → transform → place.) BFL's Flux `ae.safetensors`, the files in ComfyUI's
`vae` folder and the VAE inside full SD/Flux checkpoints use the original latent-diffusion layout:

    encoder.down.{i}.block.{j}.nin_shortcut      → encoder.down_blocks.{i}.resnets.{j}.conv_shortcut
    encoder.down.{i}.downsample.conv             → encoder.down_blocks.{i}.downsamplers.0.conv
    {enc,dec}oder.mid.block_{1,2}                → {enc,dec}oder.mid_block.resnets.{0,1}
    {enc,dec}oder.mid.attn_1.{norm,q,k,v,proj_out}
                          → {enc,dec}oder.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}
    {enc,dec}oder.norm_out                       → {enc,dec}oder.conv_norm_out
    decoder.up.{i}.block.{j}                     → decoder.up_blocks.{n-1-i}.resnets.{j}   (reversed order)
    decoder.up.{i}.upsample.conv                 → decoder.up_blocks.{n-1-i}.upsamplers.0.conv

The attention projections are 1×1 convs (`[C, C, 1, 1]`) there and Linears (`[C, C]`) in diffusers.
Keys may carry a full checkpoint's `vae.` (Flux, SD3) or `first_stage_model.` (SD1/SDXL) prefix.
Single files carry no config: widths, depth and latent channels come from shapes, GroupNorm groups are
LDM's fixed 32, and scaling/shift are the Flux (16 latent channels) or SD (4) defaults. Cross-checked
against diffusers' `convert_ldm_vae_checkpoint` and ComfyUI's own module (tests/test_vae_single_file.py).
Imports numpy and models_flax only.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import numpy as np

from ..models_flax.vae_kl import DOWN_BLOCK, UP_BLOCK, AutoencoderKLConfig
from .transform import Take

VAE_PREFIXES = ("vae.", "first_stage_model.")  # full Flux/SD3 checkpoints; full SD1/SDXL checkpoints
DETECT_KEYS = ("encoder.down.0.block.0.conv1.weight", "decoder.mid.block_1.conv1.weight")
DETECT_KEY = DETECT_KEYS[0]  # the one an error message names
VIDEO_DECODER_KEY = "decoder.mid.block_1.mix_factor"  # SVD's temporal decoder: same names, other model
LDM_NORM_GROUPS = 32  # LDM's `Normalize` is GroupNorm(32, C) everywhere
MAX_LISTED = 5

# Scaling/shift by latent channels (not stored in single files): Flux ae.safetensors, SD1.x VAE.
LATENT_DEFAULTS: dict[int, dict] = {
    16: dict(scaling_factor=0.3611, shift_factor=0.1159, sample_size=1024),
    4: dict(scaling_factor=0.18215, shift_factor=None, sample_size=512),
}
UNKNOWN_LATENT_DEFAULTS = dict(scaling_factor=1.0, shift_factor=None)

RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
          "nin_shortcut": "conv_shortcut"}
MID_RESNETS = {"block_1": "resnets.0", "block_2": "resnets.1"}
ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
ATTENTION_PROJECTIONS = ("q", "k", "v", "proj_out")  # 1×1 convs in LDM, Linears in diffusers
ENDS = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out"}

_LEAF = r"(weight|bias)"
_ENDS = re.compile(rf"^(encoder|decoder)\.(conv_in|conv_out|norm_out)\.{_LEAF}$")
_QUANT = re.compile(rf"^(quant_conv|post_quant_conv)\.{_LEAF}$")
_MID_RESNET = re.compile(rf"^(encoder|decoder)\.mid\.(block_1|block_2)\.(norm1|conv1|norm2|conv2)\.{_LEAF}$")
_MID_ATTENTION = re.compile(rf"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.{_LEAF}$")
_RESNET = re.compile(rf"^(encoder\.down|decoder\.up)\.(\d+)\.block\.(\d+)\.({'|'.join(RESNET)})\.{_LEAF}$")
_RESAMPLE = re.compile(rf"^(encoder\.down\.(\d+)\.downsample|decoder\.up\.(\d+)\.upsample)\.conv\.{_LEAF}$")
_LEVEL_ATTENTION = re.compile(r"^(encoder\.down|decoder\.up)\.\d+\.attn\.")


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" … and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def strip_vae_prefix(key: str) -> str:
    """`'vae.encoder.conv_in.weight'` → `'encoder.conv_in.weight'` (other keys unchanged)."""
    for prefix in VAE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def vae_prefix(keys: Iterable[str]) -> str | None:
    """The prefix the LDM VAE's keys carry (`''`, `'vae.'`, `'first_stage_model.'`); None when none."""
    keys = set(keys)
    for prefix in ("",) + VAE_PREFIXES:
        if all(prefix + k in keys for k in DETECT_KEYS) and prefix + VIDEO_DECODER_KEY not in keys:
            return prefix
    return None


def is_ldm_vae(keys: Iterable[str]) -> bool:
    """True when `keys` hold an LDM-layout AutoencoderKL (alone, or under a `vae.` /
    `first_stage_model.` prefix inside a full checkpoint)."""
    return vae_prefix(keys) is not None


def vae_subset(keys: Iterable[str]) -> dict[str, str]:
    """`{name_without_prefix: stored_key}` of the VAE's keys; with a prefix, keys outside it (the other
    components of a full checkpoint) are left out, as ComfyUI's `vae_key_prefix` filter does."""
    keys = list(keys)
    prefix = vae_prefix(keys) or ""
    return {k[len(prefix):]: k for k in keys if k.startswith(prefix)}


def ldm_vae_rename(key: str, num_up_blocks: int) -> str:
    """The diffusers `AutoencoderKL` name of LDM VAE tensor `key` (a known prefix is dropped).

    Args:
      key: e.g. `'decoder.up.0.block.1.conv2.weight'`.
      num_up_blocks: decoder levels (`len(block_out_channels)`); LDM numbers them in reverse.
    Raises:
      ValueError naming `key` when it is not an LDM VAE parameter.
    """
    name = strip_vae_prefix(key)
    if m := _ENDS.match(name):
        part, module, leaf = m.groups()
        return f"{part}.{ENDS[module]}.{leaf}"
    if _QUANT.match(name):
        return name
    if m := _MID_RESNET.match(name):
        part, block, module, leaf = m.groups()
        return f"{part}.mid_block.{MID_RESNETS[block]}.{module}.{leaf}"
    if m := _MID_ATTENTION.match(name):
        part, module, leaf = m.groups()
        return f"{part}.mid_block.attentions.0.{ATTENTION[module]}.{leaf}"
    if m := _RESNET.match(name):
        level, index, block, module, leaf = m.groups()
        if level == "encoder.down":
            return f"encoder.down_blocks.{index}.resnets.{block}.{RESNET[module]}.{leaf}"
        up = _up_index(key, int(index), num_up_blocks)
        return f"decoder.up_blocks.{up}.resnets.{block}.{RESNET[module]}.{leaf}"
    if m := _RESAMPLE.match(name):
        _, down, up, leaf = m.groups()
        if down is not None:
            return f"encoder.down_blocks.{down}.downsamplers.0.conv.{leaf}"
        return f"decoder.up_blocks.{_up_index(key, int(up), num_up_blocks)}.upsamplers.0.conv.{leaf}"
    if _LEVEL_ATTENTION.match(name):
        raise ValueError(f"{key!r}: attention inside encoder/decoder levels (LDM attn_resolutions) "
                         f"is not supported by AutoencoderKL (only the mid-block attention is)")
    raise ValueError(f"{key!r} is not an LDM AutoencoderKL parameter")


def _up_index(key: str, index: int, num_up_blocks: int) -> int:
    if not 0 <= index < num_up_blocks:
        raise ValueError(f"{key!r}: decoder level {index} out of range for {num_up_blocks} up blocks")
    return num_up_blocks - 1 - index


def is_attention_projection(key: str) -> bool:
    """True for the mid-block q/k/v/proj_out weights (1×1 conv kernels that become Linear weights)."""
    m = _MID_ATTENTION.match(strip_vae_prefix(key))
    return m is not None and m.group(2) in ATTENTION_PROJECTIONS and m.group(3) == "weight"


def ldm_vae_transform_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape `ldm_vae_transform` gives tensor `key` of `shape` (headers only, no data)."""
    shape = tuple(shape)
    if not is_attention_projection(key) or len(shape) == 2:
        return shape
    if len(shape) < 2 or any(d != 1 for d in shape[2:]):
        raise ValueError(f"{key!r}: expected a 1×1 conv kernel [C, C, 1, 1] or a Linear [C, C], "
                         f"got {shape}")
    return shape[:2]


def ldm_vae_transform(key: str, array: np.ndarray) -> np.ndarray:
    """LDM tensor `key` → diffusers layout: mid-block attention 1×1 conv kernels `[C, C, 1, 1]` become
    Linear weights `[C, C]`; everything else is unchanged."""
    return np.reshape(array, ldm_vae_transform_shape(key, np.shape(array)))


def ldm_vae_key_map(keys: Iterable[str], num_up_blocks: int) -> tuple[dict[str, str], list[str]]:
    """Rename a whole key set: (`{diffusers_key: source_key}`, source keys that map to nothing)."""
    renamed, unknown = {}, []
    for key in keys:
        try:
            name = ldm_vae_rename(key, num_up_blocks)
        except ValueError:
            unknown.append(key)
            continue
        if name in renamed:  # the same tensor twice, e.g. with and without a prefix
            unknown.append(key)
            continue
        renamed[name] = key
    return renamed, unknown


def ldm_vae_keymap(shapes: Mapping[str, tuple[int, ...]], config) -> tuple[dict, list[str], set[str]]:
    """The LDM VAE layout's key map (families.Layout.keymap): (takes, unknown keys, no missing list —
    the model's own parameter names say what is missing)."""
    renamed, unknown = ldm_vae_key_map(shapes, len(config.block_out_channels))
    takes = {name: Take(key, matrix=is_attention_projection(key)) for name, key in renamed.items()}
    return takes, unknown, set()


def ldm_vae_state_dict(tensors: Mapping[str, np.ndarray], num_up_blocks: int) -> dict[str, np.ndarray]:
    """Renamed and transformed `{diffusers_key: array}`, ready for `place.load_state_dict`.

    Works on a whole state dict or on any part of it (one tensor at a time when streaming).
    Raises ValueError listing the keys that are not LDM VAE parameters.
    """
    renamed, unknown = ldm_vae_key_map(tensors, num_up_blocks)
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) are not LDM AutoencoderKL parameters: "
                         f"{_listing(sorted(unknown))}")
    return {name: ldm_vae_transform(key, tensors[key]) for name, key in renamed.items()}


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"cannot detect the AutoencoderKL config: key {key!r} ({what}) is missing")
    return tuple(shapes[key])


def _levels(names: Iterable[str], pattern: str) -> list[int]:
    """Sorted distinct integers captured by `pattern` (e.g. the `i` of `encoder.down.{i}.`)."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for n in names if (m := regex.match(n))})


def _check_consecutive(found: list[int], what: str) -> int:
    if found != list(range(len(found))):
        raise ValueError(f"cannot detect the AutoencoderKL config: {what} indices {found} are not 0…n-1")
    return len(found)


def ldm_vae_config(shapes: Mapping[str, tuple[int, ...]]) -> AutoencoderKLConfig:
    """A diffusers `AutoencoderKLConfig` inferred from LDM VAE key names and shapes.

    Args:
      shapes: `{key: shape}` of the file (a `vae.` / `first_stage_model.` prefix is allowed).
    Raises:
      ValueError naming the missing key, or the shape that does not fit AutoencoderKL.
    """
    names = {strip_vae_prefix(k): tuple(v) for k, v in shapes.items()}
    conv_in = _shape(names, "encoder.conv_in.weight", "encoder input conv")
    if len(conv_in) != 4:
        raise ValueError(f"encoder.conv_in.weight has shape {conv_in}: not a 2D image VAE "
                         f"(expected a [C_out, C_in, 3, 3] conv kernel)")
    if level_attn := sorted(n for n in names if _LEVEL_ATTENTION.match(n)):
        raise ValueError(f"unsupported LDM VAE: attention inside levels ({_listing(level_attn)}); "
                         f"AutoencoderKL only has the mid-block attention")
    _shape(names, DETECT_KEYS[0], "first encoder resnet")
    levels = _check_consecutive(_levels(names, r"^encoder\.down\.(\d+)\."), "encoder.down")
    block_out = tuple(_shape(names, f"encoder.down.{i}.block.0.conv1.weight", f"encoder level {i}")[0]
                      for i in range(levels))
    if odd := [c for c in block_out if c % LDM_NORM_GROUPS]:
        raise ValueError(f"block widths {block_out}: {odd} not divisible by LDM's {LDM_NORM_GROUPS} "
                         f"GroupNorm groups")
    layers = _check_consecutive(_levels(names, r"^encoder\.down\.0\.block\.(\d+)\."), "encoder.down.0.block")
    up_levels = _check_consecutive(_levels(names, r"^decoder\.up\.(\d+)\."), "decoder.up")
    if up_levels != levels:
        raise ValueError(f"decoder has {up_levels} up levels (decoder.up.N) but the encoder has {levels}")
    up_layers = len(_levels(names, r"^decoder\.up\.0\.block\.(\d+)\."))
    if up_layers != layers + 1:
        raise ValueError(f"decoder.up.0 has {up_layers} resnets; AutoencoderKL needs encoder's {layers} + 1")
    moments = _shape(names, "encoder.conv_out.weight", "encoder output conv, 2 × latent channels")[0]
    if moments % 2:
        raise ValueError(f"encoder.conv_out.weight has {moments} output channels: expected 2 × latent "
                         f"channels (mean ‖ logvar, LDM double_z)")
    latent = moments // 2
    decoder_in = _shape(names, "decoder.conv_in.weight", "decoder input conv")[1]
    if decoder_in != latent:
        raise ValueError(f"decoder.conv_in.weight takes {decoder_in} channels but the encoder makes "
                         f"{latent} latent channels (an embed_dim ≠ z_channels VAE is unsupported)")
    out_channels = _shape(names, "decoder.conv_out.weight", "decoder output conv")[0]
    return AutoencoderKLConfig(
        in_channels=conv_in[1],
        out_channels=out_channels,
        down_block_types=(DOWN_BLOCK,) * levels,
        up_block_types=(UP_BLOCK,) * levels,
        block_out_channels=block_out,
        layers_per_block=layers,
        latent_channels=latent,
        norm_num_groups=LDM_NORM_GROUPS,
        use_quant_conv="quant_conv.weight" in names,
        use_post_quant_conv="post_quant_conv.weight" in names,
        mid_block_add_attention="encoder.mid.attn_1.q.weight" in names,
        **LATENT_DEFAULTS.get(latent, UNKNOWN_LATENT_DEFAULTS),
    )
