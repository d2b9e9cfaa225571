"""Building models without a checkpoint: abstractly (shapes only) or with random weights.

- `abstract_split(model_cls, config, dtype)`: `(graphdef, state)` whose parameters are
  `jax.ShapeDtypeStruct`s with their logical axis names (`nnx.eval_shape`): what the loader fills and
  the planner counts; nothing is allocated.
- `random_module(model_cls, config, dtype, seed)`: the same module with random weights drawn on the
  host by numpy from each parameter's own init rule (`layers.param` records it), then put on the
  default device. Eager `jax.random` init of a few hundred small parameters costs ~20 s of dispatch
  and compile on CPU; numpy takes well under a second, so the embedded default starts at once.

Imports jax/flax and layers.py only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import math


def host_init(path, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A float32 init value for the parameter at `path` (bias 0; norm `scale` / Wan VAE `gamma` 1;
    kernels N(0, 0.02²) for Linear, N(0, 1/fan_in) for convolutions and tables)."""
    name = [p for p in path if isinstance(p, str)][-1]
    if name == "bias":
        value = np.zeros(shape)
    elif name in ("scale", "gamma"):
        value = np.ones(shape)
    else:
        std = 0.02 if len(shape) <= 2 else 1.0 / math.sqrt(math.prod(shape[:-1]))
        value = std * rng.standard_normal(shape)
    return value.astype(np.float32)


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
        drawn = host_init(tuple(path), tuple(value.shape), rng)
        flat.append((path, var.replace(jnp.asarray(drawn, value.dtype))))
    return nnx.from_flat_state(flat)


def random_module(model_cls, config, dtype, seed: int = 0) -> nnx.Module:
    """`model_cls(config)` with random weights (host-drawn, fixed by `seed`)."""
    graphdef, state = abstract_split(model_cls, config, dtype)
    return nnx.merge(graphdef, random_state(state, seed))
