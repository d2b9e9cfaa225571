"""`jaxdiff generate`: an image (Flux) as PNG or a video (Wan) as MP4 / animated WebP.

Argument parsing and output writing only: the pipelines come from `pipelines.loading`
(`load_pipeline` for `--model`, `embedded_pipeline` without it), the families from `jaxdiff.families`
(which options a family takes, its embedded default, its pipeline class).

With no `--model`, an embedded default runs: a tiny random-weight transformer and VAE built
in-process from a fixed seed, with random prompt embeddings, so the whole path (denoise loop,
decode, file) runs in seconds. With `--model PATH` the real model is loaded and the prompt is encoded
by our text encoders (`--prompt` with `--text-encoder …`, pipelines/prompting.py) or comes as
precomputed embeddings (`--prompt-embeds`). `--init-image` / `--init-video` with `--denoise` start
from an image or a video instead of pure noise.

Top-level imports stay light (no jax) so `jaxdiff --help` is fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .. import families

DEFAULT_FAMILY = "flux"  # what runs without --family and --model
DEFAULT_OUT = {"image": "out/jaxdiff.png", "video": "out/jaxdiff.mp4"}
# kernels/attention.py IMPLEMENTATIONS / SEQUENCE_PARALLEL (not imported here: it imports jax)
ATTENTION_CHOICES = ("auto", "xla", "cudnn", "splash")
SEQUENCE_PARALLEL_CHOICES = ("ulysses", "ring")
# options that must be positive when given: dest → flag
POSITIVE = {"height": "--height", "width": "--width", "steps": "--steps", "frames": "--frames",
            "fps": "--fps"}


def _families_taking(option: str) -> str:
    return ", ".join(f.name for f in families.FAMILIES.values() if option in f.options)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _model_arguments(parser)
    _run_arguments(parser)
    _scale_arguments(parser.add_argument_group("scale"))


def _model_arguments(parser) -> None:
    rows = families.FAMILIES.values()
    parser.add_argument("--family", choices=list(families.FAMILIES),
                        help="model family: " + "; ".join(f"{f.name} = {f.description}" for f in rows)
                             + " (default: the --model's own, else flux)")
    parser.add_argument("--model", metavar="PATH",
                        help="transformer (diffusers dir, single-file .safetensors or converted "
                             "checkpoint) or a diffusers pipeline dir holding transformer/ (Wan 2.2 "
                             "A14B: also transformer_2/) and vae/; omit for the embedded tiny "
                             "random-weight default")
    parser.add_argument("--vae", metavar="PATH",
                        help="VAE (required with --model unless PATH holds vae/)")
    parser.add_argument("--scheduler-config", metavar="PATH",
                        help="scheduler_config.json (default: PATH/scheduler/ if present, else the "
                             "family's: FLUX.1-dev's with guidance embeddings, schnell's without; Wan: "
                             "UniPC flow, shift 3)")
    parser.add_argument("--prompt-embeds", metavar="FILE",
                        help=".safetensors or .npz; Flux: 'prompt_embeds' [B, S, D] and "
                             "'pooled_prompt_embeds' [B, P]; Wan: 'prompt_embeds' [B, S, D], "
                             "'negative_prompt_embeds' (for guidance > 1) and, for Wan 2.1 I2V, "
                             "CLIP-vision 'image_embeds' [1, S_img, 1280] (required with --model)")
    parser.add_argument("--prompt", metavar="TEXT",
                        help="the prompt, encoded by our JAX text encoders (--text-encoder; with a "
                             "diffusers pipeline dir as --model, its text_encoder*/ and tokenizer*/)")
    parser.add_argument("--negative-prompt", metavar="TEXT",
                        help="Wan: what to steer away from with guidance > 1 (default: empty)")
    text = parser.add_argument_group("text encoders (with --prompt)")
    text.add_argument("--text-encoder", metavar="PATH",
                      help="Flux: CLIP-L (clip_l.safetensors or a CLIPTextModel dir); Wan: UMT5-XXL "
                           "(umt5_xxl_*.safetensors or a UMT5EncoderModel dir); a converted checkpoint "
                           "works too. Flux's two may come in either order")
    text.add_argument("--text-encoder-2", metavar="PATH",
                      help="Flux: T5-XXL (t5xxl_*.safetensors or a T5EncoderModel dir)")
    text.add_argument("--tokenizer", metavar="PATH",
                      help="tokenizer of --text-encoder (tokenizer.json, vocab.json + merges.txt or "
                           "spiece.model, or their folder); default: found beside the weights (ComfyUI's "
                           "UMT5 files carry theirs)")
    text.add_argument("--tokenizer-2", metavar="PATH", help="tokenizer of --text-encoder-2, like --tokenizer")
    text.add_argument("--image-encoder", metavar="PATH",
                      help="Wan 2.1 I2V with --image: CLIP ViT-H/14 vision (clip_vision_h.safetensors "
                           "or a CLIPVisionModelWithProjection dir)")
    text.add_argument("--max-sequence-length", type=int,
                      help="T5/UMT5 tokens (default: Flux-dev 512, schnell 256, Wan 512)")
    text.add_argument("--offload-text-encoder", action=argparse.BooleanOptionalAction, default=None,
                      help="free the encoders' device memory before denoising (default: on when the "
                           "encoders and the transformer do not fit the device together)")
    text.add_argument("--embedding-cache", metavar="DIR|off",
                      help="where encoded prompts are kept, so a repeated prompt skips its encoders "
                           "(default $JAXDIFF_EMBEDDING_CACHE or ~/.cache/jaxdiff/embeddings; off disables)")


def _run_arguments(parser) -> None:
    parser.add_argument("--height", type=int,
                        help="pixels, a multiple of 16 (32 for Wan TI2V-5B) (default: 64 embedded; "
                             "with --model Flux 1024, Wan 480; with --image/--init-image/--init-video "
                             "that file's size)")
    parser.add_argument("--width", type=int, help="pixels, like --height (Wan with --model: 832)")
    parser.add_argument("--steps", type=int,
                        help="denoising steps of the full schedule (default: 4 embedded; with --model "
                             "Flux 28 for dev, 4 for schnell; Wan 50); --denoise runs the last part")
    parser.add_argument("--guidance", type=float,
                        help="Flux: guidance scale for models with guidance embeddings (default 3.5); "
                             "Wan: classifier-free guidance scale, on when > 1 (default 5.0; the "
                             "high-noise expert's for A14B)")
    parser.add_argument("--guidance-2", type=float,
                        help="Wan 2.2 A14B: guidance of the low-noise expert (default --guidance)")
    parser.add_argument("--frames", type=int,
                        help="Wan: frames, 4k + 1 (default 9 embedded, 81 with --model, the "
                             "--init-video's count with it)")
    parser.add_argument("--image", metavar="FILE",
                        help="Wan: first frame for image-to-video (resized to the video size)")
    parser.add_argument("--init-image", metavar="FILE",
                        help="Flux: start from this image (image-to-image; resized to the output size)")
    parser.add_argument("--init-video", metavar="FILE",
                        help="Wan: start from this video, .mp4 or .webp (video-to-video; frames resized "
                             "to the output size)")
    parser.add_argument("--denoise", type=float,
                        help="with --init-image/--init-video: how much to change it, in (0, 1] "
                             "(diffusers' strength; default 0.6 Flux, 0.8 Wan); the run starts that far "
                             "from the end of the --steps schedule")
    parser.add_argument("--sampler", choices=("unipc", "euler"),
                        help="Wan: UniPC (flow) or FlowMatch Euler (default: the scheduler config's, "
                             "else UniPC)")
    parser.add_argument("--fps", type=float,
                        help="Wan: frames per second of the file (default 16; 24 for TI2V-5B)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument("--out",
                        help="output file (default out/jaxdiff.png for images, out/jaxdiff.mp4 for "
                             "video; video is .mp4 (H.264) or .webp by extension; a batch writes "
                             "NAME_i.EXT)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"),
                        help="parameter/compute dtype (default: float32 embedded, the checkpoint's "
                             "with --model)")


def _scale_arguments(scale) -> None:
    scale.add_argument("--mesh", metavar="SPEC",
                       help="device mesh, e.g. 'data=8', 'fsdp=4,tensor=2', 'data=2,seq=4' (axes "
                            "data, fsdp, tensor, seq; sizes multiply to the device count, one may be "
                            "-1 for the rest); default: one device")
    scale.add_argument("--attention", choices=ATTENTION_CHOICES,
                       help="attention kernel: auto (default: splash on TPU, cuDNN on GPU where "
                            "shapes allow, else XLA), xla, cudnn, splash")
    scale.add_argument("--sequence-parallel", choices=SEQUENCE_PARALLEL_CHOICES,
                       help="split attention over the --mesh 'seq' axis: ulysses (all-to-all; heads "
                            "must divide by the seq size) or ring (any head count)")
    scale.add_argument("--distributed", action="store_true",
                       help="multi-host: call jax.distributed.initialize() first; run the same "
                            "command once per host (coordinator detected on Cloud TPU / SLURM / "
                            "Open MPI; --mesh then spans all hosts' devices); process 0 writes "
                            "the file")
    scale.add_argument("--compile-cache", metavar="DIR|off",
                       help="persistent XLA compile cache (default: $JAXDIFF_COMPILE_CACHE, else "
                            "~/.cache/jaxdiff/xla); 'off' disables it")
    scale.add_argument("--export-step", metavar="PATH",
                       help="Flux, one device: also write the denoise step at this run's shapes as "
                            "a jax.export file (weights as arguments; pipelines/export.py "
                            "load_exported_step reads it)")


class GenerationError(RuntimeError):
    """The sampled image is unusable (NaN/inf)."""


DENOISE_DEFAULT = {"image": 0.6, "video": 0.8}  # diffusers' img2img / video2video `strength`


# ----------------------------------------------------------------------------- checks before compute


def check_arguments(args) -> families.Family:
    """Every check that needs no model: the family, which options it takes, value ranges. Returns
    the family row. Raises ValueError naming the flag."""
    if args.prompt is not None and args.prompt_embeds:
        raise ValueError("give --prompt or --prompt-embeds, not both")
    if args.prompt is None:
        for flag in ("negative_prompt", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                     "image_encoder", "max_sequence_length"):
            if getattr(args, flag, None) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} needs --prompt")
    if args.max_sequence_length is not None and args.max_sequence_length <= 0:
        raise ValueError(f"--max-sequence-length must be positive, got {args.max_sequence_length}")
    for dest, flag in POSITIVE.items():
        value = getattr(args, dest, None)
        if value is not None and value <= 0:
            raise ValueError(f"{flag} must be positive, got {value:g}")
    if args.denoise is not None and not 0.0 < args.denoise <= 1.0:
        raise ValueError(f"--denoise must be in (0, 1], got {args.denoise:g}")
    if args.denoise is not None and not (args.init_image or args.init_video):
        raise ValueError("--denoise needs --init-image (Flux) or --init-video (Wan)")
    family = families.get_family(args.family or _detected_family(args.model))
    extra = {o for f in families.FAMILIES.values() for o in f.options}
    for option in sorted(extra - set(family.options)):
        if getattr(args, option, None) is not None:
            flag = "--" + option.replace("_", "-")
            names = _families_taking(option)
            raise ValueError(f"{flag} only apply to --family {names} (an option for {names} only)")
    if args.model is None:
        for flag, value in (("--vae", args.vae), ("--scheduler-config", args.scheduler_config)):
            if value:
                raise ValueError(f"{flag} needs --model (the embedded default has its own)")
    elif not (args.prompt_embeds or args.prompt is not None):
        raise ValueError("--model needs a prompt: --prompt TEXT (with --text-encoder …) or --prompt-embeds FILE")
    if args.prompt is not None and args.model is None and not args.text_encoder:
        raise ValueError("--prompt needs text encoders: --text-encoder PATH (Flux: also --text-encoder-2), "
                         "or a diffusers pipeline dir as --model")
    if getattr(args, "export_step", None) and args.mesh:
        raise ValueError("--export-step exports a one-device step; drop --mesh")
    return family


def _detected_family(model) -> str:
    """The family of the transformer at `model` (headers only), else DEFAULT_FAMILY."""
    if model is None or not Path(model).exists():
        return DEFAULT_FAMILY
    from ..convert.loader import detect_kind

    try:
        kind = detect_kind(model)
    except (ValueError, FileNotFoundError):
        return DEFAULT_FAMILY  # the loader says what is wrong when it runs
    family = families.family_of(kind)
    return family.name if family is not None else DEFAULT_FAMILY


def setup_runtime(args):
    """Distributed init (before anything touches devices), compile cache, mesh: the mesh or None.

    Raises ValueError (exit code 2) for a bad --mesh or a --sequence-parallel without a seq axis.
    """
    from ..sharding.mesh import make_mesh, maybe_initialize_distributed
    from .compile_cache import enable_compile_cache

    if getattr(args, "distributed", False):
        maybe_initialize_distributed(True)
    mesh = make_mesh(args.mesh) if getattr(args, "mesh", None) else None
    sequence_parallel = getattr(args, "sequence_parallel", None)
    if sequence_parallel and (mesh is None or mesh.shape.get("seq", 1) == 1):
        raise ValueError(f"--sequence-parallel {sequence_parallel} needs a --mesh with a 'seq' axis "
                         "larger than 1, e.g. --mesh seq=2")
    enable_compile_cache(getattr(args, "compile_cache", None))
    return mesh


# ----------------------------------------------------------------------------- the run


def _pipeline(args, family: families.Family, mesh, *, abstract: bool = False):
    """(pipeline, defaults for options not given); `abstract`: shape-only models (headers read, no
    weights), for the checks before anything is built — None when the files cannot be read that way
    (the real load then says what is wrong)."""
    from . import loading

    options = dict(mesh=mesh, attention=args.attention, sequence_parallel=args.sequence_parallel,
                   sampler=args.sampler)
    if args.model is None:
        pipe = loading.embedded_pipeline(family, image_to_video=args.image is not None,
                                         dtype=args.dtype or "float32", abstract=abstract, **options)
        e = family.embedded
        return pipe, dict(pipe.defaults(), height=e.height, width=e.width, steps=e.steps, frames=e.frames)
    load = None
    if abstract:
        import functools

        from ..convert.loader import load_model

        load = functools.partial(load_model, abstract=True)
    try:
        pipe = loading.load_pipeline(args.model, vae=args.vae, scheduler=args.scheduler_config,
                                     family=family.name, dtype=args.dtype, load=load, **options)
    except (ValueError, FileNotFoundError):
        if abstract:
            return None, None
        raise
    return pipe, pipe.defaults()


def _request(args, family: families.Family, pipe, defaults: dict, conditioning: dict | None = None) -> dict:
    """The pipeline call for the arguments (conditioning, sizes, start files), checked by the
    pipeline's `check_call` (which needs no weights). `conditioning`: encoded prompts (--prompt)."""
    from . import loading

    start = _start_files(args)  # each file read once, at its own size
    height, width = _size(args, defaults, pipe.size_multiple, start)
    frames = _frames(args, defaults, pipe, start.get("video")) if pipe.output == "video" else None
    pipe.check_inputs(height, width, frames)
    if conditioning is None:
        conditioning = (loading.read_conditioning(args.prompt_embeds, pipe) if args.prompt_embeds
                        else pipe.random_conditioning(args.seed, family.embedded.text_tokens))
    kw = dict(conditioning, height=height, width=width, num_inference_steps=args.steps or defaults["steps"],
              seed=args.seed, guidance_scale=defaults["guidance"] if args.guidance is None else args.guidance,
              **_resized(start, height, width, frames))
    if args.init_image or args.init_video:
        kw["denoise"] = args.denoise or DENOISE_DEFAULT[pipe.output]
    if pipe.output == "video":
        kw.update(num_frames=frames, guidance_scale_2=args.guidance_2)
    pipe.check_call(**kw)
    return kw


