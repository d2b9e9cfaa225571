"""Flow-matching Euler scheduler (diffusers `FlowMatchEulerDiscreteScheduler`), split in two halves.

- Host side, pure numpy: the sigma/timestep tables (`set_timesteps`, `flux_timesteps`), computed
  with the same float32 operations, in the same order, as diffusers so the tables match bit for bit.
- Device side, jittable: `step(model_output, sigma, sigma_next, sample)`, one Euler step in fp32.

Conventions: `sigmas` has N+1 entries (a terminal 0 appended; 1 when `invert_sigmas`); `timesteps`
has N entries and equals `sigmas[:-1] * num_train_timesteps`. Flux models take `timestep / 1000`
(sigma units), the pipeline does that division.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .config_io import SchedulerConfigIO

KARRAS_RHO = 7.0


@dataclasses.dataclass(frozen=True)
class FlowMatchEulerConfig(SchedulerConfigIO):
    """Mirror of diffusers `FlowMatchEulerDiscreteScheduler` config.json (same field names)."""

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float | None = 0.5
    max_shift: float | None = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    invert_sigmas: bool = False
    shift_terminal: float | None = None
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    time_shift_type: str = "exponential"
    stochastic_sampling: bool = False

    def __post_init__(self):
        if self.time_shift_type not in ("exponential", "linear"):
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear', got "
                             f"{self.time_shift_type!r}")
        if sum([self.use_karras_sigmas, self.use_exponential_sigmas, self.use_beta_sigmas]) > 1:
            raise ValueError("only one of use_karras_sigmas, use_exponential_sigmas, "
                             "use_beta_sigmas can be set")


# black-forest-labs/FLUX.1-dev and FLUX.1-schnell scheduler/scheduler_config.json.
FLUX_DEV_SCHEDULER_CONFIG = FlowMatchEulerConfig(
    shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096)
FLUX_SCHNELL_SCHEDULER_CONFIG = FlowMatchEulerConfig(shift=1.0, use_dynamic_shifting=False)


class FlowMatchSchedule(NamedTuple):
    """`timesteps` `[N]` (model-facing, ×num_train_timesteps) and `sigmas` `[N+1]`, both float32."""

    timesteps: np.ndarray
    sigmas: np.ndarray


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """Resolution-dependent shift `mu`: linear in the packed image token count (FluxPipeline)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def time_shift(config: FlowMatchEulerConfig, mu: float, sigma: float, t: np.ndarray) -> np.ndarray:
    """Dynamic time shift of `t` (float32 array), exponential or linear in `mu`."""
    if config.time_shift_type == "exponential":
        return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
    return mu / (mu + (1 / t - 1) ** sigma)


def _train_sigma_range(config: FlowMatchEulerConfig) -> tuple[float, float]:
    """(sigma_max, sigma_min) of the training table, as the diffusers scheduler's constructor sets them."""
    n = config.num_train_timesteps
    sigmas = np.linspace(1, n, n, dtype=np.float32)[::-1] / np.float32(n)
    if not config.use_dynamic_shifting:
        shift = config.shift
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return float(sigmas[0]), float(sigmas[-1])


def _stretch_to_terminal(config: FlowMatchEulerConfig, t: np.ndarray) -> np.ndarray:
    one_minus_z = 1 - t
    scale_factor = one_minus_z[-1] / (1 - config.shift_terminal)
    return 1 - (one_minus_z / scale_factor)


def _karras(sigmas: np.ndarray, n: int) -> np.ndarray:
    sigma_min, sigma_max = float(sigmas[-1]), float(sigmas[0])
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** KARRAS_RHO


