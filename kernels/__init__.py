"""Attention kernels and their backend dispatch (imports jax only).

`splash_attention` (TPU Pallas kernel, kernels/splash.py) is loaded on first access: importing Pallas
costs about half a second, which non-TPU users need not pay.
"""

from .attention import attention, xla_attention

__all__ = ["attention", "splash_attention", "xla_attention"]


def __getattr__(name):
    if name == "splash_attention":
        from .splash import splash_attention
        return splash_attention
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
