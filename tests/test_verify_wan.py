"""`jaxdiff verify` on Wan: transformers and VAEs (2.1, 2.2) as diffusers dirs, ComfyUI-layout single
files (built by ComfyUI's own modules, tests/wan_comfy_fixtures.py) and converted dirs with
`--reference`; a corrupted conversion fails; the torch reference's Wan VAE renaming checked against
diffusers' converter and ComfyUI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from comfy_fixtures import COMFY_PREFIX, comfyui_root
from parity import max_diff
from vae_fixtures import randomize_vae_
from wan_comfy_fixtures import VARIANTS, tiny_comfy_wan, tiny_comfy_wan22_vae, tiny_comfy_wan_vae
from wan_fixtures import tiny_i2v_config, tiny_torch_wan
from jaxdiff import cli
from jaxdiff.convert import convert, wan_keys
from jaxdiff.convert.verify import diffusers_kwargs, diffusers_wan_vae_from_original

TOLERANCE = 1e-5
PERTURBATION = 1e-3  # far above the tolerance
TINY_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                temperal_downsample=[False, True, True])
VAE_OUTPUTS = ("encode.mean", "encode.logvar", "decode")
ROW = re.compile(r"^(\S+)\s+ours vs torchax\s+(\([\d, ]*\))\s+(\S+)\s+\S+\s+(\S+)", re.MULTILINE)


def judged_rows(out: str) -> dict[str, tuple[str, float, str]]:
    """`{output: (shape, max abs diff, result)}` of the report's judged (ours vs torchax) rows."""
    return {m.group(1): (m.group(2), float(m.group(3)), m.group(4)) for m in ROW.finditer(out)}


def assert_verified(argv: list[str], capsys, outputs: tuple[str, ...]) -> dict:
    """`jaxdiff verify ARGV` exits 0 with each output's judged row present and within 1e-5."""
    assert cli.main(["verify", *argv]) == 0
    out = capsys.readouterr().out
    rows = judged_rows(out)
    assert sorted(rows) == sorted(outputs), out
    for name, (_, diff, result) in rows.items():
        assert diff <= TOLERANCE and result == "OK", (name, out)
    assert "FAIL" not in out
    return rows


@pytest.fixture(scope="module")
def comfy_root(tmp_path_factory):
    return comfyui_root(tmp_path_factory.mktemp("comfyui"))


def comfy_state(model) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- transformer


@pytest.mark.parametrize("variant", ["t2v", "i2v"])
def test_wan_diffusers_dir_matches(variant, tmp_path, capsys):
    overrides = tiny_i2v_config() if variant == "i2v" else {}
    tiny_torch_wan(seed=3, **overrides).save_pretrained(tmp_path)
    rows = assert_verified([str(tmp_path)], capsys, ("sample",))
    assert rows["sample"][0] == "(1, 4, 2, 4, 4)"  # 2 latent frames of 4 × 4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_comfy_wan_single_file_matches(comfy_root, variant, tmp_path, capsys):
    path = tmp_path / "wan.safetensors"
    save_file({COMFY_PREFIX + k: v for k, v in comfy_state(tiny_comfy_wan(comfy_root, variant)).items()},
              str(path))
    assert_verified([str(path)], capsys, ("sample",))


