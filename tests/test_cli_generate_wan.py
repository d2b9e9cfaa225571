"""`jaxdiff generate --family wan`: the embedded tiny Wan writes a playable MP4 / animated WebP with the
right frame count; `--model` resolves a diffusers pipeline dir; bad inputs fail before any compute."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import jaxdiff
from jaxdiff import cli
from jaxdiff.families import WAN
from jaxdiff.pipelines import loading
from jaxdiff.pipelines.wan import WanPipeline
from jaxdiff.pipelines.video_io import read_video, save_video, save_videos

SIDE = WAN.embedded.height
FRAMES = WAN.embedded.frames


@pytest.fixture(autouse=True)
def only_generate(monkeypatch):
    """Build the parser with `generate` alone, so these tests do not hinge on other subcommands."""
    monkeypatch.setattr(cli, "COMMANDS", {"generate": cli.COMMANDS["generate"]})


def _wan(out, *extra) -> int:
    return cli.main(["generate", "--family", "wan", "--out", str(out), *extra])


def _embeds_file(path, *, negative: bool = True, text_dim: int = 16):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    arrays = {"prompt_embeds": rng.standard_normal((1, 6, text_dim), np.float32)}
    if negative:
        arrays["negative_prompt_embeds"] = rng.standard_normal((1, 6, text_dim), np.float32)
    save_file(arrays, str(path))
    return path


# ----------------------------------------------------------------------------- embedded default


def test_embedded_wan_writes_a_decodable_mp4(tmp_path, capsys):
    out = tmp_path / "sub" / "v.mp4"
    assert _wan(out, "--steps", "2") == 0
    frames = read_video(out)
    assert frames.shape == (FRAMES, SIDE, SIDE, 3)
    assert frames.std() > 1.0
    assert str(out) in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["v.mp4"]  # no temp file left behind
    import av

    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "h264"


def test_embedded_wan_writes_an_animated_webp(tmp_path):
    out = tmp_path / "v.webp"
    assert _wan(out, "--steps", "1", "--seed", "3") == 0
    with Image.open(out) as image:
        assert image.format == "WEBP" and image.n_frames == FRAMES
    assert read_video(out).shape == (FRAMES, SIDE, SIDE, 3)


def test_embedded_wan_image_to_video(tmp_path):
    image = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), np.uint8)).save(image)
    out = tmp_path / "i2v.mp4"
    assert _wan(out, "--image", str(image), "--steps", "1", "--frames", "5") == 0
    assert read_video(out).shape == (5, SIDE, SIDE, 3)


# ----------------------------------------------------------------------------- errors before compute


@pytest.mark.parametrize("args, message", [
    (["--frames", "8"], "4k + 1"),
    (["--height", "40"], "multiples of 16"),
    (["--guidance-2", "2"], "guidance_scale_2"),
])
def test_bad_wan_inputs_are_clear_errors(tmp_path, capsys, args, message):
    out = tmp_path / "never.mp4"
    assert _wan(out, "--steps", "1", *args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unknown_video_extension_is_an_error(tmp_path, capsys):
    assert _wan(tmp_path / "v.png") == 2
    assert "unsupported video extension" in capsys.readouterr().err


def test_wan_only_options_are_rejected_for_flux(tmp_path, capsys):
    assert cli.main(["generate", "--out", str(tmp_path / "x.png"), "--frames", "9"]) == 2
    assert "--frames only apply to --family wan" in capsys.readouterr().err


def test_guidance_without_negative_embeds_is_an_error(tmp_path, capsys):
    embeds = _embeds_file(tmp_path / "e.safetensors", negative=False)
    out = tmp_path / "never.mp4"
    assert _wan(out, "--prompt-embeds", str(embeds), "--steps", "1") == 2
    assert "negative_prompt_embeds" in capsys.readouterr().err
    assert not out.exists()


def test_wan_embeds_need_prompt_embeds_key(tmp_path):
    embeds = tmp_path / "e.npz"
    np.savez(embeds, negative_prompt_embeds=np.zeros((1, 4, 16), np.float32))
    with pytest.raises(ValueError, match="lacks key prompt_embeds"):
        loading.read_conditioning(embeds, WanPipeline)


def test_model_needs_prompt_embeds(tmp_path, capsys):
    model = tmp_path / "transformer"
    model.mkdir()
    assert _wan(tmp_path / "v.mp4", "--model", str(model)) == 2
    assert "--prompt-embeds" in capsys.readouterr().err


# ----------------------------------------------------------------------------- --model pipeline dir


def test_model_pipeline_dir_loads_both_experts_vae_and_scheduler(tmp_path, monkeypatch):
    """A diffusers Wan 2.2 A14B-style dir: transformer/, transformer_2/, vae/, scheduler/ and
    model_index.json (boundary_ratio). `load_model` is stubbed with the embedded tiny models."""
    root = tmp_path / "Wan2.2-T2V-A14B-Diffusers"
    for name in ("transformer", "transformer_2", "vae", "scheduler"):
        (root / name).mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"boundary_ratio": 0.875}))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
         "use_flow_sigmas": True, "flow_shift": 12.0}))
    transformer, vae = loading.embedded_models("wan")
    transformer_2, _ = loading.embedded_models("wan")
    loaded = []

    def fake_load_model(path, *, dtype=None, **kw):
        loaded.append(path.name)
        return {"transformer": transformer, "transformer_2": transformer_2, "vae": vae}[path.name]

    monkeypatch.setattr(jaxdiff, "load_model", fake_load_model)
    embeds = _embeds_file(tmp_path / "e.safetensors")
    out = tmp_path / "a14b.mp4"
    assert _wan(out, "--model", str(root), "--prompt-embeds", str(embeds), "--height", str(SIDE),
                "--width", str(SIDE), "--frames", str(FRAMES), "--steps", "2",
                "--guidance-2", "3") == 0
    assert loaded == ["transformer", "transformer_2", "vae"]
    assert read_video(out).shape == (FRAMES, SIDE, SIDE, 3)


@pytest.fixture(scope="module")
def saved_a14b(tmp_path_factory):
    """A tiny two-expert diffusers WanPipeline saved with `save_pretrained` (text encoder absent),
    and its 2-step output (timesteps 999 → high-noise expert, 750 → low-noise expert)."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    from test_pipeline_wan import TINY_VAE_21, UNIPC, _randomize_vae_
    from wan_fixtures import tiny_torch_wan, tiny_wan_config

    experts = [tiny_torch_wan(seed, **tiny_wan_config(in_channels=16, out_channels=16))
               for seed in (0, 5)]
    pipe = WanPipeline(tokenizer=None, text_encoder=None, scheduler=UniPCMultistepScheduler(**UNIPC),
                       vae=_randomize_vae_(AutoencoderKLWan(**TINY_VAE_21)), transformer=experts[0],
                       transformer_2=experts[1], boundary_ratio=0.875)
    pipe.set_progress_bar_config(disable=True)
    root = tmp_path_factory.mktemp("wan") / "Wan-tiny-A14B"
    pipe.save_pretrained(root)
    rng = np.random.default_rng(0)
    prompt, negative = (rng.standard_normal((1, 6, 16), np.float32) for _ in range(2))
    latents = rng.standard_normal((1, 16, 2, 4, 6), np.float32)
    kw = dict(height=32, width=48, num_frames=5, num_inference_steps=2, guidance_scale=5.0,
              guidance_scale_2=3.0)
    with torch.no_grad():
        frames = pipe(prompt_embeds=torch.from_numpy(prompt), output_type="np",
                      negative_prompt_embeds=torch.from_numpy(negative),
                      latents=torch.from_numpy(latents), **kw).frames
    return root, dict(prompt=prompt, negative=negative, latents=latents, kw=kw, frames=frames)


