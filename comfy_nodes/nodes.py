"""The node classes: inputs, outputs, help texts; the work happens in model.py, vae.py, sampler.py.

Importing this module needs ComfyUI (`folder_paths`) but not jax: the JAX side is imported when a
node runs, so a ComfyUI without jax starts normally and the node says what to install.
"""

from __future__ import annotations

import logging
import os

import folder_paths

log = logging.getLogger("jaxdiff")
CATEGORY = "jaxdiff"
JAX_FOLDER = "jax_checkpoints"
INSTALL_HINT = ("jaxdiff needs JAX in ComfyUI's Python: run `python -m pip install -U jax flax "
                "orbax-checkpoint` (GPU: `jax[cuda12]`, TPU: `jax[tpu]`) with the interpreter ComfyUI runs on, "
                "then restart ComfyUI")
DTYPES = {"default": None, "bf16": "bfloat16", "fp32": "float32"}
ATTENTION = ["auto", "xla", "cudnn", "splash"]


def register_folder() -> None:
    """`models/jax_checkpoints` for converted checkpoints (`jaxdiff convert SRC OUT`)."""
    if JAX_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(JAX_FOLDER, os.path.join(folder_paths.models_dir, JAX_FOLDER))


def _converted(folder: str) -> list[str]:
    """Converted checkpoint directories (holding jaxdiff.json) and .safetensors files in `folder`."""
    found = []
    for root in folder_paths.get_folder_paths(JAX_FOLDER):
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if os.path.isfile(os.path.join(path, "jaxdiff.json")) or name.endswith(".safetensors"):
                found.append(f"{JAX_FOLDER}/{name}")
    return found


def model_files(folder: str) -> list[str]:
    return folder_paths.get_filename_list(folder) + _converted(folder)


def resolve(folder: str, name: str) -> str:
    """The full path of a file listed by `model_files`; FileNotFoundError naming what was looked for."""
    if name.startswith(JAX_FOLDER + "/"):
        for root in folder_paths.get_folder_paths(JAX_FOLDER):
            path = os.path.join(root, name[len(JAX_FOLDER) + 1:])
            if os.path.exists(path):
                return path
    else:
        path = folder_paths.get_full_path(folder, name)
        if path is not None:
            return path
    raise FileNotFoundError(f"{name!r} is not in ComfyUI's models/{folder} or models/{JAX_FOLDER} folders")


def _jax():
    """The library side (imports jax); an ImportError with the install command when jax is missing."""
    try:
        from . import loading
    except ImportError as e:
        if "jax" in str(e) or "flax" in str(e) or "orbax" in str(e):
            raise ImportError(f"{INSTALL_HINT} ({e})") from e
        raise
    return loading


