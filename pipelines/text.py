"""Prompts → the embeddings a pipeline takes, through our Flax text encoders (and, for Wan 2.1 I2V, an
image → CLIP-vision embeddings), with real tokenizers and no torch.

- `load_text_encoder(path, tokenizer=None)` → `TextEncoder`: a CLIP-L, T5 or UMT5 encoder and its
  tokenizer. `encoder(prompts, max_length)` returns the embedding the pipeline wants from that
  encoder, built exactly as diffusers' pipelines build it (the `ROLES` table: CLIP's pooled output at
  77 tokens; T5's last hidden state without a mask (Flux); UMT5's with the mask, padded positions
  zeroed (Wan)). Results are cached per (encoder, prompt, length); `release()` frees device memory.
- `load_image_encoder(path)` → `ImageEncoder`: CLIP vision; `encoder(image)` → the penultimate hidden
  states Wan 2.1 I2V takes (`image_embeds`), after ComfyUI's / diffusers' CLIP preprocessing.
- `encode_prompts(transformer_config, encoders, prompt, negative_prompt)` → the family's conditioning
  dict (`prompt_embeds`, `pooled_prompt_embeds` / `negative_prompt_embeds`), checked against the
  transformer's widths so a wrong encoder is a one-line error naming its file.
- `find_tokenizer(path)`: where an encoder's tokenizer is (the `spiece_model` tensor inside a ComfyUI
  UMT5 file, tokenizer files beside the weights, a diffusers pipeline's `tokenizer*/` sibling).

Imports models_flax, convert (loading) and pipelines; never torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .. import families
from ..sharding.mesh import param_bytes
from .placement import free, to_host

CACHE_ENTRIES = 64  # prompts kept per encoder (a few MB each at 512×4096 fp32)


@dataclasses.dataclass(frozen=True)
class Role:
    """How a pipeline uses one text encoder (diffusers' `_get_*_prompt_embeds`)."""

    output: str  # "pooler_output" | "last_hidden_state"
    max_length: int  # default token length (Flux T5: the pipeline passes 512 dev / 256 schnell)
    mask: bool  # the attention mask goes into the encoder
    zero_padding: bool  # positions past the prompt are zeroed (Wan: trimmed to the length, then zero-padded)
    name: str  # what error messages call it
    use: str  # what the pipeline takes from it

    @property
    def description(self) -> str:
        return f"{self.name} ({self.use})"


ROLES = {
    "clip_text": Role("pooler_output", 77, False, False, "CLIP-L text encoder", "Flux: pooled prompt"),
    "t5": Role("last_hidden_state", 512, False, False, "T5 encoder", "Flux: prompt embeddings"),
    "umt5": Role("last_hidden_state", 512, True, True, "UMT5 encoder", "Wan: prompt embeddings"),
}
FLUX_SCHNELL_T5_LENGTH = 256  # diffusers' FluxPipeline docs: max_sequence_length 256 for schnell


# ----------------------------------------------------------------------------- tokenizer discovery

def _has_tokenizer(directory: Path) -> bool:
    from .tokenizer import BPE_FILES, SPIECE_MODEL, TOKENIZER_JSON

    return any((directory / name).is_file() for name in (TOKENIZER_JSON, *BPE_FILES, SPIECE_MODEL))


def find_tokenizer(path: str | os.PathLike) -> Path | None:
    """Where the tokenizer of the encoder at `path` is, or None: a `.safetensors` holding a
    `spiece_model` tensor (ComfyUI's UMT5 files); tokenizer files in the encoder's directory; the
    matching `tokenizer*/` folder of a diffusers pipeline (text_encoder → tokenizer, text_encoder_2 →
    tokenizer_2)."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            from .tokenizer import SPIECE_TENSOR

            with safe_open(str(path), "numpy") as f:
                if SPIECE_TENSOR in f.keys():
                    return path
        return None
    if _has_tokenizer(path):
        return path
    sibling = path.parent / path.name.replace("text_encoder", "tokenizer")
    if path.name.startswith("text_encoder") and _has_tokenizer(sibling):
        return sibling
    return None


def tokenizer_for(path: str | os.PathLike, tokenizer: str | os.PathLike | None = None):
    """The loaded tokenizer of the encoder at `path`: `tokenizer` when given, else `find_tokenizer(path)`;
    FileNotFoundError naming the file and the flags when there is none."""
    from .tokenizer import LOOKED_FOR, SPIECE_TENSOR, load_tokenizer

    found = tokenizer or find_tokenizer(path)
    if found is None:
        raise FileNotFoundError(
            f"{path}: no tokenizer found for this text encoder (looked for a `{SPIECE_TENSOR}` tensor in the "
            f"file, {LOOKED_FOR} beside it, and a diffusers pipeline's tokenizer*/ folder); pass the "
            "tokenizer's directory or file (CLI: --tokenizer, or --tokenizer-2 for --text-encoder-2)")
    return load_tokenizer(found)


def encoder_width(config) -> int:
    """The output width of an encoder config (T5 / UMT5 `d_model`, CLIP text / vision `hidden_size`)."""
    return getattr(config, "d_model", None) or config.hidden_size


# ----------------------------------------------------------------------------- text


class TextEncoder:
    """One text encoder and its tokenizer (None: token ids only, `encode_ids`; ComfyUI tokenises itself). Attributes: `kind` (model kind name), `role`, `path`,
    `width` (output width), `tokenizer`, `model`, `nbytes` (parameter bytes on device)."""

    def __init__(self, model: nnx.Module, tokenizer, *, path: str | os.PathLike = ""):
        kind = families.model_for_config(model.config)
        if kind is None or kind.name not in ROLES:
            raise ValueError(f"{path or type(model).__name__} is not a text encoder jaxdiff knows "
                             f"(CLIP-L text, T5, UMT5)")
        self.kind, self.role, self.model, self.tokenizer = kind.name, ROLES[kind.name], model, tokenizer
        self.path = str(path)
        self.width = encoder_width(model.config)
        if tokenizer is not None:
            from .tokenizer import check_vocab

            check_vocab(tokenizer, model.config.vocab_size, self.path or self.kind)
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        graph = nnx.graphdef(model)

        def forward(state, ids, mask):
            out = nnx.merge(graph, state)(ids, mask)
            out = out if isinstance(out, dict) else {"last_hidden_state": out}
            return {k: out[k].astype(jnp.float32) for k in ("last_hidden_state", "pooler_output") if k in out}

        self._forward = jax.jit(forward)

    def encode_ids(self, input_ids, attention_mask=None) -> dict[str, np.ndarray]:
        """The encoder on token ids `[B, L]` (and a mask into the encoder, or None):
        `{"last_hidden_state": [B, L, width], "pooler_output": [B, width] (CLIP)}` float32 numpy."""
        mask = None if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        out = self._forward(nnx.state(self.model), jnp.asarray(input_ids, jnp.int32), mask)
        return {k: to_host(v) for k, v in out.items()}

    def _encode(self, prompts: list[str], length: int) -> np.ndarray:
        if self.tokenizer is None:
            raise ValueError(f"{self.path or self.kind}: this text encoder was loaded without a tokenizer")
        tokens = self.tokenizer(prompts, max_length=length)
        mask = tokens["attention_mask"]
        out = self.encode_ids(tokens["input_ids"], mask if self.role.mask else None)[self.role.output]
        if self.role.zero_padding:  # diffusers' Wan: trimmed to the prompt's length, zero-padded back
            out = out * mask[..., None].astype(out.dtype)
        return out

    @property
    def nbytes(self) -> int:
        return param_bytes(self.model)

    def __call__(self, prompts: str | Sequence[str], max_length: int | None = None) -> np.ndarray:
        """`[B, max_length, width]` (hidden states) or `[B, width]` (CLIP pooled), float32 numpy."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        length = max_length or self.role.max_length
        rows = [self._cache.get((p, length)) for p in prompts]
        todo = sorted({p for p, row in zip(prompts, rows) if row is None})
        if todo:
            for prompt, row in zip(todo, self._encode(todo, length)):
                self._cache[(prompt, length)] = row
                if len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        return np.stack([self._cache[(p, length)] for p in prompts])

    def release(self) -> None:
        """Free the weights' device memory now (the encoder is unusable afterwards; cached prompts stay)."""
        free(nnx.state(self.model))


def cache_key(identity: str, kind: str, length: int, prompt: str) -> str:
    """A stable file name for (encoder weights, prompt, token length) in an `EmbeddingCache`."""
    text = f"{identity}\0{kind}\0{length}\0{prompt}"
    return hashlib.sha256(text.encode()).hexdigest()[:40]


class EmbeddingCache:
    """Encoded prompts on disk, one `.npy` per (encoder, prompt, length), written atomically."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def get(self, key: str) -> np.ndarray | None:
        path = self.directory / f"{key}.npy"
        try:
            return np.load(path)
        except (OSError, ValueError):  # absent, or a file another process is still writing
            return None

    def put(self, key: str, value: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{key}.{os.getpid()}.tmp.npy"
        np.save(tmp, value)
        os.replace(tmp, self.directory / f"{key}.npy")


def default_cache_dir() -> Path:
    return Path(os.environ.get("JAXDIFF_EMBEDDING_CACHE") or Path.home() / ".cache" / "jaxdiff" / "embeddings")


def file_identity(path: str | os.PathLike) -> str:
    """Path + size + mtime of a file, or of every file in a directory (what a cache key must change with)."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return f"{path}|" + "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def load_text_encoder(path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None, dtype=None,
                      mesh=None) -> TextEncoder:
    """A text encoder from a transformers directory, a ComfyUI single file or a converted checkpoint,
    with its tokenizer (`tokenizer=`, else `find_tokenizer(path)`)."""
    from ..convert.loader import load_model

    tok = tokenizer_for(path, tokenizer)
    return TextEncoder(load_model(path, dtype=dtype, mesh=mesh), tok, path=path)


class LazyTextEncoder:
    """A text encoder on disk that loads only when a prompt is not in `cache` (the CLI's): the kind,
    width and tokenizer are checked from headers first (errors before any compute), encoded prompts
    are written to the cache, and with `offload` the weights are freed right after encoding. Same
    interface as `TextEncoder` (kind, role, width, path, `__call__`)."""

    def __init__(self, path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None, dtype=None,
                 mesh=None, cache: EmbeddingCache | None = None, offload: bool = False):
        from ..convert.loader import load_model
        from .tokenizer import check_vocab

        abstract = load_model(path, abstract=True)
        kind = families.model_for_config(abstract.config)
        if kind is None or kind.name not in ROLES:
            raise ValueError(f"{path}: not a text encoder jaxdiff knows (CLIP-L text, T5, UMT5); found "
                             f"{type(abstract).__name__}")
        self.kind, self.role, self.path = kind.name, ROLES[kind.name], str(path)
        self.width = encoder_width(abstract.config)
        self._tokenizer = tokenizer_for(path, tokenizer)
        check_vocab(self._tokenizer, abstract.config.vocab_size, path)
        self.nbytes = param_bytes(abstract)
        self._load = lambda: TextEncoder(load_model(path, dtype=dtype, mesh=mesh), self._tokenizer, path=path)
        self._identity = f"{file_identity(path)}|{dtype}|{mesh is not None}"
        self._cache, self.offload, self._encoder = cache, offload, None
        self.encoded = 0  # prompts that went through the encoder (the rest came from the cache)

    def __call__(self, prompts: str | Sequence[str], max_length: int | None = None) -> np.ndarray:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        length = max_length or self.role.max_length
        keys = [cache_key(self._identity, self.kind, length, p) for p in prompts]
        rows = [self._cache.get(k) if self._cache else None for k in keys]
        todo = [i for i, row in enumerate(rows) if row is None]
        if todo:
            self._encoder = self._encoder or self._load()
            fresh = self._encoder([prompts[i] for i in todo], length)
            for i, row in zip(todo, fresh):
                rows[i] = row
                if self._cache:
                    self._cache.put(keys[i], row)
            self.encoded += len(todo)
            if self.offload:
                self.release()
        return np.stack(rows)

    def release(self) -> None:
        if self._encoder is not None:
            self._encoder.release()
            self._encoder = None


# ----------------------------------------------------------------------------- image (Wan 2.1 I2V)


class ImageEncoder:
    """CLIP vision: images → `image_embeds` (penultimate hidden states, what Wan 2.1 I2V takes)."""

    def __init__(self, model: nnx.Module, *, path: str | os.PathLike = ""):
        kind = families.model_for_config(model.config)
        if kind is None or kind.role != "image_encoder":
            raise ValueError(f"{path or type(model).__name__} is not an image encoder (CLIP vision)")
        self.model, self.path, self.width = model, str(path), model.config.hidden_size
        self.image_size = model.config.image_size
        graph = nnx.graphdef(model)

        def forward(state, pixels):
            out = nnx.merge(graph, state)(pixels, output_hidden_states=True)
            return {"image_embeds": out["image_embeds"], "last_hidden_state": out["last_hidden_state"],
                    "penultimate_hidden_states": out["hidden_states"][-2]}

        self._forward = jax.jit(forward)

    @property
    def nbytes(self) -> int:
        return param_bytes(self.model)

    def encode(self, images, *, crop: bool = True) -> dict[str, np.ndarray]:
        """`images` `[H, W, 3]` or `[B, H, W, 3]`, uint8 or float 0..1 → `{"image_embeds",
        "last_hidden_state", "penultimate_hidden_states"}` float32 numpy, after CLIP's preprocessing
        (resize the short side, centre crop unless `crop=False`, normalise)."""
        from ..models_flax.clip_vision import clip_preprocess

        images = np.asarray(images)
        images = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
        images = images[None] if images.ndim == 3 else images
        pixels = clip_preprocess(images, size=self.image_size, crop=crop)
        dtype = jax.tree.leaves(nnx.state(self.model))[0].dtype
        out = self._forward(nnx.state(self.model), jnp.asarray(pixels, dtype))
        return {k: to_host(v.astype(jnp.float32)) for k, v in out.items()}

    def __call__(self, images) -> np.ndarray:
        """`[B, tokens, width]` image embeddings (the penultimate hidden states)."""
        return self.encode(images)["penultimate_hidden_states"]

    def release(self) -> None:
        free(nnx.state(self.model))


def load_image_encoder(path: str | os.PathLike, *, dtype=None, mesh=None) -> ImageEncoder:
    from ..convert.loader import load_model

    return ImageEncoder(load_model(path, dtype=dtype, mesh=mesh), path=path)


# ----------------------------------------------------------------------------- conditioning


def _describe(encoder) -> str:
    """`path (what it is, width W)` of a TextEncoder / LazyTextEncoder / `(kind, path)` stand-in."""
    what = ROLES[encoder.kind].description if encoder.kind in ROLES else f"a {encoder.kind} model"
    width = getattr(encoder, "width", None)
    return f"{encoder.path or encoder.kind} ({what}" + (f", width {width})" if width else ")")


@dataclasses.dataclass(frozen=True)
class Found:
    """An encoder file's model kind, known from its headers (for checks before loading)."""

    kind: str
    path: str


def assign_encoders(family: families.Family, encoders: Sequence, *, label: str | None = None) -> dict:
    """`{kind: encoder}` for the family's text encoders, in any order given; a missing, repeated or
    foreign encoder is a ValueError naming its file and what the family (`label`, default its name)
    takes. `encoders`: anything with `kind` and `path` (TextEncoder, LazyTextEncoder, `Found`)."""
    wanted = [k.name for k in family.text_encoders]
    who = label or family.name
    takes = " and ".join(ROLES[k].name for k in wanted)
    out: dict = {}
    for encoder in encoders:
        if encoder.kind not in wanted:
            raise ValueError(f"{_describe(encoder)} is not a text encoder of {who}: {who} takes {takes}")
        if encoder.kind in out:
            raise ValueError(f"{out[encoder.kind].path} and {encoder.path} are both a {ROLES[encoder.kind].name}; "
                             f"{who} takes {takes}")
        out[encoder.kind] = encoder
    missing = [ROLES[k].name for k in wanted if k not in out]
    if missing:
        raise ValueError(f"{who} takes {takes}; missing: {', '.join(missing)}")
    return out


def _check_width(encoder: TextEncoder, want: int, field: str) -> None:
    if encoder.width != want:
        raise ValueError(f"{_describe(encoder)} does not fit this transformer: its {field} is {want}")


def encode_prompts(transformer_config: Any, encoders: Sequence[TextEncoder], prompt: str | Sequence[str],
                   negative_prompt: str | Sequence[str] | None = None, *, max_sequence_length: int | None = None,
                   guidance: bool = True) -> dict[str, np.ndarray | None]:
    """The conditioning dict of the transformer's pipeline (Flux: `prompt_embeds`,
    `pooled_prompt_embeds`; Wan: `prompt_embeds`, `negative_prompt_embeds` (when `guidance`; the
    negative prompt defaults to "" as in WanPipeline), `image_embeds` None)."""
    kind = families.model_for_config(transformer_config)
    family = families.family_of(kind) if kind is not None else None
    if family is None or not family.text_encoders:
        raise ValueError(f"no text encoders are known for {type(transformer_config).__name__}")
    by_kind = assign_encoders(family, encoders)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if family.name == "flux":
        clip, t5 = by_kind["clip_text"], by_kind["t5"]
        _check_width(clip, transformer_config.pooled_projection_dim, "pooled_projection_dim")
        _check_width(t5, transformer_config.joint_attention_dim, "joint_attention_dim")
        length = max_sequence_length or (512 if transformer_config.guidance_embeds else FLUX_SCHNELL_T5_LENGTH)
        return {"prompt_embeds": t5(prompts, length), "pooled_prompt_embeds": clip(prompts)}
    umt5 = by_kind["umt5"]
    _check_width(umt5, transformer_config.text_dim, "text_dim")
    from .tokenizer import wan_prompt_clean

    length = max_sequence_length or umt5.role.max_length
    out = {"prompt_embeds": umt5([wan_prompt_clean(p) for p in prompts], length),
           "negative_prompt_embeds": None, "image_embeds": None}
    if guidance:
        negative = [""] * len(prompts) if negative_prompt is None else (
            [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt))
        if len(negative) != len(prompts):
            raise ValueError(f"{len(negative)} negative prompts for {len(prompts)} prompts")
        out["negative_prompt_embeds"] = umt5([wan_prompt_clean(p) for p in negative], length)
    return out
