"""A Vertex AI prediction table → the destination in BigQuery (the emulator): outcomes classified and reconciled
in SQL (missing keys by the anti-join against the request table), the errors table, a rerun that does not
duplicate, and no data row received by the worker.

The prediction table is written here in the shape Vertex AI writes it (the key passed through, ``request``,
``response``, ``status``, ``processed_time``); tests/vertex/test_vertex_bigquery_run.py has the emulator's."""

from __future__ import annotations

import orjson
import pytest

from airflow_gemini_batch.hooks.bigquery import BigQueryClients
from airflow_gemini_batch.hooks.job_status import JobStatus
from airflow_gemini_batch.sinks.bigquery import BigQueryTableSink
from airflow_gemini_batch.vertex.predictions_load import PredictionsLoad
from tests.vertex.bigquery_row_bytes import count_row_bytes

pytestmark = pytest.mark.timeout(300)
JOB = "projects/test-project/locations/us-central1/batchPredictionJobs/7"


def _response(text: str | None, finish: str = "STOP") -> str:
    candidate = {
        "finishReason": finish,
        **({"content": {"parts": [{"text": text}]}} if text is not None else {}),
    }
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 4, "totalTokenCount": 14}
    return orjson.dumps({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "m-001"}).decode()


def _tables(bq_client, dataset: str) -> tuple[str, str]:
    from google.cloud import bigquery

    requests, predictions = f"{bq_client.project}.{dataset}.req", f"{bq_client.project}.{dataset}.pred"
    bq_client.create_table(
        bigquery.Table(
            requests, schema=[bigquery.SchemaField("id", "INT64"), bigquery.SchemaField("request", "STRING")]
        )
    )
    bq_client.insert_rows_json(requests, [{"id": k, "request": "{}"} for k in range(1, 7)])
    schema = [
        bigquery.SchemaField("id", "INT64"),
        bigquery.SchemaField("request", "STRING"),
        bigquery.SchemaField("response", "STRING"),
        bigquery.SchemaField("status", "STRING"),
        bigquery.SchemaField("processed_time", "TIMESTAMP"),
    ]
    bq_client.create_table(bigquery.Table(predictions, schema=schema))
    rows = [
        (1, _response('{"sentiment": "positive", "score": 0.9}'), ""),
        (2, None, 'Too Many Requests: {"error": {"code": 429, "message": "Resource exhausted"}}'),
        (3, _response("not json"), ""),
        (4, _response(None, finish="SAFETY"), ""),
        (5, None, "plain text failure"),
        # 6: no prediction at all → missing
        (1, _response('{"sentiment": "negative", "score": 0.1}'), ""),  # an older duplicate answer
    ]
    times = ["2026-01-01T00:00:02Z"] * 5 + ["2026-01-01T00:00:01Z"]
    bq_client.insert_rows_json(
        predictions,
        [
            {"id": k, "request": "{}", "response": r, "status": s, "processed_time": t}
            for (k, r, s), t in zip(rows, times, strict=True)
        ],
    )
    return requests, predictions


def _load(gcp_conn, dataset, requests, predictions):
    clients = BigQueryClients(gcp_conn)
    sink = BigQueryTableSink(
        clients,
        f"{dataset}.answers",
        key_column="id",
        key_column_type="INT64",
        output_columns={"sentiment": "STRING", "score": "FLOAT64"},
    )
    manifest = {
        "response_schema": {"type": "object"},
        "vertex": {"request_table": requests, "prediction_table": predictions, "key_column": "id"},
    }
    job = JobStatus(name=JOB, state="SUCCEEDED", output_uri=f"bq://{predictions}")
    return PredictionsLoad(manifest, sink, [job]).load()


def test_outcomes_reconciled_in_sql(gcp_conn, bq_client, bq_dataset, monkeypatch):
    requests, predictions = _tables(bq_client, bq_dataset)
    counted = count_row_bytes(monkeypatch)
    loaded = _load(gcp_conn, bq_dataset, requests, predictions)
    assert loaded["counts"] == {"succeeded": 1, "failed": 3, "invalid_output": 1, "missing": 1}
    assert loaded["first_failed_keys"] == ["2", "3", "4", "5", "6"]
    assert loaded["tokens"]["prompt_tokens"] == 30 and loaded["tokens"]["total_tokens"] == 42
    # the worker received one answer of one row (the counts); no prediction, request or destination row
    assert [len(a) for a in counted.answers] == [1] and counted.read_clients == 0
    monkeypatch.undo()
    rows = {r["id"]: dict(r) for r in bq_client.list_rows(f"{bq_dataset}.answers")}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    assert (
        rows[1]["outcome"] == "succeeded" and rows[1]["sentiment"] == "positive" and rows[1]["score"] == 0.9
    )
    assert (
        rows[1]["prompt_tokens"] == 10 and rows[1]["job_name"] == JOB and rows[1]["model_version"] == "m-001"
    )
    assert (rows[2]["outcome"], rows[2]["error_code"], rows[2]["error_message"]) == (
        "failed",
        429,
        "Resource exhausted",
    )
    assert rows[3]["outcome"] == "invalid_output"
    assert rows[4]["outcome"] == "failed" and "SAFETY" in rows[4]["error_message"]
    assert rows[5]["error_message"] == "plain text failure"
    assert rows[6]["outcome"] == "missing"
    errors = {r["id"]: r["outcome"] for r in bq_client.list_rows(f"{bq_dataset}.answers_errors")}
    assert errors == {2: "failed", 3: "invalid_output", 4: "failed", 5: "failed", 6: "missing"}


def test_rerun_upserts_and_a_key_that_succeeds_leaves_the_errors_table(gcp_conn, bq_client, bq_dataset):
    from google.cloud import bigquery

    requests, predictions = _tables(bq_client, bq_dataset)
    _load(gcp_conn, bq_dataset, requests, predictions)
    bq_client.query(
        f"INSERT INTO `{predictions}` (id, request, response, status, processed_time) VALUES "
        f"(6, '{{}}', @r, '', TIMESTAMP '2026-01-01 00:00:09')",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter(
                    "r", "STRING", _response('{"sentiment": "neutral", "score": 0.5}')
                )
            ]
        ),
    ).result()
    loaded = _load(gcp_conn, bq_dataset, requests, predictions)
    assert loaded["counts"]["missing"] == 0 and loaded["counts"]["succeeded"] == 2
    keys = [r["id"] for r in bq_client.list_rows(f"{bq_dataset}.answers")]
    assert sorted(keys) == [1, 2, 3, 4, 5, 6]
    assert 6 not in {r["id"] for r in bq_client.list_rows(f"{bq_dataset}.answers_errors")}
