"""The Vertex batch prediction worker: reads a job's input from the BigQuery / GCS emulators, answers every row
with the emulator's responder, and writes the predictions back there, as Vertex does.

Invariants:

* Answers are the Developer-API side's (``responder.answer`` on ``models/<model id>``): the same request gets
  the same bytes on both APIs.
* BigQuery input (``bq://project.dataset.table``) needs a ``request`` column (JSON, or STRING holding JSON).
  The output table has the input's pass-through columns (every column but ``request`` / ``response`` /
  ``status`` / ``processed_time`` and those of type ARRAY, STRUCT, RANGE, DATETIME or GEOGRAPHY, which Vertex
  does not pass through) with their types, then ``request`` (the input's type), ``response`` (JSON: the
  GenerateContentResponse, NULL for a failed row), ``status`` (STRING: ``""``, or the error text
  ``"<reason>: {"error": {"code", "message", "status"}}"``) and ``processed_time`` (TIMESTAMP). A destination
  table that exists already fails the job (Vertex's rule for a full table reference); a missing dataset of
  a project-only destination is created.
* GCS input: JSONL lines ``{"request": {...}}`` (other fields are not passed through) from every
  ``gcsSource.uris`` object (a ``*`` matches any characters); the output is ``predictions.jsonl`` in the
  job's ``gcsOutputDirectory``, one ``{"status", "processed_time", "request", "response"}`` line per input line.
* A row's key, for ``fail_keys`` / ``fail_fraction`` and the per-key request counts, is its ``key_column``
  (behaviour) pass-through value, else its first pass-through column's; for JSONL ``request.labels`` of
  ``key_column`` (default ``key``).
* Streaming: rows are read page by page and written to a local temp file, then loaded / uploaded in one
  call; memory is flat in the row count. Nothing is published when the job was stopped (cancel / delete /
  reset); an input or output the emulators refuse ends the job FAILED with their error.
* Each job builds its own clients on the endpoints the emulator was started with (anonymous credentials).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import fnmatch
import http
import logging
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
from google.api_core.client_options import ClientOptions
from google.api_core.exceptions import GoogleAPIError
from google.auth.credentials import AnonymousCredentials

import airflow_gemini_batch.emulator.responder as responder
from airflow_gemini_batch.emulator.common import CANONICAL_STATUS
from airflow_gemini_batch.emulator.engine import OutputWriter
from airflow_gemini_batch.emulator.faults import fails_by_fraction, row_failure
from airflow_gemini_batch.emulator.vertex_jobs import VertexJob, parse_bq_uri

if TYPE_CHECKING:
    from collections.abc import Iterator

    from google.cloud import bigquery
    from google.cloud.storage import Blob
    from google.cloud.storage import Client as StorageClient

    from airflow_gemini_batch.emulator.engine import JobEngine
    from airflow_gemini_batch.emulator.jobs import Job

log = logging.getLogger(__name__)
RESERVED = ("request", "response", "status", "processed_time")
NOT_PASSED = ("RECORD", "STRUCT", "RANGE", "DATETIME", "GEOGRAPHY")
#: BigQuery row errors that Vertex keeps per row rather than failing the job (key column values never).
_ROW_CORRUPTIONS = ("drop_key", "duplicate_key")


def _retry() -> Any:
    """google-cloud-bigquery's retry, capped at 30 s (a 500 would otherwise be retried for 10 minutes).

    ``google.cloud.bigquery`` and ``google.cloud.storage`` are imported where used, not at module level: they
    take seconds to import, and every emulator process (most never see a Vertex job) would pay that at start.
    """
    from google.cloud import bigquery

    return bigquery.DEFAULT_RETRY.with_deadline(30.0)


class VertexInputError(Exception):
    """The job's input or output cannot be used; the job ends FAILED with this message."""


def status_text(error: dict[str, Any]) -> str:
    """A failed row's ``status`` as Vertex writes it: the HTTP reason, then the google.rpc error as JSON."""
    code = int(error.get("code") or 500)
    try:
        reason = http.HTTPStatus(code).phrase
    except ValueError:
        reason = "Error"
    detail = {
        "error": {
            "code": code,
            "message": str(error.get("message") or ""),
            "status": CANONICAL_STATUS.get(code, "UNKNOWN"),
        }
    }
    return f"{reason}: {orjson.dumps(detail).decode()}"


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.time):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to the predictions table")


