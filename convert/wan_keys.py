"""Wan key maps: Comfy-Org / original Wan single files → diffusers names, and config from key shapes.

(Step 2 of read → rename → transform → place.) Two layouts, both one-to-one renames (no fused
tensors), checked against diffusers' `convert_wan_transformer_to_diffusers` and
`convert_wan_vae_to_diffusers` and against ComfyUI's own modules (tests/test_convert_wan_*.py):

Transformer (ComfyUI `comfy/ldm/wan/model.py`, optionally under `model.diffusion_model.`):

    patch_embedding                    → patch_embedding
    text_embedding.{0,2}               → condition_embedder.text_embedder.linear_{1,2}
    time_embedding.{0,2}               → condition_embedder.time_embedder.linear_{1,2}
    time_projection.1                  → condition_embedder.time_proj
    blocks.N.self_attn.{q,k,v,o}       → blocks.N.attn1.{to_q,to_k,to_v,to_out.0}   (+ norm_q, norm_k)
    blocks.N.cross_attn.{q,k,v,o}      → blocks.N.attn2.…;  k_img/v_img/norm_k_img → add_k_proj/
                                         add_v_proj/norm_added_k (I2V)
    blocks.N.norm3 (cross-attn norm)   → blocks.N.norm2   (ComfyUI's norm2 is diffusers' affine-free norm3)
    blocks.N.ffn.{0,2}                 → blocks.N.ffn.net.{0.proj,2}
    blocks.N.modulation                → blocks.N.scale_shift_table
    head.head / head.modulation        → proj_out / scale_shift_table
    img_emb.proj.{0,1,3,4}             → condition_embedder.image_embedder.{norm1, ff.net.0.proj,
                                         ff.net.2, norm2}
    img_emb.emb_pos (FLF2V)            → condition_embedder.image_embedder.pos_embed

Single files carry no config. Like ComfyUI's model_detection: width and in-channels from
`patch_embedding`, head dim 128 (`heads = dim // 128`), depth from the block count, FFN width from
`blocks.0.ffn.0`, I2V iff `img_emb.*` (image_dim from `img_emb.proj.0`, added_kv_proj_dim = width);
text and frequency widths are read from `text_embedding.0` / `time_embedding.0` (4096 / 256 in every
released file). Wan 2.2 TI2V-5B is the same layout with 48 in/out channels.

VAE 2.1 (ComfyUI `comfy/ldm/wan/vae.py`, the original Wan layout):

    encoder.conv1 / decoder.conv1      → {en,de}coder.conv_in
    conv1 / conv2                      → quant_conv / post_quant_conv
    encoder.downsamples.N              → encoder.down_blocks.N    (same flat list)
    …residual.{0,2,3,6}, shortcut      → …norm1.gamma, conv1, norm2.gamma, conv2, conv_shortcut
    {en,de}coder.middle.{0,1,2}        → {en,de}coder.mid_block.{resnets.0, attentions.0, resnets.1}
    {en,de}coder.head.{0,2}            → {en,de}coder.{norm_out.gamma, conv_out}
    decoder.upsamples.N (flat list)    → decoder.up_blocks.I.resnets.J / decoder.up_blocks.I.upsamplers.0
                                         (grouped: each Resample closes a stage)

VAE 2.2 (ComfyUI `comfy/ldm/wan/vae2_2.py`; detected by `decoder.upsamples.0.upsamples.0.…`): the same
ends and middles, nested stages instead of a flat list (the AvgDown3D / DupUp3D shortcuts have no weights):

    encoder.downsamples.I.downsamples.J → encoder.down_blocks.I.resnets.J  (last J: .downsampler)
    decoder.upsamples.I.upsamples.J     → decoder.up_blocks.I.resnets.J    (last J: .upsampler)

Config from shapes: base width from `encoder.conv1`, z from `conv2`, dim_mult/num_res_blocks from the
resnet widths and counts, temperal_downsample from which encoder Resamples have a `time_conv`; 2.2 adds
is_residual, patch size 2 (spatial /16) and the 2.2 latent statistics when z = 48, as ComfyUI's sd.py.
Imports numpy (via transform) and the Wan 2.2 latent statistics from models_flax.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping

from ..models_flax.vae_wan import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD
from .transform import Take

MAX_LISTED = 5

# ----------------------------------------------------------------------------- transformer

DETECT_KEY = "head.modulation"  # ComfyUI's model_detection tests for this key
HEAD_DIM = 128  # what ComfyUI assumes: num_heads = dim // 128

TOP_LEVEL = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}
IMAGE_EMBEDDING = {
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
}
PARAMETERS = {  # bare nn.Parameters (no .weight/.bias leaf)
    "head.modulation": "scale_shift_table",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
}
BLOCK = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0", "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "norm3": "norm2",  # ComfyUI's cross-attention norm (affine) is diffusers' norm2
    "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}
BLOCK_I2V = {"cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
             "cross_attn.norm_k_img": "attn2.norm_added_k"}
BLOCK_NORMS = ("self_attn.norm_q", "self_attn.norm_k", "cross_attn.norm_q", "cross_attn.norm_k",
               "cross_attn.norm_k_img")  # RMSNorm: weight only
BLOCK_PARAMETER = ("modulation", "scale_shift_table")

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")
_BLOCK_PARAM = re.compile(r"^blocks\.(\d+)\.modulation$")
_TOP = re.compile(r"^(.+)\.(weight|bias)$")


def is_comfy_wan(keys) -> bool:
    return DETECT_KEY in keys


def comfy_wan_rename(key: str) -> str | None:
    """The diffusers `WanTransformer3DModel` name of ComfyUI/original Wan tensor `key`, or None."""
    if key in PARAMETERS:
        return PARAMETERS[key]
    if m := _BLOCK_PARAM.match(key):
        return f"blocks.{m.group(1)}.{BLOCK_PARAMETER[1]}"
    if m := _BLOCK.match(key):
        index, module, leaf = m.groups()
        name = BLOCK.get(module) or BLOCK_I2V.get(module)
        if name is None or (module in BLOCK_NORMS and leaf != "weight"):
            return None
        return f"blocks.{index}.{name}.{leaf}"
    if m := _TOP.match(key):
        module, leaf = m.groups()
        name = TOP_LEVEL.get(module) or IMAGE_EMBEDDING.get(module)
        return None if name is None else f"{name}.{leaf}"
    return None


def comfy_wan_takes(keys: Iterable[str]) -> tuple[dict[str, Take], list[str]]:
    """Rename a whole key set: (`{diffusers_key: Take}`, source keys that map to nothing)."""
    takes, unknown = {}, []
    for key in keys:
        name = comfy_wan_rename(key)
        if name is None or name in takes:
            unknown.append(key)
            continue
        takes[name] = Take(key)
    return takes, unknown


def comfy_wan_key_names(config) -> set[str]:
    """Every key a ComfyUI Wan file of this config holds (to name missing keys in its own terms)."""
    c = _as_dict(config)
    keys = {f"{m}.{leaf}" for m in TOP_LEVEL for leaf in ("weight", "bias")} | {"head.modulation"}
    if c.get("image_dim") is not None:
        keys |= {f"{m}.{leaf}" for m in IMAGE_EMBEDDING for leaf in ("weight", "bias")}
        if c.get("pos_embed_seq_len") is not None:
            keys.add("img_emb.emb_pos")
    block = dict(BLOCK)
    if not c.get("cross_attn_norm", True):
        del block["norm3"]
    if c.get("added_kv_proj_dim") is not None:
        block.update(BLOCK_I2V)
    for i in range(c["num_layers"]):
        keys.add(f"blocks.{i}.modulation")
        for module in block:
            leaves = ("weight",) if module in BLOCK_NORMS else ("weight", "bias")
            keys |= {f"blocks.{i}.{module}.{leaf}" for leaf in leaves}
    return keys


def comfy_wan_keymap(shapes: Mapping[str, tuple[int, ...]], config) -> tuple[dict[str, Take], list[str], set[str]]:
    """The ComfyUI Wan layout's key map (families.Layout.keymap): (takes, unknown, missing keys)."""
    takes, unknown = comfy_wan_takes(shapes)
    return takes, unknown, comfy_wan_key_names(config) - set(shapes)


