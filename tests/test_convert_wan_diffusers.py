"""Wan diffusers model directories (transformer T2V / I2V / TI2V-style, AutoencoderKLWan) → `load_model`
/ `jaxdiff convert` → the same outputs as diffusers in torch (fp32, ≤1e-5)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan as TorchAutoencoderKLWan

from parity import max_diff, run_jitted
from jaxdiff import load_model
from jaxdiff.cli import main as jaxdiff_main
from jaxdiff.convert import convert
from jaxdiff.convert.families import ignored_keys
from jaxdiff.convert.checkpoint import read_meta
from wan_fixtures import (I2V_TEXT_TOKENS, IMAGE_TOKENS, tiny_i2v_config, tiny_torch_wan,
                          tiny_wan_config, tiny_wan_inputs, torch_wan_forward)

TOLERANCE = 1e-5
SHARD_SIZE = "20KB"  # several shards + an index for the tiny models

# name → (config overrides, tiny_wan_inputs kwargs)
VARIANTS = {
    "t2v": ({}, {}),
    "i2v": (tiny_i2v_config(), dict(text_tokens=I2V_TEXT_TOKENS, image_tokens=IMAGE_TOKENS)),
    "ti2v": (dict(in_channels=8, out_channels=8), dict(per_token_timesteps=True)),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def wan_case(request, tmp_path_factory):
    """(variant, inputs, torch output, {layout: diffusers dir}) for one tiny Wan transformer."""
    overrides, input_kwargs = VARIANTS[request.param]
    model = tiny_torch_wan(**overrides)
    inputs = tiny_wan_inputs(tiny_wan_config(**overrides), **input_kwargs)
    root = tmp_path_factory.mktemp(f"wan_{request.param}")
    dirs = {"single": root / "single", "sharded": root / "sharded"}
    model.save_pretrained(dirs["single"])
    model.save_pretrained(dirs["sharded"], max_shard_size=SHARD_SIZE)
    return request.param, inputs, torch_wan_forward(model, inputs), dirs


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_wan_diffusers_dir_matches_torch(wan_case, layout):
    _, inputs, ref, dirs = wan_case
    if layout == "sharded":
        assert len(list(dirs[layout].glob("*.safetensors"))) > 1
        assert list(dirs[layout].glob("*.safetensors.index.json"))
    ours = load_model(dirs[layout])
    assert type(ours).__name__ == "WanTransformer3DModel"
    assert max_diff(run_jitted(ours, inputs), ref) <= TOLERANCE


def test_wan_converted_checkpoint_matches_direct_load(wan_case, tmp_path):
    _, inputs, ref, dirs = wan_case
    out = convert(dirs["sharded"], tmp_path / "wan-jax")
    meta = read_meta(out)
    assert meta["family"] == "wan" and meta["class_name"] == "WanTransformer3DModel"
    assert {"blocks.0", "blocks.1", "condition_embedder", "patch_embedding"} <= set(meta["units"])
    direct = run_jitted(load_model(dirs["sharded"]), inputs)
    restored = run_jitted(load_model(out), inputs)
    assert max_diff(restored, direct) == 0.0
    assert max_diff(restored, ref) <= TOLERANCE


def test_norm_added_q_is_ignored_like_diffusers(tmp_path):
    """diffusers' `_keys_to_ignore_on_load_unexpected = ["norm_added_q"]`: mirrored by name."""
    from safetensors.torch import load_file, save_file

    model = tiny_torch_wan(**tiny_i2v_config())
    model.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["blocks.0.attn2.norm_added_q.weight"] = torch.ones(24)
    save_file(state, str(weights), metadata={"format": "pt"})
    assert ignored_keys("wan", state) == {"blocks.0.attn2.norm_added_q.weight"}
    inputs = tiny_wan_inputs(tiny_i2v_config(), text_tokens=I2V_TEXT_TOKENS, image_tokens=IMAGE_TOKENS)
    assert max_diff(run_jitted(load_model(tmp_path), inputs), torch_wan_forward(model, inputs)) <= TOLERANCE
    # any other unknown key is still an error that names it
    state["blocks.0.attn2.extra.weight"] = torch.ones(24)
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): blocks\.0\.attn2\.extra\.weight"):
        load_model(tmp_path)


def test_wan_dir_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_torch_wan().save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    del state["blocks.1.ffn.net.2.weight"]
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing parameter\(s\): blocks\.1\.ffn\.net\.2\.kernel"):
        load_model(tmp_path)


# ----------------------------------------------------------------------------- VAE

TINY_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                temperal_downsample=[False, True, True])


def randomize_vae_(vae: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights ~ N(0, 0.25/fan_in), gammas ~ 1 + N(0, 0.04), biases ~ N(0, 0.04)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("bias"):
                p.copy_(0.2 * noise)
            elif name.endswith("gamma"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.5 / np.sqrt(p[0].numel()) * noise)
    return vae.eval()


@pytest.fixture(scope="module")
def wan_vae_case(tmp_path_factory):
    vae = randomize_vae_(TorchAutoencoderKLWan(**TINY_VAE))
    root = tmp_path_factory.mktemp("wan_vae")
    vae.save_pretrained(root / "single")
    vae.save_pretrained(root / "sharded", max_shard_size=SHARD_SIZE)
    video = torch.randn((1, 3, 5, 16, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mean = vae.encode(video).latent_dist.mean
        ref = vae.decode(mean).sample
    return video.numpy(), mean.numpy(), ref.numpy(), root


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_wan_vae_diffusers_dir_matches_torch(wan_vae_case, layout):
    video, mean, ref, root = wan_vae_case
    if layout == "sharded":
        assert len(list((root / layout).glob("*.safetensors"))) > 1
    ours = load_model(root / layout)
    assert type(ours).__name__ == "AutoencoderKLWan"
    ours_mean = ours.encode_mode(jnp.asarray(video))
    assert max_diff(ours_mean, mean) <= TOLERANCE
    assert max_diff(ours.decode(jnp.asarray(mean)), ref) <= TOLERANCE


def test_wan_vae_converted_checkpoint_matches_torch(wan_vae_case, tmp_path):
    video, mean, ref, root = wan_vae_case
    out = convert(root / "sharded", tmp_path / "wan-vae-jax")
    meta = read_meta(out)
    assert meta["family"] == "vae_wan" and set(meta["units"]) >= {"encoder", "decoder"}
    ours = load_model(out)
    assert ours.config == load_model(root / "single").config
    assert max_diff(ours.encode_mode(jnp.asarray(video)), mean) <= TOLERANCE
    assert max_diff(ours.decode(jnp.asarray(mean)), ref) <= TOLERANCE


def test_cli_converts_a_wan_vae_dir(wan_vae_case, tmp_path):
    _, _, _, root = wan_vae_case
    out = tmp_path / "cli-out"
    assert jaxdiff_main(["convert", str(root / "single"), str(out), "--dtype", "bfloat16"]) == 0
    meta = json.loads((out / "jaxdiff.json").read_text())
    assert (meta["family"], meta["dtype"]) == ("vae_wan", "bfloat16")
    assert [p.name for p in tmp_path.iterdir()] == ["cli-out"]  # no temp dirs left behind
