"""`jaxdiff generate --prompt`: a prompt string becomes a PNG (Flux) or an MP4 (Wan T2V and I2V) through
our JAX text (and image) encoders, from tiny files in ComfyUI's layouts; the embeddings equal
diffusers' `encode_prompt` on transformers' modules (fp32, ≤1e-5); a repeated prompt comes from the
embedding cache; wrong or incomplete encoders fail before any compute with the file named."""

from __future__ import annotations

import numpy as np
import pytest

from comfy_server import (write_tiny_flux, write_tiny_flux_vae, write_tiny_wan, write_tiny_wan_vae)
from text_fixtures import (clip_tokenizer_dir, spiece_proto, t5_tokenizer_dir, tiny_clip_text, tiny_t5,
                           write_clip_l, write_clip_vision_h, write_t5xxl, write_umt5)
from jaxdiff import cli
from jaxdiff.families import FLUX, WAN
from jaxdiff.pipelines import text
from jaxdiff.pipelines.video_io import read_video

TOL = 1e-5  # fp32 max abs difference against diffusers' encode_prompt
PROMPT = "an astronaut riding a horse on the moon, (red:1.2) sky"


@pytest.fixture(autouse=True)
def only_generate(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"generate": cli.COMMANDS["generate"]})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("prompt")
    return dict(
        flux=write_tiny_flux(d / "flux.safetensors"), ae=write_tiny_flux_vae(d / "ae.safetensors"),
        clip=write_clip_l(d / "clip_l.safetensors"), t5=write_t5xxl(d / "t5xxl_fp16.safetensors"),
        umt5=write_umt5(d / "umt5_xxl_fp16.safetensors"), wan=write_tiny_wan(d / "wan.safetensors"),
        wan_vae=write_tiny_wan_vae(d / "wan_2.1_vae.safetensors"),
        wan_i2v=write_tiny_wan(d / "wan_i2v.safetensors", "i2v"),
        clip_vision=write_clip_vision_h(d / "clip_vision_h.safetensors"))


def _flux(files, out, *extra, cache="off") -> list[str]:
    return ["generate", "--model", str(files["flux"]), "--vae", str(files["ae"]), "--height", "64", "--width", "64",
            "--steps", "2", "--out", str(out), "--prompt", PROMPT, "--text-encoder", str(files["clip"]),
            "--tokenizer", str(clip_tokenizer_dir()), "--text-encoder-2", str(files["t5"]),
            "--tokenizer-2", str(t5_tokenizer_dir()), "--embedding-cache", str(cache), *extra]


def _wan(files, out, *extra, model="wan") -> list[str]:
    return ["generate", "--model", str(files[model]), "--vae", str(files["wan_vae"]), "--height", "32",
            "--width", "32", "--frames", "5", "--steps", "2", "--out", str(out), "--prompt", PROMPT,
            "--text-encoder", str(files["umt5"]), "--embedding-cache", "off", *extra]


# ----------------------------------------------------------------------------- prompt → file


def test_flux_prompt_writes_a_png_and_a_repeat_comes_from_the_embedding_cache(files, tmp_path, capsys):
    from PIL import Image

    cache = tmp_path / "cache"
    assert cli.main(_flux(files, tmp_path / "a.png", cache=cache)) == 0
    assert "2 of 2 encodings computed" in capsys.readouterr().err
    assert len(list(cache.glob("*.npy"))) == 2
    assert cli.main(_flux(files, tmp_path / "b.png", cache=cache)) == 0
    assert "0 of 2 encodings computed" in capsys.readouterr().err
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert a.shape == (64, 64, 3) and a.std() > 0
    np.testing.assert_array_equal(a, b)


def test_wan_prompt_writes_an_mp4(files, tmp_path):
    out = tmp_path / "v.mp4"
    assert cli.main(_wan(files, out, "--negative-prompt", "blurry")) == 0
    frames = read_video(out)
    assert frames.shape == (5, 32, 32, 3) and frames.std() > 0


def test_wan_image_to_video_prompt_goes_through_the_jax_image_encoder(files, tmp_path):
    from PIL import Image

    image = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8)).save(image)
    out = tmp_path / "i2v.mp4"
    assert cli.main(_wan(files, out, "--image", str(image), "--image-encoder", str(files["clip_vision"]),
                         model="wan_i2v")) == 0
    assert read_video(out).shape == (5, 32, 32, 3)


