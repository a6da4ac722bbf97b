"""The one decision "are these batch jobs done, and did the wait succeed?", shared by every waiting mode.

Poke mode, reschedule mode, the deferrable trigger and the sensor's ``execute_complete`` (and, later,
the submit operator's ``wait_for_completion``) all call :func:`evaluate`. It is a pure function of the job
statuses, the policy, the clock reading and the deadline, so the trigger and the worker reach the same verdict
from the same event: a task can never succeed in one mode on statuses that fail it in another.

Semantics (the contract the tests pin down):

* All jobs SUCCEEDED *with their output visible* (``JobStatus.output_ready``) → success summary.
* SUCCEEDED but the responses file not yet visible → keep waiting, for at most ``output_grace_seconds``
  counted from the job's end time (so the bound survives a triggerer restart), then fail.
* Any FAILED / CANCELLED / EXPIRED job, ``allow_partial=False`` → fail fast, without waiting for siblings: the
  task is going to fail anyway, and hours of waiting would only delay the alert. Siblings are *not* cancelled
  (a retry re-attaches to them). The exception is the most specific class common to all bad jobs.
* ``allow_partial=True`` → wait until every job is terminal, then succeed with the bad ones in ``bad_jobs`` so
  the good ones can still be loaded; if *every* job is bad, fail anyway.
* An unknown state (``UNSPECIFIED``, or anything the service adds later) → keep waiting, with a warning.
* Past the absolute deadline with jobs still not done → :class:`GeminiBatchTimeoutError`.
* With ``max_pending_seconds`` (only :class:`~airflow_gemini_batch.operators.batch.GeminiBatchOperator` sets
  it), a job still PENDING that long after its ``create_time`` (the service's clock, so the bound survives
  restarts) and not in ``stuck_exempt`` → ``done`` with ``stuck`` naming it and no outcome: the caller
  cancels it and resubmits its shard (:mod:`airflow_gemini_batch.submit.stuck`). Failures and the deadline
  come first.

The trigger event schema is :mod:`~airflow_gemini_batch.wait.events`'s; the progress line
:mod:`~airflow_gemini_batch.wait.progress`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.exceptions import (
    GeminiBatchError,
    GeminiBatchJobCancelledError,
    GeminiBatchJobExpiredError,
    GeminiBatchJobFailedError,
    GeminiBatchTimeoutError,
    GeminiBatchTriggerEventError,
)
from airflow_gemini_batch.hooks.job_status import (
    CANCELLED,
    EXPIRED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    JobStatus,
)
from airflow_gemini_batch.manifest import WAIT_SUMMARY_KIND
from airflow_gemini_batch.wait.progress import progress_line

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

BAD_STATES = {
    FAILED: GeminiBatchJobFailedError,
    CANCELLED: GeminiBatchJobCancelledError,
    EXPIRED: GeminiBatchJobExpiredError,
}
KNOWN_STATES = frozenset({PENDING, RUNNING, SUCCEEDED, *BAD_STATES})
DEFAULT_OUTPUT_GRACE_SECONDS = 600.0
#: Jobs expire after 48 h on the service; waiting any longer can only end in EXPIRED.
DEFAULT_TIMEOUT_SECONDS = 48 * 3600 + 15 * 60
#: How much later than the trigger's own deadline Airflow's defer timeout fires (the typed error wins).
DEFER_TIMEOUT_SLACK_SECONDS = 120

EVENT_STATUSES = frozenset({"success", "failed", "timeout", "error", "stuck"})


@dataclass(frozen=True)
class WaitPolicy:
    """What counts as a successful wait.

    :param allow_partial: succeed when some (not all) jobs end FAILED / CANCELLED / EXPIRED.
    :param output_grace_seconds: how long a SUCCEEDED job may go without a visible responses file.
    :param max_pending_seconds: a job PENDING this long after its creation is *stuck* (None: never).
    :param stuck_exempt: jobs never reported stuck (their shard used up its stuck resubmits).
    """

    allow_partial: bool = False
    output_grace_seconds: float = DEFAULT_OUTPUT_GRACE_SECONDS
    max_pending_seconds: float | None = None
    stuck_exempt: frozenset[str] = frozenset()


@dataclass(frozen=True)
class WaitDecision:
    """The verdict of one evaluation. ``done`` is False while waiting; on failure ``error`` is set."""

    done: bool
    summary: dict[str, Any] | None = None
    error: GeminiBatchError | None = None
    unknown: list[str] = field(default_factory=list)  # "name (STATE)" of jobs in unrecognised states
    stuck: list[str] = field(default_factory=list)  # jobs PENDING past max_pending_seconds: no outcome yet

    @property
    def event_status(self) -> str:
        if self.stuck:
            return "stuck"
        if self.error is None:
            return "success"
        return "timeout" if isinstance(self.error, GeminiBatchTimeoutError) else "failed"

    def raise_for_outcome(self) -> dict[str, Any]:
        """The success summary, or raise the typed error. Only for a finished wait."""
        if self.error is not None:
            raise self.error
        if self.stuck:
            raise GeminiBatchError(f"Jobs stuck PENDING were not handled: {', '.join(self.stuck)}.")
        if not self.done or self.summary is None:
            raise GeminiBatchTriggerEventError("The wait is not finished; no outcome to report yet.")
        return self.summary


def parse_time(value: str | None) -> float | None:
    """RFC 3339 (``2026-01-01T00:00:00.123456Z``) → epoch seconds; None when absent or unparseable."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _describe(s: JobStatus) -> str:
    text = f"{s.name} ({s.display_name or '-'}): {s.state}"
    if s.error:
        text += f" [code {s.error.get('code')}: {s.error.get('message')}]"
    return text


