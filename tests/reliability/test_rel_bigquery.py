"""R72, R73: dags/example_bigquery.py end to end with dag.test(): BigQuery table → Gemini batch (emulator) → BigQuery
on the BigQuery emulator. A rerun leaves one row per key (MERGE upsert); a load that fails part-way leaves the
destination exactly as it was. R85: the sink's two MERGEs (destination, errors table) apply together or not at
all."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from airflow_gemini_batch.results.rows import FAILED, MISSING, SUCCEEDED
from airflow_gemini_batch.sinks import BigQueryTableSink, table_sink
from tests.gcp_emulators import PROJECT
from tests.sinks.test_bigquery_sink import bad, load, ok, tables_of
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


def edit_every_review(client: Any, dataset: str) -> None:
    """Change every prompt, so the incremental DAG's next run sends (and upserts) every row again."""
    table = f"{PROJECT}.{dataset}.reviews"
    client.query(f"UPDATE `{table}` SET body = CONCAT(body, ' (edited)') WHERE TRUE").result(timeout=60)


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

    # Unchanged reviews: the incremental rerun sends nothing and leaves every row as it is.
    assert run_dag(register_dag).state == "success"
    assert len(emulator.control.jobs()) == 1
    assert {r["loaded_at"] for r in answers(bq_client, example_env)} == first_loaded

    edit_every_review(bq_client, example_env)
    rerun = run_dag(register_dag)  # every prompt changed: a new job for the same keys
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

    # The second run resends every (edited) review, and its results download fails every time: the load
    # fails after the sink was opened.
    edit_every_review(bq_client, example_env)
    emulator.control.inject_fault("files.download", status=404, count=50)
    assert run_dag(register_dag).state == "failed"
    assert sorted(answers(bq_client, example_env), key=lambda r: r["review_id"]) == before
    tables = sorted(t.table_id for t in bq_client.list_tables(example_env))
    assert tables == ["review_answers", "review_answers_errors", "reviews"], "the staging table is dropped"


class _FailsBetweenTheMerges(BigQueryTableSink):
    """The real sink, with a statement that fails at run time put between its two MERGEs (the injected
    fault: everything else - the load jobs, the script, the transaction - is the sink's own)."""

    def _merge_statements(self) -> list[str]:
        first, *rest = super()._merge_statements()
        return [first, "SELECT ERROR('injected between the two MERGEs')", *rest]


def queried(client: Any, table: str) -> dict[Any, dict[str, Any]]:
    """Rows by key, read by a query: the emulator's table metadata (list_rows) misses ALTER TABLE changes."""
    rows = [dict(r) for r in client.query(f"SELECT * FROM `{table}`").result()]
    assert len(rows) == len({r["key"] for r in rows}), f"duplicate keys in {table}"
    return {r["key"]: r for r in rows}


def test_R85_a_failure_between_or_at_the_second_merge_leaves_both_tables_as_they_were(
    gcp_conn: str, bq_client: Any, bq_dataset: str
):
    table = f"{bq_dataset}.results"
    load(table_sink(gcp_conn, table), [ok("a", "before"), bad("b"), bad("c")])
    before = (queried(bq_client, table), queried(bq_client, f"{table}_errors"))
    assert sorted(before[1]) == ["b", "c"]
    rerun = [ok("a", "after"), ok("b", "now fine"), bad("c", MISSING), bad("d")]

    # A statement failing at run time after the destination's MERGE ran, inside the same transaction.
    sink = _FailsBetweenTheMerges(table_sink(gcp_conn, table).clients, table)
    with pytest.raises(Exception, match="injected between the two MERGEs"):
        load(sink, rerun)
    assert (queried(bq_client, table), queried(bq_client, f"{table}_errors")) == before

    # The second MERGE itself fails: the errors table was changed by hand and lost its job_name column.
    bq_client.query(f"ALTER TABLE `{table}_errors` DROP COLUMN job_name").result()
    before_errors = queried(bq_client, f"{table}_errors")
    with pytest.raises(Exception, match="job_name"):
        load(table_sink(gcp_conn, table), rerun)
    assert queried(bq_client, table) == before[0]
    assert queried(bq_client, f"{table}_errors") == before_errors
    assert tables_of(bq_client, bq_dataset) == ["results", "results_errors"], "the staging tables are dropped"

    # Once the errors table is whole again, the rerun lands both MERGEs.
    bq_client.query(f"ALTER TABLE `{table}_errors` ADD COLUMN job_name STRING").result()
    load(table_sink(gcp_conn, table), rerun)
    rows = queried(bq_client, table)
    assert {k: (r["outcome"], r["text"]) for k, r in rows.items()} == {
        "a": (SUCCEEDED, "after"), "b": (SUCCEEDED, "now fine"), "c": (MISSING, None), "d": (FAILED, None),
    }  # fmt: skip
    assert sorted(queried(bq_client, f"{table}_errors")) == ["c", "d"]
