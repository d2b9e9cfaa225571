"""A throw-away model family, registered by tests only: proof that a family is one registry row.

`ToyTransformer` takes Flux's forward signature (so `FluxPipeline` drives it) with almost nothing
inside: packed latents and the pooled text go through two Linears and the timestep through the
shared sinusoidal projection. Its VAE is the Flux one. No torch here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import families
from jaxdiff.models_flax.layers import ConfigIO, Linear, timestep_projection
from jaxdiff.pipelines.flux import FluxPipeline

TIME_CHANNELS = 16


@dataclasses.dataclass(frozen=True)
class ToyConfig(ConfigIO):
    in_channels: int = 64
    hidden: int = 32
    joint_attention_dim: int = 16
    pooled_projection_dim: int = 16
    guidance_embeds: bool = False


class ToyTransformer(nnx.Module):
    def __init__(self, config: ToyConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        kw = dict(param_dtype=param_dtype, rngs=rngs)
        self.x_embedder = Linear(config.in_channels, config.hidden, axes=(None, "embed"), **kw)
        self.time_embedder = Linear(TIME_CHANNELS, config.hidden, axes=(None, "embed"), **kw)
        self.text_embedder = Linear(config.pooled_projection_dim, config.hidden, axes=(None, "embed"), **kw)
        self.proj_out = Linear(config.hidden, config.in_channels, axes=("embed", None), **kw)

    def __call__(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids,
                 txt_ids, guidance=None):
        temb = self.time_embedder(timestep_projection(timestep * 1000.0, TIME_CHANNELS))  # [B, D]
        temb = temb + self.text_embedder(pooled_projections) + encoder_hidden_states.mean() * 0.0
        return self.proj_out(jax.nn.silu(self.x_embedder(hidden_states) + temb[:, None]))


def example_inputs(config: ToyConfig, sizes, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    b, s, t = sizes.batch, sizes.height * sizes.width, sizes.text_tokens
    return dict(hidden_states=rng.standard_normal((b, s, config.in_channels), np.float32),
                encoder_hidden_states=rng.standard_normal((b, t, config.joint_attention_dim), np.float32),
                pooled_projections=rng.standard_normal((b, config.pooled_projection_dim), np.float32),
                timestep=np.full((b,), 0.5, np.float32), img_ids=np.zeros((s, 3), np.float32),
                txt_ids=np.zeros((t, 3), np.float32), guidance=None)


TOY_TRANSFORMER = families.ModelKind(
    name="toy", role="transformer", class_name="ToyTransformer2DModel", config_class=ToyConfig,
    model_class=ToyTransformer, example_inputs=example_inputs)

TOY = families.Family(
    name="toy", description="a throw-away test family", output="image", transformer=TOY_TRANSFORMER,
    vae=families.FLUX_VAE, pipeline=FluxPipeline,
    embedded=families.Embedded(transformer=dict(ToyConfig().to_dict()), vae=families.FLUX.embedded.vae,
                               height=32, width=32, steps=2),
    options=("init_image",))
