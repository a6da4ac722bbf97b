"""R72, R73: dags/example_bigquery.py end to end with dag.test(): BigQuery table → Gemini batch (emulator) → BigQuery
on the BigQuery emulator. A rerun leaves one row per key (MERGE upsert); a load that fails part-way leaves the
destination exactly as it was."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.gcp_emulators import PROJECT
from tests.test_example_dags import _dagbag

pytestmark = pytest.mark.timeout(600)
DAG_ID = "gemini_batch_bigquery_reviews"


@pytest.fixture
def example_env(
    airflow_db: Any, gemini_conn: str, gcp_conn: str, bq_client: Any, monkeypatch: pytest.MonkeyPatch
):
    """What ``make demo-bigquery`` sets: the GCP connection, a dataset of this test's own, short polls."""
    dataset = f"demo_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("GEMINI_BATCH_GCP_CONN_ID", gcp_conn)
    monkeypatch.setenv("GEMINI_BATCH_BIGQUERY_DATASET", dataset)
    monkeypatch.setenv("GEMINI_BATCH_POLL_INTERVAL", "0.2")
    monkeypatch.setenv("GEMINI_BATCH_RETRIES", "0")
    yield dataset
    bq_client.delete_dataset(dataset, delete_contents=True, not_found_ok=True)


def answers(client: Any, dataset: str) -> list[dict[str, Any]]:
    return [dict(r) for r in client.list_rows(f"{PROJECT}.{dataset}.review_answers")]


def run_dag(register_dag: Any) -> Any:
    dag = _dagbag().get_dag(DAG_ID)
    register_dag(dag)
    return dag.test()


def test_R72_bigquery_to_batch_to_bigquery_and_a_rerun_keeps_one_row_per_key(
    example_env: str, emulator: Any, bq_client: Any, register_dag: Any
):
    run = run_dag(register_dag)
    assert run.state == "success"
    rows = answers(bq_client, example_env)
    assert sorted(r["review_id"] for r in rows) == list(range(1, 501))
    assert {r["outcome"] for r in rows} == {"succeeded"}
    assert all(r["sentiment"] in {"positive", "neutral", "negative"} and r["topic"] for r in rows)
    assert all(r["sentiment"] == r["json_value"]["sentiment"] for r in rows)
    first_loaded = {r["loaded_at"] for r in rows}

    rerun = run_dag(register_dag)  # a new run: new jobs, the same keys
    assert rerun.state == "success"
    rows = answers(bq_client, example_env)
    assert sorted(r["review_id"] for r in rows) == list(range(1, 501)), "one row per key after the rerun"
    assert {r["loaded_at"] for r in rows}.isdisjoint(first_loaded), "every row was updated by the MERGE"
    assert len(emulator.control.jobs()) == 2
    tables = sorted(t.table_id for t in bq_client.list_tables(example_env))
    assert tables == ["review_answers", "review_answers_errors", "reviews"], "no staging table is left"


def test_R73_a_failed_bigquery_load_leaves_the_destination_untouched(
    example_env: str, emulator: Any, bq_client: Any, register_dag: Any
):
    assert run_dag(register_dag).state == "success"
    before = sorted(answers(bq_client, example_env), key=lambda r: r["review_id"])

    # The second run's results download fails every time: the load fails after the sink was opened.
    emulator.control.inject_fault("files.download", status=404, count=50)
    assert run_dag(register_dag).state == "failed"
    assert sorted(answers(bq_client, example_env), key=lambda r: r["review_id"]) == before
    tables = sorted(t.table_id for t in bq_client.list_tables(example_env))
    assert tables == ["review_answers", "review_answers_errors", "reviews"], "the staging table is dropped"
