"""LDM / BFL `ae.safetensors` VAE single files (and full checkpoints) through `load_model` / `convert`,
against ComfyUI's own VAE modules (fp32, ≤1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from comfy_fixtures import COMFY_PREFIX, TINY_LDM_VAE, comfyui_root, tiny_comfy_flux, tiny_comfy_vae
from jaxdiff import load_model
from jaxdiff.convert import convert
from jaxdiff.convert.checkpoint import read_meta

TOLERANCE = 1e-5
IMAGE_SIDE = 16


@pytest.fixture(scope="module")
def comfy_root(tmp_path_factory):
    return comfyui_root(tmp_path_factory.mktemp("comfyui"))


@pytest.fixture(scope="module", params=["flux", "sd"])
def vae_case(request, comfy_root):
    kind = request.param
    model = tiny_comfy_vae(comfy_root, kind)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 3, IMAGE_SIDE, IMAGE_SIDE), np.float32)
    factor = 2 ** (len(TINY_LDM_VAE[kind]["ch_mult"]) - 1)
    latent = rng.standard_normal((2, TINY_LDM_VAE[kind]["z_channels"], IMAGE_SIDE // factor,
                                  IMAGE_SIDE // factor), np.float32)
    with torch.no_grad():
        mean = model.encode(torch.from_numpy(image)).numpy()  # ComfyUI returns the posterior mode
        decoded = model.decode(torch.from_numpy(latent)).numpy()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return kind, state, image, latent, mean, decoded


def check(vae, case):
    kind, _, image, latent, mean, decoded = case
    encode_diff = float(np.abs(np.asarray(vae.encode(image)[0]) - mean).max())
    decode_diff = float(np.abs(np.asarray(vae.decode(latent)) - decoded).max())
    print(f"encode max|Δ| {encode_diff:.2e}, decode max|Δ| {decode_diff:.2e}")  # pytest -s
    assert encode_diff <= TOLERANCE and decode_diff <= TOLERANCE
    assert (vae.config.shift_factor is not None) == (kind == "flux")


def test_ldm_vae_file_matches_comfyui(vae_case, tmp_path):
    path = tmp_path / "ae.safetensors"
    save_file(vae_case[1], str(path))
    vae = load_model(path)
    assert type(vae).__name__ == "AutoencoderKL"
    check(vae, vae_case)


def test_ldm_vae_converts_and_restores(vae_case, tmp_path):
    path = tmp_path / "ae.safetensors"
    save_file(vae_case[1], str(path))
    out = convert(path, tmp_path / "vae-jax")
    assert read_meta(out)["family"] == "vae_kl"
    check(load_model(out), vae_case)


def test_vae_inside_a_prefixed_file_matches_comfyui(vae_case, tmp_path):
    prefix = "vae." if vae_case[0] == "flux" else "first_stage_model."
    path = tmp_path / "vae_prefixed.safetensors"
    save_file({prefix + k: v for k, v in vae_case[1].items()}, str(path))
    check(load_model(path), vae_case)


def test_full_checkpoint_loads_its_diffusion_model(comfy_root, tmp_path):
    """ComfyUI full checkpoint (diffusion model + vae + text encoders): load_model takes the model."""
    flux = tiny_comfy_flux(comfy_root)
    vae = tiny_comfy_vae(comfy_root, "flux")
    tensors = {COMFY_PREFIX + k: v.contiguous() for k, v in flux.state_dict().items()}
    tensors.update({"vae." + k: v.contiguous() for k, v in vae.state_dict().items()})
    tensors["text_encoders.clip_l.transformer.text_model.final_layer_norm.weight"] = torch.ones(4)
    path = tmp_path / "full.safetensors"
    save_file(tensors, str(path))
    model = load_model(path)
    assert type(model).__name__ == "FluxTransformer2DModel"
    np.testing.assert_array_equal(np.asarray(model.x_embedder.kernel[...]).T,
                                  flux.state_dict()["img_in.weight"].numpy())
