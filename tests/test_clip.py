"""CLIP text encoder (models_flax/clip.py) and its converter (convert/clip_keys.py): parity with
transformers' `CLIPTextModel` and with ComfyUI's own `comfy.clip_model.CLIPTextModel` (clip_l's
module), on tiny random towers, in fp32 to max |diff| ≤ 1e-5; transformers-format directories
(`save_pretrained` of CLIPTextModel / CLIPTextModelWithProjection) and single files in ComfyUI's
layout (fp32 / fp16 / bf16) through `load_model` and `convert`; config detection against ComfyUI's
config jsons; errors."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from clip_fixtures import (COMFY_TEXT, COMFY_VOCAB, DETECTABLE, TEXT, comfy_text, hf_text, load_weights_,
                           save_state)
from comfy_fixtures import comfyui_root
from jaxdiff import load_model
from jaxdiff.cli import main as jaxdiff_main
from jaxdiff.convert import convert
from jaxdiff.convert.checkpoint import read_meta
from jaxdiff.convert.clip_keys import clip_text_config
from jaxdiff.families import Sizes
from jaxdiff.models_flax.clip import CLIPTextConfig, CLIPTextModel, example_text_inputs

TOL = 1e-5  # fp32 max |diff|
BATCH, SEQ = 2, 12


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def text_inputs(seed: int = 0, seq: int = SEQ, vocab: int = TEXT["vocab_size"],
                eos: int = TEXT["eos_token_id"], lengths=(SEQ, 7)):
    """ids above the EOS id (so argmax(ids) is never the EOS position), one EOS at each row's last
    token, padded with EOS after it (as CLIP's tokenizer pads), and the matching 0/1 mask."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(eos + 1, vocab, (BATCH, seq))
    mask = np.zeros((BATCH, seq), np.int64)
    for row, n in enumerate(lengths):
        ids[row, n - 1:] = eos
        mask[row, :n] = 1
    return ids, mask


def run_hf(model, ids, mask=None):
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(ids), attention_mask=None if mask is None else torch.from_numpy(mask),
                    output_hidden_states=True)
    return {"last_hidden_state": out.last_hidden_state.numpy(), "pooler_output": out.pooler_output.numpy(),
            "hidden_states": [h.numpy() for h in out.hidden_states]}


def run_ours(model, ids, mask=None):
    return model(jnp.asarray(ids), None if mask is None else jnp.asarray(mask), output_hidden_states=True)


def assert_matches_hf(ours, ref, rows=slice(None), positions=slice(None)):
    last = "last_hidden_state"
    assert max_diff(ours[last][rows, positions], ref[last][rows, positions]) <= TOL
    assert max_diff(ours["pooler_output"][rows], ref["pooler_output"][rows]) <= TOL
    assert len(ours["hidden_states"]) == len(ref["hidden_states"]) == TEXT["num_hidden_layers"] + 1
    for o, r in zip(ours["hidden_states"], ref["hidden_states"]):
        assert max_diff(o[rows, positions], r[rows, positions]) <= TOL


@pytest.fixture(scope="module", params=["quick_gelu", "gelu"])
def hf_case(request, tmp_path_factory):
    """(transformers CLIPTextModel, its `save_pretrained` dir, ours loaded from that dir)."""
    model = hf_text(hidden_act=request.param)
    directory = tmp_path_factory.mktemp(f"clip-text-{request.param}")
    model.save_pretrained(directory)
    return model, directory, load_model(directory)


# ----------------------------------------------------------------------------- vs transformers


def test_transformers_dir_loads_as_clip_text_model(hf_case):
    model, directory, ours = hf_case
    assert isinstance(ours, CLIPTextModel)
    assert json.loads((directory / "config.json").read_text())["architectures"] == ["CLIPTextModel"]
    assert ours.config == CLIPTextConfig.from_dict({**TEXT, "hidden_act": model.config.hidden_act})


def test_matches_transformers_with_right_padding(hf_case):
    model, _, ours = hf_case
    ids, mask = text_inputs()
    assert_matches_hf(run_ours(ours, ids, mask), run_hf(model, ids, mask))


def test_matches_transformers_without_mask(hf_case):
    model, _, ours = hf_case
    ids, _ = text_inputs(seed=1)
    assert_matches_hf(run_ours(ours, ids), run_hf(model, ids))


def test_left_padding_matches_transformers_on_the_tokens(hf_case):
    """Queries at left padding see no key at all (causal + padding): their rows are meaningless in both
    implementations; every real token's row (and the pooled one) must agree."""
    model, _, ours = hf_case
    ids, _ = text_inputs(seed=2, lengths=(SEQ, SEQ))
    mask = np.ones((BATCH, SEQ), np.int64)
    mask[1, :3] = 0
    o, r = run_ours(ours, ids, mask), run_hf(model, ids, mask)
    assert_matches_hf(o, r, rows=0)
    assert_matches_hf(o, r, rows=1, positions=slice(3, None))


