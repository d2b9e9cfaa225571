"""Meshes and logical-axis rules (imports jax/flax only)."""

from .rules import DEFAULT_RULES

__all__ = ["DEFAULT_RULES"]
