"""The host loop every pipeline's `sample` runs: one jitted step per denoising step, shared by Flux and Wan.

`denoise_loop(steps, run_step, carry, ...)` calls `run_step(i, carry)` for each step index `i` (the
caller's jitted step with that step's arguments); the first call of each compiled program (per
`program(i)`: Wan 2.2 A14B has one per expert) is traced under `compile_cache.track_compiles`, so the
pipeline can report cold / warm compile time. After each step `callback(done, total)` runs once the
step has finished on the device (progress reflects finished work); returning `False` stops the loop
there (the latents so far are returned), raising propagates (an interrupt).

Also the two small rules every flow-matching pipeline shares: `add_noise` (diffusers'
`scale_noise` / flow `add_noise`, ComfyUI's CONST `noise_scaling`) and `check_steps`; and
`StepProgram`, one step of the loop as a value (what each pipeline's `step_program` returns, for
benchmarks and compile checks).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from .compile_cache import CompileStats, track_compiles

ProgressCallback = Callable[[int, int], "bool | None"]


class StepProgram(NamedTuple):
    """One denoising step exactly as a pipeline's loop runs it: `step(*args)` is the jitted step on
    its placed arguments (trace it inside the pipeline's `attention_context`); `what` says what it
    computes; `sizes` (`families.Sizes`) are those of the transformer call inside it (batch counts
    the classifier-free guidance passes); `raw(step(*args))` gives the step's latents as raw VAE
    latents (what the pipeline's `decode` takes)."""

    step: Callable[..., Any]
    args: tuple
    what: str
    sizes: Any
    raw: Callable[[Any], jax.Array]


def denoise_loop(steps: Sequence[int], run_step: Callable[[int, Any], Any], carry: Any, *,
                 program: Callable[[int], Any] = lambda i: 0,
                 callback: ProgressCallback | None = None) -> tuple[Any, CompileStats | None]:
    """`carry = run_step(i, carry)` for `i` in `steps`; returns (carry, what the first call of each
    program compiled, summed; None when `steps` is empty)."""
    stats: CompileStats | None = None
    traced = set()
    total = len(steps)
    for done, i in enumerate(steps, start=1):
        key = program(i)
        if key not in traced:  # each program traces (and compiles) on its first step
            traced.add(key)
            with track_compiles() as step_stats:
                carry = run_step(i, carry)
            stats = step_stats if stats is None else stats + step_stats
        else:
            carry = run_step(i, carry)
        if callback is not None:
            jax.block_until_ready(carry)  # so progress reflects finished work
            if callback(done, total) is False:
                break
    return carry, stats


def add_noise(clean: jax.Array, noise: jax.Array, sigma) -> jax.Array:
    """`sigma · noise + (1 − sigma) · clean` in float32: a clean latent noised to `sigma`."""
    clean = clean.astype(jax.numpy.float32)
    return sigma * noise.astype(jax.numpy.float32) + (1.0 - sigma) * clean


def check_steps(num_inference_steps, start_step: int, end_step: int | None) -> tuple[int, int]:
    """(start, end) step indices into a schedule of `num_inference_steps`; ValueError when empty."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
            or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an int >= 1, got {num_inference_steps!r}")
    end = num_inference_steps if end_step is None else end_step
    if not 0 <= start_step < end <= num_inference_steps:
        raise ValueError(f"steps {start_step}..{end} are not a non-empty range of the "
                         f"{num_inference_steps}-step schedule (0 <= start_step < end_step <= "
                         f"num_inference_steps)")
    return start_step, end
