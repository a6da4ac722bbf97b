"""What one wait remembers between reads: shared by the worker's wait and the triggerer's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.hooks.job_status import SUCCEEDED, expiry_hours
from airflow_gemini_batch.wait.progress import ProgressLog
from airflow_gemini_batch.wait.verdict import WaitDecision, WaitPolicy, evaluate, parse_time

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow_gemini_batch.hooks.job_status import JobStatus

#: A job not done this long before the service would end it (by its ``create_time``, not the wait's start;
#: 48 h on the Developer API, 72 h on Vertex AI) is logged as nearing expiry, once per wait: six hours to
#: act (cancel and resubmit smaller shards).
NEAR_EXPIRY_MARGIN_SECONDS = 6 * 3600


class WaitTracker:
    """What one wait remembers between reads, and what it does after each read.

    Shared by the worker (``job_waiter.JobWaiter``) and the triggerer (``triggers.job.GeminiBatchJobTrigger``)
    so both note a SUCCEEDED-without-output job the same way, log progress only when it changes, warn about
    unknown states and about jobs nearing their expiry, and hand the same inputs to :func:`evaluate`.
    """

    def __init__(self, policy: WaitPolicy, deadline: float | None) -> None:
        self.policy = policy
        self.deadline = deadline
        self.output_pending_since: dict[str, float] = {}
        self._progress = ProgressLog()
        self._near_expiry_logged: set[str] = set()

    def assess(self, statuses: Sequence[JobStatus], now: float, log: Any) -> WaitDecision:
        for s in statuses:
            if s.state == SUCCEEDED and not s.output_ready:
                self.output_pending_since.setdefault(s.name, now)
        self._warn_near_expiry(statuses, now, log)
        line = self._progress.changed(statuses)
        if line:
            log.info("Gemini batch progress: %s", line)
        decision = evaluate(
            statuses,
            self.policy,
            now=now,
            deadline=self.deadline,
            output_pending_since=self.output_pending_since,
        )
        if not decision.done and decision.unknown:
            log.warning("Jobs in an unknown state, still waiting: %s", ", ".join(decision.unknown))
        return decision

    def _warn_near_expiry(self, statuses: Sequence[JobStatus], now: float, log: Any) -> None:
        for s in statuses:
            created = parse_time(s.create_time)
            if s.done or created is None or s.name in self._near_expiry_logged:
                continue
            age = now - created
            expiry = expiry_hours(s.name) * 3600
            if age >= expiry - NEAR_EXPIRY_MARGIN_SECONDS:
                self._near_expiry_logged.add(s.name)
                log.warning(
                    "GEMINI BATCH JOB NEAR EXPIRY: %s (%s) is still %s %.1f h after its creation; the service "
                    "expires it at %.0f h with no results (in %.1f h). Consider cancelling it and resubmitting "
                    "smaller shards; a cleared submit resubmits an EXPIRED or CANCELLED shard alone.",
                    s.name,
                    s.display_name or "-",
                    s.state,
                    age / 3600,
                    expiry / 3600,
                    max(0.0, (created + expiry - now) / 3600),
                )
