"""`load_model(..., mesh=)` places parameters by their logical names on 8 fake CPU devices, from a
diffusers dir and from a converted checkpoint (orbax restores each shard onto its device), and the
sharded model's output equals the unsharded one (≤1e-5), for the Flux and the Wan transformer.
The subprocess never imports torch."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from flux_fixtures import tiny_flux_config, tiny_flux_inputs, tiny_torch_flux
from wan_fixtures import tiny_torch_wan, tiny_wan_config, tiny_wan_inputs

SCRIPT = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, PartitionSpec as P
from flax import nnx
from jaxdiff.convert import convert, load_model

forward = nnx.jit(lambda model, inputs: model(**inputs))  # one compile instead of one per op

root, family = sys.argv[1], sys.argv[2]
src, out = root + "/diffusers", root + "/converted"
convert(src, out)
assert len(jax.devices()) == 8
mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"), axis_types=(AxisType.Auto,) * 2)  # no data/seq axes
inputs = {k: jnp.asarray(v) for k, v in np.load(root + "/inputs.npz").items()}
ref = np.asarray(forward(load_model(src), inputs))
for path in (src, out):
    model = load_model(path, mesh=mesh)
    block = model.transformer_blocks[0].attn if family == "flux" else model.blocks[0].attn1
    kernel = block.to_q.kernel[...]  # logical ("embed", "heads"): [32, 32] Flux, [24, 24] Wan
    assert kernel.sharding.spec == P("fsdp", "tensor"), kernel.sharding
    want = (kernel.shape[0] // 2, kernel.shape[1] // 4)
    assert kernel.addressable_shards[0].data.shape == want, (kernel.addressable_shards[0].data.shape, want)
    diff = float(np.abs(np.asarray(forward(model, inputs)) - ref).max())
    assert diff <= 1e-5, (path, diff)
    print("ok", path, diff)
assert "torch" not in sys.modules and "diffusers" not in sys.modules
"""


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_sharded_load_and_restore_on_8_fake_devices(tmp_path, family):
    if family == "flux":
        tiny_torch_flux(True).save_pretrained(tmp_path / "diffusers")
        inputs = tiny_flux_inputs(tiny_flux_config(True))
    else:
        tiny_torch_wan().save_pretrained(tmp_path / "diffusers")
        inputs = tiny_wan_inputs(tiny_wan_config())
    np.savez(tmp_path / "inputs.npz", **{k: v for k, v in inputs.items() if v is not None})
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), family], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("ok ") == 2