def test_saved_diffusers_pipeline_loads_and_matches_diffusers(saved_a14b):
    from jaxdiff.pipelines.wan import WanPipeline
    from jaxdiff.schedulers.unipc import UniPCConfig

    root, ref = saved_a14b
    pipe = WanPipeline(jaxdiff.load_model(root / "transformer"), jaxdiff.load_model(root / "vae"),
                       UniPCConfig.from_json(root / "scheduler"),
                       transformer_2=jaxdiff.load_model(root / "transformer_2"),
                       boundary_ratio=json.loads((root / "model_index.json").read_text())[
                           "boundary_ratio"])
    ours = pipe(ref["prompt"], ref["negative"], latents=ref["latents"], **ref["kw"])
    assert np.abs(ours.frames - ref["frames"]).max() <= 1e-5


def test_generate_runs_a_saved_diffusers_pipeline_dir(saved_a14b, tmp_path):
    from safetensors.numpy import save_file

    root, ref = saved_a14b
    embeds = tmp_path / "e.safetensors"
    save_file({"prompt_embeds": ref["prompt"], "negative_prompt_embeds": ref["negative"]},
              str(embeds))
    out = tmp_path / "a14b.webp"
    assert _wan(out, "--model", str(root), "--prompt-embeds", str(embeds), "--height", "32",
                "--width", "48", "--frames", "5", "--steps", "2") == 0
    assert read_video(out).shape == (5, 32, 48, 3)


