"""Process tuning for the long-running services (``mstcrypt serve``, ``mstcrypt ims serve``)."""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive after start-up (modules, the web
    framework, the ORM's mappings, the parsed CA chain: a few hundred thousand objects)
    into CPython's permanent generation. The cyclic garbage collector's full passes then
    walk only what requests created since, instead of pausing every thread for 50–200 ms
    to re-examine the start-up heap (seen as the tail of login latency under load). Objects
    freed later are still freed by reference counting; only cycles among start-up objects
    would wait for :func:`gc.unfreeze`. Idempotent enough to call once per process."""
    gc.collect()
    gc.freeze()
