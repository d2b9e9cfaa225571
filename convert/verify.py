"""`jaxdiff verify PATH`: our Flax module beside the diffusers torch module, traced with torchax.

PATH is what we load (`load_model`): a diffusers model directory (config.json + *.safetensors), a
single-file `.safetensors` (BFL / ComfyUI Flux transformer, also fp8 with or without scales; LDM / BFL
`ae` VAE) or a converted jaxdiff directory. The torch reference is the diffusers module built from
`--reference SRC` (a diffusers directory or single file), by default from PATH itself; a converted
directory holds no torch weights, so it needs `--reference`.

The torch reference of a single file is independent of our key maps: only the config comes from our
detection (single files carry none; `--config` overrides it). The file is read with
`safetensors.torch.load_file`, fp8 is dequantised in torch (`weight.float() · scale`; scale and
input-scale keys dropped), ComfyUI's `model.diffusion_model.` prefix is stripped, and diffusers' own
`convert_flux_transformer_checkpoint_to_diffusers` / `convert_ldm_vae_checkpoint` rename the keys
into `FluxTransformer2DModel(**config)` / `AutoencoderKL(**config)` with `load_state_dict(strict=True)`.

Both sides get the same random inputs; our output is judged against the torchax trace of the
diffusers module (same XLA backend), and plain torch eager is printed beside it for reference.
Exit status: 0 all outputs within tolerance, 1 some output is not, 2 cannot run.

This is the only runtime module allowed torch/torchax/diffusers (the `verify` extra), and it imports
them lazily inside `run`. Host memory: about three copies of the model (torch, torchax, ours).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

MISSING_EXTRA = "jaxdiff verify needs the verify extra: pip install 'jaxdiff[verify]'"
DTYPES = ("float32", "bfloat16")
FLUX = "FluxTransformer2DModel"
VAE = "AutoencoderKL"
FAMILIES = (FLUX, VAE)

FLUX_IMAGE_SIDE = 8  # 8 × 8 packed latent tokens
FLUX_TEXT_TOKENS = 16
FLUX_GUIDANCE = 3.5
VAE_LATENT_SIDE = 8  # latent is 8 × 8; the image is 8·f × 8·f

# Kinds of path (`Source.kind`).
DIFFUSERS_DIR, SINGLE_FILE, CONVERTED = "diffusers directory", "single file", "converted jaxdiff checkpoint"
CONVERTED_META = "jaxdiff.json"  # marks a converted checkpoint directory (convert/detect.py)

# Single-file torch reference (see module docstring).
COMFY_PREFIX = "model.diffusion_model."
FP8_WEIGHT_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")  # per-tensor `<m>.weight` scales
FP8_DROPPED_SUFFIXES = FP8_WEIGHT_SCALE_SUFFIXES + (".scale_input", ".input_scale")
FP8_MARKER = "scaled_fp8"  # ComfyUI's marker tensor (possibly prefixed)
# diffusers' `convert_flux_transformer_checkpoint_to_diffusers` hardcodes FLUX.1's width when it splits
# `single_blocks.N.linear1` = [q; k; v; mlp]; other widths are fed through it zero-padded to that
# layout and the four parts cut back afterwards (every other key is width-agnostic there).
DIFFUSERS_FLUX_INNER_DIM = 3072
DIFFUSERS_FLUX_MLP_RATIO = 4
SINGLE_BLOCK_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")  # linear1 rows, in order


class CannotVerify(Exception):
    """The comparison cannot run (exit status 2); the message says why."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One side's checkpoint: what is at `path`, its diffusers class name and config dict."""

    path: Path
    kind: str  # DIFFUSERS_DIR | SINGLE_FILE | CONVERTED
    family: str  # FLUX | VAE
    config: dict[str, Any]
    origin: str | None = None  # converted checkpoints: the source recorded in jaxdiff.json


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One row of the report: output `name` compared as `against`; `judged` rows set the exit status."""

    name: str
    against: str
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    judged: bool
    error: str | None = None

    def ok(self, tolerance: float) -> bool:
        # `not (x > tol)` would pass NaN; `x <= tol` fails it.
        return self.error is None and bool(self.max_abs <= tolerance)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path,
                        help="what to load with jaxdiff (Flux transformer or AutoencoderKL): a diffusers "
                             "model directory, a single-file .safetensors (BFL / ComfyUI Flux, fp8 or "
                             "not; LDM / BFL ae VAE) or a converted jaxdiff directory (needs --reference)")
    parser.add_argument("--reference", type=Path, metavar="SRC", default=None,
                        help="torch source to compare against (diffusers model directory or single file), "
                             "e.g. what PATH was converted from (default: PATH itself)")
    parser.add_argument("--config", type=Path, metavar="JSON_FILE", default=None,
                        help="diffusers config.json-style file for single files whose config cannot be "
                             "detected (e.g. head dim not 128); used by our loader and the diffusers module")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="max abs diff allowed between ours and the torchax trace (default 1e-5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the random inputs (default 1)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="weights, inputs and compute dtype on all sides (default float32)")


def read_family(path: Path) -> tuple[str, dict[str, Any]]:
    """(`_class_name`, config dict) of a diffusers model directory."""
    config_file = path / "config.json"
    if (path / "model_index.json").is_file() and not config_file.is_file():
        raise FileNotFoundError(f"{path} is a diffusers pipeline; verify one of its models, e.g. "
                                f"{path / 'transformer'} or {path / 'vae'}")
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: not a diffusers model directory (no config.json), a converted "
                                f"jaxdiff directory (no {CONVERTED_META}) or a .safetensors file")
    config = json.loads(config_file.read_text())
    family = config.get("_class_name")
    if family not in FAMILIES:
        raise ValueError(f"{config_file}: _class_name {family!r} is not one jaxdiff verify knows; "
                         f"expected one of {FAMILIES}")
    return family, config


def read_config_file(path: Path | None) -> dict[str, Any] | None:
    """The `--config` JSON object (None when not given)."""
    if path is None:
        return None
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--config {path}: cannot read a JSON config ({e})") from e
    if not isinstance(config, dict):
        raise ValueError(f"--config {path}: expected a JSON object (diffusers config.json layout)")
    return config


def describe(path: Path, config: dict[str, Any] | None = None) -> Source:
    """What `path` holds (kind, family, config), from config files or single-file headers.

    `config` overrides the detected config of a single file. Raises FileNotFoundError / ValueError
    saying what is wrong.
    """
    path = Path(path)
    if path.is_file():
        from .families import FAMILIES as OURS
        from .loader import open_plan

        with open_plan(path, config=config) as plan:  # refuses pickles, unknown layouts, bad keys
            family, config = OURS[plan.family].class_name, plan.config_dict()
        if family not in FAMILIES:
            raise ValueError(f"{path}: holds a {family}; jaxdiff verify knows {FAMILIES}")
        return Source(path, SINGLE_FILE, family, config)
    if (path / CONVERTED_META).is_file():
        from .checkpoint import read_meta

        meta = read_meta(path)
        family = meta.get("class_name") or meta["config"].get("_class_name")
        if family not in FAMILIES:
            raise ValueError(f"{path}: converted {family}; jaxdiff verify knows {FAMILIES}")
        return Source(path, CONVERTED, family, dict(meta["config"]), origin=meta.get("source"))
    family, config_json = read_family(path)
    return Source(path, DIFFUSERS_DIR, family, config_json)


def resolve(path: Path, reference: Path | None = None,
            config: dict[str, Any] | None = None) -> tuple[Source, Source]:
    """(ours, torch reference) sources of one verify run; raises CannotVerify saying why not."""
    path = Path(path)
    single = [p for p in (path, reference) if p is not None and Path(p).is_file()]
    if config is not None and not single:
        raise CannotVerify("--config applies to single .safetensors files only; a diffusers directory "
                           "or converted checkpoint carries its own config")
    try:
        ours = describe(path, config if path.is_file() else None)
        if reference is None:
            if ours.kind == CONVERTED:
                hint = f" (its {CONVERTED_META} records source {ours.origin})" if ours.origin else ""
                raise CannotVerify(
                    f"{path} is a converted jaxdiff checkpoint: it holds no torch weights to compare "
                    f"against. Pass --reference SRC naming the torch source it was converted from — a "
                    f"diffusers model directory or single .safetensors file{hint}")
            return ours, ours
        ref = describe(reference, config if Path(reference).is_file() else None)
    except (FileNotFoundError, ValueError) as e:
        raise CannotVerify(str(e)) from e
    if ref.kind == CONVERTED:
        raise CannotVerify(f"--reference {reference}: a converted jaxdiff checkpoint holds no torch "
                           "weights; name a diffusers model directory or single .safetensors file")
    if ref.family != ours.family:
        raise CannotVerify(f"{path} holds a {ours.family} but --reference {reference} a {ref.family}")
    return ours, ref


def config_differences(ours: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    """`key: ours vs reference` for config fields both name that differ (lists and tuples alike)."""
    norm = lambda v: list(v) if isinstance(v, tuple) else v
    return [f"{k}: {ours[k]!r} vs {reference[k]!r}" for k in sorted(set(ours) & set(reference))
            if not k.startswith("_") and norm(ours[k]) != norm(reference[k])]


def compare(name: str, against: str, ours, reference, *, judged: bool) -> Comparison:
    """Max/mean abs diff of two arrays (any array-likes; compared in float64)."""
    a, b = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    if a.shape != b.shape:
        return Comparison(name, against, a.shape, float("nan"), float("nan"), judged,
                          error=f"shape {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    return Comparison(name, against, a.shape, float(diff.max(initial=0.0)), float(diff.mean()), judged)


def format_table(rows: list[Comparison], tolerance: float) -> str:
    header = ("output", "compared", "shape", "max abs diff", "mean abs diff", "result")
    lines = [header]
    for r in rows:
        if r.judged:
            result = "OK" if r.ok(tolerance) else "FAIL" + (f" ({r.error})" if r.error else "")
        else:
            result = "reference" + (f" ({r.error})" if r.error else "")
        lines.append((r.name, r.against, str(r.shape), f"{r.max_abs:.3e}", f"{r.mean_abs:.3e}", result))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    fmt = lambda line: "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
    return "\n".join([fmt(lines[0]), fmt(tuple("-" * w for w in widths))] + [fmt(l) for l in lines[1:]])


# ----------------------------------------------------------------------------- inputs


def flux_inputs(config: dict[str, Any], *, batch: int, seed: int) -> dict[str, np.ndarray | None]:
    """Random float32 forward kwargs of `FluxTransformer2DModel` (FluxPipeline's ids layout)."""
    rng = np.random.default_rng(seed)
    side, n_txt = FLUX_IMAGE_SIDE, FLUX_TEXT_TOKENS
    img_ids = np.zeros((side, side, 3), np.float32)  # (0, row, col) per token
    img_ids[..., 1] = np.arange(side)[:, None]
    img_ids[..., 2] = np.arange(side)[None, :]
    return dict(
        hidden_states=rng.standard_normal((batch, side * side, config.get("in_channels", 64)), np.float32),
        encoder_hidden_states=rng.standard_normal(
            (batch, n_txt, config.get("joint_attention_dim", 4096)), np.float32),
        pooled_projections=rng.standard_normal((batch, config.get("pooled_projection_dim", 768)), np.float32),
        timestep=rng.uniform(0.05, 0.95, (batch,)).astype(np.float32),  # sigma; ×1000 inside
        img_ids=img_ids.reshape(-1, 3),
        txt_ids=np.zeros((n_txt, 3), np.float32),
        guidance=(np.full((batch,), FLUX_GUIDANCE, np.float32) if config.get("guidance_embeds") else None),
    )


def vae_inputs(config: dict[str, Any], *, batch: int, seed: int) -> dict[str, np.ndarray]:
    """A random image in [-1, 1] to encode and a random latent to decode, both NCHW float32."""
    rng = np.random.default_rng(seed)
    factor = 2 ** (len(config.get("block_out_channels", (64,))) - 1)
    side = VAE_LATENT_SIDE * factor
    return dict(
        sample=rng.uniform(-1.0, 1.0, (batch, config.get("in_channels", 3), side, side)).astype(np.float32),
        latent=rng.standard_normal(
            (batch, config.get("latent_channels", 4), VAE_LATENT_SIDE, VAE_LATENT_SIDE), np.float32),
    )


# ----------------------------------------------------------------------------- single-file reference


def dequantize_fp8_torch(state: dict) -> dict:
    """fp8 weights → float32 `weight.float() · scale` (per-tensor `<m>.scale_weight` / `<m>.weight_scale`);
    scale, input-scale and `scaled_fp8` marker keys dropped; other tensors unchanged."""
    import torch

    fp8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))
    out = {}
    for key, tensor in state.items():
        if key.endswith(FP8_DROPPED_SUFFIXES) or key.rsplit(".", 1)[-1] == FP8_MARKER:
            continue
        module = key[: -len(".weight")] if key.endswith(".weight") else None
        scales = [state[module + s] for s in FP8_WEIGHT_SCALE_SUFFIXES if module and module + s in state]
        if scales:
            tensor = tensor.float() * scales[0].float()
        elif tensor.dtype in fp8:
            tensor = tensor.float()
        out[key] = tensor
    return out


