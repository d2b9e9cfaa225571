"""Attention kernels and their backend dispatch (imports jax only).

`splash_attention` (TPU Pallas kernel, kernels/splash.py) is loaded on first access: importing Pallas
costs about half a second, which non-TPU users need not pay. `attention_options(...)` chooses the
kernel and sequence parallelism (Ulysses / ring, kernels/sequence_parallel.py) for code traced inside it.
"""

from .attention import AttentionOptions, attention, attention_options, current_options, xla_attention

__all__ = ["AttentionOptions", "attention", "attention_options", "current_options", "splash_attention",
           "xla_attention"]


def __getattr__(name):
    if name == "splash_attention":
        from .splash import splash_attention
        return splash_attention
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
