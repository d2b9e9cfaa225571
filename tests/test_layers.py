"""Shared layers (models_flax/layers.py): Embed, layer_norm, FeedForward, apply_rope, ConfigIO."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiff.models_flax.layers import (INIT_STD, ConfigIO, Embed, FeedForward, LayerNorm, apply_rope,
                                        layer_norm)

VOCAB, DIM = 11, 6


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_embed_returns_rows_of_the_table_in_its_dtype(dtype):
    embed = Embed(VOCAB, DIM, param_dtype=dtype, rngs=nnx.Rngs(0))
    ids = jnp.array([[0, 3, 10], [7, 7, 1]], jnp.int32)
    out = embed(ids)
    assert out.shape == (2, 3, DIM) and out.dtype == dtype
    table = np.asarray(embed.embedding[...])
    np.testing.assert_array_equal(np.asarray(out), table[np.asarray(ids)])


def test_embed_table_is_vocab_by_dim_with_logical_axes_and_linear_init():
    embed = Embed(1000, 64, rngs=nnx.Rngs(0))
    assert embed.embedding[...].shape == (1000, 64)
    assert embed.embedding.get_metadata()["out_sharding"] == ("vocab", "embed")
    assert abs(float(jnp.std(embed.embedding[...])) - INIT_STD) < 0.1 * INIT_STD


def test_embed_attend_is_a_tied_output_head():
    embed = Embed(VOCAB, DIM, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 3, DIM))
    logits = embed.attend(x)
    assert logits.shape == (2, 3, VOCAB)
    expected = np.asarray(x) @ np.asarray(embed.embedding[...]).T
    np.testing.assert_allclose(np.asarray(logits), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_function_equals_the_affine_free_module(dtype):
    x = (3.0 + 2.0 * jax.random.normal(jax.random.key(0), (2, 5, 16))).astype(dtype)
    out = layer_norm(x, 1e-6)
    assert out.dtype == dtype
    np.testing.assert_array_equal(np.asarray(out), np.asarray(LayerNorm(16, elementwise_affine=False)(x)))
    x64 = np.asarray(x, np.float64)
    ref = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(out, np.float64), ref, atol=1e-5 if dtype == jnp.float32 else 2e-2)


def test_feed_forward_keeps_diffusers_indices_and_axes():
    ff = FeedForward(8, 32, 4, approximate=False, in_axis=None, rngs=nnx.Rngs(0))
    assert ff.net[1] is None  # torch's Dropout slot: net.2 keeps its index
    assert ff.net[0].proj.kernel.get_metadata()["out_sharding"] == (None, "mlp")
    assert ff.net[2].kernel.get_metadata()["out_sharding"] == ("mlp", "embed")
    x = jax.random.normal(jax.random.key(1), (2, 8))
    h = jax.nn.gelu(x @ ff.net[0].proj.kernel[...] + ff.net[0].proj.bias[...], approximate=False)
    np.testing.assert_allclose(np.asarray(ff(x)), np.asarray(h @ ff.net[2].kernel[...] + ff.net[2].bias[...]),
                               rtol=1e-5, atol=1e-6)


def test_apply_rope_rotates_interleaved_pairs():
    b, s, n, h = 1, 3, 2, 4
    x = jax.random.normal(jax.random.key(0), (b, s, n, h))
    angles = np.arange(s * h // 2, dtype=np.float64).reshape(s, h // 2) * 0.3  # [S, H/2]
    cos = np.repeat(np.cos(angles), 2, axis=1).astype(np.float32)  # [S, H]
    signed_sin = (np.repeat(np.sin(angles), 2, axis=1) * np.tile([-1.0, 1.0], h // 2)).astype(np.float32)
    out = np.asarray(apply_rope(x, jnp.asarray(cos), jnp.asarray(signed_sin)))
    z = np.asarray(x[..., 0::2]) + 1j * np.asarray(x[..., 1::2])  # pairs as complex numbers
    rotated = z * np.exp(1j * angles)[None, :, None, :]
    np.testing.assert_allclose(out[..., 0::2], rotated.real, atol=1e-6)
    np.testing.assert_allclose(out[..., 1::2], rotated.imag, atol=1e-6)


@dataclasses.dataclass(frozen=True)
class _Config(ConfigIO):
    width: int = 4
    sizes: tuple[int, ...] = (1, 2)


def test_config_from_dict_ignores_unknown_keys_and_makes_lists_tuples():
    config = _Config.from_dict({"_class_name": "X", "width": 8, "sizes": [3, 4]})
    assert config == _Config(width=8, sizes=(3, 4))
    assert hash(config) is not None


def test_config_to_dict_is_json_ready_and_round_trips():
    config = _Config(width=8, sizes=(3, 4))
    assert config.to_dict() == {"width": 8, "sizes": [3, 4]}
    assert _Config.from_dict(config.to_dict()) == config
