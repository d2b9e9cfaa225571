"""`jaxdiff verify`: our Flax module vs the torchax trace of the diffusers module, through the CLI."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from flux_fixtures import randomize_, tiny_torch_flux
from jaxdiff import cli
from jaxdiff.convert import loader
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
