"""GeminiBatchAdmissionTrigger: between admission rounds, waits in the triggerer for quota headroom.

Invariants:

* It only reads: the run's unfinished jobs, through one ``client.aio`` for the whole wait (async end to end,
  like :class:`~airflow_gemini_batch.triggers.job.GeminiBatchJobTrigger`). It never creates a job, so a
  triggerer restart — the trigger rebuilt from ``serialize()`` — can never make a second one; the next round
  runs on a worker, on the submit's retry path (:mod:`airflow_gemini_batch.submit.admission`).
* When to fire is :meth:`AdmissionPending.ready <airflow_gemini_batch.submit.admission.AdmissionPending.ready>`,
  the same decision the worker's wait makes; ``resume_at`` is an absolute time, so a restart keeps it.
* kwargs are JSON: job names, token estimates, limits, times and the rounds so far (a few numbers each).
* A transient read error backs off (the provider's one retry policy) and never ends the wait; a permanent one
  (400/401/403/404) ends it with an ``error`` event naming the job. ``on_kill`` (the task was killed while
  deferred) cancels the run's unfinished jobs when ``cancel_on_kill``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_gemini_batch.hooks.backend import batch_hook
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.hooks.job_status import check_job_name
from airflow_gemini_batch.hooks.transport_errors import describe_error, http_code, is_transient
from airflow_gemini_batch.retry import RetryPolicy
from airflow_gemini_batch.submit.admission import (
    AdmissionLimits,
    AdmissionPending,
    AdmissionState,
    admit_event,
    holds_quota,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from google.genai.client import AsyncClient

#: On failing reads the wait between rounds grows from ``poll_interval`` to at most this many times it.
MAX_BACKOFF_FACTOR = 8
#: At most this many job reads in flight at once (one connection pool).
MAX_CONCURRENT_READS = 32


class GeminiBatchAdmissionTrigger(BaseTrigger):
    """Poll the run's unfinished jobs until the next admission round should start; then fire one event.

    :param job_names: the run's unfinished jobs.
    :param job_tokens: their estimated tokens, same order.
    :param waiting_tokens: the estimated tokens of the shards still waiting, in shard order.
    :param max_concurrent_jobs: the run's limit of unfinished jobs.
    :param max_enqueued_tokens: the run's limit of unfinished estimated tokens (None: unlimited).
    :param admission: the rounds so far (``AdmissionState.to_dict()``), handed back in the event.
    :param resume_at: epoch seconds when the next round starts anyway (after a 429); None: on headroom only.
    :param gemini_conn_id: the connection id (never the key).
    :param poll_interval: seconds between reads.
    :param cancel_on_kill: cancel the run's unfinished jobs when the deferred task is killed.
    :param kwargs: kwargs of another provider version: logged once, ignored.
    """

    def __init__(
        self,
        job_names: list[str],
        job_tokens: list[int],
        waiting_tokens: list[int],
        max_concurrent_jobs: int,
        max_enqueued_tokens: int | None = None,
        admission: dict[str, Any] | None = None,
        resume_at: float | None = None,
        gemini_conn_id: str = GeminiBatchHook.default_conn_name,
        poll_interval: float = 60.0,
        cancel_on_kill: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            self.log.warning(
                "Ignoring trigger kwargs this provider version does not know: %s", ", ".join(sorted(kwargs))
            )
        self.pending = AdmissionPending(
            limits=AdmissionLimits(int(max_concurrent_jobs), max_enqueued_tokens),
            state=AdmissionState.from_dict(admission or {"rounds": []}),
            job_names=[check_job_name(n) for n in job_names],
            job_tokens=[int(t) for t in job_tokens],
            waiting_tokens=[int(t) for t in waiting_tokens],
            resume_at=None if resume_at is None else float(resume_at),
        )
        self.gemini_conn_id = gemini_conn_id
        self.poll_interval = float(poll_interval)
        self.cancel_on_kill = cancel_on_kill
        self.backoff = RetryPolicy(
            base_seconds=self.poll_interval, max_seconds=self.poll_interval * MAX_BACKOFF_FACTOR, jitter=0.25
        )
        self.states: dict[str, str] = {}

    @classmethod
    def of(
        cls, pending: AdmissionPending, gemini_conn_id: str, poll_interval: float, cancel_on_kill: bool
    ) -> GeminiBatchAdmissionTrigger:
        """The trigger that waits for ``pending``'s next round."""
        return cls(**cls._kwargs(pending, gemini_conn_id, poll_interval, cancel_on_kill))

    @staticmethod
    def _kwargs(
        pending: AdmissionPending, gemini_conn_id: str, poll_interval: float, cancel_on_kill: bool
    ) -> dict[str, Any]:
        return {
            "job_names": list(pending.job_names),
            "job_tokens": list(pending.job_tokens),
            "waiting_tokens": list(pending.waiting_tokens),
            "max_concurrent_jobs": pending.limits.max_concurrent_jobs,
            "max_enqueued_tokens": pending.limits.max_enqueued_tokens,
            "admission": pending.state.to_dict(),
            "resume_at": pending.resume_at,
            "gemini_conn_id": gemini_conn_id,
            "poll_interval": poll_interval,
            "cancel_on_kill": cancel_on_kill,
        }

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_gemini_batch.triggers.admission.GeminiBatchAdmissionTrigger",
            self._kwargs(self.pending, self.gemini_conn_id, self.poll_interval, self.cancel_on_kill),
        )

    def _hook(self) -> GeminiBatchHook:
        return batch_hook(self.gemini_conn_id, self.pending.job_names)

    async def _read_round(self, client: AsyncClient) -> tuple[int, dict[str, Any] | None]:
        """Read the jobs still holding quota. Returns (transient error count, error event)."""
        names = [n for n in self.pending.job_names if holds_quota(self.states.get(n))]
        sem = asyncio.Semaphore(MAX_CONCURRENT_READS)

        async def read(name: str) -> Any:
            async with sem:
                return await GeminiBatchHook.aget_job(client, name)

        results = await asyncio.gather(*(read(n) for n in names), return_exceptions=True)
        transient = 0
        for name, result in zip(names, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if not isinstance(result, BaseException):
                self.states[name] = result.state
            elif is_transient(result):
                transient += 1
                self.log.warning(
                    "Transient error reading %s (will back off): %s", name, describe_error(result)
                )
            else:
                code = http_code(result)
                message = (
                    f"Reading Gemini batch job {name} while waiting for quota headroom failed permanently"
                    f"{f' with HTTP {code}' if code else ''}: {describe_error(result)[:300]}"
                )
                return transient, admit_event(self.pending, self.states, message, status="error")
        return transient, None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        client = await self._hook().aget_client()
        failing_rounds = 0
        self.log.info(
            "Waiting for quota headroom: %d shard(s) waiting, %d job(s) of this run not finished "
            "(max_concurrent_jobs=%d, max_enqueued_tokens=%s)%s.",
            len(self.pending.waiting_tokens),
            len(self.pending.job_names),
            self.pending.limits.max_concurrent_jobs,
            self.pending.limits.max_enqueued_tokens,
            ""
            if self.pending.resume_at is None
            else f"; after a 429, trying again at {self.pending.resume_at:.0f}",
        )
        try:
            while True:
                transient, error_event = await self._read_round(client)
                if error_event is not None:
                    yield TriggerEvent(error_event)
                    return
                now = time.time()
                if self.pending.ready(self.states, now):
                    ended = sum(1 for n in self.pending.job_names if not holds_quota(self.states.get(n)))
                    yield TriggerEvent(
                        admit_event(
                            self.pending, self.states, f"{ended} job(s) of this run ended: admitting."
                        )
                    )
                    return
                failing_rounds = failing_rounds + 1 if transient else 0
                delay = self.backoff.delay(failing_rounds) if failing_rounds else self.poll_interval
                if self.pending.resume_at is not None:
                    delay = min(delay, max(0.0, self.pending.resume_at - now))
                await asyncio.sleep(delay)
        finally:
            await _close(client)

    async def on_kill(self) -> None:
        """The deferred task was killed: cancel the run's unfinished jobs (if ``cancel_on_kill``)."""
        if not self.cancel_on_kill:
            return
        client = await self._hook().aget_client()
        try:
            for name in self.pending.job_names:
                if holds_quota(self.states.get(name)):
                    try:
                        await GeminiBatchHook.acancel_job(client, name)
                        self.log.info("Cancelled Gemini batch job %s (task killed).", name)
                    except Exception as e:  # best effort: the kill itself must go through
                        self.log.warning("Could not cancel Gemini batch job %s: %s", name, describe_error(e))
        finally:
            await _close(client)


async def _close(client: AsyncClient) -> None:
    close = getattr(client, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):  # cleanup must not mask the event already fired
            await close()
