"""`jaxdiff generate`: the embedded default writes a real PNG; bad inputs fail with clear messages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxdiff import cli
from jaxdiff.families import FLUX
from jaxdiff.pipelines import loading
from jaxdiff.pipelines.flux import FluxPipeline


@pytest.fixture(autouse=True)
def only_generate(monkeypatch):
    """Build the parser with `generate` alone, so these tests do not hinge on other subcommands."""
    monkeypatch.setattr(cli, "COMMANDS", {"generate": cli.COMMANDS["generate"]})


def _read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def test_embedded_default_writes_a_non_constant_png(tmp_path, capsys):
    out = tmp_path / "sub" / "x.png"
    assert cli.main(["generate", "--out", str(out)]) == 0
    pixels = _read_png(out)
    assert pixels.shape == (FLUX.embedded.height, FLUX.embedded.width, 3)
    assert pixels.std() > 1.0
    assert str(out) in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["x.png"]  # no temp file left behind


def test_size_steps_seed_and_bfloat16(tmp_path):
    out = tmp_path / "y.png"
    args = ["generate", "--out", str(out), "--height", "32", "--width", "48", "--steps", "2",
            "--dtype", "bfloat16"]
    assert cli.main(args + ["--seed", "1"]) == 0
    first = _read_png(out)
    assert first.shape == (32, 48, 3)
    assert first.std() > 1.0
    assert cli.main(args + ["--seed", "2"]) == 0
    assert not np.array_equal(first, _read_png(out))


def test_prompt_embeds_from_safetensors_are_used(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    embeds = tmp_path / "embeds.safetensors"
    save_file({"prompt_embeds": rng.standard_normal((1, 5, 32), np.float32),
               "pooled_prompt_embeds": rng.standard_normal((1, 32), np.float32)}, str(embeds))
    out = tmp_path / "z.png"
    assert cli.main(["generate", "--out", str(out), "--prompt-embeds", str(embeds),
                     "--steps", "1"]) == 0
    assert _read_png(out).shape == (64, 64, 3)


def test_prompt_embeds_missing_key_names_it(tmp_path, capsys):
    embeds = tmp_path / "embeds.npz"
    np.savez(embeds, prompt_embeds=np.zeros((1, 4, 32), np.float32))
    out = tmp_path / "never.png"
    assert cli.main(["generate", "--out", str(out), "--prompt-embeds", str(embeds)]) == 2
    err = capsys.readouterr().err
    assert "pooled_prompt_embeds" in err and "found: prompt_embeds" in err
    assert not out.exists()


def test_prompt_embeds_bad_suffix_and_missing_file(tmp_path):
    bad = tmp_path / "embeds.pt"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.safetensors or \.npz"):
        loading.read_conditioning(bad, FluxPipeline)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        loading.read_conditioning(tmp_path / "nope.npz", FluxPipeline)


def test_model_needs_prompt_embeds_and_vae(tmp_path, capsys):
    model = tmp_path / "transformer"
    model.mkdir()
    assert cli.main(["generate", "--model", str(model)]) == 2
    assert "--prompt-embeds" in capsys.readouterr().err
    embeds = tmp_path / "embeds.npz"
    np.savez(embeds, prompt_embeds=np.zeros((1, 4, 32), np.float32),
             pooled_prompt_embeds=np.zeros((1, 32), np.float32))
    assert cli.main(["generate", "--model", str(model), "--prompt-embeds", str(embeds)]) == 2
    assert "--vae" in capsys.readouterr().err


def test_bad_size_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["generate", "--out", str(tmp_path / "w.png"), "--height", "40"]) == 2
    assert "multiples of 16" in capsys.readouterr().err


def test_importing_the_subcommand_does_not_import_jax():
    code = ("import sys; import jaxdiff.pipelines.cli; "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_jaxdiff_help_imports_neither_jax_nor_torch():
    """Every subcommand's arguments (generate, convert, verify, bench, plan) without jax: `--help` stays fast."""
    code = ("import sys; from jaxdiff.cli import build_parser; build_parser(); "
            "assert 'jax' not in sys.modules and 'torch' not in sys.modules, "
            "[m for m in ('jax', 'torch') if m in sys.modules]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_save_images_names_a_batch_and_rounds_like_diffusers(tmp_path):
    from jaxdiff.pipelines.image_io import save_images

    images = np.zeros((2, 4, 6, 3), np.float32)
    images[0, 0, 0] = [0.5, 1.2, -0.1]  # 127.5 → 128 (half to even), clipped high and low
    paths = save_images(images, tmp_path / "batch.png")
    assert [p.name for p in paths] == ["batch_0.png", "batch_1.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch_0.png", "batch_1.png"]
    pixels = _read_png(paths[0])
    assert pixels.shape == (4, 6, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[0, 0], [128, 255, 0])


def test_save_images_rejects_nan_and_bad_shapes(tmp_path):
    from jaxdiff.pipelines.image_io import save_images

    with pytest.raises(ValueError, match="NaN"):
        save_images(np.full((1, 4, 4, 3), np.nan, np.float32), tmp_path / "nan.png")
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        save_images(np.zeros((4, 4, 3), np.float32), tmp_path / "bad.png")
    assert list(tmp_path.iterdir()) == []
