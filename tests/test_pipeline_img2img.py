"""Image-to-image and video-to-video against diffusers' own pipelines, and `sample` from any step.

diffusers' FluxImg2ImgPipeline and WanVideoToVideoPipeline run with the same tiny random weights,
the same start image / video and the same noise (their `randn_tensor` returns ours); FluxImg2Img
encodes with a posterior *sample*, which is patched to the mode (what we and WanVideoToVideo use),
so both sides start from the same latents. fp32, max abs diff ≤1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers import FluxImg2ImgPipeline as TorchFluxImg2Img
from diffusers import WanVideoToVideoPipeline as TorchWanV2V
from diffusers.pipelines.flux import pipeline_flux_img2img
from diffusers.pipelines.wan import pipeline_wan_video2video

from jaxdiff.pipelines.flux import FluxPipeline
from jaxdiff.pipelines.wan import WanPipeline
from jaxdiff.schedulers.flow_match import FlowMatchEulerConfig
from jaxdiff.schedulers.unipc import UniPCConfig

import test_pipeline_flux as flux_case
import test_pipeline_wan as wan_case

TOLERANCE = 1e-5  # max abs diff, fp32
STEPS = 4


def _max_diff(ours, theirs) -> float:
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max())


def _fixed_noise(monkeypatch, module, noise: np.ndarray) -> None:
    """diffusers' `randn_tensor` in `module` returns `noise` (checked against the shape it asks for)."""
    def randn_tensor(shape, generator=None, device=None, dtype=None, **kw):
        assert tuple(shape) == noise.shape, (shape, noise.shape)
        return torch.from_numpy(noise).to(dtype or torch.float32)

    monkeypatch.setattr(module, "randn_tensor", randn_tensor)


# ----------------------------------------------------------------------------- Flux


@pytest.fixture(scope="module")
def flux_models():
    return flux_case._build(True)


def _flux_inputs(batch: int = 2):
    rng = np.random.default_rng(5)
    h, w = flux_case.HEIGHT, flux_case.WIDTH
    return dict(prompt_embeds=rng.standard_normal((batch, flux_case.TEXT_TOKENS, 32), np.float32),
                pooled_prompt_embeds=rng.standard_normal((batch, 32), np.float32),
                image=rng.uniform(0.0, 1.0, (batch, h, w, 3)).astype(np.float32))


def _flux_pipe(flux_models) -> FluxPipeline:
    _, _, transformer, vae = flux_models
    return FluxPipeline(transformer, vae, FlowMatchEulerConfig.from_dict(flux_case.DEV_SCHEDULER))


@pytest.mark.parametrize("output_type", ["latent", "np"])
def test_flux_image_to_image_matches_diffusers(flux_models, monkeypatch, output_type):
    torch_transformer, torch_vae, _, _ = flux_models
    pipe, inputs = _flux_pipe(flux_models), _flux_inputs()
    h, w = flux_case.HEIGHT, flux_case.WIDTH
    noise = np.random.default_rng(6).standard_normal(pipe.latent_shape(2, h, w), np.float32)
    _fixed_noise(monkeypatch, pipeline_flux_img2img, noise)
    monkeypatch.setattr(pipeline_flux_img2img, "retrieve_latents",
                        lambda encoded, generator=None, sample_mode="sample": encoded.latent_dist.mode())
    theirs_pipe = TorchFluxImg2Img(
        scheduler=FlowMatchEulerDiscreteScheduler(**flux_case.DEV_SCHEDULER), vae=torch_vae,
        text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=torch_transformer)
    theirs_pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = theirs_pipe(
            prompt_embeds=torch.from_numpy(inputs["prompt_embeds"]),
            pooled_prompt_embeds=torch.from_numpy(inputs["pooled_prompt_embeds"]),
            image=torch.from_numpy(inputs["image"]).permute(0, 3, 1, 2), strength=0.6, height=h,
            width=w, num_inference_steps=STEPS, guidance_scale=flux_case.GUIDANCE,
            output_type=output_type, return_dict=False)[0]
    calls = []
    ours = pipe(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"], image=inputs["image"],
                denoise=0.6, height=h, width=w, num_inference_steps=STEPS,
                guidance_scale=flux_case.GUIDANCE, latents=noise, output_type=output_type,
                callback=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]  # int(4 − 4·0.6) = 1: steps 1..3 of 4
    out = ours.latents if output_type == "latent" else ours.images
    assert _max_diff(out, theirs.numpy() if output_type == "latent" else theirs) <= TOLERANCE