def _as_dict(config) -> dict:
    if isinstance(config, Mapping):
        return dict(config)
    return config.to_dict()


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, what: str, model: str = "Wan") -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"cannot detect the {model} config: key {key!r} ({what}) is missing")
    return tuple(shapes[key])


def _count_blocks(keys: Iterable[str], prefix: str) -> int:
    indices = {int(k[len(prefix):].split(".")[0]) for k in keys
               if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()}
    return max(indices) + 1 if indices else 0


def comfy_wan_config(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """A diffusers `WanTransformer3DModel` config dict inferred from ComfyUI Wan key names and shapes.

    Raises ValueError naming the missing key, or saying why the shapes fit no Wan variant.
    """
    embed = _shape(shapes, "patch_embedding.weight", "patch embedding, [dim, in_channels, 1, 2, 2]")
    if len(embed) != 5:
        raise ValueError(f"cannot detect the Wan config: patch_embedding.weight has shape {embed}, "
                         "expected a Conv3d kernel [dim, in_channels, t, h, w]")
    dim, in_channels, patch = embed[0], embed[1], tuple(embed[2:])
    if dim % HEAD_DIM:
        raise ValueError(f"cannot detect the Wan config: width {dim} (patch_embedding.weight) is not a "
                         f"multiple of head dim {HEAD_DIM} (ComfyUI's assumption, num_heads = dim // "
                         f"{HEAD_DIM}); pass config= explicitly")
    head_rows = _shape(shapes, "head.head.weight", "output projection")[0]
    if head_rows % math.prod(patch):
        raise ValueError(f"cannot detect the Wan config: head.head.weight has {head_rows} rows, not a "
                         f"multiple of the patch volume {math.prod(patch)}")
    num_layers = _count_blocks(shapes, "blocks.")
    if num_layers == 0:
        raise ValueError("cannot detect the Wan config: no transformer blocks (key 'blocks.0.ffn.0.weight' "
                         "is missing)")
    image = "img_emb.proj.0.weight" in shapes or any(k.startswith("img_emb.") for k in shapes)
    image_dim = _shape(shapes, "img_emb.proj.0.weight", "image embedding norm")[0] if image else None
    pos = shapes.get("img_emb.emb_pos")
    return {
        "_class_name": "WanTransformer3DModel",
        "patch_size": list(patch),
        "num_attention_heads": dim // HEAD_DIM,
        "attention_head_dim": HEAD_DIM,
        "in_channels": in_channels,
        "out_channels": head_rows // math.prod(patch),
        "text_dim": _shape(shapes, "text_embedding.0.weight", "text embedding")[1],
        "freq_dim": _shape(shapes, "time_embedding.0.weight", "time embedding")[1],
        "ffn_dim": _shape(shapes, "blocks.0.ffn.0.weight", "feed-forward")[0],
        "num_layers": num_layers,
        "cross_attn_norm": "blocks.0.norm3.weight" in shapes,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "image_dim": image_dim,
        "added_kv_proj_dim": dim if image else None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": None if pos is None else tuple(pos)[1],
    }


# ----------------------------------------------------------------------------- VAE (Wan 2.1)

VAE_DETECT_KEY = "decoder.middle.0.residual.0.gamma"  # ComfyUI's sd.py and diffusers test for it
VAE22_KEY = "decoder.upsamples.0.upsamples.0.residual.2.weight"  # Wan 2.2 VAE (vae2_2.py)

RESIDUAL = {"residual.0.gamma": "norm1.gamma", "residual.2.weight": "conv1.weight",
            "residual.2.bias": "conv1.bias", "residual.3.gamma": "norm2.gamma",
            "residual.6.weight": "conv2.weight", "residual.6.bias": "conv2.bias",
            "shortcut.weight": "conv_shortcut.weight", "shortcut.bias": "conv_shortcut.bias"}
ATTENTION = ("norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias")
RESAMPLE = ("resample.1.weight", "resample.1.bias", "time_conv.weight", "time_conv.bias")
MIDDLE = {"0": "mid_block.resnets.0", "1": "mid_block.attentions.0", "2": "mid_block.resnets.1"}
VAE_TOP = {"conv1.weight": "quant_conv.weight", "conv1.bias": "quant_conv.bias",
           "conv2.weight": "post_quant_conv.weight", "conv2.bias": "post_quant_conv.bias"}
VAE_ENDS = {"conv1.weight": "conv_in.weight", "conv1.bias": "conv_in.bias",
            "head.0.gamma": "norm_out.gamma", "head.2.weight": "conv_out.weight",
            "head.2.bias": "conv_out.bias"}

_LIST_ITEM = re.compile(r"^(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.(.+)$")
_MIDDLE = re.compile(r"^(encoder|decoder)\.middle\.([012])\.(.+)$")


def is_wan_vae(keys) -> bool:
    return VAE_DETECT_KEY in keys


def _vae_items(keys: Iterable[str], part: str) -> dict[int, str]:
    """`{N: kind}` of a 2.1 `encoder.downsamples.N` / `decoder.upsamples.N` list: 'residual' |
    'attention' | 'resample'."""
    kinds: dict[int, str] = {}
    for key in keys:
        m = _LIST_ITEM.match(key)
        if not m or m.group(1) != part:
            continue
        rest = m.group(3)
        kind = ("residual" if rest in RESIDUAL else "attention" if rest in ATTENTION
                else "resample" if rest in RESAMPLE else None)
        if kind is not None:
            kinds.setdefault(int(m.group(2)), kind)
    return kinds


def _decoder_slots(keys: Iterable[str]) -> dict[int, str]:
    """`{N: diffusers prefix}` for the decoder's flat `upsamples.N` list, grouped into stages."""
    slots, stage, resnet = {}, 0, 0
    for n, kind in sorted(_vae_items(keys, "decoder.upsamples").items()):
        if kind == "resample":
            slots[n] = f"decoder.up_blocks.{stage}.upsamplers.0"
            stage, resnet = stage + 1, 0
        elif kind == "residual":
            slots[n] = f"decoder.up_blocks.{stage}.resnets.{resnet}"
            resnet += 1
    return slots  # attention inside decoder stages stays unmapped → reported as unexpected


_NESTED_ITEM = re.compile(r"^(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.(?:downsamples|upsamples)"
                          r"\.(\d+)\.(.+)$")


def is_wan22_vae(keys) -> bool:
    return VAE22_KEY in keys


def _common_vae_name(key: str) -> str | None:
    """Names shared by the 2.1 and 2.2 layouts: quant convs, conv_in/head, middle blocks."""
    if key in VAE_TOP:
        return VAE_TOP[key]
    part = key.split(".", 1)
    if part[0] in ("encoder", "decoder") and len(part) == 2 and part[1] in VAE_ENDS:
        return f"{part[0]}.{VAE_ENDS[part[1]]}"
    if m := _MIDDLE.match(key):
        coder, index, rest = m.groups()
        if index == "1" and rest in ATTENTION:
            return f"{coder}.{MIDDLE[index]}.{rest}"
        if index != "1" and rest in RESIDUAL:
            return f"{coder}.{MIDDLE[index]}.{RESIDUAL[rest]}"
    return None


def _wan22_vae_name(key: str) -> str | None:
    """Wan 2.2 (vae2_2.py): `encoder.downsamples.I.downsamples.J` → `encoder.down_blocks.I.resnets.J`
    or `.downsampler` (the last J); `decoder.upsamples.I.upsamples.J` → `…up_blocks.I.resnets.J` /
    `.upsampler`. The AvgDown3D / DupUp3D shortcuts have no weights."""
    if (name := _common_vae_name(key)) is not None:
        return name
    if m := _NESTED_ITEM.match(key):
        part, stage, index, rest = m.groups()
        coder, blocks, resampler = (("encoder", "down_blocks", "downsampler")
                                    if part == "encoder.downsamples" else
                                    ("decoder", "up_blocks", "upsampler"))
        if rest in RESIDUAL:
            return f"{coder}.{blocks}.{stage}.resnets.{index}.{RESIDUAL[rest]}"
        if rest in RESAMPLE:
            return f"{coder}.{blocks}.{stage}.{resampler}.{rest}"
    return None


def wan_vae_takes(keys: Iterable[str]) -> tuple[dict[str, Take], list[str]]:
    """Rename a Wan 2.1 / 2.2 VAE key set: (`{diffusers_key: Take}`, source keys that map to nothing)."""
    keys = list(keys)
    wan22 = is_wan22_vae(keys)
    slots = {} if wan22 else _decoder_slots(keys)
    takes, unknown = {}, []
    for key in keys:
        name = _wan22_vae_name(key) if wan22 else _common_vae_name(key)
        if name is None and not wan22 and (m := _LIST_ITEM.match(key)):
            part_name, index, rest = m.groups()
            if part_name == "encoder.downsamples":
                prefix = f"encoder.down_blocks.{index}"
                if rest in RESIDUAL:
                    name = f"{prefix}.{RESIDUAL[rest]}"
                elif rest in ATTENTION or rest in RESAMPLE:
                    name = f"{prefix}.{rest}"
            elif int(index) in slots:
                prefix = slots[int(index)]
                if rest in RESIDUAL and ".resnets." in prefix:
                    name = f"{prefix}.{RESIDUAL[rest]}"
                elif rest in RESAMPLE and ".upsamplers." in prefix:
                    name = f"{prefix}.{rest}"
        if name is None or name in takes:
            unknown.append(key)
            continue
        takes[name] = Take(key)
    return takes, unknown


def _wan21_stages(shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[int], int, list[bool]]:
    """(stage widths, resnets per stage, temporal downsample flags) of a 2.1 encoder's flat list."""
    items = _vae_items(shapes, "encoder.downsamples")
    if attn := sorted(n for n, kind in items.items() if kind == "attention"):
        raise ValueError(f"unsupported Wan VAE: attention inside encoder stages (encoder.downsamples."
                         f"{attn[0]}); only Wan VAEs without attn_scales are supported")
    widths, counts, temporal = [], [0], []
    for n, kind in sorted(items.items()):
        if kind == "resample":
            temporal.append(f"encoder.downsamples.{n}.time_conv.weight" in shapes)
            counts.append(0)
        else:
            width = _shape(shapes, f"encoder.downsamples.{n}.residual.2.weight", "resnet conv",
                           "Wan VAE")[0]
            if counts[-1] == 0:
                widths.append(width)
            counts[-1] += 1
    if not widths or len(set(counts)) != 1 or len(widths) != len(counts):
        raise ValueError(f"cannot detect the Wan VAE config: encoder stages have {counts} resnets "
                         f"(key 'encoder.downsamples.0.residual.2.weight' and its neighbours)")
    return widths, counts[0], temporal


def _wan22_stages(shapes: Mapping[str, tuple[int, ...]]) -> tuple[list[int], int, list[bool]]:
    """The same for a 2.2 encoder: `encoder.downsamples.I.downsamples.J`, the last J a Resample."""
    stages = _count_blocks(shapes, "encoder.downsamples.")
    if stages == 0:
        raise ValueError("cannot detect the Wan 2.2 VAE config: key "
                         "'encoder.downsamples.0.downsamples.0.residual.2.weight' is missing")
    nres = len({int(k.split(".")[4]) for k in shapes
                if k.startswith("encoder.downsamples.0.downsamples.") and ".residual." in k})
    widths = [_shape(shapes, f"encoder.downsamples.{i}.downsamples.0.residual.2.weight",
                     f"encoder stage {i}", "Wan 2.2 VAE")[0] for i in range(stages)]
    temporal = [f"encoder.downsamples.{i}.downsamples.{nres}.time_conv.weight" in shapes
                for i in range(stages - 1)]
    return widths, nres, temporal


def wan_vae_config(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """A diffusers `AutoencoderKLWan` config dict inferred from Wan 2.1 / 2.2 VAE key names and shapes.

    Like ComfyUI's sd.py, a 2.2 VAE (key `decoder.upsamples.0.upsamples.0.residual.2.weight`) is the
    residual layout with patch size 2 (spatial /16) and 2.2 latent statistics when z = 48.
    """
    model = "Wan VAE"
    wan22 = is_wan22_vae(shapes)
    conv_in = _shape(shapes, "encoder.conv1.weight", "encoder input conv", model)
    base, in_channels = conv_in[0], conv_in[1]
    z = _shape(shapes, "conv2.weight", "post-quant conv, [z, z, 1, 1, 1]", model)[0]
    moments = _shape(shapes, "encoder.head.2.weight", "encoder output conv", model)[0]
    if moments != 2 * z:
        raise ValueError(f"encoder.head.2.weight makes {moments} channels but conv2.weight says z={z} "
                         f"(expected 2·z)")
    widths, nres, temporal = (_wan22_stages if wan22 else _wan21_stages)(shapes)
    if any(w % base for w in widths):
        raise ValueError(f"cannot detect the Wan VAE config: stage widths {widths} are not multiples of "
                         f"the base width {base} (encoder.conv1.weight)")
    dim_mult = [w // base for w in widths]
    decoder_in = _shape(shapes, "decoder.conv1.weight", "decoder input conv", model)[0]
    if decoder_in % dim_mult[-1]:
        raise ValueError(f"decoder.conv1.weight width {decoder_in} is not a multiple of {dim_mult[-1]}")
    decoder_base = decoder_in // dim_mult[-1]
    patch = 2 if wan22 else None
    config: dict[str, Any] = {
        "_class_name": "AutoencoderKLWan",
        "base_dim": base,
        "decoder_base_dim": None if decoder_base == base else decoder_base,
        "z_dim": z,
        "dim_mult": dim_mult,
        "num_res_blocks": nres,
        "attn_scales": [],
        "temperal_downsample": temporal,
        "is_residual": wan22,
        "in_channels": in_channels,
        "out_channels": _shape(shapes, "decoder.head.2.weight", "decoder output conv", model)[0],
        "patch_size": patch,
        "scale_factor_temporal": 2 ** sum(temporal),
        "scale_factor_spatial": 2 ** len(temporal) * (patch or 1),
    }
    if wan22 and z == len(WAN22_LATENTS_MEAN):
        config.update(latents_mean=list(WAN22_LATENTS_MEAN), latents_std=list(WAN22_LATENTS_STD))
    return config


def wan_vae_keymap(shapes: Mapping[str, tuple[int, ...]], config) -> tuple[dict[str, Take], list[str], set[str]]:
    """The Wan VAE layout's key map (families.Layout.keymap): (takes, unknown, missing keys)."""
    takes, unknown = wan_vae_takes(shapes)
    return takes, unknown, wan_vae_key_names(config) - set(shapes)


def wan_vae_key_names(config) -> set[str]:
    """Every key a Wan 2.1 VAE file of this config holds (to name missing keys in its own terms)."""
    c = _as_dict(config)
    base, mult, nres = c["base_dim"], list(c["dim_mult"]), c["num_res_blocks"]
    temporal = list(c["temperal_downsample"])
    keys = set(VAE_TOP)
    for coder in ("encoder", "decoder"):
        keys |= {f"{coder}.{k}" for k in VAE_ENDS}
        for index in ("0", "2"):
            keys |= {f"{coder}.middle.{index}.{k}" for k in RESIDUAL if not k.startswith("shortcut")}
        keys |= {f"{coder}.middle.1.{k}" for k in ATTENTION}

    def resnet(prefix, in_dim, out_dim):
        keys.update(f"{prefix}.{k}" for k in RESIDUAL
                    if in_dim != out_dim or not k.startswith("shortcut"))

    def resample(prefix, time):
        keys.update(f"{prefix}.{k}" for k in RESAMPLE if time or not k.startswith("time_conv"))

    if c.get("is_residual"):
        _wan22_block_names(c, resnet, resample)
        return keys
    dims = [base * u for u in [1] + mult]
    n = 0
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(nres):
            resnet(f"encoder.downsamples.{n}", in_dim, out_dim)
            in_dim, n = out_dim, n + 1
        if i != len(mult) - 1:
            resample(f"encoder.downsamples.{n}", temporal[i])
            n += 1
    dbase = c.get("decoder_base_dim") or base
    dims = [dbase * u for u in [mult[-1]] + mult[::-1]]
    up = temporal[::-1]
    n = 0
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        if i > 0:
            in_dim //= 2
        for _ in range(nres + 1):
            resnet(f"decoder.upsamples.{n}", in_dim, out_dim)
            in_dim, n = out_dim, n + 1
        if i != len(mult) - 1:
            resample(f"decoder.upsamples.{n}", up[i])
            n += 1
    return keys


def _wan22_block_names(c: dict, resnet, resample) -> None:
    base, mult, nres = c["base_dim"], list(c["dim_mult"]), c["num_res_blocks"]
    temporal = list(c["temperal_downsample"])
    dims = [base * u for u in [1] + mult]
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        for j in range(nres):
            resnet(f"encoder.downsamples.{i}.downsamples.{j}", in_dim, out_dim)
            in_dim = out_dim
        if i != len(mult) - 1:
            resample(f"encoder.downsamples.{i}.downsamples.{nres}", temporal[i])
    dbase = c.get("decoder_base_dim") or base
    dims = [dbase * u for u in [mult[-1]] + mult[::-1]]
    up = temporal[::-1]
    for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
        for j in range(nres + 1):
            resnet(f"decoder.upsamples.{i}.upsamples.{j}", in_dim, out_dim)
            in_dim = out_dim
        if i != len(mult) - 1:
            resample(f"decoder.upsamples.{i}.upsamples.{nres + 1}", up[i])
