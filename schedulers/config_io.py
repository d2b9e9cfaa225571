"""Reading diffusers `scheduler_config.json` into our frozen config dataclasses (shared by schedulers)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

SCHEDULER_CONFIG_NAME = "scheduler_config.json"


class SchedulerConfigIO:
    """Mixin for frozen dataclasses whose fields mirror a diffusers scheduler config."""

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]):
        """Build from a config dict; unknown keys (`_class_name`, `_diffusers_version`, …) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

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
