"""Shared pieces of the fp32 parity tests: inputs to jax, one jitted forward, the max abs difference,
and a (diffusers VAE, our VAE) pair with the same random weights."""

from __future__ import annotations

import numpy as np


def jnp_inputs(inputs: dict) -> dict:
    """numpy forward kwargs → jax arrays (None stays None)."""
    import jax.numpy as jnp

    return {k: None if v is None else jnp.asarray(v) for k, v in inputs.items()}


def run_jitted(model, inputs: dict) -> np.ndarray:
    """`model(**inputs)` under one `nnx.jit` (one compile instead of one per op), as numpy."""
    from flax import nnx

    return np.asarray(nnx.jit(lambda m, x: m(**x))(model, jnp_inputs(inputs)))


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().float().numpy()
    return np.asarray(x, np.float32)


def max_diff(a, b) -> float:
    """max |a − b| over numpy / jax / torch arrays of the same shape (printed: see it with pytest -s)."""
    a, b = _numpy(a), _numpy(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = float(np.abs(a - b).max())
    print(f"max|Δ| {diff:.2e}")
    return diff


def abstract_model(our_class, config):
    """`our_class(config)` with shapes only, no random init (fast); `load_state_dict` fills it in."""
    from flax import nnx

    return nnx.eval_shape(lambda: our_class(config, rngs=nnx.Rngs(0)))


def build_vae_pair(torch_class, our_class, config_class, overrides: dict):
    """(randomized diffusers VAE in eval mode, our VAE with the same weights): ours is built abstractly
    and filled by `convert.place.load_state_dict`."""
    from jaxdiff.convert.place import load_state_dict
    from vae_fixtures import randomize_vae_

    torch_vae = torch_class(**overrides).eval()
    randomize_vae_(torch_vae)
    ours = abstract_model(our_class, config_class.from_dict(dict(torch_vae.config)))
    load_state_dict(ours, {k: v.numpy() for k, v in torch_vae.state_dict().items()})
    return torch_vae, ours
