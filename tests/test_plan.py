"""`jaxdiff plan`: exact per-device parameters, activation estimates checked against a compiled program,
the README configurations, JSON output and errors. No weights, no devices beyond the CPU."""

from __future__ import annotations

import argparse
import json
import math

import jax
import pytest

from jaxdiff.pipelines import plan, plan_cli
from jaxdiff.pipelines.presets import get_preset

GIB = 2 ** 30
WAN14 = ["--model", "wan2.1-t2v-14b", "--height", "720", "--width", "1280", "--frames", "81"]


def request(argv: list[str], mesh: str = "fsdp=1") -> plan.Request:
    parser = argparse.ArgumentParser()
    plan_cli.add_arguments(parser)
    return plan_cli.request_from_args(parser.parse_args(argv), mesh)


def leaf_bytes(state) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))


# ----------------------------------------------------------------------------- parameters


def test_fsdp_splits_parameters_evenly_and_totals_match_eval_shape():
    state = plan.abstract_transformer(get_preset("wan2.1-t2v-14b"), "bfloat16")
    total, one = plan.sharded_bytes(state, {"fsdp": 1})
    assert total == one == leaf_bytes(state)
    assert 14.0e9 < total / 2 < 14.6e9  # Wan2.1-14B: ~14.3 B parameters
    total8, per_device = plan.sharded_bytes(state, {"fsdp": 8})
    assert total8 == total
    assert per_device == total / 8  # every Wan-14B parameter has a dimension fsdp=8 divides


def test_tensor_sharding_splits_heads_and_ffn():
    state = plan.abstract_transformer(get_preset("wan2.1-t2v-14b"), "bfloat16")
    total, per_device = plan.sharded_bytes(state, {"tensor": 8})
    # q/k/v/out and FFN matrices split 8 ways; embedders, norms and modulation tables stay whole
    assert total / 8 < per_device < 1.1 * total / 8
    sp = plan.splits(request(WAN14, "tensor=8"))
    assert (sp.heads, sp.ffn_split, sp.batch) == (5, 8, 2)  # 40 heads / 8; CFG batch 2 replicated


def test_two_experts_count_twice():
    one = plan.plan(request(["--model", "wan2.1-t2v-14b"], "fsdp=8"))
    two = plan.plan(request(["--model", "wan2.2-t2v-a14b"], "fsdp=8"))
    assert two["transformer_params"] == 2 * one["transformer_params"]


# ----------------------------------------------------------------------------- activations


def test_flash_attention_needs_far_less_than_xla_at_video_length():
    flash = plan.transformer_activations(request(WAN14, "fsdp=8"))
    xla = plan.transformer_activations(request(WAN14 + ["--attention", "xla"], "fsdp=8"))
    assert xla["phase"] == "self-attention"
    # 2 × 40 heads × 75600² fp32 logits + bf16 probabilities ≈ 2.5 TiB
    assert xla["parts"]["attention workspace"] > 2 * 2 ** 40
    assert flash["peak"] < 16 * GIB


def test_batch_and_sequence_split_only_where_the_mesh_divides_them():
    r = plan.plan(request(WAN14, "fsdp=8"))
    assert r["splits"]["batch"] == 2 and any("replicated" in n for n in r["notes"])
    r = plan.plan(request(WAN14, "fsdp=2,seq=4"))  # 21 × 45 × 80 = 75 600 tokens: seq=4 divides them
    assert r["splits"]["batch"] == 1 and r["splits"]["tokens"] == 75600 // 4
    assert r["splits"]["attention_tokens"] == 75600 // 4
    assert not any("does not divide" in n for n in r["notes"])
    odd = ["--model", "wan2.1-t2v-14b", "--height", "720", "--width", "1264", "--frames", "81"]
    r = plan.plan(request(odd, "seq=2"))  # 21 × 45 × 79 = 74 655 tokens: seq splits only attention
    assert r["splits"]["tokens"] == 74655 and r["splits"]["attention_tokens"] == 74656 // 2
    assert any("does not divide the 74655 tokens" in n for n in r["notes"])


def test_compiled_one_block_temp_bytes_match_the_estimate():
    """A real cross-check: XLA's buffer assignment for a one-block Wan 1.3B at a shape where the
    [B, H, S, S] logits dominate, for Flux where the MLP does, and for per-token modulation (TI2V)."""
    for argv in (["--model", "wan2.1-t2v-1.3b", "--height", "192", "--width", "320", "--frames", "17"],
                 ["--model", "flux-schnell", "--height", "256", "--width", "256"],
                 ["--model", "wan2.2-ti2v-5b", "--height", "128", "--width", "256", "--frames", "17"]):
        req = request(argv + ["--attention", "xla", "--dtype", "float32"])
        check = plan.compile_check(req)
        assert 0.5 < check["ratio"] < 2.0, (argv, check)
        assert 0.5 < check["vae_bytes"] / check["vae_estimate_bytes"] < 2.0, (argv, check)


