"""Flux text-to-image and image-to-image: prepare → sample (FlowMatch Euler) → decode.

Mirrors diffusers `FluxPipeline` / `FluxImg2ImgPipeline` from precomputed prompt embeddings (text
encoders live elsewhere): latents `[B, C, h, w]` are packed 2×2 into tokens `[B, h/2·w/2, 4C]`, image
ids are (0, row, col) on the packed grid, text ids are zeros, the transformer takes sigma (timestep /
1000) and the raw guidance scale.

The public steps speak the raw VAE latent space `[B, C, h, w]` (what the VAE encodes, what ComfyUI's
LATENT holds); scale/shift and packing happen inside:
- `prepare_latents(batch, height, width, seed)`: N(0, 1) noise; `encode_image(images)`: raw latents.
- `sample(latents, prompt_embeds, pooled_prompt_embeds, noise=…, num_inference_steps | sigmas,
  start_step, end_step, guidance_scale, callback)`: raw latents in and out, from any step to any step.
- `decode(latents)`: images `[B, H, W, 3]` in 0..1.
- `step_program(batch, height, width, …)`: the first denoising step of a run as a value
  (`loop.StepProgram`: the jitted step and its placed arguments), what `jaxdiff bench` times.
`__call__` composes them (text-to-image, or image-to-image with `image=` and `denoise=`). One jitted
function does one denoising step (transformer + Euler update) and is reused every step
(pipelines/loop.py runs the loop).

Scale (both pipelines): `mesh=` places the inputs by logical axis names (`batch` over data/fsdp,
the latent token axis over `seq`; the modules must already be on the mesh, e.g. `load_model(path,
mesh=mesh)` or `sharding.shard_module`), and the denoise step is traced inside
`kernels.attention.attention_options(implementation=attention, sequence_parallel=..., mesh=mesh)`.
Outputs come back as host numpy. `compile_stats` holds what the last run's first denoise step
compiled (`compile_cache.CompileStats`: seconds, cold / warm / cached).

Imports models_flax (for types only at run time), schedulers, sharding, kernels; never torch.
"""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import families
from ..schedulers import flow_match
from ..schedulers.flow_match import (FLUX_DEV_SCHEDULER_CONFIG, FLUX_SCHNELL_SCHEDULER_CONFIG,
                                     FlowMatchEulerConfig, FlowMatchSchedule)
from .compile_cache import CompileStats
from .loop import ProgressCallback, StepProgram, add_noise, check_steps, denoise_loop
from .inputs import check_denoise, param_dtype, pixels_at, pixels_in
from .placement import Placement, attention_context, check_attention_args, to_host, vae_attention_context

PATCH = 2  # Flux packs 2×2 latent patches into one token
ID_AXES = 3  # position ids are (index, row, col)

# Logical axes of the packed latents `[B, S_img, 4C]`: batch over data/fsdp, tokens over seq.
LATENT_AXES = ("batch", "seq", None)


# ----------------------------------------------------------------------------- packing and ids


