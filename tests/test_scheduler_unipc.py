"""UniPC in flow mode (as Wan uses it): tables and sampling vs diffusers UniPCMultistepScheduler."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from jaxdiff.schedulers import flow_match, unipc
from jaxdiff.schedulers.unipc import WAN_SCHEDULER_CONFIG, UniPCConfig

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json.
WAN_JSON = {
    "_class_name": "UniPCMultistepScheduler", "_diffusers_version": "0.33.0.dev0",
    "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001, "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995, "final_sigmas_type": "zero", "flow_shift": 3.0,
    "lower_order_final": True, "num_train_timesteps": 1000, "predict_x0": True,
    "prediction_type": "flow_prediction", "rescale_betas_zero_snr": False, "sample_max_value": 1.0,
    "solver_order": 2, "solver_p": None, "solver_type": "bh2", "steps_offset": 0,
    "thresholding": False, "timestep_spacing": "linspace", "trained_betas": None,
    "use_beta_sigmas": False, "use_exponential_sigmas": False, "use_flow_sigmas": True,
    "use_karras_sigmas": False,
}
SHIFTS = [3.0, 5.0]          # Wan 480p / 720p
STEPS = [1, 2, 3, 5, 10, 20]
SHAPE = (1, 4, 3, 8, 8)      # [B, C, T', H, W] video latents
TOL = 1e-5


def _wan_json(shift: float, **overrides) -> dict:
    return {**WAN_JSON, "flow_shift": shift, **overrides}


def _fake_model(x: torch.Tensor, t) -> torch.Tensor:
    """A smooth stand-in velocity field v(x, t); the same torch function serves both sides."""
    s = torch.as_tensor(t, dtype=torch.float32) / 1000.0
    return torch.sin(1.3 * x + s) * 0.7 - 0.4 * x * (1 - s) + 0.1 * torch.cos(2.0 * x * s)


def _fake_model_jnp(x: jax.Array, t) -> jax.Array:
    s = jnp.asarray(t, jnp.float32) / 1000.0
    return jnp.sin(1.3 * x + s) * 0.7 - 0.4 * x * (1 - s) + 0.1 * jnp.cos(2.0 * x * s)


def _noise(seed: int = 0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _diffusers_loop(config_json: dict, n: int, x: np.ndarray, begin_index: int = 0) -> list:
    """What WanPipeline's denoising loop does to the latents, one array per step."""
    sched = UniPCMultistepScheduler.from_config(config_json)
    sched.set_timesteps(n)
    sched.set_begin_index(begin_index)
    latents, out = torch.from_numpy(x.copy()), []
    for t in sched.timesteps[begin_index:]:
        latents = sched.step(_fake_model(latents, t), t, latents, return_dict=False)[0]
        out.append(latents.numpy().copy())
    return out


def _our_loop(config: UniPCConfig, n: int, x: np.ndarray, begin_index: int = 0):
    """Ours with a fresh jitted step (its own compile cache); returns (samples per step, step)."""
    schedule = unipc.set_timesteps(config, n)
    state = unipc.init_state(config, schedule.sigmas, x.shape, begin_index=begin_index)

    def step(state, model_output, sample, i):
        return unipc.step(state, model_output, sample, i)

    jit_step = jax.jit(step)
    latents, out = jnp.asarray(x), []
    for i in range(begin_index, n):
        velocity = _fake_model(torch.from_numpy(np.array(latents)), schedule.timesteps[i]).numpy()
        latents, state = jit_step(state, velocity, latents, i)
        out.append(np.asarray(latents))
    return out, jit_step


def _max_diffs(ours: list, theirs: list) -> list:
    assert len(ours) == len(theirs)
    return [float(np.abs(a - b).max()) for a, b in zip(ours, theirs)]


# --- config -------------------------------------------------------------------------------------


def test_config_from_dict_ignores_unknown_keys():
    assert UniPCConfig.from_dict(WAN_JSON) == WAN_SCHEDULER_CONFIG
    assert UniPCConfig.from_dict(_wan_json(5.0)).flow_shift == 5.0


