"""Parity of models_flax/vae_wan.py with diffusers' AutoencoderKLWan on tiny random-weight configs (fp32)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan as TorchAutoencoderKLWan
from diffusers.models.autoencoders import autoencoder_kl_wan as torch_wan
from flax import nnx

from jaxdiff.convert.place import param_targets, resolve_path, to_flax_layout
from jaxdiff.models_flax import vae_wan
from jaxdiff.models_flax.vae_wan import (WAN21_VAE_CONFIG, WAN22_VAE_CONFIG, AutoencoderKLWan,
                                         WanVAEConfig, patchify, unpatchify)
from parity import abstract_model, build_vae_pair, max_diff

TOLERANCE = 1e-5  # max abs diff, fp32
SEED = 0
FRAMES = 9  # 1 + 2·4: the first-frame chunk plus two 4-frame chunks
LATENT_SCALE = 3.0  # decode inputs this large drive some outputs past ±1, so the final clamp matters

CONFIGS = {
    # diffusers' own AutoencoderKLWan test config.
    "wan21_tiny": dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                       temperal_downsample=[False, True, True]),
    # Wan 2.1 structure (widths change, 2 resnets per stage) at a small width.
    "wan21_widths": dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                         temperal_downsample=[False, True, True]),
    # Wan 2.2 (TI2V-5B) structure: residual up/down blocks, patch 2, spatial /16, z 48, wider decoder.
    "wan22_tiny": dict(base_dim=8, decoder_base_dim=16, z_dim=48, dim_mult=[1, 2, 2, 2],
                       num_res_blocks=2, temperal_downsample=[False, True, True], is_residual=True,
                       in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                       latents_mean=list(vae_wan.WAN22_LATENTS_MEAN),
                       latents_std=list(vae_wan.WAN22_LATENTS_STD)),
}
SIZE = {"wan21_tiny": 16, "wan21_widths": 16, "wan22_tiny": 32}  # pixels; latents are 2×2


def abstract_vae(cfg: WanVAEConfig) -> AutoencoderKLWan:
    return abstract_model(AutoencoderKLWan, cfg)


def build_pair(overrides: dict) -> tuple[TorchAutoencoderKLWan, AutoencoderKLWan]:
    return build_vae_pair(TorchAutoencoderKLWan, AutoencoderKLWan, WanVAEConfig, overrides)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def pair(request):
    return (request.param, *build_pair(CONFIGS[request.param]))


def random_input(shape, seed: int = SEED + 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_encode_mean_and_logvar_match_diffusers(pair):
    name, torch_vae, ours = pair
    x = random_input((1, 3, FRAMES, SIZE[name], SIZE[name]))
    with torch.no_grad():
        dist = torch_vae.encode(x).latent_dist
    mean, logvar = ours.encode(jnp.asarray(x.numpy()))
    assert mean.shape == (1, ours.config.z_dim, 3, 2, 2)
    assert max_diff(mean, dist.mean) <= TOLERANCE
    assert max_diff(logvar, dist.logvar) <= TOLERANCE


def test_decode_matches_diffusers_including_clamp(pair):
    name, torch_vae, ours = pair
    z = LATENT_SCALE * random_input((1, ours.config.z_dim, 3, 2, 2))
    with torch.no_grad():
        ref = torch_vae.decode(z).sample
    out = ours.decode(jnp.asarray(z.numpy()))
    assert out.shape == (1, 3, FRAMES, SIZE[name], SIZE[name])
    assert max_diff(out, ref) <= TOLERANCE
    assert float(np.max(np.abs(np.asarray(out)))) <= 1.0


def test_clamp_is_exercised_by_the_decode_test():
    torch_vae, _ = build_pair(CONFIGS["wan22_tiny"])
    z = LATENT_SCALE * random_input((1, 48, 3, 2, 2))
    with torch.no_grad():
        ref = torch_vae.decode(z).sample
    assert bool((ref.abs() == 1.0).any())


def test_chunk_steps_compile_once_per_chunk_kind_whatever_the_length():
    torch_vae, ours = build_pair(CONFIGS["wan21_tiny"])
    enc0, dec0 = vae_wan.encode_step._cache_size(), vae_wan.decode_step._cache_size()
    short = jnp.asarray(random_input((1, 3, 9, 16, 16)).numpy())
    ours.decode(ours.encode_mode(short))
    enc1, dec1 = vae_wan.encode_step._cache_size(), vae_wan.decode_step._cache_size()
    x = random_input((1, 3, 13, 16, 16))  # 4 encoder chunks, 4 latent frames
    mean = ours.encode_mode(jnp.asarray(x.numpy()))
    out = ours.decode(mean)
    # first chunk + every later chunk: at most two programs each, none new for a longer video
    assert enc1 - enc0 <= 2 and dec1 - dec0 <= 2
    assert (vae_wan.encode_step._cache_size(), vae_wan.decode_step._cache_size()) == (enc1, dec1)
    with torch.no_grad():
        ref_mean = torch_vae.encode(x).latent_dist.mean
        ref_out = torch_vae.decode(ref_mean).sample
    assert mean.shape == (1, 16, 4, 2, 2) and out.shape == (1, 3, 13, 16, 16)
    assert max_diff(mean, ref_mean) <= TOLERANCE
    assert max_diff(out, ref_out) <= TOLERANCE


def test_batched_encode_drops_frames_past_the_last_whole_chunk_like_diffusers():
    torch_vae, ours = build_pair(CONFIGS["wan21_tiny"])
    x = random_input((2, 3, 7, 16, 16))  # 1 + 4 + 2 left over
    with torch.no_grad():
        ref = torch_vae.encode(x).latent_dist.mean
    mean = ours.encode_mode(jnp.asarray(x.numpy()))
    assert mean.shape == tuple(ref.shape) == (2, 16, 2, 2, 2)
    assert max_diff(mean, ref) <= TOLERANCE


@pytest.mark.parametrize("name", ["wan21_tiny", "wan22_tiny"])
def test_normalize_latents_match_pipeline_formulas(name):
    torch_vae = TorchAutoencoderKLWan(**CONFIGS[name])
    ours = abstract_vae(WanVAEConfig.from_dict(dict(torch_vae.config)))
    cfg = torch_vae.config
    z = random_input((2, cfg.z_dim, 3, 2, 2))
    mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)
    # WanImageToVideoPipeline.prepare_latents (encode side) and WanPipeline.__call__ (before decode).
    ref_normalized = (z - mean) * inv_std
    ref_denormalized = z / inv_std + mean
    assert max_diff(ours.normalize_latents(jnp.asarray(z.numpy())), ref_normalized) <= TOLERANCE
    assert max_diff(ours.denormalize_latents(jnp.asarray(z.numpy())), ref_denormalized) <= TOLERANCE
    round_trip = ours.denormalize_latents(ours.normalize_latents(jnp.asarray(z.numpy())))
    assert max_diff(round_trip, z) <= TOLERANCE


def test_normalize_latents_rejects_stats_of_the_wrong_length():
    ours = abstract_vae(WanVAEConfig.from_dict(CONFIGS["wan21_widths"]))  # z 4, default 16 stats
    with pytest.raises(ValueError, match="latents_mean has 16 entries, z_dim is 4"):
        ours.normalize_latents(jnp.zeros((1, 4, 1, 2, 2)))


@pytest.mark.parametrize("p", [2, 4])
def test_patchify_and_unpatchify_match_diffusers(p):
    x = random_input((2, 3, 5, 8, 12))
    ours = patchify(jnp.transpose(jnp.asarray(x.numpy()), (0, 2, 3, 4, 1)), p)  # channels-last
    ref = torch_wan.patchify(x, patch_size=p)
    assert max_diff(jnp.transpose(ours, (0, 4, 1, 2, 3)), ref) == 0.0
    back = unpatchify(ours, p)
    assert max_diff(jnp.transpose(back, (0, 4, 1, 2, 3)), torch_wan.unpatchify(ref, patch_size=p)) == 0.0
    assert max_diff(jnp.transpose(back, (0, 4, 1, 2, 3)), x) == 0.0


def test_config_round_trips_through_save_pretrained(tmp_path):
    TorchAutoencoderKLWan(**CONFIGS["wan22_tiny"]).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    cfg = WanVAEConfig.from_dict(raw)
    for key, value in cfg.to_dict().items():
        expected = raw[key]
        assert value == (tuple(expected) if isinstance(expected, list) else expected), key
    assert WanVAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_wan21_config_constant_matches_diffusers_defaults():
    with torch.device("meta"):  # shapes without memory
        torch_vae = TorchAutoencoderKLWan()
    assert WanVAEConfig.from_dict(dict(torch_vae.config)) == WAN21_VAE_CONFIG


@pytest.mark.parametrize("cfg", [WAN21_VAE_CONFIG, WAN22_VAE_CONFIG], ids=["wan21", "wan22"])
def test_full_size_model_has_diffusers_parameter_names_and_shapes(cfg):
    with torch.device("meta"):
        torch_vae = TorchAutoencoderKLWan(**{k: list(v) if isinstance(v, tuple) else v
                                             for k, v in cfg.to_dict().items()})
    targets = param_targets(abstract_vae(cfg))
    expected = {}
    for key, tensor in torch_vae.state_dict().items():
        path = resolve_path(key, targets)
        assert path is not None, key
        view = np.broadcast_to(np.float32(0), tuple(tensor.shape))  # zero-copy stand-in
        expected[path] = to_flax_layout(str(path[-1]), view).shape
    assert expected == {path: tuple(var.shape) for path, var in targets.items()}


def test_cache_slots_match_diffusers_causal_conv_count():
    torch_vae = TorchAutoencoderKLWan(**CONFIGS["wan21_widths"])
    ours = abstract_vae(WanVAEConfig.from_dict(CONFIGS["wan21_widths"]))
    counts = torch_vae._cached_conv_counts
    # diffusers allocates one slot per causal conv but only those with time padding (or a resample
    # time conv) ever use one; 1×1×1 shortcuts never do.
    used = {part: sum(1 for m in getattr(torch_vae, part).modules()
                      if isinstance(m, torch_wan.WanCausalConv3d) and (m._padding[4] > 0 or m.stride[0] == 2))
            for part in ("encoder", "decoder")}
    assert ours.encoder.cache_size == used["encoder"] <= counts["encoder"]
    assert ours.decoder.cache_size == used["decoder"] <= counts["decoder"]


def test_mismatched_temperal_downsample_is_rejected():
    with pytest.raises(ValueError, match="temperal_downsample"):
        AutoencoderKLWan(WanVAEConfig(base_dim=4, z_dim=4, temperal_downsample=(True,)),
                         rngs=nnx.Rngs(0))
