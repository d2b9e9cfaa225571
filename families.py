"""The model families jaxdiff knows, as data: one row per family, one entry per loadable model.

Importable without jax or torch (stdlib only): every class or function is named by an import string
(`"models_flax.flux:FluxConfig"`, relative to the `jaxdiff` package, or absolute for code outside it)
and imported only when `resolve` is called. A row may also hold the object itself (tests register
throw-away families that way).

- `ModelKind`: one loadable model (a transformer, a VAE): its diffusers `_class_name` (or
  transformers `architectures`), config and module classes, the single-file layouts the converter
  recognises (how to detect them, their key map), keys diffusers ignores, tied parameters, example
  forward inputs, and the torch classes `verify` / `bench --torch` compare against.
- `Family`: a pipeline family (what `jaxdiff generate --family` picks): its transformer and VAE kinds,
  pipeline class, released-model presets, and the tiny embedded default.

Everything that loops over families (loader and detection in convert/, `jaxdiff generate`, `plan`,
`bench`, `verify`) reads these tables; adding a family is one `Family` row (and its `ModelKind`s) plus
the files it names (convert/README.md has the recipe). `register` adds a row at run time.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

PACKAGE = __name__.rpartition(".")[0] or "jaxdiff"


def resolve(ref: Any) -> Any:
    """The object an import string names (`"module.path:attribute"`); any other value as it is.

    Module paths are relative to the jaxdiff package unless importing them that way fails and they
    import as absolute paths (code registered from outside the package)."""
    if not isinstance(ref, str):
        return ref
    module_name, sep, attribute = ref.partition(":")
    if not sep:
        raise ValueError(f"import string {ref!r} must be 'module:attribute'")
    try:
        module = importlib.import_module(f"{PACKAGE}.{module_name}")
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith(f"{PACKAGE}.{module_name.split('.')[0]}"):
            raise
        module = importlib.import_module(module_name)
    return getattr(module, attribute)


# ----------------------------------------------------------------------------- rows


@dataclasses.dataclass(frozen=True, eq=False)  # rows compare and hash by identity
class Layout:
    """A single-file checkpoint layout (keys named otherwise than diffusers names them).

    detect(names) -> bool: whether a (prefix-stripped) key set is in this layout.
    config(shapes) -> dict: a diffusers config.json-style dict inferred from key names and shapes.
    keymap(shapes, config) -> (takes, unknown, missing): `{diffusers key: convert.transform.Take}`,
        source keys that map to nothing, and source keys the config expects but the file lacks (named
        in the file's own terms).
    torch_keymap(state, config) -> state: the same rename done by diffusers' own converter, on torch
        tensors (the independent reference `jaxdiff verify` builds the torch module from); optional.
    """

    name: str
    description: str
    detect_key: str  # a key whose presence identifies the layout (named in error messages)
    detect: Any
    config: Any
    keymap: Any
    torch_keymap: Any = None


@dataclasses.dataclass(frozen=True, eq=False)  # rows compare and hash by identity
class ModelKind:
    """One loadable model. `name` is what converted checkpoints record (`jaxdiff.json` "family")."""

    name: str
    role: str  # "transformer" | "vae"
    class_name: str  # diffusers `_class_name` (transformers: the first of `architectures`)
    config_class: Any
    model_class: Any
    layouts: tuple[Layout, ...] = ()  # single-file layouts, tried in registry order
    # a diffusers-named single file (no config inside): (detect(names), config(shapes)); optional
    diffusers_single_file: tuple[Any, Any] | None = None
    ignored_keys: tuple[str, ...] = ()  # diffusers' `_keys_to_ignore_on_load_unexpected` (regexes)
    # (parameter key, stored alias): one tensor stored under either name (tied embeddings)
    tied: tuple[tuple[str, str], ...] = ()
    architectures: tuple[str, ...] = ()  # more transformers `architectures` names for this kind
    # example_inputs(config, sizes, seed) -> {forward argument: numpy array | None}; see `Sizes`
    example_inputs: Any = None
    # {forward argument: logical axes} of those inputs (placement on a mesh)
    input_axes: Any = None
    torch_class: Any = None  # the torch reference class ("diffusers:FluxTransformer2DModel")

    def classes(self) -> tuple[type, type]:
        """(config class, module class)."""
        return resolve(self.config_class), resolve(self.model_class)


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Sizes of a forward call in the model's own input units (what `example_inputs` takes):
    `height`, `width` are the rows and columns of the grid the model takes — latent rows and columns
    for Wan and the VAEs, the packed 2×2 token grid for Flux (its pipeline packs) — and `frames`
    latent frames (video)."""

    batch: int = 1
    height: int = 8
    width: int = 8
    frames: int = 1
    text_tokens: int = 16
    image_tokens: int = 0  # CLIP-vision tokens (Wan 2.1 I2V)
    timestep_tokens: int = 1  # timesteps per item: 1, or one per token (Wan 2.2 TI2V expand_timesteps)


@dataclasses.dataclass(frozen=True, eq=False)  # rows compare and hash by identity
class Preset:
    """A released model's shapes, for planning and benchmarking without weights: `transformer` and
    `vae` are config.json field values (a dict) or an import string naming a config object; `vae`
    None = the VAE config class's defaults."""

    name: str
    transformer: Any
    vae: Any = None
    height: int = 1024
    width: int = 1024
    frames: int = 1
    steps: int = 28
    text_tokens: int = 512
    experts: int = 1  # transformers run per step (Wan 2.2 A14B: two, both counted resident)
    guidance_passes: int = 1  # transformer calls per step (2 with classifier-free guidance)
    expand_timesteps: bool = False  # per-token timesteps (Wan 2.2 TI2V-5B)


@dataclasses.dataclass(frozen=True, eq=False)  # rows compare and hash by identity
class Embedded:
    """The tiny random-weight model `jaxdiff generate` runs without `--model` (fixed weights)."""

    transformer: Mapping[str, Any]
    vae: Mapping[str, Any]
    height: int = 64
    width: int = 64
    frames: int = 1
    steps: int = 4
    text_tokens: int = 8
    image_transformer: Mapping[str, Any] | None = None  # overrides for image-to-video (`--image`)


@dataclasses.dataclass(frozen=True, eq=False)  # rows compare and hash by identity
class Family:
    """A pipeline family: what `jaxdiff generate --family NAME` runs."""

    name: str
    description: str  # one line for `--family` help
    output: str  # "image" | "video"
    transformer: ModelKind
    vae: ModelKind
    pipeline: Any  # the pipeline class ("pipelines.flux:FluxPipeline")
    presets: tuple[Preset, ...] = ()
    embedded: Embedded | None = None
    # `jaxdiff generate` options beyond the common ones that this family takes (argument dest names)
    options: tuple[str, ...] = ()
    flops: Any = None  # flops(config, sizes) -> {term: FLOPs} of one forward (benchmarks/flops.py)
    # what `jaxdiff plan` knows of the family beyond its modules' shapes (which tokens the blocks see,
    # each block phase's live tensors, how the VAE decodes): a pipelines.plan_estimates.FamilyEstimates
    plan_estimates: Any = None
    # bench --shape reduced: config fields and sizes of the CPU-sized run
    reduced: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    # the encoders the pipeline conditions on: text (Flux: CLIP-L, T5-XXL; Wan: UMT5-XXL) and, for
    # image-to-video, an image encoder (Wan 2.1 I2V: CLIP ViT-H/14)
    text_encoders: tuple[ModelKind, ...] = ()
    image_encoder: ModelKind | None = None

    @property
    def models(self) -> tuple[ModelKind, ...]:
        return (self.transformer, self.vae)

    @property
    def encoders(self) -> tuple[ModelKind, ...]:
        return self.text_encoders + ((self.image_encoder,) if self.image_encoder else ())


# ----------------------------------------------------------------------------- text and image encoders
# transformers-format directories load by `architectures`; ComfyUI's single files (clip_l,
# t5xxl_*, umt5_xxl_*, clip_vision_h) keep transformers' key names, so they are told apart by their
# keys and their config read from shapes (convert/t5_keys.py, convert/clip_keys.py).

CLIP_TEXT = ModelKind(
    name="clip_text", role="text_encoder", class_name="CLIPTextModel",
    architectures=("CLIPTextModelWithProjection",),
    config_class="models_flax.clip:CLIPTextConfig", model_class="models_flax.clip:CLIPTextModel",
    diffusers_single_file=("convert.clip_keys:is_clip_text", "convert.clip_keys:clip_text_config"),
    ignored_keys=("text_model\\.embeddings\\.position_ids", "^logit_scale$", "^text_projection\\."),
    example_inputs="models_flax.clip:example_text_inputs", input_axes="models_flax.clip:INPUT_AXES",
    torch_class="transformers:CLIPTextModel")

T5_ENCODER = ModelKind(
    name="t5", role="text_encoder", class_name="T5EncoderModel",
    config_class="models_flax.t5:T5Config", model_class="models_flax.t5:T5EncoderModel",
    diffusers_single_file=("convert.t5_keys:is_t5", "convert.t5_keys:t5_config"),
    # transformers' T5EncoderModel ignores `decoder` keys; ComfyUI files may carry a `spiece_model`
    ignored_keys=("decoder", "^spiece_model$"),
    tied=(("shared.weight", "encoder.embed_tokens.weight"),),
    example_inputs="models_flax.t5:example_inputs", input_axes="models_flax.t5:INPUT_AXES",
    torch_class="transformers:T5EncoderModel")

UMT5_ENCODER = ModelKind(
    name="umt5", role="text_encoder", class_name="UMT5EncoderModel",
    config_class="models_flax.umt5:UMT5Config", model_class="models_flax.umt5:UMT5EncoderModel",
    diffusers_single_file=("convert.t5_keys:is_umt5", "convert.t5_keys:umt5_config"),
    ignored_keys=("^spiece_model$",),  # ComfyUI's umt5_xxl files embed the SentencePiece tokenizer
    tied=(("shared.weight", "encoder.embed_tokens.weight"),),
    example_inputs="models_flax.t5:example_inputs", input_axes="models_flax.t5:INPUT_AXES",
    torch_class="transformers:UMT5EncoderModel")

CLIP_VISION = ModelKind(
    name="clip_vision", role="image_encoder", class_name="CLIPVisionModelWithProjection",
    architectures=("CLIPVisionModel",),
    config_class="models_flax.clip_vision:CLIPVisionConfig",
    model_class="models_flax.clip_vision:CLIPVisionModelWithProjection",
    diffusers_single_file=("convert.clip_keys:is_clip_vision", "convert.clip_keys:clip_vision_config"),
    ignored_keys=("vision_model\\.embeddings\\.position_ids",),
    example_inputs="models_flax.clip_vision:example_inputs",
    input_axes="models_flax.clip_vision:INPUT_AXES", torch_class="transformers:CLIPVisionModelWithProjection")

ENCODERS = (CLIP_TEXT, T5_ENCODER, UMT5_ENCODER, CLIP_VISION)

# the released encoders' config.json values (what `jaxdiff plan` counts): openai/clip-vit-large-patch14's
# text model, google/t5-v1_1-xxl's and google/umt5-xxl's encoders, laion CLIP ViT-H/14's vision tower
ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "clip_text": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                      projection_dim=768),
    "t5": dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               feed_forward_proj="gated-gelu"),
    "umt5": dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                 feed_forward_proj="gated-gelu"),
    "clip_vision": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                        image_size=224, patch_size=14, hidden_act="gelu", projection_dim=1024),
}

