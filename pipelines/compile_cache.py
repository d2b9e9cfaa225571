"""Persistent XLA compilation cache: on by default for the CLI and the node pack, in a user cache dir.

Where: `$JAXDIFF_COMPILE_CACHE` if set (a directory; `off`, `0`, `false`, `none` or empty disables),
else `$XDG_CACHE_HOME/jaxdiff/xla`, else `~/.cache/jaxdiff/xla`. The second run of the same model at the
same shape, dtype and mesh then skips XLA compilation (seconds to minutes for full-size models) and only
pays tracing. Entries are keyed by jax/XLA version, program and device kind, so stale entries are never
used; delete the directory to reclaim space.

Library users opt in with `jaxdiff.enable_compile_cache()`; `jaxdiff generate`/`bench` call it for them
(`--compile-cache DIR|off`). `track_compiles()` reports what a block of code compiled and whether the
persistent cache served it (cold / warm), which the pipelines record per run. Imports jax only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax

ENV = "JAXDIFF_COMPILE_CACHE"
OFF = ("off", "0", "false", "no", "none", "")
# Programs compiling faster than this are not written (eager primitives, tiny helpers); the model
# steps this cache exists for take seconds.
DEFAULT_MIN_COMPILE_SECONDS = 0.2


def default_cache_dir() -> Path | None:
    """The cache directory from the environment (None when `$JAXDIFF_COMPILE_CACHE` disables it)."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in OFF else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jaxdiff" / "xla"


def enable_compile_cache(path: str | os.PathLike | None = None, *,
                         min_compile_seconds: float = DEFAULT_MIN_COMPILE_SECONDS) -> Path | None:
    """Turn the persistent cache on at `path` (None = `default_cache_dir()`; "off" disables).

    Returns the directory in use, or None when disabled. Safe to call again: a new directory replaces the
    old one for later compilations. An unwritable directory gives a warning on stderr and no cache, not
    an error (a cache must never stop a run).
    """
    if path is not None and str(path).strip().lower() in OFF:
        directory = None
    else:
        directory = default_cache_dir() if path is None else Path(path).expanduser()
    from jax.experimental.compilation_cache import compilation_cache

    if directory is None:
        jax.config.update("jax_enable_compilation_cache", False)
        compilation_cache.reset_cache()  # forget an earlier directory
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        import sys

        print(f"jaxdiff: compile cache disabled, cannot create {directory}: {exc}", file=sys.stderr)
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()  # the next compilation opens the (new) directory
    return directory


def cache_dir_in_use() -> Path | None:
    """The directory the cache writes to now, or None when it is off."""
    if not jax.config.jax_enable_compilation_cache or not jax.config.jax_compilation_cache_dir:
        return None
    return Path(jax.config.jax_compilation_cache_dir)


def timed_compile(fn: Callable, *args, **kwargs) -> tuple[Any, float]:
    """`(compiled, seconds)` for `jax.jit(fn).lower(*args, **kwargs).compile()` (fn may be jitted
    already), tracing and lowering included. jax's in-memory caches are cleared first, so the time is what
    a new process pays: a cold compile, or a warm one when the persistent cache holds the program."""
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    jax.clear_caches()
    start = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - start


# ----------------------------------------------------------------------------- what a call compiled

# jax.monitoring events (jax/_src/dispatch.py, compiler.py): spans of tracing, lowering and XLA compile
# (the last includes a persistent-cache load), and the persistent cache's lookups and hits.
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_COMPILE_SPANS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration", _BACKEND_COMPILE)
_CACHE_REQUEST = "/jax/compilation_cache/compile_requests_use_cache"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CompileStats:
    """What jax compiled inside a `track_compiles()` block.

    seconds: wall time spent tracing, lowering and compiling (or loading from the persistent cache),
      nested spans counted once; execution is not included.
    compiles: XLA programs built or loaded; cache_requests: how many of those consulted the persistent
      cache; cache_hits: how many it served.
    """

    seconds: float = 0.0
    compiles: int = 0
    cache_requests: int = 0
    cache_hits: int = 0
    _spans: list = dataclasses.field(default_factory=list, repr=False)

    @property
    def status(self) -> str:
        """"cached" (nothing compiled: in memory already), "warm" (every program came from the
        persistent cache), "cold" (XLA compiled something)."""
        if self.compiles == 0:
            return "cached"
        return "warm" if self.cache_hits == self.compiles else "cold"

    def __add__(self, other: "CompileStats") -> "CompileStats":
        out = CompileStats(compiles=self.compiles + other.compiles,
                           cache_requests=self.cache_requests + other.cache_requests,
                           cache_hits=self.cache_hits + other.cache_hits,
                           _spans=self._spans + other._spans)
        out.seconds = _union_length(out._spans)
        return out

    def describe(self) -> str:
        """One line for logs, e.g. `12.3 s (cold: XLA compiled 1 program, written to the cache)`."""
        cache = cache_dir_in_use()
        if self.status == "cached":
            return f"{self.seconds:.2f} s (already compiled in this process)"
        if self.status == "warm":
            return f"{self.seconds:.2f} s (warm: persistent compile cache hit, {cache})"
        where = f"compile cache {cache}" if cache is not None else "compile cache off"
        return f"{self.seconds:.2f} s (cold: XLA compiled {self.compiles - self.cache_hits} " \
               f"program(s); {where})"


def _union_length(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


@contextlib.contextmanager
def track_compiles() -> Iterator[CompileStats]:
    """Count what jax traces/compiles in the block (from `jax.monitoring` events); the yielded
    `CompileStats` is filled in when the block exits. Not thread-aware: compilations by other threads
    during the block are counted too."""
    from jax import monitoring

    stats = CompileStats()

    def on_span(event, start, end, **kwargs):
        if event in _COMPILE_SPANS:
            stats._spans.append((start, end))
        if event == _BACKEND_COMPILE:
            stats.compiles += 1

    def on_event(event, **kwargs):
        if event == _CACHE_REQUEST:
            stats.cache_requests += 1
        elif event == _CACHE_HIT:
            stats.cache_hits += 1

    monitoring.register_event_time_span_listener(on_span)
    monitoring.register_event_listener(on_event)
    try:
        yield stats
    finally:
        monitoring.unregister_event_time_span_listener(on_span)
        monitoring.unregister_event_listener(on_event)
        stats.seconds = _union_length(stats._spans)
