"""Native Flax nnx models, one file per model. Imports kernels/ and layers.py only — and, within one
model family, its sibling file (umt5.py builds on t5.py, clip_vision.py on clip.py's encoder stack)."""
