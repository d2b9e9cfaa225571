"""Writes the example workflows in this folder, each in both of ComfyUI's formats, from one table.

    python example_workflows/build_workflows.py          # rewrites <name>.json and <name>_api.json

- `<name>.json`: the frontend's graph format (version 0.4; drag-and-drop into ComfyUI's canvas).
- `<name>_api.json`: the `/prompt` format (`{"id": {"class_type", "inputs", "_meta"}}`).

Both come from the same node list, so they cannot drift apart; `check_workflows.py` validates them
against a running server's `/object_info` (and checks that the graph's widget values map onto the API
inputs in the node's widget order). Stdlib only.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Socket inputs, outputs and widget inputs (in the node's widget order) of every node type used here.
# Widget order = the node's required then optional widget inputs, as /object_info's input_order lists
# them; check_workflows.py verifies this table against a live server.
NODE_TYPES = {
    # ours (jaxdiff)
    "JaxDiffusionModelLoader": ([], [("MODEL", "MODEL")], ["unet_name", "weight_dtype", "mesh", "attention"]),
    "JaxVAELoader": ([], [("VAE", "VAE")], ["vae_name"]),
    "JaxCLIPLoader": ([], [("CLIP", "CLIP")], ["clip_name", "type", "weight_dtype", "mesh"]),
    "JaxDualCLIPLoader": ([], [("CLIP", "CLIP")], ["clip_name1", "clip_name2", "type", "weight_dtype", "mesh"]),
    "JaxCLIPVisionLoader": ([], [("CLIP_VISION", "CLIP_VISION")], ["clip_name"]),
    "JaxSampler": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT"),
         ("model_2", "MODEL")],
        [("LATENT", "LATENT")],
        ["seed", "steps", "cfg", "guidance", "shift", "sampler_name", "denoise", "boundary"],
    ),
    # ComfyUI core
    "DualCLIPLoader": ([], [("CLIP", "CLIP")], ["clip_name1", "clip_name2", "type", "device"]),
    "CLIPLoader": ([], [("CLIP", "CLIP")], ["clip_name", "type", "device"]),
    "CLIPTextEncode": ([("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")], ["text"]),
    "FluxGuidance": ([("conditioning", "CONDITIONING")], [("CONDITIONING", "CONDITIONING")], ["guidance"]),
    "ConditioningZeroOut": ([("conditioning", "CONDITIONING")], [("CONDITIONING", "CONDITIONING")], []),
    "EmptySD3LatentImage": ([], [("LATENT", "LATENT")], ["width", "height", "batch_size"]),
    "EmptyHunyuanLatentVideo": ([], [("LATENT", "LATENT")], ["width", "height", "length", "batch_size"]),
    "KSampler": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
        [("LATENT", "LATENT")],
        ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    ),
    "KSamplerAdvanced": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
        [("LATENT", "LATENT")],
        ["add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "start_at_step", "end_at_step",
         "return_with_leftover_noise"],
    ),
    "ModelSamplingSD3": ([("model", "MODEL")], [("MODEL", "MODEL")], ["shift"]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")], []),
    "SaveImage": ([("images", "IMAGE")], [], ["filename_prefix"]),
    "SaveWEBM": ([("images", "IMAGE")], [], ["filename_prefix", "codec", "fps", "crf"]),
    "CLIPVisionLoader": ([], [("CLIP_VISION", "CLIP_VISION")], ["clip_name"]),
    "CLIPVisionEncode": (
        [("clip_vision", "CLIP_VISION"), ("image", "IMAGE")], [("CLIP_VISION_OUTPUT", "CLIP_VISION_OUTPUT")], ["crop"]),
    "LoadImage": ([], [("IMAGE", "IMAGE"), ("MASK", "MASK")], ["image"]),
    "WanImageToVideo": (
        [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"),
         ("clip_vision_output", "CLIP_VISION_OUTPUT"), ("start_image", "IMAGE")],
        [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")],
        ["width", "height", "length", "batch_size"],
    ),
    # frontend-only (never sent to the server)
    "MarkdownNote": ([], [], ["text"]),
}
FRONTEND_ONLY = {"MarkdownNote", "Note"}
# display names (the frontend's default node titles, which it writes to the API format's _meta.title)
DISPLAY = {
    "JaxDiffusionModelLoader": "Load Diffusion Model (JAX)", "JaxVAELoader": "Load VAE (JAX)",
    "JaxSampler": "JAX Sampler", "JaxCLIPLoader": "Load CLIP (JAX)", "JaxDualCLIPLoader": "DualCLIPLoader (JAX)",
    "JaxCLIPVisionLoader": "Load CLIP Vision (JAX)", "DualCLIPLoader": "DualCLIPLoader", "CLIPLoader": "Load CLIP",
    "CLIPTextEncode": "CLIP Text Encode (Prompt)", "KSampler": "KSampler", "KSamplerAdvanced": "KSampler (Advanced)",
    "VAEDecode": "VAE Decode", "SaveImage": "Save Image", "CLIPVisionLoader": "Load CLIP Vision",
    "CLIPVisionEncode": "CLIP Vision Encode", "LoadImage": "Load Image",
}
# widgets the frontend adds after a widget: a seed's "control after generate", LoadImage's upload button
EXTRA_WIDGET_AFTER = {"seed": "fixed", "noise_seed": "fixed"}
UPLOAD_WIDGET = {("LoadImage", "image"): "image"}

PURPLE = {"color": "#323", "bgcolor": "#535"}  # the frontend's palette: latents
GREEN = {"color": "#232", "bgcolor": "#353"}  # positive prompt
RED = {"color": "#322", "bgcolor": "#533"}  # negative prompt
BLUE = {"color": "#223", "bgcolor": "#335"}  # jaxdiff nodes


class Node:
    def __init__(self, graph, node_id, type_, pos, size, title, values, colors):
        self.graph, self.id, self.type, self.pos, self.size = graph, node_id, type_, pos, size
        self.title, self.values, self.colors = title, values, colors

    def out(self, slot=0):
        return (self, slot)


class Graph:
    def __init__(self, name):
        self.name, self.nodes = name, []

    def add(self, type_, pos, size, title=None, colors=None, **values):
        sockets, _, widgets = NODE_TYPES[type_]
        unknown = set(values) - {n for n, _ in sockets} - set(widgets)
        if unknown:
            raise ValueError(f"{type_}: unknown inputs {sorted(unknown)}")
        node = Node(self, len(self.nodes) + 1, type_, pos, size, title, values, colors)
        self.nodes.append(node)
        return node

    # ------------------------------------------------------------------ API format
    def api(self):
        prompt = {}
        for n in self.nodes:
            if n.type in FRONTEND_ONLY:
                continue
            sockets, _, widgets = NODE_TYPES[n.type]
            inputs = {}
            for name in widgets:
                if name in n.values:
                    inputs[name] = n.values[name]
            for name, _ in sockets:
                if name in n.values:
                    src, slot = n.values[name]
                    inputs[name] = [str(src.id), slot]
            title = n.title or DISPLAY.get(n.type, n.type)
            prompt[str(n.id)] = {"class_type": n.type, "inputs": inputs, "_meta": {"title": title}}
        return prompt

    # ------------------------------------------------------------------ graph (UI) format
    def ui(self):
        links = []  # [id, from_node, from_slot, to_node, to_slot, type]
        in_link, out_links = {}, {}
        for n in self.nodes:
            sockets, _, _ = NODE_TYPES[n.type]
            for to_slot, (name, type_) in enumerate(sockets):
                if name in n.values:
                    src, from_slot = n.values[name]
                    link_id = len(links) + 1
                    links.append([link_id, src.id, from_slot, n.id, to_slot, type_])
                    in_link[(n.id, to_slot)] = link_id
                    out_links.setdefault((src.id, from_slot), []).append(link_id)
        order = self._topological_order()
        nodes = []
        for n in self.nodes:
            sockets, outputs, widgets = NODE_TYPES[n.type]
            wv = []
            for name in widgets:
                if name not in n.values:
                    continue
                wv.append(n.values[name])
                if name in EXTRA_WIDGET_AFTER:
                    wv.append(EXTRA_WIDGET_AFTER[name])
                if (n.type, name) in UPLOAD_WIDGET:
                    wv.append(UPLOAD_WIDGET[(n.type, name)])
            node = {
                "id": n.id,
                "type": n.type,
                "pos": list(n.pos),
                "size": list(n.size),
                "flags": {},
                "order": order[n.id],
                "mode": 0,
                "inputs": [
                    {"name": name, "type": type_, "link": in_link.get((n.id, i))}
                    for i, (name, type_) in enumerate(sockets)
                ],
                "outputs": [
                    {"name": name, "type": type_, "links": out_links.get((n.id, i), []), "slot_index": i}
                    for i, (name, type_) in enumerate(outputs)
                ],
                "properties": {"Node name for S&R": n.type},
                "widgets_values": wv,
            }
            if n.title:
                node["title"] = n.title
            if n.colors:
                node.update(n.colors)
            nodes.append(node)
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"jaxdiff/example_workflows/{self.name}")),
            "revision": 0,
            "last_node_id": len(self.nodes),
            "last_link_id": len(links),
            "nodes": nodes,
            "links": links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}},
            "version": 0.4,
        }

    def _topological_order(self):
        deps = {n.id: {v[0].id for k, v in n.values.items() if isinstance(v, tuple)} for n in self.nodes}
        order, done = {}, set()
        while len(done) < len(self.nodes):
            ready = [i for i in deps if i not in done and deps[i] <= done]
            for i in sorted(ready):
                order[i] = len(order)
                done.add(i)
        return order

    def write(self, folder=HERE):
        (folder / f"{self.name}.json").write_text(json.dumps(self.ui(), indent=2, ensure_ascii=False) + "\n")
        (folder / f"{self.name}_api.json").write_text(json.dumps(self.api(), indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------- workflows

SEED = 42
FLUX_PROMPT = ("a red fox sitting in a snowy birch forest at golden hour, detailed fur, soft warm light, "
               "shallow depth of field, 35mm photograph")
WAN_NEGATIVE = ("blurry, low quality, worst quality, static frame, overexposed, washed out colors, subtitles, "
                "watermark, text, jpeg artifacts, deformed, disfigured, extra fingers, extra limbs, ugly, "
                "messy background, walking backwards")


def note(g, pos, size, text):
    return g.add("MarkdownNote", pos, size, title="Files", text=text)


# columns of the layouts (left to right: loaders, prompts and latents, sampling, output)
C1, C2, C3, C4, C5 = 20, 380, 820, 1160, 1500


def flux_common(g, sampler, jax_text=False):
    """Flux.1 [dev] text-to-image; `sampler` is "KSampler" or "JaxSampler"; `jax_text`: the text encoders
    in JAX too (JaxDualCLIPLoader instead of core DualCLIPLoader)."""
    model = g.add("JaxDiffusionModelLoader", (C1, 60), (320, 130), colors=BLUE,
                  unet_name="flux1-dev.safetensors", weight_dtype="default", mesh="", attention="auto")
    if jax_text:
        clip = g.add("JaxDualCLIPLoader", (C1, 240), (320, 160), colors=BLUE, clip_name1="clip_l.safetensors",
                     clip_name2="t5xxl_fp16.safetensors", type="flux", weight_dtype="default", mesh="")
    else:
        clip = g.add("DualCLIPLoader", (C1, 240), (320, 130),
                     clip_name1="clip_l.safetensors", clip_name2="t5xxl_fp16.safetensors", type="flux",
                     device="default")
    pos = g.add("CLIPTextEncode", (C2, 60), (400, 170), title="Positive prompt", colors=GREEN,
                text=FLUX_PROMPT, clip=clip.out())
    neg = g.add("ConditioningZeroOut", (C2, 280), (300, 30), title="Negative (zeroed; unused at cfg 1)",
                colors=RED, conditioning=pos.out())
    latent = g.add("EmptySD3LatentImage", (C2, 370), (320, 110), colors=PURPLE,
                   width=1024, height=1024, batch_size=1)
    guided = g.add("FluxGuidance", (C3, 60), (300, 60), conditioning=pos.out(), guidance=3.5)
    if sampler == "KSampler":
        samples = g.add("KSampler", (C3, 170), (300, 262), model=model.out(), positive=guided.out(),
                        negative=neg.out(), latent_image=latent.out(), seed=SEED, steps=20, cfg=1.0,
                        sampler_name="euler", scheduler="simple", denoise=1.0)
        vae_y = 490
    else:
        samples = g.add("JaxSampler", (C3, 170), (300, 330), colors=BLUE, model=model.out(), positive=guided.out(),
                        negative=neg.out(), latent_image=latent.out(), seed=SEED, steps=20, cfg=1.0,
                        guidance=3.5, shift=JAX_SAMPLER_FLUX_SHIFT, sampler_name="euler", denoise=1.0,
                        boundary=JAX_SAMPLER_BOUNDARY)
        vae_y = 560
    vae = g.add("JaxVAELoader", (C3, vae_y), (300, 60), colors=BLUE, vae_name="ae.safetensors")
    image = g.add("VAEDecode", (C4, 60), (210, 46), samples=samples.out(), vae=vae.out())
    g.add("SaveImage", (C4, 160), (380, 400), images=image.out(), filename_prefix="jaxdiff/flux_dev")
    note(g, (C1, 450 if jax_text else 420), (320, 190),
         "**Flux.1 [dev] with jaxdiff**\n\n"
         "- `models/diffusion_models/flux1-dev.safetensors`\n"
         "- `models/text_encoders/clip_l.safetensors`, `t5xxl_fp16.safetensors`\n"
         "- `models/vae/ae.safetensors`\n\n"
         "Blue nodes run in JAX; the rest is ComfyUI core.")
    return g


# JaxSampler widget values of the Flux workflow: shift 0 = the model's own schedule (Flux dev's is
# resolution-dependent); its guidance (3.5, as FluxGuidance) replaces the conditioning's; the boundary
# only matters with model_2 (Wan 2.2 A14B) connected.
JAX_SAMPLER_FLUX_SHIFT = 0.0
JAX_SAMPLER_BOUNDARY = 0.875


def wan_text(g, clip, positive, x=C2):
    pos = g.add("CLIPTextEncode", (x, 60), (400, 170), title="Positive prompt", colors=GREEN,
                text=positive, clip=clip.out())
    neg = g.add("CLIPTextEncode", (x, 280), (400, 170), title="Negative prompt", colors=RED,
                text=WAN_NEGATIVE, clip=clip.out())
    return pos, neg


def wan_clip(g, y, jax_text=False):
    if jax_text:
        return g.add("JaxCLIPLoader", (C1, y), (320, 130), colors=BLUE,
                     clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan", weight_dtype="default", mesh="")
    return g.add("CLIPLoader", (C1, y), (320, 110),
                 clip_name="umt5_xxl_fp8_e4m3fn_scaled.safetensors", type="wan", device="default")


def wan_vae(g, pos):
    return g.add("JaxVAELoader", pos, (300, 60), colors=BLUE, vae_name="wan_2.1_vae.safetensors")


def wan_save(g, samples, vae, prefix, x=C4):
    frames = g.add("VAEDecode", (x, 60), (210, 46), samples=samples.out(), vae=vae.out())
    g.add("SaveWEBM", (x, 160), (380, 420), images=frames.out(), filename_prefix=prefix, codec="vp9",
          fps=16.0, crf=32.0)


def wan21_t2v(jax_text=False):
    g = Graph("wan21_t2v_all_jax" if jax_text else "wan21_t2v")
    model = g.add("JaxDiffusionModelLoader", (C1, 60), (320, 130), colors=BLUE,
                  unet_name="wan2.1_t2v_1.3B_fp16.safetensors", weight_dtype="default", mesh="", attention="auto")
    clip = wan_clip(g, 240, jax_text)
    pos, neg = wan_text(g, clip, "a corgi running along a sunny beach, waves rolling in, "
                                 "cinematic tracking shot, golden hour")
    latent = g.add("EmptyHunyuanLatentVideo", (C2, 500), (320, 130), colors=PURPLE,
                   width=832, height=480, length=33, batch_size=1)
    samples = g.add("KSampler", (C3, 60), (300, 262), model=model.out(), positive=pos.out(), negative=neg.out(),
                    latent_image=latent.out(), seed=SEED, steps=30, cfg=6.0, sampler_name="uni_pc",
                    scheduler="simple", denoise=1.0)
    vae = wan_vae(g, (C3, 380))
    wan_save(g, samples, vae, "jaxdiff/wan21_t2v")
    note(g, (C1, 400), (320, 230),
         "**Wan 2.1 T2V 1.3B with jaxdiff**\n\n"
         "- `models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors`\n"
         "- `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`\n"
         "- `models/vae/wan_2.1_vae.safetensors`\n\n"
         "length 33 = 2 s at 16 fps; 81 for 5 s.")
    return g


def wan21_i2v(jax_text=False):
    g = Graph("wan21_i2v_all_jax" if jax_text else "wan21_i2v")
    model = g.add("JaxDiffusionModelLoader", (C1, 60), (320, 130), colors=BLUE,
                  unet_name="wan2.1_i2v_480p_14B_fp16.safetensors", weight_dtype="default", mesh="", attention="auto")
    clip = wan_clip(g, 240, jax_text)
    if jax_text:
        vision = g.add("JaxCLIPVisionLoader", (C1, 400), (320, 60), colors=BLUE, clip_name="clip_vision_h.safetensors")
    else:
        vision = g.add("CLIPVisionLoader", (C1, 400), (320, 60), clip_name="clip_vision_h.safetensors")
    image = g.add("LoadImage", (C1, 510), (320, 330), title="Start image", image="example.png")
    pos, neg = wan_text(g, clip, "the scene comes to life, gentle camera push-in, leaves swaying in the wind")
    encoded = g.add("CLIPVisionEncode", (C2, 500), (300, 80), clip_vision=vision.out(), image=image.out(), crop="none")
    vae = wan_vae(g, (C2, 630))
    i2v = g.add("WanImageToVideo", (C3, 60), (300, 210), colors=PURPLE, positive=pos.out(), negative=neg.out(),
                vae=vae.out(), clip_vision_output=encoded.out(), start_image=image.out(),
                width=832, height=480, length=33, batch_size=1)
    samples = g.add("KSampler", (C3, 330), (300, 262), model=model.out(), positive=i2v.out(0), negative=i2v.out(1),
                    latent_image=i2v.out(2), seed=SEED, steps=20, cfg=6.0, sampler_name="uni_pc",
                    scheduler="simple", denoise=1.0)
    wan_save(g, samples, vae, "jaxdiff/wan21_i2v")
    note(g, (C4, 640), (380, 220),
         "**Wan 2.1 I2V 14B 480p with jaxdiff**\n\n"
         "- `models/diffusion_models/wan2.1_i2v_480p_14B_fp16.safetensors`\n"
         "- `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`\n"
         "- `models/clip_vision/clip_vision_h.safetensors`\n"
         "- `models/vae/wan_2.1_vae.safetensors`\n\n"
         "The start image is `input/example.png`; load your own.")
    return g


def wan22_a14b_t2v():
    g = Graph("wan22_a14b_t2v")
    high = g.add("JaxDiffusionModelLoader", (C1, 60), (320, 130), title="High-noise expert (JAX)", colors=BLUE,
                 unet_name="wan2.2_t2v_high_noise_14B_fp16.safetensors", weight_dtype="default", mesh="",
                 attention="auto")
    low = g.add("JaxDiffusionModelLoader", (C1, 240), (320, 130), title="Low-noise expert (JAX)", colors=BLUE,
                unet_name="wan2.2_t2v_low_noise_14B_fp16.safetensors", weight_dtype="default", mesh="",
                attention="auto")
    clip = wan_clip(g, 420)
    pos, neg = wan_text(g, clip, "a paper boat drifting down a rain-filled street gutter, macro shot, "
                                 "cinematic lighting, reflections on the water")
    latent = g.add("EmptyHunyuanLatentVideo", (C2, 500), (320, 130), colors=PURPLE,
                   width=832, height=480, length=33, batch_size=1)
    high_s = g.add("ModelSamplingSD3", (C3, 60), (300, 60), title="Shift (high)", model=high.out(), shift=8.0)
    low_s = g.add("ModelSamplingSD3", (C4, 60), (300, 60), title="Shift (low)", model=low.out(), shift=8.0)
    first = g.add("KSamplerAdvanced", (C3, 170), (300, 334), title="High noise: steps 0-10", model=high_s.out(),
                  positive=pos.out(), negative=neg.out(), latent_image=latent.out(), add_noise="enable",
                  noise_seed=SEED, steps=20, cfg=3.5, sampler_name="euler", scheduler="simple", start_at_step=0,
                  end_at_step=10, return_with_leftover_noise="enable")
    second = g.add("KSamplerAdvanced", (C4, 170), (300, 334), title="Low noise: steps 10-20", model=low_s.out(),
                   positive=pos.out(), negative=neg.out(), latent_image=first.out(), add_noise="disable",
                   noise_seed=SEED, steps=20, cfg=3.5, sampler_name="euler", scheduler="simple", start_at_step=10,
                   end_at_step=10000, return_with_leftover_noise="disable")
    vae = wan_vae(g, (C4, 560))
    wan_save(g, second, vae, "jaxdiff/wan22_a14b_t2v", x=C5)
    note(g, (C1, 580), (320, 250),
         "**Wan 2.2 A14B T2V with jaxdiff** (two experts)\n\n"
         "- `models/diffusion_models/wan2.2_t2v_high_noise_14B_fp16.safetensors`\n"
         "- `models/diffusion_models/wan2.2_t2v_low_noise_14B_fp16.safetensors`\n"
         "- `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors`\n"
         "- `models/vae/wan_2.1_vae.safetensors`\n\n"
         "The high-noise expert runs steps 0-10, the low-noise one 10-20.")
    return g


def all_graphs():
    return [
        flux_common(Graph("flux_dev_t2i"), "KSampler"),
        flux_common(Graph("flux_dev_t2i_jax_sampler"), "JaxSampler"),
        flux_common(Graph("flux_dev_t2i_all_jax"), "KSampler", jax_text=True),
        wan21_t2v(),
        wan21_t2v(jax_text=True),
        wan21_i2v(),
        wan21_i2v(jax_text=True),
        wan22_a14b_t2v(),
    ]


def main():
    for g in all_graphs():
        g.write()
        print(f"wrote {g.name}.json, {g.name}_api.json")


if __name__ == "__main__":
    main()
