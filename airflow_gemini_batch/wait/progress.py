"""Batch progress for the task log: one line over every job, logged only when a state or a count changes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow_gemini_batch.hooks.job_status import JobStatus


def progress_line(statuses: Sequence[JobStatus]) -> str:
    """``overall 3/10 succeeded, 1 failed, 6 pending | batches/a RUNNING 3/5 ok 0 failed 2 pending | ...``."""
    total = sum(s.request_count for s in statuses)
    parts = [
        f"overall {sum(s.succeeded_count for s in statuses)}/{total} succeeded, "
        f"{sum(s.failed_count for s in statuses)} failed, {sum(s.pending_count for s in statuses)} pending"
    ]
    parts.extend(
        f"{s.name} {s.state} {s.succeeded_count}/{s.request_count} ok {s.failed_count} failed "
        f"{s.pending_count} pending"
        for s in statuses
    )
    return " | ".join(parts)


class ProgressLog:
    """Remembers the last ``(state, counts)`` per job, so progress is logged only when it changes."""

    def __init__(self) -> None:
        self._last: tuple[tuple[Any, ...], ...] | None = None

    def changed(self, statuses: Sequence[JobStatus]) -> str | None:
        key = tuple(
            (s.name, s.state, s.succeeded_count, s.failed_count, s.pending_count, s.output_ready)
            for s in statuses
        )
        if key == self._last:
            return None
        self._last = key
        return progress_line(statuses)