# ----------------------------------------------------------------------------- Flux

FLUX_TRANSFORMER = ModelKind(
    name="flux", role="transformer", class_name="FluxTransformer2DModel",
    config_class="models_flax.flux:FluxConfig", model_class="models_flax.flux:FluxTransformer2DModel",
    layouts=(Layout("bfl", "BFL / ComfyUI Flux transformer", "double_blocks.0.img_attn.qkv.weight",
                    detect="convert.flux_keys:is_bfl_flux", config="convert.flux_keys:bfl_flux_config",
                    keymap="convert.flux_keys:bfl_keymap",
                    torch_keymap="convert.verify:diffusers_flux_from_bfl"),),
    diffusers_single_file=("convert.flux_keys:is_diffusers_flux",
                           "convert.flux_keys:diffusers_flux_config"),
    example_inputs="models_flax.flux:example_inputs", input_axes="models_flax.flux:INPUT_AXES",
    torch_class="diffusers:FluxTransformer2DModel")

FLUX_VAE = ModelKind(
    name="vae_kl", role="vae", class_name="AutoencoderKL",
    config_class="models_flax.vae_kl:AutoencoderKLConfig", model_class="models_flax.vae_kl:AutoencoderKL",
    layouts=(Layout("ldm_vae", "LDM / BFL `ae` VAE", "encoder.down.0.block.0.conv1.weight",
                    detect="convert.vae_keys:is_ldm_vae", config="convert.vae_keys:ldm_vae_config",
                    keymap="convert.vae_keys:ldm_vae_keymap",
                    torch_keymap="convert.verify:diffusers_vae_from_ldm"),),
    example_inputs="models_flax.vae_kl:example_inputs", torch_class="diffusers:AutoencoderKL")

