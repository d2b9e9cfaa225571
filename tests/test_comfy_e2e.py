"""The node pack in a real ComfyUI server: API-format workflows through /prompt, /ws and /history.

One server per module (tests/comfy_server.py) with tiny Flux / Wan models and VAEs written in ComfyUI's
single-file layouts into its models/ folders. Core text encoders are replaced by the test-only pack
(tests/comfy_test_nodes: TinyConditioning, TinyClipVisionOutput, TinyImage, TinyLatent), because core
ComfyUI hard-codes XXL T5/UMT5 sizes; ours (JaxDualCLIPLoader, JaxCLIPLoader, JaxCLIPVisionLoader) run
on tiny encoder files (tests/text_fixtures.py) in models/text_encoders and models/clip_vision. Run: `pytest -m comfy_e2e tests/test_comfy_e2e.py`
(ComfyUI is set up in $JAXDIFF_COMFYUI or /tmp/jaxdiff-comfyui on first use).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
import zlib
from pathlib import Path

import pytest

from comfy_server import (CLIP_VISION_WIDTH, FLUX_POOLED_WIDTH, FLUX_TEXT_WIDTH, REPO, WAN_TEXT_WIDTH,
                          ComfyServer, Result, check_video_file, ensure_comfyui, png_size, read_png,
                          read_video,
                          write_junk_safetensors, write_tiny_flux, write_tiny_flux_vae, write_tiny_wan,
                          write_tiny_wan22_vae, write_tiny_wan_vae)

pytestmark = pytest.mark.comfy_e2e

OUR_NODES = ("JaxDiffusionModelLoader", "JaxVAELoader", "JaxSampler", "JaxCLIPLoader", "JaxDualCLIPLoader",
             "JaxCLIPVisionLoader")
NODE_INPUTS = {
    "JaxDiffusionModelLoader": ("unet_name", "weight_dtype", "mesh", "attention"),
    "JaxVAELoader": ("vae_name",),
    "JaxCLIPLoader": ("clip_name", "type", "weight_dtype", "mesh"),
    "JaxDualCLIPLoader": ("clip_name1", "clip_name2", "type", "weight_dtype", "mesh"),
    "JaxCLIPVisionLoader": ("clip_name",),
    "JaxSampler": ("model", "positive", "negative", "latent_image", "seed", "steps", "cfg", "guidance",
                   "shift", "sampler_name", "denoise"),
}
JAX_SAMPLER_OPTIONAL = ("model_2", "boundary")

# model files (names as the loaders list them); written before the server starts
P = "jaxdiff_e2e_"
FLUX = P + "flux.safetensors"
WAN_T2V = P + "wan21_t2v.safetensors"
WAN_T2V_LOW = P + "wan22_a14b_low.safetensors"  # second expert of the two-stage Wan 2.2 A14B
WAN_I2V = P + "wan21_i2v.safetensors"
WAN_TI2V = P + "wan22_ti2v.safetensors"
JUNK = P + "junk.safetensors"
FLUX_VAE = P + "flux_ae.safetensors"
WAN_VAE = P + "wan21_vae.safetensors"
WAN22_VAE = P + "wan22_vae.safetensors"
CLIP_L = P + "clip_l.safetensors"  # tiny text / image encoders (tests/text_fixtures.py), widths fitting the
T5XXL = P + "t5xxl.safetensors"  # tiny Flux (T5 32, CLIP-L pooled 64) and Wan (UMT5 32, CLIP vision 1280)
UMT5 = P + "umt5_xxl.safetensors"
CLIP_VISION = P + "clip_vision_h.safetensors"
FLUX_JAX = P + "flux_converted"  # `jaxdiff convert` outputs in models/jax_checkpoints
FLUX_VAE_JAX = P + "flux_ae_converted"
IMAGE_SIDE = 32  # px; latents 4×4 (Flux / Wan 2.1, 8× VAEs) or 2×2 (Wan 2.2, 16×)
FRAMES = 5  # 4k+1 → 2 latent frames
RUN_TIMEOUT = 300


def write_models(models: Path) -> None:
    dm, vae = models / "diffusion_models", models / "vae"
    write_tiny_flux(dm / FLUX)
    write_tiny_wan(dm / WAN_T2V, "t2v", seed=0)
    write_tiny_wan(dm / WAN_T2V_LOW, "t2v", seed=1)
    write_tiny_wan(dm / WAN_I2V, "i2v")
    write_tiny_wan(dm / WAN_TI2V, "ti2v")
    write_junk_safetensors(dm / JUNK)
    write_tiny_flux_vae(vae / FLUX_VAE)
    write_tiny_wan_vae(vae / WAN_VAE)
    write_tiny_wan22_vae(vae / WAN22_VAE)
    import text_fixtures as tf

    te = models / "text_encoders"
    tf.write_clip_l(te / CLIP_L)
    tf.write_t5xxl(te / T5XXL)
    tf.write_umt5(te / UMT5)
    tf.write_clip_vision_h(models / "clip_vision" / CLIP_VISION)
    from jaxdiff.convert import convert

    convert(dm / FLUX, models / "jax_checkpoints" / FLUX_JAX, overwrite=True)
    convert(vae / FLUX_VAE, models / "jax_checkpoints" / FLUX_VAE_JAX, overwrite=True)


@pytest.fixture(scope="module")
def comfy():
    """The module's ComfyUI server (fails, never skips, when ComfyUI cannot be set up)."""
    t0 = time.monotonic()
    root = ensure_comfyui()
    write_models(root / "models")
    with ComfyServer(root) as server:
        print(f"\n[comfy_e2e] set-up {time.monotonic() - t0:.1f} s (server up in {server.startup_s:.1f} s, "
              f"pid {server.pid}, port {server.port})")
        yield server