def test_config_from_json_reads_file_or_directory(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(json.dumps(WAN_JSON))
    assert UniPCConfig.from_json(tmp_path) == WAN_SCHEDULER_CONFIG
    assert UniPCConfig.from_json(tmp_path / "scheduler_config.json") == WAN_SCHEDULER_CONFIG


def test_config_from_json_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        UniPCConfig.from_json(tmp_path)


def test_config_defaults_match_diffusers():
    ours = UniPCConfig()
    theirs = UniPCMultistepScheduler().config
    for field in dataclasses.fields(ours):
        value = theirs[field.name]
        value = tuple(value) if isinstance(value, list) else value
        assert getattr(ours, field.name) == value, field.name


def test_config_is_hashable_and_maps_legacy_solver_names():
    assert hash(UniPCConfig.from_dict(_wan_json(3.0, disable_corrector=[1, 2]))) is not None
    assert UniPCConfig(solver_type="midpoint").solver_type == "bh2"
    assert UniPCMultistepScheduler(solver_type="midpoint").config.solver_type == "bh2"
    with pytest.raises(ValueError, match="solver_type"):
        UniPCConfig(solver_type="rk4")


def test_non_flow_configs_raise_naming_the_option():
    with pytest.raises(NotImplementedError, match="use_flow_sigmas"):
        unipc.set_timesteps(UniPCConfig(), 4)
    with pytest.raises(NotImplementedError, match="thresholding"):
        unipc.set_timesteps(dataclasses.replace(WAN_SCHEDULER_CONFIG, thresholding=True), 4)
    with pytest.raises(NotImplementedError, match="use_karras_sigmas"):
        unipc.make_coeffs(dataclasses.replace(WAN_SCHEDULER_CONFIG, use_karras_sigmas=True),
                          np.array([0.5, 0.0], np.float32))


# --- schedule -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [3.0, 5.0, 12.0])
@pytest.mark.parametrize("n", STEPS + [50])
def test_set_timesteps_match_diffusers_exactly(shift, n):
    sched = UniPCMultistepScheduler.from_config(_wan_json(shift))
    sched.set_timesteps(n)
    ours = unipc.set_timesteps(UniPCConfig.from_dict(_wan_json(shift)), n)
    assert ours.timesteps.dtype == np.int64 and ours.sigmas.dtype == np.float32
    assert ours.timesteps.shape == (n,) and ours.sigmas.shape == (n + 1,)
    np.testing.assert_array_equal(ours.sigmas, sched.sigmas.numpy())
    np.testing.assert_array_equal(ours.timesteps, sched.timesteps.numpy())
    assert ours.sigmas[-1] == 0.0 and ours.sigmas[0] < 1.0  # first sigma nudged below 1


@pytest.mark.parametrize("overrides, kwargs", [
    (dict(final_sigmas_type="sigma_min"), {}),
    (dict(use_dynamic_shifting=True), dict(mu=0.8)),
    (dict(use_dynamic_shifting=True, time_shift_type="linear"), dict(mu=1.3)),
    (dict(shift_terminal=0.1), {}),
    ({}, dict(sigmas=[1.0, 0.7, 0.4, 0.1])),
], ids=["sigma_min", "dynamic-exp", "dynamic-linear", "shift_terminal", "custom-sigmas"])
@pytest.mark.parametrize("n", [1, 3, 20])
def test_set_timesteps_variants_match_diffusers(overrides, kwargs, n):
    config_json = _wan_json(3.0, **overrides)
    if "sigmas" in kwargs:
        n = None
    elif overrides.get("shift_terminal") and n == 1:
        pytest.skip("shift_terminal with one step divides by zero in diffusers too")
    sched = UniPCMultistepScheduler.from_config(config_json)
    sched.set_timesteps(n, **{k: np.asarray(v) if k == "sigmas" else v for k, v in kwargs.items()})
    ours = unipc.set_timesteps(UniPCConfig.from_dict(config_json), n, **kwargs)
    np.testing.assert_allclose(ours.sigmas, sched.sigmas.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ours.sigmas, sched.sigmas.numpy())
    np.testing.assert_array_equal(ours.timesteps, sched.timesteps.numpy())


def test_dynamic_shifting_without_mu_raises():
    with pytest.raises(ValueError, match="mu"):
        unipc.set_timesteps(dataclasses.replace(WAN_SCHEDULER_CONFIG, use_dynamic_shifting=True), 4)


# --- sampling loop ------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("n", STEPS)
def test_sampling_loop_matches_diffusers_fp32(shift, n):
    x = _noise(n)
    theirs = _diffusers_loop(_wan_json(shift), n, x)
    ours, jit_step = _our_loop(UniPCConfig.from_dict(_wan_json(shift)), n, x)
    diffs = _max_diffs(ours, theirs)
    assert max(diffs) <= TOL, diffs
    assert jit_step._cache_size() == 1  # step index, order and history are arrays: one compile


@pytest.mark.parametrize("overrides", [
    dict(solver_order=1),
    dict(solver_order=3),
    dict(solver_order=4, disable_corrector=[3]),
    dict(disable_corrector=[0, 2]),
    dict(final_sigmas_type="sigma_min"),
    dict(flow_shift=12.0),
    dict(flow_shift=1.0),
], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("n", [2, 3, 10])
def test_solver_variants_match_diffusers(overrides, n):
    config_json = _wan_json(3.0, **overrides)
    x = _noise(1)
    theirs = _diffusers_loop(config_json, n, x)
    ours, _ = _our_loop(UniPCConfig.from_dict(config_json), n, x)
    assert max(_max_diffs(ours, theirs)) <= TOL


@pytest.mark.parametrize("overrides", [dict(solver_type="bh1"), dict(lower_order_final=False)])
def test_variants_that_end_in_nan_do_so_in_both(overrides):
    """bh1 and order 2 at sigma = 0 give inf/NaN in diffusers; ours agrees, step by step."""
    config_json = _wan_json(3.0, **overrides)
    x = _noise(2)
    theirs = _diffusers_loop(config_json, 5, x)
    ours, _ = _our_loop(UniPCConfig.from_dict(config_json), 5, x)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)  # NaNs must sit in the same places


def test_singular_system_raises_like_diffusers():
    config_json = _wan_json(3.0, solver_order=3, lower_order_final=False)
    with pytest.raises(torch.linalg.LinAlgError):
        _diffusers_loop(config_json, 5, _noise())
    schedule = unipc.set_timesteps(UniPCConfig.from_dict(config_json), 5)
    with pytest.raises(ValueError, match="lower_order_final"):
        unipc.make_coeffs(UniPCConfig.from_dict(config_json), schedule.sigmas)


@pytest.mark.parametrize("begin_index", [1, 4])
def test_begin_index_matches_diffusers(begin_index):
    """img2img: start part-way; the first step is order 1 with no corrector, as in diffusers."""
    x = _noise(3)
    theirs = _diffusers_loop(_wan_json(5.0), 10, x, begin_index)
    ours, _ = _our_loop(UniPCConfig.from_dict(_wan_json(5.0)), 10, x, begin_index)
    assert max(_max_diffs(ours, theirs)) <= TOL


def test_teacher_forced_steps_match_diffusers_closely():
    """Same sample and model output on both sides at every step: the scheduler's error alone."""
    n = 20
    sched = UniPCMultistepScheduler.from_config(WAN_JSON)
    sched.set_timesteps(n)
    schedule = unipc.set_timesteps(WAN_SCHEDULER_CONFIG, n)
    state = unipc.init_state(WAN_SCHEDULER_CONFIG, schedule.sigmas, SHAPE)
    jit_step = jax.jit(unipc.step)
    latents = torch.from_numpy(_noise(4))
    worst = 0.0
    for i, t in enumerate(sched.timesteps):
        velocity = _fake_model(latents, t)
        ours, state = jit_step(state, velocity.numpy(), latents.numpy(), i)
        latents = sched.step(velocity, t, latents, return_dict=False)[0]
        worst = max(worst, float(np.abs(np.asarray(ours) - latents.numpy()).max()))
    assert worst <= 2e-6, worst


def test_fully_jitted_fori_loop_matches_diffusers():
    """The state is a plain pytree: the whole loop runs inside one jit (model in jnp)."""
    n = 10
    x = _noise(5)
    schedule = unipc.set_timesteps(WAN_SCHEDULER_CONFIG, n)
    timesteps = jnp.asarray(schedule.timesteps.astype(np.int32))

    @jax.jit
    def sample(latents, state):
        def body(i, carry):
            latents, state = carry
            return unipc.step(state, _fake_model_jnp(latents, timesteps[i]), latents)
        return jax.lax.fori_loop(0, n, body, (latents, state))[0]

    state = unipc.init_state(WAN_SCHEDULER_CONFIG, schedule.sigmas, x.shape)
    ours = np.asarray(sample(jnp.asarray(x), state))
    theirs = _diffusers_loop(WAN_JSON, n, x)[-1]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOL)


