"""AOT export of the Flux denoise step (`jax.export`): the deserialised step equals the jitted one
(≤1e-6) with the weights passed as arguments, not baked in; `jaxdiff generate --export-step` writes it."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

pytest.importorskip("flatbuffers")  # jax's Exported (de)serialisation needs it

from jaxdiff import cli  # noqa: E402
from jaxdiff.pipelines import loading  # noqa: E402
from jaxdiff.pipelines.export import (export_denoise_step, load_exported_step, step_shapes,  # noqa: E402
                                      step_weights)
from jaxdiff.pipelines.flux import FluxPipeline  # noqa: E402

SIZE, TEXT = 32, 8
TOL = 1e-6


def _pipeline(guidance_embeds: bool, monkeypatch) -> FluxPipeline:
    return FluxPipeline(*loading.embedded_models("flux", transformer_overrides={"guidance_embeds": guidance_embeds}))


def _args(pipe, batch: int):
    rng = np.random.default_rng(0)
    shapes = step_shapes(pipe, batch=batch, height=SIZE, width=SIZE, text_len=TEXT)
    args = [None if s is None else rng.standard_normal(s.shape).astype(np.float32) for s in shapes]
    args[1:4] = [np.float32(0.7), np.float32(0.7), np.float32(0.5)]  # timestep, sigma, sigma_next
    return args


@pytest.mark.parametrize("guidance_embeds", [True, False], ids=["dev", "schnell"])
def test_deserialized_step_equals_the_jitted_step(tmp_path, monkeypatch, guidance_embeds):
    pipe = _pipeline(guidance_embeds, monkeypatch)
    path = tmp_path / "step.jaxexport"
    export_denoise_step(pipe, path, batch=2, height=SIZE, width=SIZE, text_len=TEXT)
    step = load_exported_step(path)
    args = _args(pipe, batch=2)
    ours = np.asarray(step(step_weights(pipe), *args))
    jitted = np.asarray(pipe.denoise_step(nnx.state(pipe.transformer), *args))
    assert ours.shape == jitted.shape == args[0].shape
    assert np.abs(ours - jitted).max() <= TOL
    assert np.abs(ours - args[0]).max() > 1e-3  # the step moved the latents


def test_weights_are_arguments_not_constants(tmp_path, monkeypatch):
    pipe = _pipeline(True, monkeypatch)
    path = tmp_path / "step.jaxexport"
    exported = export_denoise_step(pipe, path, batch=1, height=SIZE, width=SIZE, text_len=TEXT)
    weights = step_weights(pipe)
    assert len(exported.in_avals) == len(weights) + 9  # + latents … guidance
    assert path.stat().st_size < sum(w.nbytes for w in weights)
    # other weights of the same architecture give another result
    step = load_exported_step(path)
    args = _args(pipe, batch=1)
    doubled = [w * 2 for w in weights]
    assert not np.allclose(np.asarray(step(weights, *args)), np.asarray(step(doubled, *args)))
    with pytest.raises(ValueError, match="weight arrays"):
        step(weights[:-1], *args)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_exported_step(tmp_path / "nope")


def test_generate_export_step_writes_a_loadable_step(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", {"generate": cli.COMMANDS["generate"]})
    path = tmp_path / "exported" / "step.jaxexport"
    assert cli.main(["generate", "--out", str(tmp_path / "x.png"), "--steps", "1", "--height", "32",
                     "--width", "32", "--export-step", str(path)]) == 0
    assert "exported denoise step" in capsys.readouterr().err
    step = load_exported_step(path)
    assert step.exported.in_avals[step.num_weights].shape == (1, 4, 64)  # packed 32×32 latents
