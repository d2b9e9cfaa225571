"""Noise schedulers: host-side numpy tables plus a jittable step. May import models_flax, kernels.

- `flow_match`: FlowMatch Euler (Flux; diffusers `FlowMatchEulerDiscreteScheduler`).
"""

from .flow_match import (
    FLUX_DEV_SCHEDULER_CONFIG,
    FLUX_SCHNELL_SCHEDULER_CONFIG,
    FlowMatchEulerConfig,
    FlowMatchSchedule,
    calculate_shift,
    flux_timesteps,
    set_timesteps,
    step,
)

__all__ = [
    "FLUX_DEV_SCHEDULER_CONFIG",
    "FLUX_SCHNELL_SCHEDULER_CONFIG",
    "FlowMatchEulerConfig",
    "FlowMatchSchedule",
    "calculate_shift",
    "flux_timesteps",
    "set_timesteps",
    "step",
]