_FLUX = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
             num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
             axes_dims_rope=(16, 56, 56))
_FLUX_VAE = "models_flax.vae_kl:FLUX_VAE_CONFIG"  # FLUX.1 vae/config.json

FLUX = Family(
    name="flux", description="Flux.1 dev / schnell: text-to-image (and image-to-image)", output="image",
    transformer=FLUX_TRANSFORMER, vae=FLUX_VAE, pipeline="pipelines.flux:FluxPipeline",
    text_encoders=(CLIP_TEXT, T5_ENCODER),
    presets=(Preset("flux-dev", dict(_FLUX, guidance_embeds=True), _FLUX_VAE),
             Preset("flux-schnell", dict(_FLUX, guidance_embeds=False), _FLUX_VAE, steps=4)),
    # Flux-dev-shaped: 16 latent channels × 2×2 packing, head dim 16 = sum(axes); VAE factor 8
    embedded=Embedded(
        transformer=dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2,
                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
        vae=dict(block_out_channels=(16, 16, 32, 32), layers_per_block=1, latent_channels=16,
                 norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False)),
    options=("init_image", "export_step", "text_encoder_2", "tokenizer_2"),
    flops="benchmarks.flops:flux",
    plan_estimates="pipelines.plan_estimates:FLUX",
    reduced=dict(num_layers=1, num_single_layers=2, num_attention_heads=4, height=256, width=256,
                 text_tokens=128))

