"""R92-R96: the Vertex AI backend, bq:// in and bq:// out, on the emulator's Vertex side over the BigQuery emulator.

R92: dags/example_vertex_bigquery.py end to end with dag.test(): one row per key, outcomes reconciled, and the
worker's BigQuery clients receive no data row (only the one-row answers of counts and first keys; no Storage
Read client is opened). R93: the same logical date run again re-attaches (0 new creates). R94: a Vertex job
that ended FAILED, then a clear → one new job for it. R95: per-row errors in ``status`` land in the errors
table. R96: invalid rows stop the run before any create, naming the first keys.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError, GeminiBatchJobFailedError
from airflow_gemini_batch.manifest import job_names
from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor
from tests.gcp_emulators import PROJECT
from tests.reliability.helpers import StateStore, context
from tests.test_example_dags import _dagbag
from tests.vertex.bigquery_row_bytes import count_row_bytes

pytestmark = pytest.mark.timeout(600)
DAG_ID = "gemini_batch_vertex_bigquery_reviews"
CREATE = "batchPredictionJobs.create"


@pytest.fixture
def example_env(airflow_db: Any, vertex_conn: str, bq_client: Any, monkeypatch: pytest.MonkeyPatch):
    dataset = f"vx_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("GEMINI_BATCH_VERTEX_CONN_ID", vertex_conn)
    monkeypatch.setenv("GEMINI_BATCH_BIGQUERY_DATASET", dataset)
    monkeypatch.setenv("GEMINI_BATCH_VERTEX_DATASET", f"{dataset}_vertex")
    monkeypatch.setenv("GEMINI_BATCH_POLL_INTERVAL", "0.2")
    monkeypatch.setenv("GEMINI_BATCH_RETRIES", "0")
    yield dataset
    for name in (dataset, f"{dataset}_vertex"):
        bq_client.delete_dataset(name, delete_contents=True, not_found_ok=True)


def _answers(client: Any, dataset: str, table: str = "review_answers_vertex") -> list[dict[str, Any]]:
    return [dict(r) for r in client.list_rows(f"{PROJECT}.{dataset}.{table}")]


def test_R92_R93_vertex_example_end_to_end_no_row_through_the_worker_and_a_rerun_reattaches(
    example_env: str, vertex_emulator: Any, bq_client: Any, register_dag: Any, monkeypatch: pytest.MonkeyPatch
):
    dag = _dagbag().get_dag(DAG_ID)
    register_dag(dag)
    when = datetime.datetime(2026, 1, 5, tzinfo=datetime.timezone.utc)
    dag.test(
        logical_date=when, run_after=when
    )  # seeds the source table (its load job is the seed's, not ours)
    rows = _answers(bq_client, example_env)
    assert sorted(r["review_id"] for r in rows) == list(range(1, 501)), "one row per key"
    assert {r["outcome"] for r in rows} == {"succeeded"}
    assert all(r["sentiment"] in {"positive", "neutral", "negative"} and r["topic"] for r in rows)
    assert all(r["job_name"].startswith(f"projects/{PROJECT}/locations/") for r in rows)
    assert vertex_emulator.control.calls()[CREATE] == 1

    # The same logical date again, with the source already there: count the row data the worker receives.
    counted = count_row_bytes(monkeypatch)
    again = dag.test(logical_date=when, run_after=when)
    assert again.state == "success"
    assert vertex_emulator.control.calls()[CREATE] == 1, "the rerun re-attached: no new job"
    # Every answer the worker's BigQuery clients received: the checks' row of counts and first keys, and the
    # load's row of counts and token sums; never a source, request or prediction row.
    assert [len(a) for a in counted.answers] == [1, 1] and counted.read_clients == 0
    assert counted.bytes < 1000  # two rows of counts; the 500 rows' requests alone are ~50 kB
    monkeypatch.undo()
    rows = _answers(bq_client, example_env)
    assert sorted(r["review_id"] for r in rows) == list(range(1, 501)), "still one row per key"


def _source(bq_client: Any, dataset: str, n: int) -> str:
    from google.cloud import bigquery

    bq_client.create_dataset(dataset, exists_ok=True)
    table = f"{PROJECT}.{dataset}.items"
    schema = [bigquery.SchemaField("id", "INT64"), bigquery.SchemaField("name", "STRING")]
    bq_client.create_table(bigquery.Table(table, schema=schema))
    bq_client.insert_rows_json(table, [{"id": i, "name": None if i < 0 else f"item {i}"} for i in range(n)])
    return table


def _submit(vertex_conn: str, dataset: str, **kw: Any) -> GeminiBatchSubmitOperator:
    return GeminiBatchSubmitOperator(
        task_id="submit",
        gemini_conn_id=vertex_conn,
        source_conn_id=vertex_conn,
        source_table=f"{dataset}.items",
        key_column="id",
        prompt_template="Describe {name}.",
        bigquery_temp_dataset=f"{dataset}_vertex",
        **kw,
    )


def _wait(manifest: Any) -> Any:
    return GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05, timeout=120).execute(
        context(task_id="wait")
    )


def _load(vertex_conn: str, dataset: str, manifest: Any, **kw: Any) -> Any:
    op = GeminiBatchLoadResultsOperator(
        task_id="load",
        manifest=manifest,
        destination_conn_id=vertex_conn,
        destination_table=f"{dataset}.out",
        key_column="id",
        key_column_type="INT64",
        **kw,
    )
    return op.execute(context(task_id="load"))


@pytest.fixture
def dataset(vertex_conn: str, bq_client: Any):
    name = f"vr_{uuid.uuid4().hex[:8]}"
    yield name
    for n in (name, f"{name}_vertex"):
        bq_client.delete_dataset(n, delete_contents=True, not_found_ok=True)


def test_R94_a_failed_vertex_job_then_a_clear_makes_one_new_job(
    vertex_conn, vertex_emulator, bq_client, dataset
):
    _source(bq_client, dataset, 20)
    vertex_emulator.control.set_job_behaviour("agb-", final_state="FAILED", count=1)
    store = StateStore()
    first = _submit(vertex_conn, dataset).execute(context(store))
    with pytest.raises(GeminiBatchJobFailedError):
        _wait(first)

    second = _submit(vertex_conn, dataset).execute(context(store))  # the clear: same task state store
    (old,), (new,) = job_names(first), job_names(second)
    assert (
        new != old and second["shards"][0]["previous_jobs"] == [old] and second["shards"][0]["recovery"] == 1
    )
    assert second["shards"][0]["display_name"].endswith("-r1-00000")
    calls = vertex_emulator.control.calls()
    assert calls[CREATE] == 2 and calls.get("batchPredictionJobs.list", 0) == 0
    _wait(second)
    summary = _load(vertex_conn, dataset, second)
    assert summary["counts"]["succeeded"] == 20 and summary["status"] == "ok"
    assert sorted(r["id"] for r in _answers(bq_client, dataset, "out")) == list(range(20))

    third = _submit(vertex_conn, dataset).execute(context(store))  # a further clear re-attaches
    assert job_names(third) == [new] and vertex_emulator.control.calls()[CREATE] == 2


def test_R95_per_row_errors_in_status_land_in_the_errors_table(
    vertex_conn, vertex_emulator, bq_client, dataset
):
    _source(bq_client, dataset, 10)
    vertex_emulator.control.set_job_behaviour("agb-", fail_keys=["3", "7"], fail_status=429, key_column="id")
    manifest = _submit(vertex_conn, dataset).execute(context(StateStore()))
    _wait(manifest)
    summary = _load(vertex_conn, dataset, manifest, max_failed_fraction=0.5)
    assert summary["counts"] == {"succeeded": 8, "failed": 2, "invalid_output": 0, "missing": 0, "reused": 0}
    assert summary["first_failed_keys"] == ["3", "7"]
    errors = {r["id"]: r for r in _answers(bq_client, dataset, "out_errors")}
    assert sorted(errors) == [3, 7]
    assert all(
        r["outcome"] == "failed" and r["error_code"] == 429 and r["error_message"] for r in errors.values()
    )
    rows = _answers(bq_client, dataset, "out")
    assert len(rows) == 10 and {r["id"] for r in rows if r["outcome"] == "succeeded"} == set(range(10)) - {
        3,
        7,
    }


def test_R96_invalid_rows_stop_the_run_before_any_create(vertex_conn, vertex_emulator, bq_client, dataset):
    _source(bq_client, dataset, 5)
    bq_client.insert_rows_json(
        f"{PROJECT}.{dataset}.items", [{"id": 2, "name": "again"}, {"id": 9, "name": None}]
    )
    with pytest.raises(
        GeminiBatchInputError, match=r"1 empty prompt \(first keys: 9\); 1 duplicate key \(first keys: 2\)"
    ):
        _submit(vertex_conn, dataset).execute(context(StateStore()))
    assert vertex_emulator.control.calls().get(CREATE, 0) == 0
