"""The trigger event: the one small dict a :class:`GeminiBatchJobTrigger` fires, built and checked here.

Invariant: an event carries names, states, counts and times only — never a secret, never a pydantic object —
and the worker refuses (with :class:`GeminiBatchTriggerEventError`) any event it cannot fully read, instead
of guessing an outcome from a half-understood one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.exceptions import GeminiBatchTriggerEventError
from airflow_gemini_batch.hooks.job_status import JobStatus

if TYPE_CHECKING:
    from collections.abc import Sequence

EVENT_STATUSES = frozenset({"success", "failed", "timeout", "error", "stuck"})


def compact(s: JobStatus) -> dict[str, Any]:
    """``JobStatus.to_dict()`` minus nulls: what one job costs in a trigger event."""
    return {k: v for k, v in s.to_dict().items() if v is not None}


def build_event(
    status: str,
    statuses: Sequence[JobStatus],
    *,
    checked_at: float,
    deadline: float,
    message: str,
    output_pending_since: dict[str, float] | None = None,
    job_name: str | None = None,
    code: int | None = None,
) -> dict[str, Any]:
    """The one event shape a :class:`GeminiBatchJobTrigger` fires. Names and counts only; never a secret."""
    event: dict[str, Any] = {
        "status": status,
        "message": message,
        "checked_at": checked_at,
        "deadline": deadline,
        "jobs": [compact(s) for s in statuses],
        "output_pending_since": dict(output_pending_since or {}),
    }
    if job_name is not None:
        event["job_name"] = job_name
    if code is not None:
        event["code"] = code
    return event


@dataclass(frozen=True)
class ParsedEvent:
    status: str
    message: str
    checked_at: float
    deadline: float
    statuses: list[JobStatus]
    output_pending_since: dict[str, float]


def _number(event: dict[str, Any], key: str) -> float:
    value = event.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GeminiBatchTriggerEventError(f"Trigger event field {key!r} must be a number, got {value!r}.")
    return float(value)


def parse_event(event: Any, expected_jobs: Sequence[str] | None = None) -> ParsedEvent:
    """Validate a trigger event; anything missing or malformed raises :class:`GeminiBatchTriggerEventError`.

    :param expected_jobs: when given, the event must report exactly these jobs (any order).
    """
    if not isinstance(event, dict):
        raise GeminiBatchTriggerEventError(f"Trigger event must be a dict, got {type(event).__name__}.")
    status = event.get("status")
    if status not in EVENT_STATUSES:
        raise GeminiBatchTriggerEventError(
            f"Trigger event has status {status!r}; expected one of {sorted(EVENT_STATUSES)}."
        )
    message = event.get("message")
    if not isinstance(message, str):
        raise GeminiBatchTriggerEventError("Trigger event has no 'message' string.")
    jobs = event.get("jobs")
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise GeminiBatchTriggerEventError("Trigger event field 'jobs' must be a list of job status dicts.")
    known = set(JobStatus.__dataclass_fields__)
    statuses = []
    for job in jobs:
        if not isinstance(job.get("name"), str) or not isinstance(job.get("state"), str):
            raise GeminiBatchTriggerEventError(f"Trigger event job entry lacks name/state: {job!r}.")
        try:
            statuses.append(JobStatus(**{k: v for k, v in job.items() if k in known}))
        except TypeError as e:
            raise GeminiBatchTriggerEventError(f"Trigger event job entry is malformed: {e}.") from e
    if expected_jobs is not None and sorted(s.name for s in statuses) != sorted(expected_jobs):
        raise GeminiBatchTriggerEventError(
            f"Trigger event reports jobs {[s.name for s in statuses]}, expected {list(expected_jobs)}."
        )
    since = event.get("output_pending_since") or {}
    if not isinstance(since, dict):
        raise GeminiBatchTriggerEventError("Trigger event field 'output_pending_since' must be a dict.")
    return ParsedEvent(
        status=status,
        message=message,
        checked_at=_number(event, "checked_at"),
        deadline=_number(event, "deadline"),
        statuses=statuses,
        output_pending_since={str(k): float(v) for k, v in since.items()},
    )
