"""Child process of tests/test_sequence_parallel.py: the sequence-parallel attention kernels on 8 fake
CPU devices against the unsharded XLA attention. Prints one `RESULT {json}` line: for every case the max
abs difference (or the error message, for refused cases). Sets XLA_FLAGS before jax is imported."""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxdiff.kernels.attention import attention, attention_options, xla_attention  # noqa: E402
from jaxdiff.sharding import make_mesh, parse_mesh_spec  # noqa: E402

SCALE = 0.3
MESHES = ("seq=2", "seq=8", "data=2,seq=4", "fsdp=2,tensor=2,seq=2")
SHAPES = {  # name → (batch, Sq, Sk, heads)
    "self_even": (2, 64, 64, 8),
    "self_odd": (2, 37, 37, 8),  # padded to a multiple of the seq axis, padding masked
    "cross": (2, 40, 13, 8),  # queries split, keys replicated
    "self_3_heads": (2, 37, 37, 3),  # Ulysses must refuse; ring handles it
}


def case(rng, mesh, mode, shape, masked, implementation="auto", mask_batch=None):
    b, sq, sk, h = shape
    q, k, v = (jnp.asarray(rng.standard_normal((b, s, h, 16)).astype(np.float32)) for s in (sq, sk, sk))
    mask = None
    if masked:
        keep = rng.random((mask_batch or b, 1, 1, sk)) > 0.3
        keep[..., 0] = True  # every row keeps at least one key
        mask = jnp.asarray(keep)
    ref = xla_attention(q, k, v, scale=SCALE, mask=mask)
    try:
        with attention_options(sequence_parallel=mode, mesh=mesh, implementation=implementation):
            out = jax.jit(lambda q, k, v, m: attention(q, k, v, scale=SCALE, mask=m))(q, k, v, mask)
    except ValueError as exc:
        return {"error": str(exc)}
    return {"max_abs_diff": float(jnp.abs(out - ref).max()), "ref_abs_max": float(jnp.abs(ref).max())}


def main() -> None:
    rng = np.random.default_rng(0)
    results = {}
    for spec in MESHES:
        n = math.prod(parse_mesh_spec(spec).values())
        mesh = make_mesh(spec, devices=jax.devices()[:n])
        for mode in ("ulysses", "ring"):
            for name, shape in SHAPES.items():
                for masked in (False, True):
                    results[f"{spec}|{mode}|{name}|{'mask' if masked else 'nomask'}"] = case(
                        rng, mesh, mode, shape, masked)
    mesh = make_mesh("seq=2", devices=jax.devices()[:2])
    # a mask broadcast over the batch, the splash kernel (interpret mode) inside Ulysses, and a mesh
    # set by jax.set_mesh instead of the options
    results["seq=2|ring|self_odd|mask_b1"] = case(rng, mesh, "ring", SHAPES["self_odd"], True, mask_batch=1)
    results["seq=2|ulysses|self_odd|mask_b1"] = case(rng, mesh, "ulysses", SHAPES["self_odd"], True,
                                                     mask_batch=1)
    results["seq=2|ulysses+splash|self_odd|mask"] = case(rng, mesh, "ulysses", SHAPES["self_odd"], True,
                                                         implementation="splash")
    with jax.set_mesh(mesh):
        results["set_mesh|ring|self_even|nomask"] = case(rng, None, "ring", SHAPES["self_even"], False)
    results["torch_imported"] = "torch" in sys.modules
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
