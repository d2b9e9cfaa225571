"""Meshes, logical-axis rules and parameter placement (imports jax/flax only).

`rules.py` maps logical axis names (what models_flax parameters carry) to mesh axes; `mesh.py` builds
meshes from a spec string like `"data=1,fsdp=4,tensor=2,seq=1"` and places modules/arrays by those
rules. See README.md.
"""

from .mesh import (MESH_AXES, activation_constraint, add_fallback_axis, auto_axes, fit_spec, logical_sharding, logical_to_mesh_spec, make_mesh,
                   maybe_initialize_distributed, named_shardings, param_bytes, parse_mesh_spec,
                   partition_specs, per_device_bytes, resolve_mesh_shape, shard_module)
from .rules import DEFAULT_RULES, FSDP_FALLBACK_AXIS, FSDP_FALLBACK_MIN_NDIM

__all__ = ["DEFAULT_RULES", "FSDP_FALLBACK_AXIS", "FSDP_FALLBACK_MIN_NDIM", "MESH_AXES", "activation_constraint",
           "add_fallback_axis", "auto_axes", "fit_spec", "logical_sharding", "logical_to_mesh_spec",
           "make_mesh", "maybe_initialize_distributed", "named_shardings", "param_bytes",
           "parse_mesh_spec", "partition_specs", "per_device_bytes", "resolve_mesh_shape",
           "shard_module"]
