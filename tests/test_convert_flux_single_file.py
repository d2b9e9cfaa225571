"""BFL / ComfyUI single-file Flux (bf16/fp32 and fp8) → `load_model` → same outputs as ComfyUI's Flux.

The reference is ComfyUI's own `comfy.ldm.flux.model.Flux` at a tiny size (hidden 128 = 1 head × 128,
so ComfyUI's head-dim and RoPE-axes assumptions hold); the key map is cross-checked against diffusers'
`convert_flux_transformer_checkpoint_to_diffusers` at the real width and against diffusers' module.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from comfy_fixtures import (COMFY_PREFIX, comfy_forward, comfy_inputs, comfyui_root, diffusers_inputs,
                            quantize_fp8, tiny_comfy_flux, unpack, LATENT_SIDE)
from parity import max_diff
from jaxdiff import load_model
from jaxdiff.convert import convert
from jaxdiff.convert import flux_keys
from jaxdiff.convert.checkpoint import read_meta

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def comfy_root(tmp_path_factory):
    return comfyui_root(tmp_path_factory.mktemp("comfyui"))


def run_ours(model, inputs: dict) -> np.ndarray:
    out = model(**{k: None if v is None else jnp.asarray(v) for k, v in diffusers_inputs(inputs).items()})
    return unpack(np.asarray(out), LATENT_SIDE, LATENT_SIDE)


@pytest.fixture(scope="module", params=["dev", "schnell"])
def bfl_case(request, comfy_root):
    """(comfy model, inputs, ComfyUI output, BFL state dict) for a tiny dev/schnell Flux."""
    guidance = request.param == "dev"
    model = tiny_comfy_flux(comfy_root, guidance_embed=guidance)
    inputs = comfy_inputs(guidance)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return model, inputs, comfy_forward(model, inputs), state


@pytest.mark.parametrize("prefix", ["", COMFY_PREFIX], ids=["bfl", "comfy_prefix"])
def test_bfl_single_file_matches_comfyui(bfl_case, prefix, tmp_path):
    _, inputs, ref, state = bfl_case
    path = tmp_path / "flux.safetensors"
    save_file({prefix + k: v for k, v in state.items()}, str(path))
    ours = load_model(path)
    assert ours.config.guidance_embeds == (inputs["guidance"] is not None)
    assert (ours.config.num_attention_heads, ours.config.attention_head_dim) == (1, 128)
    assert max_diff(run_ours(ours, inputs), ref) <= TOLERANCE


def test_bfl_single_file_converts_and_restores(bfl_case, tmp_path):
    _, inputs, ref, state = bfl_case
    path = tmp_path / "flux.safetensors"
    save_file({COMFY_PREFIX + k: v for k, v in state.items()}, str(path))
    out = convert(path, tmp_path / "converted")
    assert read_meta(out)["config"]["num_attention_heads"] == 1
    assert max_diff(run_ours(load_model(out), inputs), ref) <= TOLERANCE


def test_bfl_single_file_in_bf16_loads_as_bf16(bfl_case, tmp_path):
    _, inputs, ref, state = bfl_case
    path = tmp_path / "flux_bf16.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(path))
    ours = load_model(path)
    assert ours.x_embedder.kernel[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(ours.x_embedder.kernel[...]).T,
        state["img_in.weight"].to(torch.bfloat16).view(torch.int16).numpy().view(jnp.bfloat16))


def test_diffusers_module_with_our_renames_matches_comfyui(bfl_case):
    """Third reference: diffusers' FluxTransformer2DModel holding our BFL→diffusers renamed weights."""
    from diffusers import FluxTransformer2DModel

    _, inputs, ref, state = bfl_case
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    config = flux_keys.bfl_flux_config(shapes)
    takes, unknown = flux_keys.bfl_takes(shapes, config["attention_head_dim"] * config["num_attention_heads"])
    assert not unknown
    model = FluxTransformer2DModel(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(t.apply(state[t.source].numpy())))
                           for k, t in takes.items()}, strict=True)
    d_inputs = {k: None if v is None else torch.from_numpy(v) for k, v in diffusers_inputs(inputs).items()}
    with torch.no_grad():
        out = model(**d_inputs, return_dict=False)[0].numpy()
    assert max_diff(unpack(out, LATENT_SIDE, LATENT_SIDE), ref) <= TOLERANCE


