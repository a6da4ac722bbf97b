"""Polling waits for tests: wait for a condition to hold, with a generous bound, instead of sleeping.

Why: a fixed sleep is a bet on how fast the machine is; on a busy machine it loses (the job was not yet read,
the worker not yet finished) and on an idle one it wastes time. A polling wait returns as soon as the
condition holds and fails only after ``timeout`` seconds, which is far beyond any honest delay, so a test
fails on a real hang, never on load. Tests that need a job *in* a state use the emulator's holds
(``EmulatorControl.hold_state``) instead: no clock involved at all.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

#: Generous: reached only when something is really stuck, never because the machine is busy.
DEFAULT_TIMEOUT = 60.0


def wait_until(
    predicate: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, interval: float = 0.02, what: str = ""
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what or predicate!r} after {timeout:g} s (last: {value!r})")
        time.sleep(interval)


async def await_until(
    predicate: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, interval: float = 0.02, what: str = ""
) -> T:
    """:func:`wait_until` for a test running on an event loop (the loop keeps running meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still not {what or predicate!r} after {timeout:g} s (last: {value!r})")
        await asyncio.sleep(interval)
