"""The library loading API: plain arguments in, a ready pipeline out (what the CLI, `bench` and the
ComfyUI nodes call; nothing here knows about argparse).

- `resolve_paths(model, vae=None, scheduler=None)`: a diffusers pipeline root (transformer/,
  transformer_2/, vae/, scheduler/, model_index.json) or single files → `ModelPaths`.
- `load_pipeline(model, *, vae, scheduler, family, dtype, mesh, attention, sequence_parallel, sampler)`:
  load transformer(s), VAE and scheduler config (`jaxdiff.load_model`, straight onto `mesh`) and build
  the family's pipeline (`families.Family.pipeline`).
- `build_random(config, seed, dtype)`: a random-weight module for any registered config (host init);
  `embedded_pipeline(family, ...)`: the tiny embedded default of `jaxdiff generate`.
- `scheduler_config(path, default, sampler)`: a scheduler config from `scheduler_config.json`.
- `read_conditioning(path, pipeline)`: precomputed embeddings from a `.safetensors` / `.npz` file.

The family registry (`jaxdiff.families`) decides which classes are built; this module has no family
branches. It reaches the converter only through the public `jaxdiff.load_model` (imported when
called).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import families

PIPELINE_INDEX = "model_index.json"
SCHEDULER_CONFIG = "scheduler_config.json"
EMBEDDED_WEIGHT_SEED = 0  # the embedded model's weights never change; seeds move noise and prompts


# ----------------------------------------------------------------------------- paths


@dataclasses.dataclass(frozen=True)
class ModelPaths:
    """Where each component of a pipeline comes from."""

    transformer: Path
    vae: Path
    transformer_2: Path | None = None  # Wan 2.2 A14B's low-noise expert
    scheduler: Path | None = None
    index: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # model_index.json


def pipeline_root(model: Path) -> Path | None:
    """The diffusers pipeline dir `model` is (holds transformer/) or is a subfolder of."""
    if (model / "transformer").is_dir():
        return model
    if model.is_dir() and ((model.parent / "scheduler").is_dir() or (model.parent / PIPELINE_INDEX).is_file()):
        return model.parent
    return None


def resolve_paths(model, vae=None, scheduler=None) -> ModelPaths:
    """Component paths for `model` (a transformer: diffusers dir, single file or converted
    checkpoint; or a diffusers pipeline dir holding transformer/ and vae/), `vae` and `scheduler`
    (`scheduler_config.json` or its dir) where given. Raises FileNotFoundError / ValueError naming
    the missing part."""
    model = Path(model)
    if not model.exists():
        raise FileNotFoundError(f"--model: no such file or directory {model}")
    root = pipeline_root(model)
    transformer = model / "transformer" if (model / "transformer").is_dir() else model
    vae = Path(vae) if vae else (root / "vae" if root is not None and (root / "vae").is_dir() else None)
    if vae is None:
        raise ValueError("--vae PATH is required with --model (or point --model at a diffusers "
                         "pipeline dir holding transformer/ and vae/)")
    if not vae.exists():
        raise FileNotFoundError(f"--vae: no such file or directory {vae}")
    if scheduler is None and root is not None and (root / "scheduler").is_dir():
        scheduler = root / "scheduler"
    transformer_2 = root / "transformer_2" if root is not None else None
    index = {}
    if root is not None and (root / PIPELINE_INDEX).is_file():
        index = json.loads((root / PIPELINE_INDEX).read_text(encoding="utf-8"))
    return ModelPaths(transformer=transformer, vae=vae,
                      transformer_2=transformer_2 if transformer_2 is not None and transformer_2.is_dir()
                      else None,
                      scheduler=None if scheduler is None else Path(scheduler), index=index)


# ----------------------------------------------------------------------------- schedulers


def _scheduler_classes() -> dict[str, type]:
    from ..schedulers.flow_match import FlowMatchEulerConfig
    from ..schedulers.unipc import UniPCConfig

    return {"FlowMatchEulerDiscreteScheduler": FlowMatchEulerConfig,
            "UniPCMultistepScheduler": UniPCConfig}


def scheduler_config(path, default, sampler: str | None = None):
    """The scheduler config in `path` (a `scheduler_config.json` or a dir holding one; by its
    `_class_name`, else the type of `default`), or `default` when `path` is None; `sampler` ("euler",
    "unipc") switches between FlowMatch Euler and flow UniPC, keeping the shift."""
    config = default
    if path is not None:
        path = Path(path)
        file = path / SCHEDULER_CONFIG if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"--scheduler-config: no scheduler config at {file}")
        data = json.loads(file.read_text(encoding="utf-8"))
        classes = _scheduler_classes()
        name = data.get("_class_name")
        if name is None:
            config = type(default).from_dict(data)
        elif name in classes:
            config = classes[name].from_dict(data)
        else:
            raise ValueError(f"{file}: unsupported scheduler {name!r} ({' or '.join(classes)})")
    return with_sampler(config, sampler)


def with_sampler(config, sampler: str | None):
    """`config` as FlowMatch Euler (`"euler"`) or flow UniPC (`"unipc"`), same shift and train steps."""
    from ..schedulers.flow_match import FlowMatchEulerConfig
    from ..schedulers.unipc import WAN_SCHEDULER_CONFIG, UniPCConfig

    if sampler not in (None, "euler", "unipc"):
        raise ValueError(f"unknown sampler {sampler!r}; use euler or unipc")
    if sampler == "euler" and isinstance(config, UniPCConfig):
        return FlowMatchEulerConfig(num_train_timesteps=config.num_train_timesteps, shift=config.flow_shift)
    if sampler == "unipc" and isinstance(config, FlowMatchEulerConfig):
        return dataclasses.replace(WAN_SCHEDULER_CONFIG, flow_shift=config.shift,
                                   num_train_timesteps=config.num_train_timesteps)
    return config


# ----------------------------------------------------------------------------- models


def build_random(config, seed: int = 0, dtype="float32"):
    """A random-weight module for `config` (any registered model's config object), weights drawn on
    the host from each parameter's init rule (models_flax/build.py), fixed by `seed`."""
    from ..models_flax.build import random_module

    kind = families.model_for_config(config)
    if kind is None:
        raise ValueError(f"no registered model takes a {type(config).__name__}")
    return random_module(families.resolve(kind.model_class), config, dtype, seed)


def family_for(module) -> families.Family:
    """The registered family whose transformer `module` is."""
    kind = families.model_for_config(getattr(module, "config", None))
    family = None if kind is None else families.family_of(kind)
    if family is None or family.transformer is not kind:
        raise ValueError(f"{type(module).__name__} is not the transformer of a registered family")
    return family


def _check_kind(module, kind: families.ModelKind, what: str, path) -> None:
    if not isinstance(module, families.resolve(kind.model_class)):
        raise ValueError(f"--{what} {path} loaded as {type(module).__name__}, not a {kind.class_name}")


def load_pipeline(model, *, vae=None, scheduler=None, family: str | None = None, dtype=None, mesh=None,
                  attention: str | None = None, sequence_parallel: str | None = None,
                  sampler: str | None = None, load=None):
    """The family's pipeline over the models at `model` (see `resolve_paths`), loaded with
    `jaxdiff.load_model` (straight onto `mesh` when given). `family` None: the transformer's own.
    `load`: the function loading one model instead (e.g. `load_model` with `abstract=True`, for
    checks that need shapes only)."""
    if load is None:
        from .. import load_model as load  # looked up when called (tests substitute it)

    paths = resolve_paths(model, vae, scheduler)
    transformer = load(paths.transformer, dtype=dtype, mesh=mesh)
    row = families.get_family(family) if family is not None else family_for(transformer)
    _check_kind(transformer, row.transformer, "model", paths.transformer)
    transformer_2 = None
    if paths.transformer_2 is not None:
        transformer_2 = load(paths.transformer_2, dtype=dtype, mesh=mesh)
        _check_kind(transformer_2, row.transformer, "model", paths.transformer_2)
    vae_module = load(paths.vae, dtype=dtype, mesh=mesh)
    _check_kind(vae_module, row.vae, "vae", paths.vae)
    pipeline_cls = families.resolve(row.pipeline)
    config = scheduler_config(paths.scheduler, pipeline_cls.default_scheduler(transformer.config), sampler)
    return pipeline_cls.from_models(transformer, vae_module, config, transformer_2=transformer_2,
                                    index=paths.index, mesh=mesh, attention=attention,
                                    sequence_parallel=sequence_parallel)


def embedded_models(family: str | families.Family, *, image_to_video: bool = False, dtype="float32",
                    transformer_overrides: Mapping[str, Any] | None = None, abstract: bool = False):
    """(transformer, vae) of the family's tiny embedded default, fixed weights (`abstract`: shapes
    only)."""
    row = family if isinstance(family, families.Family) else families.get_family(family)
    if row.embedded is None:
        raise ValueError(f"family {row.name!r} has no embedded default; pass --model")
    embedded = row.embedded
    fields = dict(embedded.transformer)
    if image_to_video:
        if embedded.image_transformer is None:
            raise ValueError(f"the embedded {row.name} model has no image-to-video variant")
        fields.update(embedded.image_transformer)
    fields.update(transformer_overrides or {})
    transformer_cfg, _ = row.transformer.classes()
    vae_cfg, _ = row.vae.classes()
    configs = (transformer_cfg.from_dict(fields), vae_cfg.from_dict(dict(embedded.vae)))
    if abstract:
        from flax import nnx

        from ..models_flax.build import abstract_split

        return tuple(nnx.merge(*abstract_split(families.resolve(kind.model_class), config, dtype))
                     for kind, config in zip(row.models, configs))
    return tuple(build_random(config, EMBEDDED_WEIGHT_SEED + i, dtype) for i, config in enumerate(configs))


def embedded_pipeline(family: str | families.Family, *, image_to_video: bool = False, dtype="float32",
                      mesh=None, attention: str | None = None, sequence_parallel: str | None = None,
                      sampler: str | None = None, abstract: bool = False):
    """The family's tiny random-weight pipeline (`jaxdiff generate` without --model), placed on
    `mesh` by the parameters' logical axes when given (`abstract`: shape-only models, for checks)."""
    row = family if isinstance(family, families.Family) else families.get_family(family)
    transformer, vae = embedded_models(row, image_to_video=image_to_video, dtype=dtype, abstract=abstract)
    if mesh is not None and not abstract:
        from ..sharding.mesh import shard_module

        shard_module(transformer, mesh)
        shard_module(vae, mesh)
    pipeline_cls = families.resolve(row.pipeline)
    config = with_sampler(pipeline_cls.default_scheduler(transformer.config), sampler)
    return pipeline_cls.from_models(transformer, vae, config, mesh=mesh, attention=attention,
                                    sequence_parallel=sequence_parallel)


# ----------------------------------------------------------------------------- conditioning


def read_arrays(path) -> dict:
    """All arrays of a `.safetensors` or `.npz` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompt-embeds: no such file {path}")
    if path.suffix == ".safetensors":
        from safetensors.flax import load_file  # handles bfloat16, which numpy cannot

        return load_file(str(path))
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    raise ValueError(f"--prompt-embeds: {path} must be .safetensors or .npz")


def read_conditioning(path: str | os.PathLike, pipeline) -> dict[str, np.ndarray | None]:
    """`{name: float32 array or None}` for the pipeline's `CONDITIONING` keys (`{name: (ndim,
    required)}`) from an embeddings file; arrays one dimension short get a batch axis of 1."""
    path = Path(path)
    arrays = read_arrays(path)
    spec = pipeline.CONDITIONING
    missing = [k for k, (_, required) in spec.items() if required and k not in arrays]
    if missing:
        raise ValueError(f"--prompt-embeds: {path} lacks key{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)} (found: {', '.join(sorted(arrays)) or 'none'})")
    out = {}
    for key, (ndim, _) in spec.items():
        if key not in arrays:
            out[key] = None
            continue
        value = np.asarray(arrays[key], dtype=np.float32)
        value = value[None] if value.ndim == ndim - 1 else value
        if value.ndim != ndim:
            raise ValueError(f"--prompt-embeds: {path}: {key} must have {ndim} dimensions (batch first), "
                             f"got {value.shape}")
        out[key] = value
    return out
