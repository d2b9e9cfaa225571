"""Flux key map: BFL / ComfyUI single-file names → diffusers names, and config from key shapes.

(Step 2 of read → rename → transform → place.) The BFL layout (`double_blocks.N.img_attn.qkv`,
`single_blocks.N.linear1`, …) fuses projections that diffusers keeps apart; each BFL key becomes one
or more `Take`s (row ranges / swapped halves, see transform.py). Single files carry no config: like
ComfyUI's model_detection we read widths and depths from shapes and assume head dim 128 and RoPE axes
(16, 56, 56). Cross-checked against diffusers' `convert_flux_transformer_checkpoint_to_diffusers`
(tests/test_convert_flux_single_file.py). Imports numpy only (via transform).
"""

from __future__ import annotations

import re
from typing import Mapping

from .transform import Take, split_rows

COMFY_PREFIX = "model.diffusion_model."
BFL_HEAD_DIM = 128
BFL_AXES_DIMS_ROPE = (16, 56, 56)
MLP_RATIO = 4
DETECT_KEY = "double_blocks.0.img_attn.qkv.weight"  # present in every BFL Flux transformer file

# BFL module (after the block prefix) → diffusers module, for keys that map one to one.
DOUBLE_BLOCK = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
DOUBLE_BLOCK_NORMS = {  # BFL `.scale` → diffusers `.weight`
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
DOUBLE_BLOCK_QKV = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
SINGLE_BLOCK = {"modulation.lin": "norm.linear", "linear2": "proj_out"}
SINGLE_BLOCK_NORMS = {
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}
SINGLE_BLOCK_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")  # linear1 = [q; k; v; mlp]
TOP_LEVEL = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
FINAL_MODULATION = ("final_layer.adaLN_modulation.1", "norm_out.linear")  # (shift, scale) → (scale, shift)

_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)\.(weight|bias|scale)$")
_TOP = re.compile(r"^(.+)\.(weight|bias)$")


def strip_prefix(keys: list[str], prefix: str = COMFY_PREFIX) -> dict[str, str]:
    """`{name_without_prefix: stored_key}`; the prefix is stripped only when some key carries it."""
    if not any(k.startswith(prefix) for k in keys):
        return {k: k for k in keys}
    return {(k[len(prefix):] if k.startswith(prefix) else k): k for k in keys}


def is_bfl_flux(keys) -> bool:
    return DETECT_KEY in keys


