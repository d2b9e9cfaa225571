"""`jaxdiff plan`: per-device memory for a model at a size on a mesh, without weights or devices.

    jaxdiff plan --model wan2.1-t2v-14b --mesh fsdp=8 --height 720 --width 1280 --frames 81 --hbm v5e

What is exact and what is estimated (all per device):
- **Parameters** (exact): shapes and dtypes from `nnx.eval_shape` of the real module, placed by the
  same logical-axis rules as `sharding.shard_module` (`partition_specs` on an `AbstractMesh` with the
  given axes, FSDP fallback included), summed. Wan 2.2 A14B counts both experts resident. The VAE is
  counted replicated. Text encoders are not modelled (`--text-encoder-gib` adds a figure you supply).
- **Activations** (analytical, `transformer_activations`): the live set at the peak of one block
  (self-attention, cross-attention or FFN; Flux: joint attention, MLP or single block) plus the
  model-level tensors (RoPE tables, text context, latents in/out). Inference keeps nothing across
  blocks, so depth does not enter. Batch = `batch × guidance_passes` (classifier-free guidance runs
  cond and uncond as one batch, as pipelines/wan.py does). Placement follows the models' token-stream
  annotation (`layers.TOKENS` = ("batch", "seq", None)) through the rules: batch over data/fsdp and
  tokens over seq, each only where the axis divides it (Wan 720p × 81 frames = 75 600 tokens: seq 2,
  4, 8 all divide); heads and FFN width over tensor. `flash` attention (splash on TPU,
  cuDNN on GPU) keeps O(S) memory; `xla` materialises fp32 logits `[B, H, Sq, Sk]` (+ probabilities
  when they are cast to bf16).
- **FSDP gather** (estimate): one block's parameters all-gathered over fsdp and seq (both split
  `embed`, sharding/rules.py) while it runs.
- **VAE decode** (approximate): Wan decodes one latent frame per call; its feature cache going in and
  coming out are both live (sizes exact from `jax.eval_shape`), plus a working set of
  VAE_WORKING_COPIES × the widest activation and the decoded video. Flux decodes the whole image.
  The decode runs after denoising: the peak is the larger of the two phases, parameters included.
- `--compile` lowers and compiles a one-block copy of the transformer (same widths and shape) and the
  VAE decode step on this process's backend (on CPU with XLA attention) and prints
  `compiled.memory_analysis()` beside the analytical numbers for the same programs (sharded when the
  process has enough devices, e.g. XLA_FLAGS=--xla_force_host_platform_device_count=8). On CPU it
  checks the estimate, not the TPU/GPU compiler: tests/test_plan.py holds it within 0.5–2×
  (measured 0.6–1.5× in float32).

Top-level imports stay light (no jax) so `jaxdiff --help` is fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
from typing import Any

GIB = 2 ** 30
ATTENTION = ("flash", "xla")
SEQUENCE_PARALLEL = ("ulysses", "ring")
MESH_AXES = ("data", "fsdp", "tensor", "seq")  # sharding.mesh.MESH_AXES (not imported: no jax for --help)
CLIP_IMAGE_TOKENS = 257  # CLIP ViT-H/14 features per image (Wan I2V cross-attention)
VAE_WORKING_COPIES = 3  # live copies of the largest decoder activation (input, norm/conv out, residual)
# XLA:CPU's YNNPACK fusion runs softmax attention without the logits in its buffer assignment, which
# would hide exactly the workspace `--attention xla` is about; TPU/GPU XLA has no such fusion.
CPU_COMPILE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
SEARCH_COLUMNS = {"params": "transformer_params", "acts": "activations", "gather": "fsdp_gather",
                  "denoise": "denoise_peak", "decode": "decode_peak", "peak": "peak"}
TRANSFORMER_CLASSES = {"FluxTransformer2DModel": "flux", "WanTransformer3DModel": "wan"}


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class Request:
    """What to plan: a preset (or one built from a config), a size, a mesh and kernels."""

    preset: Any  # presets.Preset
    height: int
    width: int
    frames: int
    batch: int
    mesh: dict[str, int]  # every MESH_AXES name, 1 where not given
    dtype: str = "bfloat16"
    vae_dtype: str = "bfloat16"
    attention: str = "flash"
    sequence_parallel: str = "ulysses"
    text_encoder_bytes: int = 0
    axes: tuple[str, ...] = ()  # mesh axes as given (a real mesh has exactly these); () = those > 1

    @property
    def placement_mesh(self) -> dict[str, int]:
        """The mesh `make_mesh` would build: the given axes, size-1 ones included (they matter to
        `fit_spec`), in the given order."""
        axes = self.axes or tuple(a for a in self.mesh if self.mesh[a] > 1) or ("fsdp",)
        return {a: self.mesh[a] for a in axes}

    @property
    def devices(self) -> int:
        return math.prod(self.mesh.values())

    @property
    def mesh_spec(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.placement_mesh.items())


def parse_mesh(spec: str) -> tuple[dict[str, int], tuple[str, ...]]:
    """`"fsdp=2,seq=4"` → (all four axes with sizes, 1 where absent; the axes given, in order).
    Errors come from `sharding.parse_mesh_spec`."""
    from ..sharding.mesh import FILL, parse_mesh_spec

    sizes = parse_mesh_spec(spec)
    if FILL in sizes.values():
        raise ValueError(f"mesh {spec!r}: give every axis a size (plan has no devices to fill -1 from)")
    return {axis: sizes.get(axis, 1) for axis in MESH_AXES}, tuple(sizes)


def preset_from_config(path: str):
    """A Preset for a diffusers transformer `config.json`, a directory holding one, or a converted
    jaxdiff checkpoint directory (`jaxdiff.json`); VAE and defaults from the matching release."""
    from pathlib import Path

    from . import presets

    p = Path(path)
    candidates = ([p] if p.is_file()
                  else [p / "jaxdiff.json", p / "config.json", p / "transformer" / "config.json"])
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no config found at {path} (looked for {', '.join(map(str, candidates))})")
    data = json.loads(found.read_text())
    class_name = data.get("class_name") or data.get("_class_name")
    config = data.get("config", data) if "class_name" in data else data
    family = TRANSFORMER_CLASSES.get(class_name)
    if family is None:
        raise ValueError(f"{found}: class {class_name!r} is not a transformer plan knows; "
                         f"known: {', '.join(TRANSFORMER_CLASSES)}")
    if family == "flux":
        from ..models_flax.flux import FluxConfig
        base = presets.get_preset("flux-dev")
        return dataclasses.replace(base, name=str(found), transformer=FluxConfig.from_dict(config))
    from ..models_flax.wan import WanConfig
    cfg = WanConfig.from_dict(config)
    base = presets.get_preset("wan2.2-ti2v-5b" if cfg.in_channels == 48 else "wan2.1-t2v-14b")
    return dataclasses.replace(base, name=str(found), transformer=cfg)


# ----------------------------------------------------------------------------- parameters


def _dtype(name: str):
    import jax.numpy as jnp

    try:
        dtype = jnp.dtype(name)
    except TypeError as err:
        raise ValueError(f"unknown dtype {name!r}; use bfloat16, float16 or float32") from err
    if dtype not in (jnp.bfloat16, jnp.float16, jnp.float32):
        raise ValueError(f"unsupported dtype {name!r}; use bfloat16, float16 or float32")
    return dtype


@functools.lru_cache(maxsize=4)
def abstract_transformer(preset, dtype: str):
    """`nnx.State` of ShapeDtypeStructs for the preset's transformer (cached: `--mesh auto` reuses it)."""
    from flax import nnx

    from ..models_flax.flux import FluxTransformer2DModel
    from ..models_flax.wan import WanTransformer3DModel

    cls = FluxTransformer2DModel if preset.family == "flux" else WanTransformer3DModel
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(
            lambda: cls(preset.transformer, param_dtype=_dtype(dtype), rngs=nnx.Rngs(0)))
    return nnx.state(model)