def test_flux_sample_resumes_from_any_step(flux_models):
    pipe, inputs = _flux_pipe(flux_models), _flux_inputs(batch=1)
    h, w = flux_case.HEIGHT, flux_case.WIDTH
    embeds = (inputs["prompt_embeds"], inputs["pooled_prompt_embeds"])
    noise = pipe.prepare_latents(1, h, w, seed=2)
    whole = pipe.sample(None, *embeds, noise=noise, num_inference_steps=STEPS)
    half = pipe.sample(None, *embeds, noise=noise, num_inference_steps=STEPS, end_step=2)
    resumed = pipe.sample(half, *embeds, num_inference_steps=STEPS, start_step=2)
    assert resumed.shape == (1, pipe.num_channels_latents, h // 2, w // 2)
    assert _max_diff(resumed, whole) <= TOLERANCE
    # the whole run equals __call__'s (raw latents = its packed model-space latents, unscaled)
    called = pipe(*embeds, height=h, width=w, num_inference_steps=STEPS, latents=noise, output_type="latent")
    assert _max_diff(pipe.to_model(whole), called.latents) <= TOLERANCE


def test_flux_sample_takes_a_full_sigma_table(flux_models):
    pipe, inputs = _flux_pipe(flux_models), _flux_inputs(batch=1)
    h, w = flux_case.HEIGHT, flux_case.WIDTH
    embeds = (inputs["prompt_embeds"], inputs["pooled_prompt_embeds"])
    noise = pipe.prepare_latents(1, h, w, seed=2)
    table = pipe.schedule(STEPS, h, w).sigmas  # [N+1], as ComfyUI hands sigmas over
    by_table = pipe.sample(None, *embeds, noise=noise, sigmas=table)
    by_steps = pipe.sample(None, *embeds, noise=noise, num_inference_steps=STEPS)
    assert _max_diff(by_table, by_steps) <= TOLERANCE


def test_flux_callback_returning_false_stops_the_loop(flux_models):
    pipe, inputs = _flux_pipe(flux_models), _flux_inputs(batch=1)
    embeds = (inputs["prompt_embeds"], inputs["pooled_prompt_embeds"])
    noise = pipe.prepare_latents(1, flux_case.HEIGHT, flux_case.WIDTH, seed=2)
    seen = []

    def stop_after_two(done, total):
        seen.append(done)
        return done < 2

    stopped = pipe.sample(None, *embeds, noise=noise, num_inference_steps=STEPS, callback=stop_after_two)
    two = pipe.sample(None, *embeds, noise=noise, num_inference_steps=STEPS, end_step=2)
    assert seen == [1, 2]
    assert _max_diff(stopped, two) <= TOLERANCE


@pytest.mark.parametrize("denoise", [0.0, 1.5, -0.1])
def test_flux_denoise_out_of_range_is_refused(flux_models, denoise):
    pipe, inputs = _flux_pipe(flux_models), _flux_inputs(batch=1)
    with pytest.raises(ValueError, match="denoise must be in"):
        pipe(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"], image=inputs["image"],
             denoise=denoise, height=flux_case.HEIGHT, width=flux_case.WIDTH, num_inference_steps=STEPS)


def test_flux_image_of_another_size_is_refused(flux_models):
    pipe, inputs = _flux_pipe(flux_models), _flux_inputs(batch=1)
    with pytest.raises(ValueError, match="resize it first"):
        pipe(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"], image=inputs["image"][:, :8],
             height=flux_case.HEIGHT, width=flux_case.WIDTH, num_inference_steps=STEPS)


# ----------------------------------------------------------------------------- Wan


@pytest.fixture(scope="module")
def wan_models():
    torch_vae = wan_case._randomize_vae_(wan_case.TorchAutoencoderKLWan(**wan_case.TINY_VAE_21))
    torch_model, transformer = wan_case._pair(in_channels=16, out_channels=16)
    return torch_model, torch_vae, transformer, wan_case._flax_vae(torch_vae)


def _wan_video(batch: int = 2) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.uniform(0.0, 1.0, (batch, wan_case.FRAMES, wan_case.HEIGHT, wan_case.WIDTH, 3)).astype(np.float32)


@pytest.mark.parametrize("scheduler", ["unipc", "euler"])
def test_wan_video_to_video_matches_diffusers(wan_models, monkeypatch, scheduler):
    torch_model, torch_vae, transformer, vae = wan_models
    if scheduler == "unipc":
        theirs_scheduler, ours_config = UniPCMultistepScheduler(**wan_case.UNIPC), UniPCConfig(**wan_case.UNIPC)
    else:
        theirs_scheduler = FlowMatchEulerDiscreteScheduler(**wan_case.EULER)
        ours_config = FlowMatchEulerConfig(**wan_case.EULER)
    pipe = WanPipeline(transformer, vae, ours_config)
    prompt, negative = wan_case._embeds(2)
    video = _wan_video()
    h, w, f = wan_case.HEIGHT, wan_case.WIDTH, wan_case.FRAMES
    noise = np.random.default_rng(8).standard_normal(pipe.latent_shape(2, h, w, f), np.float32)
    _fixed_noise(monkeypatch, pipeline_wan_video2video, noise)
    theirs_pipe = TorchWanV2V(tokenizer=None, text_encoder=None, vae=torch_vae, scheduler=theirs_scheduler,
                              transformer=torch_model)
    theirs_pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = theirs_pipe(
            video=torch.from_numpy(video).permute(0, 1, 4, 2, 3), prompt_embeds=torch.from_numpy(prompt),
            negative_prompt_embeds=torch.from_numpy(negative), height=h, width=w, strength=0.5,
            num_inference_steps=STEPS, guidance_scale=wan_case.GUIDANCE, output_type="latent",
            return_dict=False)[0]
    calls = []
    ours = pipe(prompt, negative, video=video, denoise=0.5, height=h, width=w, num_frames=f,
                num_inference_steps=STEPS, guidance_scale=wan_case.GUIDANCE, latents=noise,
                output_type="latent", callback=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]  # 4 − int(4·0.5) = 2: steps 2..3 of 4
    assert _max_diff(ours.latents, theirs.numpy()) <= TOLERANCE


def test_wan_sample_resumes_from_any_step_with_euler(wan_models):
    _, _, transformer, vae = wan_models
    pipe = WanPipeline(transformer, vae, FlowMatchEulerConfig(**wan_case.EULER))
    prompt, negative = wan_case._embeds(1)
    noise = pipe.prepare_latents(1, wan_case.HEIGHT, wan_case.WIDTH, wan_case.FRAMES, seed=4)
    whole = pipe.sample(None, prompt, negative, noise=noise, num_inference_steps=STEPS)
    half = pipe.sample(None, prompt, negative, noise=noise, num_inference_steps=STEPS, end_step=1)
    resumed = pipe.sample(half, prompt, negative, num_inference_steps=STEPS, start_step=1)
    assert _max_diff(resumed, whole) <= TOLERANCE
    called = pipe(prompt, negative, height=wan_case.HEIGHT, width=wan_case.WIDTH,
                  num_frames=wan_case.FRAMES, num_inference_steps=STEPS, latents=noise,
                  output_type="latent")
    assert _max_diff(pipe.to_model(whole), called.latents) <= TOLERANCE


def test_wan_video_with_the_wrong_frame_count_is_refused(wan_models):
    _, _, transformer, vae = wan_models
    pipe = WanPipeline(transformer, vae, UniPCConfig(**wan_case.UNIPC))
    prompt, negative = wan_case._embeds(1)
    with pytest.raises(ValueError, match="num_frames=9"):
        pipe(prompt, negative, video=_wan_video(1), height=wan_case.HEIGHT, width=wan_case.WIDTH,
             num_frames=9, num_inference_steps=STEPS)
