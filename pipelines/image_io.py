"""Write pipeline images (`[B, H, W, C]` float 0..1 numpy) as PNG files with Pillow, atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def to_uint8(images: np.ndarray) -> np.ndarray:
    """`[..., C]` float 0..1 → uint8 0..255 (round half to even, like diffusers' `numpy_to_pil`)."""
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def image_paths(path: str | os.PathLike, count: int) -> list[Path]:
    """`out.png` for one image; `out_0.png`, `out_1.png`, … for a batch."""
    path = Path(path)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i}{path.suffix or '.png'}") for i in range(count)]


def _file_mode() -> int:
    """Permissions a plain `open()` would give (mkstemp's temp files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: Path, write) -> Path:
    """`write(binary file)` into a temp file beside `path`, then renamed onto it: a failure or an
    interrupt leaves no half-written file (the temp file is removed). Returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write one `[H, W, C]` float image; a temp file in the same folder is renamed into place."""
    from PIL import Image

    path = Path(path)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in CHANNEL_MODES:
        raise ValueError(f"expected an image [H, W, C] with C in {sorted(CHANNEL_MODES)}, got "
                         f"{image.shape}")
    if not np.isfinite(image).all():
        raise ValueError(f"image for {path} contains NaN or inf")
    pixels = to_uint8(image)
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    return write_atomic(path, lambda f: Image.fromarray(pixels).save(f, format="PNG"))


def save_images(images: np.ndarray, path: str | os.PathLike) -> list[Path]:
    """Write a batch `[B, H, W, C]` of 0..1 floats as PNG(s); returns the paths written."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images [B, H, W, C], got shape {images.shape}")
    return [save_png(image, p) for image, p in zip(images, image_paths(path, len(images)))]


def read_image(path: str | os.PathLike, what: str = "--image") -> np.ndarray:
    """An image file → uint8 RGB `[H, W, 3]` at its own size (`resize_frames` fits it)."""
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {path}")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 frames `[F, H, W, 3]` (or images `[B, H, W, 3]`) resized (Lanczos, like diffusers'
    preprocessing) to `height` × `width`."""
    from PIL import Image

    if frames.shape[1:3] == (height, width):
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), resample=Image.Resampling.LANCZOS))
                     for f in frames])


def fitted_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(height, width) rounded down to `multiple` (at least `multiple`), as diffusers does."""
    return max(multiple, height // multiple * multiple), max(multiple, width // multiple * multiple)
