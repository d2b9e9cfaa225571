"""UniPC multistep scheduler in flow-matching mode (Wan; diffusers `UniPCMultistepScheduler`).

Split like `flow_match`:
- Host side, pure numpy: the schedule (`set_timesteps`) with the same float64→float32 operations as
  diffusers, and `make_coeffs`, which turns the sigmas into small per-step coefficient tables (the
  scalars UniPC's predictor and corrector need, for every step and every possible order), computed
  in float32 in the order diffusers computes them.
- Device side, jittable: `step(state, model_output, sample, step_index)`. Everything that changes
  from step to step is an array (the step index, the order, the history), so one compiled step
  serves every step of a run.

Only the flow branch is implemented (`use_flow_sigmas=True`, `prediction_type="flow_prediction"`,
`predict_x0=True`), which is what every Wan checkpoint ships; other options raise
`NotImplementedError` naming the option.

Conventions: `sigmas` has N+1 entries (terminal 0, or the last sigma for
`final_sigmas_type="sigma_min"`); `timesteps` has N int64 entries, `trunc(sigma * 1000)`, which is
what diffusers' Wan pipelines hand the transformer. Latents follow
`x_sigma = (1 - sigma) * x0 + sigma * noise`; the model predicts the velocity `noise - x0`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .config_io import SchedulerConfigIO

from .flow_match import time_shift

# diffusers nudges sigma_max = 1 down by this much so log(alpha) = log(1 - sigma) stays finite.
FIRST_SIGMA_EPS = 1e-6
# diffusers maps these legacy solver names to bh2.
_BH2_ALIASES = ("midpoint", "heun", "logrho")


@dataclasses.dataclass(frozen=True)
class UniPCConfig(SchedulerConfigIO):
    """Mirror of diffusers `UniPCMultistepScheduler` config.json (same field names and defaults)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    solver_order: int = 2
    prediction_type: str = "epsilon"
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    predict_x0: bool = True
    solver_type: str = "bh2"
    lower_order_final: bool = True
    disable_corrector: tuple[int, ...] = ()
    solver_p: Any = None
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_flow_sigmas: bool = False
    flow_shift: float = 1.0
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    final_sigmas_type: str = "zero"
    rescale_betas_zero_snr: bool = False
    use_dynamic_shifting: bool = False
    time_shift_type: str = "exponential"
    sigma_min: float | None = None
    sigma_max: float | None = None
    shift_terminal: float | None = None

    def __post_init__(self):
        # JSON gives lists; keep the dataclass hashable.
        object.__setattr__(self, "disable_corrector", tuple(int(i) for i in self.disable_corrector))
        if self.trained_betas is not None:
            object.__setattr__(self, "trained_betas", tuple(self.trained_betas))
        if self.solver_type in _BH2_ALIASES:
            object.__setattr__(self, "solver_type", "bh2")
        if self.solver_type not in ("bh1", "bh2"):
            raise ValueError(f"solver_type must be 'bh1' or 'bh2', got {self.solver_type!r}")
        if self.solver_order < 1:
            raise ValueError(f"solver_order must be >= 1, got {self.solver_order}")
        if self.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError("final_sigmas_type must be 'zero' or 'sigma_min', got "
                             f"{self.final_sigmas_type!r}")
        if self.time_shift_type not in ("exponential", "linear"):
            raise ValueError("time_shift_type must be 'exponential' or 'linear', got "
                             f"{self.time_shift_type!r}")
        if sum([self.use_karras_sigmas, self.use_exponential_sigmas, self.use_beta_sigmas]) > 1:
            raise ValueError("only one of use_karras_sigmas, use_exponential_sigmas, "
                             "use_beta_sigmas can be set")
        if self.shift_terminal is not None and not self.use_flow_sigmas:
            raise ValueError("shift_terminal is only supported with use_flow_sigmas=True")


# Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json (480p, flow_shift 3.0). For 720p
# use `dataclasses.replace(WAN_SCHEDULER_CONFIG, flow_shift=5.0)` (diffusers' Wan docstrings).
WAN_SCHEDULER_CONFIG = UniPCConfig(
    prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, solver_order=2,
    predict_x0=True, solver_type="bh2", lower_order_final=True, final_sigmas_type="zero")


def _check_supported(config: UniPCConfig) -> None:
    """Raise NotImplementedError naming the first option outside the flow branch we implement."""
    unsupported = [
        ("use_flow_sigmas", not config.use_flow_sigmas),
        ("prediction_type", config.prediction_type != "flow_prediction"),
        ("predict_x0", not config.predict_x0),
        ("use_karras_sigmas", config.use_karras_sigmas),
        ("use_exponential_sigmas", config.use_exponential_sigmas),
        ("use_beta_sigmas", config.use_beta_sigmas),
        ("thresholding", config.thresholding),
        ("solver_p", config.solver_p is not None),
    ]
    for name, bad in unsupported:
        if bad:
            raise NotImplementedError(
                f"UniPC: {name}={getattr(config, name)!r} is not supported; only the flow-matching "
                "branch (use_flow_sigmas=True, prediction_type='flow_prediction', predict_x0=True, "
                "no karras/exponential/beta sigmas, no thresholding, no solver_p) is implemented")


class UniPCSchedule(NamedTuple):
    """`timesteps` `[N]` int64 (model-facing, ×num_train_timesteps) and `sigmas` `[N+1]` float32."""

    timesteps: np.ndarray
    sigmas: np.ndarray


def set_timesteps(config: UniPCConfig, num_inference_steps: int | None = None, *,
                  sigmas: Sequence[float] | np.ndarray | None = None,
                  mu: float | None = None) -> UniPCSchedule:
    """The inference schedule, as diffusers `UniPCMultistepScheduler.set_timesteps` (flow branch).

    Args:
        num_inference_steps: N; ignored when `sigmas` is given (as in diffusers).
        sigmas: optional custom unshifted sigmas `[N]`; the flow shift is still applied.
        mu: the dynamic shift; required when `config.use_dynamic_shifting`.
    Returns:
        UniPCSchedule(timesteps `[N]` int64, sigmas `[N+1]` float32), numpy.
    """
    _check_supported(config)
    if config.use_dynamic_shifting and mu is None:
        raise ValueError("mu must be given when use_dynamic_shifting is set")
    if sigmas is not None:
        sigmas = np.array(sigmas, dtype=np.float64)
        num_inference_steps = len(sigmas)
    if num_inference_steps is None or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")

    n_train = config.num_train_timesteps
    if sigmas is None:
        sigmas = np.linspace(1, 1 / n_train, num_inference_steps + 1)[:-1]
    if config.use_dynamic_shifting:
        sigmas = time_shift(config, mu, 1.0, sigmas)
    else:
        shift = config.flow_shift
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    if config.shift_terminal:
        one_minus_z = 1 - sigmas
        sigmas = 1 - one_minus_z / (one_minus_z[-1] / (1 - config.shift_terminal))
    sigmas = np.array(sigmas, dtype=np.float64)
    if np.fabs(sigmas[0] - 1) < FIRST_SIGMA_EPS:
        sigmas[0] -= FIRST_SIGMA_EPS
    timesteps = (sigmas * n_train).astype(np.int64)  # torch .to(int64) truncates toward zero too
    sigma_last = sigmas[-1] if config.final_sigmas_type == "sigma_min" else 0.0
    sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)
    return UniPCSchedule(timesteps=timesteps, sigmas=sigmas)