def _now() -> str:
    return dt.datetime.now(tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class VertexWorker:
    """Processes Vertex jobs for a :class:`~.engine.JobEngine` (registered as its ``vertex`` kind)."""

    def __init__(
        self, engine: JobEngine, bigquery_endpoint: str | None, storage_endpoint: str | None
    ) -> None:
        self.engine = engine
        self.bigquery_endpoint = bigquery_endpoint
        self.storage_endpoint = storage_endpoint

    # ---- clients ----

    def bigquery_client(self, project: str) -> bigquery.Client:
        if self.bigquery_endpoint is None:
            raise VertexInputError(
                "the emulator was started without a BigQuery endpoint (--bigquery-endpoint)"
            )
        from google.cloud import bigquery

        return bigquery.Client(
            project=project,
            client_options=ClientOptions(api_endpoint=self.bigquery_endpoint),
            credentials=AnonymousCredentials(),
        )

    def storage_client(self, project: str) -> StorageClient:
        if self.storage_endpoint is None:
            raise VertexInputError("the emulator was started without a GCS endpoint (--gcs-endpoint)")
        from google.cloud.storage import Client as StorageClient

        return StorageClient(
            project=project,
            client_options=ClientOptions(api_endpoint=self.storage_endpoint),
            credentials=AnonymousCredentials(),
        )

    # ---- the job ----

    def process(self, job: Job) -> None:
        assert isinstance(job, VertexJob)
        with tempfile.TemporaryDirectory(prefix="vertex-job-") as tmp:
            out_path = Path(tmp) / "predictions.jsonl"
            try:
                if job.input_kind == "bigquery":
                    self._bigquery_job(job, out_path)
                else:
                    self._gcs_job(job, out_path)
            except (VertexInputError, GoogleAPIError) as exc:
                if not job.stop.is_set():
                    self.engine.finish(job, error_message=f"Batch prediction failed: {exc}")
                return
        if not job.stop.is_set():
            self.engine.finish(job)

    def _answer(
        self, job: VertexJob, key: Any, request: dict[str, Any] | None, error: str | None
    ) -> tuple[dict[str, Any] | None, str]:
        """``(response or None, status)`` for one row, with the job's row failures applied."""
        behaviour = job.behaviour
        if error is not None or request is None:
            return None, status_text({"code": 400, "message": error or "Missing request."})
        if key is not None and (
            str(key) in behaviour.fail_keys or fails_by_fraction(key, behaviour.fail_fraction)
        ):
            return None, status_text(row_failure(behaviour.fail_status))
        kind, body = responder.answer(request, f"models/{job.model.rsplit('/', 1)[-1]}", "generate")
        if kind == "error":
            return None, status_text(body)
        return body, ""

    def _rows(
        self,
        job: VertexJob,
        rows: Iterator[tuple[Any, dict[str, Any] | None, str | None, dict[str, Any]]],
        fh: IO[bytes],
    ) -> None:
        corruption = job.behaviour.corrupt_output
        writer = OutputWriter(
            corruption if corruption in _ROW_CORRUPTIONS or job.input_kind == "gcs" else None, fh
        )
        total = max(job.request_count, 1)
        for index, (key, request, error, row) in enumerate(rows):
            if job.stop.is_set():
                return
            response, status = self._answer(job, key, request, error)
            writer.add(row | {"response": response, "status": status, "processed_time": _now()})
            self.engine.count_row(job, key, status == "")
            self.engine.pace(job, (index + 1) / total)
        writer.close({"request": {}, "response": None, "status": "", "processed_time": _now()})

    # ---- BigQuery ----

    def _bigquery_job(self, job: VertexJob, out_path: Path) -> None:
        project, dataset, table = parse_bq_uri(job.input_uris[0], "input")
        if dataset is None or table is None:
            raise VertexInputError(
                f"the input {job.input_uris[0]} must name a table (bq://project.dataset.table)"
            )
        client = self.bigquery_client(project)
        source = client.get_table(f"{project}.{dataset}.{table}", retry=_retry())
        by_name = {f.name: f for f in source.schema}
        if "request" not in by_name:
            raise VertexInputError(
                f"the input table {job.input_uris[0]} has no 'request' column (JSON or STRING)"
            )
        passed = [
            f
            for f in source.schema
            if f.name not in RESERVED and f.mode != "REPEATED" and f.field_type not in NOT_PASSED
        ]
        key_name = job.behaviour.key_column or (passed[0].name if passed else None)
        assert job.output_table is not None
        out_project, out_dataset, out_table = parse_bq_uri(job.output_table, "output")
        out_client = client if out_project == project else self.bigquery_client(out_project)
        destination = f"{out_project}.{out_dataset}.{out_table}"
        if self._exists(out_client, destination):
            raise VertexInputError(f"the output table bq://{destination} already exists")
        job.request_count = int(source.num_rows or 0)

        def rows() -> Iterator[tuple[Any, dict[str, Any] | None, str | None, dict[str, Any]]]:
            for row in client.list_rows(source, page_size=1000, retry=_retry()):
                values = dict(row.items())
                raw = values.get("request")
                request, error = raw, None
                if isinstance(raw, str):
                    try:
                        request = orjson.loads(raw)
                    except orjson.JSONDecodeError as exc:
                        request, error = None, f"Invalid JSON in the request column: {exc}"
                if request is not None and not isinstance(request, dict):
                    request, error = None, "The request column is not a JSON object."
                out = {f.name: values.get(f.name) for f in passed} | {"request": raw}
                # Why the round trip: NUMERIC, BYTES and TIME values become what a JSON load job reads.
                out = orjson.loads(orjson.dumps(out, default=_json_default))
                yield (values.get(key_name) if key_name else None), request, error, out

        with out_path.open("wb") as fh:
            self._rows(job, rows(), fh)
        if job.stop.is_set():
            return
        from google.cloud import bigquery

        schema = [
            *passed,
            by_name["request"],
            bigquery.SchemaField("response", "JSON"),
            bigquery.SchemaField("status", "STRING"),
            bigquery.SchemaField("processed_time", "TIMESTAMP"),
        ]
        out_client.create_dataset(f"{out_project}.{out_dataset}", exists_ok=True, retry=_retry())
        config = bigquery.LoadJobConfig(
            schema=schema, source_format="NEWLINE_DELIMITED_JSON", write_disposition="WRITE_EMPTY"
        )
        with out_path.open("rb") as data:
            out_client.load_table_from_file(data, destination, job_config=config).result(timeout=120)

    @staticmethod
    def _exists(client: bigquery.Client, table: str) -> bool:
        try:
            client.get_table(table, retry=_retry())
        except GoogleAPIError as exc:
            if getattr(exc, "code", None) == 404:
                return False
            raise
        return True

    # ---- GCS ----

    def _gcs_job(self, job: VertexJob, out_path: Path) -> None:
        client = self.storage_client(job.project)
        blobs = self._input_blobs(client, job.input_uris)
        key_name = job.behaviour.key_column or "key"
        total = 0
        for blob in blobs:
            with blob.open("rb") as fh:
                total += sum(1 for line in fh if line.strip())
        job.request_count = total

        def rows() -> Iterator[tuple[Any, dict[str, Any] | None, str | None, dict[str, Any]]]:
            for blob in blobs:
                with blob.open("rb") as fh:
                    for raw in fh:
                        if not raw.strip():
                            continue
                        try:
                            line = orjson.loads(raw)
                        except orjson.JSONDecodeError as exc:
                            yield None, None, f"Invalid JSON in input line: {exc}", {"request": None}
                            continue
                        request = line.get("request") if isinstance(line, dict) else None
                        if not isinstance(request, dict):
                            yield None, None, "The line has no 'request' object.", {"request": request}
                            continue
                        labels = request.get("labels")
                        key = labels.get(key_name) if isinstance(labels, dict) else None
                        yield key, request, None, {"request": request}

        with out_path.open("wb") as fh:
            self._rows(job, rows(), fh)
        if job.stop.is_set():
            return
        assert job.gcs_output_directory is not None
        bucket, _, prefix = job.gcs_output_directory.removeprefix("gs://").partition("/")
        client.bucket(bucket).blob(f"{prefix}/predictions.jsonl").upload_from_filename(
            str(out_path), content_type="application/jsonl"
        )

    @staticmethod
    def _input_blobs(client: StorageClient, uris: list[str]) -> list[Blob]:
        found: list[Blob] = []
        for uri in uris:
            if not uri.startswith("gs://"):
                raise VertexInputError(f"the input {uri!r} is not a gs:// URI")
            bucket, _, path = uri.removeprefix("gs://").partition("/")
            if "*" in path:
                listed = client.list_blobs(bucket, prefix=path.split("*", 1)[0])
                matched = sorted(
                    (b for b in listed if fnmatch.fnmatchcase(b.name, path)), key=lambda b: b.name
                )
                if not matched:
                    raise VertexInputError(f"no object matches the input {uri}")
                found += matched
                continue
            blob = client.bucket(bucket).get_blob(path)
            if blob is None:
                raise VertexInputError(f"the input object {uri} does not exist")
            found.append(blob)
        return found
