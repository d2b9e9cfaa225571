"""Test-only ComfyUI node pack for jaxdiff's end-to-end tests (installed by tests/comfy_server.py as
`custom_nodes/jaxdiff_test_nodes`; never shipped).

ComfyUI hard-codes the XXL sizes of its T5 / UMT5 text encoders (and the CLIP-vision towers), so tiny
text encoders cannot go through the core loaders. These nodes stand in for them: they emit seeded
random tensors in exactly the layouts the core nodes produce, at any width.

- `TinyConditioning` → CONDITIONING `[[cond [B, tokens, width], {"pooled_output": [B, pooled_width],
  "guidance": g}]]` (as CLIPTextEncode / FluxGuidance make it; pooled_output only if pooled_width > 0,
  guidance only if ≥ 0).
- `TinyClipVisionOutput` → CLIP_VISION_OUTPUT with `penultimate_hidden_states` `[1, tokens, width]`
  (what CLIPVisionEncode gives WanImageToVideo).
- `TinyImage` → IMAGE `[frames, size, size, 3]` float32 in 0..1.
- `TinyLatent` → LATENT `{"samples": zeros [batch, channels, (frames,) height, width]}` of any size
  (frames 0 = an image latent), for shapes the core Empty*Latent nodes refuse to make.
"""

import torch

CATEGORY = "jaxdiff_tests"
MAX = 1 << 20
SEED = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF})


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) % (1 << 63))


class TinyConditioning:
    DESCRIPTION = "Seeded random text conditioning in core's CONDITIONING layout (stands in for a text encoder)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 32, "min": 1, "max": MAX}),
            "tokens": ("INT", {"default": 8, "min": 1, "max": MAX}),
            "pooled_width": ("INT", {"default": 0, "min": 0, "max": MAX,
                                     "tooltip": "0 = no pooled_output"}),
            "seed": SEED,
            "batch": ("INT", {"default": 1, "min": 1, "max": 4096}),
            "guidance": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 100.0, "step": 0.1,
                                   "tooltip": "< 0 = no guidance entry"}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = CATEGORY

    def make(self, width, tokens, pooled_width, seed, batch, guidance):
        gen = _generator(seed)
        cond = torch.randn(batch, tokens, width, generator=gen)
        extra = {}
        if pooled_width > 0:
            extra["pooled_output"] = torch.randn(batch, pooled_width, generator=gen)
        if guidance >= 0:
            extra["guidance"] = float(guidance)
        return ([[cond, extra]],)


def _clip_vision_output():
    try:
        from comfy.clip_vision import Output  # the class core CLIPVisionEncode returns
        return Output()
    except ImportError:  # pragma: no cover - older/newer snapshots
        class Output:
            def __getitem__(self, key):
                return getattr(self, key)

            def __setitem__(self, key, item):
                setattr(self, key, item)

        return Output()


class TinyClipVisionOutput:
    DESCRIPTION = "Seeded random CLIP-vision features (penultimate_hidden_states) like CLIPVisionEncode's output."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "tokens": ("INT", {"default": 257, "min": 1, "max": MAX}),
            "width": ("INT", {"default": 1280, "min": 1, "max": MAX}),
            "seed": SEED,
        }}

    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    FUNCTION = "make"
    CATEGORY = CATEGORY

    def make(self, tokens, width, seed):
        gen = _generator(seed)
        out = _clip_vision_output()
        out["penultimate_hidden_states"] = torch.randn(1, tokens, width, generator=gen)
        out["last_hidden_state"] = torch.randn(1, tokens, width, generator=gen)
        out["image_embeds"] = torch.randn(1, width, generator=gen)
        return (out,)


class TinyImage:
    DESCRIPTION = "Seeded random IMAGE batch [frames, size, size, 3] in 0..1."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "size": ("INT", {"default": 32, "min": 1, "max": 4096}),
            "frames": ("INT", {"default": 1, "min": 1, "max": 4096}),
            "seed": SEED,
        }}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "make"
    CATEGORY = CATEGORY

    def make(self, size, frames, seed):
        gen = _generator(seed)
        return (torch.rand(frames, size, size, 3, generator=gen, dtype=torch.float32),)


class TinyLatent:
    DESCRIPTION = "An all-zero LATENT of any shape (frames 0 = a 4-D image latent)."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "channels": ("INT", {"default": 16, "min": 1, "max": 4096}),
            "frames": ("INT", {"default": 0, "min": 0, "max": 4096}),
            "height": ("INT", {"default": 4, "min": 1, "max": 4096}),
            "width": ("INT", {"default": 4, "min": 1, "max": 4096}),
            "batch": ("INT", {"default": 1, "min": 1, "max": 4096}),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = CATEGORY

    def make(self, channels, frames, height, width, batch):
        shape = (batch, channels) + ((frames,) if frames > 0 else ()) + (height, width)
        return ({"samples": torch.zeros(shape)},)


NODE_CLASS_MAPPINGS = {
    "TinyConditioning": TinyConditioning,
    "TinyClipVisionOutput": TinyClipVisionOutput,
    "TinyImage": TinyImage,
    "TinyLatent": TinyLatent,
}
NODE_DISPLAY_NAME_MAPPINGS = {name: f"{name} (jaxdiff tests)" for name in NODE_CLASS_MAPPINGS}