def test_offloading_frees_the_encoders_and_gives_the_same_picture(files, tmp_path):
    from PIL import Image

    assert cli.main(_flux(files, tmp_path / "kept.png", "--no-offload-text-encoder")) == 0
    assert cli.main(_flux(files, tmp_path / "freed.png", "--offload-text-encoder")) == 0
    kept, freed = (np.asarray(Image.open(tmp_path / n)) for n in ("kept.png", "freed.png"))
    np.testing.assert_array_equal(kept, freed)


# ----------------------------------------------------------------------------- parity with diffusers


def test_flux_prompt_embeddings_equal_diffusers_encode_prompt(tmp_path):
    from diffusers import FluxPipeline
    from transformers import CLIPTokenizer, T5TokenizerFast

    clip_model, t5_model = tiny_clip_text(seed=3), tiny_t5(seed=4)
    clip_file, t5_file = tmp_path / "clip_l.safetensors", tmp_path / "t5.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in clip_model.state_dict().items()}, str(clip_file))
    save_file({k: v.contiguous() for k, v in t5_model.state_dict().items()
               if k != "encoder.embed_tokens.weight"}, str(t5_file))
    pipe = FluxPipeline(scheduler=None, vae=None, transformer=None, text_encoder=clip_model,
                        tokenizer=CLIPTokenizer.from_pretrained(clip_tokenizer_dir(), model_max_length=77),
                        text_encoder_2=t5_model, tokenizer_2=T5TokenizerFast.from_pretrained(t5_tokenizer_dir()))
    prompts = [PROMPT, "", "東京 の 猫 🐈 " * 60]
    want_embeds, want_pooled, _ = pipe.encode_prompt(prompts, None, max_sequence_length=256)
    encoders = [text.load_text_encoder(clip_file, tokenizer=clip_tokenizer_dir()),
                text.load_text_encoder(t5_file, tokenizer=t5_tokenizer_dir())]
    config = FLUX.transformer.classes()[0].from_dict(dict(joint_attention_dim=32, pooled_projection_dim=64,
                                                          guidance_embeds=False))
    got = text.encode_prompts(config, encoders, prompts)
    assert got["prompt_embeds"].shape == (3, 256, 32)
    assert np.abs(got["prompt_embeds"] - want_embeds.detach().numpy()).max() <= TOL
    assert np.abs(got["pooled_prompt_embeds"] - want_pooled.detach().numpy()).max() <= TOL


def test_wan_prompt_embeddings_equal_diffusers_encode_prompt(tmp_path):
    from diffusers import WanPipeline
    from safetensors.torch import save_file
    from transformers import T5Tokenizer

    model = tiny_t5(seed=5, umt5=True)
    spiece = tmp_path / "spiece.model"
    spiece.write_bytes(spiece_proto())
    path = tmp_path / "umt5.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"},
              str(path))
    pipe = WanPipeline(tokenizer=T5Tokenizer.from_pretrained(tmp_path, extra_ids=0), text_encoder=model,
                       vae=None, scheduler=None, transformer=None)
    prompts = [PROMPT, "a &amp; b   spaced"]
    want, want_negative = pipe.encode_prompt(prompts, "blurry, low quality", do_classifier_free_guidance=True,
                                             max_sequence_length=512)
    encoder = text.load_text_encoder(path, tokenizer=spiece)
    config = WAN.transformer.classes()[0].from_dict(dict(text_dim=32))
    got = text.encode_prompts(config, [encoder], prompts, "blurry, low quality")
    assert np.abs(got["prompt_embeds"] - want.detach().numpy()).max() <= TOL
    assert np.abs(got["negative_prompt_embeds"] - want_negative.detach().numpy()).max() <= TOL
    assert not got["prompt_embeds"][:, 40:].any()  # padded positions are zero, as diffusers pads them


# ----------------------------------------------------------------------------- errors before compute


def _error(capsys, args) -> str:
    assert cli.main(args) == 2
    return capsys.readouterr().err


def test_an_encoder_of_the_wrong_family_is_refused_naming_the_file(files, tmp_path, capsys):
    args = _flux(files, tmp_path / "x.png")
    args[args.index("--text-encoder-2") + 1] = str(files["umt5"])
    err = _error(capsys, args)
    assert "umt5_xxl_fp16.safetensors" in err and "flux" in err
    assert not (tmp_path / "x.png").exists()


