"""GeminiBatchJobSensor: wait for the batch jobs of a manifest, in poke, reschedule or deferrable mode.

Invariants:

* One verdict in every mode: poke/reschedule read each job with the sync hook, the deferrable path reads them
  in :class:`~airflow_gemini_batch.triggers.job.GeminiBatchJobTrigger`; both hand the statuses to
  :func:`airflow_gemini_batch.wait.verdict.evaluate`, and ``execute_complete`` evaluates the event's statuses again
  (so a malformed or inconsistent event can never pass the task).
* Deferrable mode pokes once first (a finished job costs no trip to the triggerer) and passes an *absolute*
  deadline to the trigger, plus ``defer(timeout=...)`` a little later as a safety net: Airflow does not apply
  ``execution_timeout`` while deferred, and the trigger's own deadline yields the typed timeout error first.
* The timeout is :class:`~airflow_gemini_batch.exceptions.GeminiBatchTimeoutError`, an
  ``AirflowSensorTimeout``, in every mode: it fails without retries, and ``soft_fail=True`` makes it a skip
  (in poke and reschedule mode ``BaseSensorOperator.execute`` does that, deferred ``resume_execution`` does).
* The success value (XCom ``return_value`` and key ``WAIT_SUMMARY_XCOM_KEY``) is a small summary: names,
  states and counts per job, never results.
* ``on_kill`` (worker phase) cancels the jobs still running when ``cancel_on_kill``, and deletes the run's
  context cache; the trigger does the same while deferred. Both renew that cache's TTL while jobs run.
"""

from __future__ import annotations

import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowSensorTimeout

from airflow_gemini_batch.exceptions import GeminiBatchInputError, GeminiBatchTimeoutError
from airflow_gemini_batch.hooks.backend import batch_hook
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.hooks.job_status import check_job_name
from airflow_gemini_batch.links import GeminiBatchJobLink
from airflow_gemini_batch.manifest import WAIT_SUMMARY_XCOM_KEY, job_names
from airflow_gemini_batch.wait.progress import progress_line
from airflow_gemini_batch.wait.verdict import (
    DEFAULT_OUTPUT_GRACE_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    DEFER_TIMEOUT_SLACK_SECONDS,
    WaitPolicy,
    build_summary,
    evaluate,
)
from airflow_gemini_batch.wait.waiter import JobWaiter

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context


