"""Comfy-Org / original Wan single files (bf16/fp32 and fp8-scaled) → `load_model` → same outputs as
ComfyUI's own `WanModel`; the key map cross-checked against diffusers' `convert_wan_transformer_to_diffusers`.

Tiny ComfyUI WanModel with dim 128 = 1 head × 128, so ComfyUI's `heads = dim // 128` holds and no
config override is needed. Timesteps are sigma·1000 for ComfyUI's Wan, like diffusers.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from comfy_fixtures import COMFY_PREFIX, comfyui_root, quantize_fp8
from parity import max_diff, run_jitted
from jaxdiff import load_model
from jaxdiff.cli import main as jaxdiff_main
from jaxdiff.convert import convert, wan_keys
from jaxdiff.convert.checkpoint import read_meta
from wan_comfy_fixtures import (COMFY_IMAGE_DIM, VARIANTS, comfy_wan_forward, comfy_wan_inputs,
                                diffusers_wan_inputs, tiny_comfy_wan)

TOLERANCE = 1e-5
# Measured: ours vs ComfyUI ≈ 3.5e-6…5.4e-6 (outputs ~1.7), diffusers vs ComfyUI the same, ours vs diffusers
# ≲1e-6. The gap is ComfyUI's fp32 `torch.pow(10000, -i/half)` timestep frequencies at t ~ 1000 (with
# timesteps ×0.001 it drops to 8e-7); our frequencies are float64-exact like diffusers'.


@pytest.fixture(scope="module")
def comfy_root(tmp_path_factory):
    return comfyui_root(tmp_path_factory.mktemp("comfyui"))


def run_ours(model, inputs: dict) -> np.ndarray:
    return run_jitted(model, diffusers_wan_inputs(inputs))


@pytest.fixture(scope="module", params=list(VARIANTS))
def wan_case(request, comfy_root):
    """(variant, comfy model, inputs, ComfyUI output, ComfyUI state dict) for one tiny Wan."""
    model = tiny_comfy_wan(comfy_root, request.param)
    inputs = comfy_wan_inputs(request.param)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return request.param, model, inputs, comfy_wan_forward(model, inputs), state


@pytest.mark.parametrize("prefix", ["", COMFY_PREFIX], ids=["bare", "comfy_prefix"])
def test_comfy_wan_single_file_matches_comfyui(wan_case, prefix, tmp_path):
    variant, _, inputs, ref, state = wan_case
    path = tmp_path / "wan.safetensors"
    save_file({prefix + k: v for k, v in state.items()}, str(path))
    ours = load_model(path)
    c = ours.config
    assert (c.num_attention_heads, c.attention_head_dim, c.num_layers, c.freq_dim) == (1, 128, 2, 256)
    want_image = (COMFY_IMAGE_DIM, 128) if variant == "i2v" else (None, None)
    assert (c.image_dim, c.added_kv_proj_dim) == want_image
    assert c.in_channels == VARIANTS[variant].get("in_dim", 4)
    assert max_diff(run_ours(ours, inputs), ref) <= TOLERANCE


def test_comfy_wan_single_file_converts_and_restores(wan_case, tmp_path):
    _, _, inputs, ref, state = wan_case
    path = tmp_path / "wan.safetensors"
    save_file({COMFY_PREFIX + k: v for k, v in state.items()}, str(path))
    out = convert(path, tmp_path / "converted")
    meta = read_meta(out)
    assert meta["family"] == "wan" and meta["config"]["num_attention_heads"] == 1
    restored = run_ours(load_model(out), inputs)
    assert max_diff(restored, run_ours(load_model(path), inputs)) == 0.0
    assert max_diff(restored, ref) <= TOLERANCE


def test_cli_converts_a_comfy_wan_file(wan_case, tmp_path, capsys):
    _, _, _, _, state = wan_case
    path = tmp_path / "wan.safetensors"
    save_file({COMFY_PREFIX + k: v.to(torch.bfloat16) for k, v in state.items()}, str(path))
    assert jaxdiff_main(["convert", str(path), str(tmp_path / "out")]) == 0
    assert "wan, bfloat16" in capsys.readouterr().out
    assert read_meta(tmp_path / "out")["dtype"] == "bfloat16"


def test_comfy_wan_bf16_file_loads_as_bf16(wan_case, tmp_path):
    _, _, _, _, state = wan_case
    path = tmp_path / "wan_bf16.safetensors"
    save_file({COMFY_PREFIX + k: v.to(torch.bfloat16) for k, v in state.items()}, str(path))
    ours = load_model(path)
    kernel = ours.blocks[0].attn2.to_q.kernel[...]
    assert kernel.dtype == jnp.bfloat16
    want = state["blocks.0.cross_attn.q.weight"].to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(np.asarray(kernel).T, want.view(jnp.bfloat16))


@pytest.mark.parametrize("scale_name", ["scale_weight", "weight_scale"])
def test_fp8_scaled_comfy_wan_matches_comfyui_with_dequantised_weights(wan_case, comfy_root, scale_name,
                                                                       tmp_path):
    variant, _, inputs, _, state = wan_case
    quantized, reference = quantize_fp8({COMFY_PREFIX + k: v for k, v in state.items()}, scaled=True,
                                        scale_name=scale_name)
    path = tmp_path / "wan_fp8.safetensors"
    save_file(quantized, str(path))
    model_ref = tiny_comfy_wan(comfy_root, variant)
    with torch.no_grad():
        model_ref.load_state_dict({k[len(COMFY_PREFIX):]: v for k, v in reference.items()}, strict=True)
    ref = comfy_wan_forward(model_ref, inputs)
    assert load_model(path).blocks[0].attn1.to_q.kernel[...].dtype == jnp.bfloat16  # fp8 default
    ours = load_model(path, dtype="float32")
    np.testing.assert_array_equal(np.asarray(ours.blocks[1].ffn.net[2].kernel[...]).T,
                                  reference[COMFY_PREFIX + "blocks.1.ffn.2.weight"].numpy())
    assert max_diff(run_ours(ours, inputs), ref) <= TOLERANCE


def test_key_map_agrees_with_diffusers_converter(wan_case):
    """diffusers' own single-file converter gives the same names and tensors as our takes."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    _, _, _, _, state = wan_case
    expected = convert_wan_transformer_to_diffusers({COMFY_PREFIX + k: v for k, v in state.items()})
    takes, unknown = wan_keys.comfy_wan_takes(state)
    assert not unknown
    assert sorted(takes) == sorted(expected)
    for key, take in takes.items():
        np.testing.assert_array_equal(take.apply(state[take.source].numpy()), expected[key].numpy(),
                                      err_msg=key)


