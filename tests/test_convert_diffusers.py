"""Diffusers model directories → `load_model` / `jaxdiff convert` → same outputs as torch (fp32, ≤1e-5)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from flax import nnx

from flux_fixtures import tiny_flux_config, tiny_flux_inputs, tiny_torch_flux, torch_flux_forward
from parity import jnp_inputs, max_diff
from jaxdiff import load_model
from jaxdiff.cli import main as jaxdiff_main
from jaxdiff.convert import convert
from jaxdiff.convert.checkpoint import read_meta

TOLERANCE = 1e-5
SHARD_SIZE = "20KB"  # forces several shards + index for the tiny models
TINY_VAE = dict(block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


@pytest.fixture(scope="module", params=["dev", "schnell"])
def flux_case(request, tmp_path_factory):
    """(torch model, inputs, reference output, {layout: diffusers dir}) for one Flux variant."""
    guidance = request.param == "dev"
    model = tiny_torch_flux(guidance)
    inputs = tiny_flux_inputs(tiny_flux_config(guidance))
    root = tmp_path_factory.mktemp(f"flux_{request.param}")
    dirs = {"single": root / "single", "sharded": root / "sharded"}
    model.save_pretrained(dirs["single"])
    model.save_pretrained(dirs["sharded"], max_shard_size=SHARD_SIZE)
    return model, inputs, torch_flux_forward(model, inputs), dirs


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_flux_diffusers_dir_matches_torch(flux_case, layout):
    _, inputs, ref, dirs = flux_case
    if layout == "sharded":
        assert len(list(dirs[layout].glob("*.safetensors"))) > 1
        assert list(dirs[layout].glob("*.safetensors.index.json"))
    ours = load_model(dirs[layout])
    assert max_diff(ours(**jnp_inputs(inputs)), ref) <= TOLERANCE


def test_flux_converted_checkpoint_matches_direct_load(flux_case, tmp_path):
    _, inputs, ref, dirs = flux_case
    out = convert(dirs["sharded"], tmp_path / "flux-jax")
    meta = read_meta(out)
    assert meta["family"] == "flux" and meta["dtype"] == "float32"
    assert "transformer_blocks.0" in meta["units"]
    direct = load_model(dirs["sharded"])(**jnp_inputs(inputs))
    restored = load_model(out)(**jnp_inputs(inputs))
    assert max_diff(restored, direct) == 0.0
    assert max_diff(restored, ref) <= TOLERANCE


def test_load_model_casts_to_requested_dtype(flux_case):
    _, _, _, dirs = flux_case
    ours = load_model(dirs["single"], dtype="bfloat16")
    assert {str(x.dtype) for x in jax.tree.leaves(nnx.state(ours, nnx.Param))} == {"bfloat16"}


@pytest.fixture(scope="module")
def vae_case(tmp_path_factory):
    gen = torch.Generator().manual_seed(0)
    vae = TorchAutoencoderKL(**TINY_VAE).eval()
    with torch.no_grad():  # weights ~ N(0, 0.25/fan_in); norm scales ~ 1 + N(0, 0.04); biases ~ N(0, 0.04)
        for name, p in vae.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim > 1:
                p.copy_(0.5 / np.sqrt(p[0].numel()) * noise)
            else:
                p.copy_((0.0 if name.endswith("bias") else 1.0) + 0.2 * noise)
    root = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(root / "single")
    vae.save_pretrained(root / "sharded", max_shard_size=SHARD_SIZE)
    image = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = vae(image, sample_posterior=False).sample.numpy()
    return image.numpy(), ref, root


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_vae_diffusers_dir_matches_torch(vae_case, layout):
    image, ref, root = vae_case
    ours = load_model(root / layout)
    assert type(ours).__name__ == "AutoencoderKL"
    assert max_diff(ours(jnp.asarray(image)), ref) <= TOLERANCE


def test_vae_converted_checkpoint_matches_torch(vae_case, tmp_path):
    image, ref, root = vae_case
    out = convert(root / "sharded", tmp_path / "vae-jax")
    assert read_meta(out)["family"] == "vae_kl"
    assert max_diff(load_model(out)(jnp.asarray(image)), ref) <= TOLERANCE


def test_cli_convert_writes_then_refuses_to_overwrite(vae_case, tmp_path, capsys):
    _, _, root = vae_case
    out = tmp_path / "cli-out"
    assert jaxdiff_main(["convert", str(root / "single"), str(out), "--dtype", "bfloat16"]) == 0
    assert json.loads((out / "jaxdiff.json").read_text())["dtype"] == "bfloat16"
    assert jaxdiff_main(["convert", str(root / "single"), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert jaxdiff_main(["convert", str(root / "single"), str(out), "--overwrite"]) == 0
    assert json.loads((out / "jaxdiff.json").read_text())["dtype"] == "float32"
    assert [p.name for p in tmp_path.iterdir()] == ["cli-out"]  # no temp dirs left behind


def test_diffusers_named_single_file_with_explicit_config(flux_case, tmp_path):
    """Head dim 16 has no known RoPE axes: detection refuses, config= loads it."""
    from safetensors.torch import save_file
    from jaxdiff import load_model as convert_load_model

    model, inputs, ref, _ = flux_case
    path = tmp_path / "transformer.safetensors"
    save_file(model.state_dict(), str(path))
    with pytest.raises(ValueError, match=r"head dim 16.*config="):
        load_model(path)
    ours = convert_load_model(path, config=dict(model.config))
    assert max_diff(ours(**jnp_inputs(inputs)), ref) <= TOLERANCE


def test_converted_checkpoint_restores_in_another_dtype(flux_case, tmp_path):
    _, inputs, _, dirs = flux_case
    out = convert(dirs["single"], tmp_path / "flux-jax")
    ours = load_model(out, dtype="bfloat16")
    assert ours.transformer_blocks[0].attn.to_q.kernel[...].dtype == jnp.bfloat16
    direct = load_model(dirs["single"], dtype="bfloat16")
    np.testing.assert_array_equal(np.asarray(ours.proj_out.kernel[...], np.float32),
                                  np.asarray(direct.proj_out.kernel[...], np.float32))
