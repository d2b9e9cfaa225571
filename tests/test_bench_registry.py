"""`jaxdiff bench` is generic over the family registry: the timed step is the pipeline's own
(`step_program`), its sizes feed the row's FLOP count and example inputs, and a family registered at
run time is benched from its row alone."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from jaxdiff import families
from jaxdiff.benchmarks import flops, run as bench
from jaxdiff.pipelines import loading

TINY_WAN_I2V = ["--model", "wan2.1-i2v-14b", "--shape", "reduced", "--layers", "1", "--heads", "2",
                "--height", "64", "--width", "64", "--frames", "5", "--text-tokens", "8", "--repeats", "1",
                "--steps", "2", "--quiet"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def run_step(pipe, program):
    with bench.trace_context(pipe):
        return program.raw(program.step(*program.args))


def test_flux_step_program_is_the_first_step_of_sample():
    pipe = loading.embedded_pipeline("flux")
    program = pipe.step_program(1, 64, 64, None, 8, 3, seed=5)
    assert program.step is pipe.denoise_step
    expected = pipe.sample(None, **pipe.random_conditioning(5, 8), noise=pipe.prepare_latents(1, 64, 64, 5),
                           num_inference_steps=3, end_step=1)
    np.testing.assert_array_equal(np.asarray(run_step(pipe, program)), np.asarray(expected))


def test_wan_step_program_is_the_first_step_of_sample_with_cfg():
    pipe = loading.embedded_pipeline("wan")
    program = pipe.step_program(1, 64, 64, 9, 8, 3, seed=5, guidance_scale=5.0)
    assert program.step is pipe.denoise_steps[0] and "CFG" in program.what
    expected = pipe.sample(None, **pipe.random_conditioning(5, 8), noise=pipe.prepare_latents(1, 64, 64, 9, 5),
                           num_inference_steps=3, end_step=1, guidance_scale=5.0)
    np.testing.assert_array_equal(np.asarray(run_step(pipe, program)), np.asarray(expected))


def test_wan_image_to_video_step_program_stands_in_zero_image_latents():
    pipe = loading.embedded_pipeline("wan", image_to_video=True)
    program = pipe.step_program(1, 64, 64, 9, 8, 3, guidance_scale=1.0)
    condition = program.args[7]  # [mask (4), image latents (16)] on channels
    assert condition.shape == (1, 20, 3, 8, 8)
    assert float(np.abs(np.asarray(condition[:, 4:])).max()) == 0.0
    assert program.sizes.batch == 1 and "CFG" not in program.what
    assert np.isfinite(np.asarray(run_step(pipe, program))).all()


@pytest.mark.parametrize("family, request_sizes, tokens", [("flux", (1, 64, 64, None), 16),
                                                         ("wan", (1, 64, 64, 9), 3 * 4 * 4)])
def test_step_sizes_are_what_example_inputs_and_the_flop_count_take(family, request_sizes, tokens):
    row = families.get_family(family)
    pipe = loading.embedded_pipeline(row)
    config = pipe.transformer.config
    program = pipe.step_program(*request_sizes, 8, 3, guidance_scale=pipe.defaults()["guidance"])
    inputs = families.call(row.transformer.example_inputs, config, program.sizes)
    latents = program.args[1]
    passes = 2 if "CFG" in program.what else 1
    assert inputs["hidden_states"].shape == (passes * latents.shape[0], *latents.shape[1:])
    counted = families.call(row.flops, config, program.sizes)
    forward = flops.flux_forward if family == "flux" else flops.wan_forward
    tokens_arg = "image_tokens" if family == "flux" else "video_tokens"
    assert counted == forward(config, batch=passes, text_tokens=8, **{tokens_arg: tokens})


def _token_count(config, sizes) -> dict[str, int]:
    return {"tokens": sizes.batch * sizes.height * sizes.width * sizes.text_tokens}


@pytest.fixture
def fluxlike():
    """A second image family over Flux's models, with its own preset, reduced sizes and FLOP count."""
    embedded = families.FLUX.embedded
    row = families.Family(
        name="fluxlike", description="a throw-away bench family", output="image",
        transformer=families.FLUX_TRANSFORMER, vae=families.FLUX_VAE, pipeline="pipelines.flux:FluxPipeline",
        presets=(families.Preset("fluxlike-tiny", dict(embedded.transformer), dict(embedded.vae), height=64,
                                 width=64, steps=2, text_tokens=8),),
        flops=_token_count, reduced=dict(num_single_layers=1, height=32, width=32))
    families.register(row)
    yield row
    families.unregister(row.name)


def test_a_registered_family_is_benched_from_its_row(fluxlike, tmp_path, capsys):
    path = tmp_path / "fluxlike.json"
    argv = ["--model", "fluxlike-tiny", "--shape", "reduced", "--repeats", "1", "--quiet", "--json", str(path)]
    assert bench.run(parse(argv)) == 0
    result = json.loads(path.read_text())
    assert result["model"]["family"] == "fluxlike"
    assert result["model"]["config"]["num_single_layers"] == 1  # the row's reduced config field
    assert result["shape"]["height"] == 32 and result["shape"]["image_tokens"] == 4  # 4×4 latents, 2×2 packed
    assert result["flops"]["terms"] == {"tokens": 1 * 2 * 2 * 8}  # the row's count, at the step's sizes
    assert result["step"] == "transformer forward + FlowMatch Euler update" and result["unit"] == "images"
    assert "fluxlike-tiny (2+1 blocks, D=32)" in capsys.readouterr().out
    assert bench.REDUCED["fluxlike"] == {"single_layers": 1, "height": 32, "width": 32}
    assert "Fluxlike 1 single blocks, 32×32" in bench.reduced_help()


@pytest.mark.parametrize("argv, message", [
    (["--model", "fluxlike-tiny", "--ffn", "64"], "--ffn applies to Wan presets, not fluxlike-tiny"),
    (["--model", "fluxlike-tiny", "--frames", "5"], "--frames applies to Wan presets, not fluxlike-tiny"),
    (["--model", "wan2.1-t2v-1.3b", "--single-layers", "1"],
     "--single-layers applies to Flux or Fluxlike presets, not wan2.1-t2v-1.3b"),
])
def test_a_flag_names_the_families_whose_config_takes_it(fluxlike, argv, message, capsys):
    assert bench.run(parse(argv)) == 2
    assert message in capsys.readouterr().err


def test_image_to_video_presets_bench_with_widths_following_the_heads(tmp_path):
    path = tmp_path / "i2v.json"
    assert bench.run(parse(TINY_WAN_I2V + ["--json", str(path)])) == 0
    result = json.loads(path.read_text())
    config = result["model"]["config"]
    assert config["added_kv_proj_dim"] == 2 * 128  # the model width, as in the 14B preset (40 × 128)
    assert result["transformer_batch"] == 2 and result["flops"]["terms"]["embed"] > 0
