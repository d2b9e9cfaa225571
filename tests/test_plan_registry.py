"""`jaxdiff plan` reads the family registry: a family is planned by its row (modules, example inputs,
`plan_estimates`), never by its name; block stacks, depth and FFN width come from the abstract model;
`--config` finds its family and release by the config's class and fields, and its VAE beside it."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import pytest

from jaxdiff import families
from jaxdiff.models_flax.vae_wan import WAN22_VAE_CONFIG
from jaxdiff.pipelines import plan, presets
from jaxdiff.pipelines.presets import get_preset


def request(preset, **changes) -> plan.Request:
    fields = dict(preset=preset, height=preset.height, width=preset.width, frames=preset.frames, batch=1,
                  mesh=dict.fromkeys(plan.MESH_AXES, 1))
    return plan.Request(**{**fields, **changes})


@pytest.mark.parametrize("name,mesh", [("flux-schnell", "fsdp=2,seq=2"), ("wan2.1-t2v-1.3b", "fsdp=2,seq=2")])
def test_a_family_is_planned_by_its_row_not_its_name(name, mesh):
    family, row = families.preset(name)
    copy = dataclasses.replace(family, name=f"renamed-{family.name}",
                               presets=(dataclasses.replace(row, name=f"renamed-{row.name}"),))
    families.register(copy)
    try:
        renamed = presets.from_row(copy, copy.presets[0])
        sizes, axes = plan.parse_mesh(mesh)
        got = plan.plan(request(renamed, mesh=sizes, axes=axes))
        want = plan.plan(request(get_preset(name), mesh=sizes, axes=axes))
    finally:
        families.unregister(copy.name)
    assert got["family"] == copy.name
    skip = ("model", "family")
    assert {k: v for k, v in got.items() if k not in skip} == {k: v for k, v in want.items() if k not in skip}


def test_a_family_without_plan_estimates_is_named_in_the_error():
    family, row = families.preset("flux-schnell")
    bare = dataclasses.replace(family, name="no-estimates", plan_estimates=None)
    with pytest.raises(ValueError, match="'no-estimates' has no plan estimates"):
        plan.plan(request(presets.from_row(bare, row)))


def test_block_stacks_depth_and_ffn_width_come_from_the_abstract_model():
    flux = plan.abstract_transformer(get_preset("flux-dev"), "bfloat16")
    assert {k: len(v) for k, v in plan.block_lists(flux).items()} == {
        "transformer_blocks": 19, "single_transformer_blocks": 38}
    assert plan.ffn_width(flux) == 4 * 3072
    wan = plan.abstract_transformer(get_preset("wan2.1-t2v-14b"), "bfloat16")
    assert {k: len(v) for k, v in plan.block_lists(wan).items()} == {"blocks": 40}  # 40 heads too
    assert plan.ffn_width(wan) == 13824


def test_one_block_copy_keeps_one_block_per_stack_and_every_width():
    preset = get_preset("flux-dev")
    graphdef, state = plan.abstract_split(preset.row.transformer, preset.transformer, "bfloat16")
    _, shallow = plan.one_block_copy(graphdef, state)
    assert {k: len(v) for k, v in plan.block_lists(shallow).items()} == {
        "transformer_blocks": 1, "single_transformer_blocks": 1}
    assert plan.block_gather_bytes(shallow, {"fsdp": 8}) == plan.block_gather_bytes(state, {"fsdp": 8})
    assert len(plan.block_lists(state)["transformer_blocks"]) == 19  # the cached state is untouched


def test_forward_inputs_follow_the_kinds_example_inputs_and_axes():
    schnell = plan.forward_inputs(request(get_preset("flux-schnell"), height=256, width=256))
    assert "guidance" not in schnell  # schnell takes none
    assert schnell["hidden_states"] == ((1, 256, 64), jnp.bfloat16, ("batch", "seq", None))
    assert schnell["img_ids"] == ((256, 3), jnp.float32, (None, None))
    assert schnell["timestep"] == ((1,), jnp.float32, ("batch",))
    ti2v = plan.forward_inputs(request(get_preset("wan2.2-ti2v-5b"), height=128, width=256, frames=17))
    assert ti2v["hidden_states"] == ((2, 48, 5, 8, 16), jnp.bfloat16, ("batch", None, "seq", None, None))
    assert ti2v["timestep"] == ((2, 5 * 4 * 8), jnp.float32, ("batch", None))  # one per token
    i2v = plan.forward_inputs(request(get_preset("wan2.1-i2v-14b"), height=64, width=64, frames=5))
    assert i2v["encoder_hidden_states_image"][0] == (2, 257, 1280)


def test_image_families_take_one_frame_and_video_families_4k_plus_1():
    with pytest.raises(ValueError, match="makes images: --frames must be 1"):
        plan.plan(request(get_preset("flux-dev"), frames=5))
    assert plan.plan(request(get_preset("wan2.1-t2v-1.3b"), frames=1))["image_tokens"] == 30 * 52


def write_config(path, config, class_name):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"_class_name": class_name, **config}))


@pytest.mark.parametrize("name", ["wan2.2-ti2v-5b", "wan2.1-i2v-14b", "flux-schnell", "wan2.1-t2v-14b"])
def test_config_finds_the_release_whose_transformer_fits(name, tmp_path):
    release = get_preset(name)
    write_config(tmp_path, release.transformer.to_dict(), release.row.transformer.class_name)
    found = plan.preset_from_config(str(tmp_path))
    assert (found.row, found.transformer, found.vae, found.steps) == (
        release.row, release.transformer, release.vae, release.steps)


def test_config_in_a_pipeline_dir_takes_the_vae_beside_it(tmp_path):
    small = get_preset("wan2.1-t2v-1.3b")
    write_config(tmp_path / "transformer", small.transformer.to_dict(), "WanTransformer3DModel")
    write_config(tmp_path / "vae", dict(WAN22_VAE_CONFIG.to_dict()), "AutoencoderKLWan")
    found = plan.preset_from_config(str(tmp_path))
    assert found.vae == WAN22_VAE_CONFIG and found.spatial_factor == 16
    assert found.transformer == small.transformer
    write_config(tmp_path / "vae", {}, "AutoencoderKL")
    with pytest.raises(ValueError, match="AutoencoderKL', but the wan family's VAE is AutoencoderKLWan"):
        plan.preset_from_config(str(tmp_path / "transformer"))
