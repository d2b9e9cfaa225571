"""FlowMatch Euler tables and step vs diffusers' FlowMatchEulerDiscreteScheduler."""

import json

import jax
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift as diffusers_calculate_shift

from jaxdiff.schedulers import flow_match
from jaxdiff.schedulers.flow_match import (
    FLUX_DEV_SCHEDULER_CONFIG,
    FLUX_SCHNELL_SCHEDULER_CONFIG,
    FlowMatchEulerConfig,
    calculate_shift,
    flux_timesteps,
    set_timesteps,
)

# black-forest-labs/FLUX.1-dev / -schnell scheduler/scheduler_config.json, verbatim.
FLUX_DEV_JSON = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.30.0.dev0",
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
}
FLUX_SCHNELL_JSON = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.29.0.dev0",
    "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False,
}
STEPS = [1, 2, 4, 28, 50]
SEQ_LENS = [16, 256, 1024, 4096, 6400]


def _diffusers_flux_schedule(config_json, n, image_seq_len):
    """What FluxPipeline.__call__ does to the scheduler (sigmas linspace + mu)."""
    sched = FlowMatchEulerDiscreteScheduler.from_config(config_json)
    mu = diffusers_calculate_shift(
        image_seq_len, sched.config.get("base_image_seq_len", 256),
        sched.config.get("max_image_seq_len", 4096), sched.config.get("base_shift", 0.5),
        sched.config.get("max_shift", 1.15))
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    return sched


def test_config_from_dict_ignores_unknown_keys():
    assert FlowMatchEulerConfig.from_dict(FLUX_DEV_JSON) == FLUX_DEV_SCHEDULER_CONFIG
    assert FlowMatchEulerConfig.from_dict(FLUX_SCHNELL_JSON) == FLUX_SCHNELL_SCHEDULER_CONFIG


def test_config_from_json_reads_file_or_directory(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(json.dumps(FLUX_DEV_JSON))
    assert FlowMatchEulerConfig.from_json(tmp_path) == FLUX_DEV_SCHEDULER_CONFIG
    assert FlowMatchEulerConfig.from_json(tmp_path / "scheduler_config.json") == FLUX_DEV_SCHEDULER_CONFIG


def test_config_from_json_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        FlowMatchEulerConfig.from_json(tmp_path)


def test_config_defaults_match_diffusers():
    ours = FlowMatchEulerConfig()
    theirs = FlowMatchEulerDiscreteScheduler().config
    for field in ours.__dataclass_fields__:
        assert getattr(ours, field) == theirs[field], field


@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_calculate_shift_matches_diffusers(seq_len):
    assert calculate_shift(seq_len) == diffusers_calculate_shift(seq_len)


@pytest.mark.parametrize("config_json", [FLUX_DEV_JSON, FLUX_SCHNELL_JSON], ids=["dev", "schnell"])
@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("seq_len", SEQ_LENS)
def test_flux_timesteps_match_diffusers_exactly(config_json, n, seq_len):
    theirs = _diffusers_flux_schedule(config_json, n, seq_len)
    ours = flux_timesteps(FlowMatchEulerConfig.from_dict(config_json), n, seq_len)
    assert ours.timesteps.dtype == np.float32 and ours.sigmas.dtype == np.float32
    assert ours.timesteps.shape == (n,) and ours.sigmas.shape == (n + 1,)
    np.testing.assert_array_equal(ours.sigmas, theirs.sigmas.numpy())
    np.testing.assert_array_equal(ours.timesteps, theirs.timesteps.numpy())
    assert ours.sigmas[-1] == 0.0


def test_schnell_sigmas_are_unshifted_linspace():
    ours = flux_timesteps(FLUX_SCHNELL_SCHEDULER_CONFIG, 4, 4096)
    np.testing.assert_allclose(ours.sigmas, [1.0, 0.75, 0.5, 0.25, 0.0], atol=1e-7)


@pytest.mark.parametrize("kwargs", [
    dict(shift=3.0),
    dict(shift=1.0),
    dict(use_dynamic_shifting=True, mu=0.8),
    dict(use_dynamic_shifting=True, time_shift_type="linear", mu=1.3),
    dict(shift=3.0, shift_terminal=0.1),
    dict(shift=2.0, use_karras_sigmas=True),
    dict(shift=2.0, use_exponential_sigmas=True),
    dict(shift=2.0, invert_sigmas=True),
], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("n", [1, 3, 20])
@pytest.mark.filterwarnings("ignore:invalid value encountered")  # shift_terminal with N=1: NaN in both
def test_default_set_timesteps_match_diffusers(kwargs, n):
    kwargs = dict(kwargs)
    mu = kwargs.pop("mu", None)
    sched = FlowMatchEulerDiscreteScheduler(**kwargs)
    sched.set_timesteps(n, mu=mu)
    ours = set_timesteps(FlowMatchEulerConfig(**kwargs), n, mu=mu)
    np.testing.assert_allclose(ours.sigmas, sched.sigmas.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.timesteps, sched.timesteps.numpy(), rtol=0, atol=1e-3)
    np.testing.assert_array_equal(ours.sigmas, sched.sigmas.numpy())


def test_custom_timesteps_are_used_as_given():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    custom = [900.0, 500.0, 100.0]
    sched.set_timesteps(timesteps=custom)
    ours = set_timesteps(FlowMatchEulerConfig(shift=3.0), timesteps=custom)
    np.testing.assert_array_equal(ours.timesteps, sched.timesteps.numpy())
    np.testing.assert_array_equal(ours.sigmas, sched.sigmas.numpy())


def test_dynamic_shifting_without_mu_raises():
    with pytest.raises(ValueError, match="mu"):
        set_timesteps(FLUX_DEV_SCHEDULER_CONFIG, 4)


def test_mismatched_sigma_count_raises():
    with pytest.raises(ValueError, match="num_inference_steps"):
        set_timesteps(FLUX_SCHNELL_SCHEDULER_CONFIG, 4, sigmas=[1.0, 0.5])


def test_step_matches_diffusers_fp32():
    n, seq_len = 4, 1024
    theirs = _diffusers_flux_schedule(FLUX_DEV_JSON, n, seq_len)
    ours = flux_timesteps(FLUX_DEV_SCHEDULER_CONFIG, n, seq_len)
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 64, 16)).astype(np.float32)
    jit_step = jax.jit(flow_match.step)
    theirs_sample, ours_sample = torch.from_numpy(sample), jax.numpy.asarray(sample)
    theirs.set_begin_index(0)
    for i, t in enumerate(theirs.timesteps):
        velocity = rng.standard_normal(sample.shape).astype(np.float32)
        theirs_sample = theirs.step(torch.from_numpy(velocity), t, theirs_sample,
                                    return_dict=False)[0]
        ours_sample = jit_step(velocity, ours.sigmas[i], ours.sigmas[i + 1], ours_sample)
        diff = np.abs(np.asarray(ours_sample) - theirs_sample.numpy()).max()
        assert diff <= 1e-5, (i, diff)
    assert jit_step._cache_size() == 1  # sigma is an array argument: one compile for every step


def test_step_keeps_sample_dtype_and_computes_in_fp32():
    sample = jax.numpy.ones((1, 4), jax.numpy.bfloat16)
    out = flow_match.step(jax.numpy.ones((1, 4), jax.numpy.bfloat16), np.float32(1.0),
                          np.float32(0.75), sample)
    assert out.dtype == jax.numpy.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), 0.75)
