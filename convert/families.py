"""The converter's view of the family registry (`jaxdiff.families`): config and abstract model of a
model kind, the parameter dtype rule, and the keys diffusers ignores.

Models are built abstractly (`nnx.eval_shape`), so loading a 12B model never allocates random
weights; `place.py` then fills the abstract parameters one unit at a time.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import jax.numpy as jnp
import numpy as np

from .. import families
from ..families import ModelKind
from ..models_flax.build import abstract_split


def canonical_dtype(dtype) -> np.dtype:
    """`'bf16'`, `'bfloat16'`, `jnp.bfloat16`, … → a numpy dtype (floating only)."""
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
               "float": "float32"}
    if isinstance(dtype, str):
        dtype = aliases.get(dtype.lower(), dtype.lower())
    out = np.dtype(jnp.dtype(dtype))
    if out not in (np.dtype(jnp.float32), np.dtype(jnp.bfloat16), np.dtype(jnp.float16)):
        raise ValueError(f"unsupported parameter dtype {out}; use float32, bfloat16 or float16")
    return out


def as_kind(model: ModelKind | str) -> ModelKind:
    return model if isinstance(model, ModelKind) else families.get_model(model)


def model_config(model: ModelKind | str, config: Any):
    """Our frozen config object from a dict (diffusers config.json layout) or a config object."""
    config_cls, _ = as_kind(model).classes()
    if isinstance(config, config_cls):
        return config
    if isinstance(config, Mapping):
        return config_cls.from_dict(config)
    raise TypeError(f"config for {as_kind(model).name} must be a dict or {config_cls.__name__}, "
                    f"got {type(config)}")


def abstract_model(model: ModelKind | str, config: Any, dtype):
    """(graphdef, state of ShapeDtypeStruct parameters) of the kind's module; allocates nothing."""
    _, model_cls = as_kind(model).classes()
    return abstract_split(model_cls, model_config(model, config), dtype)


def ignored_keys(model: ModelKind | str, keys: Iterable[str]) -> set[str]:
    """The keys of a diffusers dir that diffusers itself ignores when loading this kind."""
    patterns = [re.compile(p) for p in as_kind(model).ignored_keys]
    return {k for k in keys if any(p.search(k) for p in patterns)}
