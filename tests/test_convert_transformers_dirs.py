"""transformers-format model directories (config.json `architectures`, `model.safetensors` or a
sharded index), tied-embedding aliases and torch `nn.Embedding` weights, with a throw-away
T5-encoder-shaped kind (tests/toy_encoder.py) registered per test. The directories are written by
transformers' own `T5EncoderModel.save_pretrained` (config.json then names the toy architecture)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from toy_encoder import ARCHITECTURE, ToyEncoder, registered
from jaxdiff import load_model
from jaxdiff.convert import convert
from jaxdiff.convert.checkpoint import read_meta
from jaxdiff.convert.place import load_state_dict, param_targets, plan_placement
from jaxdiff.models_flax.layers import ZEROS, param

T5 = dict(vocab_size=32, d_model=16, d_kv=4, num_heads=2, d_ff=24, num_layers=2,
          relative_attention_num_buckets=8, feed_forward_proj="relu")
SHARD_SIZE = "2KB"  # several shards + model.safetensors.index.json for the tiny encoder
ALIAS = "encoder.embed_tokens.weight"
EMBEDDINGS = ("shared.weight", "relative_attention_bias.weight")  # torch nn.Embedding weights


@pytest.fixture(autouse=True)
def toy_kind():
    with registered() as kind:
        yield kind


def _name_toy_architecture(directory):
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["T5EncoderModel"] and config["model_type"] == "t5"
    config["architectures"] = [ARCHITECTURE]
    (directory / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def t5_dirs(tmp_path_factory):
    """({"single", "sharded"}: transformers dir, {torch key: float32 array} of the saved model)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    model = T5EncoderModel(T5Config(**T5)).eval()
    with torch.no_grad():  # distinct values everywhere (norms too), so a misplaced tensor shows
        for p in model.parameters():
            p.copy_(torch.randn(p.shape))
    root = tmp_path_factory.mktemp("t5")
    dirs = {"single": root / "single", "sharded": root / "sharded"}
    model.save_pretrained(dirs["single"])
    model.save_pretrained(dirs["sharded"], max_shard_size=SHARD_SIZE)
    for directory in dirs.values():
        _name_toy_architecture(directory)
    tensors = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    return dirs, tensors


def _expected(tensors: dict) -> dict:
    """{our path: value}: Linear weights transposed to `kernel`, norms `scale`, embeddings
    `embedding` as stored ([num, dim]); the tied alias is the same tensor as `shared`."""
    out = {}
    for key, value in tensors.items():
        if key == ALIAS:
            continue
        parts = tuple(int(p) if p.isdigit() else p for p in key.split("."))[:-1]
        if key.endswith(EMBEDDINGS):
            out[parts + ("embedding",)] = value
        elif value.ndim == 2:
            out[parts + ("kernel",)] = value.T
        else:
            out[parts + ("scale",)] = value
    return out