# ----------------------------------------------------------------------------- workflow building


class Graph:
    """An API-format workflow: `add(class_type, **inputs)` → node id; `out(node, i)` is a link."""

    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def add(self, class_type: str, **inputs) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    @staticmethod
    def out(node_id: str, index: int = 0) -> list:
        return [node_id, index]

    def find(self, class_type: str) -> str:
        return next(k for k, v in self.nodes.items() if v["class_type"] == class_type)


def prefix(tag: str) -> str:
    """A fresh filename prefix (identical prompts are served from cache and write nothing)."""
    return f"e2e_{tag}_{uuid.uuid4().hex[:8]}"


def model_loader(g: Graph, name: str, **kw) -> str:
    return g.add("JaxDiffusionModelLoader", unet_name=name, weight_dtype=kw.get("weight_dtype", "default"),
                 mesh=kw.get("mesh", ""), attention=kw.get("attention", "auto"))


def conditioning(g: Graph, seed: int, width: int, pooled: int = 0, guidance: float = -1.0) -> str:
    return g.add("TinyConditioning", width=width, tokens=8, pooled_width=pooled, seed=seed, batch=1,
                 guidance=guidance)


def ksampler(g: Graph, model, pos, neg, latent, seed: int, steps: int = 2, cfg: float = 1.0,
             denoise: float = 1.0) -> str:
    return g.add("KSampler", model=model, seed=seed, steps=steps, cfg=cfg, sampler_name="euler",
                 scheduler="simple", positive=pos, negative=neg, latent_image=latent, denoise=denoise)


def jax_sampler(g: Graph, model, pos, neg, latent, seed: int, steps: int = 2, cfg: float = 1.0,
                sampler: str = "euler", **optional) -> str:
    return g.add("JaxSampler", model=model, positive=pos, negative=neg, latent_image=latent, seed=seed,
                 steps=steps, cfg=cfg, guidance=3.5, shift=0.0, sampler_name=sampler, denoise=1.0,
                 **optional)


def flux_t2i(seed: int = 0, sampler: str = "ksampler", *, unet: str = FLUX, vae: str = FLUX_VAE,
             mesh: str = "", cond_width: int = FLUX_TEXT_WIDTH, latent=None, steps: int = 2,
             side: int = IMAGE_SIDE) -> dict:
    """Flux text-to-image: our loaders + KSampler (euler/simple, cfg 1) or JaxSampler → VAEDecode → SaveImage.
    `latent`: a (class_type, inputs) pair replacing EmptySD3LatentImage."""
    g = Graph()
    model = model_loader(g, unet, mesh=mesh)
    vae_id = g.add("JaxVAELoader", vae_name=vae)
    pos = conditioning(g, seed, cond_width, FLUX_POOLED_WIDTH, guidance=3.5)
    neg = conditioning(g, seed + 1, cond_width, FLUX_POOLED_WIDTH, guidance=3.5)
    lat = (g.add(latent[0], **latent[1]) if latent else
           g.add("EmptySD3LatentImage", width=side, height=side, batch_size=1))
    args = (g.out(model), g.out(pos), g.out(neg), g.out(lat), seed)
    s = ksampler(g, *args, steps=steps) if sampler == "ksampler" else jax_sampler(g, *args, steps=steps)
    image = g.add("VAEDecode", samples=g.out(s), vae=g.out(vae_id))
    g.add("SaveImage", images=g.out(image), filename_prefix=prefix(f"flux_{sampler}"))
    return g.nodes


def save_video(g: Graph, image: str, tag: str, info: dict) -> str:
    if "SaveWEBM" in info:
        return g.add("SaveWEBM", images=g.out(image), filename_prefix=prefix(tag), codec="vp9", fps=8.0,
                     crf=32.0)
    return g.add("SaveAnimatedWEBP", images=g.out(image), filename_prefix=prefix(tag), fps=8.0,
                 lossless=False, quality=80, method="default")


