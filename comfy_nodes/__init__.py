"""ComfyUI node adapters (thin: ComfyUI types in, numpy/jax in the middle, ComfyUI types out).

The only place that may import `comfy.*`. Nodes arrive with the ComfyUI issue.
"""
