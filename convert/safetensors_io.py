"""Read safetensors files one tensor at a time (step 1 of read → rename → transform → place).

Our own header parser instead of `safe_open`: it handles BF16 and FP8 as numpy arrays via
`ml_dtypes` (safetensors' numpy backend does not), validates the header against the file size (a
truncated download fails at open, naming the file), and reads each tensor with one `readinto` into a
fresh array — no mmap, so resident memory is one tensor, not the pages of the whole file.
Imports numpy/ml_dtypes only.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import ml_dtypes
import numpy as np

HEADER_LEN_BYTES = 8
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit on the JSON header
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, safetensors dtype name, shape and absolute byte range."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numpy_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def refuse_pickle(path: Path) -> None:
    """Pickle checkpoints can execute arbitrary code when loaded: we never open them."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(
            f"{path}: refusing to load a pickle checkpoint ({path.suffix}) — unpickling can execute "
            "arbitrary code. Convert it to .safetensors first (e.g. with safetensors.torch.save_file "
            "in a trusted environment).")


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """Parse and validate the header of a safetensors file: `{key: TensorInfo}` (metadata dropped)."""
    path = Path(path)
    refuse_pickle(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such safetensors file")
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_LEN_BYTES)
        if len(head) < HEADER_LEN_BYTES:
            raise ValueError(f"{path}: truncated or not a safetensors file ({file_size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"{path}: not a safetensors file (header length {n} is implausible)")
        if HEADER_LEN_BYTES + n > file_size:
            raise ValueError(f"{path}: truncated file: the header needs {HEADER_LEN_BYTES + n} bytes, "
                             f"the file has {file_size}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a safetensors file (bad JSON header: {e})") from None
    data_start = HEADER_LEN_BYTES + n
    infos = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        dtype, shape, (lo, hi) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        if dtype not in DTYPES:
            raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {dtype}")
        info = TensorInfo(path, dtype, shape, data_start + lo, data_start + hi)
        if hi - lo != info.size * DTYPES[dtype].itemsize:
            raise ValueError(f"{path}: tensor {key!r} byte range {lo}..{hi} does not hold "
                             f"{dtype}{list(shape)}")
        if info.end > file_size:
            raise ValueError(f"{path}: truncated file: tensor {key!r} ends at byte {info.end}, "
                             f"the file has {file_size} bytes")
        infos[key] = info
    return infos


class SafetensorsReader:
    """Lazy view over one or more safetensors files (a single file or the shards of one model).

    `reader[key]` reads that tensor from disk into a new numpy array; nothing else stays in memory.
    Use as a context manager (or call `close`) to release the open files.
    """

    def __init__(self, files: Iterable[str | Path]):
        self.files = [Path(f) for f in files]
        self.infos: dict[str, TensorInfo] = {}
        for f in self.files:
            for key, info in read_header(f).items():
                if key in self.infos:
                    raise ValueError(f"tensor {key!r} appears in both {self.infos[key].file} and {f}")
                self.infos[key] = info
        self._handles: dict[Path, object] = {}

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles.clear()

    def keys(self) -> list[str]:
        return list(self.infos)

    def __contains__(self, key: str) -> bool:
        return key in self.infos

    def __len__(self) -> int:
        return len(self.infos)

    def __getitem__(self, key: str) -> np.ndarray:
        info = self.infos[key]
        handle = self._handles.get(info.file)
        if handle is None:
            handle = self._handles[info.file] = open(info.file, "rb")
        out = np.empty(info.shape, info.numpy_dtype)
        handle.seek(info.start)
        got = handle.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        if got != info.end - info.start:
            raise ValueError(f"{info.file}: truncated file: tensor {key!r} needs "
                             f"{info.end - info.start} bytes at {info.start}, read {got}")
        return out

    def items(self, keys: Iterable[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """Yields `(key, array)` one at a time, in file order (sequential reads)."""
        keys = list(self.infos if keys is None else keys)
        for key in sorted(keys, key=lambda k: (str(self.infos[k].file), self.infos[k].start)):
            yield key, self[key]
