"""pipelines/flux.py vs diffusers' FluxPipeline: packing, ids, and a full tiny sampling run (fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as TorchAutoencoderKL
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers import FluxPipeline as TorchFluxPipeline
from diffusers import FluxTransformer2DModel as TorchFluxTransformer
from flax import nnx

from jaxdiff.convert.place import load_state_dict
from jaxdiff.models_flax.flux import FluxConfig, FluxTransformer2DModel
from jaxdiff.models_flax.vae_kl import AutoencoderKL, AutoencoderKLConfig
from jaxdiff.pipelines.flux import (
    FluxPipeline,
    latent_image_ids,
    pack_latents,
    text_ids,
    unpack_latents,
)
from jaxdiff.schedulers.flow_match import FlowMatchEulerConfig

from flux_fixtures import randomize_, tiny_flux_config, torch_state_dict_numpy

TOLERANCE = 1e-5  # max abs diff, fp32
SEED = 0
LATENT_CHANNELS = 4
HEIGHT, WIDTH = 16, 24  # pixels; the tiny VAE has factor 2 → 8×12 latents → 4×6 tokens
TEXT_TOKENS = 8
STEPS = 2
GUIDANCE = 3.5
# FLUX.1-dev scheduler_config.json (dynamic shifting), as diffusers would load it.
DEV_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096,
                     max_shift=1.15, num_train_timesteps=1000, shift=3.0,
                     use_dynamic_shifting=True)
SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
TINY_VAE = dict(  # Flux-like (16 → 4 latent channels here, shift/scale, no quant convs), 2 blocks
    block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1,
    latent_channels=LATENT_CHANNELS, down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=0.3611, shift_factor=0.1159,
    use_quant_conv=False, use_post_quant_conv=False)
VAE_WEIGHT_STD, VAE_NORM_STD = 0.5, 0.2


def _randomize_vae_(module: torch.nn.Module, seed: int = SEED) -> None:
    """Seeded weights that keep activations O(1) through the VAE (scales 1 ± noise, convs ~1/√fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("bias"):
                p.copy_(VAE_NORM_STD * noise)
            elif p.ndim == 1:
                p.copy_(1.0 + VAE_NORM_STD * noise)
            else:
                p.copy_(VAE_WEIGHT_STD / np.sqrt(p[0].numel()) * noise)


def _build(guidance_embeds: bool):
    """(torch transformer, torch VAE, our transformer, our VAE) with identical random weights."""
    config = tiny_flux_config(guidance_embeds, num_layers=1, num_single_layers=1)
    config["in_channels"] = 4 * LATENT_CHANNELS
    torch_transformer = randomize_(TorchFluxTransformer(**config), SEED).eval()
    torch_vae = TorchAutoencoderKL(**TINY_VAE).eval()
    _randomize_vae_(torch_vae)

    transformer = FluxTransformer2DModel(FluxConfig.from_dict(dict(torch_transformer.config)),
                                         rngs=nnx.Rngs(0))
    load_state_dict(transformer, torch_state_dict_numpy(torch_transformer))
    vae = AutoencoderKL(AutoencoderKLConfig.from_dict(dict(torch_vae.config)), rngs=nnx.Rngs(0))
    load_state_dict(vae, {k: v.numpy() for k, v in torch_vae.state_dict().items()})
    return torch_transformer, torch_vae, transformer, vae


@pytest.fixture(scope="module", params=[True, False], ids=["dev", "schnell"])
def models(request):
    return request.param, _build(request.param)


def _inputs(batch: int = 2, seed: int = SEED + 1):
    rng = np.random.default_rng(seed)
    tokens = (HEIGHT // 4) * (WIDTH // 4)
    return dict(
        prompt_embeds=rng.standard_normal((batch, TEXT_TOKENS, 32), np.float32),
        pooled_prompt_embeds=rng.standard_normal((batch, 32), np.float32),
        latents=rng.standard_normal((batch, tokens, 4 * LATENT_CHANNELS), np.float32),
    )


def _run_diffusers(torch_transformer, torch_vae, scheduler_json, inputs, output_type):
    pipe = TorchFluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_json), vae=torch_vae,
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=torch_transformer)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        return pipe(
            prompt_embeds=torch.from_numpy(inputs["prompt_embeds"]),
            pooled_prompt_embeds=torch.from_numpy(inputs["pooled_prompt_embeds"]),
            latents=torch.from_numpy(inputs["latents"]), height=HEIGHT, width=WIDTH,
            num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type=output_type,
            return_dict=False)[0]


# ----------------------------------------------------------------------------- packing and ids


def test_pack_matches_diffusers():
    x = np.random.default_rng(0).standard_normal((2, 16, 6, 10), np.float32)
    theirs = TorchFluxPipeline._pack_latents(torch.from_numpy(x), 2, 16, 6, 10).numpy()
    np.testing.assert_array_equal(np.asarray(pack_latents(x)), theirs)


