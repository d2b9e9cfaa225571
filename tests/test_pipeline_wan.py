"""pipelines/wan.py vs diffusers' WanPipeline / WanImageToVideoPipeline on tiny random models (fp32).

Covers T2V with classifier-free guidance (UniPC and FlowMatch Euler), Wan 2.2 A14B two experts,
Wan 2.1 I2V (mask + image latents + CLIP-vision embeddings), TI2V-5B `expand_timesteps` (T2V and
I2V), one compile per expert, and the input errors raised before any compute.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan as TorchAutoencoderKLWan
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers import WanImageToVideoPipeline as TorchWanI2VPipeline
from diffusers import WanPipeline as TorchWanPipeline
from flax import nnx
from PIL import Image

from jaxdiff.convert.place import load_state_dict
from jaxdiff.models_flax import vae_wan
from jaxdiff.models_flax.vae_wan import AutoencoderKLWan, WanVAEConfig
from jaxdiff.models_flax.wan import WanConfig, WanTransformer3DModel
from jaxdiff.pipelines.wan import WanPipeline
from jaxdiff.schedulers.flow_match import FlowMatchEulerConfig
from jaxdiff.schedulers.unipc import UniPCConfig

from wan_fixtures import (I2V_TEXT_TOKENS, IMAGE_TOKENS, tiny_torch_wan, tiny_wan_config,
                          torch_state_dict_numpy)

TOLERANCE = 1e-5  # max abs diff, fp32
SEED = 0
TEXT_TOKENS = 8
FRAMES = 5  # 4k + 1 → 2 latent frames
HEIGHT, WIDTH = 32, 48  # Wan 2.1 VAE /8 → 4×6 latents → 2×3 tokens per latent frame
GUIDANCE, GUIDANCE_2 = 5.0, 3.0
UNIPC = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
             solver_order=2)  # Wan2.1-T2V-1.3B scheduler_config.json (flow part)
EULER = dict(shift=3.0)
# diffusers' own tiny AutoencoderKLWan test config (z 16, /8, 4× in time)
TINY_VAE_21 = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                   temperal_downsample=[False, True, True])
# Wan 2.2 (TI2V-5B) structure: residual blocks, patch 2, /16, z 48
TINY_VAE_22 = dict(base_dim=8, decoder_base_dim=16, z_dim=48, dim_mult=[1, 2, 2, 2],
                   num_res_blocks=1, temperal_downsample=[False, True, True], is_residual=True,
                   in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                   latents_mean=list(vae_wan.WAN22_LATENTS_MEAN),
                   latents_std=list(vae_wan.WAN22_LATENTS_STD))
VAE_WEIGHT_STD, VAE_NORM_STD = 0.5, 0.2


# ----------------------------------------------------------------------------- builders


def _randomize_vae_(module: torch.nn.Module, seed: int = SEED) -> torch.nn.Module:
    """Seeded weights that keep activations O(1) (gammas 1 ± noise, convs ~1/√fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("bias"):
                p.copy_(VAE_NORM_STD * noise)
            elif name.endswith("gamma"):
                p.copy_(1.0 + VAE_NORM_STD * noise)
            else:
                p.copy_(VAE_WEIGHT_STD / np.sqrt(p[0].numel()) * noise)
    return module.eval()


def _flax_transformer(torch_model) -> WanTransformer3DModel:
    model = nnx.eval_shape(lambda: WanTransformer3DModel(
        WanConfig.from_dict(dict(torch_model.config)), rngs=nnx.Rngs(0)))
    load_state_dict(model, torch_state_dict_numpy(torch_model))
    return model


def _flax_vae(torch_vae) -> AutoencoderKLWan:
    vae = nnx.eval_shape(lambda: AutoencoderKLWan(WanVAEConfig.from_dict(dict(torch_vae.config)),
                                                  rngs=nnx.Rngs(0)))
    load_state_dict(vae, {k: v.numpy() for k, v in torch_vae.state_dict().items()})
    return vae


def _pair(seed: int = SEED, **overrides):
    torch_model = tiny_torch_wan(seed, **tiny_wan_config(**overrides))
    return torch_model, _flax_transformer(torch_model)


@pytest.fixture(scope="module")
def vae21():
    torch_vae = _randomize_vae_(TorchAutoencoderKLWan(**TINY_VAE_21))
    return torch_vae, _flax_vae(torch_vae)


@pytest.fixture(scope="module")
def t2v(vae21):
    return _pair(in_channels=16, out_channels=16)


def _embeds(batch: int = 2, tokens: int = TEXT_TOKENS, seed: int = SEED + 1,
            text_dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, tokens, text_dim), np.float32),
            rng.standard_normal((batch, tokens, text_dim), np.float32))


def _noise(shape, seed: int = SEED + 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, np.float32)


