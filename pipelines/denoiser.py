"""A loaded transformer called the way ComfyUI calls its diffusion model, and a sampling loop over it.

ComfyUI's `BaseModel._apply_model` calls `diffusion_model(x, timestep, context=…, **extra_conds)`
with x in the model's latent space (unpacked, `latent_format.process_in` applied), the timestep from
`model_sampling.timestep(sigma)` (Flux: sigma; Wan: sigma·1000) and the extra conds by ComfyUI's names
(`y`, `guidance`, `clip_fea`, `time_dim_concat`; `c_concat` is already joined onto x). `FluxDenoiser` and
`WanDenoiser` take exactly that, as numpy, and return the model output (the flow velocity) as numpy:
the node pack wraps them for core samplers, and `sample` runs a whole loop on device for `JaxSampler`.

No recompiles per prompt: text is padded to a few fixed lengths (`text_bucket`) with the padding masked
out of attention (so the result equals the unpadded one), so prompts of similar length share one
compiled program. The first call of each new program logs its compile time (cold / warm / cached).

Host numpy in and out; imports models_flax (types), schedulers, kernels through placement; no torch.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..schedulers import unipc
from ..sharding.mesh import param_bytes
from .compile_cache import track_compiles
from .flux import PATCH, latent_image_ids, pack_latents, text_ids, unpack_latents
from .inputs import param_dtype
from .loop import ProgressCallback, denoise_loop
from .placement import Placement, attention_context, check_attention_args, free, to_host

log = logging.getLogger("jaxdiff")

TEXT_BUCKETS = (128, 256, 512)  # then multiples of the last one
SAMPLERS = ("euler", "unipc")


def text_bucket(length: int) -> int:
    """The padded text length for `length` tokens: the smallest bucket that holds it, else the next
    multiple of the largest bucket."""
    for bucket in TEXT_BUCKETS:
        if length <= bucket:
            return bucket
    return math.ceil(length / TEXT_BUCKETS[-1]) * TEXT_BUCKETS[-1]


def pad_text(context: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`[B, S, D]` → (`[B, text_bucket(S), D]` zero-padded, keep-mask `[B, text_bucket(S)]` bool)."""
    b, s, d = context.shape
    padded_len = text_bucket(s)
    keep = np.ones((b, s), bool) if mask is None else np.asarray(mask, bool).reshape(b, s)
    padded = np.zeros((b, padded_len, d), context.dtype)
    padded[:, :s] = context
    full = np.zeros((b, padded_len), bool)
    full[:, :s] = keep
    return padded, full


def _f32(x, what: str) -> np.ndarray | None:
    if x is None:
        return None
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} must be a float array, got dtype {x.dtype}")
    return x.astype(np.float32, copy=False)


