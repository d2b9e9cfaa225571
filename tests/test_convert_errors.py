"""Bad inputs to `load_model` / `convert` fail loudly, naming the file, key or shape at fault."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from flux_fixtures import tiny_flux_config, tiny_torch_flux
from jaxdiff import load_model
from jaxdiff.convert import checkpoint, convert
from jaxdiff import load_model as convert_load_model
from jaxdiff.convert.flux_keys import bfl_flux_config

BFL_HIDDEN = 128


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("flux") / "transformer"
    tiny_torch_flux(True).save_pretrained(path)
    return path


def copy_dir(src, dst):
    shutil.copytree(src, dst)
    return dst


def tiny_bfl_state(hidden: int = BFL_HIDDEN, guidance: bool = True) -> dict[str, np.ndarray]:
    """Minimal BFL-layout Flux tensors (1 double + 1 single block), deterministic values."""
    shapes = {"img_in": (hidden, 16), "txt_in": (hidden, 32), "time_in.in_layer": (hidden, 256),
              "time_in.out_layer": (hidden, hidden), "vector_in.in_layer": (hidden, 32),
              "vector_in.out_layer": (hidden, hidden), "final_layer.linear": (16, hidden),
              "final_layer.adaLN_modulation.1": (2 * hidden, hidden),
              "single_blocks.0.linear1": (7 * hidden, hidden),
              "single_blocks.0.linear2": (hidden, 5 * hidden),
              "single_blocks.0.modulation.lin": (3 * hidden, hidden)}
    if guidance:
        shapes.update({"guidance_in.in_layer": (hidden, 256), "guidance_in.out_layer": (hidden, hidden)})
    for s in ("img", "txt"):
        shapes.update({f"double_blocks.0.{s}_mod.lin": (6 * hidden, hidden),
                       f"double_blocks.0.{s}_attn.qkv": (3 * hidden, hidden),
                       f"double_blocks.0.{s}_attn.proj": (hidden, hidden),
                       f"double_blocks.0.{s}_mlp.0": (4 * hidden, hidden),
                       f"double_blocks.0.{s}_mlp.2": (hidden, 4 * hidden)})
    state = {}
    for module, shape in shapes.items():
        state[f"{module}.weight"] = np.full(shape, 0.01, np.float32)
        state[f"{module}.bias"] = np.zeros(shape[:1], np.float32)
    for norm in ("double_blocks.0.img_attn.norm", "double_blocks.0.txt_attn.norm", "single_blocks.0.norm"):
        for which in ("query_norm", "key_norm"):
            state[f"{norm}.{which}.scale"] = np.ones((128,), np.float32)
    return state


def write(tmp_path, state, name="flux.safetensors"):
    path = tmp_path / name
    save_file(state, str(path))
    return path


def test_tiny_bfl_state_loads(tmp_path):
    model = load_model(write(tmp_path, tiny_bfl_state()))
    assert model.config.num_layers == 1 and model.config.guidance_embeds


def test_truncated_file_names_the_file(tmp_path):
    path = write(tmp_path, tiny_bfl_state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match=r"flux\.safetensors.*truncated"):
        load_model(path)


def test_truncated_header_names_the_file(tmp_path):
    path = tmp_path / "stub.safetensors"
    path.write_bytes(b"\x00\x10\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ValueError, match=r"stub\.safetensors.*truncated"):
        load_model(path)


def test_unknown_key_is_named(tmp_path):
    state = tiny_bfl_state()
    state["double_blocks.0.img_attn.extra.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): double_blocks\.0\.img_attn\.extra\.weight"):
        load_model(write(tmp_path, state))


def test_missing_key_is_named(tmp_path):
    state = tiny_bfl_state()
    del state["txt_in.bias"]
    with pytest.raises(ValueError, match=r"1 missing key\(s\): txt_in\.bias"):
        load_model(write(tmp_path, state))


def test_missing_diffusers_key_is_named(diffusers_dir, tmp_path):
    from safetensors.numpy import load_file

    bad = copy_dir(diffusers_dir, tmp_path / "bad")
    weights = bad / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    del state["transformer_blocks.0.attn.to_k.bias"]
    save_file(state, str(weights))
    with pytest.raises(ValueError, match=r"1 missing parameter\(s\): transformer_blocks\.0\.attn\.to_k\.bias"):
        load_model(bad)


def test_missing_detection_key_is_named(tmp_path):
    state = tiny_bfl_state()
    del state["img_in.weight"]
    with pytest.raises(ValueError, match=r"'img_in\.weight'.*missing"):
        load_model(write(tmp_path, state))


def test_width_not_a_multiple_of_128_needs_explicit_config(tmp_path):
    path = write(tmp_path, tiny_bfl_state(hidden=96))
    with pytest.raises(ValueError, match=r"width 96 .*img_in\.weight.*config="):
        load_model(path)


def test_explicit_config_overrides_detection(tmp_path):
    """Tiny files whose head dim is not 128: detection would be wrong, config= says what it is."""
    state = tiny_bfl_state(hidden=BFL_HIDDEN)
    config = dict(bfl_flux_config({k: v.shape for k, v in state.items()}),
                  attention_head_dim=32, num_attention_heads=4, axes_dims_rope=[8, 12, 12])
    for key in [k for k in state if k.endswith("norm.scale")]:
        state[key] = np.ones((32,), np.float32)
    path = write(tmp_path, state)
    model = convert_load_model(path, config=config)
    assert model.config.num_attention_heads == 4
    with pytest.raises(ValueError, match=r"head dim 32 .*query_norm.*config="):
        load_model(path)  # RoPE axes for head dim 32 cannot be guessed


def test_many_unknown_keys_are_listed_then_counted(tmp_path):
    state = tiny_bfl_state()
    for i in range(8):
        state[f"double_blocks.0.bogus{i}.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(ValueError, match=r"8 unexpected key\(s\): .* and 3 more"):
        load_model(write(tmp_path, state))


def test_wrong_shape_is_named(diffusers_dir, tmp_path):
    bad = copy_dir(diffusers_dir, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["joint_attention_dim"] = 48
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"shape mismatch.*context_embedder\.weight: checkpoint \(32, 32\)"):
        load_model(bad)


def test_unsupported_class_is_named(diffusers_dir, tmp_path):
    bad = copy_dir(diffusers_dir, tmp_path / "bad")
    (bad / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        load_model(bad)


def test_diffusers_dir_without_config_json(diffusers_dir, tmp_path):
    bad = copy_dir(diffusers_dir, tmp_path / "bad")
    (bad / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(bad)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_checkpoint_is_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="pickle.*execute.*safetensors"):
        load_model(path)


def test_diffusers_dir_with_only_pickle_weights_is_refused(tmp_path):
    path = tmp_path / "old"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel",
                                                  **tiny_flux_config()}))
    torch.save({"w": torch.zeros(2)}, path / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle"):
        load_model(path)


def test_converted_dir_without_meta_is_refused(diffusers_dir, tmp_path):
    out = convert(diffusers_dir, tmp_path / "conv")
    (out / "jaxdiff.json").unlink()
    with pytest.raises(FileNotFoundError, match="jaxdiff.json"):
        load_model(out)


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_interrupted_conversion_leaves_nothing_loadable(diffusers_dir, tmp_path, monkeypatch, error):
    calls = []
    real_save = checkpoint._save_unit

    def failing_save(*args):
        calls.append(args)
        if len(calls) == 3:
            raise error("interrupted mid-write")
        real_save(*args)

    monkeypatch.setattr(checkpoint, "_save_unit", failing_save)
    out = tmp_path / "conv"
    with pytest.raises(error):
        convert(diffusers_dir, out)
    assert list(tmp_path.iterdir()) == []  # temp dir removed, nothing at out
    with pytest.raises(FileNotFoundError):
        load_model(out)


def test_failed_overwrite_keeps_the_old_checkpoint(diffusers_dir, tmp_path, monkeypatch):
    out = convert(diffusers_dir, tmp_path / "conv")
    monkeypatch.setattr(checkpoint, "_save_unit", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        convert(diffusers_dir, out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["conv"]
    assert load_model(out).config.num_layers == 1


def test_existing_output_is_not_overwritten_by_default(diffusers_dir, tmp_path):
    out = tmp_path / "conv"
    out.mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(diffusers_dir, out)