def test_key_map_agrees_with_diffusers_converter_at_real_width():
    """Real Flux widths (3072, mlp 12288) with 2-wide inputs: diffusers' converter vs our takes, exactly."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    hidden, k = 3072, 2
    gen = torch.Generator().manual_seed(0)
    rows = {"img_in": hidden, "txt_in": hidden, "time_in.in_layer": hidden, "time_in.out_layer": hidden,
            "vector_in.in_layer": hidden, "vector_in.out_layer": hidden, "guidance_in.in_layer": hidden,
            "guidance_in.out_layer": hidden, "final_layer.linear": 64,
            "final_layer.adaLN_modulation.1": 2 * hidden}
    for i in range(2):
        for s in ("img", "txt"):
            rows.update({f"double_blocks.{i}.{s}_mod.lin": 6 * hidden, f"double_blocks.{i}.{s}_attn.qkv": 3 * hidden,
                         f"double_blocks.{i}.{s}_attn.proj": hidden, f"double_blocks.{i}.{s}_mlp.0": 4 * hidden,
                         f"double_blocks.{i}.{s}_mlp.2": hidden})
        rows.update({f"single_blocks.{i}.linear1": 7 * hidden, f"single_blocks.{i}.linear2": hidden,
                     f"single_blocks.{i}.modulation.lin": 3 * hidden})
    bfl = {}
    for module, n in rows.items():
        bfl[f"{module}.weight"] = torch.randn((n, k), generator=gen)
        bfl[f"{module}.bias"] = torch.randn((n,), generator=gen)
    for i in range(2):
        for name in ("img_attn.norm.query_norm", "img_attn.norm.key_norm", "txt_attn.norm.query_norm",
                     "txt_attn.norm.key_norm"):
            bfl[f"double_blocks.{i}.{name}.scale"] = torch.randn((128,), generator=gen)
        for name in ("norm.query_norm", "norm.key_norm"):
            bfl[f"single_blocks.{i}.{name}.scale"] = torch.randn((128,), generator=gen)

    expected = convert_flux_transformer_checkpoint_to_diffusers(
        {COMFY_PREFIX + key: v for key, v in bfl.items()})
    takes, unknown = flux_keys.bfl_takes({key: tuple(v.shape) for key, v in bfl.items()}, hidden)
    assert not unknown
    assert sorted(takes) == sorted(expected)
    for key, take in takes.items():
        np.testing.assert_array_equal(take.apply(bfl[take.source].numpy()), expected[key].numpy(), err_msg=key)


FP8_CASES = {"fp8": dict(scaled=False), "fp8_scale_weight": dict(scaled=True),
             "fp8_weight_scale": dict(scaled=True, scale_name="weight_scale")}


@pytest.mark.parametrize("case", sorted(FP8_CASES))
def test_fp8_single_file_equals_dequantised_reference(bfl_case, case, comfy_root, tmp_path):
    model, inputs, _, state = bfl_case
    quantized, reference = quantize_fp8({COMFY_PREFIX + k: v for k, v in state.items()}, **FP8_CASES[case])
    path = tmp_path / f"{case}.safetensors"
    save_file(quantized, str(path))
    with torch.no_grad():  # ComfyUI's module holding the dequantised fp32 weights is the reference
        model_ref = tiny_comfy_flux(comfy_root, guidance_embed=inputs["guidance"] is not None)
        model_ref.load_state_dict({k[len(COMFY_PREFIX):]: v for k, v in reference.items()}, strict=True)
    ref = comfy_forward(model_ref, inputs)
    ours = load_model(path, dtype="float32")
    np.testing.assert_array_equal(np.asarray(ours.x_embedder.kernel[...]).T,
                                  reference[COMFY_PREFIX + "img_in.weight"].numpy())
    assert max_diff(run_ours(ours, inputs), ref) <= TOLERANCE


def test_fp8_single_file_defaults_to_bfloat16(bfl_case, tmp_path):
    _, _, _, state = bfl_case
    quantized, reference = quantize_fp8(state, scaled=True)
    path = tmp_path / "fp8.safetensors"
    save_file(quantized, str(path))
    ours = load_model(path)
    assert ours.transformer_blocks[0].attn.to_q.kernel[...].dtype == jnp.bfloat16
    want = reference["double_blocks.0.img_attn.qkv.weight"][:128].to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(np.asarray(ours.transformer_blocks[0].attn.to_q.kernel[...],
                                             np.float32).T, want)


def test_diffusers_named_single_file_is_detected(bfl_case, tmp_path):
    """A diffusers-named transformer saved as one file (no config.json): config read from shapes."""
    _, inputs, ref, state = bfl_case
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    takes, _ = flux_keys.bfl_takes(shapes, 128)
    path = tmp_path / "flux_diffusers_names.safetensors"
    save_file({k: torch.from_numpy(np.ascontiguousarray(t.apply(state[t.source].numpy())))
               for k, t in takes.items()}, str(path))
    ours = load_model(path)
    assert ours.config == load_model_config_of_bfl(shapes)
    assert max_diff(run_ours(ours, inputs), ref) <= TOLERANCE


def load_model_config_of_bfl(shapes):
    from jaxdiff.models_flax.flux import FluxConfig

    return FluxConfig.from_dict(flux_keys.bfl_flux_config(shapes))


def test_expected_bfl_key_names_are_comfyuis(bfl_case):
    _, inputs, _, state = bfl_case
    assert flux_keys.bfl_key_names(1, 1, inputs["guidance"] is not None) == set(state)


# The real black-forest-labs/FLUX.1-dev transformer/config.json (schnell: guidance_embeds false).
FLUX_DEV_CONFIG = {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64,
                   "out_channels": None, "num_layers": 19, "num_single_layers": 38,
                   "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
                   "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}


def test_real_size_bfl_header_gives_the_flux_dev_config_and_fits_our_model(tmp_path):
    """A 23 GB flux1-dev-shaped file (sparse: header only) is detected and checked from its header."""
    from jaxdiff.benchmarks.convert_memory import write_synthetic_bfl
    from jaxdiff.convert.detect import inspect_path
    from jaxdiff.convert.loader import Plan

    path = tmp_path / "flux1-dev.safetensors"
    size = write_synthetic_bfl(path, 3072, 19, 38, sparse=True, context=4096, pooled=768)
    assert size > 20e9
    with Plan(inspect_path(path)) as plan:
        assert plan.config_dict() == FLUX_DEV_CONFIG
        assert str(plan.dtype) == "bfloat16"
        assert plan.num_tensors == len(plan.params)