def _batch(x: np.ndarray, batch: int, what: str) -> np.ndarray:
    """`x` with leading dim `batch` (a leading 1 is repeated, as ComfyUI repeats conds to the batch)."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1 or batch % x.shape[0] == 0:
        return np.repeat(x, batch // x.shape[0], axis=0)
    raise ValueError(f"{what} has batch {x.shape[0]}, which does not fit the latent batch {batch}")


class Denoiser:
    """Shared machinery: the transformer's state, placement, the jitted forward and sampling step, and
    compile logging per input shape. Subclasses define `prepare` (host checks → jit inputs) and
    `_velocity` (the traced forward)."""

    family = ""
    dims = 0  # latent spatial dims (2: images, 3: video)

    def __init__(self, transformer: nnx.Module, *, mesh=None, attention: str | None = None,
                 name: str = ""):
        check_attention_args(attention, None)
        self.config = transformer.config
        self.graph = nnx.graphdef(transformer)
        self.state = nnx.state(transformer)
        self.placement = Placement(mesh)
        self.mesh, self.attention = self.placement.mesh, attention
        self.dtype = param_dtype(transformer)
        self.name = name or type(transformer).__name__
        self._forward = jax.jit(self._forward_raw)
        self._step = jax.jit(self._step_raw, static_argnames=("sampler",))
        self._compiled: set = set()

    # -- size

    @property
    def nbytes(self) -> int:
        """Bytes of the transformer's parameters (all shards)."""
        return param_bytes(self.state)

    def release(self) -> None:
        """Free the parameters' device memory now; the denoiser is unusable afterwards."""
        free(self.state)
        self.state = None

    # -- the forward ComfyUI calls

    def __call__(self, x, timestep, context, **conds) -> np.ndarray:
        """The model output (flow velocity) for latents `x`, as float32 numpy of x's shape."""
        inputs = self.prepare(x, timestep, context, **conds)
        args = {k: self.placement.put(v) for k, v in inputs.items()}
        with self._tracking("forward", inputs):
            out = self._forward(self._live_state(), **args)
        return to_host(out)

    def _live_state(self):
        if self.state is None:
            raise RuntimeError(f"{self.name} was released (its device memory freed); load it again")
        return self.state

    def _forward_raw(self, state, x, timestep, **inputs):
        model = nnx.merge(self.graph, state)
        return self._velocity(model, x, timestep, **inputs)

    @contextlib.contextmanager
    def _tracking(self, what: str, inputs: Mapping[str, np.ndarray | None]):
        """The attention options for the call; on a program's first call with these input shapes,
        count its compile and log it (cold / warm / cached)."""
        key = (what,) + tuple((k, None if v is None else tuple(np.shape(v))) for k, v in sorted(inputs.items()))
        with attention_context(self.attention, None, self.mesh):
            if key in self._compiled:
                yield
                return
            with track_compiles() as stats:
                yield
            self._compiled.add(key)
            shape = np.shape(inputs["x"])
            log.info("jaxdiff: %s %s for latents %s (batch %d): %s", self.name, what,
                     "×".join(map(str, shape[1:])), shape[0], stats.describe())

    # -- a whole sampling loop on device

    def _step_raw(self, state, x, solver, timestep, sigma, sigma_next, cond, uncond, cfg, keep, *,
                  sampler: str):
        """One step as ComfyUI's samplers compute it: denoised = x − v·σ (CFG on the denoised
        predictions), then Euler `x + (x − denoised)/σ · (σ_next − σ)` or a UniPC step. `keep`: None, or
        (mask, clean latent, what the kept region holds at σ) — ComfyUI's KSamplerX0Inpaint: the model
        sees x with the kept region (mask 0) replaced, and its prediction there is the clean latent."""
        model = nnx.merge(self.graph, state)
        sigma = sigma.astype(jnp.float32)
        x_in = x if keep is None else x * keep[0] + keep[2] * (1.0 - keep[0])

        def denoised(inputs):
            v = self._velocity(model, x_in.astype(jnp.float32), timestep, **inputs).astype(jnp.float32)
            return x_in - v * sigma

        out = denoised(cond)
        if uncond is not None:
            out_uncond = denoised(uncond)
            out = out_uncond + (out - out_uncond) * cfg
        if keep is not None:
            out = out * keep[0] + keep[1] * (1.0 - keep[0])
        d = (x - out) / sigma
        if sampler == "unipc":
            return unipc.step(solver, d, x)
        return x + d * (sigma_next - sigma), solver


