"""What tells UMT5 (models_flax/umt5.py) from T5: a relative-position bias table in every block, each
one used by its own block only; config defaults as transformers' `UMT5Config` (and T5's as `T5Config`).
Parity with transformers' `UMT5EncoderModel` is in test_t5.py (parametrized over both encoders)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parity import abstract_model, max_diff
from t5_fixtures import TINY, encode, ours_like, tokens, torch_encode, transformers_encoder
from jaxdiff.models_flax.t5 import T5Config, T5EncoderModel
from jaxdiff.models_flax.umt5 import UMT5Config, UMT5EncoderModel

TOLERANCE = 1e-5  # fp32 parity; never loosened
FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
          "relative_attention_max_distance", "layer_norm_epsilon", "feed_forward_proj", "model_type")


def test_umt5_blocks_learn_their_own_bias_and_t5_blocks_share_block_0s():
    config = dict(TINY, feed_forward_proj="gated-gelu")
    t5 = abstract_model(T5EncoderModel, T5Config.from_dict(config))
    umt5 = abstract_model(UMT5EncoderModel, UMT5Config.from_dict(config))
    assert [b.position_bias is not None for b in t5.encoder.block] == [True, False, False]
    assert all(b.position_bias is not None for b in umt5.encoder.block)
    table = umt5.encoder.block[2].layer[0].SelfAttention.relative_attention_bias.embedding
    assert table.shape == (TINY["relative_attention_num_buckets"], TINY["num_heads"])


@pytest.mark.parametrize("block", [1, 2])
def test_each_umt5_block_uses_its_own_table(block):
    """Changing block N's table changes the encoding exactly as in transformers."""
    torch_model = transformers_encoder(True)
    with torch.no_grad():
        torch_model.encoder.block[block].layer[0].SelfAttention.relative_attention_bias.weight.mul_(-3.0)
    ids, mask = tokens()
    ref = torch_encode(torch_model, ids, mask)
    ours = encode(ours_like(torch_model, True), ids, mask)
    assert max_diff(ours, ref) <= TOLERANCE
    untouched = encode(ours_like(transformers_encoder(True), True), ids, mask)
    assert np.abs(untouched - ours).max() > 100 * TOLERANCE


@pytest.mark.parametrize("ours, theirs", [(T5Config, "T5Config"), (UMT5Config, "UMT5Config")])
def test_config_defaults_are_transformers_defaults(ours, theirs):
    """transformers' `save_pretrained` config.json lists every field, but a hand-written one may rely
    on the defaults, which must then mean the same model."""
    import transformers

    reference = getattr(transformers, theirs)()
    assert {f: getattr(ours(), f) for f in FIELDS} == {f: getattr(reference, f) for f in FIELDS}
    assert ours().dense_act_fn == reference.dense_act_fn and ours().is_gated_act == reference.is_gated_act