class UniPCCoeffs(NamedTuple):
    """Per-step float32 scalars of the UniP predictor (`p_*`) and UniC corrector (`c_*`).

    N steps, P = solver_order, K = P - 1 history differences. For step i the predictor goes
    sigma[i] → sigma[i+1] and the corrector revisits sigma[i-1] → sigma[i]. Both compute
    `x_t = (cx * x - cm0 * m0) - cres * res` with `res = Σ_k rho[order-1, k] * (m_k - m0) / rk[k]`
    (+ `rho_last[order-1] * (x0_now - m0)` for the corrector), exactly as diffusers.
    """

    sigma: jax.Array           # [N]       sigma[i], for x0 = sample - sigma * v
    order_cap: jax.Array       # [N] int32 min(solver_order, N - i) under lower_order_final
    use_corrector: jax.Array   # [N] bool  i > 0 and i - 1 not in disable_corrector
    p_cx: jax.Array            # [N]       sigma_t / sigma_s0
    p_cm0: jax.Array           # [N]       alpha_t * h_phi_1
    p_cres: jax.Array          # [N]       alpha_t * B(h)
    p_rk: jax.Array            # [N, K]    (lambda_{i-k} - lambda_i) / h
    p_rho: jax.Array           # [N, P, K] rhos_p for each order (zero-padded)
    c_cx: jax.Array            # [N]
    c_cm0: jax.Array           # [N]
    c_cres: jax.Array          # [N]
    c_rk: jax.Array            # [N, K]    (lambda_{i-1-k} - lambda_{i-1}) / h
    c_rho: jax.Array           # [N, P, K] rhos_c[:-1] for each order (zero-padded)
    c_rho_last: jax.Array      # [N, P]    rhos_c[-1] for each order


class UniPCState(NamedTuple):
    """Everything `step` carries from one step to the next; a pytree of arrays.

    `model_outputs` `[P, *shape]` float32 holds the last P x0 predictions, newest last (zeros until
    filled); `last_sample` is the (corrected) sample the last predictor started from.
    """

    model_outputs: jax.Array   # [P, *shape] float32
    last_sample: jax.Array     # [*shape] float32
    step_index: jax.Array      # [] int32, index of the next step
    lower_order_nums: jax.Array  # [] int32, steps taken so far, capped at solver_order
    last_order: jax.Array      # [] int32, order of the last predictor (= next corrector's order)
    coeffs: UniPCCoeffs


def _lambda(sigma: np.float32) -> np.float32:
    """log-SNR of a flow sigma, float32: log(1 - sigma) - log(sigma) (+inf at sigma = 0)."""
    return np.log(np.float32(1) - sigma) - np.log(sigma)