@functools.lru_cache(maxsize=4)
def abstract_vae(preset, dtype: str):
    from flax import nnx

    from ..models_flax.vae_kl import AutoencoderKL
    from ..models_flax.vae_wan import AutoencoderKLWan

    cls = AutoencoderKL if preset.family == "flux" else AutoencoderKLWan
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: cls(preset.vae, param_dtype=_dtype(dtype), rngs=nnx.Rngs(0)))


def ffn_width(preset) -> int:
    """The transformer's FFN hidden width (Flux: MLP_RATIO × width)."""
    from ..models_flax.flux import MLP_RATIO

    cfg = preset.transformer
    return cfg.ffn_dim if preset.family == "wan" else MLP_RATIO * cfg.inner_dim


def _axes(spec, dim: int) -> tuple[str, ...]:
    """Mesh axes a PartitionSpec puts on dimension `dim`."""
    entries = tuple(spec)
    entry = entries[dim] if dim < len(entries) else None
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def sharded_bytes(state, mesh: dict[str, int]) -> tuple[int, int]:
    """(global bytes, bytes on one device) of `state` placed by the default rules on `mesh`.

    Uses `sharding.partition_specs` on an `AbstractMesh`, so no devices are needed; every device holds
    the same amount (axes that do not divide a dimension are dropped, never padded).
    """
    from flax import nnx
    from jax.sharding import AbstractMesh

    from ..sharding.mesh import partition_specs

    names = tuple(mesh)
    specs = partition_specs(state, AbstractMesh(tuple(mesh[n] for n in names), names))
    total = per_device = 0
    for path, var in nnx.to_flat_state(state):
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        nbytes = math.prod(value.shape) * value.dtype.itemsize
        spec = specs[tuple(path)]
        split = math.prod(mesh[axis] for dim in range(len(tuple(spec))) for axis in _axes(spec, dim))
        total += nbytes
        per_device += nbytes // split
    return total, per_device


def block_gather_bytes(state, preset, mesh: dict[str, int]) -> int:
    """Bytes one device holds while a block runs with its FSDP shards all-gathered (0 without fsdp or
    seq, the axes `embed` is split over): the largest block's parameters split by `tensor` only."""
    if mesh.get("fsdp", 1) == 1 and mesh.get("seq", 1) == 1:
        return 0
    gathered = dict(mesh, fsdp=1, seq=1)
    lists = ("transformer_blocks", "single_transformer_blocks") if preset.family == "flux" else ("blocks",)
    return max(sharded_bytes(state[name][0], gathered)[1] for name in lists if len(state[name]))


# ----------------------------------------------------------------------------- activations


@dataclasses.dataclass(frozen=True)
class Splits:
    """How one device's share of the activations is cut."""

    batch: int  # batch on one device (cond + uncond counted)
    batch_axes: tuple[str, ...]  # mesh axes splitting the batch
    tokens: int  # tokens of the residual stream on one device (split over seq where seq divides them)
    stream_split: int  # how many ways the residual stream is split (over seq)
    seq_total: int  # full attention sequence
    attention_tokens: int  # query tokens per device inside sequence-parallel attention (seq_total / seq)
    heads: int  # attention heads on one device (before the Ulysses exchange)
    ffn_split: int  # tensor split of the FFN width


