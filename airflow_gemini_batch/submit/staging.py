"""Where a submit run keeps its files: shard JSONL files (local disk) and key lists (``staging_path``).

Invariants:

* Shard files are always on local disk: the SDK's resumable upload streams from a local path, and a shard
  can be up to 2 GB, so it must never be held in memory or staged through an object store first.
* Key lists (one JSON-encoded key per line, in shard order) and the skipped-keys file live under
  ``staging_path`` so the results stage can reconcile every input row key by key. ``staging_path`` is an
  ``ObjectStoragePath`` URI; when it is remote (``gs://...``) the files are written locally first, then
  copied once.
* The default staging folder is ``<tempdir>/gemini-batch/<identity hash>``: stable for a task instance across
  retries (never the try number), so a retry overwrites the same files. It is local to one worker; deployments
  with several workers must pass a shared ``staging_path`` (``gs://conn@bucket/prefix``, an NFS folder, ...)
  or set ``[gemini_batch] staging_path``, the deployment-wide default, or the results task may run where the
  key lists are not. :func:`check_reachable_by_other_workers` refuses that case before any paid call.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from airflow.sdk import conf

from airflow_gemini_batch.exceptions import GeminiBatchStagingError
from airflow_gemini_batch.storage import copy_file, file_uri, local_path

SHARD_FILE = "shard-{index:05d}.jsonl"
KEYS_FILE = "keys-{index:05d}.jsonl"
SKIPPED_KEYS_FILE = "skipped_keys.jsonl"


#: Executors that run every task on the scheduler's own machine, so a machine-local folder is shared.
LOCAL_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})


def staging_uri(staging_path: str | None, identity_hash: str) -> str:
    """The operator's ``staging_path``, else ``[gemini_batch] staging_path`` (with the task's identity hash
    appended, so task instances never share files), else the machine-local default."""
    if staging_path:
        return staging_path
    configured = conf.get("gemini_batch", "staging_path", fallback="") or ""
    if configured.strip():
        return f"{configured.strip().rstrip('/')}/{identity_hash}"
    return default_staging_uri(identity_hash)


def check_reachable_by_other_workers(uri: str, executor: str | None) -> None:
    """Refuse a machine-local staging folder (under the temp dir) when tasks may run on other machines.

    The load task reads the key lists the submit task wrote; with Celery or Kubernetes it may run on another
    worker, where a temp folder does not exist. An explicit local path elsewhere (an NFS mount) is the
    deployment's own choice and is accepted.
    """
    name = (executor or conf.get("core", "executor", fallback="LocalExecutor") or "LocalExecutor").split(",")[
        0
    ]
    name = name.split(":")[-1].strip().rsplit(".", 1)[-1]
    path = local_path(uri)
    if name in LOCAL_EXECUTORS or path is None:
        return
    temp = Path(tempfile.gettempdir()).resolve()
    if path.resolve() == temp or temp in path.resolve().parents:
        raise GeminiBatchStagingError(
            f"The staging folder {uri} is on this worker's local disk, but the executor is {name}: the load "
            "task may run on another machine and would not find the key lists. Nothing was submitted. Fix: "
            "set staging_path= on the submit operator, or [gemini_batch] staging_path in airflow.cfg "
            "(AIRFLOW__GEMINI_BATCH__STAGING_PATH), to storage every worker reaches (s3://..., gs://..., "
            "a shared folder)."
        )


def default_staging_uri(identity_hash: str) -> str:
    """``file://<tempdir>/gemini-batch/<identity hash>``: per task instance, shared by its retries."""
    return file_uri(Path(tempfile.gettempdir()) / "gemini-batch" / identity_hash)


class Staging:
    """The files of one submit run: a local work folder for shards, and ``staging_path`` for key lists.

    :param staging_uri: ``ObjectStoragePath`` URI or local path of the staging folder.
    :param identity_hash: run-stable hash of the task instance; names the local work folder when the staging
        folder is remote.
    """

    def __init__(self, staging_uri: str, identity_hash: str) -> None:
        local = local_path(staging_uri)
        self.uri = file_uri(local) if local is not None else staging_uri.rstrip("/")
        self.remote = local is None
        self.local_dir = (
            local if local is not None else Path(tempfile.gettempdir()) / "gemini-batch" / identity_hash
        )
        self.local_dir.mkdir(parents=True, exist_ok=True)

    def shard_path(self, index: int) -> Path:
        return self.local_dir / SHARD_FILE.format(index=index)

    def local_keys_path(self, index: int) -> Path:
        return self.local_dir / KEYS_FILE.format(index=index)

    def keys_uri(self, index: int) -> str:
        return f"{self.uri}/{KEYS_FILE.format(index=index)}"

    @property
    def local_skipped_path(self) -> Path:
        return self.local_dir / SKIPPED_KEYS_FILE

    @property
    def skipped_uri(self) -> str:
        return f"{self.uri}/{SKIPPED_KEYS_FILE}"

    def clear_stale(self) -> None:
        """Remove shard, key and skipped files a previous try left, so a smaller rerun leaves no extras."""
        for pattern in ("shard-*.jsonl", "keys-*.jsonl", SKIPPED_KEYS_FILE, "*.tmp"):
            for path in self.local_dir.glob(pattern):
                path.unlink()
        for path in self.local_dir.glob("dedupe-*"):
            shutil.rmtree(path, ignore_errors=True)

    def publish(self, local: Path, uri: str) -> str:
        """Copy a finished local file to the (remote) staging folder; local staging needs no copy."""
        if self.remote:
            copy_file(local, uri)
        return uri
