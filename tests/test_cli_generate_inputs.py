"""`jaxdiff generate` refuses bad values before anything is built, and starts from an image or a video."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxdiff import cli
from jaxdiff.families import FLUX, WAN
from jaxdiff.pipelines.video_io import read_video, save_video


def _fails_before_any_model(capsys, *args) -> str:
    """Exit 2 with one error line; no model was built, no progress bar drawn."""
    assert cli.main(["generate", *args]) == 2
    err = capsys.readouterr().err
    assert "embedded tiny" not in err and "denoising" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("jaxdiff generate: error: "), err
    return lines[0]


@pytest.mark.parametrize("args, flag", [
    (["--steps", "0"], "--steps"), (["--steps", "-2"], "--steps"),
    (["--height", "0", "--width", "0"], "--height"), (["--width", "-16"], "--width"),
    (["--family", "wan", "--frames", "0"], "--frames"), (["--family", "wan", "--fps", "0"], "--fps"),
    (["--family", "wan", "--fps", "-1"], "--fps"),
])
def test_zero_and_negative_values_name_the_flag(capsys, tmp_path, args, flag):
    line = _fails_before_any_model(capsys, *args, "--out", str(tmp_path / "never.mp4"))
    assert f"{flag} must be positive" in line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--height", "40"], "multiples of 16"),
    (["--family", "wan", "--steps", "3", "--init-video", "VIDEO", "--denoise", "0.1"], "non-empty range"),
    (["--denoise", "0.5"], "--denoise needs --init-image"),
    (["--init-image", "IMAGE", "--denoise", "1.5"], "--denoise must be in (0, 1]"),
    (["--family", "wan", "--init-image", "IMAGE"], "--init-image only apply to --family flux"),
    (["--init-video", "x.mp4"], "--init-video only apply to --family wan"),
])
def test_size_step_and_start_checks_run_before_the_model_is_built(capsys, tmp_path, args, message):
    image, video = tmp_path / "start.png", tmp_path / "start.webp"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    save_video(np.zeros((9, 64, 64, 3), np.float32), video, fps=8)
    args = [{"IMAGE": str(image), "VIDEO": str(video)}.get(a, a) for a in args]
    out = tmp_path / ("never.mp4" if "wan" in args else "never.png")
    assert message in _fails_before_any_model(capsys, *args, "--out", str(out))


def test_prompt_says_what_is_needed(capsys, tmp_path):
    line = _fails_before_any_model(capsys, "--prompt", "a cat", "--out", str(tmp_path / "x.png"))
    assert "--prompt needs text encoders" in line and "--text-encoder" in line


def test_prompt_embeds_of_the_wrong_width_fail_before_the_model_is_built(capsys, tmp_path):
    embeds = tmp_path / "e.npz"
    np.savez(embeds, prompt_embeds=np.zeros((1, 4, 7), np.float32),
             pooled_prompt_embeds=np.zeros((1, 32), np.float32))
    line = _fails_before_any_model(capsys, "--prompt-embeds", str(embeds), "--out", str(tmp_path / "x.png"))
    assert "prompt_embeds must be [B, S_txt, 32]" in line


def test_flux_image_to_image_from_the_command_line(tmp_path):
    image = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), np.uint8)).save(image)
    out = tmp_path / "img2img.png"
    assert cli.main(["generate", "--init-image", str(image), "--denoise", "0.5", "--steps", "4",
                     "--out", str(out)]) == 0
    with Image.open(out) as result:  # embedded: the embedded size; the image is resized to it
        assert result.size == (FLUX.embedded.width, FLUX.embedded.height)


def test_wan_video_to_video_from_the_command_line(tmp_path, capsys):
    frames = np.random.default_rng(1).integers(0, 256, (11, 40, 48, 3), np.uint8)
    video = tmp_path / "start.webp"
    save_video(frames.astype(np.float32) / 255, video, fps=8, lossless=True)
    out = tmp_path / "v2v.mp4"
    assert cli.main(["generate", "--family", "wan", "--init-video", str(video), "--steps", "4",
                     "--out", str(out)]) == 0
    assert "using the first 9 (4k + 1)" in capsys.readouterr().err
    assert read_video(out).shape == (9, WAN.embedded.height, WAN.embedded.width, 3)