def test_diffusers_module_with_diffusers_converted_weights_matches_comfyui(wan_case):
    """Third reference: diffusers' WanTransformer3DModel loading diffusers' conversion of the file."""
    from diffusers import WanTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    _, _, inputs, ref, state = wan_case  # I2V inputs carry 512 text tokens for diffusers' split
    config = wan_keys.comfy_wan_config({k: tuple(v.shape) for k, v in state.items()})
    model = WanTransformer3DModel(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    model.load_state_dict(convert_wan_transformer_to_diffusers(dict(state)), strict=True)
    kwargs = {k: None if v is None else torch.from_numpy(v) for k, v in diffusers_wan_inputs(inputs).items()}
    with torch.no_grad():
        out = model(**kwargs, return_dict=False)[0].numpy()
    assert max_diff(out, ref) <= TOLERANCE


def test_expected_key_names_are_comfyuis(wan_case):
    _, _, _, _, state = wan_case
    config = wan_keys.comfy_wan_config({k: tuple(v.shape) for k, v in state.items()})
    assert wan_keys.comfy_wan_key_names(config) == set(state)


def test_flf2v_position_embedding_maps_to_pos_embed():
    shapes = {"patch_embedding.weight": (256, 36, 1, 2, 2), "head.head.weight": (64, 256),
              "head.modulation": (1, 2, 256), "text_embedding.0.weight": (256, 4096),
              "time_embedding.0.weight": (256, 256), "blocks.0.ffn.0.weight": (512, 256),
              "img_emb.proj.0.weight": (1280,), "img_emb.emb_pos": (1, 514, 1280)}
    config = wan_keys.comfy_wan_config(shapes)
    assert (config["pos_embed_seq_len"], config["image_dim"], config["added_kv_proj_dim"]) == (514, 1280, 256)
    assert wan_keys.comfy_wan_rename("img_emb.emb_pos") == "condition_embedder.image_embedder.pos_embed"


# Real Comfy-Org files: (dim, in, out, ffn, layers, I2V) → diffusers config values.
RELEASED = {
    "wan2.1_t2v_1.3B": (1536, 16, 16, 8960, 30, False),
    "wan2.1_i2v_14B": (5120, 36, 16, 13824, 40, True),
    "wan2.2_ti2v_5B": (3072, 48, 48, 14336, 30, False),
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_shapes_give_the_diffusers_config(name):
    dim, cin, cout, ffn, layers, i2v = RELEASED[name]
    shapes = {"patch_embedding.weight": (dim, cin, 1, 2, 2), "head.head.weight": (4 * cout, dim),
              "head.modulation": (1, 2, dim), "text_embedding.0.weight": (dim, 4096),
              "time_embedding.0.weight": (dim, 256)}
    for i in range(layers):
        shapes[f"blocks.{i}.ffn.0.weight"] = (ffn, dim)
        shapes[f"blocks.{i}.norm3.weight"] = (dim,)
    if i2v:
        shapes["img_emb.proj.0.weight"] = (1280,)
    config = wan_keys.comfy_wan_config(shapes)
    assert config["num_attention_heads"] == dim // 128 and config["num_layers"] == layers
    assert (config["in_channels"], config["out_channels"], config["ffn_dim"]) == (cin, cout, ffn)
    assert (config["image_dim"], config["added_kv_proj_dim"]) == ((1280, dim) if i2v else (None, None))


# ----------------------------------------------------------------------------- error paths


def test_missing_key_is_named_in_comfy_terms(wan_case, tmp_path):
    _, _, _, _, state = wan_case
    path = tmp_path / "wan.safetensors"
    save_file({COMFY_PREFIX + k: v for k, v in state.items() if k != "blocks.1.cross_attn.o.weight"},
              str(path))
    with pytest.raises(ValueError, match=r"1 missing key\(s\): blocks\.1\.cross_attn\.o\.weight"):
        load_model(path)


def test_detection_failure_names_the_missing_key(wan_case, tmp_path):
    _, _, _, _, state = wan_case
    path = tmp_path / "wan.safetensors"
    save_file({k: v for k, v in state.items() if k != "patch_embedding.weight"}, str(path))
    with pytest.raises(ValueError, match=r"key 'patch_embedding\.weight' .* is missing"):
        load_model(path)


def test_width_not_a_multiple_of_128_asks_for_config(tmp_path):
    path = tmp_path / "wan.safetensors"
    save_file({"patch_embedding.weight": torch.zeros((24, 4, 1, 2, 2)),
               "head.modulation": torch.zeros((1, 2, 24))}, str(path))
    with pytest.raises(ValueError, match=r"width 24 .* head dim 128.*config="):
        load_model(path)


def test_wrong_in_channels_in_config_override_is_a_named_shape_mismatch(wan_case, tmp_path):
    variant, _, _, _, state = wan_case
    path = tmp_path / "wan.safetensors"
    save_file(state, str(path))
    config = wan_keys.comfy_wan_config({k: tuple(v.shape) for k, v in state.items()})
    config["in_channels"] += 1
    with pytest.raises(ValueError, match=r"shape mismatch.*patch_embedding\.weight"):
        load_model(path, config=config)


def test_config_override_loads_a_head_dim_64_file(comfy_root, tmp_path):
    """ComfyUI assumes head dim 128; a file with 2 heads × 64 loads with config= (same weights)."""
    model_2h = tiny_comfy_wan(comfy_root, "t2v", num_heads=2)
    inputs = comfy_wan_inputs("t2v")
    ref = comfy_wan_forward(model_2h, inputs)
    path = tmp_path / "wan.safetensors"
    save_file({k: v.contiguous() for k, v in model_2h.state_dict().items()}, str(path))
    config = wan_keys.comfy_wan_config({k: tuple(v.shape) for k, v in model_2h.state_dict().items()})
    config.update(num_attention_heads=2, attention_head_dim=64)
    ours = load_model(path, config=config)
    assert max_diff(run_ours(ours, inputs), ref) <= TOLERANCE