def _start_files(args) -> dict:
    """`{pipeline argument: uint8 array}` of --image (Wan's first frame), --init-image, --init-video."""
    from .image_io import read_image

    files = {}
    if args.image:
        files["image"] = read_image(args.image, what="--image")
    if args.init_image:
        files["image"] = read_image(args.init_image, what="--init-image")
    if args.init_video:
        from .video_io import read_video

        files["video"] = read_video(args.init_video)
    return files


def _size(args, defaults: dict, multiple: int, start: dict) -> tuple[int, int]:
    """--height/--width, else (with --model) the start file's size rounded down to `multiple`, else
    the defaults."""
    if not (args.height or args.width) and args.model is not None and start:
        from .image_io import fitted_size

        first = next(iter(start.values()))
        return fitted_size(first.shape[-3], first.shape[-2], multiple)
    return args.height or defaults["height"], args.width or defaults["width"]


def _frames(args, defaults: dict, pipe, video) -> int:
    """--frames, else the --init-video's longest usable prefix, else the default."""
    if args.frames or video is None:
        return args.frames or defaults["frames"]
    step = pipe.vae.config.temporal_factor
    usable = (len(video) - 1) // step * step + 1  # frames = temporal_factor·k + 1
    if usable != len(video):
        print(f"--init-video has {len(video)} frames: using the first {usable} ({step}k + 1)", file=sys.stderr)
    return usable