def _failure_class(states: Iterable[str]) -> type[GeminiBatchJobFailedError]:
    classes = {BAD_STATES[s] for s in states}
    # Cancelled and Expired both subclass Failed, so a mix falls back to the common base.
    return classes.pop() if len(classes) == 1 else GeminiBatchJobFailedError


def job_summary(s: JobStatus) -> dict[str, Any]:
    """Per-job entry of the wait summary: identity, state, counts, times, output location, error."""
    return {
        "name": s.name,
        "display_name": s.display_name,
        "state": s.state,
        "request_count": s.request_count,
        "succeeded_count": s.succeeded_count,
        "failed_count": s.failed_count,
        "pending_count": s.pending_count,
        "create_time": s.create_time,
        "end_time": s.end_time,
        "responses_file": s.responses_file,
        "has_inline_responses": s.has_inline_responses,
        "error": s.error,
    }


def build_summary(statuses: Sequence[JobStatus], bad: Sequence[JobStatus]) -> dict[str, Any]:
    return {
        "kind": WAIT_SUMMARY_KIND,
        "status": "success",
        "job_count": len(statuses),
        "request_count": sum(s.request_count for s in statuses),
        "succeeded_count": sum(s.succeeded_count for s in statuses),
        "failed_count": sum(s.failed_count for s in statuses),
        "jobs": [job_summary(s) for s in statuses],
        "bad_jobs": [{"name": s.name, "state": s.state, "error": s.error} for s in bad],
    }


def _stuck(not_done: Sequence[JobStatus], policy: WaitPolicy, now: float) -> list[str]:
    """Jobs PENDING for ``max_pending_seconds`` or longer since their ``create_time``, not exempt."""
    if policy.max_pending_seconds is None:
        return []
    out = []
    for s in not_done:
        created = parse_time(s.create_time)
        if s.state != PENDING or s.name in policy.stuck_exempt or created is None:
            continue
        if now - created >= policy.max_pending_seconds:
            out.append(s.name)
    return out


def evaluate(
    statuses: Sequence[JobStatus],
    policy: WaitPolicy,
    *,
    now: float,
    deadline: float | None = None,
    output_pending_since: dict[str, float] | None = None,
) -> WaitDecision:
    """Decide the wait from one read of every job. Pure: same inputs, same verdict, in every mode.

    :param statuses: the latest status of every watched job (one per job, in the user's order).
    :param now: epoch seconds of the reading.
    :param deadline: absolute epoch deadline; None for none.
    :param output_pending_since: for SUCCEEDED jobs without visible output and without an end time, when the
        waiter first saw them so (the end time is preferred: it survives restarts).
    """
    if not statuses:
        return WaitDecision(done=True, error=GeminiBatchError("No Gemini batch jobs to wait for."))
    bad = [s for s in statuses if s.state in BAD_STATES]
    if bad and not policy.allow_partial:
        cls = _failure_class(s.state for s in bad)
        others = [s.name for s in statuses if s not in bad and not s.done]
        message = f"{len(bad)} of {len(statuses)} Gemini batch job(s) did not succeed: " + "; ".join(
            _describe(s) for s in bad
        )
        if others:
            message += f". Still running (not cancelled): {', '.join(others)}"
        return WaitDecision(done=True, error=cls(message))

    unknown = [f"{s.name} ({s.state})" for s in statuses if s.state not in KNOWN_STATES]
    waiting_output: list[JobStatus] = []
    for s in statuses:
        if s.state != SUCCEEDED or s.output_ready:
            continue
        since = parse_time(s.end_time) or (output_pending_since or {}).get(s.name) or now
        if now - since > policy.output_grace_seconds:
            return WaitDecision(
                done=True,
                error=GeminiBatchJobFailedError(
                    f"Gemini batch job {s.name} is SUCCEEDED but its responses are still not visible "
                    f"{now - since:.0f} s after it ended "
                    f"(output_grace_seconds={policy.output_grace_seconds:g})."
                ),
            )
        waiting_output.append(s)
    not_done = [s for s in statuses if not s.done]

    if not_done or waiting_output:
        if deadline is not None and now >= deadline:
            pending = [
                *(_describe(s) for s in not_done),
                *(f"{s.name}: SUCCEEDED, output not visible" for s in waiting_output),
            ]
            return WaitDecision(
                done=True,
                error=GeminiBatchTimeoutError(
                    f"Gemini batch wait reached its deadline with {len(pending)} of {len(statuses)} job(s) "
                    f"not done: {'; '.join(pending)}. {progress_line(statuses)}"
                ),
            )
        stuck = _stuck(not_done, policy, now)
        if stuck:
            return WaitDecision(done=True, unknown=unknown, stuck=stuck)
        return WaitDecision(done=False, unknown=unknown)

    if bad and len(bad) == len(statuses):
        cls = _failure_class(s.state for s in bad)
        return WaitDecision(
            done=True,
            error=cls(
                f"All {len(statuses)} Gemini batch job(s) did not succeed (allow_partial needs at least one "
                f"good job): " + "; ".join(_describe(s) for s in bad)
            ),
        )
    return WaitDecision(done=True, summary=build_summary(statuses, bad))