def _t(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def _diffusers(pipe_cls, transformer, vae, scheduler, *, transformer_2=None, boundary_ratio=None,
               expand_timesteps=False, **call):
    kw = dict(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler,
              transformer=transformer, transformer_2=transformer_2, boundary_ratio=boundary_ratio,
              expand_timesteps=expand_timesteps)
    if pipe_cls is TorchWanI2VPipeline:
        kw.update(image_encoder=None, image_processor=None)
    pipe = pipe_cls(**kw)
    image_embeds = call.pop("image_embeds", None)
    if image_embeds is not None:
        # diffusers 0.42 refuses image= together with image_embeds= (check_inputs) yet needs the
        # image for the VAE condition; stand in for the CLIP-vision encoder instead.
        pipe.encode_image = lambda image, device=None: torch.from_numpy(image_embeds)
    pipe.set_progress_bar_config(disable=True)
    call = {k: _t(v) if isinstance(v, np.ndarray) else v for k, v in call.items()}
    with torch.no_grad():
        out = pipe(**call, return_dict=False)[0]
    return out.numpy() if isinstance(out, torch.Tensor) else out


def _max_diff(ours, theirs) -> float:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max())


def _run_both(torch_models, ours_pipe, pipe_cls, scheduler, *, image=None, image_embeds=None,
              steps=2, guidance=GUIDANCE, guidance_2=None, batch=2, text_tokens=TEXT_TOKENS,
              height=HEIGHT, width=WIDTH, frames=FRAMES, output_type="np", **pipe_kw):
    """(ours, theirs) outputs for the same embeddings and initial latents."""
    text_dim = ours_pipe.transformer.config.text_dim
    prompt, negative = _embeds(batch, text_tokens, text_dim=text_dim)
    latents = _noise(ours_pipe.latent_shape(batch, height, width, frames))
    common = dict(height=height, width=width, num_frames=frames, num_inference_steps=steps,
                  guidance_scale=guidance, guidance_scale_2=guidance_2, output_type=output_type)
    call = dict(prompt_embeds=prompt, negative_prompt_embeds=negative, latents=latents, **common)
    if image is not None:
        call.update(image=Image.fromarray(image), image_embeds=image_embeds)
    theirs = _diffusers(pipe_cls, *torch_models, scheduler, **pipe_kw, **call)
    ours = ours_pipe(prompt, negative, image=None if image is None else image.astype(np.float32) / 255,
                     image_embeds=image_embeds, latents=latents, **common)
    return ours, theirs


# ----------------------------------------------------------------------------- T2V


@pytest.mark.parametrize("output_type", ["latent", "np"])
def test_t2v_unipc_with_guidance_matches_diffusers(t2v, vae21, output_type):
    (torch_model, model), (torch_vae, vae) = t2v, vae21
    pipe = WanPipeline(model, vae, UniPCConfig.from_dict(UNIPC))
    ours, theirs = _run_both((torch_model, torch_vae), pipe, TorchWanPipeline,
                             UniPCMultistepScheduler(**UNIPC), output_type=output_type)
    if output_type == "latent":
        assert ours.frames is None
        assert _max_diff(ours.latents, theirs) <= TOLERANCE
    else:
        assert ours.frames.shape == (2, FRAMES, HEIGHT, WIDTH, 3) and ours.frames.dtype == np.float32
        assert 0.0 <= ours.frames.min() and ours.frames.max() <= 1.0
        assert ours.frames.std() > 1e-3
        assert _max_diff(ours.frames, theirs) <= TOLERANCE


def test_t2v_flow_match_euler_without_guidance_matches_diffusers(t2v, vae21):
    (torch_model, model), (torch_vae, vae) = t2v, vae21
    pipe = WanPipeline(model, vae, FlowMatchEulerConfig.from_dict(EULER))
    ours, theirs = _run_both((torch_model, torch_vae), pipe, TorchWanPipeline,
                             FlowMatchEulerDiscreteScheduler(**EULER), guidance=1.0, steps=3,
                             output_type="latent")
    assert _max_diff(ours.latents, theirs) <= TOLERANCE


