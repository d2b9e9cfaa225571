"""T5 and UMT5 encoders (models_flax/t5.py, umt5.py) against transformers' `T5EncoderModel` /
`UMT5EncoderModel`: same weights, same token ids and padding masks → same `last_hidden_state`
(fp32, ≤1e-5); their transformers directories load through `load_model` and `convert`.

Tiny configs (tests/t5_fixtures.py TINY: width 32, 4 heads × 8, 3 blocks, 32 buckets) with N(0, 0.1²)
weights; measured differences are 1e-6…4e-6 (torch fp32 itself is as far from float64).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from parity import abstract_model, max_diff, run_jitted
from t5_fixtures import ALIAS, SEQ, TINY, encode, ours_like, tokens, torch_encode, transformers_encoder
from jaxdiff import families, load_model
from jaxdiff.convert import convert
from jaxdiff.convert.checkpoint import read_meta
from jaxdiff.convert.place import load_state_dict
from jaxdiff.models_flax.t5 import (T5Config, T5EncoderModel, clamp_fp16, example_inputs,
                                    relative_position_buckets)
from jaxdiff.models_flax.umt5 import UMT5Config, UMT5EncoderModel

TOLERANCE = 1e-5  # fp32 parity; never loosened
FP16_OVERFLOW_FACTOR = 1e5  # scales the FFN output weights until the residual stream overflows fp16
OURS = {False: (T5Config, T5EncoderModel), True: (UMT5Config, UMT5EncoderModel)}


def our_config(umt5: bool, feed_forward_proj: str):
    config_cls, _ = OURS[umt5]
    return config_cls.from_dict(dict(TINY, feed_forward_proj=feed_forward_proj))


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("umt5", [False, True], ids=["t5", "umt5"])
@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "relu"])
@pytest.mark.parametrize("padded", [True, False], ids=["padding_mask", "no_mask"])
def test_encoder_matches_transformers(umt5, feed_forward_proj, padded):
    torch_model = transformers_encoder(umt5, feed_forward_proj)
    ids, mask = tokens(batch=2, padded=padded)  # padded: item 1 keeps SEQ − 3 tokens
    ref = torch_encode(torch_model, ids, mask)
    assert np.abs(ref).max() > 1.0  # not a comparison between near-zero outputs
    assert max_diff(encode(ours_like(torch_model, umt5), ids, mask), ref) <= TOLERANCE


@pytest.mark.parametrize("umt5", [False, True], ids=["t5", "umt5"])
def test_padding_mask_hides_padded_tokens(umt5):
    """The unpadded tokens of a padded item encode as the same item alone without padding."""
    ours = ours_like(transformers_encoder(umt5), umt5)
    ids, mask = tokens(batch=2)
    keep = int(mask[1].sum())
    alone = encode(ours, ids[1:, :keep], None)
    padded = encode(ours, ids, mask)
    # relative positions within the kept tokens are the same, so the bias is too
    assert max_diff(padded[1, :keep], alone[0]) <= TOLERANCE


def test_gated_gelu_is_the_tanh_approximation_and_plain_gelu_is_exact():
    assert T5Config(feed_forward_proj="gated-gelu").dense_act_fn == "gelu_new"
    assert T5Config(feed_forward_proj="gelu").dense_act_fn == "gelu"
    assert T5Config(feed_forward_proj="gated-gelu").is_gated_act
    assert not T5Config(feed_forward_proj="relu").is_gated_act


def test_gated_gelu_new_checkpoint_matches_transformers():
    """`gated-gelu_new` (spelled out) is the same tanh GELU as `gated-gelu`."""
    torch_model = transformers_encoder(False, "gated-gelu_new")
    ids, mask = tokens()
    ours = ours_like(torch_model, False)
    assert max_diff(encode(ours, ids, mask), torch_encode(torch_model, ids, mask)) <= TOLERANCE


def test_comfyui_config_dict_names_the_same_feed_forward(tmp_path):
    import json

    from comfy_fixtures import comfyui_root

    config = json.loads((comfyui_root(tmp_path) / "comfy" / "text_encoders" / "umt5_config_xxl.json").read_text())
    ours = UMT5Config.from_dict(config)
    assert ours.feed_forward_proj == "gated-gelu_pytorch_tanh" and ours.is_gated_act
    assert (ours.d_model, ours.num_heads, ours.d_kv, ours.d_ff, ours.num_layers, ours.vocab_size) == (
        4096, 64, 64, 10240, 24, 256384)
    assert T5Config.from_dict({"dense_act_fn": "relu", "is_gated_act": False}).feed_forward_proj == "relu"


@pytest.mark.parametrize("bad", ["gated", "geglu-x-y", "swiglu", "ungated-relu"])
def test_unknown_feed_forward_proj_is_an_error(bad):
    with pytest.raises(ValueError, match=f"feed_forward_proj {bad!r}"):
        T5Config(feed_forward_proj=bad)


@pytest.mark.parametrize("buckets, max_distance", [(32, 128), (8, 20), (16, 32)])
@pytest.mark.parametrize("seq", [1, 9, 100, 600])
def test_relative_position_buckets_equal_transformers(buckets, max_distance, seq):
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(seq)[None, :] - torch.arange(seq)[:, None]
    ref = T5Attention._relative_position_bucket(relative, True, buckets, max_distance).numpy()
    np.testing.assert_array_equal(relative_position_buckets(seq, seq, buckets, max_distance), ref)


def test_fp16_hidden_states_are_clamped_as_transformers_does():
    big = float(jnp.finfo(jnp.float16).max)
    finite = jnp.asarray([1.0, -big, big], jnp.float16)
    np.testing.assert_array_equal(np.asarray(clamp_fp16(finite)), np.asarray(finite))
    with_inf = jnp.asarray([1.0, jnp.inf, -jnp.inf], jnp.float16)
    # torch: clamp to ±(max − 1000), that bound rounded to fp16 (64512)
    expected = torch.clamp(torch.tensor([1.0, float("inf"), -float("inf")], dtype=torch.float16),
                           min=-(big - 1000), max=big - 1000)
    np.testing.assert_array_equal(np.asarray(clamp_fp16(with_inf), np.float32), expected.float().numpy())
    f32 = jnp.asarray([jnp.inf], jnp.float32)
    assert clamp_fp16(f32) is f32  # float32 / bfloat16 pass through untouched


def test_float16_encoder_stays_finite_where_activations_overflow(monkeypatch):
    """Huge FFN outputs overflow fp16; the clamp keeps the encoding finite (without it: inf/NaN)."""
    from jaxdiff.models_flax import t5

    torch_model = transformers_encoder(False)
    with torch.no_grad():
        for name, p in torch_model.named_parameters():
            if name.endswith("DenseReluDense.wo.weight"):
                p.mul_(FP16_OVERFLOW_FACTOR)
    config_cls, model_cls = OURS[False]
    model = nnx.eval_shape(lambda: model_cls(config_cls.from_dict(torch_model.config.to_dict()),
                                             param_dtype=jnp.float16, rngs=nnx.Rngs(0)))
    load_state_dict(model, {k: v.numpy() for k, v in torch_model.state_dict().items() if k != ALIAS})
    ids, mask = tokens()
    out = encode(model, ids, mask)
    assert out.dtype == np.float16 and np.isfinite(out).all()
    monkeypatch.setattr(t5, "clamp_fp16", lambda x: x)
    assert not np.isfinite(encode(model, ids, mask)).all()


def test_example_inputs_are_ids_and_a_padding_mask():
    config = our_config(True, "gated-gelu")
    inputs = example_inputs(config, families.Sizes(batch=2, text_tokens=SEQ), seed=1)
    assert inputs["input_ids"].shape == (2, SEQ) and inputs["input_ids"].dtype == np.int32
    assert 0 <= inputs["input_ids"].min() and inputs["input_ids"].max() < config.vocab_size
    assert inputs["attention_mask"][0].all() and 0 < inputs["attention_mask"][1].sum() < SEQ
    model = nnx.merge(*nnx.split(UMT5EncoderModel(config, rngs=nnx.Rngs(0))))
    assert run_jitted(model, inputs).shape == (2, SEQ, config.d_model)


def test_parameters_carry_logical_axis_names():
    model = abstract_model(UMT5EncoderModel, our_config(True, "gated-gelu"))
    axes = {".".join(map(str, p)): v.get_metadata().get("out_sharding")
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert axes["shared.embedding"] == ("vocab", "embed")
    assert axes["encoder.block.0.layer.0.SelfAttention.q.kernel"] == ("embed", "heads")
    assert axes["encoder.block.0.layer.0.SelfAttention.o.kernel"] == ("heads", "embed")
    assert axes["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.embedding"] == (None, "heads")
    assert axes["encoder.block.0.layer.1.DenseReluDense.wi_0.kernel"] == ("embed", "mlp")
    assert axes["encoder.block.0.layer.1.DenseReluDense.wo.kernel"] == ("mlp", "embed")
    assert axes["encoder.final_layer_norm.scale"] == ("embed",)
    assert all(a is not None for a in axes.values())


def test_input_shape_errors_name_the_shapes():
    model = abstract_model(T5EncoderModel, our_config(False, "relu"))
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, seq\], got shape \(12,\)"):
        model(jnp.zeros((12,), jnp.int32))
    with pytest.raises(ValueError, match=r"attention_mask shape \(2, 5\) does not match input_ids \(2, 12\)"):
        model(jnp.zeros((2, 12), jnp.int32), jnp.ones((2, 5), jnp.int32))


# ----------------------------------------------------------------------------- transformers directories


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{"t5" | "umt5": (save_pretrained dir, torch model)}."""
    out = {}
    for umt5 in (False, True):
        model = transformers_encoder(umt5, seed=3)
        directory = tmp_path_factory.mktemp("umt5" if umt5 else "t5")
        model.save_pretrained(directory)
        out["umt5" if umt5 else "t5"] = (directory, model)
    return out


