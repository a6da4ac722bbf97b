"""Reply holds: the emulator keeps back its replies to requests that match a method and a path pattern until a
test releases them. A slow or hanging API, held by a control instead of a wall-clock delay.

Invariants:

* A held request has been handled in full (counted, a fault consumed, its handler run: a held ``batches.get``
  has read the job, a held create has made it); only its reply waits. So what the reply says is fixed when
  the request arrives, and the test decides when the client gets it.
* A rule counts the requests it has held (``held``, never decreasing) and those it holds now (``waiting``),
  so a test waits until the request it is about IS held with :meth:`ReplyHolds.wait_held`, which wakes on
  the hold itself (no polling) and gives up after a timeout the caller sets, saying how many it saw.
* The newest matching rule that is not released and has uses left (``count``; None: every request) holds a
  request. ``release`` lets a rule's held replies go and retires it: later requests are answered at once.
* ``reset`` and the server's shutdown release every rule, so no request (nor uvicorn's graceful shutdown,
  nor a test's client thread) waits on a hold nobody will release.
* Held requests and control calls run on the server's event loop, but a reset or a shutdown may come from
  another thread: the rules are guarded by one lock, and each waiter is a future on its own loop, resolved
  through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from airflow_gemini_batch.emulator.faults import ValidationError

METHODS = ("GET", "POST", "DELETE", "PATCH", "PUT", "*")
#: The API version a path starts with (``/v1beta/``); patterns match the path without it.
_VERSION = re.compile(r"^/(?:v\d+[a-z0-9]*(?:/|$))?")
#: Bounds a control call's wait; a test's own bound is far below it.
MAX_WAIT_SECONDS = 600.0


class HoldNotReached(Exception):
    """A wait for held requests ended short of its number: its timeout passed (``timed_out``), or the rule
    was released first."""

    def __init__(self, message: str, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def request_path(path: str) -> str:
    """The path a pattern is matched against: no leading slash, no API version (``v1beta/batches/x`` →
    ``batches/x``, a job's own name)."""
    return _VERSION.sub("", path, count=1)


@dataclass
class _Waiter:
    """One coroutine waiting for this module: a future on its own loop (resolved from any thread)."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    #: For a :meth:`ReplyHolds.wait_held` call: the ``held`` count it waits for (None: a held reply).
    held: int | None = None

    def wake(self) -> None:
        def resolve() -> None:
            if not self.future.done():
                self.future.set_result(None)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to wake
            self.loop.call_soon_threadsafe(resolve)


@dataclass
class ReplyHoldRule:
    """Hold replies to ``method`` requests whose path (see :func:`request_path`) matches the glob ``path``."""

    id: int
    method: str
    path: str
    count: int | None = None
    held: int = 0
    released: bool = False
    _replies: list[_Waiter] = field(default_factory=list, repr=False)
    _watchers: list[_Waiter] = field(default_factory=list, repr=False)

    def matches(self, method: str, path: str) -> bool:
        return (
            not self.released
            and (self.count is None or self.held < self.count)
            and self.method in ("*", method)
            and fnmatch.fnmatchcase(path, self.path)
        )

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "count": self.count,
            "held": self.held,
            "waiting": len(self._replies),
            "released": self.released,
        }


class ReplyHolds:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[ReplyHoldRule] = []
        #: Never reset: a client's handle to a rule from before a reset finds no rule, not another one.
        self._next_id = 1

    def add(self, body: dict[str, Any]) -> ReplyHoldRule:
        unknown = set(body) - {"method", "path", "count"}
        if unknown:
            raise ValidationError(f"unknown reply hold keys: {sorted(unknown)}")
        method = str(body.get("method") or "").upper()
        if method not in METHODS:
            raise ValidationError(f"method must be one of {list(METHODS)}")
        path = body.get("path")
        if not isinstance(path, str) or not path.strip("/"):
            raise ValidationError("path must be a non-empty glob, e.g. 'batches/abc' or 'batches/*'")
        count = body.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise ValidationError("count must be an integer >= 1, or null for every matching request")
        with self._lock:
            rule = ReplyHoldRule(self._next_id, method, request_path("/" + path.lstrip("/")), count)
            self._next_id += 1
            self._rules.append(rule)
        return rule

    def views(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.view() for rule in self._rules]

    def _rule(self, rule_id: object) -> ReplyHoldRule:
        """The rule with this id (the caller holds the lock)."""
        for rule in self._rules:
            if rule.id == rule_id:
                return rule
        raise ValidationError(f"no reply hold {rule_id!r} (a reset forgets them all)")

    async def hold(self, method: str, path: str) -> None:
        """Return once the reply to this request may go: at once unless a rule holds it, else on release."""
        target = request_path(path)
        with self._lock:
            rule = next((r for r in reversed(self._rules) if r.matches(method, target)), None)
            if rule is None:
                return
            loop = asyncio.get_running_loop()
            waiter = _Waiter(loop, loop.create_future())
            rule.held += 1
            rule._replies.append(waiter)
            for watcher in rule._watchers:
                if watcher.held is not None and rule.held >= watcher.held:
                    watcher.wake()
        try:
            await waiter.future
        finally:  # released, or cancelled (a shutdown past its grace period): no longer held either way
            with self._lock:
                if waiter in rule._replies:
                    rule._replies.remove(waiter)

    async def wait_held(self, rule_id: object, held: int, timeout: float) -> dict[str, Any]:
        """The rule's view once it has held ``held`` requests in all (those released count too).

        Raises :class:`HoldNotReached` after ``timeout`` seconds, or as soon as the rule is released short of
        ``held``; :class:`~.faults.ValidationError` for an unknown rule or bad arguments.
        """
        if isinstance(held, bool) or not isinstance(held, int) or held < 1:
            raise ValidationError("held must be an integer >= 1")
        number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
        if not number or not 0 < timeout <= MAX_WAIT_SECONDS:
            raise ValidationError(f"timeout_seconds must be a number within (0, {MAX_WAIT_SECONDS:g}]")
        with self._lock:
            rule = self._rule(rule_id)
            if rule.held >= held or rule.released:
                return self._reached(rule, held)
            loop = asyncio.get_running_loop()
            watcher = _Waiter(loop, loop.create_future(), held)
            rule._watchers.append(watcher)
        try:
            await asyncio.wait_for(watcher.future, timeout)
        except asyncio.TimeoutError:
            with self._lock:
                seen = rule.held
            raise HoldNotReached(
                f"reply hold {rule.id} ({rule.method} {rule.path}) held {seen} of {held} requests "
                f"within {timeout:g} s",
                timed_out=True,
            ) from None
        finally:
            with self._lock:
                if watcher in rule._watchers:
                    rule._watchers.remove(watcher)
        with self._lock:
            return self._reached(rule, held)

    @staticmethod
    def _reached(rule: ReplyHoldRule, held: int) -> dict[str, Any]:
        if rule.held < held:
            raise HoldNotReached(
                f"reply hold {rule.id} ({rule.method} {rule.path}) was released after holding {rule.held} "
                f"of {held} requests",
                timed_out=False,
            )
        return rule.view()

    def release(self, rule_id: object | None = None) -> list[dict[str, Any]]:
        """Let the held replies of rule ``rule_id`` (None: of every rule) go, and retire the rule(s): their
        views, with ``let_go`` (the replies this released)."""
        with self._lock:
            rules = list(self._rules) if rule_id is None else [self._rule(rule_id)]
            let_go = [self._release(rule) for rule in rules]
            return [rule.view() | {"let_go": n} for rule, n in zip(rules, let_go, strict=True)]

    @staticmethod
    def _release(rule: ReplyHoldRule) -> int:
        """(the caller holds the lock) Wake the rule's held replies, and its watchers (they report it);
        how many replies it let go."""
        rule.released = True
        replies = len(rule._replies)
        for waiter in (*rule._replies, *rule._watchers):
            waiter.wake()
        rule._replies.clear()
        rule._watchers.clear()
        return replies

    def reset(self) -> None:
        """Release every rule and forget them (reset, and the server's shutdown)."""
        with self._lock:
            for rule in self._rules:
                self._release(rule)
            self._rules.clear()