def _bh_terms(config: UniPCConfig, lambda_t, lambda_s0, order: int):
    """h, h_phi_1, B(h) and the b vector `[order]` of diffusers' bh update, in float32."""
    h = lambda_t - lambda_s0
    hh = -h  # predict_x0
    h_phi_1 = np.expm1(hh)
    h_phi_k = h_phi_1 / hh - np.float32(1)
    b_h = np.expm1(hh) if config.solver_type == "bh2" else hh
    b, factorial_i = [], 1
    for i in range(1, order + 1):
        b.append(h_phi_k * np.float32(factorial_i) / b_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - np.float32(1 / factorial_i)
    return h, h_phi_1, b_h, np.array(b, np.float32)


def _vandermonde(rks: list) -> np.ndarray:
    """R[j, k] = rks[k] ** j, float32 (diffusers stacks torch.pow(rks, j))."""
    rks = np.array(rks, np.float32)
    return np.stack([rks ** j for j in range(len(rks))]).astype(np.float32)


def _solve(a: np.ndarray, b: np.ndarray, step_index: int, order: int) -> np.ndarray:
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        raise ValueError(
            f"UniPC: singular order-{order} system at step {step_index} (diffusers' "
            "torch.linalg.solve fails there too); a final sigma of 0 needs "
            "lower_order_final=True") from None


def make_coeffs(config: UniPCConfig, sigmas: np.ndarray) -> UniPCCoeffs:
    """Host-side per-step coefficient tables from the schedule's sigmas `[N+1]` (float32 numpy)."""
    _check_supported(config)
    sig = np.asarray(sigmas, np.float32)
    n, p_max = len(sig) - 1, config.solver_order
    k_max = max(p_max - 1, 1)  # keep one (unused) slot so shapes are never empty
    f = np.float32
    tab = {name: np.zeros(n, np.float32) for name in
           ("p_cx", "p_cm0", "p_cres", "c_cx", "c_cm0", "c_cres")}
    p_rk, c_rk = np.ones((n, k_max), np.float32), np.ones((n, k_max), np.float32)
    p_rho, c_rho = np.zeros((n, p_max, k_max), np.float32), np.zeros((n, p_max, k_max), np.float32)
    c_rho_last = np.zeros((n, p_max), np.float32)
    steps = np.arange(n)
    order_cap = np.minimum(p_max, n - steps) if config.lower_order_final else np.full(n, p_max)
    with np.errstate(all="ignore"):  # sigma = 0 gives lambda = inf, as in diffusers
        lam = [_lambda(s) for s in sig]

        def fill(prefix, rk_tab, rho_tab, i, t, s0, max_order, corrector):
            """One update sigma[s0] → sigma[t]; history sigmas are sigma[s0 - k], k = 1.."""
            alpha_t = f(1) - sig[t]
            h, h_phi_1, b_h, b = _bh_terms(config, lam[t], lam[s0], p_max)
            tab[prefix + "cx"][i] = sig[t] / sig[s0]
            tab[prefix + "cm0"][i] = alpha_t * h_phi_1
            tab[prefix + "cres"][i] = alpha_t * b_h
            rks = []
            for k in range(1, min(max_order, s0 + 1)):
                rks.append((lam[s0 - k] - lam[s0]) / h)
                rk_tab[i, k - 1] = rks[-1]
            # Orders above max_order, or needing history before sigma[0], are never selected.
            for order in range(1, min(max_order, len(rks) + 1) + 1):
                if corrector:
                    if order == 1:
                        rhos = np.array([0.5], np.float32)
                    else:
                        rhos = _solve(_vandermonde(rks[:order - 1] + [f(1)]), b[:order], i, order)
                    rho_tab[i, order - 1, :order - 1] = rhos[:-1]
                    c_rho_last[i, order - 1] = rhos[-1]
                elif order == 2:
                    rho_tab[i, 1, 0] = 0.5
                elif order > 2:
                    r = _vandermonde(rks[:order - 1] + [f(1)])
                    rho_tab[i, order - 1, :order - 1] = _solve(r[:-1, :-1], b[:order - 1], i, order)

        for i in range(n):
            fill("p_", p_rk, p_rho, i, i + 1, i, order_cap[i], corrector=False)
            if i > 0:  # the corrector at step i uses the order of the predictor at step i - 1
                fill("c_", c_rk, c_rho, i, i, i - 1, order_cap[i - 1], corrector=True)

    use_corrector = np.array([i > 0 and (i - 1) not in config.disable_corrector for i in steps])
    return UniPCCoeffs(
        sigma=jnp.asarray(sig[:-1]), order_cap=jnp.asarray(order_cap, jnp.int32),
        use_corrector=jnp.asarray(use_corrector, bool),
        p_cx=jnp.asarray(tab["p_cx"]), p_cm0=jnp.asarray(tab["p_cm0"]),
        p_cres=jnp.asarray(tab["p_cres"]), p_rk=jnp.asarray(p_rk), p_rho=jnp.asarray(p_rho),
        c_cx=jnp.asarray(tab["c_cx"]), c_cm0=jnp.asarray(tab["c_cm0"]),
        c_cres=jnp.asarray(tab["c_cres"]), c_rk=jnp.asarray(c_rk), c_rho=jnp.asarray(c_rho),
        c_rho_last=jnp.asarray(c_rho_last))


def init_state(config: UniPCConfig, sigmas: np.ndarray, shape: Sequence[int], *,
               begin_index: int = 0) -> UniPCState:
    """A fresh state for a run over `sigmas` `[N+1]` with latents of `shape`.

    Args:
        begin_index: the first step to be taken (img2img starts part-way; diffusers' begin_index).
    """
    shape = tuple(shape)
    n_hist = config.solver_order
    return UniPCState(
        model_outputs=jnp.zeros((n_hist, *shape), jnp.float32),
        last_sample=jnp.zeros(shape, jnp.float32),
        step_index=jnp.asarray(begin_index, jnp.int32),
        lower_order_nums=jnp.zeros((), jnp.int32),
        last_order=jnp.ones((), jnp.int32),
        coeffs=make_coeffs(config, sigmas))


def _history_residual(history: jax.Array, m0: jax.Array, rho: jax.Array, rk: jax.Array,
                      order: jax.Array) -> jax.Array:
    """Σ_{k < order-1} rho[k] * (history[-(k+2)] - m0) / rk[k]; history `[P, ...]` newest last."""
    res = jnp.zeros_like(m0)
    for k in range(history.shape[0] - 1):
        d1 = (history[-(k + 2)] - m0) / rk[k]
        res = res + jnp.where(k < order - 1, rho[k] * d1, 0.0)  # where: unused slots may be inf
    return res


def step(state: UniPCState, model_output: jax.Array, sample: jax.Array,
         step_index: jax.Array | int | None = None) -> tuple[jax.Array, UniPCState]:
    """One UniPC step (UniC corrector on `sample`, then UniP predictor), as diffusers `step`.

    Computes in fp32 and keeps the history in fp32; returns `sample.dtype`.

    Args:
        state: from `init_state` or the previous `step`.
        model_output: the flow (velocity) prediction at `sample`, same shape.
        sample: current latents `x_{sigma[i]}`.
        step_index: i; defaults to `state.step_index` (pass it as an array or Python int: both
            trace to the same int32 scalar, so one compile serves every step).
    Returns:
        (latents at sigma[i+1], new state).
    """
    c = state.coeffs
    i = state.step_index if step_index is None else jnp.asarray(step_index, jnp.int32)
    x = sample.astype(jnp.float32)
    x0 = x - c.sigma[i] * model_output.astype(jnp.float32)  # convert_model_output, flow branch

    # UniC: correct this sample with the x0 just predicted, using last step's order.
    history = state.model_outputs
    m0 = history[-1]
    order_c = state.last_order
    corr_res = _history_residual(history, m0, c.c_rho[i, order_c - 1], c.c_rk[i], order_c)
    corrected = (c.c_cx[i] * state.last_sample - c.c_cm0[i] * m0) - c.c_cres[i] * (
        corr_res + c.c_rho_last[i, order_c - 1] * (x0 - m0))
    use_corrector = c.use_corrector[i] & (state.lower_order_nums > 0)
    x = jnp.where(use_corrector, corrected, x)

    # UniP: predict the next sample from the updated history.
    history = jnp.concatenate([history[1:], x0[None]], axis=0)
    order = jnp.minimum(c.order_cap[i], state.lower_order_nums + 1)
    pred_res = _history_residual(history, x0, c.p_rho[i, order - 1], c.p_rk[i], order)
    prev = (c.p_cx[i] * x - c.p_cm0[i] * x0) - c.p_cres[i] * pred_res

    new_state = UniPCState(
        model_outputs=history, last_sample=x, step_index=i + 1,
        lower_order_nums=jnp.minimum(state.lower_order_nums + 1, history.shape[0]),
        last_order=order, coeffs=c)
    return prev.astype(sample.dtype), new_state


def cfg(noise_cond: jax.Array, noise_uncond: jax.Array, scale: jax.Array | float) -> jax.Array:
    """Classifier-free guidance `uncond + scale * (cond - uncond)` (diffusers' Wan pipelines)."""
    return noise_uncond + scale * (noise_cond - noise_uncond)
