"""Loaded JAX models and VAEs, cached per (file, dtype, mesh, attention), with explicit release.

Nodes ask `entry(key, load)` for an `Entry`; `Entry.get()` returns the loaded object (a
`pipelines.denoiser.Denoiser` or `pipelines.codec.VAECodec`), loading it again if it was released.
`release_all()` frees every entry's device memory; the pack calls it when ComfyUI unloads all models
("Free model and node cache", `POST /free`), and a `JaxModelPatcher` releases its entry when ComfyUI
detaches it. No comfy or torch imports here.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import threading
from typing import Any, Callable, Hashable

log = logging.getLogger("jaxdiff")
_lock = threading.Lock()
_entries: dict[Hashable, "Entry"] = {}


@dataclasses.dataclass(eq=False)
class Entry:
    """One cached model: `key` (its path first, then how it was loaded), `load()` → the object, `nbytes`."""

    key: tuple
    load: Callable[[], Any]
    obj: Any = None
    nbytes: int = 0
    loads: int = 0

    def get(self) -> Any:
        with _lock:
            if self.obj is None:
                if self.loads:
                    log.info("jaxdiff: loading %s again (it was released)", os.path.basename(str(self.key[0])))
                self.obj = self.load()
                self.nbytes = int(self.obj.nbytes)
                self.loads += 1
            return self.obj

    @property
    def loaded(self) -> bool:
        return self.obj is not None

    def release(self) -> None:
        """Free this model's device memory now (it loads again on next use)."""
        with _lock:
            obj, self.obj = self.obj, None
        if obj is not None:
            obj.release()
            del obj
            gc.collect()
            log.info("jaxdiff: released %s", os.path.basename(str(self.key[0])))


def entry(key: tuple, load: Callable[[], Any]) -> Entry:
    """The cached entry for `key` (created, not loaded, when new)."""
    with _lock:
        found = _entries.get(key)
        if found is None:
            found = _entries[key] = Entry(key, load)
        return found


def entries() -> list[Entry]:
    with _lock:
        return list(_entries.values())


def release_all() -> None:
    """Free the device memory of every loaded JAX model and VAE."""
    for e in entries():
        e.release()


def forget(key: tuple) -> None:
    """Release and drop the entry for `key` (e.g. its file changed)."""
    with _lock:
        found = _entries.pop(key, None)
    if found is not None:
        found.release()
