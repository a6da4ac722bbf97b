"""Deleting a shard's uploaded input files once its jobs are finished: Files API storage is 20 GB per project.

Invariants:

* A file is deleted only when every job that could read it is finished (a terminal state). The load is
  where that is observed: it reads each job and loads only finished ones, so the shard's current file goes
  right after that read; the files of its earlier generations (``previous_files``: their jobs ended FAILED,
  EXPIRED or CANCELLED) go after a read of each earlier job confirms it is finished too. Each job names
  its own input file (``inputConfig.fileName``), so nothing depends on the manifest knowing every file. A job that is
  still PENDING or RUNNING keeps its file: a stuck job may be cancelled and created again from it.
* Idempotent and tolerant: a file already gone (404: deleted by an earlier try of the load, or expired
  after the service's 48 h) counts as deleted; any other error is logged as a warning and never fails the
  load — the answers are already paid for and loading them matters more than tidying up (the service
  deletes every uploaded file after 48 h in any case).
* ``keep_uploaded_files=True`` on the submit operator (carried in the manifest) keeps them all.
* Responses files are never deleted here: they are the only copy of paid answers until they are loaded, and
  a clear of the load reads them again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.genai import errors as genai_errors

from airflow_gemini_batch.hooks.transport_errors import describe_error

if TYPE_CHECKING:
    import logging

    from airflow.sdk.types import Logger

    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
    from airflow_gemini_batch.hooks.job_status import JobStatus


def delete_uploaded_file(hook: GeminiBatchHook, file_name: str, log: Logger | logging.Logger) -> bool:
    """Delete one uploaded file; True when it is gone (deleted now, or already: a 404)."""
    try:
        hook.delete_file(file_name)
    except genai_errors.ClientError as e:
        if e.code == 404:
            return True
        log.warning("Could not delete uploaded file %s: %s", file_name, describe_error(e)[:200])
        return False
    except Exception as e:
        log.warning("Could not delete uploaded file %s: %s", file_name, describe_error(e)[:200])
        return False
    log.info("Deleted uploaded file %s (its job is finished)", file_name)
    return True


def delete_finished_shard_files(
    hook: GeminiBatchHook,
    manifest: dict[str, Any],
    shard: dict[str, Any],
    job: JobStatus,
    log: Logger | logging.Logger,
) -> int:
    """Delete the uploaded files of a shard whose current ``job`` the caller has just read as finished:
    the file the job itself names (or the manifest's), and those of the shard's earlier generations, each
    after a read shows its job finished. The job's own ``inputConfig`` is what makes this complete when the
    manifest does not know a file (a job found again by display name after its DAG run was re-created).

    :returns: how many files are gone (deleted now or already).
    """
    if manifest.get("keep_uploaded_files") or not job.done:
        return 0
    gone = 0
    current = job.input_file or shard.get("file_name")
    if current and not shard.get("inline"):
        gone += delete_uploaded_file(hook, current, log)
    recorded = shard.get("previous_files") or {}
    for job_name in shard.get("previous_jobs") or []:
        earlier = _finished_or_gone(hook, job_name)
        if earlier is False:
            continue
        file_name = (earlier.input_file if earlier is not True else None) or recorded.get(job_name)
        if file_name:
            gone += delete_uploaded_file(hook, file_name, log)
    return gone


def _finished_or_gone(hook: GeminiBatchHook, job_name: str) -> JobStatus | bool:
    """The earlier job when it is finished, True when the service no longer knows it, else False."""
    try:
        job = hook.get_job(job_name)
    except genai_errors.ClientError as e:
        return e.code == 404  # the job itself is gone: nothing can read its file any more
    return job if job.done else False
