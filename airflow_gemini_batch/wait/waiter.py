"""The worker side of waiting for batch jobs, shared by the sensor and the submit operator's
``wait_for_completion``.

Invariant: there is one way to wait. Every path — a sensor poke, a reschedule, the submit operator's
blocking wait, and the conclusion of a deferred wait from its trigger event — ends in
:func:`airflow_gemini_batch.wait.verdict.evaluate` over the same job statuses, so no mode can pass a task that
another mode would fail (the Google provider's non-deferrable mode let FAILED jobs pass: apache/airflow#73029).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.exceptions import GeminiBatchError, GeminiBatchTriggerEventError
from airflow_gemini_batch.hooks.job_status import JobStatus, check_job_name
from airflow_gemini_batch.hooks.transport_errors import describe_error, http_code, is_transient
from airflow_gemini_batch.manifest import WAIT_SUMMARY_XCOM_KEY
from airflow_gemini_batch.submit.context_cache import delete_cache, needs_renewal
from airflow_gemini_batch.triggers.job import NOT_READ, GeminiBatchJobTrigger
from airflow_gemini_batch.wait.events import parse_event
from airflow_gemini_batch.wait.progress import progress_line
from airflow_gemini_batch.wait.tracker import WaitTracker
from airflow_gemini_batch.wait.verdict import WaitDecision, WaitPolicy, evaluate

if TYPE_CHECKING:
    import logging
    from collections.abc import Sequence

    from airflow.sdk import Context
    from airflow.sdk.types import Logger

    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook


class JobWaiter:
    """Reads a fixed set of jobs through the sync hook and evaluates them; concludes trigger events.

    :param hook: the hook to read (and cancel) jobs with.
    :param job_names: ``batches/<id>`` names; duplicates are waited for once.
    :param policy: what counts as a successful wait.
    :param log: where progress goes (the operator's task log).
    :param deadline: absolute epoch seconds after which the wait fails with a timeout.
    :param context_cache: the manifest's ``context_cache`` (the run's own cache): renewed while the jobs run,
        deleted with them on kill.
    """

    def __init__(
        self,
        hook: GeminiBatchHook,
        job_names: Sequence[str],
        policy: WaitPolicy,
        log: logging.Logger | Logger,
        deadline: float | None = None,
        context_cache: dict[str, Any] | None = None,
    ) -> None:
        self.hook = hook
        self.cache = dict(context_cache) if context_cache and context_cache.get("name") else None
        self.policy = policy
        self.log = log
        self.deadline = deadline
        self._tracker = WaitTracker(policy, deadline)
        self.statuses: dict[str, JobStatus] = {
            check_job_name(n): JobStatus(name=n, state=NOT_READ) for n in dict.fromkeys(job_names)
        }

    @property
    def job_names(self) -> list[str]:
        return list(self.statuses)

    def poll(self) -> WaitDecision:
        """Read every job not finished yet once, log progress when it changed, and evaluate."""
        for name, status in list(self.statuses.items()):
            if status.settled:
                continue
            try:
                self.statuses[name] = self.hook.get_job(name)
            except Exception as e:
                if not is_transient(e):
                    code = http_code(e)
                    raise GeminiBatchError(
                        f"Reading Gemini batch job {name} failed permanently"
                        f"{f' with HTTP {code}' if code else ''}: {describe_error(e)[:300]}"
                    ) from e
                self.log.warning("Transient error reading %s; will retry: %s", name, describe_error(e))
        decision = self._tracker.assess(list(self.statuses.values()), time.time(), self.log)
        if not decision.done:
            self.keep_cache_alive(time.time())
        return decision

    def keep_cache_alive(self, now: float) -> None:
        """Renew the run's cache while its jobs run (when less than half its TTL is left)."""
        cache = self.cache
        if cache is None or not needs_renewal(cache.get("expire_time"), float(cache["ttl_seconds"]), now):
            return
        try:
            status = self.hook.extend_cache(cache["name"], float(cache["ttl_seconds"]))
        except Exception as e:
            self.log.warning("Could not renew context cache %s: %s", cache["name"], describe_error(e))
            return
        if status is None:
            self.log.warning("Context cache %s is gone: requests not answered yet will fail", cache["name"])
            self.cache = None
            return
        cache["expire_time"] = status.expire_time
        self.log.info("Renewed context cache %s for %ds", cache["name"], cache["ttl_seconds"])

    def wait(self, poll_interval: float) -> dict[str, Any]:
        """Block until the wait is decided (the non-deferrable path); return the summary or raise."""
        return self.until_decided(poll_interval).raise_for_outcome()

    def until_decided(self, poll_interval: float) -> WaitDecision:
        """Block until the wait is decided (an outcome, or jobs stuck PENDING); the decision."""
        while True:
            decision = self.poll()
            if decision.done:
                return decision
            time.sleep(poll_interval)

    def trigger(
        self, gemini_conn_id: str, poll_interval: float, cancel_on_kill: bool
    ) -> GeminiBatchJobTrigger:
        """The trigger that continues this wait in the triggerer, with the same deadline and policy."""
        if self.deadline is None:
            raise ValueError("A deferred wait needs an absolute deadline.")
        return GeminiBatchJobTrigger(
            job_names=self.job_names,
            deadline=self.deadline,
            gemini_conn_id=gemini_conn_id,
            poll_interval=poll_interval,
            cancel_on_kill=cancel_on_kill,
            allow_partial=self.policy.allow_partial,
            output_grace_seconds=self.policy.output_grace_seconds,
            max_pending_seconds=self.policy.max_pending_seconds,
            stuck_exempt=sorted(self.policy.stuck_exempt),
            cache_name=self.cache["name"] if self.cache else None,
            cache_ttl_seconds=float(self.cache["ttl_seconds"]) if self.cache else None,
            cache_expire_time=self.cache.get("expire_time") if self.cache else None,
        )

    def conclude(self, event: Any) -> dict[str, Any]:
        """Check a trigger's event and apply the same evaluation to the statuses it carries."""
        return self.decide(event).raise_for_outcome()

    def decide(self, event: Any) -> WaitDecision:
        """:meth:`conclude`'s check, returning the decision (a ``stuck`` one too) instead of its outcome."""
        parsed = parse_event(event, expected_jobs=self.job_names)
        self.statuses = {s.name: s for s in parsed.statuses}
        self.log.info("Gemini batch progress: %s", progress_line(parsed.statuses))
        if parsed.status == "error":
            raise GeminiBatchError(parsed.message)
        decision = evaluate(
            parsed.statuses,
            self.policy,
            now=parsed.checked_at,
            deadline=parsed.deadline,
            output_pending_since=parsed.output_pending_since,
        )
        if not decision.done or decision.event_status != parsed.status:
            raise GeminiBatchTriggerEventError(
                f"Trigger event says {parsed.status!r} but its job statuses evaluate to "
                f"{decision.event_status if decision.done else 'still waiting'!r}: {parsed.message}"
            )
        return decision

    def cancel_unfinished(self) -> None:
        """Best effort: cancel the jobs not known to be finished (a killed task must not leave work running)."""
        for name, status in self.statuses.items():
            if status.done:
                continue
            try:
                self.hook.cancel_job(name)
                self.log.info("Cancelled Gemini batch job %s (task killed).", name)
            except Exception as e:  # the kill must go through even if one cancel fails
                self.log.warning("Could not cancel Gemini batch job %s: %s", name, describe_error(e))
        if self.cache is not None:
            delete_cache(self.hook, self.cache["name"], "the task was killed", self.log)

    def record_summary(self, context: Context, summary: dict[str, Any]) -> None:
        """Push the wait summary under its own XCom key (the UI page reads it) and log it."""
        ti = context.get("ti")
        if ti is not None:
            ti.xcom_push(key=WAIT_SUMMARY_XCOM_KEY, value=summary)
        self.log.info(
            "Gemini batch wait succeeded: %d job(s), %d request(s), %d succeeded, %d failed%s.",
            summary["job_count"],
            summary["request_count"],
            summary["succeeded_count"],
            summary["failed_count"],
            f", bad jobs: {[j['name'] for j in summary['bad_jobs']]}" if summary["bad_jobs"] else "",
        )
