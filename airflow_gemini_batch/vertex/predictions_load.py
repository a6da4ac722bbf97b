"""PredictionsLoad: a Vertex AI prediction table → the destination table, in BigQuery, by SQL alone.

Invariants:

* No row passes through the worker. One query job classifies every key of the *request table* (so a key
  without a prediction is there too: ``missing``, by the anti-join ``request LEFT JOIN predictions``) into a
  stage table of the destination's schema: answer text, JSON, finish reason, token counts, model version and
  the error code/message are extracted from ``response`` / ``status`` in SQL; output columns are typed from the
  answer's JSON. Then one ``MERGE`` on the key into the destination and one into the errors table (a key that
  succeeds now leaves it), and one aggregate query answers the counts, tokens and first failed keys.
* Outcomes, as the Developer-API load classifies them: a non-empty ``status`` → ``failed`` (its error code
  and message); no answer text → ``failed`` (the finish reason says why); with a response schema, an answer
  that is not JSON → ``invalid_output``; else ``succeeded``; no prediction row → ``missing``. A key Vertex
  answered twice counts once (the latest ``processed_time``).
* Why a stage and not one ``MERGE`` straight from the predictions: the BigQuery emulator cannot plan
  ``SAFE.PARSE_JSON`` inside a ``MERGE`` source, and ``JSON_VALUE`` on a string that is not JSON (a plain-text
  ``status``) is an error there; the CTAS form runs on both. ``response`` is read as JSON when the table says
  JSON, else parsed with ``SAFE.PARSE_JSON`` (the emulator reports JSON columns as STRING).
* A rerun never duplicates (``MERGE`` on the key) and a failed load leaves the destination as it was (each
  ``MERGE`` is one statement; the stage is dropped however the load ends).
* The destination schema is the BigQuery sink's (:class:`~airflow_gemini_batch.sinks.bigquery.BigQueryTableSink`
  builds and creates it), so both paths write the same table.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.hooks.bigquery import BigQueryClients, parse_table_id
from airflow_gemini_batch.manifest import RESULTS_SUMMARY_KIND, job_names
from airflow_gemini_batch.results.load_run import LoadRun
from airflow_gemini_batch.results.rows import FAILED, INVALID_OUTPUT, MISSING, SUCCEEDED
from airflow_gemini_batch.sinks.bigquery import BigQueryTableSink
from airflow_gemini_batch.sinks.schema import ATTEMPTS, ERROR_COLUMNS, LOADED_AT

if TYPE_CHECKING:
    from collections.abc import Mapping

    from google.cloud.bigquery import Client

    from airflow_gemini_batch.hooks.bigquery import TableId
    from airflow_gemini_batch.hooks.job_status import JobStatus

log = logging.getLogger(__name__)

OUTCOMES = (SUCCEEDED, FAILED, INVALID_OUTPUT, MISSING)
TOKENS = ("prompt_tokens", "output_tokens", "thinking_tokens", "cached_tokens", "total_tokens")
FIRST_KEYS = 10
_TEXT = "$.candidates[0].content.parts[0].text"
_USAGE = {
    "prompt_tokens": "$.usageMetadata.promptTokenCount",
    "output_tokens": "$.usageMetadata.candidatesTokenCount",
    "thinking_tokens": "$.usageMetadata.thoughtsTokenCount",
    "cached_tokens": "$.usageMetadata.cachedContentTokenCount",
    "total_tokens": "$.usageMetadata.totalTokenCount",
}


class PredictionsLoad:
    """Load one Vertex AI BigQuery run's predictions into ``sink``'s tables.

    :param manifest: the submit's manifest (its ``vertex`` part names the request and prediction tables).
    :param sink: the destination (its schema, names and creation; its rows are never written through it).
    :param jobs: the run's job reads (the wait's); the prediction table is each job's ``output_uri``.
    """

    def __init__(self, manifest: Mapping[str, Any], sink: BigQueryTableSink, jobs: list[JobStatus]) -> None:
        self.manifest = manifest
        self.vertex = manifest["vertex"]
        self.sink = sink
        self.jobs = jobs
        self.clients: BigQueryClients = sink.clients
        self.request_table = parse_table_id(
            self.vertex["request_table"], self.clients.project, "request table"
        )

    def prediction_table(self) -> TableId | None:
        """Where the (one) job wrote; None when the run created no job (nothing to send)."""
        for job in self.jobs:
            uri = job.output_uri or f"bq://{self.vertex['prediction_table']}"
            return parse_table_id(uri.removeprefix("bq://"), self.clients.project, "prediction table")
        return None

    def _run(self, sql: str) -> list[dict[str, Any]]:
        job = self.clients.client.query(sql, location=self.clients.location)
        return [dict(row) for row in job.result()]

    def _json(self, client: Client, table: TableId, column: str) -> str:
        """``p.<column>`` as JSON: itself when the table says JSON, else parsed (NULL when it is not JSON)."""
        fields = {f.name: f.field_type for f in client.get_table(str(table)).schema}
        if column not in fields:
            return "CAST(NULL AS JSON)"
        if fields[column] == "JSON":
            return f"p.`{column}`"
        # a failed row's status is "<reason>: {google.rpc error JSON}" (or JSON alone, or plain text)
        return f"SAFE.PARSE_JSON(SUBSTR(p.`{column}`, GREATEST(STRPOS(p.`{column}`, '{{'), 1)))"

    def stage_sql(self, stage: TableId, predictions: TableId | None) -> str:
        sink, key = self.sink, f"`{self.sink.key_column}`"
        key_type = "INT64" if sink.integer_keys else "STRING"
        job_name = next((j.name for j in self.jobs), None)
        schema = self.manifest.get("response_schema") is not None
        if predictions is None:
            source = "(SELECT CAST(NULL AS STRING) AS k, CAST(NULL AS JSON) AS response, CAST(NULL AS JSON) AS st, CAST(NULL AS STRING) AS status_text) AS p"
        else:
            client = self.clients.client
            response, status = (
                self._json(client, predictions, "response"),
                self._json(client, predictions, "status"),
            )
            source = (
                f"(SELECT CAST(p.{key} AS STRING) AS k, {response} AS response, {status} AS st, "
                f"CAST(p.`status` AS STRING) AS status_text FROM {predictions.sql} AS p "
                f"QUALIFY ROW_NUMBER() OVER (PARTITION BY p.{key} ORDER BY p.`processed_time` DESC) = 1) AS p"
            )
        text = f"JSON_VALUE(p.response, '{_TEXT}')"
        failed_status = "p.k IS NOT NULL AND IFNULL(TRIM(p.status_text), '') <> ''"
        invalid = f"SAFE.PARSE_JSON({text}) IS NULL" if schema else "FALSE"
        outcome = (
            f"CASE WHEN p.k IS NULL THEN '{MISSING}' WHEN {failed_status} THEN '{FAILED}' "
            f"WHEN {text} IS NULL THEN '{FAILED}' WHEN {invalid} THEN '{INVALID_OUTPUT}' ELSE '{SUCCEEDED}' END"
        )
        finish = "JSON_VALUE(p.response, '$.candidates[0].finishReason')"
        error_message = (
            f"CASE WHEN p.k IS NULL THEN 'no prediction for this key in the job output' "
            f"WHEN {failed_status} THEN COALESCE(JSON_VALUE(p.st, '$.error.message'), JSON_VALUE(p.st, '$.message'), "
            f"p.status_text) WHEN {text} IS NULL THEN CONCAT('no answer text (finish reason ', "
            f"IFNULL({finish}, IFNULL(JSON_VALUE(p.response, '$.promptFeedback.blockReason'), 'none')), ')') END"
        )
        error_code = (
            f"IF({failed_status}, SAFE_CAST(COALESCE(JSON_VALUE(p.st, '$.error.code'), JSON_VALUE(p.st, '$.code')) "
            "AS INT64), NULL)"
        )
        cols = {
            sink.key_column: f"CAST(r.{key} AS {key_type})",
            "outcome": outcome,
            "text": text,
            "json_value": f"SAFE.PARSE_JSON({text})" if schema else "CAST(NULL AS JSON)",
            "finish_reason": finish,
            **{
                name: f"SAFE_CAST(JSON_VALUE(p.response, '{path}') AS INT64)" for name, path in _USAGE.items()
            },
            "model_version": "JSON_VALUE(p.response, '$.modelVersion')",
            "error_code": error_code,
            "error_message": error_message,
            "job_name": "@job_name" if job_name else "CAST(NULL AS STRING)",
            LOADED_AT[0]: "CURRENT_TIMESTAMP()",
        }
        if sink.attempts_column:
            cols[ATTEMPTS[0]] = "1"
        for name, (type_, _) in sink.output_columns.items():
            value = f"JSON_VALUE(SAFE.PARSE_JSON({text}), '$.{name}')"
            cols[name] = (
                f"SAFE_CAST({value} AS {type_})"
                if type_ != "JSON"
                else f"JSON_QUERY(SAFE.PARSE_JSON({text}), '$.{name}')"
            )
        select = ",\n  ".join(f"{expr} AS `{name}`" for name, expr in cols.items())
        return (
            f"CREATE TABLE {stage.sql} OPTIONS (expiration_timestamp = "
            f"TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 1 DAY)) AS\nSELECT\n  {select}\n"
            f"FROM {self.request_table.sql} AS r LEFT JOIN {source} ON CAST(r.{key} AS STRING) = p.k"
        )

    def merge_sql(self, target: TableId, stage: TableId, names: list[str], errors: bool) -> str:
        key = f"`{self.sink.key_column}`"
        q = [f"`{n}`" for n in names]
        updates = ", ".join(f"{c} = s.{c}" for c in q if c != key)
        inserts = f"INSERT ({', '.join(q)}) VALUES ({', '.join('s.' + c for c in q)})"
        head = f"MERGE {target.sql} AS t USING {stage.sql} AS s ON t.{key} = s.{key}\n"
        if not errors:
            return f"{head}WHEN MATCHED THEN UPDATE SET {updates}\nWHEN NOT MATCHED THEN {inserts}"
        done = f"s.`outcome` = '{SUCCEEDED}'"
        return (
            f"{head}WHEN MATCHED AND {done} THEN DELETE\nWHEN MATCHED THEN UPDATE SET {updates}\n"
            f"WHEN NOT MATCHED AND NOT {done} THEN {inserts}"
        )

    def counts_sql(self, stage: TableId) -> str:
        key = f"`{self.sink.key_column}`"
        parts = [f"COUNTIF(`outcome` = '{o}') AS `{o}`" for o in OUTCOMES]
        parts += [f"SUM(IFNULL(`{t}`, 0)) AS `{t}`" for t in TOKENS]
        parts.append(
            f"(SELECT ARRAY_AGG(k ORDER BY k LIMIT {FIRST_KEYS}) FROM (SELECT CAST({key} AS STRING) AS k FROM "
            f"{stage.sql} WHERE `outcome` <> '{SUCCEEDED}')) AS first_failed"
        )
        return f"SELECT {', '.join(parts)} FROM {stage.sql}"

    def load(self) -> dict[str, Any]:
        """Stage, MERGE twice, count; the summary's counts, tokens, first failed keys and destination."""
        from google.cloud.bigquery import QueryJobConfig, ScalarQueryParameter

        sink, client = self.sink, self.clients.client
        table, errors = sink.table, sink.errors
        sink._ensure(client, table, sink.schema(), partitioned=True)
        sink._ensure(
            client, errors, sink.schema([sink.key_column, *ERROR_COLUMNS, LOADED_AT[0]]), partitioned=False
        )
        stage = table.sibling(f"{table.table}__gemini_batch_vertex_{uuid.uuid4().hex[:12]}")
        job_name = next((j.name for j in self.jobs), None)
        params = [ScalarQueryParameter("job_name", "STRING", job_name)] if job_name else []
        try:
            client.query(
                self.stage_sql(stage, self.prediction_table()),
                job_config=QueryJobConfig(query_parameters=params),
                location=self.clients.location,
            ).result()
            stored = [n for n, _ in sink.columns if n not in ("embedding", "request_fingerprint")]
            merged = client.query(
                self.merge_sql(table, stage, stored, errors=False), location=self.clients.location
            )
            merged.result()
            error_names = [sink.key_column, *ERROR_COLUMNS, LOADED_AT[0]]
            self._run(self.merge_sql(errors, stage, error_names, errors=True))
            row = self._run(self.counts_sql(stage))[0]
        finally:
            client.delete_table(str(stage), not_found_ok=True)
        counts = {o: int(row[o] or 0) for o in OUTCOMES}
        log.info("MERGE into %s from %s: %s", table, stage, counts)
        return {
            "counts": counts,
            "tokens": {t: int(row[t] or 0) for t in TOKENS},
            "first_failed_keys": list(row["first_failed"] or []),
            "rows_affected": merged.num_dml_affected_rows,
        }