def _resized(start: dict, height: int, width: int, frames: int | None) -> dict:
    """The start files at the output size (and frame count)."""
    from .image_io import resize_frames

    out = {}
    if "image" in start:
        out["image"] = resize_frames(start["image"][None], height, width)[0]
    if "video" in start:
        video = start["video"]
        if len(video) < frames:
            raise ValueError(f"--init-video has {len(video)} frames, fewer than --frames {frames}")
        out["video"] = resize_frames(video[:frames], height, width)
    return out


def _check_pixels(pixels, what: str) -> None:
    """GenerationError (nothing written) on NaN/inf; a warning for a constant result."""
    import numpy as np

    if not np.isfinite(pixels).all():
        raise GenerationError(f"generated {what} has NaN/inf values ({np.isnan(pixels).sum()} NaN); "
                              "nothing written")
    if float(pixels.max() - pixels.min()) == 0.0:
        print(f"warning: the {what} is constant ({float(pixels.min()):.3f})", file=sys.stderr)


def _write(pixels, out: Path, pipe, defaults: dict, args) -> list[Path]:
    import jax

    if jax.process_index() != 0:  # --distributed: process 0 writes
        return []
    if pipe.output == "video":
        from .video_io import save_videos

        return save_videos(pixels, out, fps=args.fps or defaults["fps"])
    from .image_io import save_images

    return save_images(pixels, out)


