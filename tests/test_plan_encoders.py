"""`jaxdiff plan` counts the family's encoders (released CLIP-L + T5-XXL for Flux, UMT5-XXL for Wan and
CLIP ViT-H for Wan 2.1 I2V) exactly, and keeps them out of the denoising peak when they are offloaded."""

from __future__ import annotations

import pytest

from jaxdiff import families
from jaxdiff.pipelines import plan
from test_plan import leaf_bytes, request

GIB = 2 ** 30


def _encoder_bytes(*names) -> int:
    total = 0
    for name in names:
        kind = families.get_model(name)
        config = families.resolve(kind.config_class).from_dict(families.ENCODER_PRESETS[name])
        total += leaf_bytes(plan.abstract_split(kind, config, "bfloat16")[1])
    return total


@pytest.mark.parametrize("model, kinds", [("flux-dev", ("clip_text", "t5")), ("wan2.1-t2v-14b", ("umt5",)),
                                          ("wan2.1-i2v-14b", ("umt5", "clip_vision"))])
def test_the_family_encoders_are_counted_exactly(model, kinds):
    result = plan.plan(request(["--model", model]))
    assert set(result["text_encoder_parts"]) == set(kinds)
    assert result["text_encoder"] == _encoder_bytes(*kinds)


def test_released_encoder_sizes():
    assert 4.7e9 < _encoder_bytes("t5") / 2 < 4.8e9  # T5-XXL encoder: 4.76 B parameters
    assert 5.6e9 < _encoder_bytes("umt5") / 2 < 5.8e9  # UMT5-XXL encoder: 5.68 B
    assert 0.12e9 < _encoder_bytes("clip_text") / 2 < 0.13e9  # CLIP-L text: 123 M


def test_encoders_that_do_not_fit_beside_the_transformer_are_offloaded_by_default():
    result = plan.plan(request(["--model", "flux-dev"]), "v5e")
    assert result["text_encoder_offloaded"]
    assert result["denoise_peak"] < result["transformer_params"] + result["text_encoder"]
    assert result["encode_peak"] >= result["text_encoder"]


def test_kept_encoders_add_to_every_peak():
    kept = plan.plan(request(["--model", "flux-dev", "--no-offload-text-encoder"]), "h200")
    freed = plan.plan(request(["--model", "flux-dev", "--offload-text-encoder"]), "h200")
    assert not kept["text_encoder_offloaded"] and freed["text_encoder_offloaded"]
    assert kept["denoise_peak"] - freed["denoise_peak"] == kept["text_encoder"]
    auto = plan.plan(request(["--model", "flux-dev"]), "h200")  # 141 GB: everything fits together
    assert not auto["text_encoder_offloaded"]


def test_encoders_shard_over_fsdp():
    one = plan.plan(request(["--model", "wan2.1-t2v-14b"]))
    eight = plan.plan(request(["--model", "wan2.1-t2v-14b"], mesh="fsdp=8"))
    assert eight["text_encoder"] < one["text_encoder"] / 7