def vertex_summary(
    manifest: Mapping[str, Any],
    loaded: dict[str, Any],
    sink: BigQueryTableSink,
    max_failed_fraction: float,
    cost: dict[str, Any],
    jobs: list[dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    """The load summary (the Developer-API load's keys), from what the SQL answered."""
    counts = loaded["counts"]
    total = sum(counts.values())
    if manifest.get("request_count") not in (None, total):
        raise GeminiBatchInputError(
            f"The request table {manifest['vertex']['request_table']} has {total} keys but the submit counted "
            f"{manifest.get('request_count')}: it was changed after the submit; clear the submit to rebuild it."
        )
    not_ok = total - counts[SUCCEEDED]
    fraction = not_ok / total if total else 0.0
    return {
        "kind": RESULTS_SUMMARY_KIND,
        "version": 1,
        "status": "ok" if fraction <= max_failed_fraction else "too_many_failures",
        "backend": "vertex",
        "task": manifest.get("task") or "generate",
        "model": manifest.get("model"),
        "request_count": total,
        "manifest_request_count": manifest.get("request_count"),
        "skipped_count": int(manifest.get("skipped_count") or 0),
        "counts": {**counts, "reused": 0},
        "reused": 0,
        "reused_cost_usd": 0.0,
        "failed_fraction": round(fraction, 6),
        "max_failed_fraction": max_failed_fraction,
        "first_failed_keys": loaded["first_failed_keys"],
        "unknown_keys": 0,
        "unknown_key_examples": [],
        "duplicate_keys": 0,
        "duplicate_key_examples": [],
        "malformed_lines": 0,
        "jobs": jobs,
        "tokens": loaded["tokens"],
        "cost": cost,
        "reuse_saved": None,
        "estimate": None,
        "destination": sink.describe(),
        "rows_loaded": total,
        "seconds": round(seconds, 3),
    }


class VertexLoadRun(LoadRun):
    """The load stage for a Vertex AI BigQuery manifest: the same settings, summary and failure rule as
    :class:`~airflow_gemini_batch.results.load_run.LoadRun`, the rows moved by :class:`PredictionsLoad`."""

    def execute(self) -> dict[str, Any]:
        sink = self.sink()
        if not isinstance(sink, BigQueryTableSink) or (
            sink.clients.conn_id != self.manifest["vertex"].get("bigquery_conn_id")
            and sink.clients.project != BigQueryClients(self.manifest["vertex"]["bigquery_conn_id"]).project
        ):
            raise GeminiBatchInputError(
                "A Vertex AI BigQuery run loads into a BigQuery table of the same project (destination_conn_id "
                "a google_cloud_platform connection, destination_table dataset.table): the predictions never "
                "leave BigQuery."
            )
        started = time.monotonic()
        jobs = [self.hook.get_job(name) for name in job_names(self.manifest)]
        not_done = [f"{j.name} ({j.state})" for j in jobs if not j.output_ready]
        if not_done:
            raise GeminiBatchInputError(
                f"Vertex AI job(s) {', '.join(not_done)} have no predictions table to load; wait for them first."
            )
        loaded = PredictionsLoad(self.manifest, sink, jobs).load()
        reports = [{"name": j.name, "state": j.state, "output_uri": j.output_uri} for j in jobs]
        return vertex_summary(
            self.manifest,
            loaded,
            sink,
            self.settings.max_failed_fraction,
            self.cost(loaded["tokens"]),
            reports,
            time.monotonic() - started,
        )