# ----------------------------------------------------------------------------- Wan

WAN_TRANSFORMER = ModelKind(
    name="wan", role="transformer", class_name="WanTransformer3DModel",
    config_class="models_flax.wan:WanConfig", model_class="models_flax.wan:WanTransformer3DModel",
    layouts=(Layout("comfy_wan", "ComfyUI / original Wan transformer", "head.modulation",
                    detect="convert.wan_keys:is_comfy_wan", config="convert.wan_keys:comfy_wan_config",
                    keymap="convert.wan_keys:comfy_wan_keymap",
                    torch_keymap="convert.verify:diffusers_wan_from_original"),),
    # diffusers 0.42 WanTransformer3DModel._keys_to_ignore_on_load_unexpected
    ignored_keys=("norm_added_q",),
    example_inputs="models_flax.wan:example_inputs", input_axes="models_flax.wan:INPUT_AXES",
    torch_class="diffusers:WanTransformer3DModel")

WAN_VAE = ModelKind(
    name="vae_wan", role="vae", class_name="AutoencoderKLWan",
    config_class="models_flax.vae_wan:WanVAEConfig", model_class="models_flax.vae_wan:AutoencoderKLWan",
    layouts=(Layout("wan_vae", "Wan 2.1 / 2.2 VAE", "decoder.middle.0.residual.0.gamma",
                    detect="convert.wan_keys:is_wan_vae", config="convert.wan_keys:wan_vae_config",
                    keymap="convert.wan_keys:wan_vae_keymap",
                    torch_keymap="convert.verify:diffusers_wan_vae_from_original"),),
    example_inputs="models_flax.vae_wan:example_inputs", torch_class="diffusers:AutoencoderKLWan")

_WAN = dict(patch_size=(1, 2, 2), attention_head_dim=128, text_dim=4096, freq_dim=256, eps=1e-6,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
_WAN_1_3B = dict(_WAN, num_attention_heads=12, ffn_dim=8960, num_layers=30, in_channels=16, out_channels=16)
_WAN_14B = dict(_WAN, num_attention_heads=40, ffn_dim=13824, num_layers=40, in_channels=16, out_channels=16)
_WAN_5B = dict(_WAN, num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48, out_channels=48)
_WAN22_VAE = "models_flax.vae_wan:WAN22_VAE_CONFIG"  # Wan2.2-TI2V-5B vae/config.json (z 48, /16)

WAN = Family(
    name="wan", description="Wan 2.1 / 2.2: text-to-video, image-to-video (and video-to-video)",
    output="video", transformer=WAN_TRANSFORMER, vae=WAN_VAE, pipeline="pipelines.wan:WanPipeline",
    text_encoders=(UMT5_ENCODER,), image_encoder=CLIP_VISION,
    presets=(
        Preset("wan2.1-t2v-1.3b", _WAN_1_3B, None, 480, 832, 81, steps=50, guidance_passes=2),
        Preset("wan2.1-t2v-14b", _WAN_14B, None, 720, 1280, 81, steps=50, guidance_passes=2),
        Preset("wan2.1-i2v-14b", dict(_WAN_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120),
               None, 720, 1280, 81, steps=40, guidance_passes=2),
        Preset("wan2.2-t2v-a14b", _WAN_14B, None, 720, 1280, 81, steps=40, experts=2, guidance_passes=2),
        Preset("wan2.2-i2v-a14b", dict(_WAN_14B, in_channels=36), None, 720, 1280, 81, steps=40,
               experts=2, guidance_passes=2),
        Preset("wan2.2-ti2v-5b", _WAN_5B, _WAN22_VAE, 704, 1280, 121, steps=50, guidance_passes=2,
               expand_timesteps=True),
    ),
    # 9 frames (3 latent frames) of 64×64 (8×8 latents → 4×4 tokens per latent frame); diffusers'
    # test sizes on 16 latent channels; with --image: noise + 4 mask + 16 image latent channels
    embedded=Embedded(
        transformer=dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                         in_channels=16, out_channels=16, text_dim=16, freq_dim=32, ffn_dim=32,
                         num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                         rope_max_seq_len=32),
        vae=dict(base_dim=3, z_dim=16, dim_mult=(1, 1, 1, 1), num_res_blocks=1,
                 temperal_downsample=(False, True, True)),
        frames=9, image_transformer=dict(in_channels=36)),
    options=("frames", "image", "guidance_2", "sampler", "fps", "init_video", "negative_prompt",
             "image_encoder"),
    flops="benchmarks.flops:wan",
    plan_estimates="pipelines.plan_estimates:WAN",
    reduced=dict(num_layers=2, num_attention_heads=4, height=256, width=256, frames=9, text_tokens=128))