# ----------------------------------------------------------------------------- README configurations


@pytest.mark.parametrize("hbm,mesh,fits", [  # the README's table rows, and two more
    ("v5e", "fsdp=2,seq=4", True), ("v5e", "fsdp=8", False), ("v6e", "fsdp=2,seq=4", True),
    ("h100", "fsdp=2,seq=4", True), ("v5e", "fsdp=2,tensor=4", True), ("v6e", "fsdp=8", True)])
def test_readme_configurations(hbm, mesh, fits):
    r = plan.plan(request(WAN14, mesh), hbm)
    assert r["devices"] == 8 and r["image_tokens"] == 21 * 45 * 80
    assert 3.3 * GIB < r["transformer_params"] < 3.5 * GIB
    assert r["transformer_params"] + r["vae_params"] < r["denoise_peak"] <= r["peak"]
    assert 0 < r["activations"] < 16 * GIB and 0 < r["vae_decode"] < 16 * GIB
    assert r["fits"] is fits and r["headroom"] == r["usable"] - r["peak"]


def test_mesh_search_covers_every_split():
    rows = plan.search(request(["--model", "wan2.1-t2v-1.3b"]), 4, "v5e")
    assert sorted(r["mesh"] for r in rows) == sorted(
        ["fsdp=4", "tensor=4", "seq=4", "fsdp=2,tensor=2", "fsdp=2,seq=2", "tensor=2,seq=2"])
    assert [r["peak"] for r in rows] == sorted(r["peak"] for r in rows)
    assert "fsdp=2,tensor=2" in plan_cli.format_search(rows)


# ----------------------------------------------------------------------------- CLI


def test_mesh_axes_match_sharding():
    from jaxdiff.sharding.mesh import MESH_AXES

    assert plan.MESH_AXES == MESH_AXES


def test_table_output(capsys):
    assert plan_cli.main(WAN14 + ["--mesh", "fsdp=8", "--hbm", "h100"]) == 0
    out = capsys.readouterr().out
    assert "transformer parameters [exact]" in out and "FITS" in out and "text encoders" in out


def test_json_output(capsys):
    assert plan_cli.main(["--model", "flux-dev", "--mesh", "fsdp=2,tensor=2", "--hbm", "24", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["devices"] == 4 and r["usable"] == 24 * GIB and r["frames"] == 1
    assert r["image_tokens"] == 4096 and r["fits"] == (r["peak"] <= r["usable"])
    assert set(r["kv"]) >= {"self-attention K+V per layer", "layers"}


def test_config_path(tmp_path):
    cfg = get_preset("wan2.1-t2v-1.3b").transformer.to_dict()
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", **cfg}))
    args = ["--config", str(tmp_path), "--height", "480", "--width", "832", "--frames", "81", "--json"]
    assert plan_cli.main(args) == 0
    converted = tmp_path / "converted"
    converted.mkdir()
    (converted / "jaxdiff.json").write_text(json.dumps(
        {"format": "jaxdiff", "class_name": "WanTransformer3DModel", "config": cfg}))
    assert plan.preset_from_config(str(converted)).transformer == get_preset("wan2.1-t2v-1.3b").transformer
    (tmp_path / "vae.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    assert plan_cli.main(["--config", str(tmp_path / "vae.json")]) == 2


@pytest.mark.parametrize("argv,message", [
    (["--model", "sdxl"], "unknown model preset 'sdxl'"),
    (["--model", "flux-dev", "--hbm", "tpu9"], "unknown accelerator 'tpu9'"),
    (["--model", "flux-dev", "--mesh", "fsdp=2,model=2"], "unknown mesh axis 'model'"),
    (["--model", "flux-dev", "--mesh", "fsdp=-1"], "give every axis a size"),
    (WAN14[:-1] + ["80"], "frames must be 4k+1"),
    (["--model", "wan2.1-t2v-14b", "--height", "700"], "multiples of 16"),
    (["--model", "flux-dev", "--width", "1000"], "multiples of 16"),
    (["--model", "flux-dev", "--dtype", "int8"], "dtype"),
    (["--model", "flux-dev", "--mesh", "auto"], "--devices"),
])
def test_errors(argv, message, capsys):
    assert plan_cli.main(argv) == 2
    assert message in capsys.readouterr().err