class FluxDenoiser(Denoiser):
    """ComfyUI's `Flux.forward(x, timestep, context, y, guidance)` on our `FluxTransformer2DModel`:
    x `[B, C, h, w]` unpacked (h, w even), timestep `[B]` sigma, context `[B, S, D_txt]` (T5),
    y `[B, D_pooled]` (CLIP pooled; zeros when None, as ComfyUI), guidance `[B]` (dev only)."""

    family = "flux"
    dims = 2

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels // (PATCH * PATCH)

    def prepare(self, x, timestep, context, y=None, guidance=None, c_concat=None, **unsupported) -> dict:
        _refuse(unsupported, "Flux")
        c = self.config
        x = _f32(x, "latent")
        if x.ndim != 4:
            raise ValueError(f"Flux latents must be [B, C, H, W], got shape {x.shape}")
        b, ch, h, w = x.shape
        if c_concat is not None:
            ch += np.shape(c_concat)[1]
        if ch != self.latent_channels:
            raise ValueError(f"the latent has {ch} channels but this Flux model takes {self.latent_channels} "
                             f"(in_channels {c.in_channels} = 4 × {self.latent_channels}); use a latent "
                             "made for it (EmptySD3LatentImage for 16-channel Flux) and the matching VAE")
        if h % PATCH or w % PATCH:
            raise ValueError(f"latent size {h}×{w} is not a multiple of Flux's 2×2 patch: the image "
                             f"height and width must be multiples of {8 * PATCH} pixels")
        context = _check_text(context, c.joint_attention_dim, b, "Flux",
                              "T5-XXL conditioning (DualCLIPLoader type flux → CLIPTextEncode); "
                              "CLIP-only conditioning does not fit Flux")
        pooled = np.zeros((b, c.pooled_projection_dim), np.float32) if y is None else _f32(y, "pooled_output")
        if pooled.ndim != 2 or pooled.shape[1] < c.pooled_projection_dim:
            raise ValueError(f"the conditioning's pooled_output has shape {pooled.shape}; this Flux model "
                             f"needs [B, {c.pooled_projection_dim}] (CLIP-L pooled)")
        pooled = _batch(pooled[:, :c.pooled_projection_dim], b, "pooled_output")
        if c.guidance_embeds:
            if guidance is None:
                raise ValueError("this Flux model (dev) needs a guidance value; the conditioning has none")
            guidance = _batch(_f32(guidance, "guidance").reshape(-1), b, "guidance")
        else:
            guidance = None  # schnell has no guidance embedding; ComfyUI ignores the value too
        context, mask = pad_text(context)
        out = dict(x=x, timestep=_batch(_f32(timestep, "timestep").reshape(-1), b, "timestep"),
                   context=context, mask=mask, y=pooled, guidance=guidance)
        if c_concat is not None:
            out["c_concat"] = _batch(_f32(c_concat, "c_concat"), b, "c_concat")
        return out

    def _velocity(self, model, x, timestep, context, mask, y, guidance, c_concat=None):
        if c_concat is not None:
            x = jnp.concatenate([x, c_concat], axis=1)
        b, _, h, w = x.shape
        dtype = self.dtype
        out = model(hidden_states=pack_latents(x).astype(dtype), encoder_hidden_states=context.astype(dtype),
                    pooled_projections=y.astype(dtype), timestep=timestep,
                    img_ids=jnp.asarray(latent_image_ids(h // PATCH, w // PATCH)),
                    txt_ids=jnp.asarray(text_ids(context.shape[1])), guidance=guidance,
                    encoder_attention_mask=mask)  # [B, S_img, 4C]
        return unpack_latents(out.astype(jnp.float32), h, w)


class WanDenoiser(Denoiser):
    """ComfyUI's `WanModel.forward(x, timestep, context, clip_fea, time_dim_concat)` on our
    `WanTransformer3DModel`: x `[B, C, T, H, W]` (I2V: with the mask + image channels joined), timestep
    `[B]` (sigma·1000) or `[B, T']` per latent frame (Wan 2.2 with a denoise mask), context
    `[B, S, D_txt]` (UMT5), clip_fea `[B, 257, 1280]` (CLIP-vision penultimate; I2V), time_dim_concat
    `[B, C, T2, H, W]` latents appended on the frame axis (their output frames are dropped)."""

    family = "wan"
    dims = 3

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels

    def prepare(self, x, timestep, context, clip_fea=None, time_dim_concat=None, c_concat=None,
                **unsupported) -> dict:
        _refuse(unsupported, "Wan")
        c = self.config
        x = _f32(x, "latent")
        if x.ndim != 5:
            raise ValueError(f"Wan latents must be [B, C, T, H, W], got shape {x.shape}")
        b, ch, t, h, w = x.shape
        extra = 0 if c_concat is None else np.shape(c_concat)[1]
        if ch + extra != c.in_channels:
            raise ValueError(f"the latent has {ch + extra} channels ({ch} latent + {extra} conditioning) but "
                             f"this Wan model takes {c.in_channels}; a Wan 2.2 TI2V-5B latent has 48 "
                             "channels, Wan 2.1 / A14B 16 (I2V adds mask + image channels via WanImageToVideo)")
        pt, ph, pw = c.patch_size
        if t % pt or h % ph or w % pw:
            raise ValueError(f"latent size {t}×{h}×{w} (frames×height×width) is not a multiple of the Wan "
                             f"patch {pt}×{ph}×{pw}")
        context = _check_text(context, c.text_dim, b, "Wan", "UMT5-XXL conditioning (CLIPLoader type wan)")
        if (clip_fea is not None) and c.image_dim is None:
            clip_fea = None  # Wan 2.2 / T2V: ComfyUI's WanModel has no img_emb and ignores it too
        if c.image_dim is not None:
            if clip_fea is None:
                raise ValueError("this Wan I2V model needs CLIP-vision features (CLIPVisionEncode → "
                                 "WanImageToVideo clip_vision_output); the conditioning has none")
            clip_fea = _f32(clip_fea, "clip_fea")
            if clip_fea.ndim != 3 or clip_fea.shape[-1] != c.image_dim:
                raise ValueError(f"clip_vision_output has shape {clip_fea.shape}; this model needs "
                                 f"[B, 257, {c.image_dim}] (CLIP ViT-H/14 penultimate states)")
            clip_fea = _batch(clip_fea, b, "clip_fea")
        timestep = _f32(timestep, "timestep")
        timestep = _batch(timestep.reshape(timestep.shape[0], -1) if timestep.ndim > 1 else timestep, b, "timestep")
        context, mask = pad_text(context)
        out = dict(x=x, timestep=timestep, context=context, mask=mask, clip_fea=clip_fea,
                   time_dim_concat=None if time_dim_concat is None else
                   _batch(_f32(time_dim_concat, "time_dim_concat"), b, "time_dim_concat"))
        if c_concat is not None:
            out["c_concat"] = _batch(_f32(c_concat, "c_concat"), b, "c_concat")
        return out

    def _velocity(self, model, x, timestep, context, mask, clip_fea=None, time_dim_concat=None, c_concat=None):
        if c_concat is not None:
            x = jnp.concatenate([x, c_concat], axis=1)
        frames = x.shape[2]
        if time_dim_concat is not None:
            x = jnp.concatenate([x, time_dim_concat.astype(x.dtype)], axis=2)
        pt, ph, pw = self.config.patch_size
        tokens = (x.shape[2] // pt) * (x.shape[3] // ph) * (x.shape[4] // pw)
        if timestep.ndim == 2 and timestep.shape[1] not in (1, tokens):  # per latent frame → per token
            timestep = jnp.repeat(timestep, tokens // timestep.shape[1], axis=1)
        dtype = self.dtype
        out = model(hidden_states=x.astype(dtype), timestep=timestep.astype(jnp.float32),
                    encoder_hidden_states=context.astype(dtype),
                    encoder_hidden_states_image=None if clip_fea is None else clip_fea.astype(dtype),
                    encoder_attention_mask=mask)
        return out[:, :, :frames].astype(jnp.float32)


def _refuse(unsupported: Mapping, family: str) -> None:
    given = sorted(k for k, v in unsupported.items() if v is not None)
    if given:
        raise ValueError(f"the JAX {family} model does not support the conditioning input(s) "
                         f"{', '.join(given)} yet (e.g. Kontext reference latents, VACE, control)")


def _check_text(context, width: int, batch: int, family: str, advice: str) -> np.ndarray:
    context = _f32(context, "conditioning")
    if context is None:
        raise ValueError(f"{family} needs text conditioning: {advice}")
    if context.ndim != 3 or context.shape[-1] != width:
        raise ValueError(f"the conditioning has shape {tuple(context.shape)} (width "
                         f"{context.shape[-1] if context.ndim else '?'}), but this {family} model's text "
                         f"width is {width}: use {advice}")
    return _batch(context, batch, "conditioning")


# ----------------------------------------------------------------------------- the loop


def sample(x, sigmas, timesteps, cond: Mapping, uncond: Mapping | None = None, *,
           denoisers: Sequence[Denoiser], expert: Sequence[int] | None = None, cfg: float = 1.0,
           sampler: str = "euler", callback: ProgressCallback | None = None, mask=None, clean=None,
           kept: Callable[[int], np.ndarray] | None = None) -> np.ndarray:
    """Run a sampling loop on device: latents `x` at `sigmas[0]` (model space) → at `sigmas[-1]`.

    Args:
        x: `[B, C, ...]` model-space latents already noised to sigmas[0] (ComfyUI's noise_scaling).
        sigmas: `[N+1]` table (ComfyUI's, e.g. `KSampler.sigmas`), decreasing.
        timesteps: `[N, B]` or `[N, B, T]` what each step hands the model
            (`model_sampling.timestep(sigma)`, after `process_timestep`).
        cond, uncond: `denoiser.prepare` keyword inputs by ComfyUI's names (context, y, guidance,
            clip_fea, time_dim_concat, c_concat); `uncond` None = no classifier-free guidance.
        denoisers, expert: the model of each step is `denoisers[expert[i]]` (Wan 2.2 A14B: high- and
            low-noise experts); `expert` None = `denoisers[0]` throughout.
        cfg: guidance scale (ComfyUI's `uncond + (cond − uncond)·cfg` on the denoised predictions).
        sampler: "euler" or "unipc" (flow UniPC, bh2, order 2, over the same sigmas).
        callback: `callback(done, total)` after each finished step; raising stops the loop.
        mask, clean, kept: a noise mask (1 = denoise, 0 = keep; latent-shaped), the clean model-space
            latent and `kept(i)`, what the kept region holds at step i (ComfyUI's
            `scale_latent_inpaint`); all None for no mask.
    Returns:
        latents at sigmas[-1], float32 numpy.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    sigmas = np.asarray(sigmas, np.float32)
    steps = len(sigmas) - 1
    if steps < 1:
        raise ValueError(f"sigmas must have at least 2 entries, got {len(sigmas)}")
    timesteps = np.asarray(timesteps, np.float32)
    if len(timesteps) != steps:
        raise ValueError(f"timesteps has {len(timesteps)} rows for {steps} steps")
    expert = [0] * steps if expert is None else list(expert)
    x = _f32(x, "latent")
    lead = denoisers[0]
    prepared = {}
    for k in set(expert):
        d = denoisers[k]
        c = d.prepare(x, timesteps[0], **cond)
        u = None if uncond is None or cfg == 1.0 else d.prepare(x, timesteps[0], **uncond)
        strip = lambda inputs: None if inputs is None else {
            k2: d.placement.put(v) for k2, v in inputs.items() if k2 not in ("x", "timestep")}
        prepared[k] = (strip(c), strip(u), c)
    put = lead.placement.put
    if mask is not None:
        mask_on = put(np.broadcast_to(_f32(mask, "noise mask"), x.shape).copy())
        clean_on = put(_f32(clean, "clean latent"))
    solver = None
    if sampler == "unipc":
        table = sigmas.copy()
        table[0] = min(table[0], np.float32(1.0 - unipc.FIRST_SIGMA_EPS))  # log(1 − σ) must stay finite
        solver = unipc.init_state(unipc.WAN_SCHEDULER_CONFIG, table, x.shape)

    def run_step(i, carry):
        d = denoisers[expert[i]]
        c, u, shapes = prepared[expert[i]]
        keep = None if mask is None else (mask_on, clean_on, put(_f32(kept(i), "kept latent")))
        with d._tracking(f"{sampler} step", shapes):
            return d._step(d._live_state(), carry[0], carry[1], put(timesteps[i]), put(sigmas[i]),
                           put(sigmas[i + 1]), c, u, np.float32(cfg), keep, sampler=sampler)

    (out, _), _ = denoise_loop(range(steps), run_step, (put(x), solver), program=lambda i: expert[i],
                               callback=callback)
    return to_host(out)
