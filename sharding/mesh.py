"""Device meshes and parameter placement from logical axis names. Imports jax/flax only.

- `parse_mesh_spec("data=1,fsdp=4,tensor=2,seq=1")` → `{"data": 1, "fsdp": 4, "tensor": 2, "seq": 1}`.
- `make_mesh(spec, devices=None)` → a `jax.sharding.Mesh` with Auto axis types (GSPMD-style
  propagation from annotated inputs/params; `jax.make_mesh` defaults to Explicit here), checked
  against the device count; one axis may be `-1` ("the rest of the devices").
- `auto_axes(mesh)`: the same mesh with Auto axis types. Every function here that places or
  annotates by a mesh applies it, so a mesh from plain `jax.make_mesh` (Explicit axes, under which a
  sharded contraction is a type error) works like one from `make_mesh`.
- `partition_specs` / `named_shardings` / `logical_sharding`: logical names (`embed`, `heads`, …,
  see rules.py) → mesh `PartitionSpec`s, dropping mesh axes the mesh lacks and axes that do not
  divide a dimension (that dimension is then replicated); matrices the rules leave off `fsdp` are
  sharded over it along a dimension it divides (rules.FSDP_FALLBACK_AXIS).
- `shard_module(module, mesh, rules)` puts an nnx module's variables onto the mesh in place.
- `maybe_initialize_distributed(flag)`: `jax.distributed.initialize()` behind a flag (multi-host).
"""

from __future__ import annotations

import math
import os
import re
from typing import Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from .rules import DEFAULT_RULES, FSDP_FALLBACK_AXIS, FSDP_FALLBACK_MIN_NDIM

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor", "seq")
FILL = -1
DISTRIBUTED_ENV = "JAXDIFF_DISTRIBUTED"

Rules = Sequence[tuple[str, "str | tuple[str, ...] | None"]]
Path = tuple["str | int", ...]

_ITEM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*[=:]\s*([+-]?\d+)\s*$")


# ----------------------------------------------------------------------------- meshes


