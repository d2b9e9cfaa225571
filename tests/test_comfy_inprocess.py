"""The node pack inside ComfyUI's own modules (imported, no server): core KSampler on our MODEL equals core
KSampler on ComfyUI's own torch model loaded from the same file, JaxSampler equals core KSampler, our
VAE equals ComfyUI's, and bad inputs are errors that say what is wrong. fp32 throughout; tolerance 1e-4
on sampled latents (the issue's bound), 1e-5 on single forwards.

ComfyUI is imported from the snapshot (tests/comfy_server.ensure_comfyui: unpacked and its requirements
installed on first use). Tiny models use 16 latent channels, as ComfyUI's Flux / Wan 2.1 latent formats do.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

SAMPLE_TOL = 1e-4
FORWARD_TOL = 1e-5
PREFIX = "model.diffusion_model."


@pytest.fixture(scope="module")
def comfy():
    from comfy_server import ensure_comfyui

    root = ensure_comfyui()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)
    import comfy.model_detection
    import comfy.model_patcher
    import comfy.sample
    import comfy.samplers

    comfy.root = root  # where the fixtures import ComfyUI's modules from
    return comfy


def _save(model, path):
    from safetensors.torch import save_file

    save_file({PREFIX + k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def comfy_own_model(comfy, path, fix_flux_width: bool = False):
    """ComfyUI's own MODEL (torch) from a single file: its detector, model class and weight loader
    (the detector's hard-coded widths — Flux hidden 3072, T5/UMT5 4096 — replaced by the file's)."""
    from safetensors.torch import load_file

    sd = load_file(path)
    unet_config = comfy.model_detection.detect_unet_config(sd, PREFIX)
    if fix_flux_width:
        unet_config["hidden_size"] = sd[PREFIX + "img_in.weight"].shape[0]
        unet_config["num_heads"] = unet_config["hidden_size"] // 128
        unet_config["context_in_dim"] = sd[PREFIX + "txt_in.weight"].shape[1]
        unet_config["vec_in_dim"] = sd[PREFIX + "vector_in.in_layer.weight"].shape[1]
    if PREFIX + "text_embedding.0.weight" in sd:
        unet_config["text_dim"] = sd[PREFIX + "text_embedding.0.weight"].shape[1]
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config, sd)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model(sd, PREFIX)
    model.load_model_weights(sd, PREFIX)
    return comfy.model_patcher.ModelPatcher(model, torch.device("cpu"), torch.device("cpu"))


def ours(path, dtype="float32"):
    from jaxdiff.comfy_nodes import loading

    return loading.load_diffusion_model(path, dtype, "", "auto")


def conditioning(tokens: int, width: int, pooled: int | None, seed: int, **extra):
    g = torch.Generator().manual_seed(seed)
    info = dict(extra)
    if pooled:
        info["pooled_output"] = torch.randn(1, pooled, generator=g)
    return [[torch.randn(1, tokens, width, generator=g), info]]


def ksampler(comfy, model, latent, positive, negative, *, steps=3, cfg=1.0, seed=7, sampler="euler", **kw):
    import comfy.sample as sample

    latent = sample.fix_empty_latent_channels(model, latent)
    noise = sample.prepare_noise(latent, seed)
    return sample.sample(model, noise, steps, cfg, sampler, "simple", positive, negative, latent, seed=seed, **kw)


# ----------------------------------------------------------------------------- Flux


@pytest.fixture(scope="module")
def flux_file(comfy, tmp_path_factory):
    import comfy_fixtures as cf

    params = {**cf.TINY_BFL, "in_channels": 16, "out_channels": 16}
    from comfy.ldm.flux.model import Flux
    import comfy.ops

    torch.manual_seed(0)
    model = Flux(**params, guidance_embed=True, operations=comfy.ops.disable_weight_init, dtype=torch.float32)
    from flux_fixtures import randomize_

    randomize_(model, 0, 0.05)
    return _save(model, tmp_path_factory.mktemp("flux") / "tiny_flux.safetensors")


FLUX_LATENT = (1, 16, 8, 12)  # [B, C, h, w]; non-square so rows and columns cannot be swapped unseen


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_flux_core_ksampler_on_our_model_equals_comfyui_model(comfy, flux_file, cfg):
    latent = torch.zeros(FLUX_LATENT)
    pos = conditioning(77, 32, 32, 1, guidance=3.5)
    neg = conditioning(77, 32, 32, 2)
    theirs = ksampler(comfy, comfy_own_model(comfy, flux_file, fix_flux_width=True), latent, pos, neg, cfg=cfg)
    mine = ksampler(comfy, ours(flux_file), latent, pos, neg, cfg=cfg)
    assert mine.shape == theirs.shape == FLUX_LATENT
    assert float((mine - theirs).abs().max()) <= SAMPLE_TOL


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_flux_jax_sampler_equals_core_ksampler(comfy, flux_file, cfg):
    from jaxdiff.comfy_nodes.sampler import sample

    model = ours(flux_file)
    latent = torch.zeros(FLUX_LATENT)
    pos, neg = conditioning(20, 32, 32, 3, guidance=3.5), conditioning(20, 32, 32, 4)
    reference = ksampler(comfy, model, latent, pos, neg, cfg=cfg, steps=4)
    out = sample(model, 7, 4, cfg, -1.0, 0.0, "euler", pos, neg, {"samples": latent})["samples"]
    assert float((out - reference).abs().max()) <= SAMPLE_TOL


def test_flux_jax_sampler_with_a_noise_mask_equals_core_ksampler(comfy, flux_file):
    """Inpainting: the kept region is held at the noised clean latent each step (BaseModel's
    scale_latent_inpaint), as KSampler's KSamplerX0Inpaint does."""
    from jaxdiff.comfy_nodes.sampler import sample

    model = ours(flux_file)
    g = torch.Generator().manual_seed(9)
    latent = torch.randn(FLUX_LATENT, generator=g)
    mask = torch.zeros(1, 1, 64, 96)
    mask[..., 16:48, 24:72] = 1.0  # pixel-space mask, as LoadImage/SetLatentNoiseMask give it
    pos, neg = conditioning(20, 32, 32, 3, guidance=3.5), conditioning(20, 32, 32, 4)
    reference = ksampler(comfy, model, latent, pos, neg, steps=4, denoise=0.8, noise_mask=mask)
    out = sample(model, 7, 4, 1.0, -1.0, 0.0, "euler", pos, neg, {"samples": latent, "noise_mask": mask},
                 denoise=0.8)["samples"]
    assert float((out - reference).abs().max()) <= SAMPLE_TOL


