"""Test-wide defaults: the persistent XLA compile cache is off unless a test turns it on at a tmp dir,
so `jaxdiff generate` runs in tests never write to the user's ~/.cache."""

import os

os.environ["JAXDIFF_COMPILE_CACHE"] = "off"
