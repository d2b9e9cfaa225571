"""`jaxdiff bench` (benchmarks/run.py) and the FLOP count behind its TFLOP/s and MFU.

Runs tiny shapes on CPU; asserts fields and arithmetic, never wall-time numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxdiff.benchmarks import flops, run as bench
from jaxdiff.kernels.attention import attention_options
from jaxdiff.models_flax.flux import FluxConfig, FluxTransformer2DModel
from jaxdiff.models_flax.wan import WanConfig, WanTransformer3DModel

# the analytical count leaves out norms, activations, softmax and RoPE: a few percent at tiny widths
FLOP_AGREEMENT = 0.05
TINY_FLUX = ["--model", "flux-dev", "--shape", "reduced", "--layers", "1", "--single-layers", "1",
             "--heads", "2", "--height", "64", "--width", "64", "--text-tokens", "8",
             "--repeats", "2", "--steps", "4"]
TINY_WAN = ["--model", "wan2.1-t2v-1.3b", "--shape", "reduced", "--layers", "1", "--heads", "2",
            "--height", "64", "--width", "64", "--frames", "5", "--text-tokens", "8", "--repeats", "1"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def xla_flops(model, kwargs) -> float:
    """XLA's own count for one jitted forward, with plain XLA attention (a dot XLA can see)."""
    graphdef, state = nnx.split(model)
    with attention_options(implementation="xla"):
        compiled = jax.jit(lambda s, kw: nnx.merge(graphdef, s)(**kw)).lower(state, kwargs).compile()
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def test_flux_flop_count_matches_xla_cost_analysis():
    config = FluxConfig(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                        attention_head_dim=32, num_attention_heads=4, joint_attention_dim=64,
                        pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(8, 12, 12))
    model = nnx.eval_shape(lambda: FluxTransformer2DModel(config, rngs=nnx.Rngs(0)))
    b, si, st = 1, 64, 16
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    kwargs = dict(hidden_states=f32(b, si, 16), encoder_hidden_states=f32(b, st, 64),
                  pooled_projections=f32(b, 32), timestep=f32(b), img_ids=f32(si, 3), txt_ids=f32(st, 3),
                  guidance=f32(b))
    ours = flops.total(flops.flux_forward(config, batch=b, image_tokens=si, text_tokens=st))
    xla = xla_flops(model, kwargs)
    assert ours <= xla  # we count a subset of what XLA counts
    assert ours == pytest.approx(xla, rel=FLOP_AGREEMENT)


def test_wan_flop_count_matches_xla_cost_analysis():
    config = WanConfig(num_attention_heads=4, attention_head_dim=24, ffn_dim=192, num_layers=1,
                       in_channels=8, out_channels=8, text_dim=64, freq_dim=32, rope_max_seq_len=32)
    model = nnx.eval_shape(lambda: WanTransformer3DModel(config, rngs=nnx.Rngs(0)))
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    kwargs = dict(hidden_states=f32(2, 8, 3, 8, 8), timestep=f32(2), encoder_hidden_states=f32(2, 16, 64))
    ours = flops.total(flops.wan_forward(config, batch=2, video_tokens=3 * 4 * 4, text_tokens=16))
    xla = xla_flops(model, kwargs)
    assert ours <= xla
    assert ours == pytest.approx(xla, rel=FLOP_AGREEMENT)


def test_flop_terms_scale_as_documented():
    config = FluxConfig(num_layers=1, num_single_layers=0)
    one = flops.flux_forward(config, batch=1, image_tokens=256, text_tokens=64)
    two = flops.flux_forward(config, batch=2, image_tokens=256, text_tokens=64)
    assert two["attention"] == 2 * one["attention"] == 2 * 4 * 24 * 320 * 320 * 128
    assert flops.matmul(2, 3, 4) == 48


