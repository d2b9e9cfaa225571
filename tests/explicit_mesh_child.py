"""Child process of tests/test_explicit_mesh.py: meshes made by plain `jax.make_mesh(shape, names)`
(Explicit axis types on jax ≥ 0.7) on 8 fake CPU devices.

Usage: `python explicit_mesh_child.py DIFFUSERS_DIR CONVERTED_DIR` (a tiny Flux transformer in both
forms, written by the parent). Sets XLA_FLAGS before jax is imported, so run it as its own process.
Records, for each case, the max abs difference to the one-device run, or the error (type, message and
whether its traceback passed through a matmul) when the case raised:

- `load_diffusers` / `load_converted`: `jaxdiff.load_model(path, mesh=explicit)`, called eagerly and
  under `nnx.jit`, against `load_model(path)`;
- `pipeline_<case>`: a tiny FluxPipeline whose modules were placed with
  `sharding.shard_module(module, explicit)` and which was given `mesh=explicit` (fsdp×tensor, and
  seq with Ulysses / ring attention), final latents and images against one device;
- `kernel_ring`: the model forward under `attention_options(sequence_parallel="ring", mesh=explicit)`
  with the parameters placed on that mesh, against one device;
- `mesh_types`: the axis types of the mesh the loaded parameters sit on.
Prints one JSON line prefixed `RESULT `. Never imports torch.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "  # compile-time flags: tiny models
                           "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
os.environ["JAXDIFF_COMPILE_CACHE"] = "off"

import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import jaxdiff  # noqa: E402
from jaxdiff.kernels.attention import attention_options  # noqa: E402
from jaxdiff.models_flax.flux import FluxConfig, FluxTransformer2DModel  # noqa: E402
from jaxdiff.models_flax.vae_kl import AutoencoderKL, AutoencoderKLConfig  # noqa: E402
from jaxdiff.pipelines.flux import FluxPipeline  # noqa: E402
from jaxdiff.sharding import shard_module  # noqa: E402

BATCH = 8
TEXT_TOKENS = 8
SIDE = 4  # packed latent tokens per side of the loaded model's inputs
# the loaded model: tests/flux_fixtures.py tiny_flux_config (2 heads × 16, in 4, joint/pooled 32)
IN_CHANNELS, JOINT_DIM, POOLED_DIM = 4, 32, 32
# the pipeline's models (as tests/sharded_pipeline_child.py): 4 heads, VAE factor 2, 16×16 pixels
PIPE_FLUX = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32,
                 guidance_embeds=True, axes_dims_rope=(4, 4, 8))
PIPE_VAE = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                use_post_quant_conv=False)
PIPE_SIZE, PIPE_STEPS = 16, 2
PIPE_CASES = {  # name → (mesh shape, axis names, sequence_parallel)
    "fsdp4_tensor2": ((4, 2), ("fsdp", "tensor"), None),
    "seq2_ulysses": ((4, 2), ("data", "seq"), "ulysses"),
    "seq4_ring": ((2, 4), ("data", "seq"), "ring"),
}
WEIGHT_STD = 0.05


def explicit_mesh(shape, names):
    """What a user writes: jax's defaults (Explicit axis types on this jax)."""
    return jax.make_mesh(shape, names)


def flux_inputs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = np.zeros((SIDE, SIDE, 3), np.float32)
    ids[..., 1], ids[..., 2] = np.arange(SIDE)[:, None], np.arange(SIDE)[None, :]
    return dict(hidden_states=rng.standard_normal((BATCH, SIDE * SIDE, IN_CHANNELS), np.float32),
                encoder_hidden_states=rng.standard_normal((BATCH, TEXT_TOKENS, JOINT_DIM), np.float32),
                pooled_projections=rng.standard_normal((BATCH, POOLED_DIM), np.float32),
                timestep=rng.uniform(0.05, 0.95, (BATCH,)).astype(np.float32),
                img_ids=ids.reshape(-1, 3), txt_ids=np.zeros((TEXT_TOKENS, 3), np.float32),
                guidance=np.full((BATCH,), 3.5, np.float32))


def error_entry(exc: BaseException) -> dict:
    tb = traceback.format_exc()
    return {"error": f"{type(exc).__name__}: {exc}"[:1500], "traceback": tb[-3000:],
            "from_matmul": any(w in tb for w in ("dot_general", "matmul", "Contracting"))}


def forward(model, inputs, jitted: bool):
    call = nnx.jit(lambda m, x: m(**x)) if jitted else (lambda m, x: m(**x))
    return np.asarray(call(model, inputs))


def mesh_axis_types(model) -> list[str]:
    leaf = jax.tree.leaves(nnx.state(model, nnx.Param))[0]
    return [t.name for t in leaf.sharding.mesh.axis_types]


