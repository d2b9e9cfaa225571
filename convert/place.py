"""Place torch-named tensors into a Flax nnx module (the last step of read → rename → transform → place).

A torch key `a.b.0.c.weight` names our parameter path `('a', 'b', 0, 'c', 'kernel' | 'scale' |
'embedding')`; see models_flax/layers.py for the layout conventions this relies on.

Two ways in: `load_state_dict(module, tensors)` copies a dict into a materialised module (tests);
`plan_placement` + `fill` check a whole checkpoint against an *abstract* model (`nnx.eval_shape`)
from shapes alone, then fill its parameters unit by unit (a block at a time), optionally straight onto
a mesh — so loading never allocates random weights and errors surface before any data is read.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..sharding.mesh import named_shardings

MAX_LISTED = 5
WEIGHT_LEAVES = ("kernel", "scale", "embedding")  # our leaf names for a torch `weight`


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


def flax_shape(leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape `to_flax_layout` gives an array of torch `shape` (no data touched)."""
    shape = tuple(shape)
    if leaf != "kernel" or len(shape) < 2:
        return shape
    if len(shape) == 2:
        return shape[::-1]
    return shape[2:] + (shape[1], shape[0])


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" … and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def resolve_path(key: str, targets: Mapping[tuple, object]) -> tuple | None:
    """Our parameter path for a torch key, or None when the module has no such parameter.

    A torch `<m>.weight` is our `kernel` (Linear / Conv, transposed by `to_flax_layout`), `scale`
    (norms) or `embedding` (`nn.Embedding`, `[vocab, dim]` as stored)."""
    path = key_to_path(key)
    if path in targets:
        return path
    if path[-1] == "weight":
        for leaf in WEIGHT_LEAVES:
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
        var.set_value(jnp.asarray(value, dtype=dtype or var.dtype))
        seen.add(path)
    missing = [path_to_key(p) for p in targets if p not in seen]
    _raise_problems(source, type(module).__name__, unexpected, missing, mismatched)


Path = tuple[str | int, ...]


def unit_of(path: Path) -> Path:
    """The piece a parameter is converted, saved and loaded with: its path up to and including the
    first list index (`transformer_blocks.3`, `encoder.block.3`, `text_model.encoder.layers.5`,
    `encoder.down_blocks.0`), else its top-level module (`x_embedder`, `shared`; a top-level
    parameter such as Wan's `scale_shift_table` is its own unit)."""
    for i, part in enumerate(path):
        if isinstance(part, int):
            return path[:i + 1]
    return path[:1]


def _raise_problems(source: str, model: str, unexpected: list[str], missing: list[str],
                    mismatched: list[str], missing_what: str = "parameter(s)") -> None:
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(sorted(unexpected))}")
    if missing:
        problems.append(f"{len(missing)} missing {missing_what}: {_listing(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems:
        raise ValueError(f"{source} does not fit {model}: " + "; ".join(problems))


def plan_placement(shapes: Mapping[str, tuple[int, ...]], params: Mapping[Path, nnx.Variable], *,
                   unknown: Iterable[str] = (), missing_keys: Iterable[str] = (),
                   source: str = "checkpoint", model: str = "model") -> dict[Path, str]:
    """Match torch-named tensor `shapes` to abstract `params`: `{param_path: torch_key}`.

    `unknown` are source keys the rename step could not map; `missing_keys` are source keys the
    rename step expected but did not find (named instead of the parameters they would have filled).
    Raises ValueError listing unexpected keys, missing keys/parameters and shape mismatches (a few of
    each, then a count).
    """
    unexpected, mismatched, placed = list(unknown), [], {}
    for key, shape in shapes.items():
        path = resolve_path(key, params)
        if path is None:
            unexpected.append(key)
            continue
        want, got = tuple(params[path].shape), flax_shape(str(path[-1]), shape)
        if want != got:
            mismatched.append(f"{key}: checkpoint {tuple(shape)} → {got} vs model {want}")
            continue
        placed[path] = key
    missing_keys = sorted(missing_keys)
    missing = missing_keys or [path_to_key(p) for p in params if p not in placed]
    _raise_problems(source, model, unexpected, missing, mismatched,
                    missing_what="key(s)" if missing_keys else "parameter(s)")
    return placed


def partition_shardings(state: nnx.State, mesh: jax.sharding.Mesh,
                        rules) -> dict[Path, jax.sharding.NamedSharding]:
    """`{param_path: NamedSharding}` from the parameters' logical axis names and `rules`: the same
    placement as `sharding.shard_module` (absent or non-dividing mesh axes replicate; FSDP fallback)."""
    return {tuple(p): s for p, s in named_shardings(state, mesh, rules).items()}


def fill(params: Mapping[Path, nnx.Variable], arrays: Iterable[tuple[Path, np.ndarray]],
         shardings: Mapping[Path, jax.sharding.Sharding] | None = None) -> None:
    """Set each abstract parameter from `(path, array)` pairs (already in our layout), casting to the
    parameter's dtype and placing it with its sharding when given."""
    for path, array in arrays:
        var = params[path]
        array = np.asarray(array).astype(var.dtype, copy=False)
        if shardings is not None:
            var.set_value(jax.device_put(array, shardings[path]))
        else:
            var.set_value(jnp.asarray(array))
