"""`jaxdiff verify PATH`: our Flax module beside the diffusers torch module, traced with torchax.

PATH is what we load (`load_model`): a diffusers model directory (config.json + *.safetensors), a
single-file `.safetensors` in a layout the family registry knows (BFL / ComfyUI Flux, LDM / BFL `ae`
VAE, ComfyUI / original Wan transformer, Wan 2.1 / 2.2 VAE; fp8 with or without scales) or a converted
jaxdiff directory. Every model kind of the registry (`jaxdiff.families`) with a `torch_class` and a
transformer or VAE role can be verified; the kind comes from `_class_name` (diffusers directory), our
single-file detection (`open_plan`) or `jaxdiff.json` (converted). The torch reference is
`kind.torch_class` built from `--reference SRC` (a diffusers directory or single file), by default
from PATH itself; a converted directory holds no torch weights, so it needs `--reference`.

The torch reference of a single file is independent of our key maps: only the config comes from our
detection (single files carry none; `--config` overrides it). The file is read with
`safetensors.torch.load_file`, fp8 is dequantised in torch (`weight.float() · scale`; scale and
input-scale keys dropped), ComfyUI's `model.diffusion_model.` prefix is stripped, and the layout's
`torch_keymap` (below: diffusers' own single-file converters, with the fixes they need at tiny sizes
and for the Wan 2.2 VAE) renames the keys into `torch_class(**config)` with
`load_state_dict(strict=True)`.

Both sides get the same random inputs (`kind.example_inputs` at CPU-sized `families.Sizes`);
transformers are called with them as keyword arguments, VAEs compare encode mean, encode logvar and
decode. Our output is judged against the torchax trace of the diffusers module (same XLA backend),
and plain torch eager is printed beside it for reference.
Exit status: 0 all outputs within tolerance, 1 some output is not, 2 cannot run.

This is the only runtime module allowed torch/torchax/diffusers (the `verify` extra), and it imports
them lazily inside `run`. Host memory: about three copies of the model (torch, torchax, ours).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import families
from ..families import ModelKind

MISSING_EXTRA = "jaxdiff verify needs the verify extra: pip install 'jaxdiff[verify]'"
DTYPES = ("float32", "bfloat16")

# What each role's forward returns (report rows); a kind of another role cannot be verified.
OUTPUTS = {"transformer": ("sample",), "vae": ("encode.mean", "encode.logvar", "decode")}
# Forward sizes (latent units) small enough for CPU, by what the kind's family makes (`Family.output`).
EXAMPLE_SIZES = {
    # Flux: 8 × 8 packed latent tokens + 16 text tokens; VAE: 8 × 8 latents (8·f × 8·f pixels)
    "image": families.Sizes(height=8, width=8, text_tokens=16),
    # Wan: 2 latent frames (5 video frames) of 4 × 4 latents; 512 text tokens because diffusers' Wan
    # I2V attention splits [image, text] context at len − 512 (what the pipelines pad text to)
    "video": families.Sizes(height=4, width=4, frames=2, text_tokens=512),
}

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
# diffusers' `convert_wan_vae_to_diffusers` hardcodes the released Wan 2.1 decoder's grouping (4 stages
# of 3 resnets + an upsampler at `decoder.upsamples.4s + r`, a shortcut only at index 4) and knows no
# Wan 2.2 (residual) stage lists; those stage lists are renamed from the config instead (below).
WAN_VAE_STAGE = re.compile(  # list, stage (2.1: item), 2.2's item in the stage, the rest
    r"(encoder\.downsamples|decoder\.upsamples)\.(\d+)\.(?:(?:downsamples|upsamples)\.(\d+)\.)?(.+)")
WAN_VAE_RESNET_PARTS = (("residual.0.", "norm1."), ("residual.2.", "conv1."), ("residual.3.", "norm2."),
                        ("residual.6.", "conv2."), ("shortcut.", "conv_shortcut."))


class CannotVerify(Exception):
    """The comparison cannot run (exit status 2); the message says why."""


@dataclasses.dataclass(frozen=True)
class Source:
    """One side's checkpoint: what is at `path`, its registry model kind and config dict."""

    path: Path
    kind: str  # DIFFUSERS_DIR | SINGLE_FILE | CONVERTED
    model: ModelKind
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


