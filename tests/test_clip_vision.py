"""CLIP vision tower (models_flax/clip_vision.py) and its converter: parity with transformers'
`CLIPVisionModelWithProjection` / `CLIPVisionModel` and with ComfyUI's own
`comfy.clip_model.CLIPVisionModelProjection` (clip_vision_h's module), on tiny random towers, in fp32
to max |diff| ≤ 1e-5 (image_embeds, last_hidden_state, hidden_states, the penultimate layer Wan 2.1
I2V takes); ComfyUI-layout single files (fp32 / fp16) and transformers directories through
`load_model` and `convert`; config detection against ComfyUI's config jsons; `clip_preprocess`
against ComfyUI's `comfy.clip_vision.clip_preprocess`."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from clip_fixtures import (COMFY_VISION, DETECTABLE, VISION, comfy_vision, hf_vision, import_comfy,
                           load_weights_, save_state)
from comfy_fixtures import comfyui_root
from jaxdiff import load_model
from jaxdiff.convert import convert
from jaxdiff.convert.checkpoint import read_meta
from jaxdiff.convert.clip_keys import clip_vision_config
from jaxdiff.families import Sizes
from jaxdiff.models_flax.clip_vision import (CLIP_MEAN, CLIP_STD, CLIPVisionConfig,
                                             CLIPVisionModelWithProjection, clip_preprocess, example_inputs,
                                             resize_bicubic_antialias, resize_taps)

TOL = 1e-5  # fp32 max |diff|
BATCH = 2
LEVEL = 1.0 / 255.0  # one 8-bit step before normalisation


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


def pixels(seed: int = 0, size: int = VISION["image_size"]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((BATCH, 3, size, size)).astype(np.float32)


def run_hf(model, x):
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(x), output_hidden_states=True)
    embeds = out.image_embeds if hasattr(out, "image_embeds") else out.pooler_output
    return {"image_embeds": embeds.numpy(), "last_hidden_state": out.last_hidden_state.numpy(),
            "hidden_states": [h.numpy() for h in out.hidden_states]}


def assert_matches_hf(ours, ref):
    assert max_diff(ours["image_embeds"], ref["image_embeds"]) <= TOL
    assert max_diff(ours["last_hidden_state"], ref["last_hidden_state"]) <= TOL
    assert len(ours["hidden_states"]) == len(ref["hidden_states"]) == VISION["num_hidden_layers"] + 1
    for o, r in zip(ours["hidden_states"], ref["hidden_states"]):
        assert max_diff(o, r) <= TOL
    assert max_diff(ours["penultimate_hidden_states"], ref["hidden_states"][-2]) <= TOL


@pytest.fixture(scope="module")
def hf_case(tmp_path_factory):
    """(transformers CLIPVisionModelWithProjection, its save_pretrained dir, ours loaded from it)."""
    model = hf_vision()
    directory = tmp_path_factory.mktemp("clip-vision")
    model.save_pretrained(directory)
    return model, directory, load_model(directory)


# ----------------------------------------------------------------------------- vs transformers


def test_matches_transformers_with_projection(hf_case):
    model, directory, ours = hf_case
    assert isinstance(ours, CLIPVisionModelWithProjection)
    assert ours.config == CLIPVisionConfig.from_dict(VISION)
    x = pixels()
    assert_matches_hf(ours(jnp.asarray(x), output_hidden_states=True), run_hf(model, x))


def test_penultimate_alone_equals_hidden_states_minus_2(hf_case):
    model, _, ours = hf_case
    x = pixels(1)
    alone = ours.penultimate_hidden_states(jnp.asarray(x))
    assert max_diff(alone, run_hf(model, x)["hidden_states"][-2]) <= TOL
    assert max_diff(alone, ours(jnp.asarray(x))["penultimate_hidden_states"]) == 0.0


def test_hidden_states_only_when_asked(hf_case):
    _, _, ours = hf_case
    assert set(ours(jnp.asarray(pixels()))) == {"image_embeds", "pooler_output", "last_hidden_state",
                                                "penultimate_hidden_states"}


def test_clip_vision_model_dir_has_no_projection(tmp_path):
    """transformers' CLIPVisionModel (diffusers' Wan I2V `image_encoder`): saved bare by transformers 5,
    config.json listing a projection_dim it has no weights for; image_embeds = the pooled output."""
    model = hf_vision(seed=2, projection=False)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["projection_dim"] == VISION["projection_dim"]
    ours = load_model(tmp_path)
    assert ours.config.projection_dim is None and ours.visual_projection is None
    x = pixels(2)
    out = ours(jnp.asarray(x), output_hidden_states=True)
    assert max_diff(out["pooler_output"], out["image_embeds"]) == 0.0
    assert_matches_hf(out, run_hf(model, x))


def test_converts_and_loads_back(hf_case, tmp_path):
    _, directory, ours = hf_case
    out = convert(directory, tmp_path / "vision-jax")
    meta = read_meta(out)
    assert meta["family"] == "clip_vision" and meta["class_name"] == "CLIPVisionModelWithProjection"
    back = load_model(out)
    x = jnp.asarray(pixels())
    assert max_diff(back(x)["image_embeds"], ours(x)["image_embeds"]) == 0.0


def test_wrong_image_size_is_an_error(hf_case):
    _, _, ours = hf_case
    with pytest.raises(ValueError, match=r"pixel_values must be \[B, 3, 28, 28\].*\(2, 3, 32, 32\)"):
        ours(jnp.asarray(pixels(size=32)))


def test_example_inputs_fit_the_model(hf_case):
    _, _, ours = hf_case
    inputs = example_inputs(ours.config, Sizes(batch=3))
    assert inputs["pixel_values"].shape == (3, 3, 28, 28)
    assert ours(jnp.asarray(inputs["pixel_values"]))["image_embeds"].shape == (3, VISION["projection_dim"])


# ----------------------------------------------------------------------------- vs ComfyUI


def run_comfy(model, x):
    """(last_hidden_state, penultimate_hidden_states, image_embeds) as ClipVisionModel.encode_image
    reads them (`intermediate_output=-2`)."""
    import torch

    with torch.no_grad():
        last, penultimate, embeds, _ = model(pixel_values=torch.from_numpy(x), intermediate_output=-2)
    return last.numpy(), penultimate.numpy(), embeds.numpy()


def assert_matches_comfy(ours, model, x):
    last, penultimate, embeds = run_comfy(model, x)
    out = ours(jnp.asarray(x))
    assert max_diff(out["last_hidden_state"], last) <= TOL
    assert max_diff(out["penultimate_hidden_states"], penultimate) <= TOL
    assert max_diff(out["image_embeds"], embeds) <= TOL


def comfy_config(**changes) -> CLIPVisionConfig:
    fields = {k: v for k, v in COMFY_VISION.items() if k != "model_type"}
    return CLIPVisionConfig(**{**fields, **changes})


@pytest.fixture(scope="module")
def comfy_model(tmp_path_factory):
    return comfy_vision(tmp_path_factory.mktemp("comfy"))


def test_comfy_clip_vision_layout_file_matches_comfyui(comfy_model, tmp_path):
    import torch

    extra = {"vision_model.embeddings.position_ids": torch.arange(17)[None]}
    path, _ = save_state(comfy_model, tmp_path / "clip_vision_h.safetensors", extra=extra)
    ours = load_model(path, config=comfy_config())
    assert isinstance(ours, CLIPVisionModelWithProjection)
    assert_matches_comfy(ours, comfy_model, pixels(3))


def test_fp16_comfy_file_loads_in_fp16_and_in_fp32(comfy_model, tmp_path):
    import torch

    path, saved = save_state(comfy_model, tmp_path / "clip_vision_h_fp16.safetensors", dtype=torch.float16)
    native = load_model(path, config=comfy_config())
    assert native.vision_model.embeddings.patch_embedding.kernel.dtype == jnp.float16
    assert np.isfinite(np.asarray(native(jnp.asarray(pixels()))["image_embeds"], np.float32)).all()
    reference = load_weights_(comfy_vision(tmp_path), saved)
    assert_matches_comfy(load_model(path, config=comfy_config(), dtype="float32"), reference, pixels(4))


def test_comfy_file_of_a_detectable_width_needs_no_config(tmp_path):
    model = comfy_vision(tmp_path, seed=5, **{**DETECTABLE, "hidden_act": "quick_gelu"})
    path, _ = save_state(model, tmp_path / "clip_vision.safetensors")
    ours = load_model(path)
    assert ours.config == comfy_config(hidden_size=64, num_attention_heads=1, hidden_act="quick_gelu")
    assert_matches_comfy(ours, model, pixels(5))
    out = convert(path, tmp_path / "vision-jax")
    assert_matches_comfy(load_model(out), model, pixels(6))


def test_missing_key_is_named_with_the_file(comfy_model, tmp_path):
    path, _ = save_state(comfy_model, tmp_path / "full.safetensors")
    state = load_file(path)
    del state["vision_model.encoder.layers.2.self_attn.k_proj.bias"]
    save_file(state, tmp_path / "clip_vision_h.safetensors")
    with pytest.raises(ValueError, match=r"1 missing parameter\(s\): "
                                         r"vision_model\.encoder\.layers\.2\.self_attn\.k_proj\.bias") as err:
        load_model(tmp_path / "clip_vision_h.safetensors", config=comfy_config())
    assert str(tmp_path / "clip_vision_h.safetensors") in str(err.value) and "\n" not in str(err.value)


def test_missing_class_token_is_named_with_the_file(comfy_model, tmp_path):
    path, _ = save_state(comfy_model, tmp_path / "full.safetensors")
    state = load_file(path)
    del state["vision_model.embeddings.class_embedding"]
    save_file(state, tmp_path / "clip_vision_h.safetensors")
    with pytest.raises(ValueError, match=r"key 'vision_model\.embeddings\.class_embedding' \(class token\) "
                                         r"is missing") as err:
        load_model(tmp_path / "clip_vision_h.safetensors")
    assert str(tmp_path / "clip_vision_h.safetensors") in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- config from shapes


def vision_shapes(width: int, layers: int, intermediate: int, patch: int, image: int,
                  projection: int) -> dict:
    shapes = {"vision_model.embeddings.class_embedding": (width,),
              "vision_model.embeddings.patch_embedding.weight": (width, 3, patch, patch),
              "vision_model.embeddings.position_embedding.weight": ((image // patch) ** 2 + 1, width),
              "visual_projection.weight": (projection, width)}
    for i in range(layers):
        shapes[f"vision_model.encoder.layers.{i}.layer_norm1.weight"] = (width,)
        shapes[f"vision_model.encoder.layers.{i}.mlp.fc1.weight"] = (intermediate, width)
    return shapes


@pytest.mark.parametrize("json_name", ["clip_vision_config_h.json", "clip_vision_config_vitl.json",
                                       "clip_vision_config_vitl_336.json", "clip_vision_config_g.json"])
def test_config_from_shapes_agrees_with_comfyui_config_jsons(json_name, tmp_path):
    reference = json.loads((comfyui_root(tmp_path) / "comfy" / json_name).read_text())
    detected = clip_vision_config(vision_shapes(
        reference["hidden_size"], reference["num_hidden_layers"], reference["intermediate_size"],
        reference["patch_size"], reference["image_size"], reference["projection_dim"]))
    for field, value in detected.items():
        assert value == reference[field], field


# ----------------------------------------------------------------------------- preprocessing
# Measured against torch 2.12 on x86-64 CPU: resampling weights are bit-equal to torch's; resized
# values differ by ≤ 2.4e-7 (torch's build fuses some of its float32 multiply-adds). After the 8-bit
# rounding ComfyUI applies, outputs are equal except the rare value (≈ 1 in 10⁵) whose 255·x lies
# within that error of a rounding boundary: it lands one 8-bit level away (1/255/std ≈ 0.015).


def comfy_preprocess(tmp_path, images, **kw) -> np.ndarray:
    import torch

    _, clip_vision = import_comfy(tmp_path)
    return clip_vision.clip_preprocess(torch.from_numpy(images), **kw).numpy()


def torch_resized(images: np.ndarray, size: int, crop: bool) -> np.ndarray:
    """ComfyUI's resize + crop, stopped before its 8-bit rounding ([B, 3, size, size] float32)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images[..., :3]).movedim(-1, 1)
    h, w = x.shape[2:]
    scale = size / min(h, w)
    target = (round(scale * h), round(scale * w)) if crop else (size, size)
    x = F.interpolate(x, size=target, mode="bicubic", antialias=True)
    top, left = (target[0] - size) // 2, (target[1] - size) // 2
    return x[:, :, top:top + size, left:left + size].numpy()


