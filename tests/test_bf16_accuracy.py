"""bf16 accuracy: our Flux and Wan transformers in bfloat16 stay about as close to the fp32 result as
diffusers' own modules in bfloat16 (torch), at head dim 128 (the released models' width per head).

bf16 outputs cannot match fp32 to 1e-5 (the fp32 parity tests do that), so the yardstick here is
diffusers in bf16: against the fp32 torch output, our mean abs error may be at most MEAN_RATIO × torch's
and our max abs error at most MAX_RATIO × torch's. Measured (2026-11-23): Flux mean 0.0020 vs torch 0.0085,
max 0.0074 vs 0.054 (ours keeps RoPE tables, softmax and modulation in float32); Wan mean 0.0036 vs
0.0037, max 0.019 vs 0.016 (both keep the same ops in float32: the max differs by rounding luck). A bf16
bug that loses precision — an op downcast too early, a bf16 RoPE angle — costs several times that and
fails here while every fp32 test stays green.
"""

from __future__ import annotations

import numpy as np
import pytest

from flux_fixtures import randomize_, tiny_flux_config, tiny_flux_inputs, torch_flux_forward
from wan_fixtures import randomize_wan_, tiny_wan_config, tiny_wan_inputs, torch_wan_forward

MEAN_RATIO = 1.1
MAX_RATIO = 1.5
BF16_INPUTS = ("hidden_states", "encoder_hidden_states", "pooled_projections")


def _flux():
    import torch
    from diffusers import FluxTransformer2DModel

    config = tiny_flux_config(True, num_layers=2, num_single_layers=2)
    config.update(attention_head_dim=128, axes_dims_rope=(16, 56, 56))
    torch.manual_seed(0)
    return randomize_(FluxTransformer2DModel(**config), 0, std=0.02).eval(), tiny_flux_inputs(config), \
        torch_flux_forward


def _wan():
    import torch
    from diffusers import WanTransformer3DModel

    config = tiny_wan_config(attention_head_dim=128, num_layers=2, ffn_dim=128)
    torch.manual_seed(0)
    return randomize_wan_(WanTransformer3DModel(**config), 0).eval(), tiny_wan_inputs(config), \
        torch_wan_forward


@pytest.mark.parametrize("build", [_flux, _wan], ids=["flux", "wan"])
def test_bf16_error_no_worse_than_diffusers_bf16(tmp_path, build):
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from jaxdiff.convert import load_model

    model, inputs, torch_forward = build()
    model.save_pretrained(tmp_path)
    reference = torch_forward(model, inputs)  # fp32 torch
    ours = load_model(tmp_path, dtype="bfloat16")
    args = {k: None if v is None else jnp.asarray(v, jnp.bfloat16 if k in BF16_INPUTS else jnp.float32)
            for k, v in inputs.items()}
    out = np.asarray(nnx.jit(lambda m, a: m(**a))(ours, args), np.float32)

    model = model.to(torch.bfloat16)
    kwargs = {k: None if v is None else torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
    for k in BF16_INPUTS:
        if kwargs.get(k) is not None:
            kwargs[k] = kwargs[k].to(torch.bfloat16)
    with torch.no_grad():
        theirs = model(**kwargs, return_dict=False)[0].float().numpy()

    ours_err, theirs_err = np.abs(out - reference), np.abs(theirs - reference)
    assert np.abs(reference).max() > 0.1
    assert theirs_err.max() > 0  # bf16 really ran on their side
    assert ours_err.mean() <= MEAN_RATIO * theirs_err.mean(), (ours_err.mean(), theirs_err.mean())
    assert ours_err.max() <= MAX_RATIO * theirs_err.max(), (ours_err.max(), theirs_err.max())