def test_padded_tokens_do_not_change_the_real_ones(hf_case):
    _, _, ours = hf_case
    ids, mask = text_inputs(seed=3)
    other = ids.copy()
    other[1, 7:] = 50  # different padding tokens, still masked
    a, b = run_ours(ours, ids, mask), run_ours(ours, other, mask)
    assert max_diff(a["last_hidden_state"][1, :7], b["last_hidden_state"][1, :7]) == 0.0
    assert max_diff(a["pooler_output"], b["pooler_output"]) == 0.0


def test_pooled_output_is_the_first_eos_not_the_largest_id(hf_case):
    model, _, ours = hf_case
    ids, _ = text_inputs(seed=4)
    ids[0, 3] = TEXT["eos_token_id"]  # an earlier EOS wins
    first_eos = np.argmax(ids == TEXT["eos_token_id"], axis=1)
    assert (first_eos != np.argmax(ids, axis=1)).all()
    out = run_ours(ours, ids)
    rows = np.asarray(out["last_hidden_state"])[np.arange(BATCH), first_eos]
    assert max_diff(out["pooler_output"], rows) == 0.0
    assert max_diff(out["pooler_output"], run_hf(model, ids)["pooler_output"]) <= TOL


def test_legacy_eos_token_id_2_pools_at_the_largest_id(tmp_path):
    model = hf_text(seed=5, eos_token_id=2)
    model.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    ids, _ = text_inputs(seed=5, eos=2)
    ids[:, 4] = TEXT["vocab_size"] - 1  # the largest id, away from the EOS
    out = run_ours(ours, ids)
    rows = np.asarray(out["last_hidden_state"])[:, 4]
    assert max_diff(out["pooler_output"], rows) == 0.0
    assert max_diff(out["pooler_output"], run_hf(model, ids)["pooler_output"]) <= TOL


def test_penultimate_hidden_state_matches_transformers(hf_case):
    model, _, ours = hf_case
    ids, mask = text_inputs(seed=6)
    o, r = run_ours(ours, ids, mask), run_hf(model, ids, mask)
    assert max_diff(o["hidden_states"][-2], r["hidden_states"][-2]) <= TOL


def test_hidden_states_only_when_asked(hf_case):
    _, _, ours = hf_case
    ids, mask = text_inputs()
    assert set(ours(jnp.asarray(ids), jnp.asarray(mask))) == {"last_hidden_state", "pooler_output"}


def test_with_projection_dir_loads_and_ignores_the_projection(tmp_path):
    model = hf_text(seed=7, projection=True)
    model.save_pretrained(tmp_path)
    assert "text_projection.weight" in load_file(tmp_path / "model.safetensors")
    ours = load_model(tmp_path)
    ids, mask = text_inputs(seed=7)
    import torch

    with torch.no_grad():
        ref = model.text_model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    out = run_ours(ours, ids, mask)
    assert max_diff(out["pooler_output"], ref.pooler_output.numpy()) <= TOL
    assert max_diff(out["last_hidden_state"], ref.last_hidden_state.numpy()) <= TOL


def test_prefixed_and_bare_transformers_names_load_alike(hf_case, tmp_path):
    """transformers 5 saves a bare CLIPTextModel (`embeddings.…`); older files say `text_model.…`."""
    _, directory, ours = hf_case
    bare = load_file(directory / "model.safetensors")
    assert all(not k.startswith("text_model.") for k in bare)
    prefixed_dir = tmp_path / "prefixed"
    prefixed_dir.mkdir()
    (prefixed_dir / "config.json").write_text((directory / "config.json").read_text())
    save_file({f"text_model.{k}": v for k, v in bare.items()}, prefixed_dir / "model.safetensors")
    other = load_model(prefixed_dir)
    ids, mask = text_inputs()
    pooled = [run_ours(m, ids, mask)["pooler_output"] for m in (other, ours)]
    assert max_diff(*pooled) == 0


def test_converts_and_loads_back(hf_case, tmp_path):
    _, directory, ours = hf_case
    out = convert(directory, tmp_path / "clip-jax")
    meta = read_meta(out)
    assert meta["family"] == "clip_text" and meta["class_name"] == "CLIPTextModel"
    assert "text_model.encoder.layers.2" in meta["units"]
    back = load_model(out)
    assert back.config == ours.config
    ids, mask = text_inputs()
    a, b = run_ours(back, ids, mask), run_ours(ours, ids, mask)
    assert max_diff(a["last_hidden_state"], b["last_hidden_state"]) == 0.0


