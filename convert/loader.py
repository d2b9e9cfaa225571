"""`load_model` and `convert`: read → rename → transform → place, one unit (block) at a time.

A `Plan` ties the steps together for one torch checkpoint: the lazy reader (safetensors_io), the key
map (identity for diffusers names minus the keys diffusers ignores and with tied aliases resolved, or
the single-file layout's keymap that the family registry names — flux_keys, vae_keys, wan_keys —,
fp8 scales from transform), and the abstract model it must fill (families + place). Every key, missing parameter and shape is checked
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

from .. import families
from ..families import Layout, ModelKind
from . import flux_keys, vae_keys
from .detect import Source, class_name, inspect_path
from .families import abstract_model, canonical_dtype, ignored_keys, model_config
from .place import (Path as ParamPath, fill, partition_shardings, plan_placement, resolve_path,
                    to_flax_layout, unit_of)
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


def _detect_single_file(names: dict[str, tuple[int, ...]], path: Path, config: Any
                        ) -> tuple[ModelKind, Any, Layout | None]:
    """(model kind, config, layout or None for diffusers names) of a single file, from its
    (prefix-stripped) key names and shapes: the first registered layout that recognises the keys."""
    for model in families.all_models():
        for layout in model.layouts:
            if families.call(layout.detect, names):
                if config is None:
                    config = _config_from_shapes(layout.config, names, path)
                return model, config, layout
    if config is not None:  # diffusers-named file with an explicit config
        return _kind_of_config(config, path), config, None
    for model in families.all_models():
        if model.diffusers_single_file and families.call(model.diffusers_single_file[0], names):
            return model, _config_from_shapes(model.diffusers_single_file[1], names, path), None
    known = [f"{layout.description} (key {layout.detect_key!r})"
             for model in families.all_models() for layout in model.layouts]
    raise ValueError(
        f"{path}: unrecognised single-file layout ({len(names)} keys, e.g. "
        f"{', '.join(sorted(names)[:3])}); known: {'; '.join(known)}; or diffusers names with "
        "config=. Otherwise pass config= or use a diffusers model directory.")


def _config_from_shapes(infer: Any, names: dict[str, tuple[int, ...]], path: Path) -> Any:
    """`infer(names)` (a layout's config from key shapes); its ValueError names the file too."""
    try:
        return families.call(infer, names)
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path}: {err}") from None


def _kind_of_config(config: Any, where: Path) -> ModelKind:
    if isinstance(config, dict):
        return families.model_for_class(class_name(config), f"{where} (config=)")
    model = families.model_for_config(config)
    if model is None:
        raise ValueError(f"{where}: cannot tell the model family of config {type(config).__name__}")
    return model


