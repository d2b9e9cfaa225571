"""ComfyUI's own Flux module at a tiny size: an independent reference for single-file (BFL) checkpoints.

ComfyUI is not on PyPI; we import it from the source snapshot in `../shared/comfyui/` (unpacked at
/tmp/comfyui on dev machines; otherwise the `comfy/` package is unpacked from the tarball into a pytest
temp dir). Needs `einops` (ComfyUI's import-time dependency) besides torch.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import numpy as np

COMFY_TARBALL = Path(__file__).resolve().parents[2] / "shared" / "comfyui" / "comfyui-a125cd84.tar.gz"
COMFY_UNPACKED = Path("/tmp/comfyui")
COMFY_PREFIX = "model.diffusion_model."

# Tiny BFL Flux that ComfyUI's assumptions (head dim 128, RoPE axes (16, 56, 56)) hold for.
TINY_BFL = dict(in_channels=4, out_channels=4, vec_in_dim=32, context_in_dim=32, hidden_size=128,
                mlp_ratio=4.0, num_heads=1, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56],
                theta=10000, patch_size=2, qkv_bias=True)
LATENT_SIDE = 8  # unpacked latent [B, 4, 8, 8] → 4 × 4 packed tokens
TEXT_TOKENS = 8
GUIDANCE = 3.5
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def comfyui_root(tmp_dir: Path) -> Path:
    """A directory holding ComfyUI's `comfy` package: /tmp/comfyui, or unpacked into `tmp_dir`."""
    if (COMFY_UNPACKED / "comfy" / "ldm" / "flux" / "model.py").is_file():
        return COMFY_UNPACKED
    if not COMFY_TARBALL.is_file():
        raise FileNotFoundError(f"ComfyUI snapshot not found at {COMFY_UNPACKED} or {COMFY_TARBALL}")
    with tarfile.open(COMFY_TARBALL) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("ComfyUI/comfy/")]
        tar.extractall(tmp_dir, members=members, filter="data")
    return tmp_dir / "ComfyUI"


def import_comfy_flux(root: Path):
    """ComfyUI's `Flux` class and its `ops` (CPU mode set before model_management is imported)."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    return Flux, comfy.ops


def tiny_comfy_flux(root: Path, guidance_embed: bool = True, seed: int = 0, std: float = 0.05):
    """A randomized fp32 ComfyUI Flux (BFL module names) in eval mode."""
    import torch

    from flux_fixtures import randomize_

    Flux, ops = import_comfy_flux(root)
    torch.manual_seed(seed)
    model = Flux(**TINY_BFL, guidance_embed=guidance_embed, operations=ops.disable_weight_init,
                 dtype=torch.float32)
    return randomize_(model, seed, std).eval()


def comfy_inputs(guidance_embed: bool, batch: int = 2, seed: int = 0) -> dict:
    """ComfyUI Flux forward inputs (numpy): unpacked latents, sigma, T5 context, pooled y, guidance."""
    rng = np.random.default_rng(seed)
    return dict(
        x=rng.standard_normal((batch, TINY_BFL["in_channels"], LATENT_SIDE, LATENT_SIDE), np.float32),
        timestep=rng.uniform(0.05, 0.95, (batch,)).astype(np.float32),
        context=rng.standard_normal((batch, TEXT_TOKENS, TINY_BFL["context_in_dim"]), np.float32),
        y=rng.standard_normal((batch, TINY_BFL["vec_in_dim"]), np.float32),
        guidance=np.full((batch,), GUIDANCE, np.float32) if guidance_embed else None,
    )


def comfy_forward(model, inputs: dict) -> np.ndarray:
    """ComfyUI's forward (it patchifies x itself); returns unpacked `[B, C, H, W]` numpy."""
    import torch

    kw = {k: None if v is None else torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        return model(kw["x"], kw["timestep"], kw["context"], y=kw["y"], guidance=kw["guidance"]).numpy()


def pack(x: np.ndarray) -> np.ndarray:
    """`b c (h 2) (w 2) -> b (h w) (c 2 2)` (FluxPipeline / ComfyUI packing)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """`b (h w) (c 2 2) -> b c (h 2) (w 2)`."""
    b, _, d = x.shape
    x = x.reshape(b, h // 2, w // 2, d // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def diffusers_inputs(inputs: dict) -> dict:
    """The same call in diffusers' FluxTransformer2DModel convention (packed tokens, ids)."""
    side = LATENT_SIDE // 2
    ids = np.zeros((side, side, 3), np.float32)
    ids[..., 1] = np.arange(side)[:, None]
    ids[..., 2] = np.arange(side)[None, :]
    return dict(hidden_states=pack(inputs["x"]), encoder_hidden_states=inputs["context"],
                pooled_projections=inputs["y"], timestep=inputs["timestep"],
                img_ids=ids.reshape(-1, 3), txt_ids=np.zeros((TEXT_TOKENS, 3), np.float32),
                guidance=inputs["guidance"])


def quantize_fp8(state: dict, *, scaled: bool, scale_name: str = "scale_weight") -> tuple[dict, dict]:
    """ComfyUI-style fp8 copy of a torch state dict: (fp8 state dict, dequantised fp32 reference).

    Matrices become float8_e4m3fn (with a per-tensor `<m>.<scale_name>` = max|w| / 448 when `scaled`,
    plus `scale_input` and the `scaled_fp8` marker as ComfyUI writes them); vectors stay fp32.
    """
    import torch

    quantized, reference = {}, {}
    for key, w in state.items():
        if w.ndim < 2 or not key.endswith(".weight"):
            quantized[key] = reference[key] = w.float().contiguous()
            continue
        module = key[: -len(".weight")]
        if scaled:
            scale = (w.abs().max() / FP8_MAX).float().reshape(())
            q = (w.float() / scale).to(torch.float8_e4m3fn)
            quantized[f"{module}.{scale_name}"] = scale
            quantized[f"{module}.scale_input"] = torch.ones((), dtype=torch.float32)
            reference[key] = q.float() * scale
        else:
            q = w.float().to(torch.float8_e4m3fn)
            reference[key] = q.float()
        quantized[key] = q.contiguous()
    if scaled:
        prefix = COMFY_PREFIX if any(k.startswith(COMFY_PREFIX) for k in state) else ""
        quantized[f"{prefix}scaled_fp8"] = torch.empty((0,), dtype=torch.float8_e4m3fn)
    return quantized, reference


# Tiny LDM VAE ddconfigs as comfy/sd.py builds them; widths stay multiples of LDM's 32 norm groups.
TINY_LDM_VAE = {
    "flux": dict(double_z=True, z_channels=16, resolution=256, in_channels=3, out_ch=3, ch=32,
                 ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0),
    "sd": dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=32,
               ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0),
}


def tiny_comfy_vae(root: Path, kind: str, seed: int = 0):
    """ComfyUI's LDM VAE (Flux: AutoencodingEngine without quant convs; SD: AutoencoderKL with them),
    randomized (weights ~ N(0, 0.25/fan_in), norm scales ~ 1 + N(0, 0.04)), fp32, eval mode."""
    import torch

    import_comfy_flux(root)
    import comfy.ldm.models.autoencoder as autoencoder

    ddconfig = TINY_LDM_VAE[kind]
    if kind == "sd":
        model = autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=ddconfig["z_channels"])
    else:
        model = autoencoder.AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": ddconfig},
            decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": ddconfig})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("bias"):
                p.copy_(0.2 * noise)
            elif p.ndim == 1:
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.5 / np.sqrt(p[0].numel()) * noise)
    return model.float().eval()