def pack_latents(latents: jax.Array) -> jax.Array:
    """`[B, C, h, w]` → `[B, (h/2)(w/2), 4C]` (`b c (h 2) (w 2) -> b (h w) (c 2 2)`)."""
    b, c, h, w = latents.shape
    if h % PATCH or w % PATCH:
        raise ValueError(f"latent height/width must be even to pack 2×2, got {h}×{w}")
    x = latents.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)  # [B, C, h/2, 2, w/2, 2]
    x = x.transpose(0, 2, 4, 1, 3, 5)  # [B, h/2, w/2, C, 2, 2]
    return x.reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack_latents(latents: jax.Array, height: int, width: int) -> jax.Array:
    """`[B, (h/2)(w/2), 4C]` → `[B, C, h, w]` for latent (not pixel) `height` × `width`."""
    b, s, d = latents.shape
    hp, wp = height // PATCH, width // PATCH
    if s != hp * wp or d % (PATCH * PATCH):
        raise ValueError(f"packed latents {latents.shape} do not fit a {height}×{width} latent grid")
    x = latents.reshape(b, hp, wp, d // 4, PATCH, PATCH)  # [B, h/2, w/2, C, 2, 2]
    x = x.transpose(0, 3, 1, 4, 2, 5)  # [B, C, h/2, 2, w/2, 2]
    return x.reshape(b, d // 4, height, width)


def latent_image_ids(height: int, width: int) -> np.ndarray:
    """Ids `(0, row, col)` of the packed grid `height` × `width` (already halved): `[h·w, 3]` float32."""
    ids = np.zeros((height, width, ID_AXES), np.float32)
    ids[..., 1] = np.arange(height, dtype=np.float32)[:, None]
    ids[..., 2] = np.arange(width, dtype=np.float32)[None, :]
    return ids.reshape(height * width, ID_AXES)


def text_ids(seq_len: int) -> np.ndarray:
    """Text position ids: zeros `[S_txt, 3]` float32."""
    return np.zeros((seq_len, ID_AXES), np.float32)


# ----------------------------------------------------------------------------- pipeline


@dataclasses.dataclass
class FluxPipelineOutput:
    """`images`: `[B, H, W, C]` float32 in 0..1 (None for `output_type="latent"`);
    `latents`: the final packed latents `[B, S_img, 4C]` float32 (model space, before unscaling)."""

    images: np.ndarray | None
    latents: np.ndarray


class FluxPipeline:
    """Flux sampling from precomputed prompt embeddings.

    Args:
        transformer: a `FluxTransformer2DModel` (anything with `.config` and the same `__call__`).
        vae: an `AutoencoderKL` (`.config.block_out_channels`, `.encode_mode`, `.decode`,
            `.scale_latents`, `.unscale_latents`).
        scheduler_config: FlowMatch Euler config; dev's (dynamic shift) by default.
        mesh: a `jax.sharding.Mesh` the modules are already placed on (None: one device).
        attention: attention implementation for the transformer ("auto", "xla", "cudnn",
            "splash"; None = the surrounding `attention_options`, else auto).
        sequence_parallel: None, "ulysses" or "ring": split attention over the mesh's `seq` axis.
    """

    output = "image"
    # what an embeddings file holds: {name: (ndim with batch, required)}
    CONDITIONING = {"prompt_embeds": (3, True), "pooled_prompt_embeds": (2, True)}
    GUIDANCE = 3.5
    SIZE = 1024  # pixels, both sides
    DEV_STEPS, SCHNELL_STEPS = 28, 4

    def __init__(self, transformer: nnx.Module, vae: nnx.Module,
                 scheduler_config: FlowMatchEulerConfig = FLUX_DEV_SCHEDULER_CONFIG, *,
                 mesh=None, attention: str | None = None, sequence_parallel: str | None = None):
        check_attention_args(attention, sequence_parallel)
        self.transformer, self.vae, self.scheduler_config = transformer, vae, scheduler_config
        self.placement = Placement(mesh)
        self.mesh, self.attention, self.sequence_parallel = self.placement.mesh, attention, sequence_parallel
        self.compile_stats: CompileStats | None = None
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.num_channels_latents = transformer.config.in_channels // (PATCH * PATCH)
        if self.num_channels_latents != vae.config.latent_channels:
            raise ValueError(f"transformer in_channels {transformer.config.in_channels} = 4 × "
                             f"{self.num_channels_latents} latent channels, but the VAE has "
                             f"latent_channels={vae.config.latent_channels}")
        self._transformer_graph = nnx.graphdef(transformer)
        self._vae_graph = nnx.graphdef(vae)
        self.dtype, self.vae_dtype = param_dtype(transformer), param_dtype(vae)
        self.denoise_step = jax.jit(self._denoise_step)
        self._decode = jax.jit(self._decode_raw)
        self._encode = jax.jit(self._encode_raw)

    @staticmethod
    def default_scheduler(config) -> FlowMatchEulerConfig:
        """FLUX.1-dev's scheduler for a model with guidance embeddings, schnell's otherwise."""
        return FLUX_DEV_SCHEDULER_CONFIG if config.guidance_embeds else FLUX_SCHNELL_SCHEDULER_CONFIG

    @classmethod
    def from_models(cls, transformer, vae, scheduler_config, *, transformer_2=None, index=None, **options):
        """The pipeline over loaded models (`pipelines.loading.load_pipeline`); `index` is the
        diffusers `model_index.json` (nothing in it changes Flux)."""
        if transformer_2 is not None:
            raise ValueError("Flux runs one transformer; this model directory also has transformer_2/")
        return cls(transformer, vae, scheduler_config, **options)

    def defaults(self) -> dict:
        """What `jaxdiff generate` uses for options not given: size, steps, guidance."""
        steps = self.DEV_STEPS if self.transformer.config.guidance_embeds else self.SCHNELL_STEPS
        return dict(height=self.SIZE, width=self.SIZE, steps=steps, guidance=self.GUIDANCE)

    def random_conditioning(self, seed: int, text_tokens: int) -> dict[str, np.ndarray]:
        """Stand-in embeddings N(0, 1) from `seed` (the embedded default has no text encoder)."""
        config = self.transformer.config
        rng = np.random.default_rng(seed)
        return {"prompt_embeds": rng.standard_normal((1, text_tokens, config.joint_attention_dim), np.float32),
                "pooled_prompt_embeds": rng.standard_normal((1, config.pooled_projection_dim), np.float32)}

    # -- jitted bodies (graph definitions are closed over; parameters are arguments)

    def _denoise_step(self, state, latents, timestep, sigma, sigma_next, prompt_embeds,
                      pooled_prompt_embeds, img_ids, txt_ids, guidance):
        """One step: velocity from the transformer, then the Euler update (latents stay float32)."""
        model = nnx.merge(self._transformer_graph, state)
        dtype = self.dtype
        b = latents.shape[0]
        velocity = model(
            hidden_states=latents.astype(dtype),
            encoder_hidden_states=prompt_embeds.astype(dtype),
            pooled_projections=pooled_prompt_embeds.astype(dtype),
            timestep=jnp.broadcast_to(timestep, (b,)),
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance,
        )  # [B, S_img, 4C]
        return self.placement.constrain(flow_match.step(velocity, sigma, sigma_next, latents),
                                        LATENT_AXES)

    def _decode_raw(self, state, z):
        """Raw latents `[B, C, h, w]` → `[B, H, W, C]` float32 in 0..1."""
        vae = nnx.merge(self._vae_graph, state)
        image = vae.decode(z.astype(self.vae_dtype)).astype(jnp.float32)  # [B, 3, H, W] about -1..1
        image = jnp.clip(image * 0.5 + 0.5, 0.0, 1.0)
        return image.transpose(0, 2, 3, 1)  # [B, H, W, 3]

    def _encode_raw(self, state, pixels):
        """`[B, 3, H, W]` in −1..1 → raw latents `[B, C, h, w]` float32 (the posterior mode)."""
        vae = nnx.merge(self._vae_graph, state)
        return vae.encode_mode(pixels.astype(self.vae_dtype)).astype(jnp.float32)

    # -- sizes and checks (host side, before any compute)

    def check_size(self, height: int, width: int) -> None:
        multiple = self.size_multiple
        if (isinstance(height, bool) or isinstance(width, bool)
                or not isinstance(height, (int, np.integer)) or not isinstance(width, (int, np.integer))
                or height <= 0 or width <= 0 or height % multiple or width % multiple):
            raise ValueError(f"height and width must be positive multiples of {multiple} (VAE "
                             f"factor {self.vae_scale_factor} × 2×2 packing), got {height}×{width}")

    @staticmethod
    def image_tokens(config, latent_shape) -> int:
        """Transformer image tokens of raw latents `(B, C, h, w)`: 2×2 packing."""
        return (latent_shape[-2] // PATCH) * (latent_shape[-1] // PATCH)

    def check_inputs(self, height: int, width: int, num_frames: int | None = None) -> None:
        """`check_size` (images have no frame count; `num_frames` must be None)."""
        if num_frames is not None:
            raise ValueError(f"Flux makes images: num_frames must be None, got {num_frames}")
        self.check_size(height, width)

    @property
    def size_multiple(self) -> int:
        """Pixel height/width multiple: VAE factor × 2×2 packing (16 for Flux)."""
        return self.vae_scale_factor * PATCH

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        """Raw latent shape `(B, C, h, w)` of a `height` × `width` image."""
        f = self.vae_scale_factor
        return (batch, self.num_channels_latents, height // f, width // f)

    def check_conditioning(self, prompt_embeds, pooled_prompt_embeds) -> tuple[jax.Array, jax.Array]:
        """The embeddings as float arrays; ValueError naming the one whose shape is wrong."""
        config = self.transformer.config
        prompt_embeds = jnp.asarray(prompt_embeds)
        pooled_prompt_embeds = jnp.asarray(pooled_prompt_embeds)
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != config.joint_attention_dim:
            raise ValueError(f"prompt_embeds must be [B, S_txt, {config.joint_attention_dim}], got "
                             f"{prompt_embeds.shape}")
        batch = prompt_embeds.shape[0]
        if pooled_prompt_embeds.shape != (batch, config.pooled_projection_dim):
            raise ValueError(f"pooled_prompt_embeds must be [{batch}, "
                             f"{config.pooled_projection_dim}], got {pooled_prompt_embeds.shape}")
        return prompt_embeds, pooled_prompt_embeds

    def _unpacked(self, latents, shape: tuple[int, ...], what: str) -> jax.Array:
        """`latents` as `[B, C, h, w]` float32 (packed `[B, S_img, 4C]` accepted too)."""
        latents = jnp.asarray(latents, jnp.float32)
        b, c, h, w = shape
        if latents.ndim == 3 and latents.shape == (b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH):
            latents = unpack_latents(latents, h, w)
        if latents.shape != tuple(shape):
            raise ValueError(f"{what} must be {tuple(shape)} [B, C, h, w] (or packed "
                             f"{(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)}), got {latents.shape}")
        return latents

    # -- prepare

    def prepare_latents(self, batch_size: int, height: int, width: int, seed: int) -> jax.Array:
        """N(0, 1) noise `[B, C, h, w]` from `seed` (drawn unpacked, like diffusers)."""
        return jax.random.normal(jax.random.key(seed), self.latent_shape(batch_size, height, width),
                                 jnp.float32)

    def encode_image(self, images) -> jax.Array:
        """Images `[H, W, 3]` / `[B, H, W, 3]` (float 0..1 or uint8, at a size that is a multiple of
        `size_multiple`) → raw VAE latents `[B, C, h, w]` float32 (posterior mode)."""
        pixels = pixels_in(images, "image")  # [B, 3, H, W] in −1..1
        self.check_size(pixels.shape[2], pixels.shape[3])
        with vae_attention_context():
            return self._encode(nnx.state(self.vae), jnp.asarray(pixels))

    def to_model(self, latents: jax.Array) -> jax.Array:
        """Raw latents `[B, C, h, w]` → packed model-space tokens `[B, S_img, 4C]` ((z − shift)·scale)."""
        return pack_latents(self.vae.scale_latents(jnp.asarray(latents, jnp.float32)))

    def to_raw(self, packed: jax.Array, height: int, width: int) -> jax.Array:
        """Packed model-space tokens → raw latents `[B, C, h, w]` for latent `height` × `width`."""
        return self.vae.unscale_latents(unpack_latents(jnp.asarray(packed, jnp.float32), height, width))

    def schedule(self, num_inference_steps: int, height: int, width: int, sigmas=None) -> FlowMatchSchedule:
        """The FluxPipeline schedule for pixel `height` × `width` (dynamic shift from the token count):
        timesteps `[N]`, sigmas `[N+1]`; `sigmas` `[N]` overrides `linspace(1, 1/N, N)`."""
        tokens = (height // self.size_multiple) * (width // self.size_multiple)
        return flow_match.flux_timesteps(self.scheduler_config, num_inference_steps, tokens, sigmas=sigmas)

    @staticmethod
    def start_step(num_inference_steps: int, denoise: float) -> int:
        """First step of an image-to-image run (diffusers FluxImg2ImgPipeline's `strength` rule)."""
        check_denoise(denoise)
        return int(max(num_inference_steps - min(num_inference_steps * denoise, num_inference_steps), 0))

    # -- sample

    def sample(self, latents, prompt_embeds, pooled_prompt_embeds, *, noise=None,
               num_inference_steps: int | None = None, sigmas=None, height: int | None = None,
               width: int | None = None, start_step: int = 0, end_step: int | None = None,
               guidance_scale: float = 3.5, callback: ProgressCallback | None = None) -> jax.Array:
        """Denoise raw-space latents from step `start_step` to `end_step` of the schedule.

        Args:
            latents: raw VAE latents `[B, C, h, w]`: with `noise`, a clean image to noise to the
                start sigma (image-to-image); without, latents already at the start sigma (resuming
                a run `sample(..., end_step=k)` stopped). None with `noise`: start from pure noise.
            prompt_embeds, pooled_prompt_embeds: `[B, S_txt, D]`, `[B, P]`.
            noise: N(0, 1) `[B, C, h, w]` (see `prepare_latents`).
            num_inference_steps: N of the FluxPipeline schedule (default 28), or `sigmas`: a full
                sigma table `[N+1]` ending in 0 (e.g. ComfyUI's), used as given.
            height, width: pixel size the schedule's shift is computed for (default: the latents').
            start_step, end_step: the steps to run, `0 <= start < end <= N`.
            guidance_scale: used only when the transformer has `guidance_embeds`.
            callback: `callback(steps_done, steps)` after each finished step; `False` stops.
        Returns:
            raw latents `[B, C, h, w]` float32 at sigma[end_step] (clean when end_step = N).
        """
        ref = noise if latents is None else latents
        if ref is None:
            raise ValueError("sample needs latents, noise or both")
        ref = jnp.asarray(ref)
        if ref.ndim != 4:
            raise ValueError(f"latents/noise must be [B, C, h, w], got {ref.shape}")
        shape = tuple(ref.shape)
        height = height or shape[2] * self.vae_scale_factor
        width = width or shape[3] * self.vae_scale_factor
        schedule = self._schedule_from(num_inference_steps, sigmas, height, width)
        x = self._start(latents, noise, schedule.sigmas, start_step, shape)
        x = self.sample_tokens(x, prompt_embeds, pooled_prompt_embeds, schedule, shape[2], shape[3],
                               start_step=start_step, end_step=end_step, guidance_scale=guidance_scale,
                               callback=callback)
        return self.to_raw(x, shape[2], shape[3])

    def _schedule_from(self, num_inference_steps, sigmas, height: int, width: int) -> FlowMatchSchedule:
        if sigmas is not None and num_inference_steps is None:  # a full table, as given
            table = np.asarray(sigmas, np.float32)
            if table.ndim != 1 or len(table) < 2:
                raise ValueError(f"sigmas must be a table [N+1] ending in 0, got shape {table.shape}")
            return FlowMatchSchedule(timesteps=table[:-1] * np.float32(1000), sigmas=table)
        return self.schedule(28 if num_inference_steps is None else num_inference_steps, height, width,
                             sigmas=sigmas)

    def _start(self, latents, noise, sigmas: np.ndarray, start_step: int, shape) -> jax.Array:
        """The packed model-space latents the run starts from (see `sample`)."""
        if noise is not None:
            noise = self._unpacked(noise, shape, "noise")
        if latents is None:
            return pack_latents(noise)
        x = self.vae.scale_latents(self._unpacked(latents, shape, "latents"))
        if noise is not None:
            x = add_noise(x, noise, sigmas[start_step])
        return pack_latents(x)

    def sample_tokens(self, latents: jax.Array, prompt_embeds, pooled_prompt_embeds,
                      schedule: FlowMatchSchedule, height: int, width: int, *, start_step: int = 0,
                      end_step: int | None = None, guidance_scale: float = 3.5,
                      callback: ProgressCallback | None = None) -> jax.Array:
        """The loop on packed model-space latents `[B, S_img, 4C]` (latent `height` × `width`):
        steps `start_step..end_step` of `schedule`; returns the packed latents. Records
        `compile_stats` (what the first step compiled)."""
        prompt_embeds, pooled_prompt_embeds = self.check_conditioning(prompt_embeds, pooled_prompt_embeds)
        start, end = check_steps(len(schedule.timesteps), start_step, end_step)
        batch = prompt_embeds.shape[0]
        packed = (batch, (height // PATCH) * (width // PATCH), self.num_channels_latents * 4)
        if tuple(latents.shape) != packed:
            raise ValueError(f"latents must be packed {packed} for batch {batch} at latent size "
                             f"{height}×{width}, got {tuple(latents.shape)}")
        fixed = self._fixed_inputs(prompt_embeds, pooled_prompt_embeds, height, width, guidance_scale)
        state = nnx.state(self.transformer)

        def run_step(i, x):
            return self.denoise_step(state, x, *self._schedule_inputs(schedule, i), *fixed)

        with attention_context(self.attention, self.sequence_parallel, self.mesh):
            x, self.compile_stats = denoise_loop(range(start, end), run_step,
                                                 self.placement.put(latents, LATENT_AXES), callback=callback)
        return x

    def _fixed_inputs(self, prompt_embeds, pooled_prompt_embeds, height: int, width: int,
                      guidance_scale: float) -> tuple:
        """The step's arguments that every step shares (text, ids, guidance), placed."""
        put = self.placement.put
        batch = prompt_embeds.shape[0]
        return (put(prompt_embeds, ("batch", None, None)),  # text joins the image tokens inside
                put(pooled_prompt_embeds, ("batch", None)),
                put(latent_image_ids(height // PATCH, width // PATCH)), put(text_ids(prompt_embeds.shape[1])),
                put(np.full((batch,), guidance_scale, np.float32), ("batch",))
                if self.transformer.config.guidance_embeds else None)

    def _schedule_inputs(self, schedule: FlowMatchSchedule, i: int) -> tuple:
        """(timestep, sigma, next sigma) of step `i`, placed."""
        put = self.placement.put
        # the model sees timestep / 1000 in float32, exactly as FluxPipeline computes it
        return (put(schedule.timesteps[i] / np.float32(1000)), put(schedule.sigmas[i]),
                put(schedule.sigmas[i + 1]))

    def step_program(self, batch: int, height: int, width: int, num_frames: int | None = None,
                     text_tokens: int = 512, num_inference_steps: int = 28, seed: int = 0, *,
                     guidance_scale: float = GUIDANCE) -> StepProgram:
        """The first step of a text-to-image run at this size, as `sample_tokens` runs it (same jitted
        step, arguments placed the same way), on stand-in embeddings (`random_conditioning`) and
        `prepare_latents` noise: for benchmarks and compile checks. `num_frames` must be None."""
        self.check_inputs(height, width, num_frames)
        check_steps(num_inference_steps, 0, None)
        conditioning = {k: np.repeat(v, batch, axis=0)
                        for k, v in self.random_conditioning(seed, text_tokens).items()}
        prompt_embeds, pooled_prompt_embeds = self.check_conditioning(**conditioning)
        _, _, h, w = self.latent_shape(batch, height, width)
        schedule = self.schedule(num_inference_steps, height, width)
        latents = pack_latents(self.prepare_latents(batch, height, width, seed))
        args = (nnx.state(self.transformer), self.placement.put(latents, LATENT_AXES),
                *self._schedule_inputs(schedule, 0),
                *self._fixed_inputs(prompt_embeds, pooled_prompt_embeds, h, w, guidance_scale))
        sizes = families.Sizes(batch=batch, height=h // PATCH, width=w // PATCH, text_tokens=text_tokens)
        return StepProgram(self.denoise_step, args, "transformer forward + FlowMatch Euler update", sizes,
                           lambda out: self.to_raw(out, h, w))

    # -- decode

    def decode(self, latents) -> np.ndarray:
        """Raw latents `[B, C, h, w]` → images `[B, H, W, 3]` float32 in 0..1 (host numpy)."""
        with vae_attention_context():
            return to_host(self._decode(nnx.state(self.vae), jnp.asarray(latents, jnp.float32)))

    # -- all of it

    def check_call(self, prompt_embeds, pooled_prompt_embeds, *, height: int = 1024, width: int = 1024,
                   num_inference_steps: int = 28, latents=None, image=None, denoise: float = 1.0,
                   output_type: str = "np", **unchecked):
        """Every check `__call__` makes before any compute (works on abstract models too); returns
        (prompt_embeds, pooled_prompt_embeds, raw latent shape, first step)."""
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}")
        check_steps(num_inference_steps, 0, None)
        self.check_size(height, width)
        prompt_embeds, pooled_prompt_embeds = self.check_conditioning(prompt_embeds, pooled_prompt_embeds)
        shape = self.latent_shape(prompt_embeds.shape[0], height, width)
        start = 0 if image is None else self.start_step(num_inference_steps, denoise)
        check_steps(num_inference_steps, start, None)
        if latents is not None:
            self._unpacked(latents, shape, "latents")
        if image is not None:
            pixels_at(image, shape[0], height, width)
        return prompt_embeds, pooled_prompt_embeds, shape, start

    def __call__(self, prompt_embeds, pooled_prompt_embeds, *, height: int = 1024,
                 width: int = 1024, num_inference_steps: int = 28, guidance_scale: float = 3.5,
                 seed: int = 0, latents=None, sigmas=None, image=None, denoise: float = 1.0,
                 output_type: str = "np", callback: ProgressCallback | None = None) -> FluxPipelineOutput:
        """Sample images (text-to-image; image-to-image with `image`).

        Args:
            prompt_embeds: `[B, S_txt, joint_attention_dim]` (T5).
            pooled_prompt_embeds: `[B, pooled_projection_dim]` (CLIP pooled).
            height, width: pixels, multiples of `size_multiple` (16 for Flux).
            num_inference_steps: N Euler steps of the full schedule.
            guidance_scale: used only when the transformer has `guidance_embeds`.
            seed: noise seed when `latents` is None.
            latents: initial noise, packed `[B, S_img, 4C]` (as diffusers takes it) or `[B, C, h, w]`.
            sigmas: optional custom sigmas `[N]` (default `linspace(1, 1/N, N)`, as FluxPipeline).
            image: start image `[H, W, 3]` / `[1 or B, H, W, 3]` (float 0..1 or uint8) at `height` ×
                `width`: encoded, noised to the start sigma and denoised from there.
            denoise: with `image`, how much to change it, in (0, 1] (diffusers' `strength`): the run
                starts at step `int(N − N·denoise)` of the N-step schedule.
            output_type: "np" (decode) or "latent" (skip the VAE).
            callback: called as `callback(steps_done, steps)` after each step (the step has finished);
                returning False stops early.
        Returns:
            FluxPipelineOutput(images `[B, H, W, 3]` float32 0..1, latents `[B, S_img, 4C]`).
        """
        prompt_embeds, pooled_prompt_embeds, shape, start = self.check_call(
            prompt_embeds, pooled_prompt_embeds, height=height, width=width,
            num_inference_steps=num_inference_steps, latents=latents, image=image, denoise=denoise,
            output_type=output_type)
        batch = shape[0]
        noise = (self.prepare_latents(batch, height, width, seed) if latents is None
                 else self._unpacked(latents, shape, "latents"))
        clean = None
        if image is not None:
            clean = self.encode_image(pixels_at(image, batch, height, width))
        schedule = self.schedule(num_inference_steps, height, width, sigmas=sigmas)
        x = self._start(clean, noise, schedule.sigmas, start, shape)
        x = self.sample_tokens(x, prompt_embeds, pooled_prompt_embeds, schedule, shape[2], shape[3],
                               start_step=start, guidance_scale=guidance_scale, callback=callback)
        images = self.decode(self.to_raw(x, shape[2], shape[3])) if output_type == "np" else None
        return FluxPipelineOutput(images=images, latents=to_host(x))
