"""Child process of tests/test_sharded_models.py: tiny Flux and Wan transformers on 8 fake CPU devices.

Sets XLA_FLAGS before jax is imported, so run it as its own process. For each model and each mesh
(pure data, fsdp, tensor, fsdp×tensor) it places the parameters with `sharding.shard_module`, shards
the inputs' batch axis by the `batch` rule, runs one jitted forward and records: the max abs difference
to the unsharded run, a few parameters' PartitionSpecs and per-device shard shapes, and
`compiled.memory_analysis()` argument bytes per device next to the global byte counts.
Prints one JSON line prefixed `RESULT `. Never imports torch.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "  # compile-time flags: tiny models
                           "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")

import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxdiff.kernels.attention import attention_options  # noqa: E402
from jaxdiff.models_flax.layers import activation_sharding  # noqa: E402
from jaxdiff.models_flax.flux import FluxConfig, FluxTransformer2DModel  # noqa: E402
from jaxdiff.models_flax.wan import WanConfig, WanTransformer3DModel  # noqa: E402
from jaxdiff.sharding import (activation_constraint, logical_sharding, make_mesh, named_shardings, param_bytes,  # noqa: E402
                              per_device_bytes, shard_module)

BATCH = 8  # divisible by every batch-sharding mesh axis below
WEIGHT_STD = 0.05
MESHES = {  # name → (spec, number of devices, sequence parallelism)
    "data": ("data=8", 8, None),
    "fsdp": ("fsdp=8", 8, None),
    "tensor": ("tensor=2", 2, None),
    "fsdp_tensor": ("fsdp=4,tensor=2", 8, None),
    # sequence parallel (both tiny models have 2 heads: Ulysses up to seq=2, ring for any size)
    "seq2_ulysses": ("seq=2", 2, "ulysses"),
    "fsdp4_seq2_ulysses": ("fsdp=4,seq=2", 8, "ulysses"),
    "seq4_ring": ("seq=4", 4, "ring"),
    "seq8_ring": ("seq=8", 8, "ring"),
    "data2_seq4_ring": ("data=2,seq=4", 8, "ring"),
    "tensor2_seq4_ring": ("tensor=2,seq=4", 8, "ring"),
}
COLLECTIVES = ("all-to-all", "collective-permute")
# (model, parameter path) whose placement is recorded
PROBES = {
    "flux": [("transformer_blocks", 0, "attn", "to_q", "kernel"),
             ("transformer_blocks", 0, "attn", "to_out", 0, "kernel"),
             ("transformer_blocks", 0, "ff", "net", 0, "proj", "kernel"),
             ("single_transformer_blocks", 0, "proj_mlp", "kernel"),
             ("proj_out", "bias")],
    "wan": [("blocks", 0, "attn1", "to_q", "kernel"),
            ("blocks", 0, "attn1", "to_out", 0, "kernel"),
            ("blocks", 0, "ffn", "net", 0, "proj", "kernel"),
            ("blocks", 0, "attn1", "norm_q", "scale"),
            ("proj_out", "bias")],
}


def randomize(model: nnx.Module, seed: int) -> nnx.Module:
    """Every parameter N(0, 0.05²), norm scales 1 + N(0, 0.05²): no zero-init hides a wrong shard."""
    state = nnx.state(model, nnx.Param)
    flat = nnx.to_flat_state(state)
    keys = jax.random.split(jax.random.key(seed), len(flat))
    for key, (path, var) in zip(keys, flat):
        value = WEIGHT_STD * jax.random.normal(key, var.shape, var.dtype)
        var.set_value(value + 1.0 if path[-1] == "scale" else value)
    nnx.update(model, state)
    return model


def flux_model():
    config = FluxConfig(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                        pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    model = randomize(FluxTransformer2DModel(config, rngs=nnx.Rngs(0)), 1)
    rng = np.random.default_rng(0)
    side, text = 4, 8
    ids = np.zeros((side, side, 3), np.float32)
    ids[..., 1], ids[..., 2] = np.arange(side)[:, None], np.arange(side)[None, :]
    inputs = dict(hidden_states=rng.standard_normal((BATCH, side * side, 4), np.float32),
                  encoder_hidden_states=rng.standard_normal((BATCH, text, 32), np.float32),
                  pooled_projections=rng.standard_normal((BATCH, 32), np.float32),
                  timestep=rng.uniform(0.05, 0.95, (BATCH,)).astype(np.float32),
                  img_ids=ids.reshape(-1, 3), txt_ids=np.zeros((text, 3), np.float32),
                  guidance=np.full((BATCH,), 3.5, np.float32))
    return model, inputs, {"img_ids", "txt_ids"}


def wan_model():
    config = WanConfig(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                       in_channels=4, out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32,
                       num_layers=1, rope_max_seq_len=32)
    model = randomize(WanTransformer3DModel(config, rngs=nnx.Rngs(0)), 2)
    rng = np.random.default_rng(1)
    inputs = dict(hidden_states=rng.standard_normal((BATCH, 4, 3, 8, 8), np.float32),
                  timestep=rng.uniform(0.0, 1000.0, (BATCH,)).astype(np.float32),
                  encoder_hidden_states=rng.standard_normal((BATCH, 8, 16), np.float32))
    return model, inputs, set()


def forward_fn(graphdef):
    return jax.jit(lambda state, inputs: nnx.merge(graphdef, state)(**inputs))


def place_inputs(inputs: dict, mesh, unbatched: set, seq_inputs: set = frozenset()) -> dict:
    """Batch axes on the `batch` rule; token inputs `[B, S, C]` named in `seq_inputs` also on `seq`."""
    out = {}
    for name, x in inputs.items():
        axes = (None if name in unbatched else "batch",) + (None,) * (x.ndim - 1)
        if name in seq_inputs:
            axes = ("batch", "seq") + (None,) * (x.ndim - 2)
        out[name] = jax.device_put(x, logical_sharding(axes, mesh, shape=x.shape))
    return out


def run_model(name: str, build) -> dict:
    model, inputs, unbatched = build()
    graphdef, state = nnx.split(model)
    forward = forward_fn(graphdef)
    ref = np.asarray(forward(state, {k: jnp.asarray(v) for k, v in inputs.items()}))
    total = param_bytes(state)
    input_bytes = sum(np.asarray(v).nbytes for v in inputs.values())
    results = {"param_bytes": total, "input_bytes": input_bytes, "ref_abs_max": float(np.abs(ref).max()),
               "meshes": {}}
    for mesh_name, (spec, n, seq_mode) in MESHES.items():
        mesh = make_mesh(spec, devices=jax.devices()[:n])
        t0 = time.perf_counter()
        copy = jax.tree.map(jnp.copy, state)  # merge shares Variables: keep `state` unsharded
        sharded = shard_module(nnx.merge(graphdef, copy), mesh)
        _, s_state = nnx.split(sharded)
        s_inputs = place_inputs(inputs, mesh, unbatched, {"hidden_states"} if name == "flux" else set())
        with attention_options(sequence_parallel=seq_mode, mesh=mesh), \
                activation_sharding(activation_constraint(mesh)):  # traced in here
            compiled = forward_fn(graphdef).lower(s_state, s_inputs).compile()
        out = compiled(s_state, s_inputs)
        hlo = compiled.as_text()
        flat = dict(nnx.to_flat_state(s_state))
        probes = {}
        for path in PROBES[name]:
            array = flat[path].get_value()
            probes[".".join(map(str, path))] = {
                "spec": [list(e) if isinstance(e, tuple) else e for e in array.sharding.spec],
                "shape": list(array.shape),
                "shard_shape": list(array.addressable_shards[0].data.shape)}
        mem = compiled.memory_analysis()
        plain = named_shardings(state, mesh, fallback_axis=None)  # rules alone, for comparison
        without_fallback = sum(math.prod(plain[tuple(p)].shard_shape(v.shape)) * v.dtype.itemsize
                               for p, v in nnx.to_flat_state(state))
        results["meshes"][mesh_name] = {
            "spec": spec, "devices": n, "seconds": time.perf_counter() - t0, "max_abs_diff": float(np.abs(np.asarray(out) - ref).max()),
            "out_spec": str(out.sharding.spec), "probes": probes, "sequence_parallel": seq_mode,
            "collectives": {c: hlo.count(c) for c in COLLECTIVES},
            "temp_bytes_per_device": int(mem.temp_size_in_bytes),
            "arg_bytes_per_device": int(mem.argument_size_in_bytes),
            "param_bytes_per_device": per_device_bytes(s_state),
            "param_bytes_per_device_without_fallback": int(without_fallback),
            "input_bytes_per_device": per_device_bytes(s_inputs)}
    results["reference_state_untouched"] = per_device_bytes(state) == total
    # Ulysses needs heads (2 here) divisible by the seq axis: seq=4 must be refused with a clear error
    mesh = make_mesh("seq=4", devices=jax.devices()[:4])
    try:
        with attention_options(sequence_parallel="ulysses", mesh=mesh):
            forward_fn(graphdef).lower(state, place_inputs(inputs, mesh, unbatched)).compile()
        results["ulysses_refusal"] = None
    except ValueError as exc:
        results["ulysses_refusal"] = str(exc)
    return results


def main() -> None:
    start = time.perf_counter()
    assert len(jax.devices()) == 8, jax.devices()
    results = {name: run_model(name, build) for name, build in (("flux", flux_model), ("wan", wan_model))}
    results["seconds"] = time.perf_counter() - start
    results["torch_imported"] = "torch" in sys.modules
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