# ----------------------------------------------------------------------------- lookups

FAMILIES: dict[str, Family] = {f.name: f for f in (FLUX, WAN)}
_EXTRA_MODELS: dict[str, ModelKind] = {}  # kinds registered without a family (e.g. text encoders)


def register(row: Family | ModelKind) -> None:
    """Add a family (with its models) or a lone model kind; a name already taken is an error."""
    models = row.models if isinstance(row, Family) else (row,)
    taken = {m.name: m for m in all_models()}
    for model in models:
        if model.name in taken and taken[model.name] is not model:
            raise ValueError(f"model kind {model.name!r} is already registered")
    if isinstance(row, Family):
        if row.name in FAMILIES:
            raise ValueError(f"family {row.name!r} is already registered")
        FAMILIES[row.name] = row
    else:
        _EXTRA_MODELS[row.name] = row


def unregister(name: str) -> None:
    """Remove a family or lone model kind added by `register` (tests)."""
    FAMILIES.pop(name, None)
    _EXTRA_MODELS.pop(name, None)


def all_models() -> list[ModelKind]:
    """Every model kind, families' first (in registry order, transformer before VAE), no repeats."""
    seen: dict[str, ModelKind] = {}
    for family in FAMILIES.values():
        for model in family.models:
            seen.setdefault(model.name, model)
    for model in (*ENCODERS, *_EXTRA_MODELS.values()):
        seen.setdefault(model.name, model)
    return list(seen.values())


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def get_model(name: str) -> ModelKind:
    """The model kind a converted checkpoint names (`jaxdiff.json` "family")."""
    for model in all_models():
        if model.name == name:
            return model
    raise ValueError(f"unknown model kind {name!r}; known: {', '.join(m.name for m in all_models())}")


def model_for_class(class_name: str | None, where: str) -> ModelKind:
    """The model kind of a diffusers `_class_name` or transformers architecture name."""
    for model in all_models():
        if class_name == model.class_name or class_name in model.architectures:
            return model
    known = sorted(n for m in all_models() for n in (m.class_name, *m.architectures))
    raise ValueError(f"{where}: unsupported model class {class_name!r}; supported: {', '.join(known)}")


def model_for_config(config: Any) -> ModelKind | None:
    """The model kind whose config class `config` is an instance of (None if none)."""
    for model in all_models():
        if type(config) is resolve(model.config_class):
            return model
    return None


def family_of(model: ModelKind) -> Family | None:
    """The (first) family a model kind belongs to."""
    return next((f for f in FAMILIES.values() if model in f.models), None)


def preset(name: str) -> tuple[Family, Preset]:
    """(family, preset) called `name` (case-insensitive); a ValueError lists the known names."""
    wanted = name.strip().lower()
    for family in FAMILIES.values():
        for row in family.presets:
            if row.name == wanted:
                return family, row
    known = [p.name for f in FAMILIES.values() for p in f.presets]
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(known)}")


def call(ref: Any, *args, **kwargs):
    """`resolve(ref)(*args, **kwargs)`."""
    fn: Callable = resolve(ref)
    return fn(*args, **kwargs)