def verifiable_models() -> list[ModelKind]:
    """The registry's model kinds verify can compare: a torch class, example inputs and a role it runs."""
    return [m for m in families.all_models()
            if m.torch_class and m.example_inputs and m.role in OUTPUTS]


def known_classes() -> str:
    return ", ".join(m.class_name for m in verifiable_models())


def checked_model(model: ModelKind, where: str) -> ModelKind:
    """`model` when verify can compare it; else a ValueError listing what it can."""
    if model not in verifiable_models():
        raise ValueError(f"{where}: holds a {model.class_name}; jaxdiff verify knows {known_classes()}")
    return model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    layouts = "; ".join(layout.description for m in verifiable_models() for layout in m.layouts)
    parser.add_argument("path", type=Path,
                        help=(f"what to load with jaxdiff ({known_classes()}): a diffusers model directory, "
                              f"a single-file .safetensors ({layouts}; fp8 or not) or a converted jaxdiff "
                              "directory (needs --reference)").replace("%", "%%"))
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


def read_family(path: Path) -> tuple[ModelKind, dict[str, Any]]:
    """(model kind, config dict) of a diffusers model directory, the kind from its `_class_name`."""
    config_file = path / "config.json"
    if (path / "model_index.json").is_file() and not config_file.is_file():
        raise FileNotFoundError(f"{path} is a diffusers pipeline; verify one of its models, e.g. "
                                f"{path / 'transformer'} or {path / 'vae'}")
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: not a diffusers model directory (no config.json), a converted "
                                f"jaxdiff directory (no {CONVERTED_META}) or a .safetensors file")
    config = json.loads(config_file.read_text())
    class_name = config.get("_class_name") if isinstance(config, dict) else None
    model = next((m for m in verifiable_models() if m.class_name == class_name), None)
    if model is None:
        raise ValueError(f"{config_file}: _class_name {class_name!r} is not one jaxdiff verify knows; "
                         f"expected one of {known_classes()}")
    return model, config


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
    """What `path` holds (kind, model kind, config), from config files or single-file headers.

    `config` overrides the detected config of a single file. Raises FileNotFoundError / ValueError
    saying what is wrong.
    """
    path = Path(path)
    if path.is_file():
        from .loader import open_plan

        with open_plan(path, config=config) as plan:  # refuses pickles, unknown layouts, bad keys
            model, config = plan.model, plan.config_dict()
        return Source(path, SINGLE_FILE, checked_model(model, str(path)), config)
    if (path / CONVERTED_META).is_file():
        from .checkpoint import read_meta

        meta = read_meta(path)
        model = checked_model(families.get_model(meta["family"]), f"{path} (converted)")
        return Source(path, CONVERTED, model, dict(meta["config"]), origin=meta.get("source"))
    model, config_json = read_family(path)
    return Source(path, DIFFUSERS_DIR, model, config_json)


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
    if ref.model is not ours.model:
        raise CannotVerify(f"{path} holds a {ours.model.class_name} but --reference {reference} a "
                           f"{ref.model.class_name}")
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


def example_sizes(model: ModelKind, batch: int) -> families.Sizes:
    """The forward sizes of `model` (`EXAMPLE_SIZES` by its family's output) at `batch`."""
    family = families.family_of(model)
    return dataclasses.replace(EXAMPLE_SIZES[family.output if family else "image"], batch=batch)


def example_inputs(source: Source, *, batch: int, seed: int) -> dict[str, np.ndarray | None]:
    """The kind's own `example_inputs` (float32 numpy, or None) for `source`'s config."""
    from .families import model_config

    config = model_config(source.model, source.config)
    return families.call(source.model.example_inputs, config, example_sizes(source.model, batch), seed)


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


def diffusers_flux_from_bfl(state: dict, config: dict[str, Any]) -> dict:
    """BFL Flux keys → diffusers keys by diffusers' converter at any width (DIFFUSERS_FLUX_INNER_DIM)."""
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


