"""Array transforms between reading and placing (step 3 of read → rename → transform → place).

A `Take` says how one target tensor comes out of one source tensor: the whole thing, a row range of
a fused projection (BFL `qkv`, `linear1`), or with its two halves swapped (BFL's final
`adaLN_modulation` is (shift, scale); diffusers' `norm_out` is (scale, shift)). fp8 weights are
dequantised here, `weight · scale` in float32, then cast to the target dtype.
Imports numpy/ml_dtypes only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

# ComfyUI "fp8 scaled" files: `<m>.scale_weight` (ComfyUI) or `<m>.weight_scale` (others) hold the
# per-tensor dequantisation scale of `<m>.weight`; input scales are activation-side and unused here.
WEIGHT_SCALE_SUFFIXES = ("scale_weight", "weight_scale")
IGNORED_SUFFIXES = ("scale_input", "input_scale")
IGNORED_KEYS = ("scaled_fp8",)  # ComfyUI's marker tensor announcing a scaled-fp8 file


@dataclass(frozen=True)
class Take:
    """Target = `source[rows[0]:rows[1]]` (all rows when None), halves swapped when `swap_halves`,
    squeezed to a matrix when `matrix`."""

    source: str
    rows: tuple[int, int] | None = None
    swap_halves: bool = False
    matrix: bool = False  # a 1×1 conv kernel `[O, I, 1, 1]` becomes a Linear weight `[O, I]`

    def shape(self, source_shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = tuple(source_shape)
        if self.rows is not None:
            shape = (self.rows[1] - self.rows[0],) + shape[1:]
        if self.matrix and len(shape) == 4:
            shape = shape[:2]
        return shape

    def apply(self, array: np.ndarray) -> np.ndarray:
        if self.rows is not None:
            array = array[self.rows[0]:self.rows[1]]
        if self.swap_halves:
            array = swap_halves(array)
        if self.matrix and array.ndim == 4:
            array = array.reshape(array.shape[:2])
        return array


def swap_halves(array: np.ndarray) -> np.ndarray:
    """`[a; b]` → `[b; a]` along axis 0 (shift/scale ↔ scale/shift)."""
    half = array.shape[0] // 2
    return np.concatenate([array[half:], array[:half]], axis=0)


def split_rows(total: int, sizes: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive row ranges of the given sizes; they must cover `total` exactly."""
    ranges, start = [], 0
    for size in sizes:
        ranges.append((start, start + size))
        start += size
    if start != total:
        raise ValueError(f"cannot split {total} rows into {list(sizes)}")
    return ranges


def find_scales(keys: Iterable[str]) -> tuple[dict[str, str], set[str]]:
    """Scale bookkeeping of a key set: (`{weight_key: scale_key}`, keys consumed without a target).

    A scale key whose weight is absent is left out of both, so it surfaces as an unexpected key.
    """
    keys = set(keys)
    scales, consumed = {}, set()
    for key in keys:
        module, _, leaf = key.rpartition(".")
        if leaf in WEIGHT_SCALE_SUFFIXES:
            weight = f"{module}.weight" if module else "weight"
            if weight in keys:
                scales[weight] = key
                consumed.add(key)
        elif leaf in IGNORED_SUFFIXES or key.rpartition(".")[2] in IGNORED_KEYS:
            consumed.add(key)
    return scales, consumed


def dequantize(weight: np.ndarray, scale: np.ndarray | None, dtype) -> np.ndarray:
    """fp8 (or any) `weight` × per-tensor `scale`, computed in float32, cast to `dtype`."""
    w = weight.astype(np.float32)
    if scale is not None:
        s = np.asarray(scale, np.float32)
        if s.size != 1:
            raise ValueError(f"only per-tensor fp8 scales are supported, got shape {s.shape}")
        w = w * s.reshape(())
    return w.astype(dtype)


TRANSPOSE_BLOCK = 256  # columns per step: numpy's strided transpose copy is ~4× slower than blocks


def contiguous(array: np.ndarray, dtype) -> np.ndarray:
    """A C-contiguous copy of `array` in `dtype`; transposed matrices are copied block by block."""
    if array.ndim == 2 and not array.flags.c_contiguous and array.T.flags.c_contiguous:
        out = np.empty(array.shape, dtype)
        for i in range(0, array.shape[1], TRANSPOSE_BLOCK):
            out[:, i:i + TRANSPOSE_BLOCK] = array[:, i:i + TRANSPOSE_BLOCK]
        return out
    return np.ascontiguousarray(array, dtype=dtype)