def splits(req: Request) -> Splits:
    """Batch and tokens as the models place their token stream (`layers.TOKENS` = ("batch", "seq",
    None) through the sharding rules: batch over data/fsdp, tokens over seq, each only where the mesh
    axis divides it); inside sequence-parallel attention the sequence is split over seq regardless;
    heads and FFN width over tensor where it divides them."""
    from jax.sharding import AbstractMesh

    from ..models_flax.layers import TOKENS
    from ..sharding.mesh import logical_to_mesh_spec

    p, cfg = req.preset, req.preset.transformer
    batch = req.batch * p.guidance_passes
    image = image_tokens_for(req)
    placement = req.placement_mesh
    mesh = AbstractMesh(tuple(placement.values()), tuple(placement))
    # the models annotate their token stream `[B, S, D]` with TOKENS; Flux's single blocks run the
    # joint [text, image] stream, Wan's blocks the image tokens
    stream = image + (p.text_tokens if p.family == "flux" else 0)
    seq_total = stream
    spec = logical_to_mesh_spec(TOKENS, mesh, shape=(batch, stream, cfg.inner_dim))
    batch_axes = _axes(spec, 0)
    stream_split = math.prod(req.mesh[a] for a in _axes(spec, 1))
    t = req.mesh["tensor"]
    heads = cfg.num_attention_heads
    ffn = ffn_width(p)
    return Splits(batch=batch // math.prod(req.mesh[a] for a in batch_axes), batch_axes=batch_axes,
                  tokens=stream // stream_split, stream_split=stream_split,
                  seq_total=seq_total,
                  attention_tokens=-(-seq_total // req.mesh["seq"]),
                  heads=heads // t if heads % t == 0 else heads, ffn_split=t if ffn % t == 0 else 1)


def _attention_workspace(req: Request, sp: Splits, kv_len: int, self_attention: bool) -> int:
    """Per-device bytes the attention kernel needs beyond q/k/v and its output."""
    a = _dtype(req.dtype).itemsize
    hd = req.preset.transformer.attention_head_dim
    parallel = self_attention and req.mesh["seq"] > 1
    ring = parallel and req.sequence_parallel == "ring"
    q_tokens = sp.attention_tokens if parallel else sp.tokens
    rows = sp.batch * sp.heads * q_tokens  # query rows (Ulysses: heads/seq × all tokens, same count)
    extra = 0
    if parallel:  # Ulysses: q/k/v and output exchanged (all-to-all); ring: next K/V block in flight
        extra = (2 if ring else 4) * sp.batch * q_tokens * sp.heads * hd * a
    if req.attention == "xla":
        keys = q_tokens if ring else kv_len
        probs = 0 if a == 4 else a  # fp32 probabilities fuse into the value product; a cast does not
        return extra + rows * keys * (4 + probs)
    return extra + rows * 2 * 4 + (rows * hd * 4 if ring else 0)  # softmax stats (+ ring accumulators)


def transformer_activations(req: Request) -> dict[str, Any]:
    """Peak live bytes on one device during one transformer call: model-level tensors plus the
    largest phase of one block (self-attention, cross-attention, FFN; Flux: joint attention, MLP,
    single-stream block). Returns {"peak", "phase", "parts" (of the peak), "kv", "splits"}."""
    from ..models_flax.wan import NUM_MODULATIONS

    p, cfg = req.preset, req.preset.transformer
    a = _dtype(req.dtype).itemsize
    sp = splits(req)
    text, hd, D = p.text_tokens, cfg.attention_head_dim, cfg.inner_dim
    T = sp.batch * sp.tokens  # residual-stream tokens on this device
    Dl = sp.heads * hd  # attention width on this device
    Fl = ffn_width(p) // sp.ffn_split
    stream = {"residual": T * D * a, "normed input": T * D * a}
    self_attention = {"attention out": T * Dl * a,
                      "attention workspace": _attention_workspace(req, sp, sp.seq_total, True)}
    mlp = {"hidden (pre/post GELU)": 2 * T * Fl * a, "out": T * D * a}
    rope = 2 * sp.tokens * hd * 4  # cos/sin tables, fp32
    self_kv = 2 * sp.batch * sp.attention_tokens * Dl * a

    if p.family == "wan":
        ctx = text + (CLIP_IMAGE_TOKENS if cfg.image_dim else 0)
        latents = sp.batch * cfg.in_channels * math.prod(latent_dims(req)) * a * sp.tokens // sp.seq_total
        model = {"RoPE tables": rope, "text context": sp.batch * ctx * (D + cfg.text_dim) * a,
                 "latents in/out": 2 * latents}
        cross_kv = 2 * sp.batch * ctx * Dl * a
        if p.expand_timesteps:  # per-token timesteps: temb and modulation per token, fp32 per block
            model["per-token modulation"] = T * (1 + NUM_MODULATIONS) * D * a
            stream["per-token modulation (fp32)"] = T * NUM_MODULATIONS * D * 4
        phases = {
            "self-attention": {**stream, "q/k/v": 3 * T * Dl * a, **self_attention},
            "cross-attention": {**stream, "q": T * Dl * a, "text k/v": cross_kv,
                                "attention out": T * Dl * a * (2 if cfg.image_dim else 1),
                                "attention workspace": _attention_workspace(req, sp, ctx, False)},
            "ffn": {**stream, **{f"ffn {k}": v for k, v in mlp.items()}},
        }
        layers = cfg.num_layers
    else:
        latents = sp.batch * (sp.tokens - text) * cfg.in_channels * a
        model = {"RoPE tables": 3 * rope,  # fp32 sin/cos of the angle parts, then the tables
                 "text context": sp.batch * text * cfg.joint_attention_dim * a, "latents in/out": 2 * latents}
        cross_kv = 0
        phases = {
            "joint attention": {**stream, "q/k/v per stream + joined": 6 * T * Dl * a, **self_attention},
            "mlp": {**stream, **{f"mlp {k}": v for k, v in mlp.items()}},
            "single block": {**stream, "attention out": T * Dl * a,
                             "mlp hidden (pre/post GELU)": 2 * T * Fl * a,
                             "packed [attn, mlp]": T * (Dl + Fl) * a, "out": T * D * a},
        }
        layers = cfg.num_layers + cfg.num_single_layers
    phase = max(phases, key=lambda k: sum(phases[k].values()))
    parts = {**model, **phases[phase]}
    kv = {"self-attention K+V per layer": self_kv, "cross-attention K+V per layer": cross_kv,
          "layers": layers}
    return {"peak": sum(parts.values()), "phase": phase, "parts": parts, "kv": kv,
            "splits": dataclasses.asdict(sp)}


def latent_dims(req: Request) -> tuple[int, ...]:
    """Spatial (and temporal) dims of one latent, without batch and channels."""
    from .presets import latent_shape

    return latent_shape(req.preset, req.height, req.width, req.frames)[2:]


def image_tokens_for(req: Request) -> int:
    from .presets import image_tokens

    p = req.preset
    if p.family == "flux" and req.frames != 1:
        raise ValueError(f"{p.name} makes images: --frames must be 1, got {req.frames}")
    if p.family == "flux" and (req.height % (2 * p.spatial_factor) or req.width % (2 * p.spatial_factor)):
        raise ValueError(f"{p.name}: height and width must be multiples of {2 * p.spatial_factor} "
                         f"(2×2 latent packing), got {req.height}×{req.width}")
    if p.family == "wan":
        ph, pw = p.transformer.patch_size[1:]
        m = p.spatial_factor
        if req.height % (m * ph) or req.width % (m * pw):
            raise ValueError(f"{p.name}: height and width must be multiples of {m * ph}, got "
                             f"{req.height}×{req.width}")
    return image_tokens(p, req.height, req.width, req.frames)


def scheduler_bytes(req: Request) -> int:
    """Latents and sampler state in fp32 (noise sample, model output, 2 multistep history entries)."""
    p = req.preset
    channels = p.vae.latent_channels if p.family == "flux" else p.vae.z_dim
    return 4 * req.batch * channels * math.prod(latent_dims(req)) * 4


# ----------------------------------------------------------------------------- VAE


def _vae_step(req: Request):
    """(function, abstract args) of the VAE call that peaks: Flux `decode` of the whole batch, Wan
    `decode_chunk` of one latent frame with a full feature cache (a later chunk)."""
    import jax
    from flax import nnx

    p = req.preset
    dtype = _dtype(req.vae_dtype)
    graphdef, state = nnx.split(abstract_vae(p, req.vae_dtype))
    if p.family == "flux":
        z = jax.ShapeDtypeStruct((req.batch, p.vae.latent_channels, *latent_dims(req)), dtype)
        return (lambda st, z: nnx.merge(graphdef, st).decode(z)), (state, z)
    step = lambda st, z, cache: nnx.merge(graphdef, st).decode_chunk(z, cache)
    z = jax.ShapeDtypeStruct((req.batch, 1, *latent_dims(req)[1:], p.vae.z_dim), dtype)
    _, cache = jax.eval_shape(step, state, z, [None] * nnx.merge(graphdef, state).decoder.cache_size)
    return step, (state, z, cache)


def vae_decode_bytes(req: Request) -> dict[str, Any]:
    """`_vae_decode_bytes`, cached on what it depends on (not the mesh: `--mesh auto` reuses it)."""
    return _vae_decode_bytes(req.preset, req.height, req.width, req.frames, req.batch, req.vae_dtype,
                             req.attention)


@functools.lru_cache(maxsize=16)
def _vae_decode_bytes(preset, height: int, width: int, frames: int, batch: int, vae_dtype: str,
                      attention: str) -> dict[str, Any]:
    """Approximate peak of the VAE decode on one device (replicated, the whole `batch`).

    Wan: one latent frame per call with a feature cache, donated to the step (vae_wan.decode_step), so
    the cache coming out takes the buffers of the one going in: one cache live (exact sizes from
    `jax.eval_shape`); the working set is VAE_WORKING_COPIES × the
    largest activation (the widest cached layer over CACHE_T + 4 frames), plus the decoded video
    (chunks and their concatenation). Flux: the whole image; working set from the full-resolution
    width, plus the mid-block attention workspace.
    """
    import jax

    req = Request(preset, height, width, frames, batch, dict.fromkeys(MESH_AXES, 1), vae_dtype=vae_dtype,
                  attention=attention)
    p = req.preset
    a = _dtype(req.vae_dtype).itemsize
    pixels = req.batch * req.frames * req.height * req.width * 3 * a
    if p.family == "flux":
        c = p.vae.block_out_channels
        # widest full-resolution tensor: the last up block's input, upsampled, c[1] channels
        act = req.batch * req.height * req.width * c[min(1, len(c) - 1)] * a
        s = (req.height // p.spatial_factor) * (req.width // p.spatial_factor)
        attn = req.batch * s * s * (4 + (0 if a == 4 else a)) if req.attention == "xla" else req.batch * s * 8
        parts = {"working set": VAE_WORKING_COPIES * act, "mid-block attention": attn, "image": 2 * pixels}
        return {"peak": sum(parts.values()), "parts": parts}
    from ..models_flax.vae_wan import CACHE_T

    step, args = _vae_step(req)
    cache = args[2]
    frames = jax.eval_shape(step, *args)[0]
    cache_bytes = sum(c.size * c.dtype.itemsize for c in cache)
    widest = max(cache, key=lambda c: c.size)
    act = widest.size // CACHE_T * (CACHE_T + frames.shape[1]) * widest.dtype.itemsize
    parts = {"feature cache (donated)": cache_bytes, "working set": VAE_WORKING_COPIES * act,
             "video (chunks + joined)": 2 * pixels}
    return {"peak": sum(parts.values()), "parts": parts}


# ----------------------------------------------------------------------------- the plan


def hbm_bytes(spec: str | None) -> tuple[str | None, int | None]:
    """`--hbm`: an accelerator name (usable bytes from hardware.py) or a number of GiB (taken as usable)."""
    if spec is None:
        return None, None
    from .hardware import get_accelerator

    try:
        gib = float(spec)
    except ValueError:
        acc = get_accelerator(spec)
        return f"{acc.name} ({acc.memory_gib:g} GiB, {acc.usable_fraction:.0%} usable)", acc.usable_bytes
    if gib <= 0:
        raise ValueError(f"--hbm must be positive, got {spec}")
    return f"{gib:g} GiB", int(gib * GIB)


def plan(req: Request, hbm: str | None = None) -> dict[str, Any]:
    """Every number `jaxdiff plan` prints, per device, in bytes."""
    from ..sharding.mesh import param_bytes

    p = req.preset
    tokens = image_tokens_for(req)
    state = abstract_transformer(p, req.dtype)
    total, per_device = sharded_bytes(state, req.placement_mesh)
    vae_total = param_bytes(abstract_vae(p, req.vae_dtype))
    acts = transformer_activations(req)
    gather = block_gather_bytes(state, p, req.placement_mesh)  # one block at a time
    sched = scheduler_bytes(req)
    vae = vae_decode_bytes(req)
    params = per_device * p.experts
    resident = params + vae_total + req.text_encoder_bytes
    denoise = resident + acts["peak"] + gather + sched
    decode = resident + vae["peak"] + sched
    hbm_name, usable = hbm_bytes(hbm)
    notes = _notes(req, acts["splits"])
    if decode > denoise:
        cache = vae["parts"].get("feature cache (donated)", 0)
        notes.insert(0, "the VAE decode is the peak" + (
            f" (its feature cache is {cache / GIB:.2f} GiB); a smaller --vae-dtype or freeing the "
            "transformer before decoding would lower it" if cache else ""))
    out = {
        "model": p.name, "family": p.family, "mesh": req.mesh_spec, "devices": req.devices,
        "height": req.height, "width": req.width, "frames": req.frames, "batch": req.batch,
        "guidance_passes": p.guidance_passes, "experts": p.experts, "dtype": req.dtype,
        "vae_dtype": req.vae_dtype, "attention": req.attention, "sequence_parallel": req.sequence_parallel,
        "image_tokens": tokens, "text_tokens": p.text_tokens,
        "transformer_params_total": total * p.experts, "transformer_params": params,
        "vae_params": vae_total, "text_encoder": req.text_encoder_bytes,
        "activations": acts["peak"], "activation_phase": acts["phase"], "activation_parts": acts["parts"],
        "fsdp_gather": gather, "scheduler": sched, "kv": acts["kv"], "splits": acts["splits"],
        "vae_decode": vae["peak"], "vae_decode_parts": vae["parts"],
        "denoise_peak": denoise, "decode_peak": decode, "peak": max(denoise, decode),
        "hbm": hbm_name, "usable": usable, "notes": notes,
    }
    if usable is not None:
        out["fits"] = out["peak"] <= usable
        out["headroom"] = usable - out["peak"]
    return out


def _notes(req: Request, sp: dict) -> list[str]:
    p = req.preset
    notes = []
    if p.guidance_passes > 1:
        notes.append("classifier-free guidance: cond + uncond run as one batch of "
                     f"{req.batch * p.guidance_passes}")
    full = req.batch * p.guidance_passes
    split = full // sp["batch"]
    batch_mesh = req.mesh["data"] * req.mesh["fsdp"]
    if split < batch_mesh:
        notes.append(f"batch {full} splits only {split}-way over data×fsdp={batch_mesh}: activations are "
                     "replicated over the rest (add a seq axis, or a batch it divides)")
    if sp["stream_split"] < req.mesh["seq"]:
        notes.append(f"seq={req.mesh['seq']} does not divide the {sp['seq_total']} tokens: only attention is split over seq, "
                     "the residual stream and FFN are replicated over it")
    heads = p.transformer.num_attention_heads
    if req.mesh["tensor"] > 1 and heads % req.mesh["tensor"]:
        notes.append(f"{heads} heads do not divide tensor={req.mesh['tensor']}: attention is replicated")
    if (req.mesh["seq"] > 1 and req.sequence_parallel == "ulysses"
            and sp["heads"] % req.mesh["seq"]):
        notes.append(f"Ulysses needs heads per device ({sp['heads']}) divisible by seq={req.mesh['seq']}: "
                     "use --sequence-parallel ring")
    if p.experts > 1:
        notes.append(f"{p.experts} experts counted resident (swapping them to host would halve parameters)")
    if not req.text_encoder_bytes:
        notes.append("text encoders not modelled (run once before denoising; add --text-encoder-gib)")
    notes.append("activations, FSDP gather and VAE decode are estimates; parameters are exact")
    return notes


# ----------------------------------------------------------------------------- compile cross-check


def compile_check(req: Request) -> dict[str, Any]:
    """Compile a one-block copy of the transformer and the VAE decode step at the requested shape on
    this process's devices (a mesh of them when there are enough, else one device); return
    `memory_analysis()` bytes and the analytical estimates for the same programs. On CPU attention is
    XLA's (splash would run interpreted); on TPU/GPU it is `req.attention` (flash = the backend's best)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ..kernels.attention import attention_options
    from ..models_flax.flux import FluxTransformer2DModel
    from ..models_flax.wan import WanTransformer3DModel
    from ..sharding.mesh import logical_sharding, make_mesh, named_shardings, param_bytes

    p = req.preset
    shallow = ({"num_layers": 1, "num_single_layers": 1} if p.family == "flux" else {"num_layers": 1})
    cfg = dataclasses.replace(p.transformer, **shallow)
    dtype = _dtype(req.dtype)
    cls = FluxTransformer2DModel if p.family == "flux" else WanTransformer3DModel
    with nnx.use_eager_sharding(False):
        graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(cfg, param_dtype=dtype, rngs=nnx.Rngs(0))))
    b = req.batch * p.guidance_passes
    dims = latent_dims(req)
    if p.family == "flux":
        si = image_tokens_for(req)
        from .flux import LATENT_AXES
        inputs = [((b, si, cfg.in_channels), dtype, LATENT_AXES),
                  ((b, p.text_tokens, cfg.joint_attention_dim), dtype, ("batch", None, None)),
                  ((b, cfg.pooled_projection_dim), dtype, ("batch", None)),
                  ((b,), jnp.float32, ("batch",)), ((si, 3), jnp.float32, (None, None)),
                  ((p.text_tokens, 3), jnp.float32, (None, None))]
        if cfg.guidance_embeds:
            inputs.append(((b,), jnp.float32, ("batch",)))
    else:
        from .wan import LATENT_AXES
        timestep = (b, image_tokens_for(req)) if p.expand_timesteps else (b,)
        inputs = [((b, cfg.in_channels, *dims), dtype, LATENT_AXES),
                  (timestep, jnp.float32, ("batch", None)[:len(timestep)]),
                  ((b, p.text_tokens, cfg.text_dim), dtype, ("batch", None, None))]
        if cfg.image_dim:
            inputs.append(((b, CLIP_IMAGE_TOKENS, cfg.image_dim), dtype, ("batch", None, None)))

    def forward(st, *args):
        return nnx.merge(graphdef, st)(*args)

    sharded = len(jax.devices()) >= req.devices and req.devices > 1
    on_cpu = jax.default_backend() == "cpu"
    attention = "xla" if on_cpu else req.attention
    compiler_options = CPU_COMPILE_OPTIONS if on_cpu else {}
    options = {"implementation": "xla" if attention == "xla" else "auto", "sequence_parallel": None}
    if sharded:
        mesh = make_mesh(req.placement_mesh, jax.devices()[:req.devices])
        shardings = named_shardings(state, mesh)
        flat = nnx.to_flat_state(state)
        state = nnx.from_flat_state([(path, var.replace(jax.ShapeDtypeStruct(
            var.get_value().shape, var.get_value().dtype, sharding=shardings[tuple(path)])))
            for path, var in flat])
        args = [jax.ShapeDtypeStruct(s, d, sharding=logical_sharding(ax, mesh, shape=s))
                for s, d, ax in inputs]
        if req.mesh["seq"] > 1:
            options.update(sequence_parallel=req.sequence_parallel, mesh=mesh)
    else:
        args = [jax.ShapeDtypeStruct(s, d) for s, d, _ in inputs]
    with attention_options(**options):
        compiled = jax.jit(forward).lower(state, *args).compile(compiler_options=compiler_options)
    mem = compiled.memory_analysis()
    shallow_preset = dataclasses.replace(p, transformer=cfg)
    estimate = transformer_activations(dataclasses.replace(
        req, preset=shallow_preset, attention=attention,
        **({} if sharded else {"mesh": dict.fromkeys(MESH_AXES, 1), "axes": ()})))
    vae_fn, vae_args = _vae_step(req)
    with attention_options(implementation=options["implementation"], sequence_parallel=None):
        # keep_unused: the encoder's parameters stay arguments, so subtracting all of them is right
        vae_compiled = jax.jit(vae_fn, keep_unused=True).lower(*vae_args).compile(
            compiler_options=compiler_options)
    vae_mem = vae_compiled.memory_analysis()
    vae_params = param_bytes(vae_args[0])
    vae_estimate = vae_decode_bytes(dataclasses.replace(req, attention=attention))
    video = vae_estimate["parts"].get("video (chunks + joined)", vae_estimate["parts"].get("image", 0))
    return {"devices": req.devices if sharded else 1, "sharded": sharded,
            "vae_bytes": int(vae_mem.argument_size_in_bytes + vae_mem.output_size_in_bytes
                             + vae_mem.temp_size_in_bytes - vae_params),
            "vae_estimate_bytes": vae_estimate["peak"] - video,
            "temp_bytes": int(mem.temp_size_in_bytes), "argument_bytes": int(mem.argument_size_in_bytes),
            "output_bytes": int(mem.output_size_in_bytes), "estimate_bytes": estimate["peak"],
            "ratio": mem.temp_size_in_bytes / max(estimate["peak"], 1),
            "backend": jax.default_backend(), "attention": attention}


# ----------------------------------------------------------------------------- mesh search


def candidate_meshes(devices: int) -> list[dict[str, int]]:
    """Every fsdp × tensor × seq factorisation of `devices` (data = 1: it only replicates parameters)."""
    out = []
    for fsdp in range(1, devices + 1):
        for tensor in range(1, devices // fsdp + 1):
            if devices % (fsdp * tensor) == 0:
                out.append({"data": 1, "fsdp": fsdp, "tensor": tensor, "seq": devices // (fsdp * tensor)})
    return out


def search(req: Request, devices: int, hbm: str | None) -> list[dict[str, Any]]:
    """`plan` for each candidate mesh of `devices`, smallest peak first; Ulysses-incompatible seq
    splits are planned with ring attention."""
    rows = []
    heads = req.preset.transformer.num_attention_heads
    for mesh in candidate_meshes(devices):
        local_heads = heads // mesh["tensor"] if heads % mesh["tensor"] == 0 else heads
        sp = req.sequence_parallel if local_heads % mesh["seq"] == 0 else "ring"
        rows.append(plan(dataclasses.replace(req, mesh=mesh, axes=(), sequence_parallel=sp), hbm))
    return sorted(rows, key=lambda r: (r["peak"], r["denoise_peak"]))


# ----------------------------------------------------------------------------- output


def _gib(n: int | float) -> str:
    return f"{n / GIB:8.2f}"


def format_plan(r: dict[str, Any]) -> str:
    """The human-readable table for one `plan` result."""
    shape = f"{r['height']}×{r['width']}" + (f"×{r['frames']} frames" if r["family"] == "wan" else "")
    lines = [f"{r['model']} at {shape}, batch {r['batch']}, {r['dtype']}, mesh {r['mesh']} "
             f"({r['devices']} devices), attention {r['attention']}"
             + (f" ({r['sequence_parallel']})" if "seq=" in r["mesh"] else ""),
             f"tokens: {r['image_tokens']} image + {r['text_tokens']} text; per device: batch "
             f"{r['splits']['batch']}, {r['splits']['tokens']} tokens, {r['splits']['heads']} heads",
             "", "per device                                      GiB"]
    row = lambda name, n: lines.append(f"  {name:<44}{_gib(n)}")
    experts = f" ({r['experts']} experts)" if r["experts"] > 1 else ""
    row(f"transformer parameters{experts} [exact]", r["transformer_params"])
    row("VAE parameters (replicated) [exact]", r["vae_params"])
    row("text encoders" + ("" if r["text_encoder"] else " (not modelled)"), r["text_encoder"])
    row(f"activations, peak in {r['activation_phase']} [est.]", r["activations"])
    for name, n in r["activation_parts"].items():
        if n >= 0.01 * GIB:
            row(f"  {name}", n)
    row("FSDP all-gather of one block [est.]", r["fsdp_gather"])
    row("latents + sampler state", r["scheduler"])
    row("= denoising peak", r["denoise_peak"])
    row("VAE decode step [approx.]", r["vae_decode"])
    for name, n in r["vae_decode_parts"].items():
        if n >= 0.01 * GIB:
            row(f"  {name}", n)
    row("= decoding peak", r["decode_peak"])
    row("PEAK", r["peak"])
    kv = r["kv"]
    cross = kv["cross-attention K+V per layer"]
    lines.append(f"  KV per layer: self-attention K+V {kv['self-attention K+V per layer'] / 2**20:.1f} MiB"
                 + (f", text cross-attention K+V {cross / 2**20:.1f} MiB" if cross else "")
                 + f" ({kv['layers']} layers, not kept between layers)")
    lines.append(f"  transformer parameters, all devices: {r['transformer_params_total'] / GIB:.2f} GiB")
    if r.get("usable") is not None:
        verdict = "FITS" if r["fits"] else "DOES NOT FIT"
        lines.append(f"HBM {r['hbm']}: usable {r['usable'] / GIB:.2f} GiB → {verdict}, headroom "
                     f"{r['headroom'] / GIB:+.2f} GiB")
    if "compile" in r:
        c = r["compile"]
        lines.append(f"compiled one-block copy on {c['devices']} {c['backend'].upper()} device(s), "
                     f"{c['attention']} attention: temp "
                     f"{c['temp_bytes'] / GIB:.2f} GiB vs estimate {c['estimate_bytes'] / GIB:.2f} GiB "
                     f"(×{c['ratio']:.2f}); arguments {c['argument_bytes'] / GIB:.2f} GiB"
                     + ("" if c["sharded"] or r["devices"] == 1
                        else " — unsharded (not enough devices for the mesh)"))
        lines.append(f"compiled VAE decode step: {c['vae_bytes'] / GIB:.2f} GiB (arguments + outputs + temp, "
                     f"less parameters) vs estimate {c['vae_estimate_bytes'] / GIB:.2f} GiB")
        if c["backend"] == "cpu" and r["dtype"] != "float32":
            lines.append("note: XLA:CPU computes bf16/fp16 matmuls in fp32, so its temp bytes include fp32 "
                         "copies of the weights; compare with --dtype float32")
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def format_search(rows: list[dict[str, Any]]) -> str:
    head = rows[0]
    lines = [f"{head['model']} at {head['height']}×{head['width']}×{head['frames']}, "
             f"batch {head['batch']}, "
             f"{head['dtype']}, attention {head['attention']}, {head['devices']} devices"
             + (f", HBM {head['hbm']}" if head["hbm"] else ""),
             f"  {'mesh':<26}" + "".join(f"{c:>8}" for c in SEARCH_COLUMNS) + "  fits"]
    for r in rows:
        fits = "" if r.get("fits") is None else "yes" if r["fits"] else "no"
        mesh = r["mesh"] + (" (ring)" if r["sequence_parallel"] == "ring" and "seq=" in r["mesh"] else "")
        lines.append(f"  {mesh:<26}" + "".join(f"{r[k] / GIB:8.2f}" for k in SEARCH_COLUMNS.values())
                     + f"  {fits}")
    lines.append("GiB per device: transformer parameters exact, the rest estimated (`jaxdiff plan --help`); "
                 "denoise/decode = peak while denoising / decoding, parameters included")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


DTYPES = ("float32", "bfloat16", "float16")
EPILOG = """examples:
  jaxdiff plan --model flux-dev --mesh fsdp=4 --hbm h100
  jaxdiff plan --model wan2.1-t2v-14b --mesh fsdp=8 --height 720 --width 1280 --frames 81 --hbm v5e
  jaxdiff plan --model wan2.1-t2v-14b --mesh auto --devices 8 --hbm v5e   # compare every split
  jaxdiff plan --config FLUX.1-dev/transformer --json

Nothing is downloaded or run: the figures come from the model's shapes. Per device:
  transformer parameters  exact (the real model's shapes, split over the mesh as jaxdiff splits them)
  activations             estimated: the working memory of one transformer block at its peak
  FSDP all-gather         estimated: one block's weights gathered while it runs
  VAE decode              approximate: the decoder's working set after denoising
  text encoders           not modelled; add your own figure with --text-encoder-gib
--compile builds a one-block copy on this machine and prints the compiler's own figures next to
the estimate, as a check."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG  # the module docstring says the same for developers
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="released model preset, e.g. wan2.1-t2v-14b, flux-dev")
    src.add_argument("--config",
                     help="transformer config.json, a diffusers model dir or a converted checkpoint")
    parser.add_argument("--mesh", default="fsdp=1",
                        help="mesh sizes, e.g. fsdp=8 or fsdp=2,seq=4 (devices = product); 'auto' tries "
                             "every fsdp×tensor×seq split of --devices (default: %(default)s, one device)")
    parser.add_argument("--devices", type=int, help="device count for --mesh auto")
    parser.add_argument("--height", type=int, help="pixels (default: the preset's)")
    parser.add_argument("--width", type=int, help="pixels (default: the preset's)")
    parser.add_argument("--frames", type=int, help="video frames, 4k+1 (default: the preset's)")
    parser.add_argument("--batch", type=int, default=1,
                        help="prompts per call; guidance doubles it inside (default: %(default)s)")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                        help="transformer parameters and activations (default: %(default)s)")
    parser.add_argument("--vae-dtype", choices=DTYPES,
                        help="VAE parameters and activations (default: --dtype)")
    parser.add_argument("--attention", choices=ATTENTION, default="flash",
                        help="flash = splash (TPU) / cuDNN (GPU), memory linear in the sequence; xla = "
                             "the full attention matrix in memory (default: %(default)s)")
    parser.add_argument("--sequence-parallel", choices=SEQUENCE_PARALLEL, default="ulysses",
                        help="how a seq mesh axis splits attention (default: %(default)s)")
    parser.add_argument("--hbm", help="accelerator (v4, v5e, v5p, v6e, v7x, a100, h100, h200) or usable GiB")
    parser.add_argument("--text-encoder-gib", type=float, default=0.0,
                        help="resident text-encoder GiB per device to add (not modelled; "
                             "default: %(default)s)")
    parser.add_argument("--compile", action="store_true",
                        help="also compile a one-block copy here and print the compiler's memory figures")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def request_from_args(args: argparse.Namespace, mesh: str | None = None) -> Request:
    """A Request from parsed arguments; `mesh` a spec (default: one device)."""
    from .presets import get_preset

    preset = get_preset(args.model) if args.model else preset_from_config(args.config)
    for name in ("height", "width", "frames", "batch"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name} must be positive, got {value}")
    if args.text_encoder_gib < 0:
        raise ValueError(f"--text-encoder-gib must be ≥ 0, got {args.text_encoder_gib}")
    frames = args.frames if args.frames is not None else preset.frames
    if preset.family == "wan" and (frames - 1) % preset.temporal_factor:
        raise ValueError(f"{preset.name}: --frames must be {preset.temporal_factor}k+1, got {frames}")
    _dtype(args.dtype)
    _dtype(args.vae_dtype or args.dtype)
    sizes, axes = parse_mesh(mesh) if mesh else (dict.fromkeys(MESH_AXES, 1), ())
    return Request(preset=preset, height=args.height or preset.height, width=args.width or preset.width,
                   frames=frames, batch=args.batch, mesh=sizes, axes=axes,
                   dtype=args.dtype, vae_dtype=args.vae_dtype or args.dtype, attention=args.attention,
                   sequence_parallel=args.sequence_parallel,
                   text_encoder_bytes=int(args.text_encoder_gib * GIB))


def run(args: argparse.Namespace) -> int:
    try:
        if args.mesh.strip().lower() == "auto":
            if not args.devices or args.devices <= 0:
                raise ValueError("--mesh auto needs --devices N")
            rows = search(request_from_args(args), args.devices, args.hbm)
            print(json.dumps(rows, indent=1) if args.json else format_search(rows))
            return 0
        req = request_from_args(args, args.mesh)
        if args.devices is not None and args.devices != req.devices:
            raise ValueError(f"mesh {args.mesh} uses {req.devices} devices, --devices says {args.devices}")
        result = plan(req, args.hbm)
        if args.compile:
            result["compile"] = compile_check(req)
    except (ValueError, FileNotFoundError) as err:
        print(f"jaxdiff plan: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if args.json else format_plan(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxdiff plan", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # a usage error (2) or --help (0): the status, as for run's errors
        return int(exit_.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
