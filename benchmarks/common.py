"""Timing, contenders (ours / torch eager / torchax-jit) and reporting shared by the benchmarks.

Machines running benchmarks are often shared and noisy, so contenders are timed in interleaved
rounds (A, B, C, A, B, C, …) and reported by their min (the best estimate of the cost) and median.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import platform
import re
import resource
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

MIB = 1024 * 1024
OURS, EAGER, TORCHAX = "ours (Flax, jit)", "diffusers torch eager", "diffusers torchax-jit"
# max |a − b| / max |b| above which two implementations are declared different
AGREEMENT = {"float32": 1e-4, "bfloat16": 5e-2}  # a faithful fp32 port sits near 1e-6
NOISE_FLOOR_FACTOR = 10  # …or 10× the torch eager vs torchax difference, when that is larger


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (monotonic), MiB."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / 1024 if platform.system() != "Darwin" else kib / MIB


def current_rss_mib() -> float:
    """Resident set size now, MiB (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    except OSError:
        return peak_rss_mib()


def jax_device_info() -> dict[str, Any]:
    import jax

    device = jax.devices()[0]
    return {"backend": jax.default_backend(), "device_kind": device.device_kind,
            "device_count": jax.device_count(), "jax": jax.__version__}


def cpu_model() -> str:
    """The host CPU's model name (Linux /proc/cpuinfo; `platform.processor()` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(**extra: Any) -> dict[str, Any]:
    """What every benchmark records about where it ran: JAX backend, device kind and count, jax
    version, host CPU and the cores this process may use, plus `extra` (e.g. torch's version)."""
    return dict(jax_device_info(), cpu_model=cpu_model(), cpu_cores=cpu_count(), **extra)


def write_json(path: str | os.PathLike, result: Any) -> None:
    """`result` as indented JSON at `path` (parents created; non-JSON values as strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))


def jax_peak_bytes() -> int | None:
    """`peak_bytes_in_use` of the first JAX device where the backend reports it (GPU/TPU; not CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def xla_memory(compiled) -> dict[str, int] | None:
    """Arguments / outputs / temporaries (bytes) of a compiled XLA executable, when XLA reports them."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 — not every backend implements it
        return None
    if m is None:
        return None
    return {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
            "temp_bytes": int(m.temp_size_in_bytes)}


def hlo_stats(compiled) -> dict[str, float] | None:
    """What XLA says the executable costs: flops, bytes accessed, and layout-shuffling op counts.

    Transposes/copies/reverses in the optimised HLO are pure data movement; comparing them (and the
    bytes accessed) between two ports of one model shows where the slower one spends its time.
    """
    try:
        cost = compiled.cost_analysis()
        text = compiled.as_text()
    except Exception:  # noqa: BLE001 — not every backend implements it
        return None
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    stats = {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0))}
    for op in ("transpose", "copy", "reverse", "fusion", "dot"):
        stats[op] = len(re.findall(rf"\s{op}\(", text))
    return stats


@dataclasses.dataclass
class Contender:
    """One implementation under test: `step()` runs one forward and returns once the result is ready."""

    name: str
    step: Callable[[], Any]
    compile_s: float | None = None  # trace + lower + compile, where there is a compile step
    memory: dict[str, Any] = dataclasses.field(default_factory=dict)
    hlo: dict[str, float] | None = None  # hlo_stats of a compiled XLA executable
    times: list[float] = dataclasses.field(default_factory=list)

    @property
    def min_s(self) -> float:
        return min(self.times)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved_rounds(contenders: Sequence[Contender], rounds: int, *, warmup: int = 1,
                       pause_s: float = 0.05, log: Callable[[str], None] | None = None) -> None:
    """Runs every contender once per round, in turn, for `warmup` untimed then `rounds` timed rounds.

    `pause_s` (untimed) separates contenders so that one's worker threads still spinning after
    its step (torch's OpenMP pool, XLA's) do not steal cores from the next one's.
    """
    for _ in range(warmup):
        for c in contenders:
            c.step()
    gc.collect()
    gc.disable()  # a collection landing inside one contender's step would bias it
    try:
        for r in range(rounds):
            for c in contenders:
                time.sleep(pause_s)
                dt, _ = timed(c.step)
                c.times.append(dt)
            if log:
                log(f"round {r + 1}/{rounds}: " + ", ".join(f"{c.name} {c.times[-1] * 1e3:.1f} ms"
                                                          for c in contenders))
    finally:
        gc.enable()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([fmt(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [fmt(r) for r in cells[1:]])


def ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.1f}"


def mib(n_bytes: int | float | None) -> str:
    return "–" if n_bytes is None else f"{n_bytes / MIB:.1f}"


# ----------------------------------------------------------------------------- contenders


def jax_inputs(inputs: dict, jax_dtype) -> dict:
    """numpy forward kwargs → jax arrays: floating ones in `jax_dtype`, integer ones (token ids,
    masks) as they are; None stays None."""
    import jax.numpy as jnp

    return {k: None if v is None else jnp.asarray(v, jax_dtype if np.issubdtype(v.dtype, np.floating) else None)
            for k, v in inputs.items()}


def torch_inputs(inputs: dict, torch_dtype, device) -> dict:
    """numpy forward kwargs → torch tensors on `device`: floating ones in `torch_dtype`, integer ones
    as int64 (what torch embeddings take); None stays None."""
    import torch

    return {k: None if v is None else torch.from_numpy(v).to(
                device=device, dtype=torch_dtype if np.issubdtype(v.dtype, np.floating) else torch.int64)
            for k, v in inputs.items()}


def jitted_flax_contender(name: str, build, torch_model, inputs, jax_dtype,
                          ignore_keys: tuple[str, ...] = ()) -> tuple[Contender, Any]:
    """Our nnx module (`build(rngs)`, built abstractly) with the torch model's weights, jitted;
    `ignore_keys` are state-dict keys that are no parameter of ours (tied aliases)."""
    import jax
    from flax import nnx

    from jaxdiff.convert.place import load_state_dict

    # abstract first: no random init to throw away (time, and a second copy of the weights)
    model = nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    load_state_dict(model, {k: v.detach().float().cpu().numpy() for k, v in torch_model.state_dict().items()
                            if k not in ignore_keys},
                    source=f"torch {type(torch_model).__name__}", dtype=jax_dtype)
    graphdef, state = nnx.split(model)
    del model

    def forward(state, kw):
        return nnx.merge(graphdef, state)(**kw)

    kwargs = jax_inputs(inputs, jax_dtype)
    compile_s, compiled = timed(lambda: jax.jit(forward).lower(state, kwargs).compile())
    step = lambda: compiled(state, kwargs).block_until_ready()
    c = Contender(name, step, compile_s=compile_s, memory={"xla": xla_memory(compiled)},
                  hlo=hlo_stats(compiled))
    return c, step()


def torchax_contender(torch_model, inputs, jax_dtype, name: str = TORCHAX) -> tuple[Contender, Any]:
    """The diffusers (or transformers) module traced by torchax (`extract_jax`), jitted."""
    import jax
    import torchax

    with warnings.catch_warnings():  # torchax asks for 64-bit dtypes that x64-less JAX truncates
        warnings.filterwarnings("ignore", message="Explicitly requested dtype (float64|int64)")
        weights, fn = torchax.extract_jax(torch_model)

        def forward(weights, kw):
            return fn(weights, (), dict(kw, return_dict=False))[0]  # return_dict: static Python value

        kwargs = jax_inputs(inputs, jax_dtype)
        compile_s, compiled = timed(lambda: jax.jit(forward).lower(weights, kwargs).compile())
    step = lambda: compiled(weights, kwargs).block_until_ready()
    c = Contender(name, step, compile_s=compile_s, memory={"xla": xla_memory(compiled)},
                  hlo=hlo_stats(compiled))
    return c, step()


def eager_contender(torch_model, inputs, torch_dtype, device, name: str = EAGER) -> tuple[Contender, Any]:
    import torch

    kwargs = torch_inputs(inputs, torch_dtype, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        with torch.inference_mode():
            out = torch_model(**kwargs, return_dict=False)[0]
        sync()
        return out

    return Contender(name, step), step()


def agreement(outputs: dict[str, np.ndarray], dtype: str) -> list[dict[str, Any]]:
    """Max abs / relative diffs of ours (the first output) against each reference path (judged), and
    between two reference paths (not judged: the same torch module on two backends, i.e. the noise
    floor)."""
    names = list(outputs)
    pairs = [(names[0], other, names[0] == OURS) for other in names[1:]]
    if len(names) == 3:
        pairs.append((names[1], names[2], False))
    rows = []
    for a_name, b_name, judged in pairs:
        a, b = outputs[a_name].astype(np.float64), outputs[b_name].astype(np.float64)
        max_abs = float(np.abs(a - b).max())
        rel = max_abs / max(float(np.abs(b).max()), 1e-30)
        rows.append({"a": a_name, "b": b_name, "max_abs": max_abs, "rel": rel, "judged": judged})
    floor = max([r["rel"] for r in rows if not r["judged"]], default=0.0)
    limit = max(AGREEMENT[dtype], NOISE_FLOOR_FACTOR * floor)  # big models: noise grows with depth
    for r in rows:
        r["limit"] = limit
        r["ok"] = bool(r["rel"] <= limit) or not r["judged"]  # NaN fails
    return rows
