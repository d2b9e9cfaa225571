"""Write and read videos (`[F, H, W, 3]` float 0..1 numpy frames), atomically, chosen by extension.

- `.mp4`: H.264 (yuv420p, playable everywhere) through PyAV (`av`, which bundles its own FFmpeg with
  libx264, so nothing needs to be installed system-wide).
- `.webp`: animated WebP through Pillow (lossy by default; libwebp merges a frame identical to the
  one before it into a longer frame, so a constant video reads back with fewer frames).

Files are written to a temp file in the target folder and renamed into place. `av` is imported only
when an MP4 is written or read.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from .image_io import image_paths, to_uint8, write_atomic

VIDEO_SUFFIXES = (".mp4", ".webp")
MP4_CODEC = "libx264"
MP4_PIX_FMT = "yuv420p"  # 4:2:0: what browsers and players decode; needs even height and width
MP4_CRF = 18  # visually near-lossless H.264
WEBP_QUALITY = 90


def _check_frames(frames: np.ndarray, path: Path) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"expected video frames [F, H, W, 3] with F >= 1, got {frames.shape}")
    if not np.isfinite(frames).all():
        raise ValueError(f"video for {path} contains NaN or inf")
    return to_uint8(frames)


def _check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"unsupported video extension {path.suffix!r} for {path}; use one of "
                         f"{', '.join(VIDEO_SUFFIXES)}")
    return suffix


def _write_mp4(pixels: np.ndarray, f, fps: float) -> None:
    import av

    _, h, w, _ = pixels.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 {MP4_PIX_FMT} needs even height and width, got {h}×{w}")
    with av.open(f, mode="w", format="mp4") as container:
        stream = container.add_stream(MP4_CODEC, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, MP4_PIX_FMT
        stream.options = {"crf": str(MP4_CRF)}
        for frame in pixels:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush
            container.mux(packet)


def _write_webp(pixels: np.ndarray, f, fps: float, lossless: bool) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in pixels]
    images[0].save(f, format="WEBP", save_all=True, append_images=images[1:],
                   duration=max(1, round(1000 / fps)), loop=0, lossless=lossless,
                   quality=100 if lossless else WEBP_QUALITY)


def save_video(frames: np.ndarray, path: str | os.PathLike, *, fps: float = 16,
               lossless: bool = False) -> Path:
    """Write one video `[F, H, W, 3]` (float 0..1) as `.mp4` (H.264) or animated `.webp`.

    Args:
        fps: frames per second (Wan 2.1 / A14B: 16, TI2V-5B: 24).
        lossless: WebP only: lossless frames (bigger files).
    Returns:
        The path written.
    """
    path = Path(path)
    suffix = _check_suffix(path)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    pixels = _check_frames(frames, path)
    if suffix == ".mp4":
        return write_atomic(path, lambda f: _write_mp4(pixels, f, fps))
    return write_atomic(path, lambda f: _write_webp(pixels, f, fps, lossless))


def save_videos(videos: np.ndarray, path: str | os.PathLike, *, fps: float = 16,
                lossless: bool = False) -> list[Path]:
    """Write a batch `[B, F, H, W, 3]`: `out.mp4` for one video, `out_0.mp4`, `out_1.mp4`, … else."""
    videos = np.asarray(videos)
    if videos.ndim != 5:
        raise ValueError(f"expected videos [B, F, H, W, 3], got shape {videos.shape}")
    _check_suffix(Path(path))  # fail before writing any of the batch
    return [save_video(v, p, fps=fps, lossless=lossless)
            for v, p in zip(videos, image_paths(path, len(videos)))]


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode a `.mp4` or animated `.webp` to uint8 frames `[F, H, W, 3]`."""
    path = Path(path)
    suffix = _check_suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video {path}")
    if suffix == ".mp4":
        import av

        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    else:
        from PIL import Image, ImageSequence

        with Image.open(path) as image:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(image)]
    return np.stack(frames)
