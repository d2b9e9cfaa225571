"""Flux text-to-image sampling: pack latents, denoise with FlowMatch Euler, decode with the VAE.

Mirrors diffusers `FluxPipeline` from precomputed prompt embeddings (text encoders live elsewhere):
latents `[B, C, h, w]` are packed 2×2 into tokens `[B, h/2·w/2, 4C]`, image ids are (0, row, col)
on the packed grid, text ids are zeros, the transformer takes sigma (timestep / 1000) and the raw
guidance scale. One jitted function does one denoising step (transformer + Euler update) and is
reused every step; a second jitted function unpacks, unscales and decodes.

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
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..schedulers import flow_match
from ..schedulers.flow_match import FLUX_DEV_SCHEDULER_CONFIG, FlowMatchEulerConfig
from .compile_cache import CompileStats, track_compiles
from .placement import Placement, attention_context, check_attention_args, to_host, vae_attention_context

PATCH = 2  # Flux packs 2×2 latent patches into one token
ID_AXES = 3  # position ids are (index, row, col)

ProgressCallback = Callable[[int, int], None]
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


# ----------------------------------------------------------------------------- placement


# ----------------------------------------------------------------------------- pipeline


@dataclasses.dataclass
class FluxPipelineOutput:
    """`images`: `[B, H, W, C]` float32 in 0..1 (None for `output_type="latent"`);
    `latents`: the final packed latents `[B, S_img, 4C]` float32 (model space, before unscaling)."""

    images: np.ndarray | None
    latents: np.ndarray


def _param_dtype(module: nnx.Module):
    """The dtype of the module's floating-point parameters (its compute dtype here)."""
    for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.dtype
    return jnp.float32


