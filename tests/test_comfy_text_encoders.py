"""The text / image encoder loaders inside ComfyUI's own modules (imported, no server): the CLIP of
JaxDualCLIPLoader (Flux: CLIP-L + T5-XXL) and JaxCLIPLoader (Wan: UMT5-XXL) through core CLIPTextEncode /
CLIPTextEncodeFlux, and the CLIP_VISION of JaxCLIPVisionLoader through core CLIPVisionEncode, equal
ComfyUI's own CLIP / ClipVisionModel built from the same tiny files (its SDClipModel made tiny through
`model_options["<model_name>_model_config"]`, its vision model through a tiny json config). fp32, 1e-5.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

TOL = 1e-5
PROMPTS = {
    "plain": "a photo of a red cat on the moon",
    "weighted": "(red:1.3) cat",
    "long": " ".join(["astronaut riding a horse on the moon, detailed painting"] * 40),  # > 256 T5 tokens
    "empty": "",
}


@pytest.fixture(scope="module")
def comfy():
    from comfy_server import ensure_comfyui

    root = ensure_comfyui()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import comfy.sd

    comfy.root = root
    return comfy


@pytest.fixture(scope="module")
def files(comfy, tmp_path_factory):
    import text_fixtures as tf

    root = tmp_path_factory.mktemp("te")
    return {"clip_l": str(tf.write_clip_l(root / "clip_l.safetensors")),
            "t5xxl": str(tf.write_t5xxl(root / "t5xxl.safetensors")),
            "umt5": str(tf.write_umt5(root / "umt5.safetensors")),
            "umt5_bare": str(tf.write_umt5(root / "umt5_bare" / "umt5_nospiece.safetensors", spiece=False)),
            "clip_vision": str(tf.write_clip_vision_h(root / "clip_vision_h.safetensors"))}


class _Target:
    def __init__(self, clip, tokenizer):
        self.params, self.clip, self.tokenizer = {}, clip, tokenizer


def _t5_config(vocab: int) -> dict:
    import text_fixtures as tf

    return dict(d_model=tf.T5_WIDTH, d_ff=2 * tf.T5_WIDTH, d_kv=8, num_heads=tf.T5_WIDTH // 8, num_layers=2,
                vocab_size=vocab)


def comfy_flux_clip(comfy, files):
    """ComfyUI's own Flux CLIP (FluxClipModel: SDClipModel CLIP-L + T5XXLModel), made tiny, fp32."""
    import text_fixtures as tf
    from comfy.text_encoders.flux import FluxTokenizer, flux_clip
    from safetensors.torch import load_file

    w = tf.CLIP_WIDTH
    options = {"dtype": torch.float32,
               "clip_l_model_config": dict(hidden_size=w, intermediate_size=2 * w, num_attention_heads=w // 64,
                                           num_hidden_layers=2, projection_dim=w),
               "t5xxl_model_config": _t5_config(32128)}
    clip = comfy.sd.CLIP(target=_Target(flux_clip(), FluxTokenizer), model_options=options)
    missing = [set(clip.load_sd(load_file(files[name]))[0]) for name in ("clip_l", "t5xxl")]
    assert not [k for k in missing[0] & missing[1] if "position_ids" not in k]  # each loads the other's half
    return clip


def comfy_wan_clip(comfy, files):
    """ComfyUI's own Wan text encoder (WanT5Model → UMT5XXlModel), made tiny, fp32."""
    import sentencepiece
    import text_fixtures as tf
    from comfy.text_encoders.wan import WanT5Tokenizer, te
    from safetensors.torch import load_file

    sd = load_file(files["umt5"])
    vocab = sentencepiece.SentencePieceProcessor(model_proto=tf.spiece_proto()).get_piece_size()
    options = {"dtype": torch.float32, "umt5xxl_model_config": _t5_config(vocab)}
    clip = comfy.sd.CLIP(target=_Target(te(), WanT5Tokenizer), model_options=options,
                         tokenizer_data={"spiece_model": sd.pop("spiece_model")})
    missing, _ = clip.load_sd(sd)
    assert not missing, missing
    return clip