def image(seed: int, *shape) -> np.ndarray:
    """8-bit-valued float images, as ComfyUI decodes them."""
    return (np.random.default_rng(seed).integers(0, 256, shape) / 255.0).astype(np.float32)


@pytest.mark.parametrize("shape, crop", [((2, 120, 200, 3), True), ((1, 300, 170, 3), True),
                                         ((1, 60, 90, 3), True), ((1, 150, 250, 3), False),
                                         ((1, 224, 224, 3), True), ((1, 240, 320, 4), True)])
def test_preprocess_matches_comfyui(shape, crop, tmp_path):
    images = image(sum(shape), *shape)
    ours = clip_preprocess(images, crop=crop)
    ref = comfy_preprocess(tmp_path, images, crop=crop)
    assert ours.shape == ref.shape == (shape[0], 3, 224, 224) and ours.dtype == np.float32
    diff = np.abs(ours - ref)
    boundary = np.abs((255 * torch_resized(images, 224, crop)) % 1 - 0.5) < 1e-4  # ties of the rounding
    assert diff[~boundary].max() <= TOL
    std = np.asarray(CLIP_STD, np.float32).reshape(1, 3, 1, 1)
    assert np.all(np.isclose(diff, 0, atol=TOL) | np.isclose(diff, LEVEL / std, rtol=1e-3))
    assert (diff > TOL).mean() < 1e-4