def _tied(model: ModelKind, shapes: dict[str, tuple[int, ...]], where: Path | str = "checkpoint"
          ) -> dict[str, str]:
    """`{parameter key: stored alias}` for tied parameters (`ModelKind.tied`, e.g. T5's `shared.weight`
    and `encoder.embed_tokens.weight`) stored only under their alias; a stored alias whose parameter
    is stored too is the same tensor and is dropped from `shapes` (in place). Shapes must agree."""
    renamed = {}
    for key, alias in model.tied:
        if alias not in shapes:
            continue
        if key not in shapes:
            renamed[key] = alias  # read from the alias; its shape stays in `shapes`
            continue
        if tuple(shapes[key]) != tuple(shapes[alias]):
            raise ValueError(f"{where}: tied tensors {key} {tuple(shapes[key])} and {alias} "
                             f"{tuple(shapes[alias])} differ in shape (one tensor of "
                             f"{model.class_name} stored under both names)")
        del shapes[alias]
    return renamed


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
        layout = None
        if src.kind == "single_file":
            self.model, config, layout = _detect_single_file(shapes, src.path, config)
        else:
            self.model = families.get_model(src.family)
            config = src.config if config is None else config
        self.family = self.model.name
        self.config = model_config(self.model, config)
        self.dtype = canonical_dtype(dtype) if dtype is not None else _default_dtype(
            {n: reader.infos[self.stored[n]] for n in shapes})
        self.graphdef, self.state = abstract_model(self.model, self.config, self.dtype)
        self.params = {tuple(p): v for p, v in nnx.to_flat_state(self.state)}
        if layout is not None:
            self.takes, unknown, missing_keys = families.call(layout.keymap, shapes, self.config)
        else:  # diffusers names; keys diffusers itself ignores for this kind are dropped (named list)
            shapes = self._wrap_bare_keys(shapes)
            tied = _tied(self.model, shapes, src.path)
            ignored = ignored_keys(self.model, shapes)
            self.takes = {n: Take(n) for n in shapes if n not in ignored and n not in tied.values()}
            self.takes.update({key: Take(alias) for key, alias in tied.items()})
            unknown, missing_keys = [], []
        target_shapes = {key: take.shape(shapes[take.source]) for key, take in self.takes.items()}
        self.placement = plan_placement(target_shapes, self.params, unknown=unknown,
                                        missing_keys=missing_keys, source=str(src.path),
                                        model=self.model.class_name)

    def _wrap_bare_keys(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """transformers 5 saves a bare `CLIPTextModel` / `CLIPVisionModel` without the `text_model.` /
        `vision_model.` wrapper its older files (and ComfyUI's) keep: when every parameter sits under
        one top-level module that no stored key names, the keys are read as `<module>.<key>`."""
        tops = {path[0] for path in self.params}
        if len(tops) != 1 or any(name.split(".")[0] in tops for name in shapes):
            return shapes
        prefix = f"{tops.pop()}."
        if not any(resolve_path(prefix + name, self.params) for name in shapes):
            return shapes
        self.stored = {prefix + name: key for name, key in self.stored.items()}
        self.scales = {prefix + name: prefix + scale for name, scale in self.scales.items()}
        return {prefix + name: shape for name, shape in shapes.items()}

    def __enter__(self) -> "Plan":
        return self

    def __exit__(self, *exc) -> None:
        self.reader.close()

    @property
    def num_tensors(self) -> int:
        return len(self.placement)

    def config_dict(self) -> dict:
        return {"_class_name": self.model.class_name, **self.config.to_dict()}

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
        """Yields `(unit, [(param_path, array in our layout and dtype), …])`, one unit at a time
        (`place.unit_of`: a path up to its first list index, e.g. `encoder.block.3`, else a top-level
        module), so memory holds one block, however deeply the block lists are nested."""
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


def detect_kind(path) -> ModelKind:
    """The model kind at `path` from config files or safetensors headers alone (no tensor read);
    a diffusers pipeline dir answers for its transformer/."""
    path = Path(path)
    if (path / "transformer").is_dir():
        path = path / "transformer"
    source = inspect_path(path)
    if source.kind == "converted":
        from .checkpoint import read_meta
        return families.get_model(read_meta(path)["family"])
    if source.kind == "diffusers":
        return families.get_model(source.family)
    with SafetensorsReader(source.files) as reader:
        names = _single_file_names(reader.keys())
        scales, consumed = find_scales(names)
        shapes = {n: reader.infos[k].shape for n, k in names.items() if n not in consumed}
    return _detect_single_file(shapes, path, None)[0]


def load_model(path, *, dtype=None, mesh=None, config=None, progress: Callable[[int], None] | None = None,
               abstract: bool = False):
    """Load a diffusers model dir, a single-file safetensors or a converted jaxdiff checkpoint.

    Args:
      path: directory or `.safetensors` file.
      dtype: parameter dtype (default: the checkpoint's; fp8 → bfloat16).
      mesh: a `jax.sharding.Mesh`: parameters are placed by their logical axis names
        (sharding/rules.py DEFAULT_RULES); None = default device.
      config: a config dict / object overriding the stored or detected one (e.g. tiny test files
        whose head dim is not 128).
      progress: called with the number of tensors placed after each unit.
      abstract: read config and headers only: the module with `jax.ShapeDtypeStruct` parameters
        (every key and shape checked, no tensor read) — for checks and planning.

    Returns:
      A ready Flax nnx module.
    """
    source = inspect_path(path)
    if source.kind == "converted":
        if config is not None:
            raise ValueError(f"{path}: a converted checkpoint carries its config; config= is not accepted")
        from .checkpoint import read_meta, restore
        if abstract:
            meta = read_meta(source.path)
            return nnx.merge(*abstract_model(meta["family"], meta["config"],
                                             canonical_dtype(dtype or meta["dtype"])))
        return restore(source.path, dtype=dtype, mesh=mesh, progress=progress)
    with Plan(source, dtype=dtype, config=config) as plan:
        if abstract:
            return nnx.merge(plan.graphdef, plan.state)
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
                           num_tensors=plan.num_tensors, progress=progress,
                           extra_files=tokenizer_files(plan.source))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "spiece.model")
SPIECE_TENSOR = "spiece_model"  # ComfyUI's UMT5 files carry their sentencepiece model as uint8


def tokenizer_files(source: Source) -> dict[str, bytes]:
    """A text encoder's tokenizer to keep beside its converted weights: the `spiece_model` tensor of a
    single file (as spiece.model), or the tokenizer files of a transformers directory."""
    if source.kind == "single_file":
        from safetensors import safe_open

        with safe_open(str(source.path), "numpy") as f:
            if SPIECE_TENSOR in f.keys():
                return {"spiece.model": f.get_tensor(SPIECE_TENSOR).tobytes()}
        return {}
    return {name: (source.path / name).read_bytes() for name in TOKENIZER_FILES
            if (source.path / name).is_file()}
