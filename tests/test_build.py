"""Random-weight models (models_flax/build.py, pipelines.loading.build_random): drawn on the host from
the init rule each parameter records, shape-only models allocate nothing."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from flax import nnx

from jaxdiff.models_flax.build import abstract_split, random_module
from jaxdiff.models_flax.layers import ONES, ZEROS, Conv, Linear, normal
from jaxdiff.models_flax.wan import WanConfig, WanTransformer3DModel
from jaxdiff.pipelines.loading import build_random


def test_every_parameter_records_its_init_rule():
    linear = Linear(8, 4, rngs=nnx.Rngs(0))
    conv = Conv(3, 5, 3, rngs=nnx.Rngs(0))
    assert linear.kernel.get_metadata()["init_rule"] == normal()
    assert linear.bias.get_metadata()["init_rule"] == ZEROS
    assert conv.kernel.get_metadata()["init_rule"] == normal(1.0 / math.sqrt(3 * 9))


def test_host_draws_follow_the_rules():
    config = WanConfig(num_attention_heads=4, attention_head_dim=32, ffn_dim=256, num_layers=2, text_dim=64,
                       freq_dim=32)
    model = build_random(config, seed=1)
    dim = config.inner_dim
    assert np.std(np.asarray(model.blocks[0].attn1.to_q.kernel[...])) == pytest.approx(0.02, rel=0.05)
    assert not np.asarray(model.blocks[0].attn1.to_q.bias[...]).any()
    np.testing.assert_array_equal(np.asarray(model.blocks[0].norm2.scale[...]), 1.0)
    table = np.asarray(model.blocks[0].scale_shift_table[...])
    assert np.std(table) == pytest.approx(1.0 / math.sqrt(dim), rel=0.1)


def test_seed_fixes_the_weights():
    config = WanConfig(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=1, text_dim=16,
                       freq_dim=32, rope_max_seq_len=32)
    a, b = (random_module(WanTransformer3DModel, config, "float32", seed=4) for _ in range(2))
    c = random_module(WanTransformer3DModel, config, "float32", seed=5)
    leaves = lambda m: jax.tree.leaves(nnx.state(m))
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(c)))


def test_abstract_models_hold_shapes_only():
    config = WanConfig(num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=1, text_dim=16,
                       freq_dim=32)
    _, state = abstract_split(WanTransformer3DModel, config, "bfloat16")
    leaves = jax.tree.leaves(state)
    assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert {x.dtype for x in leaves} == {np.dtype("bfloat16")}


def test_unregistered_configs_are_refused():
    with pytest.raises(ValueError, match="no registered model"):
        build_random(object())