def test_a_missing_tokenizer_names_the_flag(files, tmp_path, capsys):
    args = _flux(files, tmp_path / "x.png")
    i = args.index("--tokenizer")
    del args[i:i + 2]
    err = _error(capsys, args)
    assert "clip_l.safetensors" in err and "--tokenizer" in err


def test_a_tokenizer_larger_than_the_embedding_is_refused(files, tmp_path, capsys):
    err = _error(capsys, _wan(files, tmp_path / "x.mp4", "--tokenizer", str(t5_tokenizer_dir())))
    assert "umt5_xxl_fp16.safetensors" in err and "rows" in err


def test_flux_takes_its_two_encoders_in_either_order(files, tmp_path):
    args = _flux(files, tmp_path / "x.png")
    for a, b in (("--text-encoder", "--text-encoder-2"), ("--tokenizer", "--tokenizer-2")):
        i, j = args.index(a) + 1, args.index(b) + 1
        args[i], args[j] = args[j], args[i]
    assert cli.main(args) == 0


def test_an_encoder_whose_width_does_not_fit_the_transformer_is_refused(files, tmp_path, capsys):
    # the embedded tiny Wan takes 16-wide text; the tiny UMT5 is 32 wide
    err = _error(capsys, ["generate", "--family", "wan", "--prompt", "a cat", "--text-encoder", str(files["umt5"]),
                          "--out", str(tmp_path / "z.mp4")])
    assert "umt5_xxl_fp16.safetensors" in err and "text_dim is 16" in err


def test_a_text_encoder_of_another_family_is_refused(files, tmp_path, capsys):
    err = _error(capsys, ["generate", "--family", "wan", "--prompt", "a cat", "--text-encoder", str(files["clip"]),
                          "--tokenizer", str(clip_tokenizer_dir()), "--out", str(tmp_path / "z.mp4")])
    assert "clip_l.safetensors" in err and "wan" in err


def test_prompt_flags_without_prompt_are_refused(capsys, tmp_path):
    err = _error(capsys, ["generate", "--text-encoder", "x.safetensors", "--out", str(tmp_path / "a.png")])
    assert "--text-encoder needs --prompt" in err
    err = _error(capsys, ["generate", "--prompt", "a cat", "--prompt-embeds", "e.npz"])
    assert "not both" in err


def test_a_converted_umt5_keeps_its_tokenizer_and_encodes_the_same(files, tmp_path):
    from jaxdiff.convert import convert

    out = convert(files["umt5"], tmp_path / "umt5_converted")
    assert (out / "spiece.model").is_file()
    a = text.load_text_encoder(files["umt5"])([PROMPT], 512)
    b = text.load_text_encoder(out)([PROMPT], 512)
    np.testing.assert_array_equal(a, b)


def test_a_pipeline_dir_brings_its_own_text_encoders_and_tokenizers(files, tmp_path):
    import json
    import shutil

    from text_fixtures import write_transformers_dir
    from jaxdiff.convert import convert

    root = tmp_path / "FLUX.1-tiny"
    convert(files["flux"], root / "transformer")
    convert(files["ae"], root / "vae")
    write_transformers_dir(tiny_clip_text(seed=0), root / "text_encoder")
    write_transformers_dir(tiny_t5(seed=0), root / "text_encoder_2")
    shutil.copytree(clip_tokenizer_dir(), root / "tokenizer")
    shutil.copytree(t5_tokenizer_dir(), root / "tokenizer_2")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    out = tmp_path / "p.png"
    assert cli.main(["generate", "--model", str(root), "--prompt", PROMPT, "--height", "64", "--width", "64",
                     "--steps", "2", "--out", str(out), "--embedding-cache", "off"]) == 0
    assert out.is_file()


def test_an_offloaded_encoder_deletes_its_device_arrays_right_after_encoding(files):
    import jax
    from flax import nnx

    encoder = text.LazyTextEncoder(files["umt5"], offload=True)
    loaded = []
    real_load = encoder._load
    encoder._load = lambda: loaded.append(real_load()) or loaded[-1]
    first = encoder([PROMPT], 512)
    assert encoder.encoded == 1 and encoder._encoder is None
    leaves = jax.tree.leaves(nnx.state(loaded[0].model))
    assert leaves and all(leaf.is_deleted() for leaf in leaves)
    np.testing.assert_array_equal(encoder([PROMPT], 512), first)  # loads again when needed
