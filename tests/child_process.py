"""Running a test child script in its own process (for XLA_FLAGS that must be set before jax is
imported, e.g. 8 fake CPU devices) and reading the one `RESULT {json}` line it prints."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys


def run_child(script: pathlib.Path, *args: str, timeout: int = 900) -> dict:
    """Run `python script *args` without the parent's XLA_FLAGS; assert it succeeded and printed
    exactly one `RESULT ` line; return that line's JSON."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    res = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stderr[-4000:]
    lines = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, res.stdout[-2000:]
    return json.loads(lines[0][len("RESULT "):])
