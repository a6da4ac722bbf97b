"""Incremental runs onto BigQuery (R100, R101): a BigQuery table → Gemini batch → a BigQuery table, run on
consecutive dates with ``incremental=True``.

Each run is a submit → the jobs' end → a load, on a new run id (as consecutive DAG runs are): the real SDK
against the Gemini emulator, the real BigQuery clients (REST and Storage Read gRPC) against the BigQuery
emulator. The Gemini emulator's counts (creates, uploads, requests processed per key) say what was paid for;
the destination says what each key holds.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor
from tests.gcp_emulators import PROJECT
from tests.inputs.test_bigquery import _StorageReadRefused, storage_read_refused  # noqa: F401 - a fixture
from tests.reliability.helpers import load_op
from tests.reliability.test_rel_incremental import _creates, _ctx, _sent_keys, _wait_done

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(600)
N = 60


def _products(client: Any, table: str, n: int) -> None:
    """``(id INT64, name STRING, category STRING)``, ``n`` deterministic rows, by one load job."""
    from google.cloud import bigquery

    schema = [
        bigquery.SchemaField(c, t) for c, t in (("id", "INT64"), ("name", "STRING"), ("category", "STRING"))
    ]
    rows = (
        {"id": i, "name": f"product {i}", "category": ("tools", "garden")[i % 2]} for i in range(1, n + 1)
    )
    data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    config = bigquery.LoadJobConfig(schema=schema, source_format="NEWLINE_DELIMITED_JSON")
    client.load_table_from_file(io.BytesIO(data), table, job_config=config).result(timeout=60)


def _run(conn: str, dataset: str, tmp_path: Path, run_id: str) -> tuple[dict, dict]:
    """One DAG run's submit → wait → load, BigQuery to BigQuery, ``incremental=True``; (manifest, summary)."""
    dest = f"{dataset}.answers"
    submit = GeminiBatchSubmitOperator(
        task_id="submit",
        source_conn_id=conn,
        source_table=f"{dataset}.products",
        source_columns=["id", "name", "category"],
        key_column="id",
        prompt_template="Describe {name} ({category}).",
        staging_path=str(tmp_path / run_id),
        create_retry_base_seconds=0.01,
        incremental=True,
        destination_conn_id=conn,
        destination_table=dest,
    )
    manifest = orjson.loads(orjson.dumps(submit.execute(_ctx(run_id, "submit"))))
    _wait_done(manifest)
    GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05).execute(_ctx(run_id, "wait"))
    summary = load_op(conn, dest, manifest, key_column_type="INT64").execute(_ctx(run_id, "load"))
    return manifest, summary


def _stored(client: Any, dataset: str) -> list[dict[str, Any]]:
    rows = client.list_rows(f"{PROJECT}.{dataset}.answers", selected_fields=None)
    return sorted(
        ({k: r[k] for k in ("key", "outcome", "text", "loaded_at", "request_fingerprint")} for r in rows),
        key=lambda r: r["key"],
    )


def _requests(emulator: Any) -> int:
    return sum(emulator.control.request_counts().values())


def test_R100_bigquery_incremental_reruns_send_only_the_changed_rows(
    gcp_conn: str, gemini_conn: str, emulator: Any, bq_client: Any, bq_dataset: str, tmp_path: Path
):
    _products(bq_client, f"{PROJECT}.{bq_dataset}.products", N)
    first, summary = _run(gcp_conn, bq_dataset, tmp_path, "scheduled__2026-01-01")
    assert first["reused"] == 0 and first["request_count"] == N and summary["counts"]["succeeded"] == N
    assert _creates(emulator) == (1, 1) and _requests(emulator) == N
    before = _stored(bq_client, bq_dataset)
    assert [r["key"] for r in before] == list(range(1, N + 1))
    assert all(r["outcome"] == "succeeded" and len(r["request_fingerprint"]) == 64 for r in before)

    # Unchanged table, next date: nothing sent (no job, no upload, no request); the rows stay as they are.
    second, summary = _run(gcp_conn, bq_dataset, tmp_path, "scheduled__2026-01-02")
    assert second["shards"] == [] and second["request_count"] == 0 and second["reused"] == N
    assert second["reused_cost_usd"] > 0
    assert _creates(emulator) == (1, 1) and _requests(emulator) == N
    assert summary["counts"] == {"succeeded": 0, "failed": 0, "invalid_output": 0, "missing": 0, "reused": N}
    assert _stored(bq_client, bq_dataset) == before

    # Four prompts change in the source table: exactly those four are sent, in one new job.
    changed = [3, 17, 31, 60]
    bq_client.query(
        f"UPDATE `{PROJECT}.{bq_dataset}.products` SET name = CONCAT('renamed ', name) "
        f"WHERE id IN ({', '.join(map(str, changed))})"
    ).result(timeout=60)
    third, summary = _run(gcp_conn, bq_dataset, tmp_path, "scheduled__2026-01-03")
    assert _sent_keys(third) == changed and third["reused"] == N - len(changed)
    assert _creates(emulator) == (2, 2) and _requests(emulator) == N + len(changed)
    assert sorted(int(k) for k, n in emulator.control.request_counts().items() if n == 2) == changed
    assert summary["counts"]["succeeded"] == len(changed) and summary["counts"]["reused"] == N - len(changed)
    after = _stored(bq_client, bq_dataset)
    assert [r["key"] for r in after] == list(range(1, N + 1)), "still one row per key"
    assert [a["key"] for a, b in zip(after, before, strict=True) if a != b] == changed
    assert "renamed product 17" in after[16]["text"]


def test_R101_without_the_storage_read_api_the_rerun_reuses_the_same_rows(
    storage_read_refused: _StorageReadRefused,  # noqa: F811 - the fixture
    gcp_conn: str,
    gemini_conn: str,
    emulator: Any,
    bq_client: Any,
    bq_dataset: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
):
    _products(bq_client, f"{PROJECT}.{bq_dataset}.products", 20)
    _run(gcp_conn, bq_dataset, tmp_path, "scheduled__2026-01-01")
    bq_client.query(
        f"UPDATE `{PROJECT}.{bq_dataset}.answers` SET outcome = 'failed' WHERE `key` IN (4, 5)"
    ).result(timeout=60)
    second, summary = _run(gcp_conn, bq_dataset, tmp_path, "scheduled__2026-01-02")
    assert _sent_keys(second) == [4, 5] and second["reused"] == 18
    assert summary["counts"]["succeeded"] == 2 and summary["counts"]["reused"] == 18
    assert _creates(emulator) == (2, 2) and _requests(emulator) == 22
    assert "reading the answers of" in caplog.text and "through paged list_rows" in caplog.text
    assert [r["outcome"] for r in _stored(bq_client, bq_dataset)] == ["succeeded"] * 20
