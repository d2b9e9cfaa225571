"""A mesh made with plain `jax.make_mesh(shape, names)` (Explicit axis types on jax ≥ 0.7) works
wherever a mesh enters — `load_model(..., mesh=)` from a diffusers dir or a converted checkpoint,
`sharding.shard_module` + `FluxPipeline(mesh=)`, `attention_options(mesh=)` for sequence-parallel
attention — and gives the one-device result (≤1e-5), never a sharding type error from a matmul.
The 8-fake-device runs happen in tests/explicit_mesh_child.py (XLA_FLAGS precede jax's import)."""

from __future__ import annotations

import pathlib

import jax
import pytest
from jax.sharding import AxisType

from child_process import run_child
from flux_fixtures import tiny_torch_flux
from jaxdiff.convert import convert
from jaxdiff.sharding import auto_axes, make_mesh

CHILD = pathlib.Path(__file__).with_name("explicit_mesh_child.py")
TOL = 1e-5


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("explicit-mesh")
    tiny_torch_flux(True).save_pretrained(root / "transformer")
    convert(root / "transformer", root / "converted")
    return run_child(CHILD, str(root / "transformer"), str(root / "converted"))


def assert_matches(entry: dict, *keys: str):
    assert "error" not in entry, entry.get("traceback", entry)
    for key in keys:
        assert entry[key] <= TOL, entry


def test_auto_axes_gives_the_same_devices_and_names_with_auto_types():
    explicit = jax.make_mesh((1,), ("fsdp",), axis_types=(AxisType.Explicit,))
    mesh = auto_axes(explicit)
    assert mesh.axis_types == (AxisType.Auto,)
    assert mesh.axis_names == explicit.axis_names and (mesh.devices == explicit.devices).all()


def test_auto_axes_returns_an_auto_mesh_itself():
    mesh = make_mesh("fsdp=1")
    assert auto_axes(mesh) is mesh


@pytest.mark.parametrize("source", ["load_diffusers", "load_converted"])
@pytest.mark.parametrize("call", ["eager", "jit"])
def test_model_loaded_onto_an_explicit_mesh_equals_unsharded(results, source, call):
    assert results[f"{source}_ref_abs_max"] > 0.1  # not a comparison of near-zero outputs
    assert_matches(results[f"{source}_{call}"], "max_abs_diff")


@pytest.mark.parametrize("source", ["load_diffusers", "load_converted"])
def test_parameters_loaded_onto_an_explicit_mesh_sit_on_its_auto_twin(results, source):
    assert results[f"{source}_mesh_types"] == ["Auto", "Auto"]


@pytest.mark.parametrize("case", ["fsdp4_tensor2", "seq2_ulysses", "seq4_ring"])
def test_flux_pipeline_on_an_explicit_mesh_equals_one_device(results, case):
    assert results["pipeline_ref_latents_abs_max"] > 0.1
    assert_matches(results[f"pipeline_{case}"], "latents_diff", "images_diff")


def test_ring_attention_given_an_explicit_mesh_equals_unsharded(results):
    assert_matches(results["kernel_ring"], "max_abs_diff")


def test_child_never_imports_torch(results):
    assert results["torch_imported"] is False
