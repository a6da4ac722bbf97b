"""Stuck jobs: a job still PENDING ``max_pending_seconds`` after its creation is cancelled and its shard
resubmitted, at most ``max_stuck_resubmits`` times per shard (``GeminiBatchOperator``).

Why: the service expires a job 48 h after its creation, pending or running, with no results, and jobs have
sat PENDING for a day or more and then expired in bulk. Its target turnaround is 24 h and most jobs leave
PENDING within minutes, so a job still pending at :data:`DEFAULT_MAX_PENDING_SECONDS` (12 h) is in such an
episode: resubmitted then, the shard's new job still has its own 48 h, and a prompt one lands within the
24 h target. The default cap is one resubmit per shard, because jobs resubmitted during an episode have
been seen to stick as well: past the cap the job is left to run, and the near-expiry warning (42 h,
:mod:`airflow_gemini_batch.wait.tracker`) and the UI flag (40 h) apply.

Invariants:

* Counted before cancelled: the shard's ledger record gets ``stuck_resubmits + 1`` before
  ``batches.cancel``, so however the task ends afterwards (a crash, a retry, a clear) the cap holds and
  nothing loops. A shard at the cap is exempt from the stuck check (its job is left to run).
* Cancelled before created, never paid twice: the new job is made by the submit's own recovery
  (:func:`~airflow_gemini_batch.submit.submission.submit_shard`), which creates a shard's next generation
  (``-r<n>``) only after it has read the recorded job as CANCELLED (or FAILED / EXPIRED). A cancel that did
  not take (the job still PENDING, or it started or finished meanwhile) is re-attached, never replaced. A
  crash between the cancel and the create leaves a CANCELLED recorded job: the next try (a retry or a
  clear) resubmits that shard alone, as for any cancelled shard.
* Only with a durable ledger (a task state store) and ``on_failed_job="resubmit"``: without the store the
  count could not outlive the try, and with ``"fail"`` a cancelled shard is not resubmitted, so in either
  case no job is cancelled for being stuck (the near-expiry warning still applies).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.hooks.transport_errors import describe_error

if TYPE_CHECKING:
    import logging
    from collections.abc import Sequence

    from airflow.sdk.types import Logger

    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
    from airflow_gemini_batch.manifest import Manifest
    from airflow_gemini_batch.submit.ledger import SubmissionLedger

#: A job still PENDING this long after its creation is cancelled and its shard resubmitted (see above).
DEFAULT_MAX_PENDING_SECONDS = 12 * 3600.0
#: How many times one shard may be resubmitted for a stuck job.
DEFAULT_MAX_STUCK_RESUBMITS = 1


def check_stuck_settings(max_pending_seconds: float | None, max_stuck_resubmits: int) -> None:
    """Refuse impossible values before anything runs (:class:`ValueError` naming the fix)."""
    if max_pending_seconds is not None and not 0 <= float(max_pending_seconds) < 48 * 3600:
        raise ValueError(
            f"max_pending_seconds must be between 0 and 48 h (172800 s, when the service expires the job), "
            f"or None to never cancel a pending job; got {max_pending_seconds!r}."
        )
    if isinstance(max_stuck_resubmits, bool) or not isinstance(max_stuck_resubmits, int):
        raise ValueError(f"max_stuck_resubmits must be an integer >= 0, got {max_stuck_resubmits!r}.")
    if max_stuck_resubmits < 0:
        raise ValueError(f"max_stuck_resubmits must be >= 0, got {max_stuck_resubmits!r}.")


def stuck_exempt(manifest: Manifest | dict[str, Any], max_stuck_resubmits: int) -> frozenset[str]:
    """The manifest's jobs whose shard used up its stuck resubmits: never cancelled for being stuck."""
    return frozenset(
        str(shard["job_name"])
        for shard in manifest.get("shards") or []
        if shard.get("job_name") and int(shard.get("stuck_resubmits", 0)) >= max_stuck_resubmits
    )


def cancel_stuck(
    hook: GeminiBatchHook,
    ledger: SubmissionLedger,
    manifest: Manifest | dict[str, Any],
    job_names: Sequence[str],
    max_stuck_resubmits: int,
    log: Logger | logging.Logger,
) -> int:
    """Count, then cancel, each stuck job of ``manifest``; how many were counted and cancelled.

    The caller then runs the round's submit again, which resubmits every shard whose job reads CANCELLED.
    A cancel that fails is logged, not raised: the submit reads the job's state, and a job still PENDING is
    re-attached (its shard is at its count now, so it is not cancelled again past the cap).
    """
    by_job = {shard.get("job_name"): shard for shard in manifest.get("shards") or []}
    cancelled = 0
    for name in job_names:
        shard = by_job.get(name)
        if shard is None:
            continue
        count = ledger.record_stuck(int(shard["index"]), name)
        if count is None:
            log.warning("Shard %s no longer records job %s: not cancelling it", shard["index"], name)
            continue
        log.warning(
            "GEMINI BATCH JOB STUCK: %s (%s) is still PENDING past max_pending_seconds; cancelling it and "
            "resubmitting shard %s alone (stuck resubmit %d of at most %d).",
            name,
            shard.get("display_name") or "-",
            shard["index"],
            count,
            max_stuck_resubmits,
        )
        try:
            hook.cancel_job(name)
        except Exception as e:
            log.warning(
                "Could not cancel stuck job %s (%s); a job that is not CANCELLED is re-attached, never "
                "replaced.",
                name,
                describe_error(e),
            )
        cancelled += 1
    return cancelled
