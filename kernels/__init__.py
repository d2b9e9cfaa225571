"""Attention kernels and their backend dispatch (imports jax only)."""

from .attention import attention, xla_attention

__all__ = ["attention", "xla_attention"]