def test_negative_embeds_of_another_length_match_diffusers(t2v, vae21):
    """cond/uncond cannot share a batch then; two transformer calls instead."""
    (torch_model, model), (torch_vae, vae) = t2v, vae21
    prompt, _ = _embeds(1, TEXT_TOKENS)
    _, negative = _embeds(1, TEXT_TOKENS + 3, seed=7)
    latents = _noise((1, 16, 2, HEIGHT // 8, WIDTH // 8))
    common = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=2,
                  guidance_scale=GUIDANCE, output_type="latent")
    theirs = _diffusers(TorchWanPipeline, torch_model, torch_vae, UniPCMultistepScheduler(**UNIPC),
                        prompt_embeds=prompt, negative_prompt_embeds=negative, latents=latents,
                        **common)
    ours = WanPipeline(model, vae)(prompt, negative, latents=latents, **common)
    assert _max_diff(ours.latents, theirs) <= TOLERANCE


# ----------------------------------------------------------------------------- Wan 2.2 A14B


@pytest.fixture(scope="module")
def two_experts(t2v):
    return t2v, _pair(seed=SEED + 5, in_channels=16, out_channels=16)


def test_two_experts_match_diffusers_and_compile_once_each(two_experts, vae21):
    (torch_high, high), (torch_low, low) = two_experts
    torch_vae, vae = vae21
    pipe = WanPipeline(high, vae, UniPCConfig.from_dict(UNIPC), transformer_2=low,
                       boundary_ratio=0.875)
    # 4 steps at shift 3: timesteps 999, 900 (high-noise expert), 750, 500 (low-noise expert)
    ours, theirs = _run_both((torch_high, torch_vae), pipe, TorchWanPipeline,
                             UniPCMultistepScheduler(**UNIPC), steps=4, guidance_2=GUIDANCE_2,
                             output_type="latent", transformer_2=torch_low, boundary_ratio=0.875)
    assert _max_diff(ours.latents, theirs) <= TOLERANCE
    assert [step._cache_size() for step in pipe.denoise_steps] == [1, 1]


def test_two_experts_really_switch(two_experts, vae21):
    """Same run with the low-noise expert never reached differs (the switch is not a no-op)."""
    (_, high), (_, low) = two_experts
    _, vae = vae21
    prompt, negative = _embeds(1)
    kw = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=4,
              output_type="latent", seed=3)
    both = WanPipeline(high, vae, transformer_2=low, boundary_ratio=0.875)(prompt, negative, **kw)
    only_high = WanPipeline(high, vae, transformer_2=low, boundary_ratio=0.001)(prompt, negative, **kw)
    assert np.abs(both.latents - only_high.latents).max() > 1e-3


# ----------------------------------------------------------------------------- I2V


def _image(height=HEIGHT, width=WIDTH, seed=SEED + 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("output_type", ["latent", "np"])
def test_i2v_wan21_with_clip_embeds_matches_diffusers(vae21, output_type):
    torch_vae, vae = vae21
    # Wan 2.1 I2V: 16 noise + 4 mask + 16 image-latent channels, CLIP-vision tokens
    torch_model, model = _pair(in_channels=36, out_channels=16, image_dim=20, added_kv_proj_dim=24)
    image_embeds = _noise((1, IMAGE_TOKENS, 20), seed=9)
    pipe = WanPipeline(model, vae)
    # diffusers splits [image, text] context assuming 512 text tokens, so pass exactly 512
    ours, theirs = _run_both((torch_model, torch_vae), pipe, TorchWanI2VPipeline,
                             UniPCMultistepScheduler(**UNIPC), image=_image(),
                             image_embeds=image_embeds, text_tokens=I2V_TEXT_TOKENS,
                             output_type=output_type)
    got = ours.latents if output_type == "latent" else ours.frames
    assert _max_diff(got, theirs) <= TOLERANCE


def test_i2v_two_experts_without_clip_matches_diffusers(vae21):
    """Wan 2.2 A14B I2V: mask-concatenating experts, no image_dim, default boundary 0.9."""
    torch_vae, vae = vae21
    torch_high, high = _pair(in_channels=36, out_channels=16)
    torch_low, low = _pair(seed=SEED + 5, in_channels=36, out_channels=16)
    pipe = WanPipeline(high, vae, UniPCConfig.from_dict(UNIPC), transformer_2=low)  # 0.9 for I2V
    ours, theirs = _run_both((torch_high, torch_vae), pipe, TorchWanI2VPipeline,
                             UniPCMultistepScheduler(**UNIPC), image=_image(), steps=3,
                             guidance_2=GUIDANCE_2, output_type="latent",
                             transformer_2=torch_low, boundary_ratio=0.9)
    assert _max_diff(ours.latents, theirs) <= TOLERANCE


# ----------------------------------------------------------------------------- TI2V-5B


@pytest.fixture(scope="module")
def ti2v():
    torch_vae = _randomize_vae_(TorchAutoencoderKLWan(**TINY_VAE_22))
    return _pair(in_channels=48, out_channels=48), (torch_vae, _flax_vae(torch_vae))


@pytest.mark.parametrize("mode", ["t2v", "i2v"])
def test_ti2v_expand_timesteps_matches_diffusers(ti2v, mode):
    (torch_model, model), (torch_vae, vae) = ti2v
    pipe = WanPipeline(model, vae, UniPCConfig.from_dict(UNIPC), expand_timesteps=True)
    assert pipe.size_multiple == 32
    pipe_cls = TorchWanI2VPipeline if mode == "i2v" else TorchWanPipeline
    size = dict(height=32, width=64)
    ours, theirs = _run_both((torch_model, torch_vae), pipe, pipe_cls,
                             UniPCMultistepScheduler(**UNIPC), batch=1, output_type="np",
                             image=_image(**size) if mode == "i2v" else None,
                             expand_timesteps=True, **size)
    assert ours.frames.shape == (1, FRAMES, 32, 64, 3)
    assert _max_diff(ours.frames, theirs) <= TOLERANCE


# ----------------------------------------------------------------------------- behaviour and errors


def test_callback_seed_and_single_compile(t2v, vae21):
    (_, model), (_, vae) = t2v, vae21
    pipe = WanPipeline(model, vae)
    prompt, negative = _embeds(1)
    calls = []
    kw = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, output_type="latent")
    a = pipe(prompt, negative, num_inference_steps=3, seed=1,
             callback=lambda step, total: calls.append((step, total)), **kw)
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert pipe.denoise_steps[0]._cache_size() == 1
    b = pipe(prompt, negative, num_inference_steps=3, seed=1, **kw)
    c = pipe(prompt, negative, num_inference_steps=3, seed=2, **kw)
    np.testing.assert_array_equal(a.latents, b.latents)
    assert not np.array_equal(a.latents, c.latents)