def strip_comfy_prefix(state: dict) -> dict:
    """ComfyUI's `model.diffusion_model.` keys without the prefix (other components dropped); as is when
    no key carries it."""
    if not any(k.startswith(COMFY_PREFIX) for k in state):
        return dict(state)
    return {k[len(COMFY_PREFIX):]: v for k, v in state.items() if k.startswith(COMFY_PREFIX)}


def _diffusers_flux_from_bfl(state: dict, config: dict[str, Any]) -> dict:
    """BFL Flux keys → diffusers keys by diffusers' converter, at any width (see DIFFUSERS_FLUX_INNER_DIM)."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    inner = config["num_attention_heads"] * config["attention_head_dim"]
    full, full_mlp = DIFFUSERS_FLUX_INNER_DIM, DIFFUSERS_FLUX_INNER_DIM * DIFFUSERS_FLUX_MLP_RATIO
    state, kept = dict(state), {}
    if inner != full:
        for key in [k for k in state if k.startswith("single_blocks.") and ".linear1." in k]:
            tensor = state[key]
            mlp = tensor.shape[0] - 3 * inner
            if inner > full or not 0 <= mlp <= full_mlp:
                raise CannotVerify(f"{key} of shape {tuple(tensor.shape)} with width {inner} does not fit "
                                   f"diffusers' Flux converter (width ≤ {full}, mlp ≤ {full_mlp})")
            padded = tensor.new_zeros((3 * full + full_mlp,) + tuple(tensor.shape[1:]))
            for i in range(3):
                padded[i * full: i * full + inner] = tensor[i * inner: (i + 1) * inner]
            padded[3 * full: 3 * full + mlp] = tensor[3 * inner:]
            state[key] = padded
            kept[key.split(".")[1]] = (inner, inner, inner, mlp)
    converted = convert_flux_transformer_checkpoint_to_diffusers(state)
    for index, sizes in kept.items():
        for name, size in zip(SINGLE_BLOCK_FUSED, sizes):
            for leaf in ("weight", "bias"):
                key = f"single_transformer_blocks.{index}.{name}.{leaf}"
                if key in converted:
                    converted[key] = converted[key][:size].contiguous()
    return converted


def diffusers_kwargs(cls, config: dict[str, Any]) -> dict[str, Any]:
    """The fields of `config` that `cls.__init__` takes (lists as tuples)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in params}