class JaxDiffusionModelLoader:
    DESCRIPTION = ("Loads a Flux or Wan diffusion model to run as jitted JAX (TPU, GPU or CPU). A drop-in "
                   "for 'Load Diffusion Model': its MODEL works with the core KSampler, KSamplerAdvanced, "
                   "ModelSamplingSD3 and the JAX Sampler. Reads ComfyUI/BFL single files, diffusers folders "
                   "and checkpoints converted with `jaxdiff convert` (fastest to load, in models/jax_checkpoints).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The diffusion model, its weights on the JAX devices.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        register_folder()
        return {"required": {
            "unet_name": (model_files("diffusion_models"), {
                "tooltip": "A Flux (dev/schnell) or Wan (2.1 T2V/I2V, 2.2 A14B/TI2V-5B) file from "
                           "models/diffusion_models, or a converted checkpoint from models/jax_checkpoints."}),
            "weight_dtype": (list(DTYPES), {
                "tooltip": "default: the file's dtype (fp8 files load as bf16); bf16 halves memory; fp32 "
                           "for exact comparisons."}),
            "mesh": ("STRING", {"default": "", "tooltip":
                     "How to spread the weights over devices, e.g. 'fsdp=8' or 'fsdp=4,tensor=2'. Empty: "
                     "all local devices as fsdp."}),
            "attention": (ATTENTION, {"tooltip": "auto picks Pallas splash on TPU, cuDNN on GPU, XLA "
                                                 "otherwise."}),
        }}

    def load(self, unet_name, weight_dtype, mesh, attention):
        loading = _jax()
        return (loading.load_diffusion_model(resolve("diffusion_models", unet_name), DTYPES[weight_dtype],
                                             mesh, attention),)


class JaxVAELoader:
    DESCRIPTION = ("Loads a Flux or Wan (2.1 / 2.2) VAE to encode and decode with JAX. Its VAE works with "
                   "the core VAEDecode, VAEEncode, VAEDecodeTiled and WanImageToVideo nodes.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("VAE",)
    OUTPUT_TOOLTIPS = ("The VAE, its weights on the JAX devices.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        register_folder()
        return {"required": {"vae_name": (model_files("vae"), {
            "tooltip": "ae.safetensors (Flux), wan_2.1_vae / wan2.2_vae.safetensors, or a converted VAE "
                       "from models/jax_checkpoints."})}}

    def load(self, vae_name):
        loading = _jax()
        return (loading.load_vae(resolve("vae", vae_name)),)


class JaxSampler:
    DESCRIPTION = ("Samples with the whole loop in JAX (one compiled step, no per-step round trip). Same "
                   "noise as KSampler for the same seed; with euler and the same settings it gives "
                   "KSampler's latent. For Wan 2.2 A14B connect the low-noise model to model_2.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The denoised latent.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A MODEL from 'Load Diffusion Model (JAX)'."}),
                "positive": ("CONDITIONING", {"tooltip": "What the picture should show."}),
                "negative": ("CONDITIONING", {"tooltip": "Used when cfg is not 1."}),
                "latent_image": ("LATENT", {"tooltip": "Empty latent (text-to-image/video) or an encoded "
                                                        "image to change (with denoise < 1)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff,
                                 "control_after_generate": True, "tooltip": "Noise seed (same as KSampler's)."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance; 1 runs the model once per step (Flux)."}),
                "guidance": ("FLOAT", {"default": 3.5, "min": -1.0, "max": 100.0, "step": 0.1,
                                       "tooltip": "Flux dev guidance (replaces FluxGuidance's value); -1 keeps "
                                                  "the conditioning's. Ignored by other models."}),
                "shift": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.01,
                                    "tooltip": "Sigma shift; 0 uses the model's own (or ModelSamplingSD3's)."}),
                "sampler_name": (["euler", "unipc"], {"tooltip": "euler: ComfyUI's Euler; unipc: flow "
                                                                 "UniPC (Wan's default solver)."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            },
            "optional": {
                "model_2": ("MODEL", {"tooltip": "Wan 2.2 A14B: the low-noise expert, used once sigma "
                                                 "falls below boundary."}),
                "boundary": ("FLOAT", {"default": 0.875, "min": 0.0, "max": 1.0, "step": 0.005,
                                       "tooltip": "Wan 2.2 A14B switch point in sigma (0.875 T2V, 0.9 I2V)."}),
            },
        }

    def sample(self, model, positive, negative, latent_image, seed, steps, cfg, guidance, shift,
               sampler_name, denoise, model_2=None, boundary=0.875):
        _jax()
        from .sampler import sample

        return (sample(model, seed, steps, cfg, guidance, shift, sampler_name, positive, negative,
                       latent_image, denoise=denoise, model_2=model_2, boundary=boundary),)


_TEXT_DTYPE = ("weight_dtype", (list(DTYPES), {
    "tooltip": "default: the file's dtype (fp8 files load as bf16); fp32 for exact comparisons."}))
_MESH = ("mesh", ("STRING", {"default": "", "tooltip":
                            "How to spread the weights over devices, e.g. 'fsdp=8'. Empty: all local devices "
                            "as fsdp."}))


class JaxCLIPLoader:
    DESCRIPTION = ("Loads Wan's UMT5-XXL text encoder to run in JAX. A drop-in for 'Load CLIP' (type wan): "
                   "its CLIP works with the core CLIP Text Encode node and gives the same conditioning. "
                   "The tokenizer is ComfyUI's, read from the file.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CLIP",)
    OUTPUT_TOOLTIPS = ("The text encoder, its weights on the JAX devices.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        register_folder()
        return {"required": {
            "clip_name": (model_files("text_encoders"), {
                "tooltip": "umt5_xxl_fp16 / umt5_xxl_fp8_e4m3fn_scaled.safetensors from models/text_encoders, or "
                           "a converted checkpoint from models/jax_checkpoints."}),
            "type": (["wan"], {"tooltip": "Wan 2.1 / 2.2 (UMT5-XXL)."}),
            _TEXT_DTYPE[0]: _TEXT_DTYPE[1], _MESH[0]: _MESH[1]}}

    def load(self, clip_name, type, weight_dtype, mesh):
        loading = _jax()
        return (loading.load_clip([resolve("text_encoders", clip_name)], type, DTYPES[weight_dtype], mesh),)


class JaxDualCLIPLoader:
    DESCRIPTION = ("Loads Flux's two text encoders (CLIP-L and T5-XXL, in either slot) to run in JAX. A drop-in "
                   "for 'DualCLIPLoader' (type flux): its CLIP works with the core CLIP Text Encode and "
                   "CLIPTextEncodeFlux nodes and gives the same conditioning. The tokenizers are ComfyUI's.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CLIP",)
    OUTPUT_TOOLTIPS = ("The text encoders, their weights on the JAX devices.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        register_folder()
        files = model_files("text_encoders")
        return {"required": {
            "clip_name1": (files, {"tooltip": "clip_l.safetensors (or the T5 file)."}),
            "clip_name2": (files, {"tooltip": "t5xxl_fp16 / t5xxl_fp8_e4m3fn(_scaled).safetensors (or clip_l)."}),
            "type": (["flux"], {"tooltip": "Flux.1 dev / schnell (CLIP-L + T5-XXL)."}),
            _TEXT_DTYPE[0]: _TEXT_DTYPE[1], _MESH[0]: _MESH[1]}}

    def load(self, clip_name1, clip_name2, type, weight_dtype, mesh):
        loading = _jax()
        paths = [resolve("text_encoders", clip_name1), resolve("text_encoders", clip_name2)]
        return (loading.load_clip(paths, type, DTYPES[weight_dtype], mesh),)


class JaxCLIPVisionLoader:
    DESCRIPTION = ("Loads a CLIP vision model (clip_vision_h for Wan 2.1 image-to-video) to run in JAX. A "
                   "drop-in for 'Load CLIP Vision': its CLIP_VISION works with the core CLIP Vision Encode "
                   "node, whose output WanImageToVideo takes.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("CLIP_VISION",)
    OUTPUT_TOOLTIPS = ("The image encoder, its weights on the JAX devices.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        register_folder()
        return {"required": {"clip_name": (model_files("clip_vision"), {
            "tooltip": "clip_vision_h.safetensors from models/clip_vision, or a converted checkpoint."})}}

    def load(self, clip_name):
        loading = _jax()
        return (loading.load_clip_vision(resolve("clip_vision", clip_name)),)


NODE_CLASS_MAPPINGS = {"JaxDiffusionModelLoader": JaxDiffusionModelLoader, "JaxVAELoader": JaxVAELoader,
                       "JaxSampler": JaxSampler, "JaxCLIPLoader": JaxCLIPLoader,
                       "JaxDualCLIPLoader": JaxDualCLIPLoader, "JaxCLIPVisionLoader": JaxCLIPVisionLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"JaxDiffusionModelLoader": "Load Diffusion Model (JAX)",
                              "JaxVAELoader": "Load VAE (JAX)", "JaxSampler": "JAX Sampler",
                              "JaxCLIPLoader": "Load CLIP (JAX)", "JaxDualCLIPLoader": "DualCLIPLoader (JAX)",
                              "JaxCLIPVisionLoader": "Load CLIP Vision (JAX)"}
