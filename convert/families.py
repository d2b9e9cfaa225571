"""Model families the converter knows: diffusers class name → our config/model classes.

Models are built abstractly (`nnx.eval_shape`), so loading a 12B model never allocates random
weights; `place.py` then fills the abstract parameters one unit at a time.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclass(frozen=True)
class Family:
    name: str  # our name, stored in jaxdiff.json
    class_name: str  # diffusers `_class_name` in config.json
    module: str  # models_flax module holding the classes
    config_class: str
    model_class: str

    def classes(self):
        mod = importlib.import_module(f"..models_flax.{self.module}", __package__)
        return getattr(mod, self.config_class), getattr(mod, self.model_class)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("flux", "FluxTransformer2DModel", "flux", "FluxConfig", "FluxTransformer2DModel"),
    Family("vae_kl", "AutoencoderKL", "vae_kl", "AutoencoderKLConfig", "AutoencoderKL"),
    Family("wan", "WanTransformer3DModel", "wan", "WanConfig", "WanTransformer3DModel"),
    Family("vae_wan", "AutoencoderKLWan", "vae_wan", "WanVAEConfig", "AutoencoderKLWan"),
)}
BY_CLASS_NAME = {f.class_name: f.name for f in FAMILIES.values()}


def family_for_class(class_name: str | None, where: str) -> str:
    if class_name not in BY_CLASS_NAME:
        raise ValueError(f"{where}: unsupported model class {class_name!r}; "
                         f"supported: {sorted(BY_CLASS_NAME)}")
    return BY_CLASS_NAME[class_name]


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


def model_config(family: str, config: Any):
    """Our frozen config object from a dict (diffusers config.json layout) or a config object."""
    config_cls, _ = FAMILIES[family].classes()
    if isinstance(config, config_cls):
        return config
    if isinstance(config, Mapping):
        return config_cls.from_dict(config)
    raise TypeError(f"config for {family} must be a dict or {config_cls.__name__}, got {type(config)}")


def abstract_model(family: str, config: Any, dtype) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state of ShapeDtypeStruct parameters) for the family's model; allocates nothing."""
    _, model_cls = FAMILIES[family].classes()
    cfg = model_config(family, config)
    abstract = nnx.eval_shape(lambda: model_cls(cfg, param_dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0)))
    return nnx.split(abstract)