def test_flux_text_padded_to_bucket_equals_unpadded(comfy, flux_file):
    """77 tokens pad to the 128 bucket, masked: the same output as the transformer on 77 tokens."""
    import jax.numpy as jnp

    from jaxdiff.pipelines.flux import latent_image_ids, pack_latents, text_ids, unpack_latents

    denoiser = ours(flux_file).model.diffusion_model.denoiser
    rng = np.random.default_rng(0)
    x = rng.standard_normal(FLUX_LATENT, np.float32)
    ctx = rng.standard_normal((1, 77, 32), np.float32)
    y = rng.standard_normal((1, 32), np.float32)
    t, g = np.array([0.6], np.float32), np.array([3.5], np.float32)
    inputs = denoiser.prepare(x, t, ctx, y=y, guidance=g)
    assert inputs["context"].shape[1] == 128 and inputs["mask"].sum() == 77
    padded = denoiser(x, t, ctx, y=y, guidance=g)
    from flax import nnx

    model = nnx.merge(denoiser.graph, denoiser.state)
    h, w = FLUX_LATENT[2:]
    raw = model(hidden_states=pack_latents(jnp.asarray(x)), encoder_hidden_states=jnp.asarray(ctx),
                pooled_projections=jnp.asarray(y), timestep=jnp.asarray(t),
                img_ids=jnp.asarray(latent_image_ids(h // 2, w // 2)), txt_ids=jnp.asarray(text_ids(77)),
                guidance=jnp.asarray(g))
    assert float(np.abs(padded - np.asarray(unpack_latents(raw, h, w))).max()) <= FORWARD_TOL


def test_flux_prompts_of_similar_length_share_one_program(comfy, flux_file):
    denoiser = ours(flux_file).model.diffusion_model.denoiser
    x = np.zeros(FLUX_LATENT, np.float32)
    sizes = []
    for tokens in (77, 90, 128, 129):
        denoiser(x, np.array([0.5], np.float32), np.zeros((1, tokens, 32), np.float32),
                 y=np.zeros((1, 32), np.float32), guidance=np.array([3.5], np.float32))
        sizes.append(denoiser._forward._cache_size())
    assert sizes[1] == sizes[2] == sizes[0] and sizes[3] == sizes[0] + 1  # 129 → the 256 bucket


@pytest.mark.parametrize("bad, message", [
    (dict(context=np.zeros((1, 77, 768), np.float32)), "text width is 32"),
    (dict(x=np.zeros((1, 16, 9, 12), np.float32)), "not a multiple of Flux's 2×2 patch"),
    (dict(x=np.zeros((1, 4, 8, 12), np.float32)), "the latent has 4 channels"),
    (dict(y=np.zeros((1, 8), np.float32)), "pooled_output"),
])
def test_flux_bad_inputs_name_the_problem(comfy, flux_file, bad, message):
    denoiser = ours(flux_file).model.diffusion_model.denoiser
    call = dict(x=np.zeros(FLUX_LATENT, np.float32), timestep=np.array([0.5], np.float32),
                context=np.zeros((1, 77, 32), np.float32), y=np.zeros((1, 32), np.float32),
                guidance=np.array([3.5], np.float32))
    call.update(bad)
    with pytest.raises(ValueError, match=message):
        denoiser.prepare(**call)


def test_model_reports_its_true_size_and_survives_unload(comfy, flux_file):
    import comfy.model_management as mm

    model = ours(flux_file)
    entry = model.model.diffusion_model.entry
    assert model.model_size() == entry.nbytes > 0
    mm.load_models_gpu([model])
    mm.unload_all_models()
    assert not entry.loaded  # device memory released
    latent = torch.zeros(FLUX_LATENT)
    out = ksampler(comfy, model, latent, conditioning(8, 32, 32, 1, guidance=3.5), conditioning(8, 32, 32, 2))
    assert torch.isfinite(out).all() and entry.loaded  # loaded again on use


def test_lora_patches_are_refused(comfy, flux_file):
    """ComfyUI maps LoRA keys through the model's (here empty) state dict and would drop them all
    silently; our MODEL refuses any weight patch instead."""
    model = ours(flux_file).clone()
    with pytest.raises(ValueError, match="LoRA"):
        model.add_patches({PREFIX + "img_in.weight": (torch.zeros(128, 64),)}, 1.0)


def test_not_a_diffusion_model_file_is_refused(comfy, tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "junk.safetensors"
    save_file({"some.weight": np.zeros((2, 2), np.float32)}, str(path))
    with pytest.raises(ValueError, match="junk.safetensors|some.weight|not"):
        ours(str(path))


def test_mesh_that_does_not_fit_is_refused(comfy, flux_file):
    from jaxdiff.comfy_nodes import loading

    with pytest.raises(ValueError, match="fsdp=64.*does not fit"):
        loading.load_diffusion_model(flux_file, None, "fsdp=64", "auto")


# ----------------------------------------------------------------------------- Wan


@pytest.fixture(scope="module")
def wan_files(comfy, tmp_path_factory):
    from wan_comfy_fixtures import tiny_comfy_wan

    root = tmp_path_factory.mktemp("wan")
    return {
        "t2v": _save(tiny_comfy_wan(comfy.root, "t2v", in_dim=16, out_dim=16, text_dim=32), root / "t2v.safetensors"),
        "t2v_b": _save(tiny_comfy_wan(comfy.root, "t2v", seed=1, in_dim=16, out_dim=16, text_dim=32), root / "low.safetensors"),
        "ti2v": _save(tiny_comfy_wan(comfy.root, "ti2v", in_dim=48, out_dim=48, text_dim=32),
                      root / "ti2v.safetensors"),
        "i2v": _save(tiny_comfy_wan(comfy.root, "i2v", in_dim=36, out_dim=16, text_dim=32), root / "i2v.safetensors"),
    }


WAN_LATENT = (1, 16, 3, 8, 12)


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_wan_core_ksampler_on_our_model_equals_comfyui_model(comfy, wan_files, cfg):
    latent = torch.zeros(WAN_LATENT)
    pos, neg = conditioning(512, 32, None, 1), conditioning(512, 32, None, 2)
    theirs = ksampler(comfy, comfy_own_model(comfy, wan_files["t2v"]), latent, pos, neg, cfg=cfg)
    mine = ksampler(comfy, ours(wan_files["t2v"]), latent, pos, neg, cfg=cfg)
    assert float((mine - theirs).abs().max()) <= SAMPLE_TOL


def test_wan_i2v_core_ksampler_equals_comfyui_model(comfy, wan_files):
    """WAN21's concat_cond (mask + image latents) and clip_fea reach our model as they reach ComfyUI's."""
    g = torch.Generator().manual_seed(5)
    clip = type("ClipVisionOutput", (), {})()
    clip.penultimate_hidden_states = torch.randn(1, 257, 1280, generator=g)
    extra = dict(concat_latent_image=torch.randn(1, 16, 3, 8, 12, generator=g),
                 concat_mask=torch.ones(1, 1, 3, 8, 12), clip_vision_output=clip)
    extra["concat_mask"][:, :, 0] = 0.0
    pos, neg = conditioning(512, 32, None, 1, **extra), conditioning(512, 32, None, 2, **extra)
    latent = torch.zeros(WAN_LATENT)
    theirs = ksampler(comfy, comfy_own_model(comfy, wan_files["i2v"]), latent, pos, neg, cfg=3.0)
    mine = ksampler(comfy, ours(wan_files["i2v"]), latent, pos, neg, cfg=3.0)
    assert float((mine - theirs).abs().max()) <= SAMPLE_TOL


def test_wan22_ti2v_with_a_first_frame_mask_equals_comfyui_model_and_jax_sampler(comfy, wan_files):
    """WAN22 turns a latent noise mask into per-frame timesteps (Wan22ImageToVideoLatent's first frame
    kept); our model receives them per frame and spreads them over the frame's tokens."""
    g = torch.Generator().manual_seed(3)
    latent = torch.randn(1, 48, 3, 8, 12, generator=g)
    mask = torch.ones(1, 1, 3, 8, 12)
    mask[:, :, 0] = 0.0
    pos, neg = conditioning(512, 32, None, 1), conditioning(512, 32, None, 2)
    theirs = ksampler(comfy, comfy_own_model(comfy, wan_files["ti2v"]), latent, pos, neg, cfg=3.0,
                      noise_mask=mask)
    mine = ksampler(comfy, ours(wan_files["ti2v"]), latent, pos, neg, cfg=3.0, noise_mask=mask)
    assert mine.shape == (1, 48, 3, 8, 12)
    assert float((mine - theirs).abs().max()) <= SAMPLE_TOL
    from jaxdiff.comfy_nodes.sampler import sample

    jax_out = sample(ours(wan_files["ti2v"]), 7, 3, 3.0, -1.0, 0.0, "euler", pos, neg,
                     {"samples": latent, "noise_mask": mask})["samples"]
    assert float((jax_out - mine).abs().max()) <= SAMPLE_TOL


@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_wan_jax_sampler_equals_core_ksampler(comfy, wan_files, sampler):
    from jaxdiff.comfy_nodes.sampler import sample

    model = ours(wan_files["t2v"])
    latent = torch.zeros(WAN_LATENT)
    pos, neg = conditioning(512, 32, None, 1), conditioning(512, 32, None, 2)
    out = sample(model, 7, 4, 4.0, -1.0, 0.0, sampler, pos, neg, {"samples": latent})["samples"]
    if sampler == "euler":
        reference = ksampler(comfy, model, latent, pos, neg, cfg=4.0, steps=4)
        assert float((out - reference).abs().max()) <= SAMPLE_TOL
    else:  # flow UniPC: a different solver over the same sigmas; close to Euler, not equal
        euler = sample(model, 7, 4, 4.0, -1.0, 0.0, "euler", pos, neg, {"samples": latent})["samples"]
        assert torch.isfinite(out).all() and float((out - euler).abs().max()) > 0


def test_wan22_a14b_pair_equals_two_core_ksampler_advanced(comfy, wan_files):
    """model_2 takes over once sigma < boundary, as the two-KSamplerAdvanced split does."""
    import comfy.samplers as samplers

    from jaxdiff.comfy_nodes.sampler import model_sampling, sample

    high, low = ours(wan_files["t2v"]), ours(wan_files["t2v_b"])
    steps, boundary = 6, 0.875
    sigmas = samplers.calculate_sigmas(model_sampling(high, 0.0), "simple", steps)
    switch = int(sum(float(s) >= boundary for s in sigmas[:-1]))
    assert 0 < switch < steps
    latent = torch.zeros(WAN_LATENT)
    pos, neg = conditioning(512, 32, None, 1), conditioning(512, 32, None, 2)
    first = ksampler(comfy, high, latent, pos, neg, cfg=3.0, steps=steps, last_step=switch)
    noise = torch.zeros(WAN_LATENT)
    import comfy.sample as csample

    second = csample.sample(low, noise, steps, 3.0, "euler", "simple", pos, neg, first, start_step=switch,
                            disable_noise=True, force_full_denoise=True, seed=7)
    out = sample(high, 7, steps, 3.0, -1.0, 0.0, "euler", pos, neg, {"samples": latent}, model_2=low,
                 boundary=boundary)["samples"]
    assert float((out - second).abs().max()) <= SAMPLE_TOL


def test_wan_wrong_text_width_is_refused(comfy, wan_files):
    from jaxdiff.comfy_nodes.sampler import sample

    pos = conditioning(512, 4096, None, 1)
    with pytest.raises(ValueError, match="text width is 32"):
        sample(ours(wan_files["t2v"]), 1, 2, 1.0, -1.0, 0.0, "euler", pos, pos,
               {"samples": torch.zeros(WAN_LATENT)})


# ----------------------------------------------------------------------------- VAEs


@pytest.fixture(scope="module")
def vae_files(comfy, tmp_path_factory):
    from safetensors.torch import save_file

    import comfy_fixtures as cf
    from wan_comfy_fixtures import tiny_comfy_wan_vae

    root = tmp_path_factory.mktemp("vae")
    out = {}
    for name, model in (("flux", cf.tiny_comfy_vae(comfy.root, "flux")), ("wan", tiny_comfy_wan_vae(comfy.root, z_dim=16))):
        path = root / f"{name}_vae.safetensors"
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(path))
        out[name] = (str(path), model)
    return out


def _jax_vae(path):
    from jaxdiff.comfy_nodes import loading

    return loading.load_vae(path)


def test_flux_vae_decode_and_encode_match_comfyui(comfy, vae_files):
    path, module = vae_files["flux"]
    vae = _jax_vae(path)
    z = torch.randn(2, 16, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = torch.clamp((module.decode(z) + 1.0) / 2.0, 0.0, 1.0).movedim(1, -1)
    images = vae.decode(z)
    assert images.shape == (2, 8, 12, 3) and float((images - ref).abs().max()) <= FORWARD_TOL * 10
    with torch.no_grad():
        ref_z = module.encode(images.movedim(-1, 1) * 2.0 - 1.0)
    ref_z = ref_z[0] if isinstance(ref_z, tuple) else ref_z
    assert float((vae.encode(images) - ref_z).abs().max()) <= FORWARD_TOL * 10


def test_wan_vae_through_core_wan_image_to_video(comfy, vae_files):
    path, module = vae_files["wan"]
    vae = _jax_vae(path)
    frames = torch.rand(5, 32, 48, 3, generator=torch.Generator().manual_seed(1))
    latent = vae.encode(frames)
    assert latent.shape == (1, 16, 2, 4, 6)
    video = vae.decode(latent)
    assert video.shape == (1, 5, 32, 48, 3) and 0.0 <= float(video.min()) and float(video.max()) <= 1.0
    with pytest.raises(ValueError, match="4k\\+1 frames.*got 6"):
        vae.encode(torch.rand(6, 32, 48, 3))


def test_vae_of_the_wrong_channels_is_refused(comfy, vae_files):
    vae = _jax_vae(vae_files["flux"][0])
    with pytest.raises(ValueError, match="16 channels"):
        vae.decode(torch.zeros(1, 48, 4, 4))


# ----------------------------------------------------------------------------- without jax

NO_JAX = r"""
import importlib.abc, importlib.machinery, sys
class Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):  # as if jax were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("jax", "jaxlib", "flax", "orbax"):
            return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
import comfy.cli_args; comfy.cli_args.args.cpu = True
import importlib.util
spec = importlib.util.spec_from_file_location("pack", sys.argv[3] + "/__init__.py",
                                              submodule_search_locations=[sys.argv[3]])
pack = importlib.util.module_from_spec(spec); sys.modules["pack"] = pack; spec.loader.exec_module(pack)
nodes = pack.NODE_CLASS_MAPPINGS
print(sorted(nodes))
nodes["JaxVAELoader"].INPUT_TYPES()
try:
    nodes["JaxVAELoader"]().load("x.safetensors")
except ImportError as e:
    print("ERR", type(e).__name__, e)
"""


def test_pack_loads_without_jax_and_says_what_to_install(comfy, tmp_path):
    """ComfyUI loads the pack the way it loads every custom node (a module from the folder's
    __init__.py); with jax missing the nodes are still listed and running one names the install."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "no_jax.py"
    script.write_text(NO_JAX)
    done = subprocess.run([sys.executable, str(script), str(comfy.root), str(repo / "tests"), str(repo)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("['JaxCLIPLoader', 'JaxCLIPVisionLoader', 'JaxDiffusionModelLoader', 'JaxDualCLIPLoader', "
            "'JaxSampler', 'JaxVAELoader']") in done.stdout
    assert "ERR ImportError jaxdiff needs JAX" in done.stdout and "pip install" in done.stdout, done.stdout
