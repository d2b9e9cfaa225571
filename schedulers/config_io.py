"""Reading diffusers `scheduler_config.json` into our frozen config dataclasses (shared by schedulers)."""

from __future__ import annotations

import json
import os

from ..models_flax.layers import ConfigIO

SCHEDULER_CONFIG_NAME = "scheduler_config.json"


class SchedulerConfigIO(ConfigIO):
    """Mixin for frozen dataclasses whose fields mirror a diffusers scheduler config: `ConfigIO`'s
    `from_dict`/`to_dict` plus `from_json`."""

    @classmethod
    def from_json(cls, path: str | os.PathLike):
        """Read `scheduler_config.json` (or a directory holding one)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, SCHEDULER_CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no scheduler config at {path}")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
