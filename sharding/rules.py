"""Logical axis → mesh axis rules. Data, not code: models name logical axes only.

Logical names used by the models:
  embed     model width (hidden size)             mlp      FFN / projection output width
  heads     attention heads × head_dim outputs    kv       key/value projection width
  vocab     token embedding rows                  conv_in / conv_out   convolution channels
  batch, seq  activation axes

Mesh axes (sharding/mesh.py MESH_AXES): `data` (batch only, parameters replicated), `fsdp` (batch and
parameters: `embed`), `tensor` (Megatron-style: q/k/v and FFN-in column-parallel on `heads`/`mlp`,
out-projections row-parallel on the same names), `seq` (activations' sequence, Ulysses/ring attention;
parameters are also split over it on `embed`, as a second FSDP axis, so a seq group does not hold a
full copy of the weights each — MaxText shards `embed` over its sequence axis the same way).
A rule may list several mesh axes; axes missing from the mesh, already used by an earlier dimension
of the same array, or not dividing the dimension are dropped (`mesh.fit_spec`).
"""

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", "seq"),
    ("embed", ("fsdp", "seq")),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", None),
)

# Parameters of rank ≥ FSDP_FALLBACK_MIN_NDIM whose logical names give no dimension to this mesh axis
# (e.g. the timestep MLP's `[256, D]` (None, "mlp") kernel, `heads`/`mlp` biases, (None, None, None)
# tables, conv kernels) are sharded over it along their largest free dimension it divides, as FSDP
# shards every parameter: memory per device ≈ total / fsdp rather than total / fsdp + everything the
# rules leave unnamed. Only dimensions no rule claimed are used. None disables the fallback.
FSDP_FALLBACK_AXIS: str | None = "fsdp"
FSDP_FALLBACK_MIN_NDIM = 1
