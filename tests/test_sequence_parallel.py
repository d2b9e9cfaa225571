"""Sequence-parallel attention (kernels/sequence_parallel.py): Ulysses and ring on 8 fake CPU devices
equal the unsharded XLA attention to ≤1e-5 (fp32) for even and odd sequence lengths (padding masked),
cross-attention, per-key masks, batch/tensor axes beside `seq`, and splash inside Ulysses; Ulysses
refuses head counts the seq axis does not divide, naming the numbers and the ring alternative.
The kernels run in one subprocess (tests/sequence_parallel_child.py); model-level runs are in
tests/test_sharded_models.py. The options context itself is tested in-process."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from child_process import run_child

from jaxdiff.kernels.attention import AttentionOptions, attention, attention_options, current_options, xla_attention
from jaxdiff.kernels.sequence_parallel import seq_mesh
from jaxdiff.sharding import make_mesh

CHILD = pathlib.Path(__file__).with_name("sequence_parallel_child.py")
TOL = 1e-5


@pytest.fixture(scope="module")
def results():
    return run_child(CHILD)


def test_child_never_imports_torch(results):
    assert results.pop("torch_imported") is False


def test_every_supported_case_equals_unsharded_attention(results):
    checked = 0
    for name, r in results.items():
        if name == "torch_imported" or ("ulysses" in name and "3_heads" in name):
            continue
        assert "error" not in r, (name, r)
        assert r["ref_abs_max"] > 0.1, (name, r)
        assert r["max_abs_diff"] <= TOL, (name, r)
        checked += 1
    assert checked >= 40  # 4 meshes × 2 modes × 4 shapes × 2 masks, less the refused ones, + extras


def test_ring_handles_heads_ulysses_refuses(results):
    for spec in ("seq=2", "seq=8", "data=2,seq=4", "fsdp=2,tensor=2,seq=2"):
        for masked in ("mask", "nomask"):
            assert results[f"{spec}|ring|self_3_heads|{masked}"]["max_abs_diff"] <= TOL
            message = results[f"{spec}|ulysses|self_3_heads|{masked}"]["error"]
            assert "3 heads" in message and "'seq' mesh axis size" in message and "ring" in message, message


def test_options_are_scoped_and_validated():
    assert current_options() == AttentionOptions()
    with attention_options(implementation="xla", sequence_parallel="ring") as outer:
        assert outer.implementation == "xla" and outer.sequence_parallel == "ring"
        with attention_options(sequence_parallel=None, implementation=None) as inner:
            assert inner.sequence_parallel is None and inner.implementation == "auto"
        assert current_options() == outer
    assert current_options() == AttentionOptions()
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        with attention_options(implementation="flash"):
            pass
    with pytest.raises(ValueError, match="unknown sequence_parallel 'ulyses'"):
        with attention_options(sequence_parallel="ulyses"):
            pass
    with pytest.raises(TypeError, match="unknown attention option"):
        with attention_options(heads=4):
            pass


def test_sequence_parallelism_is_inactive_without_a_seq_axis():
    """One device: no mesh, or a mesh whose seq axis is 1, runs the plain kernel (same result)."""
    mesh = make_mesh("seq=1", devices=jax.devices()[:1])
    assert seq_mesh(AttentionOptions(sequence_parallel="ring")) is None
    assert seq_mesh(AttentionOptions(sequence_parallel="ring", mesh=mesh)) is None
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 9, 2, 8)).astype(np.float32)) for _ in range(3))
    with attention_options(sequence_parallel="ulysses", mesh=mesh):
        out = attention(q, k, v, scale=0.5)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(xla_attention(q, k, v, scale=0.5)))