def ours_flux(files, order=("clip_l", "t5xxl")):
    from jaxdiff.comfy_nodes import loading

    return loading.load_clip([files[order[0]], files[order[1]]], "flux", "float32", "")


def ours_wan(files):
    from jaxdiff.comfy_nodes import loading

    return loading.load_clip([files["umt5"]], "wan", "float32", "")


def encode(clip, text):
    import nodes

    return nodes.CLIPTextEncode().encode(clip, text)[0]


def _close(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach().float() - b.detach().float()).abs().max())


def _same_conditioning(ours, theirs):
    assert len(ours) == len(theirs) == 1
    (c1, i1), (c2, i2) = ours[0], theirs[0]
    assert _close(c1, c2) <= TOL
    p1, p2 = i1.get("pooled_output"), i2.get("pooled_output")
    assert (p1 is None) == (p2 is None)
    if p1 is not None:
        assert _close(p1, p2) <= TOL
    return c1


@pytest.fixture(scope="module")
def flux_pair(comfy, files):
    return ours_flux(files), comfy_flux_clip(comfy, files)


@pytest.fixture(scope="module")
def wan_pair(comfy, files):
    return ours_wan(files), comfy_wan_clip(comfy, files)


# ----------------------------------------------------------------------------- Flux


@pytest.mark.parametrize("prompt", PROMPTS)
def test_flux_clip_text_encode_equals_comfyui(comfy, flux_pair, prompt):
    cond = _same_conditioning(encode(flux_pair[0], PROMPTS[prompt]), encode(flux_pair[1], PROMPTS[prompt]))
    assert cond.shape[-1] == 32
    if prompt == "long":
        assert cond.shape[1] > 256  # T5 past its 256 minimum: padded to the 512 bucket inside


def test_flux_clip_text_encode_flux_equals_comfyui(comfy, flux_pair):
    from comfy_extras.nodes_flux import CLIPTextEncodeFlux

    def run(clip):
        out = CLIPTextEncodeFlux.execute(clip, "a (red:1.3) cat", "astronaut on the moon, detailed", 3.5)
        return out[0] if isinstance(out, tuple) else out.result[0]

    mine, theirs = run(flux_pair[0]), run(flux_pair[1])
    _same_conditioning(mine, theirs)
    assert mine[0][1]["guidance"] == 3.5


def test_flux_files_in_either_order(comfy, files, flux_pair):
    swapped = ours_flux(files, order=("t5xxl", "clip_l"))
    _same_conditioning(encode(swapped, PROMPTS["plain"]), encode(flux_pair[1], PROMPTS["plain"]))


def test_prompts_in_one_bucket_share_one_program(comfy, flux_pair):
    """T5 lengths 301, 351, 401 (past its 256 minimum) share the 512 bucket: one compiled program."""
    clip = flux_pair[0]
    t5 = clip.cond_stage_model.encoders["t5xxl"].entry.get()
    lengths, sizes = [], []
    for words in (150, 175, 200):
        text = " ".join(["red cat"] * words)
        lengths.append(sum(len(chunk) for chunk in clip.tokenize(text)["t5xxl"]))
        encode(clip, text)
        sizes.append(t5._forward._cache_size())
    assert len(set(lengths)) == 3 and all(256 < n <= 512 for n in lengths), lengths
    assert sizes[0] == sizes[1] == sizes[2], sizes


# ----------------------------------------------------------------------------- Wan


@pytest.mark.parametrize("prompt", ["plain", "weighted", "long", "empty"])
def test_wan_clip_text_encode_equals_comfyui(comfy, wan_pair, prompt):
    text = PROMPTS[prompt]  # "long": past UMT5's 512-token minimum
    cond = _same_conditioning(encode(wan_pair[0], text), encode(wan_pair[1], text))
    assert cond.shape[-1] == 32 and cond.shape[1] >= 512
    if prompt == "long":
        assert cond.shape[1] > 512