def load_case(path: str, results: dict, name: str) -> None:
    inputs = flux_inputs()
    ref = forward(jaxdiff.load_model(path), inputs, jitted=False)
    results[f"{name}_ref_abs_max"] = float(np.abs(ref).max())
    try:
        model = jaxdiff.load_model(path, mesh=explicit_mesh((4, 2), ("fsdp", "tensor")))
        results[f"{name}_mesh_types"] = mesh_axis_types(model)
        for jitted in (False, True):
            out = forward(model, inputs, jitted)
            results[f"{name}_{'jit' if jitted else 'eager'}"] = {"max_abs_diff": float(np.abs(out - ref).max())}
    except Exception as exc:  # reported, so one failing case does not hide the others
        results[f"{name}_eager"] = results[f"{name}_jit"] = error_entry(exc)


def _init(path, leaf, rng):
    """N(0, 0.05²) weights and biases, 1 + N(0, 0.05²) norm scales, N(0, 1/fan_in) conv kernels."""
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    name = [n for n in names if isinstance(n, str) and n != "value"][-1]
    noise = rng.standard_normal(leaf.shape)
    if name in ("scale", "gamma"):
        return (1.0 + WEIGHT_STD * noise).astype(np.float32)
    if len(leaf.shape) > 2:
        return (noise / math.sqrt(math.prod(leaf.shape[:-1]))).astype(np.float32)
    return (WEIGHT_STD * noise).astype(np.float32)


def pipeline_models():
    def make():
        rngs = nnx.Rngs(0)
        return (FluxTransformer2DModel(FluxConfig(**PIPE_FLUX), rngs=rngs),
                AutoencoderKL(AutoencoderKLConfig(**PIPE_VAE), rngs=rngs))

    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    rng = np.random.default_rng(1)
    state = jax.tree_util.tree_map_with_path(lambda p, leaf: jnp.asarray(_init(p, leaf, rng)), abstract)
    return graphdef, state


def run_pipe(pipe, inputs):
    out = pipe(*inputs, height=PIPE_SIZE, width=PIPE_SIZE, num_inference_steps=PIPE_STEPS, seed=3)
    return np.asarray(out.latents), np.asarray(out.images)


def pipeline_cases(results: dict) -> None:
    graphdef, state = pipeline_models()
    rng = np.random.default_rng(10)
    inputs = (rng.standard_normal((BATCH, TEXT_TOKENS, 32), np.float32),
              rng.standard_normal((BATCH, 32), np.float32))
    ref_latents, ref_images = run_pipe(FluxPipeline(*nnx.merge(graphdef, state)), inputs)
    results["pipeline_ref_latents_abs_max"] = float(np.abs(ref_latents).max())
    for case, (shape, names, sequence_parallel) in PIPE_CASES.items():
        try:
            mesh = explicit_mesh(shape, names)
            transformer, vae = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))
            shard_module(transformer, mesh)
            shard_module(vae, mesh)
            pipe = FluxPipeline(transformer, vae, mesh=mesh, sequence_parallel=sequence_parallel)
            latents, images = run_pipe(pipe, inputs)
            results[f"pipeline_{case}"] = {"latents_diff": float(np.abs(latents - ref_latents).max()),
                                           "images_diff": float(np.abs(images - ref_images).max())}
        except Exception as exc:
            results[f"pipeline_{case}"] = error_entry(exc)


def kernel_case(path: str, results: dict) -> None:
    """attention_options(mesh=explicit) reaches shard_map directly, without the pipelines' conversion."""
    inputs = flux_inputs()
    ref = forward(jaxdiff.load_model(path), inputs, jitted=False)
    try:
        mesh = explicit_mesh((2, 4), ("data", "seq"))
        model = jaxdiff.load_model(path, mesh=mesh)
        with attention_options(sequence_parallel="ring", mesh=mesh):
            out = forward(model, inputs, jitted=True)
        results["kernel_ring"] = {"max_abs_diff": float(np.abs(out - ref).max())}
    except Exception as exc:
        results["kernel_ring"] = error_entry(exc)


def main() -> None:
    diffusers_dir, converted_dir = sys.argv[1:3]
    assert len(jax.devices()) == 8, jax.devices()
    assert set(explicit_mesh((4, 2), ("fsdp", "tensor")).axis_types) == {jax.sharding.AxisType.Explicit}
    results: dict = {}
    load_case(diffusers_dir, results, "load_diffusers")
    load_case(converted_dir, results, "load_converted")
    pipeline_cases(results)
    kernel_case(diffusers_dir, results)
    results["torch_imported"] = "torch" in sys.modules
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
