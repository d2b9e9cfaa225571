"""sharding/mesh.py in-process (one CPU device): mesh-spec parsing and validation, logical → mesh
PartitionSpecs (on abstract meshes, so divisibility and the FSDP fallback are exercised without
devices), `shard_module` on a 1-device mesh, and the distributed-init flag."""

from __future__ import annotations

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding, PartitionSpec as P

from jaxdiff.models_flax.layers import ONES, Linear, param
from jaxdiff.sharding import (DEFAULT_RULES, fit_spec, logical_to_mesh_spec, make_mesh,
                              maybe_initialize_distributed, parse_mesh_spec, partition_specs,
                              resolve_mesh_shape, shard_module)
from jaxdiff.sharding import mesh as mesh_mod

SHARDING_DIR = pathlib.Path(__file__).resolve().parents[1] / "sharding"


# ----------------------------------------------------------------------------- parsing


def test_parse_full_spec_keeps_order():
    spec = parse_mesh_spec("data=1,fsdp=4,tensor=2,seq=1")
    assert spec == {"data": 1, "fsdp": 4, "tensor": 2, "seq": 1}
    assert list(spec) == ["data", "fsdp", "tensor", "seq"]


def test_parse_tolerates_spaces_and_fill():
    assert parse_mesh_spec(" tensor = 2 , fsdp=-1 ") == {"tensor": 2, "fsdp": -1}


@pytest.mark.parametrize("spec, words", [
    ("model=2", ["unknown mesh axis 'model'", "data, fsdp, tensor, seq"]),
    ("fsdp=2,fsdp=4", ["'fsdp' given twice"]),
    ("fsdp=0", ["size 0", "positive"]),
    ("tensor=-2", ["size -2", "positive"]),
    ("fsdp=-1,tensor=-1", ["at most one mesh axis may be -1"]),
    ("fsdp4", ["bad mesh spec item 'fsdp4'", "NAME=SIZE"]),
    ("fsdp=four", ["bad mesh spec item 'fsdp=four'"]),
    ("fsdp=2.5", ["bad mesh spec item"]),
    ("fsdp=4,", ["bad mesh spec item ''"]),
    ("", ["empty mesh spec"]),
])
def test_parse_errors(spec, words):
    with pytest.raises(ValueError) as err:
        parse_mesh_spec(spec)
    for word in words:
        assert word in str(err.value), str(err.value)


# ----------------------------------------------------------------------------- sizes vs devices


def test_resolve_exact_and_fill():
    assert resolve_mesh_shape("fsdp=4,tensor=2", 8) == {"fsdp": 4, "tensor": 2}
    assert resolve_mesh_shape("data=1,fsdp=-1,tensor=2", 8) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert resolve_mesh_shape({"tensor": -1}, 8) == {"tensor": 8}


def test_resolve_product_mismatch_names_both_counts():
    with pytest.raises(ValueError, match=r"fsdp=4,tensor=4 needs 16 devices .* 8 are available"):
        resolve_mesh_shape("fsdp=4,tensor=4", 8)
    with pytest.raises(ValueError, match=r"needs 2 devices .* 8 are available"):
        resolve_mesh_shape({"data": 2}, 8)


def test_resolve_fill_must_divide():
    with pytest.raises(ValueError, match=r"fixed axes use 3 devices, which does not divide the 8"):
        resolve_mesh_shape("tensor=3,fsdp=-1", 8)


def test_resolve_mapping_is_validated_too():
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        resolve_mesh_shape({"model": 8}, 8)
    with pytest.raises(ValueError, match="size 0"):
        resolve_mesh_shape({"fsdp": 0}, 8)
    with pytest.raises(ValueError, match="must be an integer"):
        resolve_mesh_shape({"fsdp": 8.0}, 8)
    with pytest.raises(TypeError):
        resolve_mesh_shape(8, 8)


def test_make_mesh_on_this_host():
    n = len(jax.devices())
    mesh = make_mesh(f"data=1,fsdp={n}")
    assert mesh.axis_names == ("data", "fsdp")
    assert dict(mesh.shape) == {"data": 1, "fsdp": n}
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    assert dict(make_mesh({"tensor": -1}, devices=jax.devices()[:1]).shape) == {"tensor": 1}
    with pytest.raises(ValueError, match=f"needs {2 * n} devices .* {n} are available"):
        make_mesh(f"fsdp={2 * n}")


# ----------------------------------------------------------------------------- logical → mesh


def test_fit_spec_drops_missing_repeated_and_non_dividing_axes():
    mesh = AbstractMesh((4, 2), ("fsdp", "tensor"))
    assert fit_spec(P(("data", "fsdp"), "tensor"), mesh) == P("fsdp", "tensor")
    assert fit_spec(P("fsdp", "fsdp"), mesh) == P("fsdp")
    assert fit_spec(P("fsdp", "tensor"), mesh, (6, 4)) == P(None, "tensor")
    assert fit_spec(P(("tensor", "fsdp")), mesh, (4,)) == P("tensor")  # 4 % 8 → keep the prefix
    assert fit_spec(P(("tensor", "fsdp")), mesh, (16,)) == P(("tensor", "fsdp"))
    assert fit_spec(P("seq"), mesh) == P()


