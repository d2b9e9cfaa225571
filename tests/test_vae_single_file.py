"""LDM-layout VAE single files (BFL `ae.safetensors`, ComfyUI's `vae` folder) → our AutoencoderKL.

The reference is ComfyUI's own `comfy.ldm` Encoder/Decoder, built the way `comfy/sd.py` builds them
(`AutoencodingEngine` for Flux's VAE without quant convs, `AutoencoderKL` with them for SD), at a tiny
size with random weights; its `state_dict()` is the LDM file. diffusers' `convert_ldm_vae_checkpoint`
cross-checks the key map. ComfyUI is unpacked from the snapshot in `../shared/comfyui/`; its VAE
modules need `psutil` (imported by comfy.model_management) besides torch.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from jaxdiff.convert.place import load_state_dict
from jaxdiff.convert.vae_keys import (is_ldm_vae, ldm_vae_config, ldm_vae_key_map, ldm_vae_rename,
                                      ldm_vae_state_dict, ldm_vae_transform, ldm_vae_transform_shape,
                                      vae_subset)
from jaxdiff.models_flax.vae_kl import FLUX_VAE_CONFIG, AutoencoderKL
from vae_fixtures import randomize_vae_

TOLERANCE = 1e-5  # max abs diff, fp32
SEED = 0
BATCH, IMAGE_SIDE = 2, 16

COMFY_TARBALL = (Path(__file__).resolve().parents[1].parent / "shared" / "comfyui"
                 / "comfyui-a125cd84.tar.gz")
ENCODER = "comfy.ldm.modules.diffusionmodules.model.Encoder"
DECODER = "comfy.ldm.modules.diffusionmodules.model.Decoder"
REGULARIZER = "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"
FULL_CHECKPOINT_KEY = "model.diffusion_model.input_blocks.0.0.weight"  # another component's tensor

# ComfyUI's ddconfig (comfy/sd.py); channels stay multiples of LDM's fixed 32 GroupNorm groups.
TINY = {
    "flux": dict(double_z=True, z_channels=16, resolution=256, in_channels=3, out_ch=3, ch=32,
                 ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0),
    "sd": dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=32,
               ch_mult=[1, 2, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0),
}
REAL = {
    "flux": dict(TINY["flux"], ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2),
    "sd": dict(TINY["sd"], ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2),
}
# (model kind, key prefix): Flux full checkpoints use `vae.`, SD ones `first_stage_model.`.
CASES = {"flux_ae": ("flux", ""), "flux_full_checkpoint": ("flux", "vae."),
         "sd_vae": ("sd", ""), "sd_full_checkpoint": ("sd", "first_stage_model.")}


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """ComfyUI's `comfy` package (CPU mode), unpacked from the snapshot unless already imported."""
    if not COMFY_TARBALL.is_file():
        pytest.skip(f"ComfyUI snapshot not found at {COMFY_TARBALL}")
    pytest.importorskip("torch")
    if "comfy" not in sys.modules:
        root = _unpack_comfy(tmp_path_factory.mktemp("comfyui"))
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import comfy.ldm.models.autoencoder  # noqa: F401

    return comfy


def _unpack_comfy(root: Path) -> Path:
    """Extract the snapshot's `comfy/` package into `root` (`tar --strip-components=1`)."""
    with tarfile.open(COMFY_TARBALL) as tar:
        members = []
        for member in tar.getmembers():
            _, _, inner = member.name.partition("/")
            if inner == "comfy" or inner.startswith("comfy/"):
                member.name = inner
                members.append(member)
        tar.extractall(root, members=members, filter="data")
    return root


def comfy_vae(comfy, ddconfig: dict):
    """The module comfy/sd.py builds for an LDM VAE: AutoencoderKL with quant convs for SD, plain
    AutoencodingEngine (no quant convs) for Flux's ae.safetensors."""
    autoencoder = comfy.ldm.models.autoencoder
    if ddconfig["z_channels"] == 4:
        return autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=ddconfig["z_channels"])
    return autoencoder.AutoencodingEngine(
        regularizer_config={"target": REGULARIZER},
        encoder_config={"target": ENCODER, "params": ddconfig},
        decoder_config={"target": DECODER, "params": ddconfig})


@pytest.fixture(scope="module")
def tiny_models(comfy):
    """`{kind: (ComfyUI module, its state dict as numpy)}` for the tiny Flux and SD VAEs."""
    models = {}
    for kind, ddconfig in TINY.items():
        model = randomize_vae_(comfy_vae(comfy, ddconfig).float()).eval()
        models[kind] = model, {k: v.numpy() for k, v in model.state_dict().items()}
    return models


