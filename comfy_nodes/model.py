"""A standard ComfyUI MODEL whose diffusion model is our jitted JAX transformer.

ComfyUI's own model class (`comfy.model_base.Flux` / `WAN21` / `WAN22`, picked by ComfyUI's
`model_config_from_unet_config` from the config we describe) is built without its torch network
(`disable_unet_model_creation`), so its model_sampling, extra_conds and every core sampler apply; its
`diffusion_model` is `JaxFlux` / `JaxWan`, a parameter-less torch module with ComfyUI's forward
signature: torch CPU tensors in → numpy → `Denoiser` (jitted JAX) → torch tensor out.
`JaxModelPatcher` keeps ComfyUI from moving or patching weights it cannot see: load / unload are
no-ops on the torch side, `model_size()` is the true size of the JAX weights, and a full detach
releases their device memory (they load again on next use).
"""

from __future__ import annotations

import types

import torch

import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.utils

from . import registry

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def to_numpy(x):
    """A torch tensor (any device/dtype) as float32 numpy; None and non-tensors pass through."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return x


def flux_unet_config(config) -> dict:
    """ComfyUI's Flux unet_config (as its detector would read it from a BFL file) for our FluxConfig."""
    return {"image_model": "flux", "guidance_embed": bool(config.guidance_embeds),
            "in_channels": config.in_channels // 4, "out_channels": (config.out_channels or config.in_channels) // 4,
            "patch_size": 2, "vec_in_dim": config.pooled_projection_dim,
            "context_in_dim": config.joint_attention_dim, "hidden_size": config.inner_dim, "mlp_ratio": 4.0,
            "num_heads": config.num_attention_heads, "depth": config.num_layers,
            "depth_single_blocks": config.num_single_layers, "axes_dim": list(config.axes_dims_rope),
            "theta": 10000, "qkv_bias": True}


def wan_unet_config(config) -> dict:
    """ComfyUI's Wan unet_config (as its detector reads it from a Comfy-Org file) for our WanConfig."""
    return {"image_model": "wan2.1", "model_type": "i2v" if config.image_dim is not None else "t2v",
            "dim": config.inner_dim, "in_dim": config.in_channels, "out_dim": config.output_channels,
            "num_heads": config.num_attention_heads, "ffn_dim": config.ffn_dim, "num_layers": config.num_layers,
            "text_dim": config.text_dim, "patch_size": tuple(config.patch_size), "freq_dim": config.freq_dim,
            "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": bool(config.cross_attn_norm),
            "eps": config.eps}


class _JaxDiffusionModel(torch.nn.Module):
    """What `BaseModel.diffusion_model` must offer ComfyUI core, without torch parameters."""

    def __init__(self, entry: registry.Entry, dtype: torch.dtype):
        super().__init__()
        self.entry = entry
        self.dtype = dtype  # BaseModel.get_dtype() reads it; ComfyUI casts inputs to it

    @property
    def denoiser(self):
        return self.entry.get()

    def _run(self, x, timestep, context, transformer_options, control, **conds):
        if control is not None:
            raise ValueError("ControlNet is not supported by the JAX model yet")
        patches = {k: v for k, v in (transformer_options or {}).items()
                   if k in ("patches", "patches_replace") and v}
        if patches:
            raise ValueError(f"model patches ({', '.join(patches)}) are not supported by the JAX model; "
                             "remove the patching node between the JAX loader and the sampler")
        out = self.denoiser(to_numpy(x), to_numpy(timestep), to_numpy(context),
                            **{k: to_numpy(v) for k, v in conds.items()})
        return torch.from_numpy(out.copy()).to(x.dtype)  # out is a read-only view of a device buffer


class JaxFlux(_JaxDiffusionModel):
    """`comfy.ldm.flux.model.Flux.forward`'s signature on a JAX `FluxDenoiser`."""

    patch_size = 2

    def forward(self, x, timestep, context, y=None, guidance=None, ref_latents=None, control=None,
                transformer_options={}, **kwargs):
        return self._run(x, timestep, context, transformer_options, control, y=y, guidance=guidance,
                         ref_latents=ref_latents, **kwargs)


