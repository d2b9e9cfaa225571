"""Place torch-named tensors into a Flax nnx module (the last step of read → rename → transform → place).

A torch key `a.b.0.c.weight` names our parameter path `('a', 'b', 0, 'c', 'kernel' | 'scale')`;
see models_flax/layers.py for the layout conventions this relies on.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

MAX_LISTED = 5


def key_to_path(key: str) -> tuple[str | int, ...]:
    """`'blocks.0.attn.to_q.weight'` → `('blocks', 0, 'attn', 'to_q', 'weight')`."""
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def path_to_key(path: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in path)


def to_flax_layout(leaf: str, array: np.ndarray) -> np.ndarray:
    """torch layout → ours for a parameter named `leaf` (kernel: [out,in]→[in,out], O I *k → *k I O)."""
    if leaf != "kernel" or array.ndim < 2:
        return array
    if array.ndim == 2:
        return array.T
    return np.transpose(array, tuple(range(2, array.ndim)) + (1, 0))


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" … and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def resolve_path(key: str, targets: Mapping[tuple, object]) -> tuple | None:
    """Our parameter path for a torch key, or None when the module has no such parameter."""
    path = key_to_path(key)
    if path in targets:
        return path
    if path[-1] == "weight":
        for leaf in ("kernel", "scale"):
            candidate = path[:-1] + (leaf,)
            if candidate in targets:
                return candidate
    return None


def param_targets(module: nnx.Module) -> dict[tuple, nnx.Variable]:
    """Flat `{path: Variable}` of the module's parameters."""
    _, state = nnx.split(module, nnx.Param)
    return {tuple(p): v for p, v in nnx.to_flat_state(state)}


def load_state_dict(module: nnx.Module, tensors: Mapping[str, np.ndarray], *,
                    source: str = "state dict", dtype=None) -> None:
    """Copy torch-named `tensors` into `module` in place; every parameter must be set exactly once.

    Raises ValueError naming unexpected keys, missing parameters or shape mismatches.
    """
    targets = param_targets(module)
    unexpected, mismatched, seen = [], [], set()
    for key, array in tensors.items():
        path = resolve_path(key, targets)
        if path is None:
            unexpected.append(key)
            continue
        value = to_flax_layout(str(path[-1]), np.asarray(array))
        var = targets[path]
        if tuple(value.shape) != tuple(var.shape):
            mismatched.append(f"{key}: checkpoint {tuple(np.asarray(array).shape)} → "
                              f"{tuple(value.shape)} vs model {tuple(var.shape)}")
            continue
        var.value = jnp.asarray(value, dtype=dtype or var.dtype)
        seen.add(path)
    missing = [path_to_key(p) for p in targets if p not in seen]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing parameter(s): {_listing(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems:
        raise ValueError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
