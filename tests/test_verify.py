"""`jaxdiff verify`: our Flax module vs the torchax trace of the diffusers module, through the CLI.

Inputs: diffusers model dirs; BFL / ComfyUI single files (fp32 and fp8 "scaled"), LDM VAE files
(built by ComfyUI's own modules, tests/comfy_fixtures.py); converted dirs with `--reference`.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from comfy_fixtures import COMFY_PREFIX, comfyui_root, quantize_fp8, tiny_comfy_flux, tiny_comfy_vae
from flux_fixtures import randomize_, tiny_flux_config, tiny_torch_flux
from jaxdiff import cli
from jaxdiff.convert import convert, loader
from jaxdiff.convert.place import param_targets

PERTURBATION = 1e-3  # far above the 1e-5 tolerance
TINY_VAE = dict(  # like diffusers' own AutoencoderKL tests
    block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


@pytest.fixture(scope="module")
def flux_dev_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("flux_dev")
    tiny_torch_flux(guidance_embeds=True, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def flux_schnell_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("flux_schnell")
    tiny_torch_flux(guidance_embeds=False, seed=1).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae")
    randomize_(AutoencoderKL(**TINY_VAE), seed=0, std=0.2).eval().save_pretrained(path)
    return path


def test_flux_dev_matches_within_tolerance(flux_dev_dir, capsys):
    assert cli.main(["verify", str(flux_dev_dir)]) == 0
    out = capsys.readouterr().out
    assert "FluxTransformer2DModel" in out
    assert "ours vs torchax" in out and "ours vs torch eager" in out
    assert "FAIL" not in out and "OK" in out


def test_flux_schnell_without_guidance_batch_2_matches(flux_schnell_dir, capsys):
    assert cli.main(["verify", str(flux_schnell_dir), "--batch", "2", "--seed", "3"]) == 0
    assert "(2, 64, 4)" in capsys.readouterr().out


def test_vae_encode_and_decode_match(vae_dir, capsys):
    assert cli.main(["verify", str(vae_dir)]) == 0
    out = capsys.readouterr().out
    for name in ("encode.mean", "encode.logvar", "decode"):
        assert name in out
    assert "FAIL" not in out


@pytest.fixture
def perturbed_loader(monkeypatch):
    """`load_model` returns our model with one weight off by PERTURBATION."""
    real_load_model = loader.load_model

    def load_perturbed(path, **kwargs):
        model = real_load_model(path, **kwargs)
        bias = param_targets(model)[("proj_out", "bias")]
        bias[...] = bias[...].at[0].add(PERTURBATION)
        return model

    monkeypatch.setattr(loader, "load_model", load_perturbed)


@pytest.fixture(scope="module")
def comfy_root(tmp_path_factory):
    return comfyui_root(tmp_path_factory.mktemp("comfyui"))


@pytest.fixture(scope="module")
def bfl_state(comfy_root):
    """A tiny BFL Flux dev state dict (hidden 128 = 1 head × 128, so detection needs no --config)."""
    model = tiny_comfy_flux(comfy_root, guidance_embed=True)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def comfy_flux_file(bfl_state, tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("comfy_flux") / "flux1-tiny.safetensors"
    save_file({COMFY_PREFIX + k: v for k, v in bfl_state.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def converted_flux_dir(comfy_flux_file, tmp_path_factory):
    return convert(comfy_flux_file, tmp_path_factory.mktemp("converted") / "flux-jax")


def test_comfy_prefixed_bfl_single_file_matches(comfy_flux_file, capsys):
    assert cli.main(["verify", str(comfy_flux_file)]) == 0
    out = capsys.readouterr().out
    assert "FluxTransformer2DModel" in out and "single file" in out
    assert "FAIL" not in out and "OK" in out


def test_bare_bfl_single_file_matches(bfl_state, tmp_path, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "flux1-tiny-bfl.safetensors"
    save_file(bfl_state, str(path))
    assert cli.main(["verify", str(path)]) == 0
    assert "FAIL" not in capsys.readouterr().out


@pytest.mark.parametrize("scale_name", ["scale_weight", "weight_scale"])
def test_fp8_scaled_single_file_matches(bfl_state, scale_name, tmp_path, capsys):
    """fp8 e4m3fn with per-tensor scales (+ scale_input, scaled_fp8 marker), dequantised on both sides."""
    from safetensors.torch import save_file

    quantized, _ = quantize_fp8({COMFY_PREFIX + k: v for k, v in bfl_state.items()}, scaled=True,
                                scale_name=scale_name)
    path = tmp_path / "flux1-tiny-fp8.safetensors"
    save_file(quantized, str(path))
    assert cli.main(["verify", str(path)]) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_ldm_vae_single_file_matches(comfy_root, tmp_path, capsys):
    from safetensors.torch import save_file

    vae = tiny_comfy_vae(comfy_root, "flux")  # BFL ae.safetensors layout, 16 latent channels
    path = tmp_path / "ae.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))
    assert cli.main(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "AutoencoderKL" in out and "(1, 16, 8, 8)" in out
    assert "FAIL" not in out


def test_converted_dir_with_reference_matches(converted_flux_dir, comfy_flux_file, capsys):
    assert cli.main(["verify", str(converted_flux_dir), "--reference", str(comfy_flux_file)]) == 0
    out = capsys.readouterr().out
    assert "converted jaxdiff checkpoint" in out and str(comfy_flux_file) in out
    assert "FAIL" not in out


def test_converted_dir_with_diffusers_dir_reference_matches(flux_dev_dir, tmp_path, capsys):
    out_dir = convert(flux_dev_dir, tmp_path / "flux-dev-jax")
    assert cli.main(["verify", str(out_dir), "--reference", str(flux_dev_dir)]) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_converted_dir_without_reference_is_refused(converted_flux_dir, comfy_flux_file, capsys):
    assert cli.main(["verify", str(converted_flux_dir)]) == 2
    err = capsys.readouterr().err
    assert "converted jaxdiff checkpoint" in err and "--reference" in err
    assert str(comfy_flux_file) in err  # the source jaxdiff.json records


def test_reference_of_another_family_is_refused(comfy_flux_file, vae_dir, capsys):
    assert cli.main(["verify", str(comfy_flux_file), "--reference", str(vae_dir)]) == 2
    assert "AutoencoderKL" in capsys.readouterr().err


def test_config_file_for_a_head_dim_16_single_file(tmp_path, capsys):
    """A diffusers-named single file with head dim 16: undetectable alone, verified with --config."""
    from safetensors.torch import save_file

    path = tmp_path / "flux-tiny-diffusers-names.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_torch_flux(seed=2).state_dict().items()}, str(path))
    assert cli.main(["verify", str(path)]) == 2
    assert "config" in capsys.readouterr().err
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"_class_name": "FluxTransformer2DModel", **tiny_flux_config()}))
    assert cli.main(["verify", str(path), "--config", str(config_file)]) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_config_file_for_a_diffusers_dir_is_refused(flux_dev_dir, tmp_path, capsys):
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(tiny_flux_config()))
    assert cli.main(["verify", str(flux_dev_dir), "--config", str(config_file)]) == 2
    assert "--config" in capsys.readouterr().err


def test_perturbed_single_file_load_fails(comfy_flux_file, perturbed_loader, capsys):
    assert cli.main(["verify", str(comfy_flux_file)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_pickle_single_file_is_refused(tmp_path, capsys):
    path = tmp_path / "flux.ckpt"
    path.write_bytes(b"not read")
    assert cli.main(["verify", str(path)]) == 2
    assert "pickle" in capsys.readouterr().err


def test_perturbed_weight_fails(flux_dev_dir, perturbed_loader, capsys):
    assert cli.main(["verify", str(flux_dev_dir)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_loose_tolerance_accepts_perturbed_weight(flux_dev_dir, perturbed_loader):
    assert cli.main(["verify", str(flux_dev_dir), "--tolerance", str(10 * PERTURBATION)]) == 0


def test_missing_verify_extra_says_how_to_install(flux_dev_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchax", None)  # `import torchax` raises ImportError
    assert cli.main(["verify", str(flux_dev_dir)]) == 2
    assert "pip install 'jaxdiff[verify]'" in capsys.readouterr().err


def test_unknown_model_class_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    assert cli.main(["verify", str(tmp_path)]) == 2
    assert "UNet2DConditionModel" in capsys.readouterr().err


def test_path_without_config_is_refused(tmp_path, capsys):
    assert cli.main(["verify", str(tmp_path / "missing")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_pipeline_root_points_to_its_models(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    assert cli.main(["verify", str(tmp_path)]) == 2
    assert str(tmp_path / "transformer") in capsys.readouterr().err


def test_compare_fails_on_nan_and_shape_mismatch():
    from jaxdiff.convert.verify import compare

    assert not compare("x", "a vs b", np.array([np.nan]), np.array([0.0]), judged=True).ok(1e-5)
    assert not compare("x", "a vs b", np.zeros(3), np.zeros(4), judged=True).ok(1e-5)
    assert compare("x", "a vs b", np.ones(3), np.ones(3) + 1e-6, judged=True).ok(1e-5)