def test_resize_matches_torch_interpolate_before_rounding():
    import torch
    import torch.nn.functional as F

    for (h, w), (oh, ow) in [((120, 200), (224, 373)), ((300, 170), (395, 224)), ((60, 90), (224, 336))]:
        x = np.random.default_rng(h).random((1, 3, h, w), dtype=np.float32)
        ref = F.interpolate(torch.from_numpy(x), size=(oh, ow), mode="bicubic", antialias=True).numpy()
        assert max_diff(resize_bicubic_antialias(x, (oh, ow)), ref) <= 1e-6


@pytest.mark.parametrize("n_in, n_out", [(300, 224), (48, 224), (1280, 398)])
def test_resize_weights_equal_torchs(n_in, n_out):
    """Resizing the identity along one axis reads torch's resampling matrix back exactly."""
    import torch
    import torch.nn.functional as F

    eye = np.eye(n_in, dtype=np.float32)[None, None]
    ref = F.interpolate(torch.from_numpy(eye), size=(n_in, n_out), mode="bicubic",
                        antialias=True).numpy()[0, 0]
    index, weight = resize_taps(n_in, n_out)
    ours = np.zeros((n_in, n_out), np.float32)
    for k in range(index.shape[1]):
        np.add.at(ours, (index[:, k], np.arange(n_out)), weight[:, k])
    np.testing.assert_array_equal(ours, ref)


