"""Child process of tests/test_t5_sharded.py: a tiny converted UMT5 encoder on 8 fake CPU devices.

Sets XLA_FLAGS before jax is imported, so run it as its own process: `python t5_sharded_child.py DIR`
with DIR a converted jaxdiff checkpoint. For each mesh it restores the checkpoint straight onto the mesh
(`load_model(DIR, mesh=…)`), places the token ids by the `batch` rule, runs one jitted forward with
activation annotations on, and records the max abs difference to the one-device run, a few parameters'
PartitionSpecs, and per-device parameter bytes (from the shards and from `memory_analysis()`) next to
the total. Prints one JSON line prefixed `RESULT `. Never imports torch.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "  # compile-time flags: tiny models
                           "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxdiff import load_model  # noqa: E402
from jaxdiff.models_flax.layers import activation_sharding  # noqa: E402
from jaxdiff.sharding import (activation_constraint, logical_sharding, make_mesh, param_bytes,  # noqa: E402
                              per_device_bytes)

BATCH, SEQ = 8, 12
MESHES = {"data": ("data=8", 8), "fsdp": ("fsdp=8", 8), "tensor": ("tensor=2", 2),
          "fsdp_tensor": ("fsdp=4,tensor=2", 8)}
PROBES = ("encoder.block.0.layer.0.SelfAttention.q.kernel",
          "encoder.block.0.layer.0.SelfAttention.o.kernel",
          "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.embedding",
          "encoder.block.0.layer.1.DenseReluDense.wi_0.kernel",
          "shared.embedding")


def inputs(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (BATCH, SEQ)).astype(np.int32)
    lengths = SEQ - np.arange(BATCH) % 4 * 2  # some items padded
    return ids, (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int32)


def forward(graphdef):
    return jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask))


def main(path: str) -> None:
    assert len(jax.devices()) == 8, jax.devices()
    graphdef, state = nnx.split(load_model(path))
    ids, mask = inputs(nnx.merge(graphdef, state).config.vocab_size)
    ref = np.asarray(forward(graphdef)(state, jnp.asarray(ids), jnp.asarray(mask)))
    results = {"param_bytes": param_bytes(state), "ref_abs_max": float(np.abs(ref).max()), "meshes": {}}
    for name, (spec, n) in MESHES.items():
        mesh = make_mesh(spec, devices=jax.devices()[:n])
        model = load_model(path, mesh=mesh)
        s_graphdef, s_state = nnx.split(model)
        placed = [jax.device_put(x, logical_sharding(("batch", None), mesh, shape=x.shape)) for x in (ids, mask)]
        with activation_sharding(activation_constraint(mesh)):  # traced in here
            compiled = forward(s_graphdef).lower(s_state, *placed).compile()
        out = compiled(s_state, *placed)
        flat = {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(s_state)}
        memory = compiled.memory_analysis()
        results["meshes"][name] = {
            "devices": n,
            "max_abs_diff": float(np.abs(np.asarray(out) - ref).max()),
            "param_bytes_per_device": per_device_bytes(s_state),
            "input_bytes_per_device": per_device_bytes(placed),
            "arg_bytes_per_device": int(memory.argument_size_in_bytes),
            "probes": {p: [list(e) if isinstance(e, tuple) else e for e in flat[p].sharding.spec]
                       for p in PROBES}}
    results["torch_imported"] = "torch" in sys.modules
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
