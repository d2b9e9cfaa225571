"""Native Flax nnx models, one file per model. Imports kernels/ and layers.py only."""
