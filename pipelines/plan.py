"""`jaxdiff plan`: per-device memory for a model at a size on a mesh, without weights or devices.

    jaxdiff plan --model wan2.1-t2v-14b --mesh fsdp=8 --height 720 --width 1280 --frames 81 --hbm v5e

What is exact and what is estimated (all per device):
- **Parameters** (exact): shapes and dtypes from `nnx.eval_shape` of the real module, placed by the
  same logical-axis rules as `sharding.shard_module` (`partition_specs` on an `AbstractMesh` with the
  given axes, FSDP fallback included), summed. Wan 2.2 A14B counts both experts resident. The VAE is
  counted replicated. The family's text encoders (and Wan I2V's CLIP vision) are counted from the
  released configs (families.ENCODER_PRESETS), sharded by the same rules; they run once before
  denoising, so with `offload_text_encoder` (the default when they would not fit beside the
  transformer) they count only in an encoding phase of their own.
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

Nothing here branches on a family: modules come from the preset's registry row (`row.transformer`,
`row.vae`), the block stacks are the model's top-level `nnx.List`s (their depth, the FFN width as the
widest `mlp` dimension in them, the one-block copy), the compile check's inputs are the kind's
`example_inputs` / `input_axes`, and what shapes cannot say (which tokens the blocks see, each block
phase's live tensors, how the VAE decodes) is the row's `plan_estimates` (pipelines/plan_estimates.py).

The command (arguments, tables, `--json`) is pipelines/plan_cli.py. Top-level imports stay light (no
jax) so `jaxdiff --help` is fast.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any

GIB = 2 ** 30
ATTENTION = ("flash", "xla")
SEQUENCE_PARALLEL = ("ulysses", "ring")
MESH_AXES = ("data", "fsdp", "tensor", "seq")  # sharding.mesh.MESH_AXES (not imported: no jax for --help)
VAE_WORKING_COPIES = 3  # live copies of the largest decoder activation (input, norm/conv out, residual)
# XLA:CPU's YNNPACK fusion runs softmax attention without the logits in its buffer assignment, which
# would hide exactly the workspace `--attention xla` is about; TPU/GPU XLA has no such fusion.
CPU_COMPILE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


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
    text_encoder_bytes: int = 0  # > 0: this figure per device instead of the counted encoders
    offload_text_encoder: bool | None = None  # None: offload when the encoders do not fit beside the rest
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


def _read_config(path) -> tuple[str | None, dict[str, Any]]:
    """(class name, config fields) of a diffusers `config.json` or a converted `jaxdiff.json`."""
    data = json.loads(path.read_text())
    if "class_name" in data:  # jaxdiff.json: {"format", "class_name", "config", …}
        return data["class_name"], data.get("config", data)
    return data.get("_class_name"), data


def _base_preset(row, config):
    """The family's preset whose transformer fits `config` best: the same input and output channels
    first (the latents it takes and gives back), then the most config fields in common; the first on
    ties (the registry lists a family's plainest release first)."""
    if not row.presets:
        raise ValueError(f"family {row.name!r} has no presets to take a VAE and defaults from")
    from . import presets

    given = dataclasses.asdict(config)

    def fit(preset):
        have = dataclasses.asdict(preset.transformer)
        same = {k for k, v in given.items() if have.get(k) == v}
        return {"in_channels", "out_channels"} <= same, len(same)

    return max((presets.get_preset(p.name) for p in row.presets), key=fit)


def _pipeline_vae(found, row):
    """The VAE config of the diffusers pipeline dir `found` sits in (`<dir>/<model>/config.json` with
    `<dir>/vae/config.json` beside it), else None; a VAE of another family's kind is an error."""
    if found.parent.name == "vae":
        return None
    vae = next((found.parent.parent / "vae" / name for name in ("config.json", "jaxdiff.json")
                if (found.parent.parent / "vae" / name).is_file()), None)
    if vae is None:
        return None
    class_name, config = _read_config(vae)
    if class_name != row.vae.class_name:
        raise ValueError(f"{vae}: class {class_name!r}, but the {row.name} family's VAE is "
                         f"{row.vae.class_name}")
    config_cls, _ = row.vae.classes()
    return config_cls.from_dict(config)


def preset_from_config(path: str):
    """A Preset for a diffusers transformer `config.json`, a directory holding one, or a converted
    jaxdiff checkpoint directory (`jaxdiff.json`). The family is the registry's whose transformer
    class the config names; the VAE is the pipeline dir's own (`vae/config.json` beside the
    transformer's dir) when there is one, else that of the family's preset whose transformer fits
    (`_base_preset`), which also gives the defaults (size, steps, guidance passes, experts)."""
    from pathlib import Path

    from .. import families

    p = Path(path)
    candidates = ([p] if p.is_file()
                  else [p / "jaxdiff.json", p / "config.json", p / "transformer" / "config.json"])
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no config found at {path} (looked for {', '.join(map(str, candidates))})")
    class_name, config = _read_config(found)
    row = next((f for f in families.FAMILIES.values() if f.transformer.class_name == class_name), None)
    if row is None:
        known = ", ".join(f.transformer.class_name for f in families.FAMILIES.values())
        raise ValueError(f"{found}: class {class_name!r} is not a transformer plan knows; known: {known}")
    config_cls, _ = row.transformer.classes()
    transformer = config_cls.from_dict(config)
    vae = _pipeline_vae(found, row)
    base = _base_preset(row, transformer)
    return dataclasses.replace(base, name=str(found), transformer=transformer,
                               **({} if vae is None else {"vae": vae}))


def estimates(preset):
    """The family's `plan_estimates.FamilyEstimates` (the registry row's `plan_estimates`)."""
    from .. import families

    if preset.row.plan_estimates is None:
        raise ValueError(f"family {preset.row.name!r} has no plan estimates (Family.plan_estimates)")
    return families.resolve(preset.row.plan_estimates)


# ----------------------------------------------------------------------------- parameters


def as_dtype(name: str):
    """The jnp dtype called `name`; ValueError unless it is bfloat16, float16 or float32."""
    import jax.numpy as jnp

    try:
        dtype = jnp.dtype(name)
    except TypeError as err:
        raise ValueError(f"unknown dtype {name!r}; use bfloat16, float16 or float32") from err
    if dtype not in (jnp.bfloat16, jnp.float16, jnp.float32):
        raise ValueError(f"unsupported dtype {name!r}; use bfloat16, float16 or float32")
    return dtype


@functools.lru_cache(maxsize=8)
def abstract_split(kind, config, dtype: str):
    """(graphdef, state of ShapeDtypeStructs) of a registry kind's module for `config` (cached:
    `--mesh auto`, the activations and the compile check reuse it; kinds hash by identity)."""
    from ..models_flax.build import abstract_split as split

    _, model_cls = kind.classes()
    return split(model_cls, config, as_dtype(dtype))


def abstract_transformer(preset, dtype: str):
    """`nnx.State` of ShapeDtypeStructs for the preset's transformer."""
    return abstract_split(preset.row.transformer, preset.transformer, dtype)[1]


def abstract_vae(preset, dtype: str):
    """`nnx.State` of ShapeDtypeStructs for the preset's VAE."""
    return abstract_split(preset.row.vae, preset.vae, dtype)[1]


def block_lists(state) -> dict[str, Any]:
    """The model's stacks of blocks: its top-level `nnx.List`s, whose states are keyed 0, 1, …"""
    from flax import nnx

    return {name: sub for name, sub in state.items()
            if isinstance(sub, nnx.State) and len(sub) and all(isinstance(k, int) for k in sub.keys())}


def ffn_width(state) -> int:
    """The widest `mlp`-named parameter dimension inside the blocks (the FFN hidden width)."""
    from flax import nnx

    widths = [size for blocks in block_lists(state).values() for _, var in nnx.to_flat_state(blocks)
              for size, name in zip(var.get_value().shape, var.get_metadata().get("out_sharding") or ())
              if name == "mlp"]
    return max(widths, default=0)


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


def block_gather_bytes(state, mesh: dict[str, int]) -> int:
    """Bytes one device holds while a block runs with its FSDP shards all-gathered (0 without fsdp or
    seq, the axes `embed` is split over): the largest block's parameters split by `tensor` only."""
    if mesh.get("fsdp", 1) == 1 and mesh.get("seq", 1) == 1:
        return 0
    gathered = dict(mesh, fsdp=1, seq=1)
    return max((sharded_bytes(blocks[0], gathered)[1] for blocks in block_lists(state).values()), default=0)


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
    # the models annotate their token stream `[B, S, D]` with TOKENS; whether it holds the text
    # tokens too is the family's (Flux's single blocks: [text, image]; Wan's blocks: image only)
    stream = image + (p.text_tokens if estimates(p).text_in_stream else 0)
    seq_total = stream
    spec = logical_to_mesh_spec(TOKENS, mesh, shape=(batch, stream, cfg.inner_dim))
    batch_axes = _axes(spec, 0)
    stream_split = math.prod(req.mesh[a] for a in _axes(spec, 1))
    t = req.mesh["tensor"]
    heads = cfg.num_attention_heads
    ffn = ffn_width(abstract_transformer(p, req.dtype))
    return Splits(batch=batch // math.prod(req.mesh[a] for a in batch_axes), batch_axes=batch_axes,
                  tokens=stream // stream_split, stream_split=stream_split,
                  seq_total=seq_total,
                  attention_tokens=-(-seq_total // req.mesh["seq"]),
                  heads=heads // t if heads % t == 0 else heads, ffn_split=t if ffn % t == 0 else 1)


def _attention_workspace(req: Request, sp: Splits, kv_len: int, self_attention: bool) -> int:
    """Per-device bytes the attention kernel needs beyond q/k/v and its output."""
    a = as_dtype(req.dtype).itemsize
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


@dataclasses.dataclass(frozen=True)
class BlockTerms:
    """The terms every family's block shares, per device, in bytes (what `FamilyEstimates.phases`
    composes its phases from)."""

    req: Request
    splits: Splits
    itemsize: int  # bytes per activation element
    tokens: int  # residual-stream tokens on this device (batch × tokens)
    attention_width: int  # heads × head dim on this device
    ffn_width: int  # FFN hidden width on this device
    stream: dict[str, int]  # the residual stream and its normed copy
    self_attention: dict[str, int]  # self-attention output and kernel workspace
    mlp: dict[str, int]  # FFN hidden (pre/post GELU) and output
    rope: int  # one set of fp32 cos/sin tables

    def workspace(self, kv_len: int) -> int:
        """Attention workspace of a non-sequence-parallel attention over `kv_len` keys (cross-attention)."""
        return _attention_workspace(self.req, self.splits, kv_len, False)


def transformer_activations(req: Request) -> dict[str, Any]:
    """Peak live bytes on one device during one transformer call: model-level tensors plus the
    largest phase of one block (the family's `phases`: self-attention, cross-attention, FFN; Flux:
    joint attention, MLP, single-stream block). Returns {"peak", "phase", "parts" (of the peak), "kv",
    "splits"}."""
    p, cfg = req.preset, req.preset.transformer
    a = as_dtype(req.dtype).itemsize
    sp = splits(req)
    hd, D = cfg.attention_head_dim, cfg.inner_dim
    T = sp.batch * sp.tokens  # residual-stream tokens on this device
    Dl = sp.heads * hd  # attention width on this device
    state = abstract_transformer(p, req.dtype)
    Fl = ffn_width(state) // sp.ffn_split
    terms = BlockTerms(
        req=req, splits=sp, itemsize=a, tokens=T, attention_width=Dl, ffn_width=Fl,
        stream={"residual": T * D * a, "normed input": T * D * a},
        self_attention={"attention out": T * Dl * a,
                        "attention workspace": _attention_workspace(req, sp, sp.seq_total, True)},
        mlp={"hidden (pre/post GELU)": 2 * T * Fl * a, "out": T * D * a},
        rope=2 * sp.tokens * hd * 4)  # cos/sin tables, fp32
    model, phases, cross_kv = estimates(p).phases(terms)
    phase = max(phases, key=lambda k: sum(phases[k].values()))
    parts = {**model, **phases[phase]}
    kv = {"self-attention K+V per layer": 2 * sp.batch * sp.attention_tokens * Dl * a,
          "cross-attention K+V per layer": cross_kv,
          "layers": sum(len(blocks) for blocks in block_lists(state).values())}
    return {"peak": sum(parts.values()), "phase": phase, "parts": parts, "kv": kv,
            "splits": dataclasses.asdict(sp)}


def latent_dims(req: Request) -> tuple[int, ...]:
    """Spatial (and temporal) dims of one latent, without batch and channels."""
    from .presets import latent_shape

    return latent_shape(req.preset, req.height, req.width, req.frames)[2:]


def image_tokens_for(req: Request) -> int:
    """The transformer's image tokens at the request's size; ValueError for a size the family cannot
    make (frames for an image family; height/width not whole tokens)."""
    from .presets import image_tokens

    p = req.preset
    if not p.video and req.frames != 1:
        raise ValueError(f"{p.name} makes images: --frames must be 1, got {req.frames}")
    ph, pw = estimates(p).token_patch(p.transformer)
    s = p.spatial_factor
    if req.height % (s * ph) or req.width % (s * pw):
        multiple = f"{s * ph}" if ph == pw else f"{s * ph} (height) and {s * pw} (width)"
        raise ValueError(f"{p.name}: height and width must be multiples of {multiple} (VAE factor {s} × "
                         f"{ph}×{pw} latents per token), got {req.height}×{req.width}")
    return image_tokens(p, req.height, req.width, req.frames)


def scheduler_bytes(req: Request) -> int:
    """Latents and sampler state in fp32 (noise sample, model output, 2 multistep history entries)."""
    from .presets import latent_shape

    return 4 * math.prod(latent_shape(req.preset, req.height, req.width, req.frames, req.batch)) * 4


# ----------------------------------------------------------------------------- VAE


def vae_step(req: Request):
    """(function, abstract args) of the VAE call that peaks (the family's `vae_step`: Flux `decode`
    of the whole batch, Wan `decode_chunk` of one latent frame with a full feature cache)."""
    graphdef, state = abstract_split(req.preset.row.vae, req.preset.vae, req.vae_dtype)
    return estimates(req.preset).vae_step(req, graphdef, state)


def vae_decode_bytes(req: Request) -> dict[str, Any]:
    """`_vae_decode_bytes`, cached on what it depends on (not the mesh: `--mesh auto` reuses it)."""
    return _vae_decode_bytes(req.preset, req.height, req.width, req.frames, req.batch, req.vae_dtype,
                             req.attention)


@functools.lru_cache(maxsize=16)
def _vae_decode_bytes(preset, height: int, width: int, frames: int, batch: int, vae_dtype: str,
                      attention: str) -> dict[str, Any]:
    """Approximate peak of the VAE decode on one device (replicated, the whole `batch`): the family's
    `vae_decode` ({"peak", "parts", "output", "cache"})."""
    req = Request(preset, height, width, frames, batch, dict.fromkeys(MESH_AXES, 1), vae_dtype=vae_dtype,
                  attention=attention)
    return estimates(preset).vae_decode(req)


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


def encoder_terms(req: Request) -> dict[str, Any]:
    """Per-device parameter bytes of the family's encoders (exact) and the encoding step's
    activations (estimate: hidden and FFN streams plus XLA attention's fp32 logits and probabilities,
    heads split over tensor)."""
    import numpy as np

    from .. import families
    from .text import encoder_width

    p = req.preset
    kinds = list(p.row.text_encoders)
    if p.row.image_encoder is not None and getattr(p.transformer, "image_dim", None):
        kinds.append(p.row.image_encoder)
    params, acts = {}, 0
    item = np.dtype(as_dtype(req.dtype)).itemsize
    for kind in kinds:
        config = families.resolve(kind.config_class).from_dict(families.ENCODER_PRESETS[kind.name])
        _, state = abstract_split(kind, config, req.dtype)
        params[kind.name] = sharded_bytes(state, req.placement_mesh)[1]
        width = encoder_width(config)
        ffn = getattr(config, "d_ff", None) or config.intermediate_size
        heads = getattr(config, "num_heads", None) or config.num_attention_heads
        tokens = p.text_tokens if kind.role == "text_encoder" else (config.image_size // config.patch_size) ** 2 + 1
        tokens = min(tokens, getattr(config, "max_position_embeddings", tokens))
        heads_here = max(1, heads // req.mesh["tensor"])
        acts = max(acts, req.batch * tokens * (2 * ffn + 4 * width) * item
                   + 2 * req.batch * heads_here * tokens * tokens * 4)
    return {"params": params, "total": sum(params.values()), "activations": acts}


def plan(req: Request, hbm: str | None = None) -> dict[str, Any]:
    """Every number `jaxdiff plan` prints, per device, in bytes."""
    from ..sharding.mesh import param_bytes

    p = req.preset
    tokens = image_tokens_for(req)
    state = abstract_transformer(p, req.dtype)
    total, per_device = sharded_bytes(state, req.placement_mesh)
    vae_total = param_bytes(abstract_vae(p, req.vae_dtype))
    acts = transformer_activations(req)
    gather = block_gather_bytes(state, req.placement_mesh)  # one block at a time
    sched = scheduler_bytes(req)
    vae = vae_decode_bytes(req)
    params = per_device * p.experts
    enc = encoder_terms(req)
    encoders = req.text_encoder_bytes or enc["total"]
    hbm_name, usable = hbm_bytes(hbm)
    base = params + vae_total
    peaks = lambda resident: (resident + acts["peak"] + gather + sched, resident + vae["peak"] + sched)
    offload = req.offload_text_encoder
    if offload is None:  # keep them only when everything fits with them resident
        offload = usable is not None and max(peaks(base + encoders)) > usable
    resident = base + (0 if offload else encoders)
    denoise, decode = peaks(resident)
    encode = encoders + enc["activations"] + (0 if offload else base)
    notes = _notes(req, acts["splits"])
    notes.insert(0, "text encoders " + (
        "offloaded: they encode first, then free their memory before the transformer runs" if offload
        else "kept resident beside the transformer"))
    if decode > denoise:
        cache = vae["cache"]
        notes.insert(0, "the VAE decode is the peak" + (
            f" (its feature cache is {cache / GIB:.2f} GiB); a smaller --vae-dtype or freeing the "
            "transformer before decoding would lower it" if cache else ""))
    out = {
        "model": p.name, "family": p.family, "video": p.video, "mesh": req.mesh_spec,
        "devices": req.devices,
        "height": req.height, "width": req.width, "frames": req.frames, "batch": req.batch,
        "guidance_passes": p.guidance_passes, "experts": p.experts, "dtype": req.dtype,
        "vae_dtype": req.vae_dtype, "attention": req.attention, "sequence_parallel": req.sequence_parallel,
        "image_tokens": tokens, "text_tokens": p.text_tokens,
        "transformer_params_total": total * p.experts, "transformer_params": params,
        "vae_params": vae_total, "text_encoder": encoders, "text_encoder_parts": enc["params"],
        "text_encoder_offloaded": offload, "encode_activations": enc["activations"], "encode_peak": encode,
        "activations": acts["peak"], "activation_phase": acts["phase"], "activation_parts": acts["parts"],
        "fsdp_gather": gather, "scheduler": sched, "kv": acts["kv"], "splits": acts["splits"],
        "vae_decode": vae["peak"], "vae_decode_parts": vae["parts"],
        "denoise_peak": denoise, "decode_peak": decode, "peak": max(encode, denoise, decode),
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
    notes.append("activations, FSDP gather and VAE decode are estimates; parameters are exact")
    return notes


# ----------------------------------------------------------------------------- compile cross-check


def one_block_copy(graphdef, state):
    """(graphdef, state) of the same abstract model with each block list cut to its first block: same
    widths and shapes, depth 1 per stack (the models loop over their lists, never over a depth field)."""
    from flax import nnx

    model = nnx.merge(graphdef, state)
    for name in block_lists(state):
        setattr(model, name, nnx.List(list(getattr(model, name))[:1]))
    return nnx.split(model)


def forward_inputs(req: Request) -> dict[str, tuple[tuple[int, ...], Any, tuple]]:
    """`{forward argument: (shape, dtype, logical axes)}` of one transformer call at the request's size,
    from the kind's `example_inputs` and `input_axes`. Per-sample features (batch-leading, two or
    more dims) come in the compute dtype, as the pipelines cast them; per-sample scalars (timestep,
    guidance) and position ids stay float32. Per-token timesteps (`expand_timesteps`) are `[B, S]`."""
    import jax.numpy as jnp

    from .. import families

    p, kind = req.preset, req.preset.row.transformer
    packing = estimates(p).packing
    dims = latent_dims(req)
    frames, rows, cols = dims if p.video else (1, *dims)
    sizes = families.Sizes(batch=req.batch * p.guidance_passes, height=rows // packing,
                           width=cols // packing, frames=frames, text_tokens=p.text_tokens)
    examples = families.call(kind.example_inputs, p.transformer, sizes)
    input_axes = families.resolve(kind.input_axes)
    compute = as_dtype(req.dtype)
    out = {}
    for name, value in examples.items():
        if value is None:
            continue
        shape, axes = tuple(value.shape), tuple(input_axes[name])
        dtype = compute if axes[:1] == ("batch",) and len(shape) > 1 else jnp.float32
        if name == "timestep" and p.expand_timesteps and len(shape) == 1:
            shape, axes = (*shape, image_tokens_for(req)), (*axes, None)
        out[name] = (shape, dtype, axes)
    return out


def compile_check(req: Request) -> dict[str, Any]:
    """Compile a one-block copy of the transformer and the VAE decode step at the requested shape on
    this process's devices (a mesh of them when there are enough, else one device); return
    `memory_analysis()` bytes and the analytical estimates for the same programs. On CPU attention is
    XLA's (splash would run interpreted); on TPU/GPU it is `req.attention` (flash = the backend's best)."""
    import jax
    from flax import nnx

    from ..kernels.attention import attention_options
    from ..sharding.mesh import logical_sharding, make_mesh, named_shardings, param_bytes

    p = req.preset
    graphdef, state = one_block_copy(*abstract_split(p.row.transformer, p.transformer, req.dtype))
    inputs = forward_inputs(req)

    names = tuple(inputs)  # positional, in the forward's own order (jit would sort a dict's keys)

    def forward(st, *values):
        return nnx.merge(graphdef, st)(**dict(zip(names, values)))

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
                for s, d, ax in inputs.values()]
        if req.mesh["seq"] > 1:
            options.update(sequence_parallel=req.sequence_parallel, mesh=mesh)
    else:
        args = [jax.ShapeDtypeStruct(s, d) for s, d, _ in inputs.values()]
    with attention_options(**options):
        compiled = jax.jit(forward).lower(state, *args).compile(compiler_options=compiler_options)
    mem = compiled.memory_analysis()
    estimate = transformer_activations(dataclasses.replace(
        req, attention=attention,
        **({} if sharded else {"mesh": dict.fromkeys(MESH_AXES, 1), "axes": ()})))
    vae_fn, vae_args = vae_step(req)
    with attention_options(implementation=options["implementation"], sequence_parallel=None):
        # keep_unused: the encoder's parameters stay arguments, so subtracting all of them is right
        vae_compiled = jax.jit(vae_fn, keep_unused=True).lower(*vae_args).compile(
            compiler_options=compiler_options)
    vae_mem = vae_compiled.memory_analysis()
    vae_params = param_bytes(vae_args[0])
    vae_estimate = vae_decode_bytes(dataclasses.replace(req, attention=attention))
    return {"devices": req.devices if sharded else 1, "sharded": sharded,
            "vae_bytes": int(vae_mem.argument_size_in_bytes + vae_mem.output_size_in_bytes
                             + vae_mem.temp_size_in_bytes - vae_params),
            "vae_estimate_bytes": vae_estimate["peak"] - vae_estimate["output"],
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