def _run(args, family: families.Family, mesh) -> list[Path]:
    from tqdm import tqdm

    out = Path(args.out or DEFAULT_OUT[family.output])
    if family.output == "video":
        from .video_io import _check_suffix

        _check_suffix(out)  # before any model is built
    shapes_only, defaults = _pipeline(args, family, None, abstract=True)
    conditioning = None
    if args.prompt is not None:
        from .prompt_cli import encode_for_cli

        conditioning = encode_for_cli(args, family, shapes_only, mesh)
    kw = None if shapes_only is None else _request(args, family, shapes_only, defaults, conditioning)
    if args.model is None:
        print(f"no --model: embedded tiny random-weight {family.name} ({family.description})",
              file=sys.stderr)
    pipe, defaults = _pipeline(args, family, mesh)
    kw = kw or _request(args, family, pipe, defaults, conditioning)
    if getattr(args, "export_step", None):
        _export_step(pipe, args.export_step, kw["prompt_embeds"].shape, kw["height"], kw["width"])
    start = time.perf_counter()
    with tqdm(desc="denoising", unit="step", file=sys.stderr) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(1)

        result = pipe(callback=progress, **kw)
    pixels = result.images if pipe.output == "image" else result.frames
    _check_pixels(pixels, pipe.output)
    paths = _write(pixels, out, pipe, defaults, args)
    if pipe.compile_stats is not None:
        where = "" if mesh is None else f" on mesh {dict(mesh.shape)}"
        print(f"compiled denoise step{where} in {pipe.compile_stats.describe()}", file=sys.stderr)
    frames = kw.get("num_frames")
    shape = f"{kw['height']}x{kw['width']}" if frames is None else f"{frames} frames {kw['height']}x{kw['width']}"
    print(f"{shape}, {kw['num_inference_steps']} steps, {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return paths


def _export_step(pipe, path, prompt_shape, height: int, width: int) -> None:
    from .export import export_denoise_step
    from .placement import attention_context

    batch, text_len = prompt_shape[0], prompt_shape[1]
    try:
        with attention_context(pipe.attention, None, None):
            export_denoise_step(pipe, path, batch=batch, height=height, width=width, text_len=text_len)
    except ImportError as e:
        raise ValueError(f"--export-step: {e}") from None
    print(f"exported denoise step (batch {batch}, {height}x{width}, {text_len} text tokens) to {path}",
          file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        family = check_arguments(args)
        paths = _run(args, family, setup_runtime(args))
    except (ValueError, FileNotFoundError) as e:
        print(f"jaxdiff generate: error: {e}", file=sys.stderr)
        return 2
    except GenerationError as e:
        print(f"jaxdiff generate: error: {e}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0