def assert_holds(model, tensors):
    assert isinstance(model, ToyEncoder)
    ours = {tuple(p): np.asarray(v.get_value())
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    expected = _expected(tensors)
    assert ours.keys() == expected.keys()
    for path, value in expected.items():
        np.testing.assert_array_equal(ours[path], value, err_msg=str(path))


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_transformers_dir_loads_with_load_model(t5_dirs, layout):
    dirs, tensors = t5_dirs
    if layout == "sharded":
        assert len(list(dirs[layout].glob("model-*.safetensors"))) > 1
        assert (dirs[layout] / "model.safetensors.index.json").is_file()
    else:
        assert [p.name for p in dirs[layout].glob("*.safetensors")] == ["model.safetensors"]
    assert_holds(load_model(dirs[layout]), tensors)


def test_transformers_dir_converts_one_block_per_unit(t5_dirs, tmp_path):
    dirs, tensors = t5_dirs
    out = convert(dirs["sharded"], tmp_path / "toy-jax")
    meta = read_meta(out)
    assert meta["family"] == "toy_encoder" and meta["class_name"] == ARCHITECTURE
    assert set(meta["units"]) == {"shared", "encoder", "encoder.block.0", "encoder.block.1"}
    assert meta["num_tensors"] == len(tensors) - 1  # the tied alias is not a tensor of its own
    assert_holds(load_model(out), tensors)


def test_unknown_architecture_names_the_supported_ones(t5_dirs, tmp_path):
    directory = tmp_path / "mystery"
    shutil.copytree(t5_dirs[0]["single"], directory)
    (directory / "config.json").write_text(json.dumps({"architectures": ["MysteryModel"],
                                                       "model_type": "mystery"}))
    with pytest.raises(ValueError, match="unsupported model class 'MysteryModel'") as err:
        load_model(directory)
    for name in (str(directory / "config.json"), ARCHITECTURE, "FluxTransformer2DModel", "AutoencoderKLWan"):
        assert name in str(err.value)


def test_config_naming_no_model_class_says_what_it_looked_for(t5_dirs, tmp_path):
    directory = tmp_path / "nameless"
    shutil.copytree(t5_dirs[0]["single"], directory)
    (directory / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ValueError, match=r"no diffusers `_class_name` and no transformers "
                                         r"`architectures`.*supported: .*ToyEncoderModel"):
        load_model(directory)


# ----------------------------------------------------------------------------- tied aliases


def _rewrite(t5_dirs, tmp_path, change) -> tuple:
    """(a copy of the single-file dir whose model.safetensors holds `change(tensors)`, the tensors
    transformers saved)."""
    directory = tmp_path / "rewritten"
    shutil.copytree(t5_dirs[0]["single"], directory)
    tensors = load_file(directory / "model.safetensors")
    save_file(change(dict(tensors)), directory / "model.safetensors")
    return directory, tensors


def test_tensor_stored_only_under_the_tied_alias_fills_the_parameter(t5_dirs, tmp_path):
    def alias_only(tensors):
        tensors[ALIAS] = tensors.pop("shared.weight")
        return tensors

    directory, tensors = _rewrite(t5_dirs, tmp_path, alias_only)
    assert_holds(load_model(directory), tensors)


def test_tensor_stored_under_both_tied_names_is_read_once(t5_dirs, tmp_path):
    def both(tensors):
        tensors[ALIAS] = tensors["shared.weight"].copy()
        return tensors

    directory, tensors = _rewrite(t5_dirs, tmp_path, both)
    assert_holds(load_model(directory), tensors)
    out = convert(directory, tmp_path / "converted")
    assert read_meta(out)["num_tensors"] == len(tensors)
    assert_holds(load_model(out), tensors)


def test_tied_names_of_different_shapes_are_an_error(t5_dirs, tmp_path):
    def disagree(tensors):
        tensors[ALIAS] = tensors["shared.weight"][:-1].copy()
        return tensors

    directory, _ = _rewrite(t5_dirs, tmp_path, disagree)
    with pytest.raises(ValueError, match=r"tied tensors shared\.weight \(32, 16\) and "
                                         r"encoder\.embed_tokens\.weight \(31, 16\) differ in shape") as err:
        load_model(directory)
    assert str(directory) in str(err.value)


# ----------------------------------------------------------------------------- nn.Embedding


class Tokens(nnx.Module):
    def __init__(self):
        self.embedding = param(ZEROS, (5, 3), np.float32, ("vocab", "embed"))


class Lookup(nnx.Module):
    def __init__(self):
        self.tokens = Tokens()


def test_torch_embedding_weight_fills_the_embedding_leaf_untransposed():
    module = Lookup()
    weight = np.arange(15, dtype=np.float32).reshape(5, 3)
    load_state_dict(module, {"tokens.weight": weight})
    np.testing.assert_array_equal(np.asarray(module.tokens.embedding[...]), weight)


def test_transposed_embedding_weight_is_a_shape_mismatch_naming_the_key():
    targets = param_targets(Lookup())
    placed = plan_placement({"tokens.weight": (5, 3)}, targets)
    assert placed == {("tokens", "embedding"): "tokens.weight"}
    with pytest.raises(ValueError, match=r"tokens\.weight: checkpoint \(3, 5\) → \(3, 5\) vs model \(5, 3\)"):
        plan_placement({"tokens.weight": (3, 5)}, targets, source="toy.safetensors")
