"""Ahead-of-time export of a Flux denoise step with `jax.export`: serialise once, run without tracing.

`export_denoise_step(pipeline, path, batch=, height=, width=, text_len=)` writes the StableHLO of one
fixed-shape step — transformer + FlowMatch Euler update, exactly `FluxPipeline.denoise_step` — with the
transformer's weights as arguments (a flat list in `jax.tree.leaves(nnx.state(transformer))` order), not
baked-in constants, so the file stays small and works for any checkpoint of the same architecture.
`load_exported_step(path)` reads it back as an `ExportedStep`, called like the jitted step with
`step_weights(pipeline)` in place of the state:

    export_denoise_step(pipe, "step.jaxexport", batch=1, height=1024, width=1024, text_len=512)
    step = load_exported_step("step.jaxexport")
    latents = step(step_weights(pipe), latents, timestep, sigma, sigma_next, prompt_embeds,
                   pooled_prompt_embeds, img_ids, txt_ids, guidance)

Single-device export (no mesh shardings); `platforms=("cpu", "cuda", "tpu")` exports for several
backends at once. Imports jax/flax and the Flux pipeline only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import export as jax_export

from .flux import PATCH, FluxPipeline, ID_AXES

F32 = jnp.float32


def step_weights(pipeline: FluxPipeline) -> list[jax.Array]:
    """The transformer's weights as the exported step takes them: a flat list."""
    return jax.tree.leaves(nnx.state(pipeline.transformer))


def step_shapes(pipeline: FluxPipeline, *, batch: int, height: int, width: int,
                text_len: int) -> tuple:
    """`jax.ShapeDtypeStruct`s of the step's arguments after the weights, for pixel `height`×`width`:
    (latents `[B, S_img, 4C]`, timestep, sigma, sigma_next `[]`, prompt_embeds `[B, S_txt, D]`,
    pooled `[B, P]`, img_ids `[S_img, 3]`, txt_ids `[S_txt, 3]`, guidance `[B]` or None)."""
    pipeline.check_size(height, width)
    config = pipeline.transformer.config
    h, w = height // pipeline.vae_scale_factor, width // pipeline.vae_scale_factor
    s_img = (h // PATCH) * (w // PATCH)
    spec = jax.ShapeDtypeStruct
    scalar = spec((), F32)
    return (spec((batch, s_img, pipeline.num_channels_latents * PATCH * PATCH), F32), scalar, scalar,
            scalar, spec((batch, text_len, config.joint_attention_dim), F32),
            spec((batch, config.pooled_projection_dim), F32), spec((s_img, ID_AXES), F32),
            spec((text_len, ID_AXES), F32),
            spec((batch,), F32) if config.guidance_embeds else None)


def export_denoise_step(pipeline: FluxPipeline, path: str | os.PathLike | None = None, *,
                        batch: int = 1, height: int = 1024, width: int = 1024, text_len: int = 512,
                        platforms: Sequence[str] | None = None) -> jax_export.Exported:
    """Export one denoise step at fixed shapes (see module doc); write it to `path` when given.

    Returns the `jax.export.Exported`; `platforms` None = the current backend.
    """
    _require_flatbuffers()
    treedef = jax.tree.structure(nnx.state(pipeline.transformer))

    def step(weights, *args):
        return pipeline._denoise_step(jax.tree.unflatten(treedef, weights), *args)

    weights = [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in step_weights(pipeline)]
    shapes = step_shapes(pipeline, batch=batch, height=height, width=width, text_len=text_len)
    exported = jax_export.export(jax.jit(step), platforms=platforms)(weights, *shapes)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(exported.serialize())
    return exported


def _require_flatbuffers() -> None:
    """jax's (de)serialisation needs the small `flatbuffers` package, an optional jax dependency."""
    import importlib.util

    if importlib.util.find_spec("flatbuffers") is None:
        raise ImportError("exporting a step needs the 'flatbuffers' package: pip install flatbuffers "
                          "(jax uses it to serialise jax.export.Exported)")


class ExportedStep:
    """A deserialised denoise step: `step(weights, latents, timestep, sigma, sigma_next, prompt_embeds,
    pooled_prompt_embeds, img_ids, txt_ids, guidance)` → next latents."""

    def __init__(self, exported: jax_export.Exported):
        self.exported = exported
        args_tree = exported.in_tree.children()[0]  # in_tree is ((weights, *args), {})
        self.num_weights = args_tree.children()[0].num_leaves

    def __call__(self, weights: Sequence[jax.Array], *args):
        if len(weights) != self.num_weights:
            raise ValueError(f"the exported step takes {self.num_weights} weight arrays, got "
                             f"{len(weights)}: a transformer of another architecture?")
        return self.exported.call(list(weights), *args)


def load_exported_step(path: str | os.PathLike) -> ExportedStep:
    """Read a file written by `export_denoise_step`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported step at {path}")
    _require_flatbuffers()
    return ExportedStep(jax_export.deserialize(bytearray(path.read_bytes())))
