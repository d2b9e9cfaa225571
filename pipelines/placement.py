"""Where a pipeline's arrays live and how its steps are traced: shared by the Flux and Wan pipelines.

- `Placement(mesh)`: inputs onto the mesh by logical axis names (sharding.logical_sharding), and the
  same placement pinned on step outputs inside jit (one compilation for every step).
- `attention_context(attention, sequence_parallel, mesh)`: the scope a denoise step is traced in —
  `kernels.attention_options` with the given fields, plus the models' activation annotations
  (`models_flax.layers.activation_sharding`) bound to the mesh's rules.
- `to_host`: results as host numpy (gathered across processes when multi-host).

Imports kernels, models_flax.layers and sharding; never torch.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from ..kernels.attention import AttentionOptions, attention_options
from ..models_flax.layers import activation_sharding
from ..sharding.mesh import activation_constraint, auto_axes, logical_sharding


class Placement:
    """Where a pipeline's inputs live: default device(s) when `mesh` is None, else on `mesh` by
    logical axis names (`sharding.logical_sharding`; axes that do not divide a dimension replicate it,
    `()` replicates the whole array). Shared by the Flux and Wan pipelines."""

    def __init__(self, mesh=None):
        self.mesh = None if mesh is None else auto_axes(mesh)  # a plain jax.make_mesh one is Explicit

    def put(self, x, axes=()):
        """`x` (host or device) as a jax array placed for `axes`."""
        if x is None:
            return None
        if self.mesh is None:
            return jnp.asarray(x)
        x = x if isinstance(x, jax.Array) else np.asarray(x)
        return jax.device_put(x, logical_sharding(axes, self.mesh, shape=x.shape))

    def constrain(self, x, axes=()):
        """Inside jit: pin `x` to the same placement, so a step's outputs match its inputs (one
        compilation for all steps)."""
        return x if self.mesh is None else activation_constraint(self.mesh)(x, axes)


def free(state) -> None:
    """Delete every jax array in `state` now (their device memory returns); the owner is unusable after."""
    for leaf in jax.tree.leaves(state):
        if isinstance(leaf, jax.Array) and not leaf.is_deleted():
            leaf.delete()


def to_host(x) -> np.ndarray:
    """A (possibly multi-host sharded) array as host numpy."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


@contextlib.contextmanager
def attention_context(attention: str | None, sequence_parallel: str | None, mesh):
    """`attention_options(...)` with only the given fields (an outer context keeps the rest), and with
    a mesh the models' token streams constrained by the sharding rules (`("batch", "seq", None)`).
    The mesh is taken with Auto axis types (`sharding.auto_axes`), as the parameters are placed."""
    mesh = None if mesh is None else auto_axes(mesh)
    changes = {name: value for name, value in (("implementation", attention),
                                               ("sequence_parallel", sequence_parallel),
                                               ("mesh", mesh)) if value is not None}
    with contextlib.ExitStack() as stack:
        stack.enter_context(attention_options(**changes))
        if mesh is not None:
            stack.enter_context(activation_sharding(activation_constraint(mesh)))
        yield


def check_attention_args(attention: str | None, sequence_parallel: str | None) -> None:
    """ValueError for an unknown implementation or sequence-parallel name (before any compute)."""
    AttentionOptions(implementation=attention or "auto", sequence_parallel=sequence_parallel)


def vae_attention_context():
    """The VAE's single-head mid-block attention never runs sequence-parallel."""
    return attention_options(implementation="auto", sequence_parallel=None)
