"""The converted jaxdiff checkpoint: write it atomically, unit by unit; restore it, optionally sharded.

Layout of a converted directory:

    OUT/
      jaxdiff.json              format, format_version, family, class_name, config (diffusers
                                config.json fields), dtype, units, num_tensors, source
      params/<unit>/            one orbax StandardCheckpointer item per unit (`place.unit_of`): a
                                path up to its first list index (`transformer_blocks.7`,
                                `encoder.block.3`, `encoder.down_blocks.0`) or a top-level module
                                (`x_embedder`, `shared`); its tree is the unit's parameters keyed by
                                their path inside it (list indices as strings), e.g.
                                {"attn": {"to_q": {"kernel", "bias"}}, …}

Each unit is saved and released before the next is read, so conversion memory is one block.
`restore` reads the units `jaxdiff.json` lists and gives each parameter to the longest stored unit
prefixing its path, so format-1 checkpoints written before units split inside nested lists (one
`encoder` unit for a whole VAE encoder) restore unchanged. The
directory is built as a temp dir beside OUT, `jaxdiff.json` is written last, then it is renamed into
place; on any failure or interrupt the temp dir is removed, so a path either holds a complete
checkpoint or nothing `load_model` accepts. Imports jax/flax/orbax only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from .detect import META_NAME
from .. import families
from .families import abstract_model, canonical_dtype
from .place import Path as ParamPath, key_to_path, partition_shardings

FORMAT_NAME = "jaxdiff"
FORMAT_VERSION = 1
PARAMS_DIR = "params"


def unit_name(unit: ParamPath) -> str:
    return ".".join(str(p) for p in unit)


def _nest(items: Iterable[tuple[ParamPath, Any]]) -> dict:
    """`[(('attn', 'to_q', 'kernel'), x), …]` → `{'attn': {'to_q': {'kernel': x}}}` (string keys)."""
    tree: dict = {}
    for path, value in items:
        node = tree
        for part in path[:-1]:
            node = node.setdefault(str(part), {})
        node[str(path[-1])] = value
    return tree


def _relative(path: ParamPath, unit: ParamPath) -> ParamPath:
    """`path` inside its unit; a top-level parameter (Wan's `scale_shift_table`) is its own unit and
    is stored under its own name."""
    return path[len(unit):] or path[-1:]


def _lookup(tree: Mapping, path: ParamPath):
    for part in path:
        tree = tree[str(part)]
    return tree


def _checkpointer():
    import orbax.checkpoint as ocp  # heavy; only when converting or restoring

    return ocp.StandardCheckpointer()


def _save_unit(checkpointer, directory: Path, tree: dict) -> None:
    checkpointer.save(directory, tree)
    checkpointer.wait_until_finished()  # bound memory: this unit is on disk before the next is read


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(partial, path)


def is_converted_checkpoint(path) -> bool:
    """Whether `path` is a directory holding a `jaxdiff.json` of format "jaxdiff" (complete, any version)."""
    try:
        meta = json.loads((Path(path) / META_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT_NAME


def check_output(out, *, overwrite: bool = False) -> Path:
    """`out` as an absolute path, if a conversion may write there; raises FileExistsError otherwise.

    An existing `out` is replaced only with `overwrite` and only when it is an empty directory or a
    converted jaxdiff checkpoint, so a mistyped path never wipes user data.
    """
    out = Path(out).absolute()
    if not out.exists() and not out.is_symlink():
        return out
    if not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"{out} is not a directory; --overwrite replaces only a converted "
                              "jaxdiff checkpoint, so it was left alone")
    if any(out.iterdir()) and not is_converted_checkpoint(out):
        raise FileExistsError(f"{out} is not a converted jaxdiff checkpoint (no {META_NAME} of format "
                              f"{FORMAT_NAME!r}); --overwrite replaces only those, so it was left alone")
    return out


def write_converted(out, *, family: str, config: dict, dtype, units, overwrite: bool = False,
                    source: str = "", num_tensors: int | None = None,
                    progress: Callable[[int], None] | None = None, extra_files: dict | None = None) -> Path:
    """Write `units` (`(unit_path, [(param_path, array), …])`, e.g. `Plan.units()`) to `out`, and
    `extra_files` (`{name: bytes}`: a text encoder's tokenizer files) beside them.

    Raises FileExistsError when `out` exists and not `overwrite`, or when it is anything but an empty
    directory or a converted jaxdiff checkpoint (see `check_output`).
    """
    out = check_output(out, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        checkpointer = _checkpointer()
        try:
            names, count = [], 0
            for unit, arrays in units:
                tree = _nest((_relative(path, unit), array) for path, array in arrays)
                _save_unit(checkpointer, tmp / PARAMS_DIR / unit_name(unit), tree)
                names.append(unit_name(unit))
                count += len(arrays)
                if progress:
                    progress(len(arrays))
                del tree, arrays
        finally:
            checkpointer.close()
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        _write_json(tmp / META_NAME, {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "family": family,
            "class_name": families.get_model(family).class_name, "config": config,
            "dtype": canonical_dtype(dtype).name, "units": names,
            "num_tensors": count if num_tensors is None else num_tensors, "source": source,
        })
        if out.exists():  # overwrite: swap the old one out, then delete it
            check_output(out, overwrite=overwrite)  # again: it may have changed while we wrote
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_meta(path) -> dict:
    """The validated `jaxdiff.json` of a converted checkpoint directory."""
    meta_path = Path(path) / META_NAME
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path}: not a converted jaxdiff checkpoint (no {META_NAME}; an "
                                "interrupted conversion leaves none)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: unsupported format {meta.get('format')!r} version "
                         f"{meta.get('format_version')!r} (this jaxdiff reads {FORMAT_NAME} "
                         f"v{FORMAT_VERSION})")
    if meta.get("family") not in {m.name for m in families.all_models()}:
        raise ValueError(f"{meta_path}: unknown model family {meta.get('family')!r}")
    return meta


def _few(items: list[str], shown: int = 5) -> str:
    return ", ".join(items[:shown]) + (f" … and {len(items) - shown} more" if len(items) > shown else "")


def stored_units(params: Iterable[ParamPath], units: Iterable[str], *, where="checkpoint",
                 model: str = "model") -> dict[ParamPath, list[ParamPath]]:
    """`{stored unit: [param_path, …]}`: each parameter goes to the stored unit that is the longest
    prefix of its path, so checkpoints written with coarser units than `unit_of` makes today
    (format 1 before units split inside nested lists: `encoder` holding `encoder.down_blocks.0`)
    restore as they are. Raises ValueError naming parameters no stored unit holds."""
    stored = {tuple(name.split(".")): key_to_path(name) for name in units}
    by_unit: dict[ParamPath, list[ParamPath]] = defaultdict(list)
    homeless = []
    for p in params:
        parts = tuple(str(part) for part in p)
        unit = next((stored[parts[:n]] for n in range(len(parts), 0, -1) if parts[:n] in stored), None)
        if unit is None:
            homeless.append(unit_name(p))
        else:
            by_unit[unit].append(p)
    if homeless:
        raise ValueError(f"{where}: checkpoint lacks unit(s) holding {len(homeless)} parameter(s) of "
                         f"{model}: {_few(homeless)} (units stored: {len(stored)})")
    return by_unit


def _unit_problem(checkpointer, directory: Path, unit: ParamPath, paths: list[ParamPath],
                  params: Mapping[ParamPath, Any], model: str) -> ValueError | None:
    """Why the stored unit at `directory` cannot fill `paths` (called when orbax refused it): the
    parameters it lacks or holds in another shape, named in full; None when that is not the reason."""
    if not directory.is_dir():
        return ValueError(f"{directory}: unit {unit_name(unit)} listed in {META_NAME} is missing")
    try:
        tree = checkpointer.metadata(directory).item_metadata
    except Exception:  # unreadable metadata: orbax's own error says more
        return None
    stored = {tuple(str(getattr(k, "key", k)) for k in key): tuple(leaf.shape)
              for key, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    missing, mismatched = [], []
    for p in paths:
        relative = tuple(str(part) for part in _relative(p, unit))
        if relative not in stored:
            missing.append(unit_name(p))
        elif stored[relative] != tuple(params[p].shape):
            mismatched.append(f"{unit_name(p)}: stored {stored[relative]} vs model {tuple(params[p].shape)}")
    problems = []
    if missing:
        problems.append(f"{len(missing)} parameter(s) of {model} not in it: {_few(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_few(mismatched)}")
    if not problems:
        return None
    return ValueError(f"{directory}: stored unit {unit_name(unit)} cannot be restored: "
                      + "; ".join(problems))


def restore(path, *, dtype=None, mesh=None, progress: Callable[[int], None] | None = None) -> nnx.Module:
    """Rebuild the model of a converted checkpoint, unit by unit, optionally straight onto `mesh`.

    Units are the ones `jaxdiff.json` lists (see `stored_units`), not recomputed, so checkpoints
    written with older, coarser units still restore."""
    path = Path(path)
    meta = read_meta(path)
    dtype = canonical_dtype(dtype if dtype is not None else meta["dtype"])
    graphdef, state = abstract_model(meta["family"], meta["config"], dtype)
    params = {tuple(p): v for p, v in nnx.to_flat_state(state)}
    shardings = None
    if mesh is not None:
        from ..sharding.rules import DEFAULT_RULES
        shardings = partition_shardings(state, mesh, DEFAULT_RULES)
    by_unit = stored_units(params, meta["units"], where=path, model=meta["class_name"])
    checkpointer = _checkpointer()
    try:
        for unit, paths in by_unit.items():
            target = _nest((_relative(p, unit), jax.ShapeDtypeStruct(
                params[p].shape, dtype, sharding=None if shardings is None else shardings[p]))
                for p in paths)
            directory = path / PARAMS_DIR / unit_name(unit)
            try:
                restored = checkpointer.restore(directory, target)
            except Exception as err:
                problem = _unit_problem(checkpointer, directory, unit, paths, params, meta["class_name"])
                if problem is None:
                    raise
                raise problem from err
            for p in paths:
                value = _lookup(restored, _relative(p, unit))
                params[p].set_value(value if isinstance(value, jax.Array) else jnp.asarray(value))
            if progress:
                progress(len(paths))
            del restored
    finally:
        checkpointer.close()
    return nnx.merge(graphdef, state)