def diffusers_vae_from_ldm(state: dict, config: dict[str, Any]) -> dict:
    """LDM / BFL `ae` VAE keys → diffusers `AutoencoderKL` keys by diffusers' converter."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(state, dict(config))


def diffusers_wan_from_original(state: dict, config: dict[str, Any]) -> dict:
    """ComfyUI / original Wan transformer keys → diffusers `WanTransformer3DModel` keys by diffusers'
    converter (plain renames, so any width)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(state))  # it pops from the dict it is given


def wan_vae_stage_name(key: str, config: dict[str, Any]) -> str | None:
    """The diffusers `AutoencoderKLWan` name of a Wan VAE stage-list key diffusers' converter gets wrong
    (every `decoder.upsamples.*`; with `is_residual` (2.2) also `encoder.downsamples.*`), None for others.

    2.1 decoder: one flat list, per stage `num_res_blocks + 1` resnets then an upsampler (none after the
    last stage) → `up_blocks.S.resnets.R` / `up_blocks.S.upsamplers.0`. 2.2: nested lists
    `{encoder.downsamples|decoder.upsamples}.S.{downsamples|upsamples}.R`, resnets first →
    `{down|up}_blocks.S.resnets.R` / `down_blocks.S.downsampler` / `up_blocks.S.upsampler`.
    """
    m = WAN_VAE_STAGE.fullmatch(key)
    if m is None:
        return None
    part, outer, inner, leaf = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    encoder, residual = part == "encoder.downsamples", bool(config.get("is_residual"))
    if residual:
        if inner is None:
            return None
        stage, item = outer, int(inner)
    else:
        if encoder or inner is not None:
            return None  # the 2.1 encoder's flat list is named one-to-one by diffusers' converter
        stage, item = divmod(outer, config.get("num_res_blocks", 2) + 2)  # resnets + an upsampler
    blocks = "encoder.down_blocks" if encoder else "decoder.up_blocks"
    for old, new in WAN_VAE_RESNET_PARTS:
        if leaf.startswith(old):
            return f"{blocks}.{stage}.resnets.{item}.{new}{leaf[len(old):]}"
    sampler = ("downsampler" if encoder else "upsampler") if residual else "upsamplers.0"
    return f"{blocks}.{stage}.{sampler}.{leaf}"


def diffusers_wan_vae_from_original(state: dict, config: dict[str, Any]) -> dict:
    """Wan 2.1 / 2.2 VAE keys (ComfyUI / original layout) → diffusers `AutoencoderKLWan` keys: diffusers'
    converter for everything but the stage lists it hardcodes (`wan_vae_stage_name`)."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    stages = {key: wan_vae_stage_name(key, config) for key in state}
    converted = convert_wan_vae_to_diffusers({k: v for k, v in state.items() if stages[k] is None})
    converted.update({name: state[key] for key, name in stages.items() if name is not None})
    return converted


def diffusers_kwargs(cls, config: dict[str, Any]) -> dict[str, Any]:
    """The fields of `config` that `cls.__init__` takes, sequences as lists (as `from_pretrained` passes
    config.json values; AutoencoderKLWan concatenates its `dim_mult` to a list)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if k in params}


def single_file_state(source: Source) -> dict:
    """A single file's tensors under diffusers names, renamed without our key maps (module docstring):
    the first of the kind's layouts that recognises the keys renames them by its `torch_keymap`; keys
    no layout recognises are taken as diffusers names."""
    from safetensors.torch import load_file

    state = strip_comfy_prefix(dequantize_fp8_torch(load_file(str(source.path))))
    layout = next((lt for lt in source.model.layouts if families.call(lt.detect, state)), None)
    if layout is None:
        return state
    if layout.torch_keymap is None:
        raise CannotVerify(f"{source.path}: the {layout.description} layout has no torch reference "
                           "(its registry row names no torch_keymap)")
    return families.call(layout.torch_keymap, state, source.config)


def diffusers_dir_state(source: Source, cls) -> dict:
    """A diffusers model dir's tensors (all shards), less the keys `cls` itself ignores on load
    (`_keys_to_ignore_on_load_unexpected`, e.g. Wan's `norm_added_q`)."""
    from safetensors.torch import load_file

    from .detect import inspect_path  # which files hold the weights (index.json or the one file)

    state = {}
    for file in inspect_path(source.path).files:
        state.update(load_file(str(file)))
    patterns = [re.compile(p) for p in getattr(cls, "_keys_to_ignore_on_load_unexpected", None) or ()]
    return {k: v for k, v in state.items() if not any(p.search(k) for p in patterns)}