def parse_mesh_spec(spec: str) -> dict[str, int]:
    """`"data=1,fsdp=4,tensor=2,seq=1"` → `{"data": 1, "fsdp": 4, "tensor": 2, "seq": 1}` (order kept).

    Axis names must be among `MESH_AXES`; sizes are positive integers, or `-1` for at most one axis
    (filled from the device count by `make_mesh`). Raises ValueError on bad syntax, unknown or
    repeated names, and non-positive sizes.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty mesh spec {spec!r}; expected e.g. 'data=1,fsdp=4,tensor=2,seq=1'")
    sizes: dict[str, int] = {}
    for item in spec.split(","):
        match = _ITEM.match(item)
        if match is None:
            raise ValueError(f"bad mesh spec item {item.strip()!r} in {spec!r}: expected NAME=SIZE, "
                             "e.g. 'data=1,fsdp=4,tensor=2,seq=1'")
        sizes[_check_name(match.group(1), sizes, spec)] = int(match.group(2))
    return _check_sizes(sizes, spec)


def _check_name(name: str, seen: Mapping[str, int], spec) -> str:
    if name not in MESH_AXES:
        raise ValueError(f"unknown mesh axis {name!r} in {spec!r}; known axes: {', '.join(MESH_AXES)}")
    if name in seen:
        raise ValueError(f"mesh axis {name!r} given twice in {spec!r}")
    return name


def _check_sizes(sizes: dict[str, int], spec) -> dict[str, int]:
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int):
            raise ValueError(f"mesh axis {name!r} size must be an integer, got {size!r} in {spec!r}")
        if size <= 0 and size != FILL:
            raise ValueError(f"mesh axis {name!r} has size {size} in {spec!r}; sizes must be positive "
                             f"(or {FILL} for one axis to fill the remaining devices)")
    if sum(size == FILL for size in sizes.values()) > 1:
        raise ValueError(f"at most one mesh axis may be {FILL} in {spec!r}")
    return sizes


def _format(sizes: Mapping[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sizes.items())


def resolve_mesh_shape(spec: str | Mapping[str, int], n_devices: int) -> dict[str, int]:
    """Parse/validate `spec` and fill a `-1` axis so that the sizes multiply to `n_devices`."""
    if isinstance(spec, str):
        sizes = parse_mesh_spec(spec)
    elif isinstance(spec, Mapping):
        if not spec:
            raise ValueError("empty mesh spec {}; expected e.g. {'fsdp': 4, 'tensor': 2}")
        sizes = {}
        for name, size in spec.items():
            sizes[_check_name(name, sizes, dict(spec))] = size
        sizes = _check_sizes(sizes, dict(spec))
    else:
        raise TypeError(f"mesh spec must be a string or a mapping, got {type(spec).__name__}")
    known = math.prod(v for v in sizes.values() if v != FILL)
    fill = [k for k, v in sizes.items() if v == FILL]
    if fill:
        if n_devices % known:
            raise ValueError(f"mesh {_format(sizes)}: the fixed axes use {known} devices, which does not "
                             f"divide the {n_devices} available")
        sizes[fill[0]] = n_devices // known
    elif known != n_devices:
        raise ValueError(f"mesh {_format(sizes)} needs {known} devices (the product of its sizes), but "
                         f"{n_devices} are available; change the sizes or set one axis to {FILL}")
    return sizes


def make_mesh(spec: str | Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all of `jax.devices()`) with Auto axis types.

    `spec` is a string for `parse_mesh_spec` or a `{axis: size}` mapping; axes keep their given order
    (the last varies fastest over the device list, so put `tensor` last for the closest devices).
    The sizes must multiply to the device count; one axis may be `-1` to take what is left.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(spec, len(devices))
    names, shape = tuple(sizes), tuple(sizes.values())
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names), devices=devices)


def auto_axes(mesh: Mesh) -> Mesh:
    """`mesh` (same devices and axis names) with every axis of type Auto; `mesh` itself when it is.

    Our parameter shardings and activation annotations are GSPMD-style hints; on Explicit axes (what
    `jax.make_mesh` gives by default) jax instead types every array by its sharding and refuses a
    matmul whose contracting dimension is sharded, so meshes are converted where they enter.
    """
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return mesh.update(axis_types=(AxisType.Auto,) * len(mesh.axis_names))


# ----------------------------------------------------------------------------- logical → mesh


def _as_tuple(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def fit_spec(spec: PartitionSpec, mesh: Mesh, shape: Sequence[int] | None = None) -> PartitionSpec:
    """`spec` restricted to what `mesh` can do for an array of `shape`.

    Drops mesh axes the mesh lacks or has with size 1 (they split nothing, and would hide the dimension
    from the FSDP fallback), axes already used by an earlier dimension, and (when `shape` is
    given) axes whose size does not divide the dimension, the last axis named first (so the dimension
    keeps the longest dividing prefix, or is replicated).
    """
    used: set[str] = set()
    entries = []
    for dim, entry in enumerate(tuple(spec)):
        names = [n for n in _as_tuple(entry) if n in mesh.shape and mesh.shape[n] > 1 and n not in used]
        if shape is not None and dim < len(shape):
            while names and shape[dim] % math.prod(mesh.shape[n] for n in names):
                names.pop()
        used.update(names)
        entries.append(None if not names else names[0] if len(names) == 1 else tuple(names))
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def add_fallback_axis(spec: PartitionSpec, mesh: Mesh, shape: Sequence[int],
                      axis: str | None = FSDP_FALLBACK_AXIS,
                      min_ndim: int = FSDP_FALLBACK_MIN_NDIM) -> PartitionSpec:
    """`spec` plus mesh `axis` on the largest unsharded dimension it divides, when `spec` does not
    use `axis` yet and the array has rank ≥ `min_ndim` (see rules.FSDP_FALLBACK_AXIS)."""
    if axis is None or axis not in mesh.shape or mesh.shape[axis] == 1 or len(shape) < min_ndim:
        return spec
    entries = list(tuple(spec)) + [None] * (len(shape) - len(tuple(spec)))
    if any(axis in _as_tuple(e) for e in entries):
        return spec
    free = [d for d, e in enumerate(entries) if e is None and shape[d] % mesh.shape[axis] == 0]
    if not free:
        return spec
    entries[max(free, key=lambda d: (shape[d], -d))] = axis
    return fit_spec(PartitionSpec(*entries), mesh, shape)


def logical_to_mesh_spec(axes: Sequence[str | None], mesh: Mesh, rules: Rules = DEFAULT_RULES,
                         shape: Sequence[int] | None = None) -> PartitionSpec:
    """Logical axis names (e.g. `("batch", "seq", "embed")`) → a `PartitionSpec` on `mesh`."""
    table = dict(rules)
    unknown = [a for a in axes if a is not None and a not in table]
    if unknown:
        raise ValueError(f"logical axis name(s) {unknown} have no rule; known: {sorted(table)}")
    return fit_spec(PartitionSpec(*(None if a is None else table[a] for a in axes)), mesh, shape)


def logical_sharding(axes: Sequence[str | None], mesh: Mesh, rules: Rules = DEFAULT_RULES,
                     shape: Sequence[int] | None = None) -> NamedSharding:
    """`NamedSharding` for an activation with logical `axes`, e.g. inputs `("batch", None, None)`."""
    return NamedSharding(auto_axes(mesh), logical_to_mesh_spec(axes, mesh, rules, shape))


def partition_specs(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
                    fallback_axis: str | None = FSDP_FALLBACK_AXIS) -> dict[Path, PartitionSpec]:
    """`{path: PartitionSpec}` for every variable in `state` (concrete or from `nnx.eval_shape`).

    Logical names come from the variables' `out_sharding` metadata (models_flax `layers.param`);
    variables without names are replicated. See `fit_spec` for what is dropped and
    `add_fallback_axis` for the FSDP fallback (`fallback_axis=None` turns it off).
    """
    with nnx.logical_axis_rules(rules):
        specs = nnx.get_partition_spec(state)
    values = dict(nnx.to_flat_state(state))
    out = {}
    for path, spec_var in nnx.to_flat_state(specs):
        spec = spec_var.get_value() if isinstance(spec_var, nnx.Variable) else spec_var
        shape = getattr(values[path], "shape", None)
        if not isinstance(spec, PartitionSpec):
            spec = PartitionSpec()
        spec = fit_spec(spec, mesh, shape)
        if shape is not None:
            spec = add_fallback_axis(spec, mesh, shape, fallback_axis)
        out[tuple(path)] = spec
    return out


def named_shardings(state: nnx.State, mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
                    fallback_axis: str | None = FSDP_FALLBACK_AXIS) -> dict[Path, NamedSharding]:
    """`{path: NamedSharding}` for every variable in `state` (what `convert/place.partition_shardings`
    computes, plus divisibility checks and the FSDP fallback), on `auto_axes(mesh)`."""
    mesh = auto_axes(mesh)
    return {p: NamedSharding(mesh, s)
            for p, s in partition_specs(state, mesh, rules, fallback_axis=fallback_axis).items()}


def activation_constraint(mesh: Mesh, rules: Rules = DEFAULT_RULES):
    """`constrain(x, logical_axes)` for `models_flax.layers.activation_sharding`: a sharding constraint
    by the rules, fitted to `x`'s shape (axes that do not divide a dimension are dropped)."""
    mesh = auto_axes(mesh)

    def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, logical_sharding(axes, mesh, rules, shape=x.shape))
    return constrain


