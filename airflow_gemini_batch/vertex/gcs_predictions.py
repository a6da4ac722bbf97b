"""A Vertex AI gs:// run's predictions → the usual destination sinks, through the Developer-API load.

Invariants:

* The load is :class:`~airflow_gemini_batch.results.load_run.LoadRun`'s (parser, classification, key
  reconciliation with ``missing`` keys, sinks, cost, summary); only the hook differs
  (:class:`GcsPredictionsHook`): a finished job's "responses file" is ``predictions.jsonl`` in the directory
  the job reports (``outputInfo.gcsOutputDirectory``; Vertex picks its name), and its "download" streams
  that object into a local file of Developer-API result lines, ``{"key", "response"}`` or
  ``{"key", "error"}``.
* Keys come back through the request label ``gemini_batch_row`` (the line's index in its shard,
  :mod:`~airflow_gemini_batch.vertex.gcs_run`) and the shard's key list: exact, whatever the key's type or
  length, in any output order. A line without a valid index is written without a key (the parser reports it
  malformed, its key ends up ``missing``). Memory is one shard's key list (at most
  ``max_requests_per_job`` lines), never the run's rows.
* A failed row's ``status`` is Vertex's error text, ``"<HTTP reason>: {"error": {"code", "message",
  "status"}}"``: the JSON from the first ``{`` gives the error code and message; a status that is not in
  that form is kept whole as the message.
* Finished jobs' staged input objects are deleted as uploaded files are on the Developer API
  (``keep_uploaded_files`` keeps them); the predictions stay where Vertex wrote them.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any

import orjson

from airflow_gemini_batch.hooks.vertex import GeminiVertexBatchHook
from airflow_gemini_batch.results.load_run import LoadRun
from airflow_gemini_batch.storage import object_path, open_binary
from airflow_gemini_batch.vertex.gcs_run import ROW_LABEL

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from airflow_gemini_batch.hooks.job_status import JobStatus

PREDICTIONS_FILE = "predictions.jsonl"
_NO_RESULT = {"error": {"message": "the prediction has neither a response nor a status"}}


def status_error(status: str) -> dict[str, Any]:
    """``{"code", "message", "status"}`` of a failed row's ``status`` text (see the module docstring)."""
    start = status.find("{")
    if start >= 0:
        try:
            error = orjson.loads(status[start:]).get("error")
        except (orjson.JSONDecodeError, AttributeError):
            error = None
        if isinstance(error, dict) and error.get("message"):
            return {k: error.get(k) for k in ("code", "message", "status")}
    return {"message": status}


def result_line(obj: Any, keys: list[bytes]) -> bytes:
    """One prediction as a Developer-API result line (the key spliced in as its key-list JSON)."""
    if not isinstance(obj, dict):
        return orjson.dumps(_NO_RESULT) + b"\n"
    status, response = obj.get("status"), obj.get("response")
    if isinstance(status, str) and status.strip():
        result: dict[str, Any] = {"error": status_error(status)}
    elif isinstance(response, dict):
        result = {"response": response}
    else:
        result = _NO_RESULT
    labels = (obj.get("request") or {}).get("labels") or {}
    index = labels.get(ROW_LABEL) if isinstance(labels, dict) else None
    body = orjson.dumps(result)
    if isinstance(index, str) and index.isdigit() and int(index) < len(keys):
        return b'{"key":' + keys[int(index)] + b"," + body[1:] + b"\n"
    return body + b"\n"


def convert_predictions(predictions: IO[bytes], keys: list[bytes], out: IO[bytes]) -> int:
    """Stream ``predictions.jsonl`` into result lines; a line that is not JSON is copied (reported malformed)."""
    count = 0
    for line in predictions:
        if not line.strip():
            continue
        try:
            out.write(result_line(orjson.loads(line), keys))
        except orjson.JSONDecodeError:
            out.write(line if line.endswith(b"\n") else line + b"\n")
        count += 1
    return count


def read_keys(uri: str) -> list[bytes]:
    """A shard's key list, one JSON-encoded key per entry, in shard line order."""
    with open_binary(uri) as f:
        return [line.rstrip(b"\r\n") for line in f if line.strip()]


class GcsPredictionsHook(GeminiVertexBatchHook):
    """The Vertex hook whose jobs' responses are their ``predictions.jsonl`` (see the module docstring).

    :param manifest: the submit's manifest: its shards' key lists, and ``staging_path``'s connection (used to
        read the bucket Vertex wrote to).
    """

    def __init__(self, gemini_conn_id: str, manifest: Mapping[str, Any], **kwargs: Any) -> None:
        super().__init__(gemini_conn_id=gemini_conn_id, **kwargs)
        self.keys_of_job = {s["job_name"]: s["keys_path"] for s in manifest.get("shards") or []}
        self.storage_conn_id = object_path(manifest["staging_path"]).conn_id
        self._keys_of_file: dict[str, str] = {}

    def storage_uri(self, uri: str) -> str:
        """``gs://bucket/key`` as an ObjectStoragePath URI on the staging path's connection."""
        if not self.storage_conn_id or "@" in uri.split("/", 3)[2]:
            return uri
        return uri.replace("gs://", f"gs://{self.storage_conn_id}@", 1)

    def get_job(self, name: str) -> JobStatus:
        job = super().get_job(name)
        if job.output_uri and job.output_uri.startswith("gs://") and not job.responses_file:
            file = f"{job.output_uri.rstrip('/')}/{PREDICTIONS_FILE}"
            if name in self.keys_of_job:
                self._keys_of_file[file] = self.keys_of_job[name]
            job = dataclasses.replace(job, responses_file=file)
        return job

    def download_file(
        self, file_name: str, destination: str | Path, attempts: int = 5, backoff_seconds: float = 1.0
    ) -> Path:
        from pathlib import Path

        keys = read_keys(self._keys_of_file[file_name])
        target = Path(destination)
        with open_binary(self.storage_uri(file_name)) as source, target.open("wb") as out:
            convert_predictions(source, keys, out)
        return target

    def delete_file(self, file_name: str) -> None:
        """Delete a finished job's staged input object (``gs://``)."""
        object_path(self.storage_uri(file_name)).unlink(missing_ok=True)


class VertexGcsLoadRun(LoadRun):
    """:class:`LoadRun` over a Vertex AI gs:// run's jobs (see the module docstring)."""

    @cached_property
    def hook(self) -> GcsPredictionsHook:
        return GcsPredictionsHook(self.gemini_conn_id, self.manifest)
