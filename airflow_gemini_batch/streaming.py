"""Helpers for the hot loops that stream rows (building shards, loading results).

Why pausing the cyclic garbage collector is safe and worth it there: those loops allocate millions of
short-lived tuples, dicts, bytes and strings and create no reference cycles, so reference counting frees every
row as soon as it is written. Meanwhile every ~700 new container objects trigger a collection that, every few
rounds, walks the whole heap of an Airflow worker (hundreds of thousands of long-lived objects), work that grows
with the rows streamed and buys nothing. The collector's previous state is restored after.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for a streaming loop (see the module docstring)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