def test_logical_to_mesh_spec():
    mesh = AbstractMesh((2, 2, 2), ("data", "fsdp", "tensor"))
    assert logical_to_mesh_spec(("batch", None, "embed"), mesh) == P(("data", "fsdp"))  # fsdp used
    assert logical_to_mesh_spec(("batch", "seq", "heads"), mesh, shape=(8, 4, 6)) == \
        P(("data", "fsdp"), None, "tensor")
    assert logical_to_mesh_spec(("batch",), mesh, shape=(2,)) == P("data")
    with pytest.raises(ValueError, match="'nonsense'"):
        logical_to_mesh_spec(("nonsense",), mesh)


class _Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.qkv = Linear(8, 16, axes=("embed", "heads"), rngs=rngs)
        self.time = Linear(256, 16, axes=(None, "mlp"), rngs=rngs)
        self.odd = Linear(6, 9, axes=("embed", "mlp"), rngs=rngs)
        self.table = param(ONES, (1, 6, 16), jnp.float32, (None, None, None))
        self.norm = param(ONES, (16,), jnp.float32, (None,))


def test_partition_specs_from_logical_names_with_and_without_fsdp_fallback():
    state = nnx.state(nnx.eval_shape(lambda: _Tiny(nnx.Rngs(0))))
    mesh = AbstractMesh((4, 2), ("fsdp", "tensor"))
    plain = partition_specs(state, mesh, DEFAULT_RULES, fallback_axis=None)
    assert plain[("qkv", "kernel")] == P("fsdp", "tensor")
    assert plain[("qkv", "bias")] == P("tensor")
    assert plain[("time", "kernel")] == P(None, "tensor")
    assert plain[("odd", "kernel")] == P()  # 6 % 4, 9 % 2 → replicated rather than an error
    assert plain[("table",)] == P() and plain[("norm",)] == P()
    specs = partition_specs(state, mesh)  # default: FSDP fallback on unclaimed dimensions
    assert specs[("qkv", "kernel")] == P("fsdp", "tensor")  # rules already use fsdp: unchanged
    assert specs[("qkv", "bias")] == P("tensor")  # no free dimension left
    assert specs[("time", "kernel")] == P("fsdp", "tensor")
    assert specs[("odd", "kernel")] == P()  # nothing divisible by 4
    assert specs[("table",)] == P(None, None, "fsdp")  # largest dimension fsdp divides
    assert specs[("norm",)] == P("fsdp")


def test_size_one_axes_leave_dimensions_to_the_fsdp_fallback():
    """tensor=1 splits nothing, so a `heads` bias is still free for fsdp (not pinned to a no-op axis)."""
    state = nnx.state(nnx.eval_shape(lambda: _Tiny(nnx.Rngs(0))))
    specs = partition_specs(state, AbstractMesh((4, 1), ("fsdp", "tensor")))
    assert specs[("qkv", "bias")] == P("fsdp")
    assert specs[("qkv", "kernel")] == P("fsdp")
    assert specs[("time", "kernel")] == P("fsdp")


def test_shard_module_places_every_variable():
    model = _Tiny(nnx.Rngs(0))
    before = np.asarray(model.qkv.kernel[...])
    mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1}, devices=jax.devices()[:1])
    assert shard_module(model, mesh) is model
    for _, var in nnx.to_flat_state(nnx.state(model)):
        assert isinstance(var.get_value().sharding, NamedSharding)
        assert var.get_value().sharding.mesh.shape == mesh.shape
    assert model.qkv.kernel[...].sharding.spec == P()  # size-1 axes split nothing: dropped
    np.testing.assert_array_equal(np.asarray(model.qkv.kernel[...]), before)
    y = nnx.jit(lambda m, x: m.qkv(x))(model, jnp.ones((2, 8)))
    np.testing.assert_allclose(np.asarray(y), np.ones((2, 8)) @ before, rtol=1e-6)


# ----------------------------------------------------------------------------- multi-host flag


def test_maybe_initialize_distributed_is_a_flag(monkeypatch):
    calls = []
    monkeypatch.setattr(mesh_mod.jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(mesh_mod.jax.distributed, "is_initialized", lambda: bool(calls))
    monkeypatch.delenv("JAXDIFF_DISTRIBUTED", raising=False)
    assert maybe_initialize_distributed(False) is False
    assert maybe_initialize_distributed() is False  # env var unset
    assert calls == []
    monkeypatch.setenv("JAXDIFF_DISTRIBUTED", "1")
    assert maybe_initialize_distributed() is True
    assert maybe_initialize_distributed(True, coordinator_address="h:1") is True  # already up: no-op
    assert calls == [{}]


def test_sharding_imports_only_jax_and_flax():
    allowed = {"jax", "flax", "numpy", "__future__", "math", "os", "re", "typing", "collections"}
    for path in SHARDING_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = set() if node.level else {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= allowed, (path.name, roots)
