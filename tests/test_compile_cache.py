"""The persistent compile cache: where it lives, how it is turned off, and that `jaxdiff generate`
writes entries on a cold run and reports a warm compile (a persistent-cache hit) on the second run.
Checks cache entries and hit counts, never wall time."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import pytest

from jaxdiff import cli
from jaxdiff.pipelines import compile_cache
from jaxdiff.pipelines.compile_cache import (cache_dir_in_use, default_cache_dir,
                                             enable_compile_cache, track_compiles)


@pytest.fixture(autouse=True)
def cache_off_afterwards(monkeypatch):
    """Leave the process as tests/conftest.py sets it up: cache off."""
    monkeypatch.setattr(cli, "COMMANDS", {"generate": cli.COMMANDS["generate"]})
    yield
    enable_compile_cache("off")


def test_default_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXDIFF_COMPILE_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    for off in ("off", "0", "false", "none", ""):
        monkeypatch.setenv("JAXDIFF_COMPILE_CACHE", off)
        assert default_cache_dir() is None
    monkeypatch.delenv("JAXDIFF_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "jaxdiff" / "xla"


def test_enable_and_disable(tmp_path):
    assert enable_compile_cache(tmp_path / "cache") == tmp_path / "cache"
    assert cache_dir_in_use() == tmp_path / "cache" and (tmp_path / "cache").is_dir()
    assert enable_compile_cache("off") is None
    assert cache_dir_in_use() is None


def test_track_compiles_sees_a_compile_then_none(tmp_path):
    enable_compile_cache("off")

    @jax.jit
    def f(x):
        return jnp.sin(x) * 2

    with track_compiles() as first:
        f(jnp.ones(3)).block_until_ready()
    with track_compiles() as second:
        f(jnp.ones(3)).block_until_ready()
    assert first.compiles >= 1 and first.status == "cold" and first.seconds > 0
    assert first.cache_requests == 0  # the cache is off
    assert second.compiles == 0 and second.status == "cached"


def _generate(out, *flags) -> int:
    return cli.main(["generate", "--out", str(out), "--steps", "1", "--height", "32", "--width", "32",
                     *flags])


def _compile_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("compiled denoise step")]
    assert len(lines) == 1, err
    assert re.search(r" in \d+\.\d\d s \(", lines[0]), lines[0]
    return lines[0]


def test_second_generate_run_is_a_warm_compile(monkeypatch, tmp_path, capsys):
    # tiny programs compile fast: write every entry, so the test does not hinge on machine speed
    monkeypatch.setattr(compile_cache, "enable_compile_cache",
                        functools.partial(enable_compile_cache, min_compile_seconds=0))
    cache = tmp_path / "xla"
    assert _generate(tmp_path / "a.png", "--compile-cache", str(cache)) == 0
    first = _compile_line(capsys.readouterr().err)
    assert "cold" in first and str(cache) in first
    entries = [p.name for p in cache.iterdir()]
    assert any("denoise_step" in name for name in entries), entries
    assert _generate(tmp_path / "b.png", "--compile-cache", str(cache)) == 0
    second = _compile_line(capsys.readouterr().err)
    assert "warm: persistent compile cache hit" in second


def test_environment_variable_sets_the_cli_cache(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("JAXDIFF_COMPILE_CACHE", str(tmp_path / "env"))
    monkeypatch.setattr(compile_cache, "enable_compile_cache",
                        functools.partial(enable_compile_cache, min_compile_seconds=0))
    assert _generate(tmp_path / "a.png") == 0
    assert str(tmp_path / "env") in _compile_line(capsys.readouterr().err)
    assert any((tmp_path / "env").iterdir())


def test_compile_cache_off(tmp_path, capsys):
    assert _generate(tmp_path / "a.png", "--compile-cache", "off") == 0
    line = _compile_line(capsys.readouterr().err)
    assert "cold" in line and "compile cache off" in line
    assert cache_dir_in_use() is None
