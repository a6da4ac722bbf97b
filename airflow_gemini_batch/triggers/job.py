"""GeminiBatchJobTrigger: waits on many batch jobs in the triggerer, async end to end, with no side effects.

Invariants:

* Async all the way: the connection is read with ``aget_connection`` and every call goes through one
  ``client.aio`` for the whole run (one connection pool, however many jobs), closed at the end. A sync call on
  the triggerer's event loop would stall every other trigger on it (and can dead-lock connection access).
* The deadline is an absolute epoch time in the kwargs, so a trigger rebuilt from ``serialize()`` after a
  triggerer restart keeps the original deadline instead of starting a fresh timeout.
* kwargs are JSON scalars and lists of names only; the API key stays in the connection.
* Transient trouble (429, 5xx, connection resets, timeouts) never ends the wait: it backs off by the provider's
  one retry policy (:class:`~airflow_gemini_batch.retry.RetryPolicy`, from ``poll_interval`` up to
  ``MAX_BACKOFF_FACTOR`` times it, never sooner than 75 % of it). A permanent API error (400/401/403/404) ends
  it at once with an ``error`` event naming the job and the code.
* Unknown kwargs are accepted, logged once and ignored: a trigger row written by another provider version
  (one that added a kwarg) still inflates in the triggerer after an upgrade or a downgrade.
* The verdict is :func:`airflow_gemini_batch.wait.verdict.evaluate`, the same function the sensor runs in poke mode
  and again on the event in ``execute_complete``.
* The only side effects are ``on_kill`` (a user killed the deferred task): cancel the jobs still running, when
  ``cancel_on_kill``, then delete the run's context cache; and renewing that cache's TTL while jobs run
  (when less than half of it is left). A triggerer restart or the deadline never cancels or deletes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_gemini_batch.hooks.backend import batch_hook
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.hooks.job_status import JobStatus, check_job_name
from airflow_gemini_batch.hooks.transport_errors import http_code, is_transient
from airflow_gemini_batch.retry import RetryPolicy
from airflow_gemini_batch.submit.context_cache import needs_renewal
from airflow_gemini_batch.wait.events import build_event
from airflow_gemini_batch.wait.tracker import WaitTracker
from airflow_gemini_batch.wait.verdict import WaitPolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from google.genai.client import AsyncClient

#: Placeholder state for a job whose first read has not succeeded yet (kept waiting, never terminal).
NOT_READ = "UNSPECIFIED"
#: On failing rounds the wait between rounds grows from ``poll_interval`` to at most this many times it.
MAX_BACKOFF_FACTOR = 8
#: The random share of a backoff wait: waits stay within 75-100 % of the exponential value, so a failing
#: round never polls faster than a healthy one by more than a quarter.
BACKOFF_JITTER = 0.25


class GeminiBatchJobTrigger(BaseTrigger):
    """Poll a set of Gemini batch jobs until the wait is decided, then fire one small event.

    Event: ``{"status": "success"|"failed"|"timeout"|"error"|"stuck", "message", "jobs": [compact JobStatus],
    "checked_at", "deadline", "output_pending_since"}`` (+ ``job_name`` and ``code`` for ``error``).

    :param job_names: ``batches/<id>`` names to watch.
    :param deadline: absolute epoch seconds; the wait fires ``timeout`` once past it.
    :param gemini_conn_id: the Airflow connection holding the API key.
    :param poll_interval: seconds between poll rounds.
    :param cancel_on_kill: cancel the still-running jobs when a user kills the deferred task.
    :param allow_partial: see :class:`~airflow_gemini_batch.wait.verdict.WaitPolicy`.
    :param output_grace_seconds: see :class:`~airflow_gemini_batch.wait.verdict.WaitPolicy`.
    :param max_pending_seconds: fire ``stuck`` when a job is PENDING this long after its creation (None:
        never); the worker cancels it and resubmits its shard. See
        :class:`~airflow_gemini_batch.wait.verdict.WaitPolicy`.
    :param stuck_exempt: job names never reported stuck (their shard used up its stuck resubmits).
    :param max_concurrency: at most this many job reads in flight at once.
    :param retry_attempts: SDK-level attempts per read on transient codes before this trigger's own backoff
        takes over.
    :param cache_name: the run's context cache (``cachedContents/<id>``), renewed while jobs run and deleted
        on kill; None when the run has none of its own.
    :param cache_ttl_seconds: what the cache's TTL is renewed to.
    :param cache_expire_time: when the cache expires as last set (epoch seconds).
    :param kwargs: kwargs this version does not know (from a trigger row of another provider version):
        logged once, ignored.
    """

    def __init__(
        self,
        job_names: list[str],
        deadline: float,
        gemini_conn_id: str = GeminiBatchHook.default_conn_name,
        poll_interval: float = 60.0,
        cancel_on_kill: bool = True,
        allow_partial: bool = False,
        output_grace_seconds: float = 600.0,
        max_pending_seconds: float | None = None,
        stuck_exempt: list[str] | None = None,
        max_concurrency: int = 32,
        retry_attempts: int = 5,
        cache_name: str | None = None,
        cache_ttl_seconds: float | None = None,
        cache_expire_time: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            self.log.warning(
                "Ignoring trigger kwargs this provider version does not know: %s", ", ".join(sorted(kwargs))
            )
        self.job_names = [check_job_name(n) for n in job_names]
        self.deadline = float(deadline)
        self.gemini_conn_id = gemini_conn_id
        self.poll_interval = float(poll_interval)
        self.cancel_on_kill = cancel_on_kill
        self.allow_partial = allow_partial
        self.output_grace_seconds = float(output_grace_seconds)
        self.max_pending_seconds = None if max_pending_seconds is None else float(max_pending_seconds)
        self.stuck_exempt = [check_job_name(n) for n in stuck_exempt or []]
        self.max_concurrency = max_concurrency
        self.retry_attempts = retry_attempts
        self.cache_name = cache_name
        self.cache_ttl_seconds = cache_ttl_seconds
        self.cache_expire_time = cache_expire_time
        self.backoff = RetryPolicy(
            base_seconds=self.poll_interval,
            max_seconds=self.poll_interval * MAX_BACKOFF_FACTOR,
            jitter=BACKOFF_JITTER,
        )
        self._statuses: dict[str, JobStatus] = {n: JobStatus(name=n, state=NOT_READ) for n in self.job_names}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_gemini_batch.triggers.job.GeminiBatchJobTrigger",
            {
                "job_names": list(self.job_names),
                "deadline": self.deadline,
                "gemini_conn_id": self.gemini_conn_id,
                "poll_interval": self.poll_interval,
                "cancel_on_kill": self.cancel_on_kill,
                "allow_partial": self.allow_partial,
                "output_grace_seconds": self.output_grace_seconds,
                "max_pending_seconds": self.max_pending_seconds,
                "stuck_exempt": list(self.stuck_exempt),
                "max_concurrency": self.max_concurrency,
                "retry_attempts": self.retry_attempts,
                "cache_name": self.cache_name,
                "cache_ttl_seconds": self.cache_ttl_seconds,
                "cache_expire_time": self.cache_expire_time,
            },
        )

    def _hook(self) -> GeminiBatchHook:
        return batch_hook(self.gemini_conn_id, self.job_names, retry_attempts=self.retry_attempts)

    @property
    def policy(self) -> WaitPolicy:
        return WaitPolicy(
            allow_partial=self.allow_partial,
            output_grace_seconds=self.output_grace_seconds,
            max_pending_seconds=self.max_pending_seconds,
            stuck_exempt=frozenset(self.stuck_exempt),
        )

    async def _read(
        self, client: AsyncClient, sem: asyncio.Semaphore, name: str
    ) -> JobStatus | BaseException:
        async with sem:
            try:
                return await GeminiBatchHook.aget_job(client, name)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                return e

    async def poll_round(
        self, client: AsyncClient, sem: asyncio.Semaphore
    ) -> tuple[int, dict[str, Any] | None]:
        """Read every job still in play, concurrently. Returns (transient error count, error event)."""
        # Settled jobs keep their last status; a SUCCEEDED job is re-read only until its output shows up.
        names = [n for n, s in self._statuses.items() if not s.settled]
        results = await asyncio.gather(*(self._read(client, sem, n) for n in names))
        transient = 0
        for name, result in zip(names, results, strict=True):
            if isinstance(result, JobStatus):
                self._statuses[name] = result
                continue
            if is_transient(result):
                transient += 1
                self.log.warning("Transient error reading %s (will back off): %s", name, _short(result))
                continue
            code = http_code(result)
            message = (
                f"Reading Gemini batch job {name} failed permanently"
                f"{f' with HTTP {code}' if code else ''}: {_short(result)}"
            )
            return transient, build_event(
                "error",
                list(self._statuses.values()),
                checked_at=time.time(),
                deadline=self.deadline,
                message=message,
                job_name=name,
                code=code,
            )
        return transient, None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        client = await self._hook().aget_client()
        sem = asyncio.Semaphore(self.max_concurrency)
        tracker = WaitTracker(self.policy, self.deadline)
        failing_rounds = 0
        self.log.info(
            "Watching %d Gemini batch job(s) until %s (poll every %gs).",
            len(self.job_names),
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.deadline)),
            self.poll_interval,
        )
        try:
            while True:
                transient, error_event = await self.poll_round(client, sem)
                if error_event is not None:
                    yield TriggerEvent(error_event)
                    return
                now = time.time()
                statuses = [self._statuses[n] for n in self.job_names]
                decision = tracker.assess(statuses, now, self.log)
                if decision.done:
                    message = str(decision.error) if decision.error else "All Gemini batch jobs are done."
                    if decision.stuck:
                        message = (
                            f"Stuck PENDING past {self.max_pending_seconds:g} s: {', '.join(decision.stuck)}"
                        )
                    yield TriggerEvent(
                        build_event(
                            decision.event_status,
                            statuses,
                            checked_at=now,
                            deadline=self.deadline,
                            message=message,
                            output_pending_since=tracker.output_pending_since,
                        )
                    )
                    return
                await self._keep_cache_alive(client, now)
                failing_rounds = failing_rounds + 1 if transient else 0
                await asyncio.sleep(self._next_delay(failing_rounds, now))
        finally:
            await _close(client)

    def _next_delay(self, failing_rounds: int, now: float) -> float:
        # Backoff while rounds fail, and never past the deadline: one last read happens at the deadline.
        delay = self.backoff.delay(failing_rounds) if failing_rounds else self.poll_interval
        return max(0.0, min(delay, self.deadline - now))

    async def _keep_cache_alive(self, client: AsyncClient, now: float) -> None:
        """Renew the run's cache while its jobs run; a failure is logged (the next round tries again)."""
        if not self.cache_name or not self.cache_ttl_seconds:
            return
        if not needs_renewal(self.cache_expire_time, self.cache_ttl_seconds, now):
            return
        try:
            status = await GeminiBatchHook.aextend_cache(client, self.cache_name, self.cache_ttl_seconds)
        except Exception as e:
            self.log.warning("Could not renew context cache %s: %s", self.cache_name, _short(e))
            return
        if status is None:
            self.log.warning("Context cache %s is gone: requests not answered yet will fail", self.cache_name)
            self.cache_name = None
            return
        self.cache_expire_time = status.expire_time
        self.log.info("Renewed context cache %s for %ds", self.cache_name, self.cache_ttl_seconds)

    async def on_kill(self) -> None:
        """A user killed the deferred task: cancel the jobs not terminal yet (if ``cancel_on_kill``)."""
        if not self.cancel_on_kill:
            self.log.info(
                "cancel_on_kill is off; leaving %d Gemini batch job(s) running.", len(self.job_names)
            )
            return
        client = await self._hook().aget_client()
        try:
            sem = asyncio.Semaphore(self.max_concurrency)
            await asyncio.gather(
                *(self._cancel(client, sem, n) for n, s in self._statuses.items() if not s.done)
            )
            if self.cache_name:
                try:
                    if await GeminiBatchHook.adelete_cache(client, self.cache_name):
                        self.log.info("Deleted context cache %s (task killed).", self.cache_name)
                except Exception as e:  # the TTL ends it
                    self.log.warning("Could not delete context cache %s: %s", self.cache_name, _short(e))
        finally:
            await _close(client)

    async def _cancel(self, client: AsyncClient, sem: asyncio.Semaphore, name: str) -> None:
        async with sem:
            try:
                await GeminiBatchHook.acancel_job(client, name)
                self.log.info("Cancelled Gemini batch job %s (task killed).", name)
            except Exception as e:
                # Best effort: the job may have just finished; the kill itself must still go through.
                self.log.warning("Could not cancel Gemini batch job %s: %s", name, _short(e))


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text[:300]}"


async def _close(client: AsyncClient) -> None:
    close = getattr(client, "aclose", None)
    if close is not None:
        # Closing is cleanup; a failure there must not mask the event already fired.
        with contextlib.suppress(Exception):
            await close()