def torch_module_from_single_file(source: Source):
    """The diffusers module of a single file, loaded without our key maps (see module docstring)."""
    import diffusers
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    from . import flux_keys, vae_keys  # detection only: which layout the file is in

    state = strip_comfy_prefix(dequantize_fp8_torch(load_file(str(source.path))))
    if source.family == FLUX:
        module = diffusers.FluxTransformer2DModel(**diffusers_kwargs(diffusers.FluxTransformer2DModel,
                                                                     source.config))
        if flux_keys.is_bfl_flux(state):
            state = _diffusers_flux_from_bfl(state, source.config)
    else:
        module = diffusers.AutoencoderKL(**diffusers_kwargs(diffusers.AutoencoderKL, source.config))
        if vae_keys.is_ldm_vae(state):
            state = convert_ldm_vae_checkpoint(state, dict(source.config))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CannotVerify(f"{source.path}: diffusers' conversion does not fit {source.family}: {e}") from e
    return module


# ----------------------------------------------------------------------------- the three sides


def _vae_wrapper(torch, vae):
    """A torch module whose forward is (encode mean, encode logvar, decode) — one trace for torchax."""

    class EncodeDecode(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def forward(self, sample, latent):
            posterior = self.vae.encode(sample).latent_dist
            return posterior.mean, posterior.logvar, self.vae.decode(latent, return_dict=False)[0]

    return EncodeDecode().eval()


def torch_side(source: Source, torch_dtype):
    """(module, output names) of diffusers' model for a diffusers directory or single file."""
    import diffusers
    import torch

    if source.kind == SINGLE_FILE:
        module = torch_module_from_single_file(source).eval()  # float32, as diffusers builds it
        if torch_dtype != torch.float32:
            module = module.to(torch_dtype)
    elif source.kind == DIFFUSERS_DIR:
        cls = diffusers.FluxTransformer2DModel if source.family == FLUX else diffusers.AutoencoderKL
        module = cls.from_pretrained(source.path, torch_dtype=torch_dtype,
                                     low_cpu_mem_usage=False).eval()  # no `accelerate` nag
    else:
        raise CannotVerify(f"{source.path}: a {source.kind} holds no torch weights")
    if source.family == FLUX:
        return module, ("sample",)
    return _vae_wrapper(torch, module), ("encode.mean", "encode.logvar", "decode")


def _call_kwargs(family: str, inputs: dict) -> dict:
    if family == FLUX:
        return dict(inputs, return_dict=False)  # a Python bool, never traced
    return dict(inputs)


def run_torch_eager(family: str, module, inputs: dict[str, np.ndarray | None], torch_dtype) -> tuple:
    import torch

    kwargs = {k: None if v is None else torch.from_numpy(v).to(torch_dtype) for k, v in inputs.items()}
    with torch.inference_mode():
        out = module(**_call_kwargs(family, kwargs))
    return tuple(o.float().numpy() for o in out)


def run_torchax(family: str, module, inputs: dict, jax_dtype) -> tuple:
    """The diffusers module traced by torchax into a JAX function, jitted, run on `inputs`."""
    import jax
    import jax.numpy as jnp
    import torchax

    with warnings.catch_warnings():  # torchax asks for 64-bit dtypes that x64-less JAX truncates
        warnings.filterwarnings("ignore", message="Explicitly requested dtype (float64|int64)")
        weights, fn = torchax.extract_jax(module)
        traced = jax.jit(lambda w, kw: tuple(fn(w, (), _call_kwargs(family, kw))))
        kwargs = {k: None if v is None else jnp.asarray(v, jax_dtype) for k, v in inputs.items()}
        out = traced(weights, kwargs)
    return tuple(np.asarray(o.astype(jnp.float32)) for o in out)


def run_ours(family: str, model, inputs: dict, jax_dtype) -> tuple:
    """Our module under `jax.jit` on `inputs`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)

    def forward(state, kw):
        m = nnx.merge(graphdef, state)
        if family == FLUX:
            return (m(**kw),)
        mean, logvar = m.encode(kw["sample"])
        return mean, logvar, m.decode(kw["latent"])

    kwargs = {k: None if v is None else jnp.asarray(v, jax_dtype) for k, v in inputs.items()}
    out = jax.jit(forward)(state, kwargs)
    return tuple(np.asarray(o.astype(jnp.float32)) for o in out)


def load_ours(path: Path, jax_dtype, config: dict[str, Any] | None = None):
    from .loader import load_model  # looked up at call time (tests substitute it)

    if config is None:
        return load_model(path, dtype=jax_dtype)
    return load_model(path, dtype=jax_dtype, config=config)


# ----------------------------------------------------------------------------- command


def verify(path: Path, *, reference: Path | None = None, config: dict[str, Any] | None = None,
           tolerance: float = 1e-5, seed: int = 0, batch: int = 1, dtype: str = "float32",
           log: Callable[[str], None] = print) -> bool:
    """Runs the comparison and logs the table; True when every judged output is within tolerance.

    `reference`: the torch source (default `path`); `config`: config dict for single files.
    Raises CannotVerify when the comparison cannot run.
    """
    import jax.numpy as jnp
    import torch

    ours_source, ref_source = resolve(path, reference, config)
    family = ref_source.family
    torch_dtype, jax_dtype = getattr(torch, dtype), getattr(jnp, dtype)
    inputs = (flux_inputs if family == FLUX else vae_inputs)(ref_source.config, batch=batch, seed=seed)

    against = "" if ref_source is ours_source else f" against {ref_source.kind} {ref_source.path}"
    log(f"jaxdiff verify: {family} at {path} ({ours_source.kind}){against} ({dtype}, batch {batch}, "
        f"seed {seed}, tolerance {tolerance:g})")
    if differences := config_differences(ours_source.config, ref_source.config):
        log("note: configs differ (ours vs reference): " + "; ".join(differences))
    module, names = torch_side(ref_source, torch_dtype)
    eager = run_torch_eager(family, module, inputs, torch_dtype)
    traced = run_torchax(family, module, inputs, jax_dtype)
    del module
    ours_config = config if ours_source.kind == SINGLE_FILE else None
    ours = run_ours(family, load_ours(Path(path), jax_dtype, ours_config), inputs, jax_dtype)

    rows = []
    for name, o, t, e in zip(names, ours, traced, eager):
        rows.append(compare(name, "ours vs torchax", o, t, judged=True))
        rows.append(compare(name, "ours vs torch eager", o, e, judged=False))
        rows.append(compare(name, "torchax vs torch eager", t, e, judged=False))
    log(format_table(rows, tolerance))
    ok = all(r.ok(tolerance) for r in rows if r.judged)
    log("OK: every output within tolerance" if ok else
        f"FAIL: some output differs from the torchax trace by more than {tolerance:g}")
    return ok


def run(args: argparse.Namespace) -> int:
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
        import torchax  # noqa: F401
    except ImportError as e:
        print(f"{MISSING_EXTRA} ({e})", file=sys.stderr)
        return 2
    reference, config_file = getattr(args, "reference", None), getattr(args, "config", None)
    try:
        config = read_config_file(config_file)
        resolve(args.path, reference, config)  # fail fast, before torch builds anything
    except (CannotVerify, ValueError) as e:
        print(f"jaxdiff verify: {e}", file=sys.stderr)
        return 2
    try:
        ok = verify(args.path, reference=reference, config=config, tolerance=args.tolerance,
                    seed=args.seed, batch=args.batch, dtype=args.dtype)
    except CannotVerify as e:
        print(f"jaxdiff verify: {e}", file=sys.stderr)
        return 2
    return 0 if ok else 1
