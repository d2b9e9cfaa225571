"""Wan text/image-to-video sampling from precomputed embeddings (diffusers `WanPipeline` and
`WanImageToVideoPipeline`, one class here).

- T2V: N(0, 1) latents `[B, z, T', h, w]` are denoised by the transformer under classifier-free
  guidance (`uncond + g·(cond − uncond)`, on when `guidance_scale > 1` as in diffusers), stepped by
  UniPC (flow) or FlowMatch Euler, de-normalised (`z·std + mean`) and decoded by the Wan VAE.
- Wan 2.2 A14B: two experts. `transformer` (high noise) runs while `t >= boundary_ratio ·
  num_train_timesteps`, `transformer_2` (low noise, guidance `guidance_scale_2`) below.
- I2V (`image=`): the first frame followed by zeros is VAE-encoded and normalised; the transformer
  sees `[noise, mask, condition]` on channels, where the mask has `scale_factor_temporal` (4)
  channels — diffusers packs the first frame repeated 4× plus the other frames 4 to a latent frame,
  so latent frame 0 is all ones and the rest zeros. Wan 2.1 I2V also takes CLIP-vision features
  (`image_embeds`, precomputed).
- TI2V-5B (`expand_timesteps=True`): per-token timesteps `[B, S]`; for I2V the first latent frame is
  replaced by the encoded image and its tokens get timestep 0 (and the final latents keep it).

One jitted denoising step per expert (transformer call(s) + guidance + scheduler update) is reused
every step; its inputs that change per step (latents, timestep, scheduler state) are arrays, so each
expert compiles once per run shape (`step_program(batch, height, width, num_frames, …)` hands out
the first with its placed arguments, `loop.StepProgram`: what `jaxdiff bench` times). The VAE
encodes/decodes chunk by chunk with its own jitted steps.

Scale: `mesh=`, `attention=`, `sequence_parallel=` as in `flux.FluxPipeline` (latents `[B, z, T', h, w]`
are split on batch and, where it divides, on latent frames over `seq`; the scheduler state follows
the latents). `compile_stats` sums what the first step of each expert compiled in the last run.

Imports models_flax (types only at run time), schedulers, sharding, kernels; never torch.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import families
from ..schedulers import flow_match, unipc
from ..schedulers.flow_match import FlowMatchEulerConfig
from ..schedulers.unipc import WAN_SCHEDULER_CONFIG, UniPCConfig
from .compile_cache import CompileStats
from .inputs import check_denoise, param_dtype, pixels_at, pixels_in
from .loop import ProgressCallback, StepProgram, add_noise, check_steps, denoise_loop
from .placement import Placement, attention_context, check_attention_args, to_host, vae_attention_context

# diffusers' Wan 2.2 A14B model_index.json boundary_ratio values.
WAN22_T2V_BOUNDARY_RATIO = 0.875
WAN22_I2V_BOUNDARY_RATIO = 0.9
IMAGE_TOKENS = 257  # CLIP ViT-H/14 features per image (256 patches + class token; Wan 2.1 I2V)

# Logical axes of latents `[B, z, T', h, w]`: batch over data/fsdp; latent frames (the outermost
# part of the token order f, h, w) over seq where they divide.
LATENT_AXES = ("batch", None, "seq", None, None)


@dataclasses.dataclass
class WanPipelineOutput:
    """`frames`: `[B, F, H, W, 3]` float32 in 0..1, i.e. one `[F, H, W, 3]` video per batch item
    (None for `output_type="latent"`); `latents`: the final latents `[B, z, T', h, w]` float32 in the
    transformer's (normalised) space, as diffusers returns them for `output_type="latent"`."""

    frames: np.ndarray | None
    latents: np.ndarray


class EulerState(NamedTuple):
    """FlowMatch Euler as a step state, so both schedulers share one step signature."""

    sigmas: jax.Array  # [N+1] float32
    step_index: jax.Array  # [] int32


def _latent_stats(vae) -> tuple[np.ndarray, np.ndarray]:
    """(mean, 1/std) `[1, z, 1, 1, 1]` float32 — diffusers multiplies by the reciprocal std."""
    cfg = vae.config
    for name in ("latents_mean", "latents_std"):
        if len(getattr(cfg, name)) != cfg.z_dim:
            raise ValueError(f"VAE config.{name} has {len(getattr(cfg, name))} entries, z_dim is "
                             f"{cfg.z_dim}")
    shape = (1, cfg.z_dim, 1, 1, 1)
    mean = np.asarray(cfg.latents_mean, np.float32).reshape(shape)
    inv_std = (np.float32(1.0) / np.asarray(cfg.latents_std, np.float32)).reshape(shape)
    return mean, inv_std


def _as_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    return int(value)


