"""convert: torch checkpoints → Flax modules, as read → rename → transform → place.

- `safetensors_io.py` read: lazy safetensors reader (one tensor at a time; BF16/F16/F32/FP8), pickle refused
- `flux_keys.py`      rename: BFL / ComfyUI Flux single-file names → diffusers names; config from shapes
- `wan_keys.py`       rename: ComfyUI / original Wan transformer and Wan VAE names → diffusers names
- `transform.py`      transform: split fused projections, swap halves, dequantise fp8 (`scale_weight`)
- `place.py`          place: check a checkpoint against an abstract model, fill it unit by unit / onto a mesh
- `detect.py`, `families.py`  what a path holds; which model class a family builds
- `loader.py`         `load_model(path, *, dtype, mesh, config)`, `convert(src, out, …)`
- `checkpoint.py`     converted format (jaxdiff.json + one orbax item per unit), atomic write, restore
- `cli.py`            `jaxdiff convert`; `verify.py` the torchax verify tool (the only torch user here)
May import models_flax and sharding; runtime modules never import torch/diffusers.
"""


def load_model(path, *, dtype=None, mesh=None, config=None):
    """See `convert.loader.load_model` (imported lazily to keep `import jaxdiff.convert` light)."""
    from .loader import load_model as _load_model

    return _load_model(path, dtype=dtype, mesh=mesh, config=config)


def convert(src, out, *, dtype=None, overwrite=False, config=None, progress=None):
    """See `convert.loader.convert`."""
    from .loader import convert as _convert

    return _convert(src, out, dtype=dtype, overwrite=overwrite, config=config, progress=progress)


__all__ = ["load_model", "convert"]
