"""`jaxdiff bench --torch` without torch installed fails up front with the extra to install."""

from __future__ import annotations

import subprocess
import sys

WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ModuleNotFoundError, as when it is absent
from jaxdiff.cli import main
code = main(["bench", "--torch", "--quiet"])
print("jax imported:", "jax" in sys.modules)
sys.exit(code)
"""


def test_bench_torch_without_torch_is_a_one_line_error_before_anything_runs():
    res = subprocess.run([sys.executable, "-c", WITHOUT_TORCH], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in res.stderr
    assert err[0].startswith("jaxdiff bench: error: --torch")
    assert "pip install 'jaxdiff[verify]'" in err[0]
    assert res.stdout.strip() == "jax imported: False"  # nothing was built or timed