# ----------------------------------------------------------------------------- CLIP vision


def comfy_clip_vision(comfy, files, tmp_path):
    import comfy.clip_vision
    import text_fixtures as tf
    from safetensors.torch import load_file

    config = dict(attention_dropout=0.0, dropout=0.0, hidden_act="gelu", hidden_size=tf.CLIP_VISION_WIDTH,
                  image_size=tf.CLIP_VISION_IMAGE, initializer_factor=1.0, initializer_range=0.02,
                  intermediate_size=64, layer_norm_eps=1e-5, model_type="clip_vision_model",
                  num_attention_heads=16, num_channels=3, num_hidden_layers=2, patch_size=16, projection_dim=32,
                  torch_dtype="float32")
    path = tmp_path / "clip_vision_tiny.json"
    path.write_text(json.dumps(config))
    model = comfy.clip_vision.ClipVisionModel(str(path))
    model.model.to(torch.float32)
    model.dtype = torch.float32
    missing, _ = model.load_sd(load_file(files["clip_vision"]))
    assert not [k for k in missing if "position_ids" not in k], missing
    return model


@pytest.mark.parametrize("crop", ["center", "none"])
def test_clip_vision_encode_equals_comfyui(comfy, files, tmp_path, crop):
    import nodes

    from jaxdiff.comfy_nodes import loading

    mine = loading.load_clip_vision(files["clip_vision"], "float32")
    theirs = comfy_clip_vision(comfy, files, tmp_path)
    # 32×32 = the model's size: no resize, so ComfyUI's 8-bit rounding in clip_preprocess is the same
    image = torch.from_numpy(np.random.default_rng(0).random((2, 32, 32, 3), np.float32))
    a = nodes.CLIPVisionEncode().encode(mine, image, crop)[0]
    b = nodes.CLIPVisionEncode().encode(theirs, image, crop)[0]
    for key in ("penultimate_hidden_states", "image_embeds", "last_hidden_state"):
        assert _close(a[key], b[key]) <= TOL, key
    assert a["penultimate_hidden_states"].shape == (2, 5, 1280)


# ----------------------------------------------------------------------------- errors


def test_wrong_family_files_are_refused(comfy, files):
    from jaxdiff.comfy_nodes import loading

    with pytest.raises(ValueError, match=r"umt5\.safetensors .*type 'flux'"):
        loading.load_clip([files["clip_l"], files["umt5"]], "flux", "float32", "")
    with pytest.raises(ValueError, match=r"clip_l\.safetensors .*type 'wan'"):
        loading.load_clip([files["clip_l"]], "wan", "float32", "")
    with pytest.raises(ValueError, match=r"t5xxl\.safetensors .*type 'wan'"):
        loading.load_clip([files["t5xxl"]], "wan", "float32", "")
    with pytest.raises(ValueError, match=r"clip_l\.safetensors.*both"):
        loading.load_clip([files["clip_l"], files["clip_l"]], "flux", "float32", "")
    with pytest.raises(ValueError, match=r"t5xxl\.safetensors.*not a CLIP vision"):
        loading.load_clip_vision(files["t5xxl"])
    with pytest.raises(ValueError, match=r"clip_vision_h\.safetensors .*type 'flux'"):
        loading.load_clip([files["clip_l"], files["clip_vision"]], "flux", "float32", "")


def test_umt5_file_without_its_tokenizer_is_refused(comfy, files):
    from jaxdiff.comfy_nodes import loading

    with pytest.raises(ValueError, match=r"umt5_nospiece\.safetensors: no tokenizer"):
        loading.load_clip([files["umt5_bare"]], "wan", "float32", "")


def test_clip_set_last_layer_is_refused(comfy, flux_pair):
    import nodes

    clip = nodes.CLIPSetLastLayer().set_last_layer(flux_pair[0], -2)[0]
    with pytest.raises(ValueError, match="CLIP Set Last Layer"):
        encode(clip, "a cat")
    encode(flux_pair[0], "a cat")  # the original is untouched