def shard_module(module: nnx.Module, mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
                 fallback_axis: str | None = FSDP_FALLBACK_AXIS) -> nnx.Module:
    """Place every variable of `module` on `mesh` by its logical axis names (in place; returns it).

    Dimensions whose mesh axes are absent from the mesh, or do not divide them, are replicated;
    matrices the rules leave off `fallback_axis` are sharded over it anyway (rules.FSDP_FALLBACK_AXIS).
    """
    state = nnx.state(module)
    shardings = named_shardings(state, mesh, rules, fallback_axis=fallback_axis)
    flat = [(path, var) for path, var in nnx.to_flat_state(state)]
    arrays = jax.device_put([var.get_value() for _, var in flat],
                            [shardings[tuple(path)] for path, _ in flat])
    for (_, var), array in zip(flat, arrays):
        var.set_value(array)
    nnx.update(module, state)
    return module


def param_bytes(module_or_state) -> int:
    """Total bytes of all arrays in a module or state (global, not per device)."""
    state = module_or_state if isinstance(module_or_state, nnx.State) else nnx.state(module_or_state)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def per_device_bytes(module_or_state) -> int:
    """Bytes of one device's shards of all arrays in a module or state (the largest device)."""
    state = module_or_state if isinstance(module_or_state, nnx.State) else nnx.state(module_or_state)
    per_device: dict = {}
    for x in jax.tree.leaves(state):
        for shard in x.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values(), default=0)


# ----------------------------------------------------------------------------- multi-host


def maybe_initialize_distributed(flag: bool | None = None, **kwargs) -> bool:
    """Call `jax.distributed.initialize(**kwargs)` when `flag` is true (multi-host: one process per
    host, same program everywhere; on Cloud TPU / SLURM / Open MPI the coordinator, process count and
    process id are detected, otherwise pass `coordinator_address=`, `num_processes=`, `process_id=`).

    `flag=None` reads the `JAXDIFF_DISTRIBUTED` environment variable (`1`/`true`/`yes`). Must run before
    any other jax call touches the devices. Returns True when the distributed runtime is (now)
    initialised; a second call is a no-op.
    """
    if flag is None:
        flag = os.environ.get(DISTRIBUTED_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    if not flag:
        return False
    if not jax.distributed.is_initialized():
        jax.distributed.initialize(**kwargs)
    return True