def test_preprocess_takes_mean_std_and_size(tmp_path):
    images = image(7, 1, 50, 80, 3)
    kw = dict(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    diff = np.abs(clip_preprocess(images, **kw) - comfy_preprocess(tmp_path, images, **kw))
    boundary = np.abs((255 * torch_resized(images, 32, True)) % 1 - 0.5) < 1e-4
    assert diff[~boundary].max() <= TOL


def test_preprocess_of_a_square_image_of_the_size_only_rounds_and_normalises():
    images = np.random.default_rng(8).random((1, 224, 224, 3), dtype=np.float32)
    expected = (np.round(images * 255) / 255).transpose(0, 3, 1, 2)
    mean, std = (np.asarray(v, np.float32).reshape(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    assert max_diff(clip_preprocess(images), (expected - mean) / std) <= TOL


def test_preprocess_wants_batched_images():
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        clip_preprocess(np.zeros((224, 224, 3), np.float32))


def test_bare_transformers_state_dict_file_loads(tmp_path):
    """A single file of transformers 5's bare CLIPVisionModel state dict (`embeddings.…`, no
    `vision_model.`, no projection) is read like ComfyUI's prefixed one."""
    model = hf_vision(seed=9, projection=False, hidden_size=64, num_attention_heads=1,
                      hidden_act="quick_gelu")
    path, saved = save_state(model, tmp_path / "clip_vision.safetensors")
    assert "embeddings.class_embedding" in saved
    ours = load_model(path)
    assert ours.config.projection_dim is None and ours.config.image_size == 28
    x = pixels(9)
    assert_matches_hf(ours(jnp.asarray(x), output_hidden_states=True), run_hf(model, x))
