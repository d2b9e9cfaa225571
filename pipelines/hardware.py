"""Accelerator facts: memory per chip and dense peak TFLOP/s, for `jaxdiff plan` and `jaxdiff bench`.

Figures are vendor datasheet numbers per chip (dense, no sparsity): bf16 for matrix units, fp32 for
NVIDIA's non-tensor-core rate. `memory_gib` is the HBM a program can use per chip as sold (the usable
part is a little lower: runtimes reserve some, see `usable_fraction`). Matching a live device uses
`jax.Device.device_kind` substrings; CPUs have no entry (MFU is then not reported).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str  # short name used on the command line, e.g. "v5e", "h100"
    kind_patterns: tuple[str, ...]  # lower-case substrings of jax's device_kind that identify it
    memory_gib: float  # HBM per chip
    peak_bf16_tflops: float  # dense bf16 matrix peak per chip
    peak_fp32_tflops: float | None = None  # dense fp32 (None = not a meaningful figure)
    usable_fraction: float = 0.94  # of memory_gib usable by one program (runtime reserves the rest)

    def peak_tflops(self, dtype: str) -> float:
        """Peak for a compute dtype name ("bfloat16"/"float16" → bf16 rate, "float32" → fp32 rate or bf16)."""
        if dtype == "float32" and self.peak_fp32_tflops is not None:
            return self.peak_fp32_tflops
        return self.peak_bf16_tflops

    @property
    def usable_bytes(self) -> int:
        return int(self.memory_gib * self.usable_fraction * 2**30)


ACCELERATORS: dict[str, Accelerator] = {a.name: a for a in (
    Accelerator("v4", ("tpu v4",), 32, 275),
    Accelerator("v5e", ("tpu v5 lite", "tpu v5e"), 16, 197),
    Accelerator("v5p", ("tpu v5p", "tpu v5"), 95, 459),
    Accelerator("v6e", ("tpu v6 lite", "tpu v6e", "tpu v6"), 32, 918),
    Accelerator("v7x", ("tpu7x", "tpu v7"), 192, 2307),
    Accelerator("a100", ("a100",), 80, 312, 19.5),
    Accelerator("h100", ("h100",), 80, 989, 67),
    Accelerator("h200", ("h200",), 141, 989, 67),
)}


def get_accelerator(name: str) -> Accelerator:
    """By short name (case-insensitive), e.g. "v5e", "H100"; ValueError lists the known ones."""
    acc = ACCELERATORS.get(name.strip().lower())
    if acc is None:
        raise ValueError(f"unknown accelerator {name!r}; known: {', '.join(ACCELERATORS)}")
    return acc


def match_device_kind(device_kind: str) -> Accelerator | None:
    """The accelerator a `jax.Device.device_kind` string names (first pattern wins in table order,
    most specific patterns first: "tpu v5 lite" before "tpu v5"), or None (CPU, unknown)."""
    kind = device_kind.lower()
    for acc in sorted(ACCELERATORS.values(), key=lambda a: -max(len(p) for p in a.kind_patterns)):
        if any(p in kind for p in acc.kind_patterns):
            return acc
    return None
