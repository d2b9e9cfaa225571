"""Parity of models_flax.wan.WanTransformer3DModel with diffusers' WanTransformer3DModel (fp32)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.convert.place import load_state_dict, param_targets, plan_placement
from jaxdiff.models_flax.wan import WanConfig, WanTransformer3DModel, rope_tables

from wan_fixtures import (I2V_TEXT_TOKENS, IMAGE_TOKENS, tiny_i2v_config, tiny_torch_wan,
                          tiny_wan_config, tiny_wan_inputs, torch_state_dict_numpy,
                          torch_wan_forward)

TOLERANCE = 1e-5

# name → (config overrides, tiny_wan_inputs kwargs)
VARIANTS = {
    "t2v": ({}, {}),
    "t2v_head16_in16": (dict(attention_head_dim=16, in_channels=16, out_channels=16, freq_dim=256),
                        {}),
    "t2v_no_cross_attn_norm": (dict(cross_attn_norm=False), {}),
    "i2v": (tiny_i2v_config(), dict(text_tokens=I2V_TEXT_TOKENS, image_tokens=IMAGE_TOKENS)),
    "flf2v": (tiny_i2v_config(pos_embed_seq_len=2 * IMAGE_TOKENS),
              dict(text_tokens=I2V_TEXT_TOKENS, image_tokens=IMAGE_TOKENS, image_batch=4)),
    "ti2v_per_token_timesteps": (dict(in_channels=8, out_channels=8),
                                 dict(per_token_timesteps=True)),
}

# diffusers config.json values of the released checkpoints (layers cut to 2 where only shapes matter)
RELEASED = {
    "wan2.1_t2v_1.3b": dict(num_attention_heads=12, ffn_dim=8960, in_channels=16, out_channels=16),
    "wan2.1_i2v_14b": dict(num_attention_heads=40, ffn_dim=13824, in_channels=36, out_channels=16,
                           image_dim=1280, added_kv_proj_dim=5120),
    "wan2.2_ti2v_5b": dict(num_attention_heads=24, ffn_dim=14336, in_channels=48, out_channels=48),
}


def _flax_twin(torch_model) -> WanTransformer3DModel:
    model = WanTransformer3DModel(WanConfig.from_dict(dict(torch_model.config)), rngs=nnx.Rngs(0))
    load_state_dict(model, torch_state_dict_numpy(torch_model))
    return model


def _jax_inputs(inputs: dict) -> dict:
    return {k: (None if v is None else jnp.asarray(v)) for k, v in inputs.items()}


def _run(model, inputs: dict) -> np.ndarray:
    return np.asarray(nnx.jit(lambda m, x: m(**x))(model, _jax_inputs(inputs)))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_diffusers(variant):
    overrides, input_kwargs = VARIANTS[variant]
    torch_model = tiny_torch_wan(**overrides)
    inputs = tiny_wan_inputs(tiny_wan_config(**overrides), **input_kwargs)
    expected = torch_wan_forward(torch_model, inputs)

    got = _run(_flax_twin(torch_model), inputs)

    assert got.shape == expected.shape == (2, torch_model.config.out_channels, 3, 8, 8)
    diff = np.abs(got - expected).max()
    print(f"max abs diff ({variant}): {diff:.3g}")
    assert diff <= TOLERANCE


def test_image_embeddings_change_the_output():
    torch_model = tiny_torch_wan(**tiny_i2v_config())
    model = _flax_twin(torch_model)
    inputs = tiny_wan_inputs(tiny_i2v_config(), image_tokens=IMAGE_TOKENS)

    with_image = _run(model, inputs)
    without = _run(model, {**inputs, "encoder_hidden_states_image": None})

    assert np.abs(with_image - without).max() > 1e-3


def test_uniform_per_token_timesteps_equal_one_timestep_per_sample():
    model = _flax_twin(tiny_torch_wan())
    inputs = tiny_wan_inputs(tiny_wan_config())
    n_tokens = 3 * 4 * 4
    per_token = np.repeat(inputs["timestep"][:, None], n_tokens, axis=1)

    np.testing.assert_allclose(_run(model, {**inputs, "timestep": per_token}), _run(model, inputs),
                               rtol=0, atol=1e-6)


def test_state_dict_keys_load_without_renames():
    torch_model = tiny_torch_wan(**tiny_i2v_config())
    model = _flax_twin(torch_model)  # raises on any missing/unexpected key
    kernel = np.asarray(model.patch_embedding.kernel[...])
    weight = torch_model.patch_embedding.weight.detach().numpy()  # [O, I, t, h, w]
    np.testing.assert_array_equal(kernel, weight.transpose(2, 3, 4, 1, 0))
    np.testing.assert_array_equal(np.asarray(model.blocks[1].scale_shift_table[...]),
                                  torch_model.blocks[1].scale_shift_table.detach().numpy())


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_shapes_fit_diffusers_state_dict(name):
    import torch
    from diffusers import WanTransformer3DModel as TorchWan

    with torch.device("meta"):
        torch_model = TorchWan(**RELEASED[name], num_layers=2)
    shapes = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()}
    config = WanConfig.from_dict(dict(torch_model.config))
    abstract = nnx.eval_shape(lambda: WanTransformer3DModel(config, param_dtype=jnp.bfloat16,
                                                            rngs=nnx.Rngs(0)))

    placed = plan_placement(shapes, param_targets(abstract), model=name)  # raises on any misfit

    assert len(placed) == len(shapes)


def test_jit_output_is_identical_to_eager():
    model = _flax_twin(tiny_torch_wan(num_layers=1))  # one block: eager dispatch is slow
    inputs = _jax_inputs(tiny_wan_inputs(tiny_wan_config()))
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, inputs):
        return nnx.merge(graphdef, state)(**inputs)

    jitted = np.asarray(forward(state, inputs))

    # eager runs op by op, so fused fp32 rounding may differ by an ulp or so
    np.testing.assert_allclose(jitted, np.asarray(model(**inputs)), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(nnx.jit(lambda m, x: m(**x))(model, inputs)), jitted)


def test_config_reads_diffusers_config_json(tmp_path):
    tiny_torch_wan(**tiny_i2v_config()).save_config(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert "_class_name" in raw

    config = WanConfig.from_dict(raw)

    assert config == WanConfig(**tiny_i2v_config())
    assert isinstance(config.patch_size, tuple)
    assert WanConfig.from_dict(config.to_dict()) == config


def test_default_config_is_wan_14b_shape():
    config = WanConfig()
    assert (config.inner_dim, config.num_layers, config.ffn_dim) == (5120, 40, 13824)
    assert config.patch_size == (1, 2, 2) and config.output_channels == 16


def _logical_axes(var) -> tuple | None:
    meta = var.get_metadata()  # flax 0.12 stores `sharding_names=` under `out_sharding`
    return meta.get("out_sharding", meta.get("sharding_names"))


def test_parameters_carry_logical_axes():
    model = WanTransformer3DModel(WanConfig(**tiny_i2v_config()), rngs=nnx.Rngs(0))
    block = model.blocks[0]
    for attn in (block.attn1, block.attn2):
        assert _logical_axes(attn.to_q.kernel) == ("embed", "heads")
        assert _logical_axes(attn.to_v.kernel) == ("embed", "heads")
        assert _logical_axes(attn.to_out[0].kernel) == ("heads", "embed")
    assert _logical_axes(block.attn2.add_k_proj.kernel) == ("embed", "heads")
    assert _logical_axes(block.ffn.net[0].proj.kernel) == ("embed", "mlp")
    assert _logical_axes(block.ffn.net[2].kernel) == ("mlp", "embed")
    assert _logical_axes(block.scale_shift_table) == (None, None, None)
    assert _logical_axes(model.scale_shift_table) == (None, None, None)
    _, params = nnx.split(model, nnx.Param)
    for path, var in nnx.to_flat_state(params):
        names = _logical_axes(var)
        assert names is not None and len(names) == len(var.shape), path


def test_rope_tables_match_diffusers_at_real_sizes():
    import torch
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    grid = (21, 60, 104)  # 81 frames at 480×832
    cos, sin = WanRotaryPosEmbed(128, (1, 2, 2), 1024)(torch.zeros(1, 1, 21, 120, 208))

    our_cos, our_signed_sin = rope_tables(grid, 128, 1024)

    sign = np.tile([-1.0, 1.0], 64)
    np.testing.assert_array_equal(np.asarray(our_cos), cos[0, :, 0].numpy())
    np.testing.assert_array_equal(np.asarray(our_signed_sin) * sign, sin[0, :, 0].numpy())


def test_output_dtype_follows_hidden_states():
    model = WanTransformer3DModel(WanConfig(**tiny_wan_config()), rngs=nnx.Rngs(0))
    inputs = _jax_inputs(tiny_wan_inputs(tiny_wan_config()))

    out = nnx.jit(lambda m, x: m(**x))(
        model, {**inputs, "hidden_states": inputs["hidden_states"].astype(jnp.bfloat16)})

    assert out.dtype == jnp.bfloat16 and bool(jnp.isfinite(out.astype(jnp.float32)).all())


def test_bad_timestep_shape_is_an_error():
    model = WanTransformer3DModel(WanConfig(**tiny_wan_config()), rngs=nnx.Rngs(0))
    inputs = _jax_inputs(tiny_wan_inputs(tiny_wan_config()))
    with pytest.raises(ValueError, match="timestep"):
        model(**{**inputs, "timestep": jnp.zeros((2, 7))})


def test_image_embeddings_without_image_dim_are_an_error():
    model = WanTransformer3DModel(WanConfig(**tiny_wan_config()), rngs=nnx.Rngs(0))
    inputs = _jax_inputs(tiny_wan_inputs(tiny_wan_config()))
    with pytest.raises(ValueError, match="image_dim"):
        model(**{**inputs, "encoder_hidden_states_image": jnp.zeros((2, IMAGE_TOKENS, 20))})


def test_grid_beyond_rope_max_seq_len_is_an_error():
    with pytest.raises(ValueError, match="rope_max_seq_len"):
        rope_tables((3, 40, 4), 12, 32)
