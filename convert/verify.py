"""`jaxdiff verify PATH`: our Flax module beside the diffusers torch module, traced with torchax.

PATH is a diffusers model directory (config.json + *.safetensors); the family comes from
config.json `_class_name`. Both sides get the same random inputs; our output is judged against the
torchax trace of the diffusers module (same XLA backend), and plain torch eager is printed beside it
for reference. Exit status: 0 all outputs within tolerance, 1 some output is not, 2 cannot run.

This is the only runtime module allowed torch/torchax/diffusers (the `verify` extra), and it imports
them lazily inside `run`. Host memory: about three copies of the model (torch, torchax, ours).
"""

from __future__ import annotations

import argparse
import dataclasses
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
    parser.add_argument("path", type=Path, help="diffusers model directory (Flux transformer or AutoencoderKL)")
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
        raise FileNotFoundError(f"{path}: not a diffusers model directory (no config.json); "
                                "jaxdiff verify compares diffusers directories only")
    config = json.loads(config_file.read_text())
    family = config.get("_class_name")
    if family not in FAMILIES:
        raise ValueError(f"{config_file}: _class_name {family!r} is not one jaxdiff verify knows; "
                         f"expected one of {FAMILIES}")
    return family, config


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


def torch_side(family: str, path: Path, torch_dtype):
    """(module, forward(inputs: dict of numpy) -> tuple of outputs, output names) of diffusers' model."""
    import diffusers
    import torch

    kw = dict(torch_dtype=torch_dtype, low_cpu_mem_usage=False)  # no `accelerate` nag
    if family == FLUX:
        module = diffusers.FluxTransformer2DModel.from_pretrained(path, **kw).eval()
        return module, ("sample",)
    vae = diffusers.AutoencoderKL.from_pretrained(path, **kw).eval()
    return _vae_wrapper(torch, vae), ("encode.mean", "encode.logvar", "decode")


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


def load_ours(path: Path, jax_dtype):
    from .loader import load_model  # looked up at call time (tests substitute it)

    return load_model(path, dtype=jax_dtype)


# ----------------------------------------------------------------------------- command


def verify(path: Path, *, tolerance: float = 1e-5, seed: int = 0, batch: int = 1,
           dtype: str = "float32", log: Callable[[str], None] = print) -> bool:
    """Runs the comparison and logs the table; True when every judged output is within tolerance."""
    import jax.numpy as jnp
    import torch

    family, config = read_family(path)
    torch_dtype, jax_dtype = getattr(torch, dtype), getattr(jnp, dtype)
    inputs = (flux_inputs if family == FLUX else vae_inputs)(config, batch=batch, seed=seed)

    log(f"jaxdiff verify: {family} at {path} ({dtype}, batch {batch}, seed {seed}, "
        f"tolerance {tolerance:g})")
    module, names = torch_side(family, path, torch_dtype)
    eager = run_torch_eager(family, module, inputs, torch_dtype)
    traced = run_torchax(family, module, inputs, jax_dtype)
    del module
    ours = run_ours(family, load_ours(path, jax_dtype), inputs, jax_dtype)

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
    try:
        read_family(args.path)
    except (FileNotFoundError, ValueError) as e:
        print(f"jaxdiff verify: {e}", file=sys.stderr)
        return 2
    ok = verify(args.path, tolerance=args.tolerance, seed=args.seed, batch=args.batch, dtype=args.dtype)
    return 0 if ok else 1