def write_ldm_file(state: dict, prefix: str, path: Path) -> Path:
    """Save `state` as a single file; a prefixed one also holds a tensor of another component."""
    tensors = {prefix + k: np.ascontiguousarray(v) for k, v in state.items()}
    if prefix:
        tensors[FULL_CHECKPOINT_KEY] = np.zeros((4, 4, 3, 3), np.float32)
    save_file(tensors, str(path))
    return path


def load_ours(path: Path) -> AutoencoderKL:
    """read → sniff → config from shapes → rename/transform → place, as the loader does."""
    stored = load_file(str(path))
    assert is_ldm_vae(stored)
    names = vae_subset(stored)
    tensors = {name: stored[key] for name, key in names.items()}
    config = ldm_vae_config({k: v.shape for k, v in tensors.items()})
    vae = AutoencoderKL(config, rngs=nnx.Rngs(SEED))
    load_state_dict(vae, ldm_vae_state_dict(tensors, len(config.block_out_channels)), source=str(path))
    return vae


@pytest.mark.parametrize("case", list(CASES))
def test_encode_and_decode_match_comfyui(case, tiny_models, tmp_path):
    import torch

    kind, prefix = CASES[case]
    model, state = tiny_models[kind]
    vae = load_ours(write_ldm_file(state, prefix, tmp_path / "vae.safetensors"))
    rng = np.random.default_rng(SEED)
    image = rng.standard_normal((BATCH, 3, IMAGE_SIDE, IMAGE_SIDE), np.float32)
    factor = 2 ** (len(TINY[kind]["ch_mult"]) - 1)
    latent = rng.standard_normal((BATCH, TINY[kind]["z_channels"], IMAGE_SIDE // factor,
                                  IMAGE_SIDE // factor), np.float32)
    with torch.no_grad():
        want_mean = model.encode(torch.from_numpy(image)).numpy()  # posterior mode
        want_image = model.decode(torch.from_numpy(latent)).numpy()
    got_mean = np.asarray(vae.encode(image)[0])
    got_image = np.asarray(vae.decode(latent))
    assert got_mean.shape == want_mean.shape and got_image.shape == want_image.shape
    encode_diff = float(np.max(np.abs(got_mean - want_mean)))
    decode_diff = float(np.max(np.abs(got_image - want_image)))
    print(f"{case}: encode max|Δ| {encode_diff:.2e}, decode max|Δ| {decode_diff:.2e}")
    assert encode_diff <= TOLERANCE
    assert decode_diff <= TOLERANCE


def test_tensor_by_tensor_equals_whole_state_dict(tiny_models):
    _, state = tiny_models["sd"]
    n = len(TINY["sd"]["ch_mult"])
    whole = ldm_vae_state_dict(state, n)
    streamed = {}
    for key, array in state.items():
        streamed.update(ldm_vae_state_dict({key: array}, n))
    assert streamed.keys() == whole.keys()
    for key in whole:
        np.testing.assert_array_equal(streamed[key], whole[key])


@pytest.mark.parametrize("kind", list(TINY))
def test_renaming_matches_diffusers_converter_and_model(kind, tiny_models):
    import torch

    single_file_utils = pytest.importorskip("diffusers.loaders.single_file_utils")
    diffusers_models = pytest.importorskip("diffusers")
    model, state = tiny_models[kind]
    config = ldm_vae_config({k: v.shape for k, v in state.items()})
    ours = ldm_vae_state_dict(state, len(config.block_out_channels))
    theirs = single_file_utils.convert_ldm_vae_checkpoint(model.state_dict(), config.to_dict())
    assert ours.keys() == theirs.keys()
    for key, array in ours.items():
        np.testing.assert_array_equal(array, theirs[key].numpy(), err_msg=key)
    with torch.device("meta"):
        torch_vae = diffusers_models.AutoencoderKL.from_config(config.to_dict())
    assert set(torch_vae.state_dict()) == set(ours)
    assert {k: tuple(v.shape) for k, v in torch_vae.state_dict().items()} == {
        k: v.shape for k, v in ours.items()}


def test_real_flux_ae_shapes_give_flux_vae_config(comfy):
    import torch

    with torch.device("meta"):  # full-size shapes, no memory
        model = comfy_vae(comfy, REAL["flux"])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ldm_vae_config(shapes) == FLUX_VAE_CONFIG
    assert ldm_vae_config({"vae." + k: s for k, s in shapes.items()}) == FLUX_VAE_CONFIG


def test_real_sd_vae_shapes_give_sd_config(comfy):
    import torch

    with torch.device("meta"):
        model = comfy_vae(comfy, REAL["sd"])
    config = ldm_vae_config({k: tuple(v.shape) for k, v in model.state_dict().items()})
    assert config.block_out_channels == (128, 256, 512, 512)
    assert (config.layers_per_block, config.latent_channels, config.norm_num_groups) == (2, 4, 32)
    assert config.use_quant_conv and config.use_post_quant_conv and config.mid_block_add_attention
    assert (config.scaling_factor, config.shift_factor) == (0.18215, None)


def test_missing_encoder_conv_out_is_named(tiny_models, tmp_path):
    _, state = tiny_models["flux"]
    path = write_ldm_file({k: v for k, v in state.items() if k != "encoder.conv_out.weight"}, "",
                          tmp_path / "broken.safetensors")
    shapes = {k: v.shape for k, v in load_file(str(path)).items()}
    with pytest.raises(ValueError, match=r"encoder\.conv_out\.weight"):
        ldm_vae_config(shapes)


def test_mid_attention_absent_is_detected(tiny_models):
    _, state = tiny_models["flux"]
    state = {k: v for k, v in state.items() if ".mid.attn_1." not in k}
    config = ldm_vae_config({k: v.shape for k, v in state.items()})
    assert not config.mid_block_add_attention
    load_state_dict(AutoencoderKL(config, rngs=nnx.Rngs(SEED)),
                    ldm_vae_state_dict(state, len(config.block_out_channels)))


def test_sniff_accepts_ldm_layouts_only():
    ldm = ["encoder.down.0.block.0.conv1.weight", "decoder.mid.block_1.conv1.weight"]
    assert is_ldm_vae(ldm)
    assert is_ldm_vae(["vae." + k for k in ldm] + ["model.diffusion_model.img_in.weight"])
    assert is_ldm_vae(["first_stage_model." + k for k in ldm])
    assert not is_ldm_vae(["encoder.down_blocks.0.resnets.0.conv1.weight",
                           "decoder.mid_block.resnets.0.conv1.weight"])  # diffusers names
    assert not is_ldm_vae(ldm + ["decoder.mid.block_1.mix_factor"])  # SVD's temporal decoder
    assert not is_ldm_vae(["double_blocks.0.img_attn.qkv.weight"])  # Flux transformer


@pytest.mark.parametrize("ldm, diffusers", [
    ("encoder.down.1.block.0.nin_shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
    ("encoder.down.2.downsample.conv.bias", "encoder.down_blocks.2.downsamplers.0.conv.bias"),
    ("encoder.mid.block_2.norm1.weight", "encoder.mid_block.resnets.1.norm1.weight"),
    ("decoder.mid.attn_1.norm.bias", "decoder.mid_block.attentions.0.group_norm.bias"),
    ("decoder.mid.attn_1.proj_out.weight", "decoder.mid_block.attentions.0.to_out.0.weight"),
    ("decoder.up.0.block.2.conv2.weight", "decoder.up_blocks.3.resnets.2.conv2.weight"),
    ("decoder.up.3.upsample.conv.weight", "decoder.up_blocks.0.upsamplers.0.conv.weight"),
    ("decoder.norm_out.weight", "decoder.conv_norm_out.weight"),
    ("vae.post_quant_conv.bias", "post_quant_conv.bias"),
])
def test_rename_table(ldm, diffusers):
    assert ldm_vae_rename(ldm, num_up_blocks=4) == diffusers


def test_attention_conv_kernels_become_linear_weights():
    kernel = np.arange(16, dtype=np.float32).reshape(4, 4, 1, 1)
    assert ldm_vae_transform("encoder.mid.attn_1.q.weight", kernel).shape == (4, 4)
    assert ldm_vae_transform_shape("vae.decoder.mid.attn_1.proj_out.weight", (4, 4, 1, 1)) == (4, 4)
    assert ldm_vae_transform("encoder.mid.attn_1.q.weight", kernel[..., 0, 0]).shape == (4, 4)
    conv = np.zeros((8, 4, 3, 3), np.float32)
    assert ldm_vae_transform("encoder.conv_in.weight", conv).shape == conv.shape


def test_unknown_keys_are_listed():
    _, unknown = ldm_vae_key_map(["encoder.conv_in.weight", "encoder.down.0.attn.0.q.weight",
                                  "decoder.up.7.block.0.conv1.weight"], num_up_blocks=2)
    assert unknown == ["encoder.down.0.attn.0.q.weight", "decoder.up.7.block.0.conv1.weight"]
    with pytest.raises(ValueError, match=r"attention inside encoder/decoder levels"):
        ldm_vae_rename("encoder.down.0.attn.0.q.weight", 2)
    with pytest.raises(ValueError, match=r"model\.diffusion_model\.x\.weight"):
        ldm_vae_state_dict({"model.diffusion_model.x.weight": np.zeros(1)}, 2)
