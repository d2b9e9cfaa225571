"""kernels/splash.py: splash attention (Pallas, interpret mode on CPU) against the XLA path.

Shapes stay tiny: interpret mode runs the kernel's grid step by step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.kernels import splash as splash_module
from jaxdiff.kernels.attention import IMPLEMENTATIONS, attention, xla_attention
from jaxdiff.kernels.splash import PAD_SEGMENT_ID, choose_block, splash_attention

TOLERANCE = 1e-5
SCALE = 0.3


def _qkv(batch=2, sq=77, sk=77, heads=3, head_dim=16, kv_heads=None, dtype=jnp.float32, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    kv_heads = kv_heads or heads
    return (jax.random.normal(keys[0], (batch, sq, heads, head_dim), dtype),
            jax.random.normal(keys[1], (batch, sk, kv_heads, head_dim), dtype),
            jax.random.normal(keys[2], (batch, sk, kv_heads, head_dim), dtype))


def _max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.mark.parametrize("sq,sk", [(77, 77), (130, 130), (130, 77), (77, 300)])
def test_matches_xla_for_odd_and_cross_lengths(sq, sk):
    q, k, v = _qkv(sq=sq, sk=sk)
    out = splash_attention(q, k, v, scale=SCALE)
    assert out.shape == (2, sq, 3, 16) and out.dtype == jnp.float32
    assert _max_diff(out, xla_attention(q, k, v, scale=SCALE)) <= TOLERANCE


def test_explicit_blocks_that_do_not_divide_the_length():
    # 300 tokens → q padded to 384 (3 blocks of 128), k/v to 512 (2 blocks of 256): the online softmax
    # runs across blocks and the last kv block is mostly padding.
    q, k, v = _qkv(batch=1, sq=300, sk=300, heads=2)
    out = splash_attention(q, k, v, scale=SCALE, block_sizes=(128, 256, 128))
    assert _max_diff(out, xla_attention(q, k, v, scale=SCALE)) <= TOLERANCE


def test_padded_text_tokens_are_never_attended():
    q, k, v = _qkv(sq=130, sk=77)
    keep = np.arange(77)[None, :] < np.array([[50], [70]])  # per-item text lengths 50 and 70
    out = np.asarray(splash_attention(q, k, v, scale=SCALE, key_mask=keep))
    ref = xla_attention(q, k, v, scale=SCALE, mask=keep[:, None, None, :])
    assert _max_diff(out, ref) <= TOLERANCE
    # changing only the masked keys/values must not change the result
    k2 = jnp.where(keep[:, :, None, None], k, 100.0)
    v2 = jnp.where(keep[:, :, None, None], v, -100.0)
    np.testing.assert_array_equal(np.asarray(splash_attention(q, k2, v2, scale=SCALE, key_mask=keep)),
                                  out)


def test_segment_ids_keep_packed_sequences_apart():
    q, k, v = _qkv(batch=1, sq=77, sk=77, heads=2)
    ids = (np.arange(77) >= 40).astype(np.int32)[None]  # two sequences packed into one
    out = splash_attention(q, k, v, scale=SCALE, q_segment_ids=ids, kv_segment_ids=ids)
    mask = (ids[:, :, None] == ids[:, None, :])[:, None]  # [1, 1, Sq, Sk]
    assert _max_diff(out, xla_attention(q, k, v, scale=SCALE, mask=mask)) <= TOLERANCE


def test_grouped_query_heads_match_repeated_kv():
    q, k, v = _qkv(batch=1, sq=77, sk=77, heads=4, kv_heads=2)
    out = splash_attention(q, k, v, scale=SCALE)
    ref = xla_attention(q, jnp.repeat(k, 2, axis=2), jnp.repeat(v, 2, axis=2), scale=SCALE)
    assert _max_diff(out, ref) <= TOLERANCE


def test_bfloat16_smoke():
    q, k, v = _qkv(sq=130, sk=77, dtype=jnp.bfloat16)
    out = splash_attention(q, k, v, scale=SCALE)
    assert out.dtype == jnp.bfloat16 and out.shape == (2, 130, 3, 16)
    assert bool(jnp.isfinite(out.astype(jnp.float32)).all())
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    assert _max_diff(out, xla_attention(*f32, scale=SCALE)) <= 3e-2


def test_under_jit_twice():
    fn = jax.jit(lambda q, k, v: splash_attention(q, k, v, scale=SCALE))
    for seed in (0, 1):
        q, k, v = _qkv(batch=1, heads=2, seed=seed)
        assert _max_diff(fn(q, k, v), xla_attention(q, k, v, scale=SCALE)) <= TOLERANCE


def test_attention_routes_to_splash(monkeypatch):
    q, k, v = _qkv(sq=77, sk=130)
    keep = np.arange(130)[None, :] < np.array([[90], [130]])
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return splash_attention(*args, **kwargs)

    monkeypatch.setattr(splash_module, "splash_attention", spy)
    out = attention(q, k, v, mask=keep[:, None, None, :], implementation="splash")
    assert len(calls) == 1 and calls[0]["scale"] == pytest.approx(16 ** -0.5)
    np.testing.assert_array_equal(np.asarray(calls[0]["key_mask"]), keep)
    ref = xla_attention(q, k, v, scale=16 ** -0.5, mask=keep[:, None, None, :])
    assert _max_diff(out, ref) <= TOLERANCE
    assert "splash" in IMPLEMENTATIONS


def test_splash_refuses_masks_that_are_not_per_key():
    q, k, v = _qkv(sq=7, sk=9)
    mask = np.ones((2, 1, 7, 9), bool)
    with pytest.raises(ValueError, match=r"per-key padding mask of shape \[B or 1, 1, 1, Sk=9\]"):
        attention(q, k, v, mask=mask, implementation="splash")


def test_auto_stays_off_splash_off_tpu(monkeypatch):
    monkeypatch.setattr(splash_module, "splash_attention", None)  # would raise if called
    q, k, v = _qkv(sq=7, sk=9)
    attention(q, k, v, implementation="auto")


def test_input_errors():
    q, k, v = _qkv(sq=7, sk=9)
    with pytest.raises(ValueError, match="give both q_segment_ids and kv_segment_ids"):
        splash_attention(q, k, v, scale=SCALE, q_segment_ids=np.zeros((2, 7), np.int32))
    with pytest.raises(ValueError, match="key_mask must be bool"):
        splash_attention(q, k, v, scale=SCALE, key_mask=np.ones((2, 7), bool))
    with pytest.raises(ValueError, match="multiple of 128"):
        splash_attention(q, k, v, scale=SCALE, block_sizes=(100, 128))


def test_block_policy():
    assert choose_block(77, 512) == (128, 128)          # short: one block, clamped
    assert choose_block(4096, 512) == (512, 4096)
    assert choose_block(4173, 512) == (384, 4224)       # least padding among 512/384
    assert choose_block(4608, 1024) == (768, 4608)      # divides exactly, no padding
    assert choose_block(300, 128) == (128, 384)
    assert PAD_SEGMENT_ID == np.iinfo(np.int32).min