def test_longer_than_the_position_table_is_an_error(hf_case):
    _, _, ours = hf_case
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 16"):
        ours(jnp.zeros((1, 17), jnp.int32))


def test_example_inputs_pool_at_each_rows_eos():
    config = CLIPTextConfig.from_dict(TEXT)
    inputs = example_text_inputs(config, Sizes(batch=2, text_tokens=40), seed=0)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape == mask.shape == (2, 16) and ids.dtype == np.int32
    first_eos = np.argmax(ids == config.eos_token_id, axis=1)
    assert (ids == config.eos_token_id).any(axis=1).all()
    np.testing.assert_array_equal(first_eos, mask.sum(axis=1) - 1)


# ----------------------------------------------------------------------------- vs ComfyUI


def run_comfy(model, ids):
    """(last_hidden_state, penultimate layer output, unprojected pooled) from ComfyUI's forward."""
    import torch

    with torch.no_grad():
        x, penultimate, _, pooled = model(torch.from_numpy(ids), intermediate_output=-2,
                                          final_layer_norm_intermediate=False)
    return x.numpy(), penultimate.numpy(), pooled.numpy()


def comfy_config(**changes) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=COMFY_VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
                          num_attention_heads=4, max_position_embeddings=16, **changes)


def assert_matches_comfy(ours, model, ids, tol=TOL):
    x, penultimate, pooled = run_comfy(model, ids)
    out = run_ours(ours, ids)
    assert max_diff(out["last_hidden_state"], x) <= tol
    assert max_diff(out["hidden_states"][-2], penultimate) <= tol
    assert max_diff(out["pooler_output"], pooled) <= tol


@pytest.fixture(scope="module")
def comfy_model(tmp_path_factory):
    return comfy_text(tmp_path_factory.mktemp("comfy"))


def eos_ids(seed: int = 0):
    """Comfy-style ids: EOS 49407 at each row's end and as padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 49000, (BATCH, COMFY_TEXT["max_position_embeddings"]))
    ids[0, 10:] = COMFY_TEXT["eos_token_id"]
    ids[1, 6:] = COMFY_TEXT["eos_token_id"]
    return ids


def test_comfy_clip_l_layout_file_matches_comfyui(comfy_model, tmp_path):
    path, _ = save_state(comfy_model, tmp_path / "clip_l.safetensors")
    ours = load_model(path, config=comfy_config())
    assert isinstance(ours, CLIPTextModel)
    assert_matches_comfy(ours, comfy_model, eos_ids())


def test_comfy_file_with_unused_tensors_loads(comfy_model, tmp_path):
    """ComfyUI's clip_l may carry position_ids, logit_scale and text_projection: none is an error."""
    import torch

    extra = {"text_model.embeddings.position_ids": torch.arange(16)[None],
             "logit_scale": torch.tensor(4.6)}
    path, saved = save_state(comfy_model, tmp_path / "clip_l.safetensors", extra=extra)
    assert "text_projection.weight" in saved
    assert_matches_comfy(load_model(path, config=comfy_config()), comfy_model, eos_ids(1))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_comfy_files_load_in_their_dtype_and_in_fp32(comfy_model, tmp_path, dtype):
    import torch

    path, saved = save_state(comfy_model, tmp_path / f"clip_l_{dtype}.safetensors",
                             dtype=getattr(torch, dtype))
    native = load_model(path, config=comfy_config())
    assert native.text_model.encoder.layers[0].mlp.fc1.kernel.dtype == jnp.dtype(dtype)
    assert np.isfinite(np.asarray(run_ours(native, eos_ids())["pooler_output"], np.float32)).all()
    reference = load_weights_(comfy_text(tmp_path), saved)  # fp32 module holding the rounded weights
    assert_matches_comfy(load_model(path, config=comfy_config(), dtype="float32"), reference, eos_ids(2))


def test_comfy_file_of_a_detectable_width_needs_no_config(tmp_path):
    model = comfy_text(tmp_path, seed=3, **DETECTABLE)
    path, _ = save_state(model, tmp_path / "clip.safetensors")
    ours = load_model(path)
    assert ours.config == CLIPTextConfig(vocab_size=COMFY_VOCAB, hidden_size=64, intermediate_size=37,
                                         projection_dim=64, num_hidden_layers=3, num_attention_heads=1,
                                         max_position_embeddings=16)
    assert_matches_comfy(ours, model, eos_ids(3))