def test_unpack_matches_diffusers_and_inverts_pack():
    packed = np.random.default_rng(0).standard_normal((2, 15, 64), np.float32)
    # diffusers takes pixel sizes and the VAE factor: 48×80 px / 8 → 6×10 latents → 3×5 tokens
    theirs = TorchFluxPipeline._unpack_latents(torch.from_numpy(packed), 48, 80, 8).numpy()
    ours = np.asarray(unpack_latents(packed, 6, 10))
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(np.asarray(pack_latents(ours)), packed)


def test_unpack_rejects_wrong_grid():
    with pytest.raises(ValueError, match="do not fit"):
        unpack_latents(np.zeros((1, 15, 64), np.float32), 8, 8)


def test_latent_image_ids_match_diffusers():
    theirs = TorchFluxPipeline._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32).numpy()
    ours = latent_image_ids(3, 5)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def test_text_ids_are_zeros():
    np.testing.assert_array_equal(text_ids(7), np.zeros((7, 3), np.float32))


# ----------------------------------------------------------------------------- full pipeline


def test_final_latents_match_diffusers(models):
    guidance_embeds, (torch_transformer, torch_vae, transformer, vae) = models
    scheduler_json = DEV_SCHEDULER if guidance_embeds else SCHNELL_SCHEDULER
    inputs = _inputs()
    theirs = _run_diffusers(torch_transformer, torch_vae, scheduler_json, inputs, "latent")
    pipe = FluxPipeline(transformer, vae, FlowMatchEulerConfig.from_dict(scheduler_json))
    ours = pipe(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"], height=HEIGHT,
                width=WIDTH, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                latents=inputs["latents"], output_type="latent")
    assert ours.images is None
    diff = np.abs(ours.latents - theirs.numpy()).max()
    assert diff <= TOLERANCE, diff


def test_images_match_diffusers(models):
    guidance_embeds, (torch_transformer, torch_vae, transformer, vae) = models
    scheduler_json = DEV_SCHEDULER if guidance_embeds else SCHNELL_SCHEDULER
    inputs = _inputs()
    theirs = _run_diffusers(torch_transformer, torch_vae, scheduler_json, inputs, "np")
    pipe = FluxPipeline(transformer, vae, FlowMatchEulerConfig.from_dict(scheduler_json))
    ours = pipe(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"], height=HEIGHT,
                width=WIDTH, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                latents=inputs["latents"])
    assert ours.images.shape == (2, HEIGHT, WIDTH, 3) == theirs.shape
    assert ours.images.dtype == np.float32
    assert 0.0 <= ours.images.min() and ours.images.max() <= 1.0
    assert ours.images.std() > 1e-3  # a real picture, not a clipped constant
    diff = np.abs(ours.images - theirs).max()
    assert diff <= TOLERANCE, diff


@pytest.fixture(scope="module")
def dev_pipeline():
    _, _, transformer, vae = _build(True)
    return FluxPipeline(transformer, vae, FlowMatchEulerConfig.from_dict(DEV_SCHEDULER))


def test_denoise_step_compiles_once_for_all_steps(dev_pipeline):
    inputs = _inputs(batch=1)
    calls = []
    dev_pipeline(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"], height=HEIGHT,
                 width=WIDTH, num_inference_steps=3, seed=1, output_type="latent",
                 callback=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert dev_pipeline.denoise_step._cache_size() == 1


def test_seed_is_deterministic_and_unpacked_latents_are_accepted(dev_pipeline):
    inputs = _inputs(batch=1)
    kw = dict(height=HEIGHT, width=WIDTH, num_inference_steps=1, output_type="latent")
    a = dev_pipeline(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"], seed=3, **kw)
    b = dev_pipeline(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"], seed=3, **kw)
    c = dev_pipeline(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"], seed=4, **kw)
    np.testing.assert_array_equal(a.latents, b.latents)
    assert not np.array_equal(a.latents, c.latents)
    noise = np.asarray(unpack_latents(inputs["latents"], HEIGHT // 2, WIDTH // 2))
    d = dev_pipeline(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"], latents=noise, **kw)
    e = dev_pipeline(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"],
                     latents=inputs["latents"], **kw)
    np.testing.assert_array_equal(d.latents, e.latents)


@pytest.mark.parametrize("height, width", [(HEIGHT + 2, WIDTH), (HEIGHT, 10), (0, WIDTH)])
def test_bad_height_or_width_raises(dev_pipeline, height, width):
    inputs = _inputs(batch=1)
    with pytest.raises(ValueError, match="multiples of 4"):
        dev_pipeline(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"], height=height,
                     width=width, num_inference_steps=1)


def test_wrong_embedding_shapes_raise(dev_pipeline):
    inputs = _inputs(batch=1)
    with pytest.raises(ValueError, match="prompt_embeds"):
        dev_pipeline(inputs["prompt_embeds"][..., :16], inputs["pooled_prompt_embeds"],
                     height=HEIGHT, width=WIDTH, num_inference_steps=1)
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        dev_pipeline(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"][:, :16],
                     height=HEIGHT, width=WIDTH, num_inference_steps=1)


def test_callback_interrupt_propagates(dev_pipeline):
    inputs = _inputs(batch=1)

    def interrupt(step, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dev_pipeline(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"], height=HEIGHT,
                     width=WIDTH, num_inference_steps=2, callback=interrupt)
