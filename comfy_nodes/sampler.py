"""`JaxSampler`'s work: ComfyUI's own noise, sigmas and conditioning, then the whole loop in JAX.

Everything ComfyUI defines is taken from ComfyUI so a seed means the same picture as core KSampler:
noise from `comfy.sample.prepare_noise`, sigmas from the MODEL's model_sampling ("simple" scheduler,
KSampler's denoise rule), conditioning through `comfy.samplers.process_conds` (the model's
extra_conds: pooled output, guidance, I2V concat and CLIP features, TI2V time_dim_concat), the
timestep each step hands the model from `model_sampling.timestep`. The loop itself is
`pipelines.denoiser.sample` (one jitted step, no host round trip beyond the progress tick).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

import comfy.model_management
import comfy.sample
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils

from ..pipelines import denoiser as dn
from .model import entry_of, to_numpy

SCHEDULER = "simple"
COND_NAMES = {"c_crossattn": "context", "y": "y", "guidance": "guidance", "c_concat": "c_concat",
              "clip_fea": "clip_fea", "time_dim_concat": "time_dim_concat"}


def model_sampling(model, shift: float):
    """The MODEL's model_sampling (ModelSamplingSD3 / Flux patches included), with `shift` when > 0."""
    ms = model.get_model_object("model_sampling")
    if shift and shift > 0:
        ms = copy.deepcopy(ms)
        if hasattr(ms, "multiplier"):
            ms.set_parameters(shift=shift, multiplier=ms.multiplier)
        else:
            ms.set_parameters(shift=shift)
    return ms


def sigmas_for(ms, steps: int, denoise: float) -> torch.Tensor:
    """KSampler's sigma table: `steps` of the schedule, or the last `steps` of `steps / denoise`."""
    if denoise is None or denoise > 0.9999:
        return comfy.samplers.calculate_sigmas(ms, SCHEDULER, steps).cpu()
    if denoise <= 0.0:
        raise ValueError(f"denoise must be in (0, 1], got {denoise}")
    total = int(steps / denoise)
    return comfy.samplers.calculate_sigmas(ms, SCHEDULER, total)[-(steps + 1):].cpu()


def _model_inputs(conds: list, batch: int, which: str) -> tuple[dict, torch.Tensor | None]:
    """One conditioning entry's model inputs by `Denoiser.prepare`'s names, and its denoise_mask."""
    if len(conds) != 1:
        raise ValueError(f"JaxSampler takes one {which} conditioning entry, got {len(conds)} (combined or "
                         "area conditioning): use KSampler for those")
    entry = conds[0]
    for key in ("control", "gligen", "hooks"):
        if entry.get(key) is not None:
            raise ValueError(f"{key} in the {which} conditioning is not supported by JaxSampler; use KSampler")
    out, mask = {}, None
    for key, cond in entry["model_conds"].items():
        value = cond.process_cond(batch_size=batch, area=None, device="cpu").cond
        if key == "denoise_mask":
            mask = value
        elif key in COND_NAMES:
            out[COND_NAMES[key]] = to_numpy(value)
        else:
            raise ValueError(f"JaxSampler does not support the {which} conditioning input {key!r} yet")
    return out, mask


def sample(model, seed: int, steps: int, cfg: float, guidance: float, shift: float, sampler_name: str,
           positive, negative, latent: dict, denoise: float = 1.0, model_2=None,
           boundary: float = 0.875) -> dict:
    """Run JaxSampler; returns the LATENT dict (raw VAE space, like KSampler's)."""
    entries = [entry_of(model)] + ([] if model_2 is None else [entry_of(model_2)])
    if sampler_name not in dn.SAMPLERS:
        raise ValueError(f"sampler_name must be one of {', '.join(dn.SAMPLERS)}, got {sampler_name!r}")
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    ms = model_sampling(model, shift)
    sigmas = sigmas_for(ms, steps, denoise)
    base = model.model
    if torch.count_nonzero(latent_image) > 0:
        latent_image = base.process_latent_in(latent_image)
    if guidance is not None and guidance >= 0:
        positive = [[c, {**extra, "guidance": guidance}] for c, extra in positive]
        negative = [[c, {**extra, "guidance": guidance}] for c, extra in negative]
    conds = {"positive": comfy.sampler_helpers.convert_cond(positive),
             "negative": comfy.sampler_helpers.convert_cond(negative)}
    denoise_mask = None
    if "noise_mask" in latent:  # inpainting, Wan 2.2 image-to-video (first frame kept)
        denoise_mask = comfy.sampler_helpers.prepare_mask(latent["noise_mask"], noise.shape, "cpu")
    conds = comfy.samplers.process_conds(base, noise, conds, "cpu", latent_image=latent_image,
                                         denoise_mask=denoise_mask, seed=seed)
    batch = noise.shape[0]
    cond, mask = _model_inputs(conds["positive"], batch, "positive")
    uncond, _ = _model_inputs(conds["negative"], batch, "negative") if cfg != 1.0 else (None, None)

    t = [ms.timestep(s.reshape(1).repeat(batch)).float() for s in sigmas[:-1]]
    if mask is not None:
        t = [base.process_timestep(ti, x=noise, denoise_mask=mask) for ti in t]
    timesteps = np.stack([to_numpy(ti) for ti in t])
    x = ms.noise_scaling(sigmas[0], noise, latent_image, False)
    expert = None
    if model_2 is not None:  # Wan 2.2 A14B: the high-noise expert while sigma >= boundary
        expert = [0 if float(s) >= boundary else 1 for s in sigmas[:-1]]

    bar = comfy.utils.ProgressBar(len(sigmas) - 1)

    def tick(done, total):
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, total)

    def kept(i):  # what ComfyUI's KSamplerX0Inpaint puts in the kept region at step i
        return to_numpy(base.scale_latent_inpaint(x=None, sigma=sigmas[i].reshape(1), noise=noise,
                                                  latent_image=latent_image))

    out = dn.sample(to_numpy(x), to_numpy(sigmas), timesteps, cond, uncond,
                    denoisers=[e.get() for e in entries], expert=expert, cfg=cfg, sampler=sampler_name,
                    callback=tick, mask=to_numpy(denoise_mask), clean=to_numpy(latent_image),
                    kept=None if denoise_mask is None else kept)
    samples = ms.inverse_noise_scaling(sigmas[-1], torch.from_numpy(out.copy()))  # out: a read-only host view
    result = latent.copy()
    result["samples"] = base.process_latent_out(samples.to(torch.float32))
    return result
