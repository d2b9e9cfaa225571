"""kernels/attention.py: the XLA path against a float64 numpy reference, masking, dispatch errors."""

import jax
import numpy as np
import pytest

from jaxdiff.kernels.attention import attention, xla_attention

TOLERANCE = 1e-5


def _reference(q, k, v, scale, mask=None):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if mask is not None:
        logits = np.where(mask, logits, -np.inf)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", probs, v)


def _qkv(sq=7, sk=9):
    keys = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(keys[0], (2, sq, 3, 8)), jax.random.normal(keys[1], (2, sk, 3, 8)),
            jax.random.normal(keys[2], (2, sk, 3, 8)))


def test_xla_attention_matches_float64_reference():
    q, k, v = _qkv()
    out = xla_attention(q, k, v, scale=0.35)
    assert out.shape == (2, 7, 3, 8)
    assert np.abs(np.asarray(out) - _reference(q, k, v, 0.35)).max() <= TOLERANCE


def test_masked_keys_are_never_attended():
    q, k, v = _qkv()
    mask = (np.arange(9) < 6)[None, None, None, :]
    out = np.asarray(xla_attention(q, k, v, scale=0.35, mask=mask))
    assert np.abs(out - _reference(q, k, v, 0.35, mask)).max() <= TOLERANCE
    # changing only the masked-out keys/values must not change the result
    k2 = k.at[:, 6:].set(100.0)
    v2 = v.at[:, 6:].set(-100.0)
    out2 = np.asarray(xla_attention(q, k2, v2, scale=0.35, mask=mask))
    assert np.abs(out - out2).max() == 0.0


def test_default_scale_is_inverse_sqrt_head_dim():
    q, k, v = _qkv()
    np.testing.assert_array_equal(np.asarray(attention(q, k, v)),
                                  np.asarray(xla_attention(q, k, v, scale=8 ** -0.5)))


def test_unknown_implementation_is_refused():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
        attention(q, k, v, implementation="flash")