def bfl_to_diffusers(key: str, shape: tuple[int, ...], hidden: int) -> list[tuple[str, Take]] | None:
    """The diffusers tensors made from BFL tensor `key` of `shape`; None when the key is not BFL Flux."""
    m = _BLOCK.match(key)
    if m:
        kind, index, module, leaf = m.groups()
        if kind == "double_blocks":
            prefix = f"transformer_blocks.{index}."
            if f"{module}.{leaf}" in DOUBLE_BLOCK_NORMS:
                return [(prefix + DOUBLE_BLOCK_NORMS[f"{module}.{leaf}"], Take(key))]
            if module in DOUBLE_BLOCK and leaf != "scale":
                return [(f"{prefix}{DOUBLE_BLOCK[module]}.{leaf}", Take(key))]
            if module in DOUBLE_BLOCK_QKV and leaf != "scale":
                rows = split_rows(shape[0], [shape[0] // 3] * 3)
                return [(f"{prefix}{name}.{leaf}", Take(key, r))
                        for name, r in zip(DOUBLE_BLOCK_QKV[module], rows)]
            return None
        prefix = f"single_transformer_blocks.{index}."
        if f"{module}.{leaf}" in SINGLE_BLOCK_NORMS:
            return [(prefix + SINGLE_BLOCK_NORMS[f"{module}.{leaf}"], Take(key))]
        if module in SINGLE_BLOCK and leaf != "scale":
            return [(f"{prefix}{SINGLE_BLOCK[module]}.{leaf}", Take(key))]
        if module == "linear1" and leaf != "scale":
            rows = split_rows(shape[0], [hidden] * 3 + [shape[0] - 3 * hidden])
            return [(f"{prefix}{name}.{leaf}", Take(key, r)) for name, r in zip(SINGLE_BLOCK_FUSED, rows)]
        return None
    m = _TOP.match(key)
    if not m:
        return None
    module, leaf = m.groups()
    if module in TOP_LEVEL:
        return [(f"{TOP_LEVEL[module]}.{leaf}", Take(key))]
    if module == FINAL_MODULATION[0]:
        return [(f"{FINAL_MODULATION[1]}.{leaf}", Take(key, swap_halves=True))]
    return None


def bfl_takes(shapes: Mapping[str, tuple[int, ...]], hidden: int) -> tuple[dict[str, Take], list[str]]:
    """Rename a whole BFL key set: (`{diffusers_key: Take}`, BFL keys that map to nothing)."""
    takes, unknown = {}, []
    for key, shape in shapes.items():
        mapped = bfl_to_diffusers(key, shape, hidden)
        if mapped is None:
            unknown.append(key)
            continue
        takes.update(mapped)
    return takes, unknown


def bfl_key_names(num_layers: int, num_single_layers: int, guidance_embeds: bool) -> set[str]:
    """Every key a BFL Flux file of this shape holds (to name missing keys in BFL terms)."""
    top = [m for m in TOP_LEVEL if guidance_embeds or not m.startswith("guidance_in.")]
    keys = {f"{m}.{leaf}" for m in top + [FINAL_MODULATION[0]] for leaf in ("weight", "bias")}
    for i in range(num_layers):
        for m in list(DOUBLE_BLOCK) + list(DOUBLE_BLOCK_QKV):
            keys |= {f"double_blocks.{i}.{m}.weight", f"double_blocks.{i}.{m}.bias"}
        keys |= {f"double_blocks.{i}.{n}" for n in DOUBLE_BLOCK_NORMS}
    for i in range(num_single_layers):
        for m in list(SINGLE_BLOCK) + ["linear1"]:
            keys |= {f"single_blocks.{i}.{m}.weight", f"single_blocks.{i}.{m}.bias"}
        keys |= {f"single_blocks.{i}.{n}" for n in SINGLE_BLOCK_NORMS}
    return keys


def bfl_keymap(shapes: Mapping[str, tuple[int, ...]], config) -> tuple[dict[str, Take], list[str], set[str]]:
    """The BFL layout's key map (families.Layout.keymap): (takes, unknown keys, missing BFL keys)."""
    takes, unknown = bfl_takes(shapes, config.inner_dim)
    missing = bfl_key_names(config.num_layers, config.num_single_layers, config.guidance_embeds) - set(shapes)
    return takes, unknown, missing


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"cannot detect the Flux config: key {key!r} ({what}) is missing")
    return tuple(shapes[key])


def _count_blocks(keys, prefix: str) -> int:
    indices = {int(k.split(".")[1]) for k in keys if k.startswith(prefix) and k.split(".")[1].isdigit()}
    return max(indices) + 1 if indices else 0


def _head_dim(shapes, norm_key: str, hidden: int, width_key: str) -> int:
    head_dim = _shape(shapes, norm_key, "query norm")[0]
    if head_dim != BFL_HEAD_DIM or hidden % head_dim:
        raise ValueError(f"cannot detect the Flux config: head dim {head_dim} ({norm_key}) with width "
                         f"{hidden} ({width_key}); only head dim {BFL_HEAD_DIM} has known RoPE axes "
                         f"{BFL_AXES_DIMS_ROPE} — pass config= explicitly")
    return head_dim


def _config(hidden, head_dim, in_channels, out_channels, joint, pooled, depth, depth_single,
            guidance) -> dict:
    return {
        "_class_name": "FluxTransformer2DModel",
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": None if out_channels == in_channels else out_channels,
        "num_layers": depth,
        "num_single_layers": depth_single,
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": joint,
        "pooled_projection_dim": pooled,
        "guidance_embeds": guidance,
        "axes_dims_rope": list(BFL_AXES_DIMS_ROPE),
    }


def bfl_flux_config(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """A diffusers `FluxTransformer2DModel` config dict inferred from BFL key names and shapes.

    Like ComfyUI: width from `img_in`, depths from block counts, guidance iff `guidance_in` exists,
    head dim 128 (checked against the query-norm width) and RoPE axes (16, 56, 56).
    """
    hidden, in_channels = _shape(shapes, "img_in.weight", "image input projection")
    head_dim = _head_dim(shapes, "double_blocks.0.img_attn.norm.query_norm.scale", hidden, "img_in.weight")
    mlp = _shape(shapes, "double_blocks.0.img_mlp.0.weight", "feed-forward")[0]
    if mlp != MLP_RATIO * hidden:
        raise ValueError(f"unsupported Flux variant: feed-forward width {mlp} "
                         f"(double_blocks.0.img_mlp.0.weight) is not {MLP_RATIO} × {hidden}")
    return _config(
        hidden, head_dim, in_channels,
        out_channels=_shape(shapes, "final_layer.linear.weight", "output projection")[0],
        joint=_shape(shapes, "txt_in.weight", "text input projection")[1],
        pooled=_shape(shapes, "vector_in.in_layer.weight", "pooled text projection")[1],
        depth=_count_blocks(shapes, "double_blocks."),
        depth_single=_count_blocks(shapes, "single_blocks."),
        guidance=any(k.startswith("guidance_in.") for k in shapes))


DIFFUSERS_DETECT_KEY = "x_embedder.weight"


def is_diffusers_flux(keys) -> bool:
    return DIFFUSERS_DETECT_KEY in keys and "context_embedder.weight" in keys


def diffusers_flux_config(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """The config of a diffusers-named Flux transformer saved as one file (no config.json beside it)."""
    hidden, in_channels = _shape(shapes, "x_embedder.weight", "image input projection")
    norm = ("transformer_blocks.0.attn.norm_q.weight" if "transformer_blocks.0.attn.norm_q.weight" in shapes
            else "single_transformer_blocks.0.attn.norm_q.weight")
    return _config(
        hidden, _head_dim(shapes, norm, hidden, "x_embedder.weight"), in_channels,
        out_channels=_shape(shapes, "proj_out.weight", "output projection")[0],
        joint=_shape(shapes, "context_embedder.weight", "text input projection")[1],
        pooled=_shape(shapes, "time_text_embed.text_embedder.linear_1.weight", "pooled projection")[1],
        depth=_count_blocks(shapes, "transformer_blocks."),
        depth_single=_count_blocks(shapes, "single_transformer_blocks."),
        guidance=any(k.startswith("time_text_embed.guidance_embedder.") for k in shapes))
