"""Parity of models_flax/vae_kl.py with diffusers' AutoencoderKL on tiny random-weight configs (fp32)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from flax import nnx

from jaxdiff.convert.place import load_state_dict, param_targets, resolve_path, to_flax_layout
from jaxdiff.models_flax.vae_kl import FLUX_VAE_CONFIG, AutoencoderKL, AutoencoderKLConfig
from parity import abstract_model, build_vae_pair, max_diff

TOLERANCE = 1e-5  # max abs diff, fp32
SEED = 0

TINY = dict(  # like diffusers' own AutoencoderKL tests
    block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
CONFIGS = {
    "sd_quant_convs": dict(TINY),
    "flux_like_16ch": dict(
        block_out_channels=(16, 32, 32), norm_num_groups=8, layers_per_block=2, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
    "no_mid_attention": dict(TINY, mid_block_add_attention=False),
}

# The real black-forest-labs/FLUX.1-dev vae/config.json.
FLUX_CONFIG_JSON = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.30.0.dev0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True, "in_channels": 3,
    "latent_channels": 16, "latents_mean": None, "latents_std": None, "layers_per_block": 2,
    "mid_block_add_attention": True, "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024,
    "scaling_factor": 0.3611, "shift_factor": 0.1159, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False, "use_quant_conv": False,
}


def abstract_vae(cfg: AutoencoderKLConfig) -> AutoencoderKL:
    return abstract_model(AutoencoderKL, cfg)


def build_pair(overrides: dict) -> tuple[TorchAutoencoderKL, AutoencoderKL]:
    return build_vae_pair(TorchAutoencoderKL, AutoencoderKL, AutoencoderKLConfig, overrides)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    return build_pair(CONFIGS[request.param])


def random_input(shape, seed: int = SEED + 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_encode_mean_and_logvar_match_diffusers(pair):
    torch_vae, ours = pair
    x = random_input((2, 3, 32, 32))
    with torch.no_grad():
        dist = torch_vae.encode(x).latent_dist
    mean, logvar = ours.encode(jnp.asarray(x.numpy()))
    assert max_diff(mean, dist.mean) <= TOLERANCE
    assert max_diff(logvar, dist.logvar) <= TOLERANCE
    np.testing.assert_array_equal(np.asarray(ours.encode_mode(jnp.asarray(x.numpy()))),
                                  np.asarray(mean))


def test_decode_matches_diffusers(pair):
    torch_vae, ours = pair
    f = 2 ** (len(ours.config.block_out_channels) - 1)
    z = random_input((2, ours.config.latent_channels, 32 // f, 32 // f))
    with torch.no_grad():
        ref = torch_vae.decode(z).sample
    out = ours.decode(jnp.asarray(z.numpy()))
    assert out.shape == (2, 3, 32, 32)
    assert max_diff(out, ref) <= TOLERANCE


def test_forward_reconstruction_matches_diffusers():
    torch_vae, ours = build_pair(CONFIGS["sd_quant_convs"])
    x = random_input((1, 3, 16, 16))
    with torch.no_grad():
        ref = torch_vae(x, sample_posterior=False).sample
    assert max_diff(ours(jnp.asarray(x.numpy())), ref) <= TOLERANCE


def test_jit_decode_matches_eager_and_diffusers():
    torch_vae, ours = build_pair(CONFIGS["sd_quant_convs"])
    z = random_input((2, 4, 16, 16))
    graphdef, state = nnx.split(ours)
    jitted = jax.jit(lambda state, z: nnx.merge(graphdef, state).decode(z))
    out = jitted(state, jnp.asarray(z.numpy()))
    with torch.no_grad():
        ref = torch_vae.decode(z).sample
    # XLA fuses differently under jit, so jit ≡ eager to fp32 rounding (~1e-6), not bit for bit.
    assert max_diff(out, ours.decode(jnp.asarray(z.numpy()))) <= TOLERANCE
    assert max_diff(out, ref) <= TOLERANCE


def test_encode_sample_draws_around_mean():
    _, ours = build_pair(CONFIGS["sd_quant_convs"])
    x = jnp.asarray(random_input((1, 3, 16, 16)).numpy())
    mean, logvar = ours.encode(x)
    draw = ours.encode_sample(x, jax.random.key(0))
    eps = (draw - mean) / jnp.exp(0.5 * logvar)
    assert draw.shape == mean.shape and abs(float(jnp.std(eps)) - 1.0) < 0.3


def test_config_round_trips_through_save_pretrained(tmp_path):
    TorchAutoencoderKL(**CONFIGS["flux_like_16ch"]).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    cfg = AutoencoderKLConfig.from_dict(raw)
    for key, value in cfg.to_dict().items():
        expected = raw[key]
        assert value == (tuple(expected) if isinstance(expected, list) else expected), key
    assert AutoencoderKLConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_flux_config_constant_matches_real_config_json():
    assert AutoencoderKLConfig.from_dict(FLUX_CONFIG_JSON) == FLUX_VAE_CONFIG


def test_flux_sized_model_has_diffusers_parameter_names_and_shapes():
    with torch.device("meta"):  # shapes without memory
        torch_vae = TorchAutoencoderKL.from_config(FLUX_CONFIG_JSON)
    targets = param_targets(abstract_vae(FLUX_VAE_CONFIG))
    expected = {}
    for key, tensor in torch_vae.state_dict().items():
        path = resolve_path(key, targets)
        assert path is not None, key
        view = np.broadcast_to(np.float32(0), tuple(tensor.shape))  # zero-copy stand-in
        expected[path] = to_flax_layout(str(path[-1]), view).shape
    assert expected == {path: tuple(var.shape) for path, var in targets.items()}


def test_load_state_dict_rejects_quant_conv_mismatch():
    torch_vae = TorchAutoencoderKL(**TINY)
    ours = abstract_vae(AutoencoderKLConfig.from_dict(dict(TINY, use_quant_conv=False)))
    with pytest.raises(ValueError, match="quant_conv"):
        load_state_dict(ours, {k: v.numpy() for k, v in torch_vae.state_dict().items()})


def test_unsupported_block_type_is_rejected():
    with pytest.raises(ValueError, match="down_block_types"):
        AutoencoderKL(AutoencoderKLConfig(down_block_types=("AttnDownEncoderBlock2D",)),
                      rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", ["flux_like_16ch", "sd_quant_convs"])
def test_scale_and_unscale_latents_match_pipeline_formulas(name):
    torch_vae = TorchAutoencoderKL(**CONFIGS[name])
    ours = abstract_vae(AutoencoderKLConfig.from_dict(dict(torch_vae.config)))
    z = random_input((2, torch_vae.config.latent_channels, 4, 4))
    cfg = torch_vae.config
    shift = cfg.shift_factor or 0.0  # SD pipelines have no shift
    # FluxImg2ImgPipeline._encode_vae_image and FluxPipeline.__call__ (output_type != "latent").
    ref_scaled = (z - shift) * cfg.scaling_factor
    ref_unscaled = z / cfg.scaling_factor + shift
    assert max_diff(ours.scale_latents(jnp.asarray(z.numpy())), ref_scaled) <= TOLERANCE
    assert max_diff(ours.unscale_latents(jnp.asarray(z.numpy())), ref_unscaled) <= TOLERANCE
    round_trip = ours.unscale_latents(ours.scale_latents(jnp.asarray(z.numpy())))
    assert max_diff(round_trip, z) <= TOLERANCE
