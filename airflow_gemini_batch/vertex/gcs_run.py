"""VertexGcsRun: a source that is not BigQuery (SQL through common-sql, a file) → Vertex AI batch prediction
jobs, ``gs://`` JSONL in and ``gs://`` JSONL out, one job per shard.

Invariants:

* Everything but the two API calls is the Developer-API submit's (:class:`~airflow_gemini_batch.submit.run.SubmitRun`):
  the same shard writer, key lists and fingerprints beside each shard, the same ledger (intent right before
  ``create``, job name right after; an orphan is looked up by display name; a clear re-attaches; a recorded
  job that ended FAILED, EXPIRED or CANCELLED is followed by that shard alone as ``-r<n>``). Only the hook
  differs (:class:`GcsStagedVertexHook`): Vertex has no Files API, so the "upload" writes the shard to the
  ``gs://`` ``staging_path`` through ObjectStoragePath, and the create names that object as ``src`` and a
  prefix beside it as ``dest``.
* A request line carries its row as the label ``gemini_batch_row`` = its line index in the shard (decimal).
  Vertex's JSONL output has no key field; labels are the only request field it returns, and label values are
  lowercase, at most 63 characters, from a small charset, which arbitrary keys (upper case, Unicode, long,
  integers vs strings) do not fit. A line index always fits, and the shard's key list (``keys-<n>.jsonl``,
  same order, published beside the shard before any create) maps it back to the key exactly. A shard is
  rebuilt byte for byte on a retry (its fingerprint is checked before re-attaching), so the indexes stay valid.
* No inline requests (Vertex has none): every shard goes as a file. Embeddings batches and context caches
  are refused before any call, as on the BigQuery path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.hooks.vertex import GeminiVertexBatchHook
from airflow_gemini_batch.storage import object_path, open_binary
from airflow_gemini_batch.submit.run import SubmitRun
from airflow_gemini_batch.submit.staging import staging_uri
from airflow_gemini_batch.vertex.limits import refuse_on_vertex

if TYPE_CHECKING:
    import logging
    from pathlib import Path

    from airflow.sdk.types import Logger

    from airflow_gemini_batch.hooks.job_status import JobStatus
    from airflow_gemini_batch.inputs.shards import ShardPlan
    from airflow_gemini_batch.manifest import Manifest
    from airflow_gemini_batch.submit.ledger import RunIdentity
    from airflow_gemini_batch.submit.run import SubmitSettings
    from airflow_gemini_batch.submit.staging import Staging
    from airflow_gemini_batch.submit.submission import PlanSubmission

#: The request label that carries a line's index in its shard (Vertex label keys: lowercase, digits, ``_``).
ROW_LABEL = "gemini_batch_row"
INPUT_DIR = "vertex-input"
OUTPUT_DIR = "vertex-output"
_WRITE_BLOCK = 1024


def vertex_uri(uri: str) -> str:
    """``gs://bucket/key`` of an ObjectStoragePath URI (``gs://conn@bucket/key`` names a connection Vertex
    does not know)."""
    path = object_path(uri)
    return f"gs://{path.bucket}/{path.key}"


def labelled_line(line: bytes, index: int) -> bytes:
    """A shard line ``{"key", "request"}`` as Vertex reads it: ``{"request"}`` with the row label added."""
    request = orjson.loads(line)["request"]
    request["labels"] = {**(request.get("labels") or {}), ROW_LABEL: str(index)}
    return orjson.dumps({"request": request}) + b"\n"


class GcsStagedVertexHook(GeminiVertexBatchHook):
    """The Vertex hook with the shard "upload" done as a ``gs://`` write (set :attr:`staging_uri` first)."""

    staging_uri: str | None = None

    def upload_jsonl(self, path: str | Path, display_name: str, mime_type: str = "jsonl") -> str:
        """Write the local shard to ``<staging>/vertex-input/<display name>.jsonl`` (streamed, labelled); its
        ``gs://bucket/key``. Each generation has its own display name, so its own object."""
        if not self.staging_uri:
            raise GeminiBatchInputError("The Vertex AI gs:// path needs a gs:// staging_path.")
        target = f"{self.staging_uri}/{INPUT_DIR}/{display_name}.jsonl"
        with open(path, "rb") as source, open_binary(target, "wb") as out:
            block: list[bytes] = []
            for index, line in enumerate(source):
                block.append(labelled_line(line, index))
                if len(block) >= _WRITE_BLOCK:
                    out.write(b"".join(block))
                    block = []
            out.write(b"".join(block))
        return vertex_uri(target)

    def create_job(
        self,
        *,
        model: str,
        display_name: str,
        file_name: str | None = None,
        inline_requests: list[dict[str, Any]] | None = None,
        embeddings: bool = False,
        src: str | None = None,
        dest: str | None = None,
    ) -> JobStatus:
        """A "file" here is the ``gs://`` shard: the job reads it and writes under ``vertex-output/<name>``."""
        if file_name is not None and src is None:
            base = file_name.rsplit(f"/{INPUT_DIR}/", 1)[0]
            src, dest, file_name = file_name, f"{base}/{OUTPUT_DIR}/{display_name}", None
        return super().create_job(
            model=model,
            display_name=display_name,
            file_name=file_name,
            inline_requests=inline_requests,
            embeddings=embeddings,
            src=src,
            dest=dest,
        )


def refuse_unsupported(settings: SubmitSettings) -> None:
    """What the Vertex AI gs:// path does not do, refused before any call, with the fix."""
    problems = []
    if not staging_uri(settings.staging_path, "identity").startswith("gs://"):
        problems.append(
            "Vertex AI reads its input from Cloud Storage: set staging_path='gs://<connection>@<bucket>/<prefix>' "
            "(or [gemini_batch] staging_path) to a bucket the Vertex AI service agent can read and write"
        )
    refuse_on_vertex(settings, problems)


class VertexGcsRun(SubmitRun):
    """The Developer-API submit with Vertex AI's ``gs://`` in and out (see the module docstring).

    :param hook: the operator's Vertex AI hook (its connection and location are used).
    """

    def __init__(
        self,
        hook: GeminiVertexBatchHook,
        settings: SubmitSettings,
        log: Logger | logging.Logger | None = None,
    ) -> None:
        refuse_unsupported(settings)
        staged = GcsStagedVertexHook(
            gemini_conn_id=hook.gemini_conn_id, retry_attempts=hook.retry_attempts, location=hook.location
        )
        super().__init__(staged, settings, log)
        self.staged_hook = staged

    def staging(self, identity: RunIdentity, executor: str | None = None) -> Staging:
        staging = super().staging(identity, executor)
        self.staged_hook.staging_uri = staging.uri
        return staging

    def inline_requests(self, plan: ShardPlan) -> list[dict[str, Any]] | None:
        return None  # Vertex has no inline batches: every shard is a gs:// file

    def manifest(
        self,
        identity: RunIdentity,
        staging: Staging,
        plan: ShardPlan,
        submitted: PlanSubmission,
        skipped_uri: str | None,
        estimate: Any = None,
    ) -> Manifest:
        manifest = super().manifest(identity, staging, plan, submitted, skipped_uri, estimate)
        manifest["vertex_gcs"] = {"row_label": ROW_LABEL}
        return manifest