@pytest.mark.parametrize("kind", ["t5", "umt5"])
def test_save_pretrained_dir_loads_and_matches_transformers(saved, kind):
    directory, torch_model = saved[kind]
    model = load_model(directory)
    assert isinstance(model, OURS[kind == "umt5"][1])
    assert model.config == OURS[kind == "umt5"][0].from_dict(torch_model.config.to_dict())
    assert model.config.model_type == kind
    ids, mask = tokens()
    assert max_diff(encode(model, ids, mask), torch_encode(torch_model, ids, mask)) <= TOLERANCE


@pytest.mark.parametrize("kind", ["t5", "umt5"])
def test_save_pretrained_dir_converts_and_restores(saved, kind, tmp_path):
    directory, torch_model = saved[kind]
    out = convert(directory, tmp_path / f"{kind}-jax")
    meta = read_meta(out)
    assert meta["family"] == kind and meta["class_name"] == torch_model.__class__.__name__
    assert {"shared", "encoder"} | {f"encoder.block.{i}" for i in range(TINY["num_layers"])} == set(meta["units"])
    assert meta["num_tensors"] == len(torch_model.state_dict()) - 1  # the tied alias is no tensor
    ids, mask = tokens()
    assert max_diff(encode(load_model(out), ids, mask), torch_encode(torch_model, ids, mask)) <= TOLERANCE


def test_vocab_size_mismatch_names_the_file_and_key(saved, tmp_path):
    import json
    import shutil

    directory = tmp_path / "wrong-vocab"
    shutil.copytree(saved["t5"][0], directory)
    config = json.loads((directory / "config.json").read_text())
    config["vocab_size"] = TINY["vocab_size"] + 8
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as err:
        load_model(directory)
    message = str(err.value)
    assert "\n" not in message and str(directory) in message and "T5EncoderModel" in message
    assert f"shared.weight: checkpoint ({TINY['vocab_size']}, {TINY['d_model']})" in message
    assert f"vs model ({TINY['vocab_size'] + 8}, {TINY['d_model']})" in message
