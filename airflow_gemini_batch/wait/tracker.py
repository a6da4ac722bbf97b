"""What one wait remembers between reads: shared by the worker's wait and the triggerer's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.hooks.job_status import SUCCEEDED
from airflow_gemini_batch.wait.progress import ProgressLog
from airflow_gemini_batch.wait.verdict import WaitDecision, WaitPolicy, evaluate

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow_gemini_batch.hooks.job_status import JobStatus


class WaitTracker:
    """What one wait remembers between reads, and what it does after each read.

    Shared by the worker (``job_waiter.JobWaiter``) and the triggerer (``triggers.job.GeminiBatchJobTrigger``)
    so both note a SUCCEEDED-without-output job the same way, log progress only when it changes, warn about
    unknown states, and hand the same inputs to :func:`evaluate`.
    """

    def __init__(self, policy: WaitPolicy, deadline: float | None) -> None:
        self.policy = policy
        self.deadline = deadline
        self.output_pending_since: dict[str, float] = {}
        self._progress = ProgressLog()

    def assess(self, statuses: Sequence[JobStatus], now: float, log: Any) -> WaitDecision:
        for s in statuses:
            if s.state == SUCCEEDED and not s.output_ready:
                self.output_pending_since.setdefault(s.name, now)
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