def wan_t2v(info: dict, seed: int = 0, sampler: str = "ksampler", *, unet: str = WAN_T2V,
            vae: str = WAN_VAE, cond_width: int = WAN_TEXT_WIDTH, latent_id=None, g: Graph | None = None,
            cfg: float = 2.0, jax_kwargs=None) -> dict:
    """Wan 2.1 T2V: loader → ModelSamplingSD3 (shift 8) → KSampler over EmptyHunyuanLatentVideo →
    VAEDecode → SaveWEBM (or JaxSampler on the loader's MODEL)."""
    g = g or Graph()
    model = model_loader(g, unet)
    vae_id = g.add("JaxVAELoader", vae_name=vae)
    pos = conditioning(g, seed, cond_width)
    neg = conditioning(g, seed + 1, cond_width)
    lat = latent_id or g.add("EmptyHunyuanLatentVideo", width=IMAGE_SIDE, height=IMAGE_SIDE, length=FRAMES,
                             batch_size=1)
    if sampler == "ksampler":
        shifted = g.add("ModelSamplingSD3", model=g.out(model), shift=8.0)
        s = ksampler(g, g.out(shifted), g.out(pos), g.out(neg), g.out(lat), seed, cfg=cfg)
    else:
        s = jax_sampler(g, g.out(model), g.out(pos), g.out(neg), g.out(lat), seed, cfg=cfg,
                        sampler=sampler, **(jax_kwargs or {}))
    image = g.add("VAEDecode", samples=g.out(s), vae=g.out(vae_id))
    save_video(g, image, f"wan_t2v_{sampler}", info)
    return g.nodes


def wan_i2v(info: dict, seed: int = 0) -> dict:
    """Wan 2.1 I2V through core WanImageToVideo (start image + CLIP-vision output)."""
    g = Graph()
    model = model_loader(g, WAN_I2V)
    vae_id = g.add("JaxVAELoader", vae_name=WAN_VAE)
    pos = conditioning(g, seed, WAN_TEXT_WIDTH)
    neg = conditioning(g, seed + 1, WAN_TEXT_WIDTH)
    clip = g.add("TinyClipVisionOutput", tokens=257, width=CLIP_VISION_WIDTH, seed=seed)
    start = g.add("TinyImage", size=IMAGE_SIDE, frames=1, seed=seed)
    i2v = g.add("WanImageToVideo", positive=g.out(pos), negative=g.out(neg), vae=g.out(vae_id),
                width=IMAGE_SIDE, height=IMAGE_SIDE, length=FRAMES, batch_size=1,
                clip_vision_output=g.out(clip), start_image=g.out(start))
    shifted = g.add("ModelSamplingSD3", model=g.out(model), shift=8.0)
    s = ksampler(g, g.out(shifted), g.out(i2v, 0), g.out(i2v, 1), g.out(i2v, 2), seed, cfg=2.0)
    image = g.add("VAEDecode", samples=g.out(s), vae=g.out(vae_id))
    save_video(g, image, "wan_i2v", info)
    return g.nodes


def wan22_a14b(info: dict, seed: int = 0, steps: int = 4, switch: int = 2) -> dict:
    """Wan 2.2 A14B two-stage: high-noise expert for steps [0, switch), low-noise for [switch, steps)."""
    g = Graph()
    high = g.add("ModelSamplingSD3", model=g.out(model_loader(g, WAN_T2V)), shift=8.0)
    low = g.add("ModelSamplingSD3", model=g.out(model_loader(g, WAN_T2V_LOW)), shift=8.0)
    vae_id = g.add("JaxVAELoader", vae_name=WAN_VAE)
    pos = g.out(conditioning(g, seed, WAN_TEXT_WIDTH))
    neg = g.out(conditioning(g, seed + 1, WAN_TEXT_WIDTH))
    lat = g.add("EmptyHunyuanLatentVideo", width=IMAGE_SIDE, height=IMAGE_SIDE, length=FRAMES, batch_size=1)
    common = dict(noise_seed=seed, steps=steps, cfg=2.0, sampler_name="euler", scheduler="simple",
                  positive=pos, negative=neg)
    first = g.add("KSamplerAdvanced", model=g.out(high), add_noise="enable", latent_image=g.out(lat),
                  start_at_step=0, end_at_step=switch, return_with_leftover_noise="enable", **common)
    second = g.add("KSamplerAdvanced", model=g.out(low), add_noise="disable", latent_image=g.out(first),
                   start_at_step=switch, end_at_step=10000, return_with_leftover_noise="disable", **common)
    image = g.add("VAEDecode", samples=g.out(second), vae=g.out(vae_id))
    save_video(g, image, "wan22_a14b", info)
    return g.nodes


def wan22_ti2v(info: dict, seed: int = 0) -> dict:
    """Wan 2.2 TI2V-5B: core Wan22ImageToVideoLatent (48-channel latent, 16× VAE) with a start image."""
    g = Graph()
    model = model_loader(g, WAN_TI2V)
    vae_id = g.add("JaxVAELoader", vae_name=WAN22_VAE)
    pos = conditioning(g, seed, WAN_TEXT_WIDTH)
    neg = conditioning(g, seed + 1, WAN_TEXT_WIDTH)
    start = g.add("TinyImage", size=IMAGE_SIDE, frames=1, seed=seed)
    lat = g.add("Wan22ImageToVideoLatent", vae=g.out(vae_id), width=IMAGE_SIDE, height=IMAGE_SIDE,
                length=FRAMES, batch_size=1, start_image=g.out(start))
    s = ksampler(g, g.out(model), g.out(pos), g.out(neg), g.out(lat), seed, cfg=2.0)
    image = g.add("VAEDecode", samples=g.out(s), vae=g.out(vae_id))
    save_video(g, image, "wan22_ti2v", info)
    return g.nodes


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def core_info(comfy):
    return comfy.object_info()


