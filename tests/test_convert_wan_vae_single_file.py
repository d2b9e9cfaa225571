"""Wan VAE single files (ComfyUI `comfy/ldm/wan/vae.py` 2.1 and `vae2_2.py` 2.2 layouts) → `load_model`
→ the same encode/decode as ComfyUI's own `WanVAE`; key map cross-checked against diffusers'
`convert_wan_vae_to_diffusers` (2.1)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from comfy_fixtures import comfyui_root
from parity import max_diff
from jaxdiff import load_model
from jaxdiff.convert import convert, wan_keys
from jaxdiff.convert.checkpoint import read_meta
from jaxdiff.models_flax.vae_wan import WAN21_VAE_CONFIG, WAN22_VAE_CONFIG, WanVAEConfig
from wan_comfy_fixtures import tiny_comfy_wan22_vae, tiny_comfy_wan_vae

TOLERANCE = 1e-5
FRAMES = 9  # first frame + two 4-frame chunks → 3 latent frames
LATENT_SCALE = 3.0  # decode inputs well away from the posterior mean
SIZE = {"wan21": 16, "wan22": 32}


@pytest.fixture(scope="module")
def comfy_root(tmp_path_factory):
    return comfyui_root(tmp_path_factory.mktemp("comfyui"))


@pytest.fixture(scope="module", params=["wan21", "wan22"])
def vae_case(request, comfy_root, tmp_path_factory):
    """(version, ComfyUI model, state dict, file, video, ComfyUI mean, latent, ComfyUI decode)."""
    model = tiny_comfy_wan_vae(comfy_root) if request.param == "wan21" else tiny_comfy_wan22_vae(comfy_root)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp(request.param) / "wan_vae.safetensors"
    save_file(state, str(path))
    side = SIZE[request.param]
    gen = torch.Generator().manual_seed(1)
    video = torch.randn((1, 3, FRAMES, side, side), generator=gen)
    with torch.no_grad():
        mean = model.encode(video)
        z = LATENT_SCALE * torch.randn(mean.shape, generator=gen)
        decoded = model.decode(z).clamp(-1.0, 1.0)  # ComfyUI clamps outside the module
    return request.param, model, state, path, video.numpy(), mean.numpy(), z.numpy(), decoded.numpy()


def test_wan_vae_single_file_matches_comfyui(vae_case):
    version, _, _, path, video, mean, z, decoded = vae_case
    ours = load_model(path)
    assert type(ours).__name__ == "AutoencoderKLWan"
    assert ours.config.is_residual == (version == "wan22")
    assert max_diff(ours.encode_mode(jnp.asarray(video)), mean) <= TOLERANCE
    assert max_diff(ours.decode(jnp.asarray(z)), decoded) <= TOLERANCE


def test_wan_vae_single_file_converts_and_restores(vae_case, tmp_path):
    _, _, _, path, video, mean, _, _ = vae_case
    out = convert(path, tmp_path / "converted")
    meta = read_meta(out)
    assert meta["family"] == "vae_wan" and meta["class_name"] == "AutoencoderKLWan"
    restored = load_model(out)
    assert restored.config == load_model(path).config
    assert max_diff(restored.encode_mode(jnp.asarray(video)), mean) <= TOLERANCE


def test_expected_vae_key_names_are_comfyuis(vae_case):
    _, _, state, _, _, _, _, _ = vae_case
    config = wan_keys.wan_vae_config({k: tuple(v.shape) for k, v in state.items()})
    assert wan_keys.wan_vae_key_names(config) == set(state)
    takes, unknown = wan_keys.wan_vae_takes(state)
    assert not unknown and len(takes) == len(state)


def test_wan21_vae_key_map_agrees_with_diffusers_converter(comfy_root):
    """diffusers' converter hard-codes the real layout's decoder grouping (dim_mult [1, 2, 4, 4], 2
    resnets per stage, a shortcut only at upsamples.4): compare at those proportions, width 4."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    model = tiny_comfy_wan_vae(comfy_root, dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    expected = convert_wan_vae_to_diffusers(dict(state))
    takes, unknown = wan_keys.wan_vae_takes(state)
    assert not unknown
    assert sorted(takes) == sorted(expected)
    for key, take in takes.items():
        np.testing.assert_array_equal(take.apply(state[take.source].numpy()), expected[key].numpy(),
                                      err_msg=key)


def _real_shapes(version: str) -> dict:
    """Header-only shapes of the released Wan 2.1 / 2.2 VAE files, from ComfyUI's module on meta."""
    import comfy.ldm.wan.vae
    import comfy.ldm.wan.vae2_2

    with torch.device("meta"):
        if version == "wan21":
            model = comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                             attn_scales=[], temperal_downsample=[False, True, True])
        else:
            model = comfy.ldm.wan.vae2_2.WanVAE(dim=160, dec_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4],
                                                num_res_blocks=2, attn_scales=[],
                                                temperal_downsample=[False, True, True])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("version", ["wan21", "wan22"])
def test_released_vae_shapes_give_the_diffusers_config(comfy_root, version):
    tiny_comfy_wan_vae(comfy_root)  # puts ComfyUI on sys.path
    shapes = _real_shapes(version)
    config = WanVAEConfig.from_dict(wan_keys.wan_vae_config(shapes))
    assert config == (WAN21_VAE_CONFIG if version == "wan21" else WAN22_VAE_CONFIG)
    assert wan_keys.wan_vae_key_names(config) == set(shapes)


def test_missing_vae_key_is_named(vae_case, tmp_path):
    version, _, state, _, _, _, _, _ = vae_case
    gone = ("decoder.upsamples.1.residual.6.weight" if version == "wan21"
            else "decoder.upsamples.1.upsamples.0.residual.6.weight")
    path = tmp_path / "vae.safetensors"
    save_file({k: v for k, v in state.items() if k != gone}, str(path))
    with pytest.raises(ValueError, match=rf"1 missing key\(s\): {gone.replace('.', '[.]')}"):
        load_model(path)


def test_vae_detection_failure_names_the_missing_key(vae_case, tmp_path):
    _, _, state, _, _, _, _, _ = vae_case
    path = tmp_path / "vae.safetensors"
    save_file({k: v for k, v in state.items() if k != "conv2.weight"}, str(path))
    with pytest.raises(ValueError, match=r"key 'conv2\.weight' .* is missing"):
        load_model(path)