class JaxWan(_JaxDiffusionModel):
    """`comfy.ldm.wan.model.WanModel.forward`'s signature on a JAX `WanDenoiser`."""

    def __init__(self, entry: registry.Entry, dtype: torch.dtype, config):
        super().__init__(entry, dtype)
        self.patch_size = tuple(config.patch_size)
        # WAN21.concat_cond reads patch_embedding.weight.shape[1] (the input channels), unguarded
        shape = (config.inner_dim, config.in_channels, *self.patch_size)
        self.patch_embedding = types.SimpleNamespace(weight=types.SimpleNamespace(shape=torch.Size(shape)))

    def forward(self, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={},
                **kwargs):
        kwargs.pop("denoise_mask", None)  # WAN22: already folded into the per-frame timesteps
        return self._run(x, timestep, context, transformer_options, kwargs.pop("control", None),
                         clip_fea=clip_fea, time_dim_concat=time_dim_concat, **kwargs)


class JaxModelPatcher(comfy.model_patcher.ModelPatcher):
    """A ModelPatcher for a model whose weights live in JAX: nothing moves on the torch side. Its
    registry entries: the MODEL's `diffusion_model.entry`, or an encoder holder's `entries` (clip.py)."""

    def _entries(self) -> list[registry.Entry]:
        inner = getattr(self.model, "diffusion_model", None)
        return [inner.entry] if isinstance(inner, _JaxDiffusionModel) else list(self.model.entries)

    def model_size(self):
        return sum(e.nbytes for e in self._entries()) or self.size

    def loaded_size(self):
        return sum(e.nbytes for e in self._entries() if e.loaded)

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        raise ValueError("LoRA / weight patches on a JAX model are not supported yet: remove the "
                         "LoraLoader between the JAX loader and the sampler / text encode node")

    def _check_patches(self):  # weight patches cannot arrive: add_patches refuses them
        if self.weight_wrapper_patches:
            raise ValueError("weight wrappers are not supported by the JAX model")

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        self._check_patches()
        for entry in self._entries():
            entry.get()  # loads again if it was released
        self.model.model_loaded_weight_memory = self.model_size()
        self.model.model_lowvram = False
        self.model.lowvram_patch_counter = 0
        self.model.current_weight_patches_uuid = self.patches_uuid

    def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
        self.patch_model(device_to)
        return 0

    def partially_unload(self, device_to, memory_to_free=0):
        return 0  # JAX weights cannot be half-offloaded; ComfyUI then unloads the whole model

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        self.eject_model()
        if unpatch_weights:
            self.model.model_loaded_weight_memory = 0
            self.model.current_weight_patches_uuid = None
        for k, old in list(self.object_patches_backup.items()):
            comfy.utils.set_attr(self.model, k, old)
        self.object_patches_backup.clear()

    def detach(self, unpatch_all=True):
        model = super().detach(unpatch_all)
        if unpatch_all:
            for entry in self._entries():
                entry.release()
        return model


def model_patcher(entry: registry.Entry) -> JaxModelPatcher:
    """The MODEL for a loaded denoiser entry: ComfyUI's model class around `JaxFlux` / `JaxWan`."""
    denoiser = entry.get()
    config = denoiser.config
    if denoiser.family == "flux":
        unet_config = flux_unet_config(config)
    else:
        unet_config = wan_unet_config(config)
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
    if model_config is None:
        raise ValueError(f"ComfyUI has no model class for this {denoiser.family} model ({unet_config})")
    dtype = TORCH_DTYPES.get(str(denoiser.dtype), torch.float32)
    model_config.set_inference_dtype(dtype, None)
    model_config.unet_config["disable_unet_model_creation"] = True
    model = model_config.get_model({})
    if denoiser.family == "flux":
        model.diffusion_model = JaxFlux(entry, dtype)
    else:
        model.diffusion_model = JaxWan(entry, dtype, config)
    return JaxModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                           offload_device=comfy.model_management.unet_offload_device(), size=entry.nbytes)


def entry_of(model) -> registry.Entry:
    """The registry entry behind a MODEL from our loader; ValueError for any other MODEL."""
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(inner, _JaxDiffusionModel):
        raise ValueError("this node needs a MODEL from 'Load Diffusion Model (JAX)' "
                         f"(got {type(inner).__name__ if inner is not None else type(model).__name__})")
    return inner.entry