def run_ok(comfy: ComfyServer, workflow: dict, timeout: float = RUN_TIMEOUT) -> Result:
    result = comfy.run(workflow, timeout=timeout).check()
    print(f"  {result.elapsed:.1f} s, files {[f.name for f in result.files]}")
    assert result.files, f"no output files: {result.outputs}"
    return result


def check_png(result: Result, side: int = IMAGE_SIDE) -> None:
    """Every output is a side × side PNG that is not one flat colour (NaNs save as black)."""
    for f in result.files:
        assert f.is_file() and png_size(f) == (side, side), (f, png_size(f))
        assert read_png(f).std() > 0, f"{f} is a single flat colour"


def check_video(result: Result, info: dict, frames: int = FRAMES, side: int = IMAGE_SIDE) -> None:
    """Every output is a WebM (or animated WebP without SaveWEBM) of `frames` side × side frames."""
    want = "webm" if "SaveWEBM" in info else "webp"
    assert [check_video_file(f) for f in result.files] == [want] * len(result.files)
    for f in result.files:
        video = read_video(f)
        assert video.shape == (frames, side, side, 3), (f, video.shape)
        assert video.std() > 0, f"{f} is a single flat colour"


_good_seed = iter(range(1000, 10**6))


def assert_still_works(comfy: ComfyServer) -> None:
    """After a failed prompt the server still runs a good one."""
    check_png(run_ok(comfy, flux_t2i(seed=next(_good_seed))))


def assert_error(result: Result, *, node_type=None, any_of=(), all_of=()) -> str:
    """`result` failed with an execution_error whose message names the problem; returns the message."""
    assert result.status == "error" and result.error, result.describe()
    msg = result.exception_message
    print(f"  {result.error.get('node_type')}: {result.error.get('exception_type')}: {msg[:300]}")
    if node_type is not None:
        types = (node_type,) if isinstance(node_type, str) else node_type
        assert result.error.get("node_type") in types, result.describe()
    low = msg.lower()
    assert all(w.lower() in low for w in all_of), f"message lacks {all_of}: {msg}"
    assert not any_of or any(w.lower() in low for w in any_of), f"message names none of {any_of}: {msg}"
    return msg


def combo_options(spec) -> list:
    """The options of a combo input in /object_info (V1 `[[...], {}]` or V3 `["COMBO", {"options": ...}]`)."""
    if isinstance(spec[0], list):
        return spec[0]
    return (spec[1] if len(spec) > 1 else {}).get("options", [])


# ----------------------------------------------------------------------------- the harness itself