@pytest.fixture(scope="module")
def comfy_wan_file(comfy_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("comfy_wan") / "wan.safetensors"
    save_file({COMFY_PREFIX + k: v for k, v in comfy_state(tiny_comfy_wan(comfy_root, "t2v")).items()},
              str(path))
    return path


def test_converted_wan_with_reference_matches(comfy_wan_file, tmp_path, capsys):
    out_dir = convert(comfy_wan_file, tmp_path / "wan-jax")
    assert_verified([str(out_dir), "--reference", str(comfy_wan_file)], capsys, ("sample",))


def test_corrupted_wan_conversion_fails(comfy_root, comfy_wan_file, tmp_path, capsys):
    """A conversion of the file with one weight off by PERTURBATION, verified against the file."""
    state = comfy_state(tiny_comfy_wan(comfy_root, "t2v"))
    state["head.head.bias"][0] += PERTURBATION
    corrupted = tmp_path / "wan-corrupted.safetensors"
    save_file({COMFY_PREFIX + k: v for k, v in state.items()}, str(corrupted))
    out_dir = convert(corrupted, tmp_path / "wan-jax")
    assert cli.main(["verify", str(out_dir), "--reference", str(comfy_wan_file)]) == 1
    out = capsys.readouterr().out
    assert judged_rows(out)["sample"][2].startswith("FAIL") and "FAIL" in out


# ----------------------------------------------------------------------------- VAE


@pytest.fixture(scope="module")
def wan_vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKLWan

    path = tmp_path_factory.mktemp("wan_vae")
    randomize_vae_(AutoencoderKLWan(**TINY_VAE), seed=0).eval().save_pretrained(path)
    return path


def test_wan21_vae_diffusers_dir_matches(wan_vae_dir, capsys):
    rows = assert_verified([str(wan_vae_dir)], capsys, VAE_OUTPUTS)
    assert rows["encode.mean"][0] == "(1, 4, 2, 4, 4)" and rows["decode"][0] == "(1, 3, 5, 32, 32)"


@pytest.mark.parametrize("version", ["wan21", "wan22"])
def test_wan_vae_single_file_matches(comfy_root, version, tmp_path, capsys):
    model = tiny_comfy_wan_vae(comfy_root) if version == "wan21" else tiny_comfy_wan22_vae(comfy_root)
    path = tmp_path / "wan_vae.safetensors"
    save_file(comfy_state(model), str(path))
    rows = assert_verified([str(path)], capsys, VAE_OUTPUTS)
    want_decode = "(1, 3, 5, 32, 32)" if version == "wan21" else "(1, 3, 5, 64, 64)"  # 2.2: /16
    assert rows["decode"][0] == want_decode


def test_corrupted_wan_vae_conversion_fails(wan_vae_dir, tmp_path, capsys):
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(wan_vae_dir)
    with torch.no_grad():
        vae.decoder.conv_out.bias[0] += PERTURBATION
    vae.save_pretrained(tmp_path / "corrupted")
    out_dir = convert(tmp_path / "corrupted", tmp_path / "vae-jax")
    assert cli.main(["verify", str(out_dir), "--reference", str(wan_vae_dir)]) == 1
    rows = judged_rows(capsys.readouterr().out)
    assert rows["decode"][2].startswith("FAIL")
    assert rows["encode.mean"][2] == "OK"  # the encoder is untouched


# ----------------------------------------------------------------------------- refusals


def test_unsupported_class_lists_the_registry_kinds(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    assert cli.main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    for name in ("UNet2DConditionModel", "FluxTransformer2DModel", "AutoencoderKL",
                 "WanTransformer3DModel", "AutoencoderKLWan"):
        assert name in err


def test_reference_of_another_kind_is_refused(comfy_wan_file, wan_vae_dir, capsys):
    assert cli.main(["verify", str(comfy_wan_file), "--reference", str(wan_vae_dir)]) == 2
    err = capsys.readouterr().err
    assert "WanTransformer3DModel" in err and "AutoencoderKLWan" in err


# ----------------------------------------------------------------------------- the torch reference


def test_wan_vae_stage_renames_agree_with_diffusers_at_released_proportions(comfy_root):
    """Where diffusers' converter is right (dim_mult [1, 2, 4, 4], 2 resnets per stage), ours for the
    stage lists gives the same names and tensors."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    state = comfy_state(tiny_comfy_wan_vae(comfy_root, dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2))
    config = wan_keys.wan_vae_config({k: tuple(v.shape) for k, v in state.items()})
    ours = diffusers_wan_vae_from_original(dict(state), config)
    expected = convert_wan_vae_to_diffusers(dict(state))
    assert sorted(ours) == sorted(expected)
    assert all(ours[k] is expected[k] for k in expected)


@pytest.mark.parametrize("version", ["wan21", "wan22"])
def test_diffusers_wan_vae_from_the_reference_renames_matches_comfyui(comfy_root, version):
    """The torch reference itself: diffusers' AutoencoderKLWan with the renamed ComfyUI weights encodes
    and decodes like ComfyUI's WanVAE."""
    from diffusers import AutoencoderKLWan

    model = tiny_comfy_wan_vae(comfy_root) if version == "wan21" else tiny_comfy_wan22_vae(comfy_root)
    state = comfy_state(model)
    config = wan_keys.wan_vae_config({k: tuple(v.shape) for k, v in state.items()})
    vae = AutoencoderKLWan(**diffusers_kwargs(AutoencoderKLWan, config)).eval()
    vae.load_state_dict(diffusers_wan_vae_from_original(state, config), strict=True)
    side = 16 if version == "wan21" else 32
    gen = torch.Generator().manual_seed(1)
    video = torch.randn((1, 3, 5, side, side), generator=gen)
    with torch.no_grad():
        mean = model.encode(video)
        z = 3.0 * torch.randn(mean.shape, generator=gen)
        assert max_diff(vae.encode(video).latent_dist.mean.numpy(), mean.numpy()) <= TOLERANCE
        want = model.decode(z).clamp(-1.0, 1.0).numpy()  # ComfyUI clamps outside the module
        assert max_diff(vae.decode(z, return_dict=False)[0].numpy(), want) <= TOLERANCE
    assert np.isfinite(want).all()