def _exponential(sigmas: np.ndarray, n: int) -> np.ndarray:
    sigma_min, sigma_max = float(sigmas[-1]), float(sigmas[0])
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def set_timesteps(config: FlowMatchEulerConfig, num_inference_steps: int | None = None, *,
                  sigmas=None, mu: float | None = None, timesteps=None) -> FlowMatchSchedule:
    """The inference schedule, as diffusers `FlowMatchEulerDiscreteScheduler.set_timesteps`.

    Args:
        num_inference_steps: N; may be omitted when `sigmas` or `timesteps` are given.
        sigmas: optional custom sigmas `[N]` (FluxPipeline passes `linspace(1, 1/N, N)`).
        mu: the dynamic shift; required when `config.use_dynamic_shifting`.
        timesteps: optional custom timesteps `[N]`, used as given.
    Returns:
        FlowMatchSchedule(timesteps `[N]`, sigmas `[N+1]`), float32 numpy.
    """
    if config.use_dynamic_shifting and mu is None:
        raise ValueError("mu must be given when use_dynamic_shifting is set "
                         "(see calculate_shift / flux_timesteps)")
    if config.use_beta_sigmas:
        raise NotImplementedError("use_beta_sigmas is not supported (needs scipy's beta.ppf)")
    if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
        raise ValueError(f"sigmas ({len(sigmas)}) and timesteps ({len(timesteps)}) must have the "
                         "same length")
    if num_inference_steps is None:
        if sigmas is None and timesteps is None:
            raise ValueError("give num_inference_steps, sigmas or timesteps")
        num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)
    elif ((sigmas is not None and len(sigmas) != num_inference_steps)
          or (timesteps is not None and len(timesteps) != num_inference_steps)):
        raise ValueError(f"sigmas/timesteps must have num_inference_steps={num_inference_steps} "
                         "entries")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")

    custom_timesteps = timesteps is not None
    if custom_timesteps:
        timesteps = np.asarray(timesteps).astype(np.float32)
    if sigmas is None:
        if timesteps is None:
            sigma_max, sigma_min = _train_sigma_range(config)
            n_train = config.num_train_timesteps
            timesteps = np.linspace(sigma_max * n_train, sigma_min * n_train, num_inference_steps)
        sigmas = timesteps / config.num_train_timesteps
    else:
        sigmas = np.asarray(sigmas).astype(np.float32)

    if config.use_dynamic_shifting:
        sigmas = time_shift(config, mu, 1.0, sigmas)
    else:
        sigmas = config.shift * sigmas / (1 + (config.shift - 1) * sigmas)
    if config.shift_terminal:
        sigmas = _stretch_to_terminal(config, sigmas)
    if config.use_karras_sigmas:
        sigmas = _karras(sigmas, num_inference_steps)
    elif config.use_exponential_sigmas:
        sigmas = _exponential(sigmas, num_inference_steps)

    sigmas = np.asarray(sigmas).astype(np.float32)
    if custom_timesteps:
        timesteps = timesteps.astype(np.float32)
    else:
        timesteps = (sigmas * np.float32(config.num_train_timesteps)).astype(np.float32)
    if config.invert_sigmas:
        sigmas = np.float32(1.0) - sigmas
        timesteps = (sigmas * np.float32(config.num_train_timesteps)).astype(np.float32)
        terminal = np.ones(1, np.float32)
    else:
        terminal = np.zeros(1, np.float32)
    return FlowMatchSchedule(timesteps=timesteps, sigmas=np.concatenate([sigmas, terminal]))


def flux_timesteps(config: FlowMatchEulerConfig, num_inference_steps: int, image_seq_len: int,
                   sigmas=None) -> FlowMatchSchedule:
    """The schedule FluxPipeline uses: sigmas `linspace(1, 1/N, N)` and `mu` from the token count."""
    if sigmas is None:
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
    mu = calculate_shift(
        image_seq_len,
        config.base_image_seq_len,
        config.max_image_seq_len,
        0.5 if config.base_shift is None else config.base_shift,
        1.15 if config.max_shift is None else config.max_shift,
    )
    return set_timesteps(config, num_inference_steps, sigmas=sigmas, mu=mu)


def step(model_output: jax.Array, sigma: jax.Array, sigma_next: jax.Array,
         sample: jax.Array) -> jax.Array:
    """One Euler step `sample + (sigma_next - sigma) * model_output`, in fp32; returns `sample.dtype`.

    Args:
        model_output: velocity prediction, same shape as `sample`.
        sigma, sigma_next: scalars (arrays, so one compiled step serves every step).
        sample: current latents.
    """
    dt = jnp.asarray(sigma_next, jnp.float32) - jnp.asarray(sigma, jnp.float32)
    prev = sample.astype(jnp.float32) + dt * model_output.astype(jnp.float32)
    return prev.astype(sample.dtype)
