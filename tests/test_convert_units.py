"""Load units split at the first list index anywhere in a path; converted checkpoints written with the
older, coarser units (format 1: one `encoder` unit for a whole VAE encoder) still restore."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from flax import nnx

from toy_encoder import registered
from jaxdiff.convert import load_model
from jaxdiff.convert.checkpoint import write_converted
from jaxdiff.convert.families import as_kind, model_config
from jaxdiff.convert.place import unit_of
from jaxdiff.models_flax.build import random_module

TINY_VAE = dict(block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
TOY_ENCODER = dict(vocab_size=32, d_model=16, d_kv=4, num_heads=2, d_ff=24, num_layers=3)


def old_unit_of(path):
    """The unit rule before units split inside nested lists: a list index in position 1, else the
    top-level module."""
    if len(path) > 2 and isinstance(path[1], int):
        return path[:2]
    return path[:1]


def test_unit_ends_at_the_first_list_index_anywhere():
    assert unit_of(("encoder", "block", 3, "layer", 0, "SelfAttention", "q", "kernel")) == (
        "encoder", "block", 3)
    assert unit_of(("text_model", "encoder", "layers", 5, "self_attn", "q_proj", "kernel")) == (
        "text_model", "encoder", "layers", 5)
    assert unit_of(("encoder", "down_blocks", 0, "resnets", 1, "conv1", "kernel")) == (
        "encoder", "down_blocks", 0)


def test_paths_without_a_list_index_are_their_top_level_module():
    assert unit_of(("shared", "embedding")) == ("shared",)
    assert unit_of(("encoder", "final_layer_norm", "scale")) == ("encoder",)
    assert unit_of(("scale_shift_table",)) == ("scale_shift_table",)


def _units(module, rule):
    """`Plan.units()`-shaped `(unit, [(path, array), …])` of a materialised module, grouped by `rule`."""
    by_unit = defaultdict(list)
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        by_unit[rule(tuple(path))].append((tuple(path), np.asarray(var.get_value())))
    return list(by_unit.items())


def _params(module) -> dict:
    return {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


@pytest.fixture(params=["vae_kl", "toy_encoder"])
def kind_and_config(request):
    if request.param == "vae_kl":
        yield "vae_kl", TINY_VAE
    else:
        with registered():
            yield "toy_encoder", TOY_ENCODER


def test_checkpoint_with_old_coarse_units_restores_equal_to_new_one(kind_and_config, tmp_path):
    family, config = kind_and_config
    config = model_config(family, config)
    module = random_module(as_kind(family).classes()[1], config, "float32", seed=3)
    written = {}
    for name, rule in (("old", old_unit_of), ("new", unit_of)):
        written[name] = write_converted(tmp_path / name, family=family, config=config.to_dict(),
                                        dtype="float32", units=_units(module, rule))
    old_units = set(json.loads((written["old"] / "jaxdiff.json").read_text())["units"])
    new_units = set(json.loads((written["new"] / "jaxdiff.json").read_text())["units"])
    assert "encoder" in old_units and len(new_units) > len(old_units)
    assert not any(u.startswith("encoder.") for u in old_units)  # the whole encoder is one old unit
    expected = _params(module)
    for name in ("old", "new"):
        restored = _params(load_model(written[name]))
        assert restored.keys() == expected.keys()
        for path, value in expected.items():
            np.testing.assert_array_equal(restored[path], value, err_msg=f"{name}: {path}")


@pytest.mark.parametrize("dropped, message", [
    # its parameters fall back to the stored `encoder` unit, which lacks them
    (("encoder", "down_blocks", 1), r"stored unit encoder cannot be restored: .* not in it: "
                                    r"encoder\.down_blocks\.1\."),
    # no stored unit prefixes `encoder.conv_in.kernel` at all
    (("encoder",), r"lacks unit\(s\) holding .*encoder\.conv_in\."),
])
def test_restore_names_parameters_that_no_stored_unit_holds(tmp_path, dropped, message):
    config = model_config("vae_kl", TINY_VAE)
    module = random_module(as_kind("vae_kl").classes()[1], config, "float32", seed=0)
    units = [(u, a) for u, a in _units(module, unit_of) if u != dropped]
    out = write_converted(tmp_path / "partial", family="vae_kl", config=config.to_dict(),
                          dtype="float32", units=units)
    with pytest.raises(ValueError, match=message) as err:
        load_model(out)
    assert str(out) in str(err.value)
