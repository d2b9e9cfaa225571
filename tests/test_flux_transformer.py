"""Parity of models_flax.flux.FluxTransformer2DModel with diffusers' FluxTransformer2DModel (fp32)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.convert.place import load_state_dict
from jaxdiff.models_flax.flux import FluxConfig, FluxTransformer2DModel

from flux_fixtures import (tiny_flux_config, tiny_flux_inputs, tiny_torch_flux,
                           torch_flux_forward, torch_state_dict_numpy)

TOLERANCE = 1e-5


def _flax_twin(torch_model) -> FluxTransformer2DModel:
    model = FluxTransformer2DModel(FluxConfig.from_dict(dict(torch_model.config)), rngs=nnx.Rngs(0))
    load_state_dict(model, torch_state_dict_numpy(torch_model))
    return model


def _jax_inputs(inputs: dict) -> dict:
    return {k: (None if v is None else jnp.asarray(v)) for k, v in inputs.items()}


@pytest.mark.parametrize("guidance_embeds", [True, False], ids=["dev", "schnell"])
def test_matches_diffusers(guidance_embeds):
    torch_model = tiny_torch_flux(guidance_embeds, num_layers=2, num_single_layers=2)
    inputs = tiny_flux_inputs(tiny_flux_config(guidance_embeds))
    expected = torch_flux_forward(torch_model, inputs)

    got = np.asarray(nnx.jit(lambda m, x: m(**x))(_flax_twin(torch_model), _jax_inputs(inputs)))

    assert got.shape == expected.shape == (2, 16, 4)
    diff = np.abs(got - expected).max()
    print(f"max abs diff ({'dev' if guidance_embeds else 'schnell'}): {diff:.3g}")
    assert diff <= TOLERANCE


def test_state_dict_keys_load_without_renames():
    torch_model = tiny_torch_flux(True)
    model = _flax_twin(torch_model)  # raises on any missing/unexpected key
    kernel = model.transformer_blocks[0].attn.to_out[0].kernel[...]
    weight = torch_model.transformer_blocks[0].attn.to_out[0].weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(kernel), weight.T)


def test_jit_output_is_identical_to_eager():
    torch_model = tiny_torch_flux(True)
    model = _flax_twin(torch_model)
    inputs = _jax_inputs(tiny_flux_inputs(tiny_flux_config(True)))
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, inputs):
        return nnx.merge(graphdef, state)(**inputs)

    jitted = np.asarray(forward(state, inputs))

    # eager runs op by op, so fused fp32 rounding may differ by an ulp or so
    np.testing.assert_allclose(jitted, np.asarray(model(**inputs)), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(nnx.jit(lambda m, x: m(**x))(model, inputs)), jitted)


def test_config_reads_diffusers_config_json(tmp_path):
    tiny_torch_flux(True).save_config(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert "_class_name" in raw

    config = FluxConfig.from_dict(raw)

    assert config == FluxConfig(**{**tiny_flux_config(True), "axes_dims_rope": (4, 4, 8)})
    assert isinstance(config.axes_dims_rope, tuple)
    assert FluxConfig.from_dict(config.to_dict()) == config


def test_default_config_is_flux_dev_shape():
    config = FluxConfig()
    assert (config.inner_dim, config.num_layers, config.num_single_layers) == (3072, 19, 38)
    assert config.axes_dims_rope == (16, 56, 56)


def _logical_axes(var) -> tuple | None:
    meta = var.get_metadata()  # flax 0.12 stores `sharding_names=` under `out_sharding`
    return meta.get("out_sharding", meta.get("sharding_names"))


def test_parameters_carry_logical_axes():
    model = FluxTransformer2DModel(FluxConfig.from_dict(tiny_flux_config(True)), rngs=nnx.Rngs(0))
    attn = model.transformer_blocks[0].attn
    assert _logical_axes(attn.to_q.kernel) == ("embed", "heads")
    assert _logical_axes(attn.to_out[0].kernel) == ("heads", "embed")
    ff = model.transformer_blocks[0].ff.net
    assert _logical_axes(ff[0].proj.kernel) == ("embed", "mlp")
    assert _logical_axes(ff[2].kernel) == ("mlp", "embed")
    _, params = nnx.split(model, nnx.Param)
    for path, var in nnx.to_flat_state(params):
        names = _logical_axes(var)
        assert names is not None and len(names) == var[...].ndim, path


def test_guidance_mismatch_is_an_error():
    model = FluxTransformer2DModel(FluxConfig.from_dict(tiny_flux_config(False)), rngs=nnx.Rngs(0))
    inputs = _jax_inputs(tiny_flux_inputs(tiny_flux_config(False)))
    with pytest.raises(ValueError, match="guidance"):
        model(**{**inputs, "guidance": jnp.full((2,), 3.5)})


def test_rope_tables_match_diffusers_float64_at_real_positions():
    import torch
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    from flux_fixtures import image_ids
    from jaxdiff.models_flax.flux import rope_tables

    ids = np.concatenate([np.zeros((8, 3), np.float32), image_ids(96, 96)])
    cos, sin = FluxPosEmbed(10000, [16, 56, 56])(torch.from_numpy(ids))

    our_cos, our_signed_sin = rope_tables(jnp.asarray(ids), (16, 56, 56))

    sign = np.tile([-1.0, 1.0], 64)
    assert np.abs(np.asarray(our_cos) - cos.numpy()).max() <= 2e-7
    assert np.abs(np.asarray(our_signed_sin) * sign - sin.numpy()).max() <= 2e-7


def test_output_dtype_follows_hidden_states():
    model = FluxTransformer2DModel(FluxConfig.from_dict(tiny_flux_config(True)), rngs=nnx.Rngs(0))
    inputs = _jax_inputs(tiny_flux_inputs(tiny_flux_config(True)))

    out = nnx.jit(lambda m, x: m(**x))(
        model, {**inputs, "hidden_states": inputs["hidden_states"].astype(jnp.bfloat16)})

    assert out.dtype == jnp.bfloat16 and bool(jnp.isfinite(out.astype(jnp.float32)).all())