def test_flux_bench_prints_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "flux.json"
    assert bench.run(parse(TINY_FLUX + ["--json", str(path), "--peak-tflops", "2", "--quiet"])) == 0
    out = capsys.readouterr().out
    for header in bench.TABLE_HEADERS:
        assert header in out
    assert "flux-dev (1+1 blocks, D=256)" in out
    result = json.loads(path.read_text())
    for key in ("date", "device", "model", "shape", "dtype", "mesh", "attention", "compile_s", "step_s",
                "steps", "run_s", "per_second", "flops", "achieved_tflops", "mfu", "memory", "command"):
        assert key in result, key
    assert result["device"]["backend"] == "cpu" and result["device"]["devices_used"] == 1
    assert set(result["compile_s"]) == {"cold", "warm"}
    assert len(result["step_s"]["times"]) == 2 and result["step_s"]["min"] <= result["step_s"]["median"]
    assert result["shape"]["image_tokens"] == (64 // 16) ** 2 and result["transformer_batch"] == 1
    assert result["run_s"] == pytest.approx(4 * result["step_s"]["median"])
    assert result["per_second"] == pytest.approx(1 / result["run_s"])
    assert result["achieved_tflops"] == pytest.approx(result["flops"]["step"] / result["step_s"]["median"] / 1e12)
    # MFU against the fake accelerator's 2 TFLOP/s
    assert result["peak_tflops_per_device"] == 2.0 and result["peak_source"] == "--peak-tflops"
    assert result["mfu"] == pytest.approx(result["achieved_tflops"] / 2.0)
    assert result["memory"]["peak_bytes"] > 0 and "memory_analysis" in result["memory"]["source"]
    assert "--peak-tflops 2.0" in result["command"]


def test_wan_bench_runs_the_cfg_step_and_summarizes(tmp_path, capsys):
    path = tmp_path / "wan.json"
    assert bench.run(parse(TINY_WAN + ["--json", str(path), "--quiet", "--end-to-end", "--steps", "2"])) == 0
    result = json.loads(path.read_text())
    assert result["transformer_batch"] == 2 and "CFG" in result["step"]  # [cond; uncond]
    assert result["run_measured"] and result["run_s"] > 0  # the pipeline's own call, timed
    assert result["unit"] == "frames" and result["per_second"] == pytest.approx(5 / result["run_s"])
    assert result["mfu"] is None  # CPU: no peak known
    capsys.readouterr()
    assert bench.run(parse(["--summarize", str(path), str(path)])) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert len(table) == 4 and "wan2.1-t2v-1.3b (1 layers, D=256)" in table[2]


def test_bench_on_a_mesh_of_fake_devices_counts_them_in_mfu(tmp_path):
    """`--mesh` on 4 fake CPU devices (its own process: XLA_FLAGS must precede jax's import)."""
    path = tmp_path / "mesh.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    argv = TINY_FLUX + ["--batch", "2", "--mesh", "fsdp=2,tensor=2", "--init", "device",  # sharded init
                        "--peak-tflops", "1", "--quiet", "--json", str(path)]
    done = subprocess.run([sys.executable, "-m", "jaxdiff.benchmarks.run", *argv], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(path.read_text())
    assert result["mesh"] == "fsdp=2,tensor=2" and result["device"]["devices_used"] == 4
    assert result["mfu"] == pytest.approx(result["achieved_tflops"] / 4)


def test_mfu_uses_the_device_table_and_divides_by_devices():
    peak, source = bench.peak_tflops({"device_kind": "NVIDIA H100 80GB HBM3"}, "bfloat16", None)
    assert peak == 989 and "h100" in source
    assert bench.peak_tflops({"device_kind": "TPU v5 lite"}, "bfloat16", None)[0] == 197
    assert bench.peak_tflops({"device_kind": "cpu"}, "float32", None)[0] is None
    assert bench.utilisation(4e12, 2.0, 1.0, 1)["mfu"] == pytest.approx(2.0)
    assert bench.utilisation(4e12, 2.0, 1.0, 4)["mfu"] == pytest.approx(0.5)


@pytest.mark.parametrize("argv, message", [
    (["--model", "flux-pro"], "unknown model preset 'flux-pro'; known: flux-dev"),
    (["--model", "wan2.1-t2v-1.3b", "--single-layers", "2"], "--single-layers applies to Flux"),
    (["--model", "flux-dev", "--frames", "9"], "--frames applies to Wan"),
    (["--model", "wan2.1-t2v-1.3b", "--frames", "8"], "frames must be 4k+1"),
    (["--model", "flux-dev", "--height", "72"], "multiples of 16"),
    (["--layers", "0"], "--layers must be >= 1"),
    (["--peak-tflops", "0", *TINY_FLUX[2:]], "--peak-tflops must be > 0"),
    (["--sequence-parallel", "ulysses"], "needs --mesh"),
    (["--summarize", "no/such.json"], "no such file"),
    (["--model", "wan2.1-i2v-14b", "--end-to-end"], "is image-to-video"),
])
def test_bad_options_are_errors_naming_the_problem(argv, message, capsys):
    assert bench.run(parse(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxdiff bench: error:") and message in err
