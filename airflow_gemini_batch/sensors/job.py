"""GeminiBatchJobSensor: wait for the batch jobs of a manifest, in poke, reschedule or deferrable mode.

Invariants:

* One verdict in every mode: poke/reschedule read each job with the sync hook, the deferrable path reads them
  in :class:`~airflow_gemini_batch.triggers.job.GeminiBatchJobTrigger`; both hand the statuses to
  :func:`airflow_gemini_batch.waiting.evaluate`, and ``execute_complete`` evaluates the event's statuses again
  (so a malformed or inconsistent event can never pass the task).
* Deferrable mode pokes once first (a finished job costs no trip to the triggerer) and passes an *absolute*
  deadline to the trigger, plus ``defer(timeout=...)`` a little later as a safety net: Airflow does not apply
  ``execution_timeout`` while deferred, and the trigger's own deadline yields the typed timeout error first.
* The success value (XCom ``return_value`` and key ``WAIT_SUMMARY_XCOM_KEY``) is a small summary: names,
  states and counts per job, never results.
* ``on_kill`` (worker phase) cancels the jobs still running when ``cancel_on_kill``; the trigger does the same
  while deferred.
"""

from __future__ import annotations

import time
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowSensorTimeout

from airflow_gemini_batch.exceptions import (
    GeminiBatchError,
    GeminiBatchInputError,
    GeminiBatchTimeoutError,
    GeminiBatchTriggerEventError,
)
from airflow_gemini_batch.hooks.gemini import SUCCEEDED, GeminiBatchHook, JobStatus, check_job_name
from airflow_gemini_batch.manifest import WAIT_SUMMARY_XCOM_KEY, job_names
from airflow_gemini_batch.triggers.job import NOT_READ, GeminiBatchJobTrigger
from airflow_gemini_batch.waiting import (
    DEFAULT_OUTPUT_GRACE_SECONDS,
    ProgressLog,
    WaitPolicy,
    evaluate,
    is_transient,
    parse_event,
    permanent_code,
    progress_line,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

#: Jobs expire after 48 h on the service; waiting any longer can only end in EXPIRED.
DEFAULT_TIMEOUT_SECONDS = 48 * 3600 + 15 * 60
#: How much later than the trigger's own deadline Airflow's defer timeout fires (the typed error wins).
DEFER_TIMEOUT_SLACK_SECONDS = 120


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
    :param timeout: seconds before the wait fails with ``GeminiBatchTimeoutError`` (default 48 h 15 min).
    :param deferrable: wait in the triggerer instead of a worker slot.
    :param cancel_on_kill: cancel the jobs still running when the task is killed.
    :param allow_partial: succeed with some jobs FAILED / CANCELLED / EXPIRED (listed as ``bad_jobs``).
    :param output_grace_seconds: how long a SUCCEEDED job may go without a visible responses file.
    """

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
        self._deadline: float | None = None
        self._statuses: dict[str, JobStatus] = {}
        self._output_pending_since: dict[str, float] = {}
        self._progress = ProgressLog()

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
        return GeminiBatchHook(gemini_conn_id=self.conn_id)

    # ---- execution --------------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        names = self.resolved_job_names()
        self._statuses = {n: JobStatus(name=n, state=NOT_READ) for n in names}
        self.log.info("Waiting for %d Gemini batch job(s): %s", len(names), ", ".join(names))
        if not self.deferrable:
            self._deadline = self._started_at(context) + self.timeout
            try:
                return super().execute(context)
            except AirflowSensorTimeout as e:
                raise self._timeout_error() from e

        self._deadline = time.time() + self.timeout
        first = self.poke(context)
        if first:
            return first.xcom_value if isinstance(first, PokeReturnValue) else None
        remaining = max(0.0, self._deadline - time.time())
        self.defer(
            trigger=GeminiBatchJobTrigger(
                job_names=names,
                deadline=self._deadline,
                gemini_conn_id=self.conn_id,
                poll_interval=self.poll_interval,
                cancel_on_kill=self.cancel_on_kill,
                allow_partial=self.allow_partial,
                output_grace_seconds=self.output_grace_seconds,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=remaining + DEFER_TIMEOUT_SLACK_SECONDS),
        )

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
        statuses = list(self._statuses.values())
        decision = evaluate(
            statuses, self.policy, now=max(time.time(), self._deadline or 0), deadline=self._deadline
        )
        if isinstance(decision.error, GeminiBatchTimeoutError):
            return decision.error
        return GeminiBatchTimeoutError(
            f"Gemini batch wait timed out after {self.timeout:g} s. {progress_line(statuses)}"
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        for name, status in list(self._statuses.items()):
            if status.done and not (status.state == SUCCEEDED and not status.output_ready):
                continue
            try:
                self._statuses[name] = self.hook.get_job(name)
            except Exception as e:
                if not is_transient(e):
                    code = permanent_code(e)
                    raise GeminiBatchError(
                        f"Reading Gemini batch job {name} failed permanently"
                        f"{f' with HTTP {code}' if code else ''}: {type(e).__name__}: {str(e)[:300]}"
                    ) from e
                self.log.warning(
                    "Transient error reading %s; will retry next poke: %s", name, type(e).__name__
                )
        now = time.time()
        statuses = list(self._statuses.values())
        for s in statuses:
            if s.state == SUCCEEDED and not s.output_ready:
                self._output_pending_since.setdefault(s.name, now)
        line = self._progress.changed(statuses)
        if line:
            self.log.info("Gemini batch progress: %s", line)
        decision = evaluate(
            statuses,
            self.policy,
            now=now,
            deadline=self._deadline,
            output_pending_since=self._output_pending_since,
        )
        if not decision.done:
            if decision.unknown:
                self.log.warning("Jobs in an unknown state, still waiting: %s", ", ".join(decision.unknown))
            return False
        summary = decision.raise_for_outcome()
        self._push_summary(context, summary)
        return PokeReturnValue(is_done=True, xcom_value=summary)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Check the trigger's event and apply the same evaluation to the statuses it carries."""
        parsed = parse_event(event, expected_jobs=self.resolved_job_names())
        self._statuses = {s.name: s for s in parsed.statuses}
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
        summary = decision.raise_for_outcome()
        self._push_summary(context, summary)
        return summary

    def _push_summary(self, context: Context, summary: dict[str, Any]) -> None:
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

    def on_kill(self) -> None:
        """Worker phase (poke / reschedule): cancel the jobs still running, when ``cancel_on_kill``."""
        if not self.cancel_on_kill:
            return
        for name, status in self._statuses.items():
            if status.done:
                continue
            try:
                self.hook.cancel_job(name)
                self.log.info("Cancelled Gemini batch job %s (task killed).", name)
            except Exception as e:  # best effort: the kill must go through even if one cancel fails
                self.log.warning("Could not cancel Gemini batch job %s: %s", name, type(e).__name__)