def torch_module(source: Source):
    """The torch reference module (float32) of a diffusers directory or single file: `torch_class`
    built from the config, its weights loaded with `load_state_dict(strict=True)`.

    Not `from_pretrained`: for classes with `_keep_in_fp32_modules` (Wan's transformer) diffusers 0.42
    refuses to load without `accelerate`, which the verify extra does not install."""
    cls = families.resolve(source.model.torch_class)
    if source.kind == SINGLE_FILE:
        state = single_file_state(source)
    elif source.kind == DIFFUSERS_DIR:
        state = diffusers_dir_state(source, cls)
    else:
        raise CannotVerify(f"{source.path}: a {source.kind} holds no torch weights")
    module = cls(**diffusers_kwargs(cls, source.config))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CannotVerify(f"{source.path}: its weights do not fit the torch reference "
                           f"{source.model.class_name}: {e}") from e
    return module.eval()


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
    """(module, output names) of the torch reference for a diffusers directory or single file."""
    import torch

    module = torch_module(source)
    if torch_dtype != torch.float32:
        module = module.to(torch_dtype)
    if source.model.role == "vae":
        module = _vae_wrapper(torch, module)
    return module, OUTPUTS[source.model.role]


def _call_kwargs(role: str, inputs: dict) -> dict:
    if role == "transformer":
        return dict(inputs, return_dict=False)  # a Python bool, never traced
    return dict(inputs)


def run_torch_eager(role: str, module, inputs: dict[str, np.ndarray | None], torch_dtype) -> tuple:
    import torch

    kwargs = {k: None if v is None else torch.from_numpy(v).to(torch_dtype) for k, v in inputs.items()}
    with torch.inference_mode():
        out = module(**_call_kwargs(role, kwargs))
    return tuple(o.float().numpy() for o in out)


def run_torchax(role: str, module, inputs: dict, jax_dtype) -> tuple:
    """The torch module traced by torchax into a JAX function, jitted, run on `inputs`."""
    import jax
    import jax.numpy as jnp
    import torchax

    with warnings.catch_warnings():  # torchax asks for 64-bit dtypes that x64-less JAX truncates
        warnings.filterwarnings("ignore", message="Explicitly requested dtype (float64|int64)")
        weights, fn = torchax.extract_jax(module)
        traced = jax.jit(lambda w, kw: tuple(fn(w, (), _call_kwargs(role, kw))))
        kwargs = {k: None if v is None else jnp.asarray(v, jax_dtype) for k, v in inputs.items()}
        out = traced(weights, kwargs)
    return tuple(np.asarray(o.astype(jnp.float32)) for o in out)


def run_ours(role: str, model, inputs: dict, jax_dtype) -> tuple:
    """Our module under `jax.jit` on `inputs`: a transformer called with them as keyword arguments, a
    VAE's `encode(sample)` (mean, logvar) and `decode(latent)`."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)

    def forward(state, kw):
        m = nnx.merge(graphdef, state)
        if role == "transformer":
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
    role = ref_source.model.role
    torch_dtype, jax_dtype = getattr(torch, dtype), getattr(jnp, dtype)
    inputs = example_inputs(ref_source, batch=batch, seed=seed)

    against = "" if ref_source is ours_source else f" against {ref_source.kind} {ref_source.path}"
    log(f"jaxdiff verify: {ref_source.model.class_name} at {path} ({ours_source.kind}){against} "
        f"({dtype}, batch {batch}, seed {seed}, tolerance {tolerance:g})")
    if differences := config_differences(ours_source.config, ref_source.config):
        log("note: configs differ (ours vs reference): " + "; ".join(differences))
    module, names = torch_side(ref_source, torch_dtype)
    eager = run_torch_eager(role, module, inputs, torch_dtype)
    traced = run_torchax(role, module, inputs, jax_dtype)
    del module
    ours_config = config if ours_source.kind == SINGLE_FILE else None
    ours = run_ours(role, load_ours(Path(path), jax_dtype, ours_config), inputs, jax_dtype)

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
