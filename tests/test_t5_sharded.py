"""A tiny UMT5 encoder restored straight onto 8 fake CPU devices (data=8, fsdp=8, tensor=2,
fsdp=4×tensor=2) encodes like one device (≤1e-5) and holds ≈ 1/8 of its parameter bytes per device
under fsdp=8. The checkpoint is a transformers `save_pretrained` dir converted by `jaxdiff.convert`;
one subprocess (tests/t5_sharded_child.py) runs the meshes, since XLA_FLAGS must be set before jax is
imported; it never imports torch."""

from __future__ import annotations

import pathlib

import pytest

from child_process import run_child
from t5_fixtures import transformers_encoder
from jaxdiff.convert import convert

CHILD = pathlib.Path(__file__).with_name("t5_sharded_child.py")
TOLERANCE = 1e-5
FSDP_SLACK = 0.01  # every tiny-UMT5 dimension that fsdp=8 splits divides by 8: ≈ exactly 1/8
MESHES = ("data", "fsdp", "tensor", "fsdp_tensor")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("umt5-sharded")
    transformers_encoder(True, seed=11).save_pretrained(root / "hf")
    return run_child(CHILD, str(convert(root / "hf", root / "converted")))


def test_child_never_imports_torch(results):
    assert results["torch_imported"] is False


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_umt5_encodes_like_one_device(results, mesh):
    assert results["ref_abs_max"] > 1.0
    assert results["meshes"][mesh]["max_abs_diff"] <= TOLERANCE, results["meshes"][mesh]


def test_fsdp_holds_one_eighth_of_the_parameters_per_device(results):
    total, fsdp = results["param_bytes"], results["meshes"]["fsdp"]
    assert results["meshes"]["data"]["param_bytes_per_device"] == total  # data parallel: replicated
    assert total / 8 <= fsdp["param_bytes_per_device"] <= (1 + FSDP_SLACK) * total / 8, (fsdp, total)
    # XLA's per-device argument bytes are exactly this device's parameter and input shards
    assert fsdp["arg_bytes_per_device"] == fsdp["param_bytes_per_device"] + fsdp["input_bytes_per_device"]
    for mesh in ("tensor", "fsdp_tensor"):
        assert results["meshes"][mesh]["param_bytes_per_device"] < total


def test_parameters_are_split_by_their_logical_names(results):
    probes = results["meshes"]["fsdp_tensor"]["probes"]
    assert probes["encoder.block.0.layer.0.SelfAttention.q.kernel"] == ["fsdp", "tensor"]  # embed, heads
    assert probes["encoder.block.0.layer.0.SelfAttention.o.kernel"] == ["tensor", "fsdp"]  # heads, embed
    assert probes["encoder.block.0.layer.1.DenseReluDense.wi_0.kernel"] == ["fsdp", "tensor"]  # embed, mlp
    assert probes["shared.embedding"] == ["tensor", "fsdp"]  # vocab, embed
    # the per-block bias table [buckets, heads]: heads over tensor, buckets by the FSDP fallback
    assert probes["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.embedding"] == ["fsdp", "tensor"]