class WanPipeline:
    """Wan 2.1 / 2.2 sampling (T2V, I2V, A14B two experts, TI2V-5B) from precomputed embeddings.

    Args:
        transformer: a `WanTransformer3DModel` (the high-noise expert for A14B).
        vae: an `AutoencoderKLWan` (2.1: z 16, /8; 2.2: z 48, /16).
        scheduler_config: `UniPCConfig` (flow; Wan's default) or `FlowMatchEulerConfig`.
        transformer_2: the low-noise expert (Wan 2.2 A14B), same shapes as `transformer`.
        boundary_ratio: expert switch at `t < boundary_ratio · num_train_timesteps`; needs
            `transformer_2`. None with `transformer_2` given uses 0.875 for T2V, 0.9 for I2V.
        expand_timesteps: Wan 2.2 TI2V-5B per-token timesteps (model_index.json `expand_timesteps`).
        mesh: a `jax.sharding.Mesh` the modules are already placed on (None: one device).
        attention: attention implementation for the transformer(s) ("auto", "xla", "cudnn",
            "splash"; None = the surrounding `attention_options`, else auto).
        sequence_parallel: None, "ulysses" or "ring": split attention over the mesh's `seq` axis.
    """

    output = "video"
    # what an embeddings file holds: {name: (ndim with batch, required)}
    CONDITIONING = {"prompt_embeds": (3, True), "negative_prompt_embeds": (3, False),
                    "image_embeds": (3, False)}
    SIZE, FRAMES, STEPS, GUIDANCE = (480, 832), 81, 50, 5.0
    FPS, TI2V_FPS = 16, 24

    def __init__(self, transformer: nnx.Module, vae: nnx.Module,
                 scheduler_config: UniPCConfig | FlowMatchEulerConfig = WAN_SCHEDULER_CONFIG, *,
                 transformer_2: nnx.Module | None = None, boundary_ratio: float | None = None,
                 expand_timesteps: bool = False, mesh=None, attention: str | None = None,
                 sequence_parallel: str | None = None):
        check_attention_args(attention, sequence_parallel)
        self.placement = Placement(mesh)
        self.mesh, self.attention, self.sequence_parallel = self.placement.mesh, attention, sequence_parallel
        self.compile_stats: CompileStats | None = None
        if not isinstance(scheduler_config, (UniPCConfig, FlowMatchEulerConfig)):
            raise ValueError("scheduler_config must be a UniPCConfig or FlowMatchEulerConfig, got "
                             f"{type(scheduler_config).__name__}")
        if boundary_ratio is not None:
            if transformer_2 is None:
                raise ValueError(f"missing expert: boundary_ratio={boundary_ratio} switches to a "
                                 "low-noise expert, but transformer_2 is None")
            if not 0.0 < boundary_ratio <= 1.0:
                raise ValueError(f"boundary_ratio must be in (0, 1], got {boundary_ratio}")
        self.transformer, self.transformer_2, self.vae = transformer, transformer_2, vae
        self.scheduler_config = scheduler_config
        self.boundary_ratio, self.expand_timesteps = boundary_ratio, bool(expand_timesteps)

        config = transformer.config
        if transformer_2 is not None:
            c2 = transformer_2.config
            for name in ("patch_size", "in_channels", "output_channels", "text_dim", "image_dim"):
                if getattr(c2, name) != getattr(config, name):
                    raise ValueError(f"transformer_2.config.{name}={getattr(c2, name)!r} differs from "
                                     f"transformer's {getattr(config, name)!r}")
        self.vae_scale_factor_temporal = vae.config.scale_factor_temporal or 4
        self.vae_scale_factor_spatial = vae.config.scale_factor_spatial or 8
        self.num_channels_latents = vae.config.z_dim
        if config.output_channels != self.num_channels_latents:
            raise ValueError(f"transformer out_channels {config.output_channels} != VAE z_dim "
                             f"{self.num_channels_latents}")
        t2v, i2v = self.num_channels_latents, self._i2v_channels()
        if config.in_channels not in (t2v, i2v):
            raise ValueError(f"transformer in_channels {config.in_channels} fits neither text-to-video "
                             f"({t2v} = VAE z_dim) nor image-to-video ({i2v} = 2 × {t2v} latent + "
                             f"{self.vae_scale_factor_temporal} mask channels)")
        self.dtype, self.vae_dtype = param_dtype(transformer), param_dtype(vae)
        self.latents_mean, self.latents_inv_std = _latent_stats(vae)

        experts = [transformer] + ([transformer_2] if transformer_2 is not None else [])
        # One jitted step per expert (their graph definitions differ as objects even when the
        # configs are equal); parameters are arguments, the graph definition is closed over.
        self.denoise_steps = tuple(jax.jit(self._make_denoise_step(nnx.graphdef(m)))
                                   for m in experts)

    @staticmethod
    def default_scheduler(config) -> UniPCConfig:
        """Wan's flow UniPC (shift 3, the 480p default) when no scheduler_config.json is given."""
        return WAN_SCHEDULER_CONFIG

    @classmethod
    def from_models(cls, transformer, vae, scheduler_config, *, transformer_2=None, index=None, **options):
        """The pipeline over loaded models (`pipelines.loading.load_pipeline`): with two experts the
        switch is model_index.json's `boundary_ratio`; `expand_timesteps` is its flag, else on for the
        Wan 2.2 VAE (TI2V-5B's residual VAE)."""
        index = index or {}
        boundary_ratio = index.get("boundary_ratio") if transformer_2 is not None else None
        expand = bool(index.get("expand_timesteps", vae.config.is_residual))
        return cls(transformer, vae, scheduler_config, transformer_2=transformer_2,
                   boundary_ratio=boundary_ratio, expand_timesteps=expand, **options)

    def defaults(self) -> dict:
        """What `jaxdiff generate` uses for options not given (diffusers' WanPipeline defaults)."""
        return dict(height=self.SIZE[0], width=self.SIZE[1], frames=self.FRAMES, steps=self.STEPS,
                    guidance=self.GUIDANCE, fps=self.TI2V_FPS if self.expand_timesteps else self.FPS)

    def random_conditioning(self, seed: int, text_tokens: int) -> dict[str, np.ndarray | None]:
        """Stand-in prompt and negative embeddings N(0, 1) from `seed` (no text encoder)."""
        rng = np.random.default_rng(seed)
        shape = (1, text_tokens, self.transformer.config.text_dim)
        return {"prompt_embeds": rng.standard_normal(shape, np.float32),
                "negative_prompt_embeds": rng.standard_normal(shape, np.float32), "image_embeds": None}

    # -- sizes and modes

    def _i2v_channels(self) -> int:
        """in_channels of a mask-concatenating I2V transformer: noise + mask + image latents."""
        if self.expand_timesteps:
            return self.num_channels_latents  # TI2V-5B replaces frame 0 instead of concatenating
        return 2 * self.num_channels_latents + self.vae_scale_factor_temporal

    @property
    def size_multiple(self) -> int:
        """Pixel height/width multiple: VAE spatial factor × transformer patch (16 for 2.1, 32 for
        TI2V-5B)."""
        _, ph, pw = self.transformer.config.patch_size
        return self.vae_scale_factor_spatial * max(ph, pw)

    def check_inputs(self, height: int, width: int, num_frames: int) -> None:
        """Raise ValueError unless frames = 4k + 1 and height/width are multiples of `size_multiple`."""
        num_frames = _as_int(num_frames, "num_frames")
        ft = self.vae_scale_factor_temporal
        if num_frames < 1 or (num_frames - 1) % ft:
            raise ValueError(f"num_frames must be {ft}k + 1 (1, {ft + 1}, {2 * ft + 1}, …, 81), got "
                             f"{num_frames}")
        m = self.size_multiple
        if (isinstance(height, bool) or isinstance(width, bool)
                or not isinstance(height, (int, np.integer)) or not isinstance(width, (int, np.integer))
                or height <= 0 or width <= 0 or height % m or width % m):
            raise ValueError(f"height and width must be positive multiples of {m} (VAE factor "
                             f"{self.vae_scale_factor_spatial} × patch), got {height}×{width}")

    @staticmethod
    def image_tokens(config, latent_shape) -> int:
        """Transformer video tokens of latents `(B, z, T', h, w)`: one per (1, 2, 2) patch."""
        pt, ph, pw = config.patch_size
        return (latent_shape[-3] // pt) * (latent_shape[-2] // ph) * (latent_shape[-1] // pw)

    def latent_shape(self, batch: int, height: int, width: int, num_frames: int) -> tuple[int, ...]:
        """`(B, z, T', h, w)` with T' = (F − 1)/4 + 1."""
        f = self.vae_scale_factor_spatial
        t = (num_frames - 1) // self.vae_scale_factor_temporal + 1
        return (batch, self.num_channels_latents, t, height // f, width // f)

    # -- jitted body

    def _make_denoise_step(self, graphdef: nnx.GraphDef):
        def denoise_step(state, latents, sched, timestep, prompt_embeds, negative_prompt_embeds,
                         image_embeds, condition, frame_mask, token_mask, guidance_scale):
            """Velocity (with guidance) from one expert, then one scheduler step.

            latents `[B, z, T', h, w]` f32; timestep `[]` f32; condition: I2V `[B, 4 + z, T', h, w]`
            (concatenated) or TI2V `[B, z, 1, h, w]` (replaces frame 0 where `frame_mask` is 0);
            token_mask `[S]` (expand_timesteps) multiplies the timestep per token.
            """
            model = nnx.merge(graphdef, state)
            b = latents.shape[0]
            if self.expand_timesteps:
                x = latents if condition is None else (
                    (1 - frame_mask) * condition + frame_mask * latents)
                t = jnp.broadcast_to((token_mask * timestep)[None], (b, token_mask.shape[0]))
            else:
                x = latents if condition is None else jnp.concatenate([latents, condition], axis=1)
                t = jnp.broadcast_to(timestep, (b,))
            x = x.astype(self.dtype)

            def velocity(x, t, text, image):
                out = model(hidden_states=x, timestep=t, encoder_hidden_states=text.astype(self.dtype),
                            encoder_hidden_states_image=None if image is None
                            else image.astype(self.dtype))
                return out.astype(jnp.float32)

            if negative_prompt_embeds is None:
                v = velocity(x, t, prompt_embeds, image_embeds)
            elif negative_prompt_embeds.shape == prompt_embeds.shape:
                # cond and uncond as one batch: [cond; uncond]
                twice = lambda a: None if a is None else jnp.concatenate([a, a], axis=0)
                both = velocity(twice(x), twice(t),
                                jnp.concatenate([prompt_embeds, negative_prompt_embeds], axis=0),
                                twice(image_embeds))
                v = unipc.cfg(both[:b], both[b:], guidance_scale)
            else:  # different text lengths cannot share a batch
                v = unipc.cfg(velocity(x, t, prompt_embeds, image_embeds),
                              velocity(x, t, negative_prompt_embeds, image_embeds), guidance_scale)

            if isinstance(sched, EulerState):
                i = sched.step_index
                latents = flow_match.step(v, sched.sigmas[i], sched.sigmas[i + 1], latents)
                out = latents, EulerState(sched.sigmas, i + 1)
            else:
                out = unipc.step(sched, v, latents)
            return self.place_like_latents(out, latents.shape, self.placement.constrain)

        return denoise_step

    @staticmethod
    def place_like_latents(tree, latent_shape, place):
        """`place(leaf, axes)` on every leaf: latent-shaped trailing dims (latents, UniPC history) get
        LATENT_AXES, everything else (sigmas, step counters, coefficients) is replicated."""
        n = len(latent_shape)

        def axes(leaf):
            shape = tuple(leaf.shape)
            if shape[-n:] == tuple(latent_shape) and len(shape) >= n:
                return (None,) * (len(shape) - n) + LATENT_AXES
            return ()

        return jax.tree.map(lambda leaf: place(leaf, axes(leaf)), tree)

    # -- host-side helpers

    def schedule(self, num_inference_steps: int | None, latent_shape, *, start_step: int = 0,
                 sigmas=None) -> tuple[np.ndarray, object]:
        """(model-facing timesteps `[N]` float32, scheduler state ready for step `start_step`).

        `sigmas`: a full table `[N+1]` ending in 0 (e.g. ComfyUI's) instead of the config's N-step
        schedule; the model then sees `sigma · num_train_timesteps`."""
        cfg = self.scheduler_config
        if sigmas is not None:
            table = np.asarray(sigmas, np.float32)
            if table.ndim != 1 or len(table) < 2:
                raise ValueError(f"sigmas must be a table [N+1] ending in 0, got shape {table.shape}")
            timesteps = table[:-1] * np.float32(cfg.num_train_timesteps)
        elif isinstance(cfg, UniPCConfig):
            schedule = unipc.set_timesteps(cfg, num_inference_steps)
            table, timesteps = schedule.sigmas, schedule.timesteps
        else:
            schedule = flow_match.set_timesteps(cfg, num_inference_steps)
            table, timesteps = schedule.sigmas, schedule.timesteps
        if isinstance(cfg, UniPCConfig):
            state = unipc.init_state(cfg, table, latent_shape, begin_index=start_step)
        else:
            state = EulerState(jnp.asarray(table), jnp.asarray(start_step, jnp.int32))
        # diffusers hands the transformer the int64 (UniPC) / float32 (Euler) timestep as is; the
        # model computes in float32, exact for these integers.
        return np.asarray(timesteps).astype(np.float32), state

    @staticmethod
    def start_step(num_inference_steps: int, denoise: float) -> int:
        """First step of a video-to-video run (diffusers WanVideoToVideoPipeline's `strength` rule)."""
        denoise = check_denoise(denoise)
        return max(num_inference_steps - min(int(num_inference_steps * denoise), num_inference_steps), 0)

    def check_conditioning(self, prompt_embeds, negative_prompt_embeds=None, image_embeds=None, *,
                           guidance_scale: float = 5.0, image_given: bool = False):
        """(prompt_embeds, negative_prompt_embeds or None without guidance, image_embeds or None) as
        float32 arrays; ValueError naming what is missing or mis-shaped for this transformer."""
        config = self.transformer.config
        if image_given and config.in_channels != self._i2v_channels():
            raise ValueError(f"image given, but the transformer has in_channels {config.in_channels}: "
                             f"a text-to-video model (image-to-video needs {self._i2v_channels()})")
        if not image_given and config.in_channels != self.num_channels_latents:
            raise ValueError(f"the transformer has in_channels {config.in_channels}: an image-to-video "
                             f"model (text-to-video needs {self.num_channels_latents}); pass image=")
        prompt_embeds = jnp.asarray(prompt_embeds, jnp.float32)
        if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != config.text_dim:
            raise ValueError(f"prompt_embeds must be [B, S_txt, {config.text_dim}], got "
                             f"{prompt_embeds.shape}")
        batch = prompt_embeds.shape[0]
        if guidance_scale > 1.0:
            if negative_prompt_embeds is None:
                raise ValueError(f"guidance_scale={guidance_scale} > 1 needs negative_prompt_embeds "
                                 "(e.g. the encoded empty prompt), or use guidance_scale <= 1")
            negative_prompt_embeds = jnp.asarray(negative_prompt_embeds, jnp.float32)
            if (negative_prompt_embeds.ndim != 3 or negative_prompt_embeds.shape[0] != batch
                    or negative_prompt_embeds.shape[-1] != config.text_dim):
                raise ValueError(f"negative_prompt_embeds must be [{batch}, S_neg, {config.text_dim}], "
                                 f"got {negative_prompt_embeds.shape}")
        else:
            negative_prompt_embeds = None
        if config.image_dim is None:
            if image_embeds is not None:
                raise ValueError("image_embeds given, but the transformer has no image_dim (only Wan "
                                 "2.1 I2V takes CLIP-vision features)")
            return prompt_embeds, negative_prompt_embeds, None
        if not image_given:
            raise ValueError("the transformer takes CLIP-vision image_embeds (Wan 2.1 I2V); pass "
                             "image= and image_embeds=")
        if image_embeds is None:
            raise ValueError(f"image_embeds [1 or {batch}, S_img, {config.image_dim}] are required: "
                             "the transformer has image_dim (CLIP-vision features of the image)")
        image_embeds = jnp.asarray(image_embeds, jnp.float32)
        if (image_embeds.ndim != 3 or image_embeds.shape[0] not in (1, batch)
                or image_embeds.shape[-1] != config.image_dim):
            raise ValueError(f"image_embeds must be [1 or {batch}, S_img, {config.image_dim}], got "
                             f"{image_embeds.shape}")
        return (prompt_embeds, negative_prompt_embeds,
                jnp.broadcast_to(image_embeds, (batch, *image_embeds.shape[1:])))

    def _encode(self, pixels: np.ndarray) -> jax.Array:
        """`[B, 3, F, H, W]` in −1..1 → raw latents `[B, z, T', h, w]` float32 (posterior mode)."""
        return self.vae.encode_mode(jnp.asarray(pixels, self.vae_dtype)).astype(jnp.float32)

    def encode_video(self, video) -> jax.Array:
        """Frames `[F, H, W, 3]` / `[B, F, H, W, 3]` (float 0..1 or uint8; F = 4k + 1, sizes multiples
        of `size_multiple`) → raw VAE latents `[B, z, T', h, w]` float32."""
        video = np.asarray(video)
        pixels = pixels_in(video[None] if video.ndim == 4 else video, "video")  # [B, 3, F, H, W]
        if pixels.ndim != 5:
            raise ValueError(f"video must be [F, H, W, 3] or [B, F, H, W, 3], got {video.shape}")
        self.check_inputs(pixels.shape[3], pixels.shape[4], pixels.shape[2])
        return self._encode(pixels)

    def to_model(self, latents) -> jax.Array:
        """Raw VAE latents → the transformer's (normalised) space: (z − mean) · (1/std)."""
        return (jnp.asarray(latents, jnp.float32) - self.latents_mean) * self.latents_inv_std

    def to_raw(self, latents) -> jax.Array:
        """The transformer's latents → raw VAE latents: z / (1/std) + mean (as diffusers)."""
        return jnp.asarray(latents, jnp.float32) / self.latents_inv_std + self.latents_mean

    def prepare_latents(self, batch: int, height: int, width: int, num_frames: int, seed: int) -> jax.Array:
        """N(0, 1) noise `[B, z, T', h, w]` from `seed`."""
        return jax.random.normal(jax.random.key(seed), self.latent_shape(batch, height, width, num_frames),
                                 jnp.float32)

    def image_condition(self, image, batch: int, height: int, width: int, num_frames: int, *,
                        image_latents=None):
        """(condition, frame_mask, token_mask) the denoise step takes for a first frame `image`
        (None: text-to-video), placed: I2V `[B, 4 + z, T', h, w]` mask + image latents on channels;
        TI2V (`expand_timesteps`) the image latents `[B, z, 1, h, w]`, the frame mask and per-token
        timestep mask `[S]`. `image_latents`: model-space latents standing in for the encoded image
        (I2V `[B, z, T', h, w]`, TI2V `[B, z, 1, h, w]`; e.g. zeros where only shapes matter)."""
        config = self.transformer.config
        _, _, t_lat, h_lat, w_lat = self.latent_shape(batch, height, width, num_frames)
        image_given = image is not None or image_latents is not None
        condition = frame_mask = token_mask = None
        if self.expand_timesteps:
            mask = np.ones((1, 1, t_lat, h_lat, w_lat), np.float32)
            if image_given:
                mask[:, :, 0] = 0.0  # the encoded image is frame 0, at timestep 0
                frame_mask = jnp.asarray(mask)
            _, ph, pw = config.patch_size
            token_mask = jnp.asarray(mask[0, 0, :, ::ph, ::pw].reshape(-1))  # [S], (f, h, w) order
        if image_given:
            latent_condition = image_latents
            if latent_condition is None:
                pixels = pixels_in(pixels_at(image, batch, height, width))[:, :, None]  # [B, 3, 1, H, W]
                if not self.expand_timesteps:
                    zeros = np.zeros((*pixels.shape[:2], num_frames - 1, *pixels.shape[3:]), np.float32)
                    pixels = np.concatenate([pixels, zeros], axis=2)  # [B, 3, F, H, W]
                latent_condition = self.to_model(self._encode(pixels))
            if self.expand_timesteps:
                condition = latent_condition  # [B, z, 1, h, w]
            else:
                mask = np.zeros((batch, self.vae_scale_factor_temporal, t_lat, h_lat, w_lat), np.float32)
                mask[:, :, 0] = 1.0  # frame 0 packed 4×: all four mask channels of latent frame 0
                condition = jnp.concatenate([jnp.asarray(mask), latent_condition], axis=1)
        put = self.placement.put
        return (None if condition is None else put(condition, LATENT_AXES)), put(frame_mask), put(token_mask)

    def _experts(self, image_given: bool, guidance_scale: float, guidance_scale_2: float | None):
        """(switch timestep or None, guidance per expert); validates `guidance_scale_2`."""
        if self.transformer_2 is None:
            if guidance_scale_2 is not None:
                raise ValueError("guidance_scale_2 is only for two experts (transformer_2 and "
                                 "boundary_ratio)")
            return None, (guidance_scale,)
        ratio = self.boundary_ratio
        if ratio is None:
            ratio = WAN22_I2V_BOUNDARY_RATIO if image_given else WAN22_T2V_BOUNDARY_RATIO
        second = guidance_scale if guidance_scale_2 is None else guidance_scale_2
        return ratio * self.scheduler_config.num_train_timesteps, (guidance_scale, second)

    # -- sample

    def sample(self, latents, prompt_embeds, negative_prompt_embeds=None, *, noise=None, image=None,
               image_embeds=None, num_inference_steps: int | None = None, sigmas=None,
               start_step: int = 0, end_step: int | None = None, guidance_scale: float = 5.0,
               guidance_scale_2: float | None = None,
               callback: ProgressCallback | None = None) -> jax.Array:
        """Denoise raw-space latents from step `start_step` to `end_step` of the schedule.

        Args:
            latents: raw VAE latents `[B, z, T', h, w]`: with `noise`, a clean video to noise to the
                start sigma (video-to-video); without, latents already at the start sigma (resuming a
                run `sample(..., end_step=k)` stopped; UniPC restarts its history there, as diffusers
                and ComfyUI do when they start part-way). None with `noise`: start from pure noise.
            prompt_embeds, negative_prompt_embeds, image_embeds: as in `__call__`.
            noise: N(0, 1) `[B, z, T', h, w]` (see `prepare_latents`).
            image: the first frame for image-to-video, at the video's size.
            num_inference_steps: N of the scheduler's schedule (default 50), or `sigmas`: a full
                table `[N+1]` ending in 0, used as given.
            start_step, end_step: the steps to run, `0 <= start < end <= N`.
            guidance_scale, guidance_scale_2: as in `__call__`.
            callback: `callback(steps_done, steps)` after each finished step; `False` stops.
        Returns:
            raw latents `[B, z, T', h, w]` float32 at sigma[end_step].
        """
        ref = noise if latents is None else latents
        if ref is None:
            raise ValueError("sample needs latents, noise or both")
        shape = tuple(jnp.shape(ref))
        if len(shape) != 5:
            raise ValueError(f"latents/noise must be [B, z, T', h, w], got {shape}")
        f, ft = self.vae_scale_factor_spatial, self.vae_scale_factor_temporal
        height, width, num_frames = shape[3] * f, shape[4] * f, (shape[2] - 1) * ft + 1
        if num_inference_steps is None and sigmas is None:
            num_inference_steps = 50
        timesteps, sched = self.schedule(num_inference_steps, shape, start_step=start_step, sigmas=sigmas)
        x = self._start(latents, noise, sched, start_step, shape)
        conditioning = self.check_conditioning(prompt_embeds, negative_prompt_embeds, image_embeds,
                                               guidance_scale=guidance_scale, image_given=image is not None)
        condition = self.image_condition(image, shape[0], height, width, num_frames)
        x = self.sample_latents(x, sched, timesteps, conditioning, condition, start_step=start_step,
                                end_step=end_step, guidance_scale=guidance_scale,
                                guidance_scale_2=guidance_scale_2, image_given=image is not None,
                                callback=callback)
        return self.to_raw(x)

    def _start(self, latents, noise, sched, start_step: int, shape) -> jax.Array:
        """The model-space latents the run starts from (see `sample`)."""
        def checked(x, what):
            x = jnp.asarray(x, jnp.float32)
            if x.shape != tuple(shape):
                raise ValueError(f"{what} must be {tuple(shape)} [B, z, T', h, w], got {x.shape}")
            return x

        if latents is None:
            return checked(noise, "noise")
        x = self.to_model(checked(latents, "latents"))
        if noise is None:
            return x
        sigmas = sched.sigmas if isinstance(sched, EulerState) else sched.coeffs.sigma
        return add_noise(x, checked(noise, "noise"), sigmas[start_step])

    def sample_latents(self, latents: jax.Array, sched, timesteps: np.ndarray, conditioning, condition, *,
                       start_step: int = 0, end_step: int | None = None, guidance_scale: float = 5.0,
                       guidance_scale_2: float | None = None, image_given: bool = False,
                       callback: ProgressCallback | None = None) -> jax.Array:
        """The loop on model-space latents `[B, z, T', h, w]`: steps `start_step..end_step` with the
        scheduler state `sched` (from `schedule`), `conditioning` from `check_conditioning` and
        `condition` from `image_condition`; returns the latents (TI2V: frame 0 replaced by the
        image's). Records `compile_stats` (what the first step of each expert compiled)."""
        start, end = check_steps(len(timesteps), start_step, end_step)
        boundary, scales = self._experts(image_given, guidance_scale, guidance_scale_2)
        carry, fixed = self._placed_inputs(latents, sched, conditioning, condition)
        condition_latents, frame_mask, _ = condition
        experts = [nnx.state(self.transformer)]
        if self.transformer_2 is not None:
            experts.append(nnx.state(self.transformer_2))
        expert_of = lambda i: self._expert_for(float(timesteps[i]), boundary)

        def run_step(i, carry):
            e = expert_of(i)
            return self.denoise_steps[e](*self._step_args(experts[e], carry, timesteps[i], fixed, scales[e]))

        with attention_context(self.attention, self.sequence_parallel, self.mesh):
            (latents, _), self.compile_stats = denoise_loop(range(start, end), run_step, carry,
                                                            program=expert_of, callback=callback)
        if frame_mask is not None:
            latents = (1 - frame_mask) * condition_latents + frame_mask * latents
        return latents

    def _placed_inputs(self, latents, sched, conditioning, condition) -> tuple[tuple, tuple]:
        """((latents, scheduler state), the arguments every step shares) placed as the step takes
        them; `conditioning` from `check_conditioning`, `condition` from `image_condition`."""
        put = self.placement.put
        carry = self.place_like_latents((latents, sched), tuple(latents.shape), put)
        return carry, (*(put(a, ("batch", None, None)) for a in conditioning), *condition)

    def _step_args(self, state, carry, timestep, fixed: tuple, guidance_scale) -> tuple:
        """The denoise step's arguments (see `_make_denoise_step`) for one step."""
        put = self.placement.put
        return (state, *carry, put(np.float32(timestep)), *fixed, put(np.float32(guidance_scale)))

    def step_program(self, batch: int, height: int, width: int, num_frames: int = 81,
                     text_tokens: int = 512, num_inference_steps: int = 50, seed: int = 0, *,
                     guidance_scale: float = GUIDANCE) -> StepProgram:
        """The first step (of the first expert) of a run at this size, as `sample_latents` runs it
        (same jitted step, arguments placed the same way), on stand-in embeddings
        (`random_conditioning`; CLIP-vision features N(0, 1) when the transformer takes them) and
        `prepare_latents` noise: for benchmarks and compile checks. An image-to-video transformer
        gets zero image latents (`image_condition(image_latents=…)`; the step costs the same)."""
        self.check_inputs(height, width, num_frames)
        check_steps(_as_int(num_inference_steps, "num_inference_steps"), 0, None)
        config = self.transformer.config
        conditioning = {k: None if v is None else np.repeat(v, batch, axis=0)
                        for k, v in self.random_conditioning(seed, text_tokens).items()}
        if config.image_dim is not None:
            conditioning["image_embeds"] = np.random.default_rng(seed).standard_normal(
                (batch, IMAGE_TOKENS, config.image_dim), np.float32)
        image_given = config.in_channels != self.num_channels_latents  # I2V: it needs a first frame
        conditioning = self.check_conditioning(**conditioning, guidance_scale=guidance_scale,
                                               image_given=image_given)
        shape = self.latent_shape(batch, height, width, num_frames)
        image_latents = None
        if image_given:
            image_latents = jnp.zeros((*shape[:2], 1 if self.expand_timesteps else shape[2], *shape[3:]))
        condition = self.image_condition(None, batch, height, width, num_frames, image_latents=image_latents)
        timesteps, sched = self.schedule(num_inference_steps, shape)
        _, scales = self._experts(image_given, guidance_scale, None)
        carry, fixed = self._placed_inputs(self.prepare_latents(batch, height, width, num_frames, seed),
                                           sched, conditioning, condition)
        args = self._step_args(nnx.state(self.transformer), carry, timesteps[0], fixed, scales[0])
        update = "UniPC" if isinstance(self.scheduler_config, UniPCConfig) else "FlowMatch Euler"
        cfg = conditioning[1] is not None  # [cond; uncond] as one batch (same text length)
        what = (f"transformer forward on the [cond; uncond] batch (CFG) + {update} update" if cfg
                else f"transformer forward + {update} update")
        tokens = self.image_tokens(config, shape)
        sizes = families.Sizes(batch=batch * (2 if cfg else 1), height=shape[3], width=shape[4],
                               frames=shape[2], text_tokens=text_tokens,
                               image_tokens=IMAGE_TOKENS if config.image_dim is not None else 0,
                               timestep_tokens=tokens if self.expand_timesteps else 1)
        return StepProgram(self.denoise_steps[0], args, what, sizes, lambda out: self.to_raw(out[0]))

    def decode(self, latents) -> np.ndarray:
        """Raw VAE latents `[B, z, T', h, w]` → frames `[B, F, H, W, 3]` float32 0..1 (host numpy)."""
        with vae_attention_context():
            z = jnp.asarray(latents, jnp.float32).astype(self.vae_dtype)
            video = self.vae.decode(z).astype(jnp.float32)  # [B, 3, F, H, W]
        video = jnp.clip(video * 0.5 + 0.5, 0.0, 1.0)
        return to_host(video.transpose(0, 2, 3, 4, 1))

    def _expert_for(self, timestep: float, boundary: float | None) -> int:
        return 0 if boundary is None or timestep >= boundary else 1

    # -- all of it

    def _video_frames(self, video, batch: int, height: int, width: int, num_frames: int) -> np.ndarray:
        frames = np.asarray(video)
        frames = pixels_at(frames[None] if frames.ndim == 4 else frames, batch, height, width, "video")
        if frames.ndim != 5 or frames.shape[1] != num_frames:
            raise ValueError(f"video must have num_frames={num_frames} frames [F, H, W, 3], got "
                             f"{frames.shape}")
        return frames

    def check_call(self, prompt_embeds, negative_prompt_embeds=None, *, image=None, image_embeds=None,
                   video=None, denoise: float = 1.0, height: int = 480, width: int = 832,
                   num_frames: int = 81, num_inference_steps: int = 50, guidance_scale: float = 5.0,
                   guidance_scale_2: float | None = None, latents=None, output_type: str = "np",
                   **unchecked):
        """Every check `__call__` makes before any compute (works on abstract models too); returns
        (conditioning from `check_conditioning`, latent shape, first step)."""
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}")
        num_inference_steps = _as_int(num_inference_steps, "num_inference_steps")
        check_steps(num_inference_steps, 0, None)
        self.check_inputs(height, width, num_frames)
        start = 0 if video is None else self.start_step(num_inference_steps, denoise)
        check_steps(num_inference_steps, start, None)
        conditioning = self.check_conditioning(prompt_embeds, negative_prompt_embeds, image_embeds,
                                               guidance_scale=guidance_scale, image_given=image is not None)
        self._experts(image is not None, guidance_scale, guidance_scale_2)
        shape = self.latent_shape(conditioning[0].shape[0], height, width, num_frames)
        if latents is not None and jnp.shape(latents) != shape:
            raise ValueError(f"latents must be {shape} [B, z, T', h, w], got {jnp.shape(latents)}")
        if image is not None:
            pixels_at(image, shape[0], height, width)
        if video is not None:
            self._video_frames(video, shape[0], height, width, num_frames)
        return conditioning, shape, start

    def __call__(self, prompt_embeds, negative_prompt_embeds=None, *, image=None, image_embeds=None,
                 video=None, denoise: float = 1.0, height: int = 480, width: int = 832,
                 num_frames: int = 81, num_inference_steps: int = 50, guidance_scale: float = 5.0,
                 guidance_scale_2: float | None = None, seed: int = 0, latents=None,
                 output_type: str = "np", callback: ProgressCallback | None = None
                 ) -> WanPipelineOutput:
        """Sample videos (text-to-video; image-to-video with `image`; video-to-video with `video`).

        Args:
            prompt_embeds: `[B, S_txt, text_dim]` UMT5 embeddings (diffusers pads to 512 tokens).
            negative_prompt_embeds: `[B, S_neg, text_dim]`; required when `guidance_scale > 1`.
            image: first frame for I2V, `[H, W, 3]` or `[1 or B, H, W, 3]`, float 0..1 or uint8, at
                the output size.
            image_embeds: CLIP-vision features `[1 or B, S_img, image_dim]` (Wan 2.1 I2V only;
                required when the transformer has `image_dim`).
            video: start video `[F, H, W, 3]` / `[1 or B, F, H, W, 3]` (float 0..1 or uint8) at the
                output size and frame count: encoded, noised to the start sigma, denoised from there.
            denoise: with `video`, how much to change it, in (0, 1] (diffusers' `strength`): the run
                starts at step `N − int(N·denoise)`.
            height, width: pixels, multiples of `size_multiple`.
            num_frames: 4k + 1.
            num_inference_steps: N of the full schedule.
            guidance_scale: CFG scale (the high-noise expert's for A14B); CFG runs when > 1.
            guidance_scale_2: the low-noise expert's (default `guidance_scale`); two experts only.
            seed: noise seed when `latents` is None.
            latents: initial noise `[B, z, T', h, w]`.
            output_type: "np" (decode) or "latent".
            callback: called as `callback(steps_done, steps)` after each finished step; returning False
                stops early.
        Returns:
            WanPipelineOutput(frames `[B, F, H, W, 3]` float32 0..1, latents `[B, z, T', h, w]`).
        """
        conditioning, shape, start = self.check_call(
            prompt_embeds, negative_prompt_embeds, image=image, image_embeds=image_embeds, video=video,
            denoise=denoise, height=height, width=width, num_frames=num_frames,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            guidance_scale_2=guidance_scale_2, latents=latents, output_type=output_type)
        batch = shape[0]
        noise = (self.prepare_latents(batch, height, width, num_frames, seed) if latents is None
                 else jnp.asarray(latents, jnp.float32))
        clean = None
        if video is not None:
            clean = self._encode(pixels_in(self._video_frames(video, batch, height, width, num_frames), "video"))
        condition = self.image_condition(image, batch, height, width, num_frames)

        # -- denoise, decode
        timesteps, sched = self.schedule(num_inference_steps, shape, start_step=start)
        x = self._start(clean, noise, sched, start, shape)
        x = self.sample_latents(x, sched, timesteps, conditioning, condition, start_step=start,
                                guidance_scale=guidance_scale, guidance_scale_2=guidance_scale_2,
                                image_given=image is not None, callback=callback)
        frames = self.decode(self.to_raw(x)) if output_type == "np" else None
        return WanPipelineOutput(frames=frames, latents=to_host(x))
