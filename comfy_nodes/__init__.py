"""ComfyUI node adapters (thin: ComfyUI types in, numpy/jax in the middle, ComfyUI types out).

The only place that may import `comfy.*`. `nodes.py` declares the nodes (importable without jax);
`loading.py`, `model.py`, `vae.py`, `sampler.py` do the work over the library (pipelines.denoiser,
pipelines.codec); `registry.py` caches loaded models with explicit release.

Importing this package (ComfyUI does it at start-up, through the root `__init__`) sets
`XLA_PYTHON_CLIENT_PREALLOCATE=false` before jax is first imported, so JAX takes GPU memory as it needs
it beside torch instead of 75 % up front, and hooks `comfy.model_management.unload_all_models` (ComfyUI's
"free memory" / unload) so JAX device memory is released with it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

log = logging.getLogger("jaxdiff")

if "jax" in sys.modules:
    log.warning("jaxdiff: jax was imported before the jaxdiff nodes; XLA_PYTHON_CLIENT_PREALLOCATE=false "
                "may come too late (JAX may preallocate 75%% of GPU memory)")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402


def _hook_unload() -> None:
    """Release every JAX model when ComfyUI unloads all models."""
    import comfy.model_management as mm

    if getattr(mm.unload_all_models, "_jaxdiff", False):
        return
    original = mm.unload_all_models

    def unload_all_models(*args, **kwargs):
        out = original(*args, **kwargs)
        from . import registry

        registry.release_all()
        return out

    unload_all_models._jaxdiff = True
    mm.unload_all_models = unload_all_models


_hook_unload()

try:
    _has_jax = importlib.util.find_spec("jax") is not None
except (ImportError, ValueError):
    _has_jax = False
if not _has_jax:
    from .nodes import INSTALL_HINT

    log.warning("jaxdiff: JAX is not installed; the jaxdiff nodes are listed but cannot run. %s", INSTALL_HINT)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
