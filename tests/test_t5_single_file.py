"""ComfyUI's T5 / UMT5 single files (`t5xxl_fp16`, `t5xxl_fp8_e4m3fn`, `t5xxl_fp8_e4m3fn_scaled`,
`umt5_xxl_fp16`, `umt5_xxl_fp8_e4m3fn_scaled`) → `load_model` (and `jaxdiff convert` → `load_model`) →
the same encoding as ComfyUI's own `comfy/text_encoders/t5.py` `T5` on the same file's weights.

The files are written from ComfyUI's module (`state_dict()`: transformers' key names, no
`encoder.embed_tokens` alias) as ComfyUI ships them: fp16; fp8 (every tensor float8_e4m3fn); fp8
scaled (Linear weights fp8 with a per-tensor `scale_weight`, other tensors fp16, the `scaled_fp8`
marker). UMT5 files also carry the tokenizer as a uint8 `spiece_model` tensor. The reference runs in
fp32 on the file's own (rounded) weights — for the scaled files through ComfyUI's scaled-fp8 Linear ops,
so the dequantisation is checked against ComfyUI's, not against ours. Ours loads with dtype float32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from parity import max_diff
from t5_fixtures import TINY, comfy_file_state, comfy_forward, comfy_t5, encode, tokens, without_extras
from jaxdiff import load_model
from jaxdiff.cli import main as jaxdiff_main
from jaxdiff.convert import convert, t5_keys
from jaxdiff.convert.checkpoint import read_meta
from jaxdiff.convert.loader import detect_kind
from jaxdiff.models_flax.t5 import T5EncoderModel
from jaxdiff.models_flax.umt5 import UMT5EncoderModel

TOLERANCE = 1e-5  # fp32 parity; never loosened. Measured 1e-6…4e-6 (ComfyUI scales k by √d_kv).
BF16_SANITY = 0.05  # bf16 compute vs the fp32 reference, relative to the output scale
FILES = {  # ComfyUI file name → (UMT5?, variant)
    "t5xxl_fp16": (False, "fp16"),
    "t5xxl_fp8_e4m3fn": (False, "fp8"),
    "t5xxl_fp8_e4m3fn_scaled": (False, "fp8_scaled"),
    "umt5_xxl_fp16": (True, "fp16"),
    "umt5_xxl_fp8_e4m3fn_scaled": (True, "fp8_scaled"),
}


def comfy_reference(tmp_path, umt5: bool, state: dict, variant: str):
    """ComfyUI's T5 holding the file's weights, fp32 compute."""
    model_tensors = without_extras(state)
    if variant == "fp8_scaled":
        model = comfy_t5(tmp_path, umt5, scaled_fp8=True)
        model.load_state_dict(model_tensors, strict=True)
        return model
    model = comfy_t5(tmp_path, umt5)
    model.load_state_dict({k: v.float() for k, v in model_tensors.items()}, strict=True)
    return model


@pytest.fixture(scope="module")
def comfy_files(tmp_path_factory):
    """{file name: (path, ComfyUI reference module)}."""
    root = tmp_path_factory.mktemp("comfy-t5")
    made = {}
    for name, (umt5, variant) in FILES.items():
        source = comfy_t5(root, umt5, seed=7 if umt5 else 5)
        state = comfy_file_state(source.state_dict(), variant, umt5)
        path = root / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        made[name] = (path, comfy_reference(root, umt5, state, variant))
    return made


@pytest.mark.parametrize("name", list(FILES))
@pytest.mark.parametrize("padded", [True, False], ids=["padding_mask", "no_mask"])
def test_comfy_file_loads_and_matches_comfyui(comfy_files, name, padded):
    path, reference = comfy_files[name]
    umt5, _ = FILES[name]
    model = load_model(path, dtype="float32")
    assert type(model) is (UMT5EncoderModel if umt5 else T5EncoderModel)
    ids, mask = tokens(padded=padded)
    ref = comfy_forward(reference, ids, mask)
    assert np.abs(ref).max() > 1.0
    assert max_diff(encode(model, ids, mask), ref) <= TOLERANCE


@pytest.mark.parametrize("name", ["t5xxl_fp8_e4m3fn_scaled", "umt5_xxl_fp8_e4m3fn_scaled"])
def test_comfy_file_converts_and_restores(comfy_files, name, tmp_path):
    path, reference = comfy_files[name]
    out = tmp_path / "converted"
    assert jaxdiff_main(["convert", str(path), str(out), "--dtype", "float32"]) == 0
    meta = read_meta(out)
    assert meta["family"] == ("umt5" if FILES[name][0] else "t5")
    # every model tensor once; the scales, the marker and spiece_model are no parameters
    assert meta["num_tensors"] == len([k for k in reference.state_dict() if not k.endswith("scale_weight")])
    ids, mask = tokens()
    assert max_diff(encode(load_model(out), ids, mask), comfy_forward(reference, ids, mask)) <= TOLERANCE


def test_config_is_read_from_shapes(comfy_files):
    for name, (umt5, _) in FILES.items():
        config = load_model(comfy_files[name][0], abstract=True).config
        assert (config.vocab_size, config.d_model, config.d_kv, config.num_heads, config.d_ff,
                config.num_layers) == tuple(TINY[k] for k in ("vocab_size", "d_model", "d_kv", "num_heads",
                                                              "d_ff", "num_layers"))
        assert config.relative_attention_num_buckets == 32 and config.relative_attention_max_distance == 128
        assert config.feed_forward_proj == "gated-gelu" and config.layer_norm_epsilon == 1e-6
        assert config.model_type == ("umt5" if umt5 else "t5")


def test_fp8_files_load_as_bfloat16_and_fp16_files_as_float16(comfy_files):
    assert detect_kind(comfy_files["umt5_xxl_fp16"][0]).name == "umt5"
    leaf = lambda m: m.encoder.block[0].layer[0].SelfAttention.q.kernel
    assert leaf(load_model(comfy_files["t5xxl_fp16"][0], abstract=True)).dtype == np.float16
    assert leaf(load_model(comfy_files["t5xxl_fp8_e4m3fn_scaled"][0], abstract=True)).dtype.name == "bfloat16"


def test_relu_t5_file_is_read_as_relu(tmp_path):
    source = comfy_t5(tmp_path, False, feed_forward_proj="relu")
    path = tmp_path / "t5_relu.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = load_model(path)
    assert model.config.feed_forward_proj == "relu"
    ids, mask = tokens()
    assert max_diff(encode(model, ids, mask), comfy_forward(source, ids, mask)) <= TOLERANCE


# ----------------------------------------------------------------------------- detection and errors


def _shapes(umt5: bool) -> dict:
    import tempfile

    source = comfy_t5(tempfile.mkdtemp(), umt5)
    return {k: tuple(v.shape) for k, v in source.state_dict().items()}


def test_t5_and_umt5_are_told_apart_by_block_1s_bias():
    t5, umt5 = _shapes(False), _shapes(True)
    assert t5_keys.is_t5(t5) and not t5_keys.is_umt5(t5)
    assert t5_keys.is_umt5(umt5) and not t5_keys.is_t5(umt5)
    assert not t5_keys.is_t5({"img_in.weight": (3, 4)}) and not t5_keys.is_umt5({})


def test_embedding_stored_under_the_tied_alias_gives_the_config():
    shapes = _shapes(False)
    shapes["encoder.embed_tokens.weight"] = shapes.pop("shared.weight")
    assert t5_keys.t5_config(shapes)["vocab_size"] == TINY["vocab_size"]


def _save_comfy(tmp_path, change, umt5: bool = True):
    source = comfy_t5(tmp_path, umt5)
    state = change(comfy_file_state(source.state_dict(), "fp16", umt5))
    path = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_missing_embedding_is_a_one_line_error_naming_file_and_key(tmp_path):
    def drop(state):
        del state["shared.weight"]
        return state

    path = _save_comfy(tmp_path, drop)
    with pytest.raises(ValueError) as err:
        load_model(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "cannot detect the UMT5 encoder config: key 'shared.weight' (token embedding) is missing" in message


def test_missing_block_tensor_is_a_one_line_error_naming_file_and_key(tmp_path):
    def drop(state):
        del state["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
        return state

    path = _save_comfy(tmp_path, drop)
    with pytest.raises(ValueError) as err:
        load_model(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "UMT5EncoderModel" in message
    assert "1 missing parameter(s): encoder.block.1.layer.1.DenseReluDense.wo.kernel" in message


def test_unexpected_tensor_is_an_error_naming_it(tmp_path):
    def extra(state):
        state["encoder.block.0.layer.0.SelfAttention.extra.weight"] = torch.zeros(2, 2)
        return state

    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): encoder\.block\.0\.layer\.0\.SelfAttention"
                                         r"\.extra\.weight"):
        load_model(_save_comfy(tmp_path, extra))


def test_vocab_size_override_that_does_not_fit_is_a_shape_error(comfy_files):
    from jaxdiff.models_flax.umt5 import UMT5Config

    path = comfy_files["umt5_xxl_fp16"][0]
    wrong = UMT5Config.from_dict(dict(TINY, vocab_size=100, feed_forward_proj="gated-gelu"))
    with pytest.raises(ValueError) as err:
        load_model(path, config=wrong)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert f"shared.weight: checkpoint ({TINY['vocab_size']}, {TINY['d_model']})" in message


def test_spiece_model_and_scaled_fp8_marker_are_not_parameters(comfy_files):
    """Both are skipped cleanly: the file converts with exactly the model's tensors."""
    from jaxdiff.convert.loader import open_plan

    with open_plan(comfy_files["umt5_xxl_fp8_e4m3fn_scaled"][0]) as plan:
        sources = {take.source for take in plan.takes.values()}
    assert "spiece_model" not in sources and "scaled_fp8" not in sources
    assert not any(s.endswith("scale_weight") for s in sources)


def test_fp8_scaled_file_runs_in_its_default_bfloat16(comfy_files):
    """The default dtype path (fp8 → bfloat16 parameters and compute) stays near the fp32 reference;
    bf16 keeps ~3 significant digits, so this is a sanity bound, not the fp32 parity tolerance."""
    path, reference = comfy_files["umt5_xxl_fp8_e4m3fn_scaled"]
    model = load_model(path)
    ids, mask = tokens()
    out = encode(model, ids, mask)
    ref = comfy_forward(reference, ids, mask)
    assert out.dtype.name == "bfloat16"
    assert np.abs(out.astype(np.float32) - ref).max() <= BF16_SANITY * np.abs(ref).max()
