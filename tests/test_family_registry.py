"""A new family is one registry row: a throw-away toy family registered at run time is detected,
loaded, converted and generated with, through the same loader and `jaxdiff generate` as Flux and Wan."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

import jaxdiff
from jaxdiff import cli, families
from jaxdiff.convert import convert
from jaxdiff.pipelines import loading

from toy_family import TOY, ToyConfig, ToyTransformer


@pytest.fixture
def toy():
    families.register(TOY)
    yield TOY
    families.unregister(TOY.name)


def _torch_layout(module) -> dict[str, np.ndarray]:
    """Our parameters under diffusers' names and layouts (Linear kernel [in, out] → weight [out, in])."""
    from flax import nnx

    out = {}
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        value = np.asarray(var.get_value())
        *head, leaf = (str(p) for p in path)
        out[".".join(head + ["weight" if leaf == "kernel" else leaf])] = np.ascontiguousarray(value.T if leaf == "kernel" else value)
    return out


@pytest.fixture
def toy_dirs(toy, tmp_path):
    """A diffusers-layout toy transformer dir and a diffusers AutoencoderKL dir (the embedded sizes)."""
    import torch
    from diffusers import AutoencoderKL

    model = loading.build_random(ToyConfig(), seed=3)
    transformer = tmp_path / "toy-transformer"
    transformer.mkdir()
    (transformer / "config.json").write_text(json.dumps({"_class_name": "ToyTransformer2DModel",
                                                         **ToyConfig().to_dict()}))
    save_file(_torch_layout(model), str(transformer / "diffusion_pytorch_model.safetensors"))
    torch.manual_seed(0)
    vae = tmp_path / "vae"
    AutoencoderKL(**TOY.embedded.vae).save_pretrained(vae)
    return model, transformer, vae


def test_registered_family_appears_in_generate_help(toy, capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    assert "--family {flux,wan,toy}" in capsys.readouterr().out


def test_registering_a_taken_name_is_an_error(toy):
    with pytest.raises(ValueError, match="already registered"):
        families.register(TOY)


def test_load_detects_and_fills_the_toy_model(toy_dirs):
    model, transformer, _ = toy_dirs
    loaded = jaxdiff.load_model(transformer)
    assert isinstance(loaded, ToyTransformer)
    np.testing.assert_array_equal(np.asarray(loaded.proj_out.kernel[...]), np.asarray(model.proj_out.kernel[...]))


def test_convert_and_restore_the_toy_model(toy_dirs, tmp_path):
    model, transformer, _ = toy_dirs
    out = convert(transformer, tmp_path / "converted")
    assert json.loads((out / "jaxdiff.json").read_text())["family"] == "toy"
    restored = jaxdiff.load_model(out)
    np.testing.assert_array_equal(np.asarray(restored.x_embedder.kernel[...]),
                                  np.asarray(model.x_embedder.kernel[...]))


def test_generate_runs_the_embedded_toy_default(toy, tmp_path):
    out = tmp_path / "toy.png"
    assert cli.main(["generate", "--family", "toy", "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.size == (TOY.embedded.width, TOY.embedded.height)


def test_generate_loads_the_toy_model_and_detects_its_family(toy_dirs, tmp_path, capsys):
    _, transformer, vae = toy_dirs
    rng = np.random.default_rng(0)
    embeds = tmp_path / "e.npz"
    np.savez(embeds, prompt_embeds=rng.standard_normal((1, 4, 16), np.float32),
             pooled_prompt_embeds=rng.standard_normal((1, 16), np.float32))
    image = tmp_path / "start.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(image)
    out = tmp_path / "toy.png"
    # no --family: the toy kind is read from config.json, so its family's pipeline runs
    assert cli.main(["generate", "--model", str(transformer), "--vae", str(vae), "--prompt-embeds",
                     str(embeds), "--steps", "2", "--init-image", str(image), "--denoise", "0.5",
                     "--out", str(out)]) == 0
    with Image.open(out) as result:
        assert result.size == (32, 32)  # the --init-image's size
    pipe = loading.load_pipeline(transformer, vae=vae)
    assert isinstance(pipe.transformer, ToyTransformer) and pipe.output == "image"


def test_unregistered_kind_is_named_with_what_is_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "ToyTransformer2DModel"}))
    with pytest.raises(ValueError, match="unsupported model class 'ToyTransformer2DModel'.*FluxTransformer2DModel"):
        jaxdiff.load_model(tmp_path)


def test_families_import_without_jax():
    code = "import sys; import jaxdiff.families; assert 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