class FluxPipeline:
    """Flux sampling from precomputed prompt embeddings.

    Args:
        transformer: a `FluxTransformer2DModel` (anything with `.config` and the same `__call__`).
        vae: an `AutoencoderKL` (`.config.block_out_channels`, `.decode`, `.unscale_latents`).
        scheduler_config: FlowMatch Euler config; dev's (dynamic shift) by default.
        mesh: a `jax.sharding.Mesh` the modules are already placed on (None: one device).
        attention: attention implementation for the transformer ("auto", "xla", "cudnn",
            "splash"; None = the surrounding `attention_options`, else auto).
        sequence_parallel: None, "ulysses" or "ring": split attention over the mesh's `seq` axis.
    """

    def __init__(self, transformer: nnx.Module, vae: nnx.Module,
                 scheduler_config: FlowMatchEulerConfig = FLUX_DEV_SCHEDULER_CONFIG, *,
                 mesh=None, attention: str | None = None, sequence_parallel: str | None = None):
        check_attention_args(attention, sequence_parallel)
        self.transformer, self.vae, self.scheduler_config = transformer, vae, scheduler_config
        self.mesh, self.attention, self.sequence_parallel = mesh, attention, sequence_parallel
        self.placement = Placement(mesh)
        self.compile_stats: CompileStats | None = None
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.num_channels_latents = transformer.config.in_channels // (PATCH * PATCH)
        if self.num_channels_latents != vae.config.latent_channels:
            raise ValueError(f"transformer in_channels {transformer.config.in_channels} = 4 × "
                             f"{self.num_channels_latents} latent channels, but the VAE has "
                             f"latent_channels={vae.config.latent_channels}")
        self._transformer_graph = nnx.graphdef(transformer)
        self._vae_graph = nnx.graphdef(vae)
        self.dtype, self.vae_dtype = _param_dtype(transformer), _param_dtype(vae)
        self.denoise_step = jax.jit(self._denoise_step)
        self.decode_latents = jax.jit(self._decode_latents, static_argnums=(2, 3))

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

    def _decode_latents(self, state, latents, height, width):
        """Packed model-space latents → `[B, H, W, C]` float32 in 0..1 (`height`, `width` latent)."""
        vae = nnx.merge(self._vae_graph, state)
        z = unpack_latents(latents, height, width)  # [B, C, h, w]
        z = vae.unscale_latents(z).astype(self.vae_dtype)
        image = vae.decode(z).astype(jnp.float32)  # [B, 3, H, W] in about -1..1
        image = jnp.clip(image * 0.5 + 0.5, 0.0, 1.0)
        return image.transpose(0, 2, 3, 1)  # [B, H, W, 3]

    # -- host-side driver

    def check_size(self, height: int, width: int) -> None:
        multiple = self.vae_scale_factor * PATCH
        if (not isinstance(height, (int, np.integer)) or not isinstance(width, (int, np.integer))
                or height <= 0 or width <= 0 or height % multiple or width % multiple):
            raise ValueError(f"height and width must be positive multiples of {multiple} (VAE "
                             f"factor {self.vae_scale_factor} × 2×2 packing), got {height}×{width}")

    def prepare_latents(self, batch_size: int, height: int, width: int, seed: int) -> jax.Array:
        """Packed N(0, 1) noise `[B, S_img, 4C]` from `seed` (drawn unpacked, like diffusers)."""
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        noise = jax.random.normal(jax.random.key(seed),
                                  (batch_size, self.num_channels_latents, h, w), jnp.float32)
        return pack_latents(noise)

    def __call__(self, prompt_embeds, pooled_prompt_embeds, *, height: int = 1024,
                 width: int = 1024, num_inference_steps: int = 28, guidance_scale: float = 3.5,
                 seed: int = 0, latents=None, sigmas=None, output_type: str = "np",
                 callback: ProgressCallback | None = None) -> FluxPipelineOutput:
        """Sample images.

        Args:
            prompt_embeds: `[B, S_txt, joint_attention_dim]` (T5).
            pooled_prompt_embeds: `[B, pooled_projection_dim]` (CLIP pooled).
            height, width: pixels, multiples of `2 · vae_scale_factor` (16 for Flux).
            num_inference_steps: N Euler steps.
            guidance_scale: used only when the transformer has `guidance_embeds`.
            seed: noise seed when `latents` is None.
            latents: initial noise, packed `[B, S_img, 4C]` (as diffusers takes it) or `[B, C, h, w]`.
            sigmas: optional custom sigmas `[N]` (default `linspace(1, 1/N, N)`, as FluxPipeline).
            output_type: "np" (decode) or "latent" (skip the VAE).
            callback: called as `callback(steps_done, N)` after each step (the step has finished).
        Returns:
            FluxPipelineOutput(images `[B, H, W, 3]` float32 0..1, latents `[B, S_img, 4C]`).
        """
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        self.check_size(height, width)
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

        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor  # latent grid
        put = self.placement.put
        packed_shape = (batch, (h // PATCH) * (w // PATCH), self.num_channels_latents * 4)
        if latents is None:
            latents = self.prepare_latents(batch, height, width, seed)
        else:
            latents = jnp.asarray(latents, jnp.float32)
            if latents.ndim == 4:
                latents = pack_latents(latents)
            if latents.shape != packed_shape:
                raise ValueError(f"latents must be packed {packed_shape} (or [B, C, h, w] "
                                 f"{(batch, self.num_channels_latents, h, w)}), got {latents.shape}")

        schedule = flow_match.flux_timesteps(self.scheduler_config, num_inference_steps,
                                             packed_shape[1], sigmas=sigmas)
        # the model sees timestep / 1000 in float32, exactly as FluxPipeline computes it
        model_timesteps = schedule.timesteps / np.float32(1000)
        img_ids = put(latent_image_ids(h // PATCH, w // PATCH))
        txt_ids = put(text_ids(prompt_embeds.shape[1]))
        guidance = (put(np.full((batch,), guidance_scale, np.float32), ("batch",))
                    if config.guidance_embeds else None)
        latents = put(latents, LATENT_AXES)
        # text is short and joins the image tokens inside the model: batch-split only
        prompt_embeds = put(prompt_embeds, ("batch", None, None))
        pooled_prompt_embeds = put(pooled_prompt_embeds, ("batch", None))

        state = nnx.state(self.transformer)
        total = len(schedule.timesteps)
        self.compile_stats = None
        with attention_context(self.attention, self.sequence_parallel, self.mesh):
            for i in range(total):
                args = (state, latents, put(model_timesteps[i]), put(schedule.sigmas[i]),
                        put(schedule.sigmas[i + 1]), prompt_embeds, pooled_prompt_embeds, img_ids,
                        txt_ids, guidance)
                if i == 0:  # traced (and compiled) here, inside the attention options
                    with track_compiles() as self.compile_stats:
                        latents = self.denoise_step(*args)
                else:
                    latents = self.denoise_step(*args)
                if callback is not None:
                    latents.block_until_ready()  # so progress reflects finished work
                    callback(i + 1, total)

        images = None
        if output_type == "np":
            with vae_attention_context():
                images = to_host(self.decode_latents(nnx.state(self.vae), latents, h, w))
        return FluxPipelineOutput(images=images, latents=to_host(latents))
