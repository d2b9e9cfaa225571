"""`load_model` and `convert`: read → rename → transform → place, one unit (block) at a time.

A `Plan` ties the steps together for one torch checkpoint: the lazy reader (safetensors_io), the key
map (identity for diffusers names minus the keys diffusers ignores, flux_keys for BFL/ComfyUI Flux
files, wan_keys for ComfyUI Wan transformer / Wan VAE files, fp8 scales from transform), and
the abstract model it must fill (families + place). Every key, missing parameter and shape is checked
from headers alone before any tensor is read; then `Plan.units()` yields each block's arrays, which
are either placed into the model (load) or written as one orbax item (convert, checkpoint.py).
Runtime code: never imports torch or diffusers.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from flax import nnx

from . import flux_keys, vae_keys, wan_keys
from .detect import Source, inspect_path
from .families import FAMILIES, abstract_model, canonical_dtype, family_for_class, model_config
from .place import (Path as ParamPath, fill, partition_shardings, plan_placement, to_flax_layout,
                    unit_of)
from .safetensors_io import FP8_DTYPES, SafetensorsReader
from .transform import Take, contiguous, dequantize, find_scales

FP8_DEFAULT_DTYPE = "bfloat16"  # what fp8 weights dequantise to unless dtype= says otherwise


# Other components of a ComfyUI / SD full checkpoint, skipped when loading its diffusion model.
OTHER_COMPONENT_PREFIXES = ("vae.", "first_stage_model.", "text_encoders.", "cond_stage_model.",
                            "conditioner.")


def _single_file_names(keys: list[str]) -> dict[str, str]:
    """`{logical name: stored key}` of the model inside a single file.

    With ComfyUI's `model.diffusion_model.` prefix: the diffusion model (other components of a full
    checkpoint are skipped; anything else stays and surfaces as unexpected). Otherwise an LDM VAE
    (bare, or as `vae.` / `first_stage_model.` of a full checkpoint), else all keys as they are.
    """
    if any(k.startswith(flux_keys.COMFY_PREFIX) for k in keys):
        return {name: key for name, key in flux_keys.strip_prefix(keys).items()
                if not key.startswith(OTHER_COMPONENT_PREFIXES)}
    if vae_keys.is_ldm_vae(keys):
        return vae_keys.vae_subset(keys)
    return {k: k for k in keys}


def _detect_single_file(names: dict[str, tuple[int, ...]], path: Path, config: Any) -> tuple[str, dict | Any, str]:
    """(family, config, layout) of a single file from its (prefix-stripped) key names and shapes."""
    if flux_keys.is_bfl_flux(names):
        return "flux", (config if config is not None else flux_keys.bfl_flux_config(names)), "bfl"
    if wan_keys.is_comfy_wan(names):
        return "wan", (config if config is not None else wan_keys.comfy_wan_config(names)), "comfy_wan"
    if wan_keys.is_wan_vae(names):
        return "vae_wan", (config if config is not None else wan_keys.wan_vae_config(names)), "wan_vae"
    if vae_keys.is_ldm_vae(names):
        return "vae_kl", (config if config is not None else vae_keys.ldm_vae_config(names)), "ldm_vae"
    if config is not None:  # diffusers-named file with an explicit config
        return _family_of_config(config, path), config, "diffusers"
    if flux_keys.is_diffusers_flux(names):
        return "flux", flux_keys.diffusers_flux_config(names), "diffusers"
    raise ValueError(
        f"{path}: unrecognised single-file layout ({len(names)} keys, e.g. "
        f"{', '.join(sorted(names)[:3])}); known: BFL/ComfyUI Flux transformer (key "
        f"{flux_keys.DETECT_KEY!r}), diffusers-named Flux transformer (key "
        f"{flux_keys.DIFFUSERS_DETECT_KEY!r}), LDM / BFL `ae` VAE (key {vae_keys.DETECT_KEY!r}), "
        f"ComfyUI / original Wan transformer (key {wan_keys.DETECT_KEY!r}), Wan 2.1 VAE (key "
        f"{wan_keys.VAE_DETECT_KEY!r}). "
        "Otherwise pass config= or use a diffusers model directory.")


def _family_of_config(config: Any, where: Path) -> str:
    if isinstance(config, dict):
        return family_for_class(config.get("_class_name"), f"{where} (config=)")
    for name, family in FAMILIES.items():
        if type(config) is family.classes()[0]:
            return name
    raise ValueError(f"{where}: cannot tell the model family of config {type(config).__name__}")


def _default_dtype(infos: dict) -> np.dtype:
    """The dtype holding most parameters (fp8 counts as bfloat16, its usual compute dtype)."""
    counts: dict[str, int] = defaultdict(int)
    for info in infos.values():
        name = FP8_DEFAULT_DTYPE if info.dtype in FP8_DTYPES else info.numpy_dtype.name
        if name in ("float32", "float16", "bfloat16", "float64"):
            counts["float32" if name == "float64" else name] += info.size
    return canonical_dtype(max(counts, key=counts.get) if counts else "float32")


class Plan:
    """A checked mapping from one torch checkpoint (diffusers dir or single file) to our model."""

    def __init__(self, source: Source, *, dtype=None, config: Any = None):
        self.source = source
        self.reader = SafetensorsReader(source.files)
        try:
            self._build(dtype, config)
        except BaseException:
            self.reader.close()
            raise

    def _build(self, dtype, config) -> None:
        src, reader = self.source, self.reader
        if src.kind == "single_file":
            self.stored = _single_file_names(reader.keys())  # logical name → stored key
        else:
            self.stored = {k: k for k in reader.keys()}
        self.scales, consumed = find_scales(self.stored)
        shapes = {n: reader.infos[k].shape for n, k in self.stored.items()
                  if n not in consumed}
        if src.kind == "single_file":
            self.family, config, layout = _detect_single_file(shapes, src.path, config)
        else:
            self.family, layout = src.family, "diffusers"
            config = src.config if config is None else config
        self.config = model_config(self.family, config)
        missing_keys = []
        if layout == "bfl":
            self.takes, unknown = flux_keys.bfl_takes(shapes, self.config.inner_dim)
            c = self.config
            missing_keys = flux_keys.bfl_key_names(c.num_layers, c.num_single_layers,
                                                   c.guidance_embeds) - set(shapes)
        elif layout == "ldm_vae":
            renamed, unknown = vae_keys.ldm_vae_key_map(shapes, len(self.config.block_out_channels))
            self.takes = {name: Take(key, matrix=vae_keys.is_attention_projection(key))
                          for name, key in renamed.items()}
        elif layout == "comfy_wan":
            self.takes, unknown = wan_keys.comfy_wan_takes(shapes)
            missing_keys = wan_keys.comfy_wan_key_names(self.config) - set(shapes)
        elif layout == "wan_vae":
            self.takes, unknown = wan_keys.wan_vae_takes(shapes)
            missing_keys = wan_keys.wan_vae_key_names(self.config) - set(shapes)
        else:
            # diffusers names; keys diffusers itself ignores for this family are dropped (named list)
            ignored = wan_keys.diffusers_ignored(self.family, shapes) if layout == "diffusers" else set()
            self.takes, unknown = {n: Take(n) for n in shapes if n not in ignored}, []
        self.dtype = canonical_dtype(dtype) if dtype is not None else _default_dtype(
            {n: reader.infos[self.stored[n]] for n in shapes})
        self.graphdef, self.state = abstract_model(self.family, self.config, self.dtype)
        self.params = {tuple(p): v for p, v in nnx.to_flat_state(self.state)}
        target_shapes = {key: take.shape(shapes[take.source]) for key, take in self.takes.items()}
        model_cls = FAMILIES[self.family].model_class
        self.placement = plan_placement(target_shapes, self.params, unknown=unknown,
                                        missing_keys=missing_keys, source=str(src.path),
                                        model=model_cls)

    def __enter__(self) -> "Plan":
        return self

    def __exit__(self, *exc) -> None:
        self.reader.close()

    @property
    def num_tensors(self) -> int:
        return len(self.placement)

    def config_dict(self) -> dict:
        return {"_class_name": FAMILIES[self.family].class_name, **self.config.to_dict()}

    def read(self, name: str) -> np.ndarray:
        """Source tensor `name` (logical, prefix-stripped), fp8 dequantised to float32."""
        info = self.reader.infos[self.stored[name]]
        array = self.reader[self.stored[name]]
        scale_key = self.scales.get(name)
        if info.dtype in FP8_DTYPES or scale_key is not None:
            scale = self.reader[self.stored[scale_key]] if scale_key else None
            array = dequantize(array, scale, np.float32)
        return array

    def _file_position(self, name: str) -> tuple[str, int]:
        info = self.reader.infos[self.stored[name]]
        return str(info.file), info.start

    def units(self) -> Iterator[tuple[ParamPath, list[tuple[ParamPath, np.ndarray]]]]:
        """Yields `(unit, [(param_path, array in our layout and dtype), …])`, one unit at a time."""
        by_unit: dict[ParamPath, list[ParamPath]] = defaultdict(list)
        for path in self.params:
            by_unit[unit_of(path)].append(path)
        for unit, paths in by_unit.items():
            by_source: dict[str, list[tuple[ParamPath, Take]]] = defaultdict(list)
            for path in paths:
                take = self.takes[self.placement[path]]
                by_source[take.source].append((path, take))
            arrays = []
            for name in sorted(by_source, key=self._file_position):
                source = self.read(name)
                for path, take in by_source[name]:
                    value = to_flax_layout(str(path[-1]), take.apply(source))
                    arrays.append((path, contiguous(value, self.dtype)))
                del source
            yield unit, arrays


def load_model(path, *, dtype=None, mesh=None, config=None, progress: Callable[[int], None] | None = None):
    """Load a diffusers model dir, a single-file safetensors or a converted jaxdiff checkpoint.

    Args:
      path: directory or `.safetensors` file.
      dtype: parameter dtype (default: the checkpoint's; fp8 → bfloat16).
      mesh: a `jax.sharding.Mesh`: parameters are placed by their logical axis names
        (sharding/rules.py DEFAULT_RULES); None = default device.
      config: a config dict / object overriding the stored or detected one (e.g. tiny test files
        whose head dim is not 128).
      progress: called with the number of tensors placed after each unit.

    Returns:
      A ready Flax nnx module.
    """
    source = inspect_path(path)
    if source.kind == "converted":
        if config is not None:
            raise ValueError(f"{path}: a converted checkpoint carries its config; config= is not accepted")
        from .checkpoint import restore
        return restore(source.path, dtype=dtype, mesh=mesh, progress=progress)
    with Plan(source, dtype=dtype, config=config) as plan:
        shardings = None
        if mesh is not None:
            from ..sharding.rules import DEFAULT_RULES
            shardings = partition_shardings(plan.state, mesh, DEFAULT_RULES)
        for _, arrays in plan.units():
            fill(plan.params, arrays, shardings)
            if progress:
                progress(len(arrays))
            del arrays
        return nnx.merge(plan.graphdef, plan.state)


def convert(src, out, *, dtype=None, overwrite: bool = False, config=None,
            progress: Callable[[int], None] | None = None) -> Path:
    """Convert a torch checkpoint (diffusers dir or single file) to a jaxdiff checkpoint at `out`.

    Written unit by unit into a temp dir beside `out`, `jaxdiff.json` last, then renamed into
    place; on failure or interrupt the temp dir is removed. Returns `out`.
    """
    with open_plan(src, dtype=dtype, config=config) as plan:
        return write_plan(plan, out, overwrite=overwrite, progress=progress)


def open_plan(src, *, dtype=None, config=None) -> Plan:
    """A checked `Plan` for a torch checkpoint (refuses converted checkpoints)."""
    source = inspect_path(src)
    if source.kind == "converted":
        raise ValueError(f"{src}: already a converted jaxdiff checkpoint")
    return Plan(source, dtype=dtype, config=config)


def write_plan(plan: Plan, out, *, overwrite: bool = False,
               progress: Callable[[int], None] | None = None) -> Path:
    """Stream `plan`'s units into a converted checkpoint at `out` (see checkpoint.write_converted)."""
    from .checkpoint import write_converted

    return write_converted(out, family=plan.family, config=plan.config_dict(), dtype=plan.dtype,
                           units=plan.units(), overwrite=overwrite, source=str(plan.source.path),
                           num_tensors=plan.num_tensors, progress=progress)