def test_wan_scheduler_from_config_and_sampler_override(tmp_path):
    from jaxdiff.schedulers.flow_match import FlowMatchEulerConfig
    from jaxdiff.schedulers.unipc import WAN_SCHEDULER_CONFIG, UniPCConfig

    config = tmp_path / "scheduler_config.json"
    config.write_text(json.dumps({"_class_name": "UniPCMultistepScheduler", "flow_shift": 5.0,
                                  "prediction_type": "flow_prediction", "use_flow_sigmas": True}))
    unipc = loading.scheduler_config(tmp_path, WAN_SCHEDULER_CONFIG)
    assert isinstance(unipc, UniPCConfig) and unipc.flow_shift == 5.0
    euler = loading.scheduler_config(config, WAN_SCHEDULER_CONFIG, "euler")
    assert isinstance(euler, FlowMatchEulerConfig) and euler.shift == 5.0
    config.write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    with pytest.raises(ValueError, match="DDIMScheduler"):
        loading.scheduler_config(config, WAN_SCHEDULER_CONFIG)


# ----------------------------------------------------------------------------- video_io


@pytest.mark.parametrize("suffix", [".mp4", ".webp"])
def test_video_round_trip_keeps_frames_and_pixels(tmp_path, suffix):
    blocks = np.random.default_rng(1).random((5, 4, 6, 3))  # 8×8 blocks: codec-friendly content
    frames = np.repeat(np.repeat(blocks, 8, axis=1), 8, axis=2).astype(np.float32)
    path = save_video(frames, tmp_path / f"clip{suffix}", fps=24)
    back = read_video(path)
    assert back.shape == (5, 32, 48, 3) and back.dtype == np.uint8
    assert np.abs(back / 255.0 - frames).mean() < 0.05


def test_lossless_webp_is_exact(tmp_path):
    frames = np.random.default_rng(2).random((3, 8, 8, 3)).astype(np.float32)
    back = read_video(save_video(frames, tmp_path / "x.webp", lossless=True))
    np.testing.assert_array_equal(back, (frames * 255).round().astype(np.uint8))


def test_save_videos_names_a_batch_and_rejects_bad_input(tmp_path):
    videos = np.random.default_rng(3).random((2, 3, 16, 16, 3)).astype(np.float32)
    paths = save_videos(videos, tmp_path / "b.mp4")
    assert [p.name for p in paths] == ["b_0.mp4", "b_1.mp4"]
    with pytest.raises(ValueError, match="NaN"):
        save_video(np.full((2, 8, 8, 3), np.nan, np.float32), tmp_path / "nan.mp4")
    with pytest.raises(ValueError, match="even"):
        save_video(np.zeros((2, 9, 8, 3), np.float32), tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        save_video(np.zeros((8, 8, 3), np.float32), tmp_path / "bad.webp")
    with pytest.raises(ValueError, match="unsupported video extension"):
        save_videos(videos, tmp_path / "b.gif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b_0.mp4", "b_1.mp4"]
