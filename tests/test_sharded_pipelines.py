"""Tiny Flux and Wan pipelines given `mesh=` on 8 fake CPU devices — data=8 (batch 8), fsdp=4×tensor=2,
seq=2 / seq=4 with Ulysses and ring attention, data=2×seq=4 with Ulysses — equal the unsharded pipeline (≤1e-5, fp32), compile
their denoise step once, return host numpy; `jaxdiff generate --mesh` runs end to end. One subprocess
(tests/sharded_pipeline_child.py) runs everything, since XLA_FLAGS must be set before jax is imported;
it never imports torch."""

from __future__ import annotations

import pathlib

import pytest

from child_process import run_child

CHILD = pathlib.Path(__file__).with_name("sharded_pipeline_child.py")
TOL = 1e-5
FAMILIES = ("flux", "wan")
DECODED = ("data8", "fsdp4_tensor2")
SEQUENCE_PARALLEL = ("seq2_ulysses", "seq2_ring", "seq4_ulysses", "seq4_ring", "data2_seq4_ulysses")


@pytest.fixture(scope="module")
def results():
    return run_child(CHILD)


def _case(results, family, case):
    entry = results[family]["cases"][case]
    if "skipped" in entry:
        pytest.skip(entry["skipped"])
    assert "error" not in entry, entry.get("traceback", entry)
    return entry


def test_child_never_imports_torch(results):
    assert results["torch_imported"] is False


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", DECODED + SEQUENCE_PARALLEL)
def test_sharded_pipeline_latents_equal_unsharded(results, family, case):
    ref = results[family]
    assert ref["ref_latents_abs_max"] > 1.0 and ref["ref_images_std"] > 0.05  # not near-zero outputs
    entry = _case(results, family, case)
    assert entry["latents_diff"] <= TOL, entry
    assert entry["host_numpy"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", DECODED)
def test_sharded_vae_decodes_like_the_unsharded_one(results, family, case):
    entry = _case(results, family, case)
    assert entry["decode_diff"] <= TOL, entry


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", DECODED + SEQUENCE_PARALLEL)
def test_denoise_step_compiles_once_per_run(results, family, case):
    entry = _case(results, family, case)
    assert entry["cache_sizes"] == [1], entry
    assert entry["compile_status"] == "cold"  # compile cache off in the child: a real compile


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", SEQUENCE_PARALLEL)
def test_sequence_parallel_kernel_is_traced(results, family, case):
    entry = _case(results, family, case)
    assert entry["sequence_parallel_calls"] > 0, entry


@pytest.mark.parametrize("family", FAMILIES)
def test_data_parallel_latents_are_split_over_the_batch(results, family):
    assert "'data'" in _case(results, family, "data8")["latents_sharding"]


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_with_mesh_runs_end_to_end(results, family):
    run = results["cli"][family]
    assert run["code"] == 0, run["stderr"]
    assert run["exists"] and run["bytes"] > 0
    assert "compiled denoise step on mesh" in run["stderr"], run["stderr"]
