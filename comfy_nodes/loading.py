"""Loading for the nodes: a file → a cached JAX denoiser / VAE codec → ComfyUI's MODEL / VAE.

Checks happen before anything is read: the mesh spec against the local devices, then the family and
role of the file (a VAE given to the model loader, or a file that is neither Flux nor Wan, is a
ValueError naming the file). Loaded models are cached in `registry` per (file, dtype, mesh,
attention); the persistent XLA compile cache is turned on at the first load.
"""

from __future__ import annotations

import logging
import os

import jax

from .. import families, load_model
from ..pipelines import codec, denoiser
from ..pipelines.compile_cache import enable_compile_cache
from ..sharding.mesh import make_mesh
from . import registry

log = logging.getLogger("jaxdiff")
DENOISERS = {"flux": denoiser.FluxDenoiser, "wan": denoiser.WanDenoiser}
_cache_on = False


def _compile_cache() -> None:
    global _cache_on
    if not _cache_on:
        enable_compile_cache()
        _cache_on = True


def mesh_for(spec: str):
    """The mesh for a node's `mesh` input: '' = all local devices as fsdp (None on one device)."""
    spec = (spec or "").strip()
    devices = jax.local_devices()
    if not spec:
        return None if len(devices) == 1 else make_mesh({"fsdp": len(devices)}, devices)
    try:
        return make_mesh(spec, devices)
    except ValueError as e:
        raise ValueError(f"mesh {spec!r} does not fit this machine's {len(devices)} "
                         f"{devices[0].platform.upper()} device(s): {e}") from e


def _mesh_key(mesh) -> tuple:
    return () if mesh is None else tuple(mesh.shape.items())


def _file_key(path: str, what: str) -> tuple:
    """(path, what, mtime, size): a file replaced on disk is a new entry."""
    st = os.stat(path)
    return (os.path.abspath(path), what, st.st_mtime_ns, st.st_size)


def _load_checked(path: str, role: str, dtype=None, mesh=None):
    """The module in `path` and its family; ValueError when it is not a `role` ("transformer"/"vae")."""
    module = load_model(path, dtype=dtype, mesh=mesh)
    kind = families.model_for_config(getattr(module, "config", None))
    family = None if kind is None else families.family_of(kind)
    if family is None:
        raise ValueError(f"{os.path.basename(path)} holds a {type(module).__name__}, not a Flux or Wan "
                         "diffusion model or VAE")
    if kind.role != role:
        node = "Load VAE (JAX)" if kind.role == "vae" else "Load Diffusion Model (JAX)"
        raise ValueError(f"{os.path.basename(path)} is a {family.name} {kind.role} ({type(module).__name__}); "
                         f"load it with '{node}'")
    return module, family


def load_diffusion_model(path: str, dtype: str | None, mesh_spec: str, attention: str):
    """MODEL (`model.JaxModelPatcher`) for a Flux / Wan transformer file."""
    from .model import model_patcher

    mesh = mesh_for(mesh_spec)
    attention = None if attention == "auto" else attention
    _compile_cache()

    def load():
        module, family = _load_checked(path, "transformer", dtype, mesh)
        if family.name not in DENOISERS:
            raise ValueError(f"{os.path.basename(path)}: the {family.name} family has no ComfyUI adapter")
        log.info("jaxdiff: loaded %s (%s) on %s", os.path.basename(path), family.name,
                 "one device" if mesh is None else f"mesh {dict(mesh.shape)}")
        return DENOISERS[family.name](module, mesh=mesh, attention=attention, name=os.path.basename(path))

    return model_patcher(registry.entry(_file_key(path, "model") + (dtype, _mesh_key(mesh), attention), load))


def load_vae(path: str):
    """VAE (`vae.JaxVAE`) for a Flux KL or Wan 2.1 / 2.2 VAE file."""
    from .vae import JaxVAE

    _compile_cache()

    def load():
        module, _ = _load_checked(path, "vae")
        return codec.VAECodec(module, name=os.path.basename(path))

    return JaxVAE(registry.entry(_file_key(path, "vae"), load))


# ----------------------------------------------------------------------------- encoders

def _kind_at(path: str):
    from ..convert.loader import detect_kind

    return detect_kind(path)


def load_clip(paths: list[str], family: str, dtype: str | None, mesh_spec: str):
    """CLIP (`clip.JaxCLIP`) for the family's text encoder files (Flux: CLIP-L and T5-XXL in either
    order; Wan: UMT5-XXL); the kinds are checked from headers before anything loads."""
    from ..pipelines.text import Found, TextEncoder, assign_encoders
    from . import clip

    found = [Found(_kind_at(path).name, os.path.basename(path)) for path in paths]
    by_kind = assign_encoders(families.get_family(family), found, label=f"type '{family}'")
    kinds = {kind: paths[found.index(f)] for kind, f in by_kind.items()}
    spiece = clip.spiece_model_of(kinds["umt5"]) if "umt5" in kinds else None
    if "umt5" in kinds and spiece is None:  # before any weights load
        raise ValueError(f"{os.path.basename(kinds['umt5'])}: no tokenizer — the file holds no `spiece_model` "
                         "tensor (ComfyUI's umt5_xxl files do) and no spiece.model is beside it")
    mesh = mesh_for(mesh_spec)
    _compile_cache()
    encoders = {}
    for kind, path in kinds.items():
        def load(path=path):
            log.info("jaxdiff: loading text encoder %s", os.path.basename(path))
            return TextEncoder(load_model(path, dtype=dtype, mesh=mesh), None, path=path)

        entry = registry.entry(_file_key(path, "text_encoder") + (dtype, _mesh_key(mesh)), load)
        entry.get()
        key, encoder = clip.token_encoder(kind, entry)
        encoders[key] = encoder
    return clip.JaxCLIP(family, encoders, clip.tokenizer_for(family, spiece))


def load_clip_vision(path: str, dtype: str | None = None):
    """CLIP_VISION (`clip.JaxClipVision`) for a CLIP vision file (clip_vision_h)."""
    from ..pipelines.text import ImageEncoder
    from . import clip

    kind = _kind_at(path)
    if kind.role != "image_encoder":
        raise ValueError(f"{os.path.basename(path)} is a {kind.name} {kind.role}, not a CLIP vision model")
    _compile_cache()

    def load():
        return ImageEncoder(load_model(path, dtype=dtype), path=path)

    return clip.JaxClipVision(registry.entry(_file_key(path, "clip_vision") + (dtype,), load))