@pytest.fixture(scope="module")
def t2v_pipe(t2v, vae21):
    return WanPipeline(t2v[1], vae21[1])


def _call(pipe, **kw):
    prompt, negative = _embeds(1)
    args = dict(height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=1)
    args.update(kw)
    return pipe(args.pop("prompt", prompt), args.pop("negative", negative), **args)


@pytest.mark.parametrize("frames", [4, 6, 0, 8])
def test_frame_count_must_be_4k_plus_1(t2v_pipe, frames):
    with pytest.raises(ValueError, match=r"4k \+ 1"):
        _call(t2v_pipe, num_frames=frames)


@pytest.mark.parametrize("height, width", [(HEIGHT + 8, WIDTH), (HEIGHT, 40), (0, WIDTH)])
def test_size_must_be_a_multiple_of_16(t2v_pipe, height, width):
    with pytest.raises(ValueError, match="multiples of 16"):
        _call(t2v_pipe, height=height, width=width)


def test_ti2v_size_must_be_a_multiple_of_32(ti2v):
    (_, model), (_, vae) = ti2v
    pipe = WanPipeline(model, vae, expand_timesteps=True)
    with pytest.raises(ValueError, match="multiples of 32"):
        _call(pipe, height=48, width=64)


def test_missing_expert_is_an_error(t2v, vae21):
    with pytest.raises(ValueError, match="missing expert"):
        WanPipeline(t2v[1], vae21[1], boundary_ratio=0.875)


def test_guidance_scale_2_needs_two_experts(t2v_pipe):
    with pytest.raises(ValueError, match="guidance_scale_2"):
        _call(t2v_pipe, guidance_scale_2=2.0)


def test_t2v_transformer_rejects_an_image(t2v_pipe):
    with pytest.raises(ValueError, match="text-to-video model"):
        _call(t2v_pipe, image=_image())


def test_i2v_transformer_needs_an_image(vae21):
    _, model = _pair(in_channels=36, out_channels=16)
    pipe = WanPipeline(model, vae21[1])
    with pytest.raises(ValueError, match="image-to-video model"):
        _call(pipe)
    with pytest.raises(ValueError, match="resize"):
        _call(pipe, image=_image(16, 16))


def test_transformer_channels_must_fit_the_vae(vae21):
    _, model = _pair(in_channels=4, out_channels=4)
    with pytest.raises(ValueError, match="z_dim"):
        WanPipeline(model, vae21[1])


def test_clip_embeds_required_for_wan21_i2v(vae21):
    _, model = _pair(in_channels=36, out_channels=16, image_dim=20, added_kv_proj_dim=24)
    pipe = WanPipeline(model, vae21[1])
    with pytest.raises(ValueError, match="image_embeds"):
        _call(pipe, image=_image())


def test_guidance_needs_negative_embeds(t2v_pipe):
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        _call(t2v_pipe, negative=None)
    out = _call(t2v_pipe, negative=None, guidance_scale=1.0, output_type="latent")
    assert np.isfinite(out.latents).all()


def test_wrong_shapes_raise(t2v_pipe):
    prompt, _ = _embeds(1)
    with pytest.raises(ValueError, match="prompt_embeds"):
        _call(t2v_pipe, prompt=prompt[..., :8])
    with pytest.raises(ValueError, match="latents"):
        _call(t2v_pipe, latents=np.zeros((1, 16, 3, 4, 6), np.float32))
