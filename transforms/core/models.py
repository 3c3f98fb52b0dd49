"""Models loaded once per worker process, whatever the number of DoFn instances.

Beam makes one DoFn instance per bundle processor and thread, and Dataflow runs many threads per
worker process: a model loaded in `setup` would be loaded that many times (an ~800 MB fastText
model, say). A `Shared` handle made in the driver as the stage is built is pickled with each
instance, so all instances in a process reach one copy (Beam's `ml/inference` does the same).
Handles are keyed by what identifies the model, so two stages loading the same file share it.
"""
from __future__ import annotations

from typing import Any, Callable

from apache_beam.utils.shared import Shared

# (loader, model key) -> the job's handle for that model
_HANDLES: dict[tuple[str, str], Shared] = {}


def model_handle(loader: Callable[[], Any], key: str) -> Shared:
    """The handle for the model `loader` makes for `key` (call in the driver, at construction)."""
    return _HANDLES.setdefault((getattr(loader, "__qualname__", repr(loader)), key), Shared())


def acquire(handle: Shared, loader: Callable[[], Any], key: str) -> Any:
    """The process's copy of the model (`loader` runs once per process and key); the object must
    be weak-referenceable (a class instance, not a dict or list)."""
    return handle.acquire(loader, tag=key)