def test_step_keeps_sample_dtype_and_state_in_fp32():
    schedule = unipc.set_timesteps(WAN_SCHEDULER_CONFIG, 4)
    state = unipc.init_state(WAN_SCHEDULER_CONFIG, schedule.sigmas, (1, 4))
    sample = jnp.ones((1, 4), jnp.bfloat16)
    out, state = unipc.step(state, jnp.ones((1, 4), jnp.bfloat16), sample)
    assert out.dtype == jnp.bfloat16
    assert state.model_outputs.dtype == jnp.float32 and state.last_sample.dtype == jnp.float32
    assert int(state.step_index) == 1 and int(state.lower_order_nums) == 1


def test_cfg_matches_wan_pipeline_formula():
    rng = np.random.default_rng(6)
    cond, uncond = (rng.standard_normal((2, 3)).astype(np.float32) for _ in range(2))
    theirs = torch.from_numpy(uncond) + 5.0 * (torch.from_numpy(cond) - torch.from_numpy(uncond))
    np.testing.assert_array_equal(np.asarray(unipc.cfg(cond, uncond, 5.0)), theirs.numpy())


# --- FlowMatch Euler with Wan's shift (the existing flow_match module, unchanged) ----------------


@pytest.mark.parametrize("shift", [3.0, 5.0, 12.0])
@pytest.mark.parametrize("n", [1, 10, 50])
def test_flow_match_euler_with_wan_shift_matches_diffusers(shift, n):
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(n)
    ours = flow_match.set_timesteps(flow_match.FlowMatchEulerConfig(shift=shift), n)
    np.testing.assert_array_equal(ours.sigmas, sched.sigmas.numpy())
    np.testing.assert_array_equal(ours.timesteps, sched.timesteps.numpy())