class GeminiBatchJobSensor(BaseSensorOperator):
    """Wait until the Gemini batch jobs of a manifest (or a list of job names) are done.

    Succeeds when every job SUCCEEDED with its output visible (or, with ``allow_partial``, when all are
    terminal and at least one succeeded); fails with ``GeminiBatchJobFailedError`` /
    ``GeminiBatchJobCancelledError`` / ``GeminiBatchJobExpiredError`` naming the jobs, or
    ``GeminiBatchTimeoutError`` at the deadline. Returns the wait summary (also pushed under key
    ``gemini_batch_wait_summary``).

    :param manifest: the submit operator's manifest, usually its XComArg. (templated)
    :param job_names: ``batches/<id>`` names, instead of a manifest. (templated)
    :param gemini_conn_id: connection id; defaults to the manifest's, then ``gemini_batch_default``.
        (templated)
    :param poll_interval: seconds between reads, in every mode.
    :param timeout: seconds before the wait fails with ``GeminiBatchTimeoutError`` (default 48 h 15 min), an
        ``AirflowSensorTimeout``: not retried; a skip with ``soft_fail=True``.
    :param deferrable: wait in the triggerer instead of a worker slot.
    :param cancel_on_kill: cancel the jobs still running when the task is killed.
    :param allow_partial: succeed with some jobs FAILED / CANCELLED / EXPIRED (listed as ``bad_jobs``).
    :param output_grace_seconds: how long a SUCCEEDED job may go without a visible responses file.
    """

    operator_extra_links = (GeminiBatchJobLink(),)
    template_fields: Sequence[str] = ("manifest", "job_names", "gemini_conn_id")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        manifest: Any = None,
        job_names: Any = None,
        gemini_conn_id: str | None = None,
        poll_interval: float = 60.0,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        cancel_on_kill: bool = True,
        allow_partial: bool = False,
        output_grace_seconds: float = DEFAULT_OUTPUT_GRACE_SECONDS,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(timeout=timeout, **kwargs)
        if (manifest is None) == (job_names is None):
            raise GeminiBatchInputError("GeminiBatchJobSensor needs exactly one of manifest and job_names.")
        self.manifest = manifest
        self.job_names = job_names
        self.gemini_conn_id = gemini_conn_id
        self.poll_interval = float(poll_interval)
        self.deferrable = deferrable
        self.cancel_on_kill = cancel_on_kill
        self.allow_partial = allow_partial
        self.output_grace_seconds = float(output_grace_seconds)
        self._waiter: JobWaiter | None = None

    # ---- resolved inputs --------------------------------------------------------------------------------

    @property
    def policy(self) -> WaitPolicy:
        return WaitPolicy(allow_partial=self.allow_partial, output_grace_seconds=self.output_grace_seconds)

    def resolved_job_names(self) -> list[str]:
        names = job_names(self.manifest) if self.manifest is not None else list(self.job_names or [])
        if isinstance(self.job_names, str):
            raise GeminiBatchInputError("job_names must be a list of 'batches/<id>' names, not one string.")
        if not names:
            raise GeminiBatchInputError(
                "No Gemini batch jobs to wait for: the manifest/job_names list is empty."
            )
        # Dedupe, keeping order: a job listed twice is still one job.
        return [check_job_name(n) for n in dict.fromkeys(names)]

    @property
    def conn_id(self) -> str:
        if self.gemini_conn_id:
            return self.gemini_conn_id
        if isinstance(self.manifest, dict) and self.manifest.get("gemini_conn_id"):
            return str(self.manifest["gemini_conn_id"])
        return GeminiBatchHook.default_conn_name

    @cached_property
    def hook(self) -> GeminiBatchHook:
        return batch_hook(self.conn_id, self.resolved_job_names())

    # ---- execution --------------------------------------------------------------------------------------

    def waiter(self, deadline: float | None = None) -> JobWaiter:
        if self._waiter is None or deadline is not None:
            cache = self.manifest.get("context_cache") if isinstance(self.manifest, dict) else None
            self._waiter = JobWaiter(
                self.hook, self.resolved_job_names(), self.policy, self.log, deadline, context_cache=cache
            )
        return self._waiter

    def execute(self, context: Context) -> Any:
        if isinstance(self.manifest, dict) and not self.manifest.get("shards"):
            return self._nothing_to_wait_for(context)
        names = self.resolved_job_names()
        self.log.info("Waiting for %d Gemini batch job(s): %s", len(names), ", ".join(names))
        if not self.deferrable:
            self.waiter(deadline=self._started_at(context) + self.timeout)
            try:
                return super().execute(context)
            except GeminiBatchTimeoutError:
                raise  # the verdict's own timeout (with soft_fail, BaseSensorOperator made it a skip)
            except AirflowSensorTimeout as e:
                raise self._timeout_error() from e

        waiter = self.waiter(deadline=time.time() + self.timeout)
        first = self.poke(context)
        if first:
            return first.xcom_value if isinstance(first, PokeReturnValue) else None
        remaining = max(0.0, (waiter.deadline or 0) - time.time())
        self.defer(
            trigger=waiter.trigger(self.conn_id, self.poll_interval, self.cancel_on_kill),
            method_name="execute_complete",
            timeout=timedelta(seconds=remaining + DEFER_TIMEOUT_SLACK_SECONDS),
        )

    def _nothing_to_wait_for(self, context: Context) -> dict[str, Any]:
        """A manifest without jobs (every row reused by an incremental run, or no valid row): done at once."""
        summary = build_summary([], [])
        self.log.info(
            "The manifest has no jobs (%s row(s) reused, %s request(s)): nothing to wait for.",
            self.manifest.get("reused", 0), self.manifest.get("request_count", 0),
        )  # fmt: skip
        ti = context.get("ti")
        if ti is not None:
            ti.xcom_push(key=WAIT_SUMMARY_XCOM_KEY, value=summary)
        return summary

    def _started_at(self, context: Context) -> float:
        """Reschedule mode counts from the first try's start (kept by Airflow); poke mode from now."""
        if self.reschedule:
            ti = context.get("ti")
            try:
                first = ti.get_first_reschedule_date(context) if ti is not None else None
            except Exception:  # no supervisor (e.g. a bare context in a script): count from now
                first = None
            if first is not None:
                return first.timestamp()
        return time.time()

    def _timeout_error(self) -> GeminiBatchTimeoutError:
        waiter = self.waiter()
        statuses = list(waiter.statuses.values())
        deadline = waiter.deadline
        decision = evaluate(statuses, self.policy, now=max(time.time(), deadline or 0), deadline=deadline)
        if isinstance(decision.error, GeminiBatchTimeoutError):
            return decision.error
        return GeminiBatchTimeoutError(
            f"Gemini batch wait timed out after {self.timeout:g} s. {progress_line(statuses)}"
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        decision = self.waiter().poll()
        if not decision.done:
            return False
        summary = decision.raise_for_outcome()
        self.waiter().record_summary(context, summary)
        return PokeReturnValue(is_done=True, xcom_value=summary)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Check the trigger's event and apply the same evaluation to the statuses it carries."""
        summary = self.waiter().conclude(event)
        self.waiter().record_summary(context, summary)
        return summary

    def on_kill(self) -> None:
        """Worker phase (poke / reschedule): cancel the jobs still running, when ``cancel_on_kill``."""
        if self.cancel_on_kill and self._waiter is not None:
            self._waiter.cancel_unfinished()
