"""Live job state for the page, read through ``GeminiBatchHook``: cached, rate-limited, and safe to show.

Invariants:

* Many viewers never multiply API calls. One process-wide cache holds each job's last read for ``ttl``
  seconds (finished jobs much longer: their state cannot change). One lock serialises refreshes, so viewers
  arriving together wait for the first refresh and then read its results from the cache - but only for
  ``wait_seconds``: behind a refresh stuck on a hanging API, a viewer gets the cache as it stands (stale
  entries flagged ``deferred``) instead of queueing; one slow API slows one request, not every viewer.
* One refresh makes at most ``max_calls`` API calls; jobs beyond that keep their last known state (or the
  recorded one) and are read on a later refresh. Running jobs, then the longest unread, go first.
* A broken connection costs one call per refresh, not one per job: after a connection-level failure the
  remaining jobs of that connection get the same error without calling.
* A job the service will soon expire is flagged (:func:`expiry_view`): the Developer API expires every job 48 h
  after its creation, pending or running, with no results (Vertex AI: 72 h of queueing); within
  :data:`EXPIRY_WARNING_MARGIN_HOURS` of that a job not finished is shown as nearing that end, so someone can act (shard smaller, cancel and resubmit) while there is time.
* Error texts never carry the API key: they are built from exception types, API codes and messages, and the
  connection's password is scrubbed from them anyway.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.hooks.job_status import TERMINAL_STATES, expiry_hours

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
    from airflow_gemini_batch.hooks.job_status import JobStatus

log = logging.getLogger(__name__)

#: A job not finished this many hours before the service would end it is flagged as nearing its expiry.
EXPIRY_WARNING_MARGIN_HOURS = 8.0

_KEY_PATTERNS = (re.compile(r"AIza[0-9A-Za-z_\-]{20,}"), re.compile(r"(?i)(key=)[^&\s'\"]+"))


@dataclass
class LiveState:
    """The last read of one job: ``status`` (a ``JobStatus.to_dict()``) or an ``error`` a person can read."""

    status: dict[str, Any] | None = None
    error: str | None = None
    fetched_at: float = 0.0
    #: True when the job was not read for this answer: the refresh's call budget ran out, or another viewer's
    #: refresh was still running (the state shown may be stale or absent; a later refresh reads it).
    deferred: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "error": self.error,
            "fetched_at": self.fetched_at,
            "deferred": self.deferred,
        }


class _ConnectionBroken(Exception):
    """A failure that repeats for every job of a connection (missing connection, no key, unreachable)."""


class LiveStates:
    """A TTL cache of job reads, shared by every request of the api-server process.

    :param ttl: seconds a running job's read stays fresh.
    :param terminal_ttl: seconds a finished job's read stays fresh.
    :param max_calls: API calls at most per refresh (all viewers together).
    :param hook_factory: builds a hook from a connection id (tests may pass a factory with other settings).
    :param wait_seconds: how long a request waits for another request's refresh before it answers from the
        cache as it stands.
    """

    def __init__(
        self,
        ttl: float = 10.0,
        terminal_ttl: float = 600.0,
        max_calls: int = 20,
        hook_factory: Callable[[str], GeminiBatchHook] | None = None,
        wait_seconds: float = 2.0,
    ) -> None:
        self.ttl = ttl
        self.wait_seconds = wait_seconds
        self.terminal_ttl = terminal_ttl
        self.max_calls = max_calls
        self._hook_factory = hook_factory or _default_hook
        self._cache: dict[str, LiveState] = {}
        #: job name → when it was invalidated: a refresh running since before that must not store its read.
        self._invalidated: dict[str, float] = {}
        self._hooks: dict[str, tuple[float, GeminiBatchHook]] = {}
        self._lock = threading.Lock()
        #: API calls made since start; lets tests prove the cache and the budget work.
        self.calls = 0

    def _fresh(self, state: LiveState | None, now: float) -> bool:
        if state is None or state.fetched_at == 0.0:
            return False
        done = state.status is not None and state.status.get("state") in TERMINAL_STATES
        return now - state.fetched_at < (self.terminal_ttl if done else self.ttl)

    def lookup(self, jobs: Iterable[tuple[str, str]]) -> dict[str, LiveState]:
        """Live state of ``(conn_id, job_name)`` pairs, reading the stale ones within the call budget."""
        wanted = dict((name, conn_id) for conn_id, name in jobs)
        if not self._lock.acquire(timeout=self.wait_seconds):
            return self._as_cached(wanted)
        try:
            return self._refresh(wanted)
        finally:
            self._lock.release()

    def _as_cached(self, wanted: dict[str, str]) -> dict[str, LiveState]:
        """The cache as it stands, without calling: stale or unread jobs flagged ``deferred``."""
        now, out = time.monotonic(), {}
        for name in wanted:
            state = self._cache.get(name) or LiveState()
            fresh = self._fresh(state, now)
            out[name] = (
                state if fresh else LiveState(state.status, state.error, state.fetched_at, deferred=True)
            )
        return out

    def _refresh(self, wanted: dict[str, str]) -> dict[str, LiveState]:
        """Read the stale jobs of ``wanted`` within the call budget (the caller holds the lock)."""
        now = time.monotonic()
        for name, when in list(self._invalidated.items()):  # a snapshot: invalidate() may add meanwhile
            if now - when > 600.0:
                self._invalidated.pop(name, None)
        stale = [n for n in wanted if not self._fresh(self._cache.get(n), now)]
        # Unread and running jobs first; among them the longest unread.
        stale.sort(key=lambda n: self._cache[n].fetched_at if n in self._cache else -1.0)
        broken: dict[str, str] = {}
        budget = self.max_calls
        for name in stale:
            conn_id = wanted[name]
            if conn_id in broken:
                self._cache[name] = LiveState(error=broken[conn_id], fetched_at=now)
                continue
            if budget <= 0:
                prior = self._cache.get(name) or LiveState()
                self._cache[name] = LiveState(prior.status, prior.error, prior.fetched_at, deferred=True)
                continue
            budget -= 1
            try:
                status = self._read(conn_id, name).to_dict()
                if self._invalidated.get(name, -1.0) >= now:
                    continue  # cancelled while this refresh ran: its read may predate the cancel
                self._cache[name] = LiveState(status=status, fetched_at=now)
            except _ConnectionBroken as e:
                broken[conn_id] = str(e)
                self._cache[name] = LiveState(error=str(e), fetched_at=now)
            except Exception as e:
                self._cache[name] = LiveState(error=self.describe(conn_id, e), fetched_at=now)
        if len(stale) > self.max_calls:
            log.info(
                "Gemini Batches page: %d job reads deferred to a later refresh",
                len(stale) - self.max_calls,
            )
        return {n: self._cache.get(n) or LiveState(deferred=True) for n in wanted}

    def invalidate(self, job_name: str) -> None:
        """Forget a job's read (after a cancel, so the next view shows the new state).

        Never waits for a running refresh (a cancel must not queue behind a slow API): the entry goes at once,
        and a refresh that started before this cannot store its older read of the job.
        """
        self._invalidated[job_name] = time.monotonic()
        self._cache.pop(job_name, None)

    def hook(self, conn_id: str) -> GeminiBatchHook:
        """A hook per connection, rebuilt every minute so an edited connection is picked up."""
        now = time.monotonic()
        cached = self._hooks.get(conn_id)
        if cached is None or now - cached[0] > 60.0:
            cached = (now, self._hook_factory(conn_id))
            self._hooks[conn_id] = cached
        return cached[1]

    def _read(self, conn_id: str, name: str) -> JobStatus:
        from airflow.exceptions import AirflowNotFoundException

        from airflow_gemini_batch.hooks.transport_errors import is_transport_error

        self.calls += 1
        try:
            hook = self.hook(conn_id)
            hook.get_conn()  # resolves the connection: a missing one fails here, for all its jobs
        except AirflowNotFoundException:
            self._hooks.pop(conn_id, None)
            raise _ConnectionBroken(
                f"connection {conn_id!r} is not defined (add it under Admin → Connections)"
            ) from None
        except Exception as e:
            self._hooks.pop(conn_id, None)
            raise _ConnectionBroken(self.describe(conn_id, e)) from None
        try:
            return hook.get_job(name)
        except Exception as e:
            if is_transport_error(e):
                raise _ConnectionBroken(self.describe(conn_id, e)) from None
            raise

    def describe(self, conn_id: str, e: BaseException) -> str:
        """A short reason a person can act on, without secrets."""
        code = getattr(e, "code", None)
        message = getattr(e, "message", None) or str(e) or type(e).__name__
        text = f"API error {code}: {message}" if isinstance(code, int) else f"{type(e).__name__}: {message}"
        return _scrub(text[:300], self._password(conn_id))

    def _password(self, conn_id: str) -> str | None:
        try:
            from airflow.sdk import BaseHook

            return BaseHook.get_connection(conn_id).password
        except Exception:
            return None


def _scrub(text: str, password: str | None) -> str:
    if password:
        text = text.replace(password, "***")
    for pattern in _KEY_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text


def expiry_view(
    job_name: str, create_time: str | None, state: str, now: datetime | None = None
) -> dict[str, Any]:
    """``age_hours`` since the job's creation, and ``nearing_expiry`` when it is not finished within
    :data:`EXPIRY_WARNING_MARGIN_HOURS` of its backend's expiry (``expiry_hours``, with ``expires_in_hours``
    left before it)."""
    horizon = expiry_hours(job_name)
    created = _parse_time(create_time)
    if created is None:
        return {"age_hours": None, "nearing_expiry": False, "expires_in_hours": None, "expiry_hours": horizon}
    age = ((now or datetime.now(timezone.utc)) - created).total_seconds() / 3600.0
    nearing = state not in TERMINAL_STATES and age >= horizon - EXPIRY_WARNING_MARGIN_HOURS
    return {
        "age_hours": round(age, 2),
        "nearing_expiry": nearing,
        "expires_in_hours": round(max(horizon - age, 0.0), 2) if nearing else None,
        "expiry_hours": horizon,
    }


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def previous_generations(names: Iterable[str], states: dict[str, LiveState]) -> list[dict[str, Any]]:
    """The jobs of a shard's earlier generations, oldest first, each with its live state (they ended
    FAILED, EXPIRED or CANCELLED, so one read stays fresh for ``terminal_ttl``)."""
    out = []
    for name in names:
        live = states.get(name) or LiveState(deferred=True)
        status = live.status or {}
        error = status.get("error")
        out.append(
            {
                "job_name": name,
                "job_id": name.rsplit("/", 1)[-1],
                "state": status.get("state") or "UNKNOWN",
                "create_time": status.get("create_time"),
                "end_time": status.get("end_time"),
                "error": error.get("message") if isinstance(error, dict) else error,
                "live_error": live.error,
            }
        )
    return out


#: Per-call timeout for page reads unless the connection sets its own (``timeout_seconds``).
UI_TIMEOUT_SECONDS = 10.0


def _default_hook(conn_id: str) -> GeminiBatchHook:
    from airflow_gemini_batch.hooks.bigquery import is_bigquery_connection
    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
    from airflow_gemini_batch.hooks.vertex import GeminiVertexBatchHook

    if is_bigquery_connection(conn_id):

        class _PageVertexHook(GeminiVertexBatchHook):
            """The Vertex AI hook with the page's bounded timeout."""

            def vertex_kwargs(self) -> dict[str, Any]:
                kwargs = super().vertex_kwargs()
                if kwargs["http_options"].timeout is None:
                    kwargs["http_options"].timeout = int(UI_TIMEOUT_SECONDS * 1000)
                return kwargs

        return _PageVertexHook(conn_id, retry_attempts=2)

    class _PageHook(GeminiBatchHook):
        """The workers' hook with a bounded timeout: a page must answer even when the API hangs."""

        def _client_kwargs(self, conn: Any, extra: dict[str, Any]) -> dict[str, Any]:
            kwargs = super()._client_kwargs(conn, extra)
            if kwargs["http_options"].timeout is None:
                kwargs["http_options"].timeout = int(UI_TIMEOUT_SECONDS * 1000)
            return kwargs

    # Two attempts, not the workers' five, for the same reason.
    return _PageHook(conn_id, retry_attempts=2)
