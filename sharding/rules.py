"""Logical axis → mesh axis rules. Data, not code: models name logical axes only.

Logical names used by the models:
  embed     model width (hidden size)             mlp      FFN / projection output width
  heads     attention heads × head_dim outputs    kv       key/value projection width
  vocab     token embedding rows                  conv_in / conv_out   convolution channels
  batch, seq  activation axes
"""

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("seq", "seq"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", "tensor"),
    ("vocab", "tensor"),
    ("conv_in", None),
    ("conv_out", None),
)
