"""What is at a path: a converted jaxdiff checkpoint, a diffusers or transformers model directory,
or a single file.

Only file names and small JSON files are read here; the model kind of a directory comes from its
config.json (diffusers `_class_name`, transformers `architectures`) through the family registry;
single-file layouts are told apart by their keys in loader.py (they need the safetensors header).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..families import model_for_class
from .safetensors_io import PICKLE_SUFFIXES, refuse_pickle

CONFIG_NAME = "config.json"
META_NAME = "jaxdiff.json"  # written last: its presence marks a complete converted checkpoint
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"
WEIGHT_NAMES = (DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS)  # preferred, in this order
PIPELINE_INDEX = "model_index.json"


@dataclass
class Source:
    path: Path
    kind: str  # "converted" | "diffusers" (diffusers or transformers model dir) | "single_file"
    family: str | None = None  # model kind, known up front for model dirs (from config.json)
    config: dict | None = None
    files: list[Path] = field(default_factory=list)  # safetensors files holding the weights


def _diffusers_weight_files(path: Path) -> list[Path]:
    """The safetensors files of a diffusers / transformers model dir: from `*.safetensors.index.json`
    (diffusers' or transformers' name first), else the one file."""
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        preferred = [p for name in WEIGHT_NAMES for p in indexes if p.name == name + ".index.json"]
        index = (preferred or indexes)[0]
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not weight_map:
            raise ValueError(f"{index}: no weight_map in the shard index")
        files = [path / name for name in sorted(set(weight_map.values()))]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index}: shard file(s) listed but missing: {', '.join(absent)}")
        return files
    for name in WEIGHT_NAMES:
        if (path / name).is_file():
            return [path / name]
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return found
    if found:
        raise ValueError(f"{path}: several .safetensors files and no *.safetensors.index.json to say "
                         f"which to use: {', '.join(f.name for f in found)}")
    pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        refuse_pickle(pickles[0])
    raise FileNotFoundError(f"{path}: no .safetensors weights in this model directory")


def inspect_path(path: str | Path) -> Source:
    """Classify `path`; raises FileNotFoundError/ValueError saying what is missing or refused."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        refuse_pickle(path)
        if path.suffix.lower() != ".safetensors":
            raise ValueError(f"{path}: not a .safetensors file (single-file checkpoints must be "
                             "safetensors; converted checkpoints and diffusers models are directories)")
        return Source(path, "single_file", files=[path])
    if (path / META_NAME).is_file():
        return Source(path, "converted")
    if not (path / CONFIG_NAME).is_file():
        if (path / PIPELINE_INDEX).is_file():
            raise ValueError(f"{path}: a diffusers pipeline directory; pass one model subfolder "
                             "(e.g. transformer/ or vae/)")
        raise FileNotFoundError(
            f"{path}: not a loadable directory — no {CONFIG_NAME} (a diffusers or transformers model "
            f"directory needs one) and no {META_NAME} (a complete converted jaxdiff checkpoint has one; an interrupted "
            "conversion leaves none)")
    where = str(path / CONFIG_NAME)
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
    except ValueError as err:
        raise ValueError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(config).__name__}")
    if class_name(config) is None:
        where += " (names no diffusers `_class_name` and no transformers `architectures`)"
    model = model_for_class(class_name(config), where)
    return Source(path, "diffusers", model.name, config, _diffusers_weight_files(path))


def class_name(config: dict) -> str | None:
    """The model class a config.json names: diffusers `_class_name`, else the first transformers
    `architectures` entry."""
    architectures = config.get("architectures") or [None]
    return config.get("_class_name") or architectures[0]
