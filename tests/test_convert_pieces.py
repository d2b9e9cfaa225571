"""The conversion steps one at a time: read (safetensors_io), transform, place helpers."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jaxdiff.convert.place import flax_shape, to_flax_layout, unit_of
from jaxdiff.convert.safetensors_io import SafetensorsReader, read_header
from jaxdiff.convert.transform import (Take, contiguous, dequantize, find_scales, split_rows,
                                       swap_halves)

TORCH_TO_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16,
                  torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn, torch.float8_e5m2: ml_dtypes.float8_e5m2,
                  torch.int64: np.int64}


def test_reader_returns_the_stored_bits_for_every_dtype(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {str(dtype): (torch.randn((3, 5), generator=gen) * 4).to(dtype) for dtype in TORCH_TO_NUMPY}
    tensors["scalar"] = torch.tensor(0.5)
    tensors["empty"] = torch.empty((0,), dtype=torch.float8_e4m3fn)
    path = tmp_path / "all.safetensors"
    save_file(tensors, str(path))
    with SafetensorsReader([path]) as reader:
        assert sorted(reader.keys()) == sorted(tensors)
        for key, t in tensors.items():
            got = reader[key]
            assert got.shape == tuple(t.shape)
            if key in map(str, TORCH_TO_NUMPY):
                assert got.dtype == TORCH_TO_NUMPY[t.dtype]
            want = t.reshape(-1).view(torch.uint8).numpy()  # raw bytes
            np.testing.assert_array_equal(got.reshape(-1).view(np.uint8), want)


def test_reader_items_stream_in_file_order(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"b": torch.zeros(2), "a": torch.ones(3)}, str(path))
    with SafetensorsReader([path]) as reader:
        keys = [k for k, _ in reader.items()]
    assert sorted(keys) == ["a", "b"] and keys == sorted(keys, key=lambda k: read_header(path)[k].start)


def test_duplicate_key_across_shards_is_refused(tmp_path):
    for name in ("x1.safetensors", "x2.safetensors"):
        save_file({"w": torch.zeros(1)}, str(tmp_path / name))
    with pytest.raises(ValueError, match="'w' appears in both"):
        SafetensorsReader([tmp_path / "x1.safetensors", tmp_path / "x2.safetensors"])


def test_take_splits_rows_and_swaps_halves():
    a = np.arange(12).reshape(6, 2)
    assert Take("a", rows=(2, 4)).shape(a.shape) == (2, 2)
    np.testing.assert_array_equal(Take("a", rows=(2, 4)).apply(a), a[2:4])
    np.testing.assert_array_equal(Take("a", swap_halves=True).apply(a), np.concatenate([a[3:], a[:3]]))
    np.testing.assert_array_equal(swap_halves(swap_halves(a)), a)
    assert Take("c", matrix=True).shape((4, 3, 1, 1)) == (4, 3)
    assert split_rows(7, [2, 2, 3]) == [(0, 2), (2, 4), (4, 7)]
    with pytest.raises(ValueError):
        split_rows(7, [2, 2])


def test_find_scales_pairs_weights_with_their_scales():
    keys = ["a.weight", "a.scale_weight", "a.scale_input", "b.weight", "b.weight_scale", "c.weight",
            "scaled_fp8", "orphan.scale_weight"]
    scales, consumed = find_scales(keys)
    assert scales == {"a.weight": "a.scale_weight", "b.weight": "b.weight_scale"}
    assert consumed == {"a.scale_weight", "a.scale_input", "b.weight_scale", "scaled_fp8"}


def test_dequantize_is_float32_weight_times_scale():
    w = np.array([[1.5, -2.0], [0.25, 448.0]], ml_dtypes.float8_e4m3fn)
    out = dequantize(w, np.array(0.01, np.float32), np.float32)
    np.testing.assert_array_equal(out, w.astype(np.float32) * np.float32(0.01))
    assert dequantize(w, None, ml_dtypes.bfloat16).dtype == ml_dtypes.bfloat16
    with pytest.raises(ValueError, match="per-tensor"):
        dequantize(w, np.ones(2, np.float32), np.float32)


@pytest.mark.parametrize("shape", [(8, 3), (8, 3, 5), (8, 3, 3, 5), (8, 3, 2, 3, 5), (7,)])
def test_flax_shape_predicts_to_flax_layout(shape):
    assert flax_shape("kernel", shape) == to_flax_layout("kernel", np.zeros(shape)).shape
    assert flax_shape("bias", shape) == shape


def test_units_are_list_elements_or_top_level_modules():
    assert unit_of(("transformer_blocks", 3, "attn", "to_q", "kernel")) == ("transformer_blocks", 3)
    assert unit_of(("x_embedder", "kernel")) == ("x_embedder",)
    assert unit_of(("encoder", "down_blocks", 0, "resnets", 0, "conv1", "kernel")) == (
        "encoder", "down_blocks", 0)


@pytest.mark.parametrize("shape", [(600, 300), (3, 1000), (1, 1)])
def test_contiguous_transpose_equals_numpy(shape):
    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for view in (a.T, a[1:].T if shape[0] > 1 else a.T, a):
        for dtype in (np.float32, ml_dtypes.bfloat16):
            out = contiguous(view, dtype)
            assert out.flags.c_contiguous and out.dtype == dtype
            np.testing.assert_array_equal(out, view.astype(dtype))
