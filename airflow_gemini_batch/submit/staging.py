"""Where a submit run keeps its files: shard JSONL files (local disk) and key lists (``staging_path``).

Invariants:

* Shard files are always on local disk: the SDK's resumable upload streams from a local path, and a shard
  can be up to 2 GB, so it must never be held in memory or staged through an object store first.
* Key lists (one JSON-encoded key per line, in shard order), their request fingerprints (one sha256 hex per
  line, same order) and the skipped-keys file live under
  ``staging_path`` so the results stage can reconcile every input row key by key. ``staging_path`` is an
  ``ObjectStoragePath`` URI; when it is remote (``gs://...``) the files are written locally first, then
  copied once.
* The default staging folder is ``<tempdir>/gemini-batch/<identity hash>``: stable for a task instance across
  retries (never the try number), so a retry overwrites the same files. It is local to one worker; deployments
  with several workers must pass a shared ``staging_path`` (``gs://conn@bucket/prefix``, an NFS folder, ...)
  or set ``[gemini_batch] staging_path``, the deployment-wide default, or the results task may run where the
  key lists are not. :func:`check_reachable_by_other_workers` refuses that case before any paid call.
* Shard files live only as long as they are needed: a shard's file is deleted as soon as its job exists
  (created or re-attached), and every shard file left is deleted when the submit ends, failed or not. A
  retry rebuilds its shards from the input anyway (deterministically: same bytes, same fingerprint), and an
  uploaded file it recorded is reused by name, so no try ever needs a file an earlier try wrote. With a
  remote ``staging_path`` the local copies of the key lists go too, once published.
* The create marker (``creates-<identity hash>``) is written to the staging folder before this task
  instance's first ``create`` and never removed. It outlives the DAG run (the task state store does not: a
  re-created run starts with none), so "no records and no marker" proves no job of this identity was ever
  created here, and the orphan scan of ``batches.list`` is skipped.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from airflow.sdk import conf

from airflow_gemini_batch.exceptions import GeminiBatchStagingError
from airflow_gemini_batch.storage import (
    copy_file,
    file_uri,
    is_file,
    local_path,
    make_dirs,
    open_binary,
    uri_of,
)

if TYPE_CHECKING:
    from airflow_gemini_batch.storage import AnyPath

SHARD_FILE = "shard-{index:05d}.jsonl"
KEYS_FILE = "keys-{index:05d}.jsonl"
#: Request fingerprints of a shard's keys, one sha256 hex per line, in key-list order (``inputs.fingerprint``).
FINGERPRINTS_FILE = "fingerprints-{index:05d}.txt"
SKIPPED_KEYS_FILE = "skipped_keys.jsonl"
CREATE_MARKER_FILE = "creates-{identity_hash}"


#: Executors that run every task on the scheduler's own machine, so a machine-local folder is shared.
LOCAL_EXECUTORS = frozenset({"LocalExecutor", "SequentialExecutor", "DebugExecutor"})


def staging_uri(staging_path: AnyPath | None, identity_hash: str) -> str:
    """The operator's ``staging_path`` (an ``ObjectStoragePath`` as its URI with its connection: the form the
    manifest carries), else ``[gemini_batch] staging_path`` (with the task's identity hash appended, so task
    instances never share files), else the machine-local default."""
    if staging_path:
        return uri_of(staging_path)
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
        self.identity_hash = identity_hash

    def shard_path(self, index: int) -> Path:
        return self.local_dir / SHARD_FILE.format(index=index)

    def local_keys_path(self, index: int) -> Path:
        return self.local_dir / KEYS_FILE.format(index=index)

    def local_fingerprints_path(self, index: int) -> Path:
        return self.local_dir / FINGERPRINTS_FILE.format(index=index)

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
        for pattern in ("shard-*.jsonl", "keys-*.jsonl", "fingerprints-*.txt", SKIPPED_KEYS_FILE, "*.tmp"):
            for path in self.local_dir.glob(pattern):
                path.unlink()
        for path in self.local_dir.glob("dedupe-*"):
            shutil.rmtree(path, ignore_errors=True)

    @property
    def create_marker_uri(self) -> str:
        return f"{self.uri}/{CREATE_MARKER_FILE.format(identity_hash=self.identity_hash)}"

    def creates_attempted(self) -> bool:
        """Whether a submit of this identity ever got as far as a ``create`` with this staging folder."""
        return is_file(self.create_marker_uri)

    def record_create_attempt(self) -> None:
        """Write the create marker (before the first ``create``; an error here stops the submit before it)."""
        if not is_file(self.create_marker_uri):
            make_dirs(self.uri)
            with open_binary(self.create_marker_uri, "wb") as f:
                f.write(b"a create of this task instance's jobs was attempted\n")

    def remove_shard(self, index: int) -> None:
        """Delete one shard file: its job exists, so no try will upload it again."""
        self.shard_path(index).unlink(missing_ok=True)

    def remove_local_files(self) -> None:
        """Delete every shard file (and, with a remote staging folder, the local copies already published):
        what stays under the local folder is only what the load reads there (local staging's key lists)."""
        patterns = ["shard-*.jsonl", "*.tmp"]
        if self.remote:
            patterns += ["keys-*.jsonl", "fingerprints-*.txt", SKIPPED_KEYS_FILE]
        for pattern in patterns:
            for path in self.local_dir.glob(pattern):
                path.unlink(missing_ok=True)
        for path in self.local_dir.glob("dedupe-*"):
            shutil.rmtree(path, ignore_errors=True)
        if self.remote and not any(self.local_dir.iterdir()):
            self.local_dir.rmdir()

    def publish(self, local: Path, uri: str) -> str:
        """Copy a finished local file to the (remote) staging folder; local staging needs no copy."""
        if self.remote:
            copy_file(local, uri)
        return uri