def test_server_runs_core_workflow(comfy):
    """Harness self-test: the test pack's TinyImage → core SaveImage through /prompt, /ws, /history."""
    wf = {"1": {"class_type": "TinyImage", "inputs": {"size": 24, "frames": 2, "seed": 3}},
          "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix("core")}}}
    result = run_ok(comfy, wf, timeout=60)
    assert len(result.files) == 2 and all(png_size(f) == (24, 24) for f in result.files)
    assert "execution_start" in result.message_types and "execution_success" in result.message_types
    rejected = comfy.run({"1": {"class_type": "TinyImage", "inputs": {"size": "big"}}})
    assert rejected.status == "rejected" and "error" in rejected.body, rejected.describe()
    assert comfy.rss() > 0 and comfy.alive


# ----------------------------------------------------------------------------- registration


def test_object_info_lists_our_nodes(comfy, core_info):
    for name in OUR_NODES:
        assert name in core_info, f"{name} not registered; server log:\n{comfy.log_tail(40)}"
        info = core_info[name]
        assert info["category"] == "jaxdiff", (name, info["category"])
        assert info.get("description"), f"{name} has no DESCRIPTION"
        declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        assert set(NODE_INPUTS[name]) <= set(declared), (name, sorted(declared))
    assert set(JAX_SAMPLER_OPTIONAL) <= set(core_info["JaxSampler"]["input"].get("optional", {}))
    assert core_info["JaxDiffusionModelLoader"]["output"] == ["MODEL"]
    assert core_info["JaxVAELoader"]["output"] == ["VAE"]
    assert core_info["JaxSampler"]["output"] == ["LATENT"]
    required = core_info["JaxDiffusionModelLoader"]["input"]["required"]
    assert {FLUX, WAN_T2V, WAN_I2V, WAN_TI2V} <= set(combo_options(required["unet_name"]))
    assert {"default", "bf16", "fp32"} <= set(combo_options(required["weight_dtype"]))
    assert {"auto", "xla", "cudnn", "splash"} <= set(combo_options(required["attention"]))
    vae_names = combo_options(core_info["JaxVAELoader"]["input"]["required"]["vae_name"])
    assert {FLUX_VAE, WAN_VAE, WAN22_VAE} <= set(vae_names)
    samplers = combo_options(core_info["JaxSampler"]["input"]["required"]["sampler_name"])
    assert {"euler", "unipc"} <= set(samplers)
    for name, node in (("clip_name1", "JaxDualCLIPLoader"), ("clip_name", "JaxCLIPLoader")):
        assert {CLIP_L, T5XXL, UMT5} <= set(combo_options(core_info[node]["input"]["required"][name])), node
    assert CLIP_VISION in combo_options(core_info["JaxCLIPVisionLoader"]["input"]["required"]["clip_name"])
    assert [core_info[n]["output"] for n in ("JaxCLIPLoader", "JaxDualCLIPLoader", "JaxCLIPVisionLoader")] == [
        ["CLIP"], ["CLIP"], ["CLIP_VISION"]]


# ----------------------------------------------------------------------------- workflows


def test_flux_t2i_core_ksampler(comfy):
    check_png(run_ok(comfy, flux_t2i(seed=1)))


def test_flux_t2i_jax_sampler(comfy):
    check_png(run_ok(comfy, flux_t2i(seed=2, sampler="jax")))


def test_converted_jax_checkpoints_load(comfy, core_info):
    """Checkpoints converted with `jaxdiff convert` into models/jax_checkpoints, through both loaders."""
    def option(node: str, key: str, name: str) -> str:
        options = combo_options(core_info[node]["input"]["required"][key])
        found = [o for o in options if Path(o).name == name or Path(o).parent.name == name]
        assert found, f"{name} not among {node}.{key} options {options}"
        return found[0]

    unet = option("JaxDiffusionModelLoader", "unet_name", FLUX_JAX)
    vae = option("JaxVAELoader", "vae_name", FLUX_VAE_JAX)
    check_png(run_ok(comfy, flux_t2i(seed=4, unet=unet, vae=vae)))


def test_flux_img2img_vae_encode_and_tiled_decode(comfy):
    """TinyImage → VAEEncode → KSampler (denoise 0.5) → VAEDecodeTiled (core tiling over our VAE)."""
    side = 64
    g = Graph()
    model = model_loader(g, FLUX)
    vae_id = g.add("JaxVAELoader", vae_name=FLUX_VAE)
    pos = conditioning(g, 5, FLUX_TEXT_WIDTH, FLUX_POOLED_WIDTH, guidance=3.5)
    neg = conditioning(g, 6, FLUX_TEXT_WIDTH, FLUX_POOLED_WIDTH, guidance=3.5)
    image = g.add("TinyImage", size=side, frames=1, seed=5)
    lat = g.add("VAEEncode", pixels=g.out(image), vae=g.out(vae_id))
    s = ksampler(g, g.out(model), g.out(pos), g.out(neg), g.out(lat), 5, steps=2, denoise=0.5)
    out = g.add("VAEDecodeTiled", samples=g.out(s), vae=g.out(vae_id), tile_size=64, overlap=0,
                temporal_size=64, temporal_overlap=8)
    g.add("SaveImage", images=g.out(out), filename_prefix=prefix("flux_img2img"))
    check_png(run_ok(comfy, g.nodes), side)


def test_wan21_t2v_core_ksampler(comfy, core_info):
    check_video(run_ok(comfy, wan_t2v(core_info, seed=1)), core_info)


def test_wan21_t2v_jax_sampler_unipc(comfy, core_info):
    check_video(run_ok(comfy, wan_t2v(core_info, seed=2, sampler="unipc")), core_info)


def test_wan21_i2v_core_wan_image_to_video(comfy, core_info):
    check_video(run_ok(comfy, wan_i2v(core_info, seed=1)), core_info)


def test_wan22_a14b_two_stage_ksampler_advanced(comfy, core_info):
    check_video(run_ok(comfy, wan22_a14b(core_info, seed=1)), core_info)


def test_wan22_a14b_jax_sampler_model_2(comfy, core_info):
    """JaxSampler's own two-expert switch (model_2 below `boundary`)."""
    g = Graph()
    low = model_loader(g, WAN_T2V_LOW)
    wf = wan_t2v(core_info, seed=3, sampler="euler", g=g,
                 jax_kwargs={"model_2": Graph.out(low), "boundary": 0.875})
    check_video(run_ok(comfy, wf), core_info)


def test_wan22_ti2v_core_latent(comfy, core_info):
    check_video(run_ok(comfy, wan22_ti2v(core_info, seed=1)), core_info)


# ----------------------------------------------------------------------------- example workflows


EXAMPLES = sorted((REPO / "example_workflows").glob("*_api.json"))
TEXT_ENCODER_LOADERS = {"DualCLIPLoader", "CLIPLoader", "TripleCLIPLoader", "CLIPVisionLoader"}
JAX_ENCODER_LOADERS = {  # ours: kept, their files → the tiny encoders
    "JaxDualCLIPLoader": dict(clip_name1=CLIP_L, clip_name2=T5XXL),
    "JaxCLIPLoader": dict(clip_name=UMT5),
    "JaxCLIPVisionLoader": dict(clip_name=CLIP_VISION),
}


def example_family(name: str, workflow: dict) -> str:
    """flux / i2v / ti2v / t2v from the file name and the model names in it."""
    text = (name + " " + json.dumps([n.get("inputs", {}).get("unet_name", "") for n in workflow.values()])).lower()
    if "flux" in text:
        return "flux"
    if "ti2v" in text or "5b" in text:
        return "ti2v"
    if "i2v" in text or "image_to_video" in text or "imagetovideo" in text:
        return "i2v"
    return "t2v"


def scale_example(workflow: dict, family: str) -> dict:
    """An example workflow made tiny: core text / CLIP-vision encoders → Tiny* nodes (ours, the Jax*CLIP*
    loaders, are kept and their encode nodes too, on the tiny encoder files), model and VAE names → the tiny files, sizes → 32 px × 5 frames, steps → 2 (KSamplerAdvanced: 4, switching at the same
    fraction), LoadImage → TinyImage, filename prefixes made unique."""
    wf = copy.deepcopy(workflow)
    width = FLUX_TEXT_WIDTH if family == "flux" else WAN_TEXT_WIDTH
    unets = {"flux": [FLUX], "t2v": [WAN_T2V, WAN_T2V_LOW], "i2v": [WAN_I2V], "ti2v": [WAN_TI2V]}[family]
    vae = {"flux": FLUX_VAE, "ti2v": WAN22_VAE}.get(family, WAN_VAE)
    removed, loaders = set(), 0
    jax_encoders = {k for k, v in wf.items() if v["class_type"] in JAX_ENCODER_LOADERS}

    def on_jax_encoder(inputs, key):
        return isinstance(inputs.get(key), list) and inputs[key][0] in jax_encoders

    for node_id, node in sorted(wf.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
        ct, inputs = node["class_type"], node.setdefault("inputs", {})
        seed = zlib.crc32(node_id.encode()) % 1000
        if ct in TEXT_ENCODER_LOADERS:
            removed.add(node_id)
        elif ct in JAX_ENCODER_LOADERS:
            inputs.update(JAX_ENCODER_LOADERS[ct])
        elif ct in ("CLIPTextEncode", "CLIPTextEncodeFlux", "CLIPTextEncodeSD3", "CLIPVisionEncode") and (
                on_jax_encoder(inputs, "clip") or on_jax_encoder(inputs, "clip_vision")):
            pass  # runs as is on our tiny encoders
        elif ct in ("CLIPTextEncode", "CLIPTextEncodeFlux", "CLIPTextEncodeSD3"):
            g = float(inputs.get("guidance", -1.0)) if ct == "CLIPTextEncodeFlux" else -1.0
            wf[node_id] = {"class_type": "TinyConditioning", "inputs": dict(
                width=width, tokens=8, pooled_width=FLUX_POOLED_WIDTH if family == "flux" else 0,
                seed=seed, batch=1, guidance=g)}
        elif ct == "CLIPVisionEncode":
            wf[node_id] = {"class_type": "TinyClipVisionOutput",
                           "inputs": dict(tokens=257, width=CLIP_VISION_WIDTH, seed=seed)}
        elif ct in ("LoadImage", "LoadImageMask"):
            wf[node_id] = {"class_type": "TinyImage", "inputs": dict(size=IMAGE_SIDE, frames=1, seed=seed)}
        elif ct in ("JaxDiffusionModelLoader", "UNETLoader"):
            wf[node_id] = {"class_type": "JaxDiffusionModelLoader", "inputs": dict(
                unet_name=unets[min(loaders, len(unets) - 1)], weight_dtype="default",
                mesh="", attention="auto")}
            loaders += 1
        elif ct in ("JaxVAELoader", "VAELoader"):
            wf[node_id] = {"class_type": "JaxVAELoader", "inputs": dict(vae_name=vae)}
        else:
            for key in ("width", "height"):
                if key in inputs and not isinstance(inputs[key], list):
                    inputs[key] = IMAGE_SIDE
            if "length" in inputs and not isinstance(inputs["length"], list):
                inputs["length"] = FRAMES
            if "batch_size" in inputs and not isinstance(inputs["batch_size"], list):
                inputs["batch_size"] = 1
            if ct == "KSamplerAdvanced":
                old = max(int(inputs.get("steps", 20)), 1)
                for key in ("start_at_step", "end_at_step"):
                    if key in inputs and not isinstance(inputs[key], list):
                        step = int(inputs[key])
                        inputs[key] = 10000 if step >= old else round(step * 4 / old)
                inputs["steps"] = 4
            elif "steps" in inputs and not isinstance(inputs["steps"], list):
                inputs["steps"] = 2
            if "filename_prefix" in inputs:
                inputs["filename_prefix"] = prefix("example")
    for node_id in removed:
        del wf[node_id]
    for node_id, node in wf.items():
        for key, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and value[0] in removed:
                raise ValueError(f"node {node_id} ({node['class_type']}).{key} still links to removed "
                                 f"text-encoder node {value[0]}")
    return wf


def test_scale_example_workflow():
    """The example scaler on a made-up Flux example (no server needed)."""
    example = {
        "1": {"class_type": "JaxDiffusionModelLoader", "inputs": {"unet_name": "flux1-dev.safetensors",
                                                                  "weight_dtype": "bf16", "mesh": "", "attention": "auto"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "t5xxl.safetensors",
                                                         "clip_name2": "clip_l.safetensors", "type": "flux"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a cat"}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["3", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "steps": 20, "seed": 0}},
        "6": {"class_type": "JaxVAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "flux"}},
    }
    family = example_family("flux_t2i_api.json", example)
    scaled = scale_example(example, family)
    assert family == "flux" and "2" not in scaled
    assert scaled["3"]["class_type"] == "TinyConditioning" and scaled["3"]["inputs"]["width"] == FLUX_TEXT_WIDTH
    assert scaled["1"]["inputs"]["unet_name"] == FLUX and scaled["6"]["inputs"]["vae_name"] == FLUX_VAE
    assert scaled["4"]["inputs"]["width"] == IMAGE_SIDE and scaled["5"]["inputs"]["steps"] == 2
    assert scaled["7"]["inputs"]["filename_prefix"].startswith("e2e_example_")


@pytest.mark.parametrize("name", ["flux_dev_t2i_all_jax", "wan21_t2v_all_jax", "wan21_i2v_all_jax"])
def test_all_jax_examples_keep_their_encoders_when_scaled(name):
    """The whole-JAX examples run as they are, their encoder loaders pointed at the tiny encoder files
    (no Tiny* stand-ins; no server needed)."""
    workflow = json.loads((REPO / "example_workflows" / f"{name}_api.json").read_text())
    scaled = scale_example(workflow, example_family(name, workflow))
    types = {n["class_type"] for n in scaled.values()}
    assert not types & {"TinyConditioning", "TinyClipVisionOutput"} and "CLIPTextEncode" in types
    assert types & set(JAX_ENCODER_LOADERS) and not types & TEXT_ENCODER_LOADERS
    names = {v for n in scaled.values() for k, v in n["inputs"].items() if k.startswith("clip_name")}
    assert names <= {CLIP_L, T5XXL, UMT5, CLIP_VISION} and names
    if "i2v" in name:
        assert {"CLIPVisionEncode", "JaxCLIPVisionLoader", "WanImageToVideo"} <= types


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_workflow_scaled(comfy, path):
    workflow = json.loads(path.read_text())
    result = run_ok(comfy, scale_example(workflow, example_family(path.name, workflow)))
    for f in result.files:
        pixels = read_png(f) if f.suffix == ".png" else read_video(f)
        assert pixels.shape[-3:] == (IMAGE_SIDE, IMAGE_SIDE, 3) and pixels.std() > 0, (f, pixels.shape)


# ----------------------------------------------------------------------------- bad inputs


def test_text_encoder_of_the_wrong_family_is_an_error(comfy):
    """CLIP-L given to JaxCLIPLoader (type wan): a one-line error naming the file (in a Wan T2V graph)."""
    wf = wan_t2v({}, seed=11)
    enc = [k for k, v in wf.items() if v["class_type"] == "TinyConditioning"][0]
    wf["90"] = {"class_type": "JaxCLIPLoader", "inputs": dict(clip_name=CLIP_L, type="wan", weight_dtype="default",
                                                                mesh="")}
    wf[enc] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["90", 0], "text": "a cat"}}
    result = comfy.run(wf, timeout=RUN_TIMEOUT)
    msg = assert_error(result, node_type="JaxCLIPLoader", all_of=(CLIP_L, "wan"))
    assert "\n" not in msg.strip()


def test_not_flux_or_wan_file_is_an_error(comfy):
    result = comfy.run(flux_t2i(seed=10, unet=JUNK), timeout=RUN_TIMEOUT)
    assert_error(result, node_type="JaxDiffusionModelLoader",
                 any_of=("flux", "wan", "unrecognised", "unrecognized", "unknown", "not a"))
    assert_still_works(comfy)


def test_vae_channels_not_matching_latent_is_an_error(comfy, core_info):
    """A 16-channel Wan 2.1 latent decoded by the 48-channel Wan 2.2 VAE."""
    g = Graph()
    vae_id = g.add("JaxVAELoader", vae_name=WAN22_VAE)
    lat = g.add("TinyLatent", channels=16, frames=2, height=4, width=4, batch=1)
    image = g.add("VAEDecode", samples=g.out(lat), vae=g.out(vae_id))
    save_video(g, image, "bad_vae", core_info)
    msg = assert_error(comfy.run(g.nodes, timeout=RUN_TIMEOUT), node_type="VAEDecode")
    assert "channel" in msg.lower() or ("16" in msg and "48" in msg), msg
    assert_still_works(comfy)


def test_latent_not_multiple_of_patch_is_an_error(comfy):
    """A 5×5 Flux latent: not a multiple of the 2×2 patch."""
    wf = flux_t2i(seed=11, sampler="jax",
                  latent=("TinyLatent", dict(channels=16, frames=0, height=5, width=5, batch=1)))
    assert_error(comfy.run(wf, timeout=RUN_TIMEOUT), node_type="JaxSampler",
                 any_of=("multiple", "patch", "divisible", "even"))
    assert_still_works(comfy)


def test_wan_frames_not_4k_plus_1_is_an_error(comfy, core_info):
    """A 6-frame video (not 4k+1) VAE-encoded for Wan and sampled with JaxSampler."""
    g = Graph()
    video = g.add("TinyImage", size=IMAGE_SIDE, frames=6, seed=0)
    vae_id = g.add("JaxVAELoader", vae_name=WAN_VAE)
    lat = g.add("VAEEncode", pixels=g.out(video), vae=g.out(vae_id))
    wf = wan_t2v(core_info, seed=12, sampler="euler", g=g, latent_id=lat)
    msg = assert_error(comfy.run(wf, timeout=RUN_TIMEOUT), node_type=("VAEEncode", "JaxSampler"),
                       any_of=("4k+1", "4k + 1", "4·k+1", "4*k+1", "frame"))
    assert "6" in msg, msg
    assert_still_works(comfy)


def test_mesh_that_does_not_fit_is_an_error(comfy):
    msg = assert_error(comfy.run(flux_t2i(seed=13, mesh="fsdp=64"), timeout=RUN_TIMEOUT),
                       any_of=("mesh", "device"))
    assert "64" in msg, msg
    assert_still_works(comfy)


@pytest.mark.parametrize("sampler", ["ksampler", "jax"])
def test_conditioning_of_the_wrong_width_is_an_error(comfy, sampler):
    """T5 context of width 48 for a Flux whose context width is 32."""
    result = comfy.run(flux_t2i(seed=14, sampler=sampler, cond_width=48), timeout=RUN_TIMEOUT)
    msg = assert_error(result, node_type="KSampler" if sampler == "ksampler" else "JaxSampler",
                       any_of=("width", "context", "text", "conditioning", "dim"))
    assert "48" in msg, msg
    assert_still_works(comfy)


# ----------------------------------------------------------------------------- interrupt and memory


def test_interrupt_stops_a_long_jax_sampler_run(comfy):
    wf = flux_t2i(seed=20, sampler="jax", steps=2000)
    sampler_id = next(k for k, v in wf.items() if v["class_type"] == "JaxSampler")
    state = {"sent": None, "progress": 0}
    lock = threading.Lock()

    def interrupt_once(why: str):
        with lock:
            if state["sent"] is None:
                state["sent"] = (time.monotonic(), why)
                comfy.interrupt()

    timer = None

    def on_message(msg):
        nonlocal timer
        data = msg["data"]
        if msg["type"] == "progress" and data.get("node") == sampler_id:
            state["progress"] = max(state["progress"], int(data.get("value", 0)))
            if state["progress"] >= 2:
                interrupt_once("progress")
        elif msg["type"] == "executing" and data.get("node") == sampler_id and timer is None:
            # without per-step progress messages, interrupt a while into the sampler anyway
            timer = threading.Timer(5.0, interrupt_once, ("timer",))
            timer.start()

    try:
        result = comfy.run(wf, timeout=RUN_TIMEOUT, on_message=on_message)
    finally:
        if timer is not None:
            timer.cancel()
    assert state["sent"], f"finished before an interrupt was sent: {result.describe()}"
    stopped_after = time.monotonic() - state["sent"][0]
    print(f"  interrupt via {state['sent'][1]} after progress {state['progress']}/2000; "
          f"stopped {stopped_after:.1f} s later (ws end)")
    assert result.status == "error", result.describe()
    assert result.interrupted is not None, f"no execution_interrupted message: {result.describe()}"
    assert result.interrupted.get("node_type") == "JaxSampler", result.interrupted
    assert state["sent"][1] == "progress", "JaxSampler sent no per-step progress before the interrupt"
    assert_still_works(comfy)


def test_rss_stays_flat_over_20_prompts(comfy):
    """20 small prompts (seed varied, KSampler and JaxSampler alternating) after a 2-prompt warm-up:
    the server's RSS after prompt 20 within ±5 % of that after prompt 1."""
    def prompt(i):
        return flux_t2i(seed=500 + i, sampler="ksampler" if i % 2 else "jax")

    for i in range(2):
        run_ok(comfy, prompt(i))
    rss, times = [], []
    for i in range(2, 22):
        result = comfy.run(prompt(i), timeout=RUN_TIMEOUT).check()
        rss.append(comfy.rss())
        times.append(result.elapsed)
    mib = [r / 2**20 for r in rss]
    print(f"  rss MiB after each prompt: {' '.join(f'{m:.0f}' for m in mib)}; "
          f"prompt time mean {sum(times) / len(times):.2f} s")
    drift = (rss[-1] - rss[0]) / rss[0]
    assert abs(drift) <= 0.05, f"rss drifted {drift:+.1%}: {mib[0]:.0f} → {mib[-1]:.0f} MiB ({mib})"