def test_comfy_file_converts_with_the_cli_and_loads_back(tmp_path):
    model = comfy_text(tmp_path, seed=4, **DETECTABLE)
    path, _ = save_state(model, tmp_path / "clip.safetensors")
    out = tmp_path / "clip-jax"
    assert jaxdiff_main(["convert", str(path), str(out)]) == 0
    assert read_meta(out)["family"] == "clip_text"
    assert_matches_comfy(load_model(out), model, eos_ids(4))


# ----------------------------------------------------------------------------- config from shapes


def text_shapes(width: int, layers: int, intermediate: int, vocab: int = 49408, positions: int = 77,
                projection: bool = True) -> dict:
    shapes = {"text_model.embeddings.token_embedding.weight": (vocab, width),
              "text_model.embeddings.position_embedding.weight": (positions, width),
              "text_model.final_layer_norm.weight": (width,)}
    for i in range(layers):
        shapes[f"text_model.encoder.layers.{i}.mlp.fc1.weight"] = (intermediate, width)
    if projection:
        shapes["text_projection.weight"] = (width, width)
    return shapes


@pytest.mark.parametrize("json_name", ["sd1_clip_config.json", "text_encoders/sd2_clip_config.json",
                                       "clip_config_bigg.json"])
def test_config_from_shapes_agrees_with_comfyui_config_jsons(json_name, tmp_path):
    reference = json.loads((comfyui_root(tmp_path) / "comfy" / json_name).read_text())
    shapes = text_shapes(reference["hidden_size"], reference["num_hidden_layers"],
                         reference["intermediate_size"])
    detected = clip_text_config(shapes)
    for field, value in detected.items():
        assert value == reference[field], field


def test_unknown_width_gets_head_dim_64_and_quick_gelu():
    detected = clip_text_config(text_shapes(192, 2, 300, vocab=500, positions=20, projection=False))
    assert detected["num_attention_heads"] == 3 and detected["hidden_act"] == "quick_gelu"
    assert detected["projection_dim"] == 192 and detected["eos_token_id"] == 499


# ----------------------------------------------------------------------------- errors


def test_width_no_config_can_describe_asks_for_config(comfy_model, tmp_path):
    path, _ = save_state(comfy_model, tmp_path / "clip_l.safetensors")
    with pytest.raises(ValueError, match=r"width 32 .*pass config=") as err:
        load_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_key_is_named_with_the_file(comfy_model, tmp_path):
    path, _ = save_state(comfy_model, tmp_path / "full.safetensors")
    state = load_file(path)
    del state["text_model.encoder.layers.1.mlp.fc2.bias"]
    save_file(state, tmp_path / "clip_l.safetensors")
    with pytest.raises(ValueError, match=r"1 missing parameter\(s\): "
                                         r"text_model\.encoder\.layers\.1\.mlp\.fc2\.bias") as err:
        load_model(tmp_path / "clip_l.safetensors", config=comfy_config())
    assert str(tmp_path / "clip_l.safetensors") in str(err.value) and "\n" not in str(err.value)


def test_missing_detection_key_is_named_with_the_file(comfy_model, tmp_path):
    path, _ = save_state(comfy_model, tmp_path / "full.safetensors")
    state = load_file(path)
    del state["text_model.embeddings.token_embedding.weight"]
    save_file(state, tmp_path / "clip_l.safetensors")
    with pytest.raises(ValueError, match=r"key 'text_model\.embeddings\.token_embedding\.weight' "
                                         r"\(token embedding\) is missing") as err:
        load_model(tmp_path / "clip_l.safetensors")
    assert str(tmp_path / "clip_l.safetensors") in str(err.value) and "\n" not in str(err.value)


def test_unexpected_key_is_named(comfy_model, tmp_path):
    import torch

    path, _ = save_state(comfy_model, tmp_path / "clip_l.safetensors",
                         extra={"text_model.encoder.layers.0.extra.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): "
                                         r"text_model\.encoder\.layers\.0\.extra\.weight"):
        load_model(path, config=comfy_config())


def test_bare_transformers_state_dict_file_loads(tmp_path):
    """A single file of transformers 5's bare CLIPTextModel state dict (`embeddings.…`, no
    `text_model.`) is read like ComfyUI's prefixed one."""
    model = hf_text(seed=8, hidden_size=64, num_attention_heads=1, vocab_size=49408, eos_token_id=49407,
                    max_position_embeddings=77)
    path, saved = save_state(model, tmp_path / "clip.safetensors")
    assert "embeddings.token_embedding.weight" in saved
    ours = load_model(path)
    assert ours.config.num_attention_heads == 1 and ours.config.max_position_embeddings == 77
    ids = eos_ids(8)[:, :SEQ]
    ids[0, -1] = 49407
    assert max_diff(run_ours(ours, ids)["pooler_output"], run_hf(model, ids)["pooler_output"]) <= TOL
