"""Building models without a checkpoint: abstractly (shapes only) or with random weights.

- `abstract_split(model_cls, config, dtype)`: `(graphdef, state)` whose parameters are
  `jax.ShapeDtypeStruct`s with their logical axis names (`nnx.eval_shape`): what the loader fills and
  the planner counts; nothing is allocated.
- `random_module(model_cls, config, dtype, seed)`: the same module with random weights drawn on the
  host by numpy from each parameter's own init rule (`layers.param` records it), then put on the
  default device (the rule each `layers.param` records). Eager `jax.random` init of a few hundred small parameters costs ~20 s of dispatch
  and compile on CPU; numpy takes well under a second, so the embedded default starts at once.

Imports jax/flax and layers.py only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx



def abstract_split(model_cls, config, dtype) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state of ShapeDtypeStruct parameters) of `model_cls(config)`; allocates nothing."""
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(
            lambda: model_cls(config, param_dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0)))
    return nnx.split(abstract)


def random_state(state: nnx.State, seed: int) -> nnx.State:
    """`state` (abstract or not) with every parameter drawn from its init rule by a numpy RNG."""
    rng = np.random.default_rng(seed)
    flat = []
    for path, var in nnx.to_flat_state(state):
        value = var.get_value()
        rule = var.get_metadata().get("init_rule")
        if rule is None:
            raise ValueError(f"parameter {'.'.join(map(str, path))} has no init rule (made without "
                             "layers.param)")
        drawn = rule.host(rng, tuple(value.shape))
        flat.append((path, var.replace(jnp.asarray(drawn, value.dtype))))
    return nnx.from_flat_state(flat)


def random_module(model_cls, config, dtype, seed: int = 0) -> nnx.Module:
    """`model_cls(config)` with random weights (host-drawn, fixed by `seed`)."""
    graphdef, state = abstract_split(model_cls, config, dtype)
    return nnx.merge(graphdef, random_state(state, seed))
