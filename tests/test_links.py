"""``GeminiBatchJobLink``: the URL it builds, and that a real task run stores it where the UI reads it."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_gemini_batch.links import GeminiBatchJobLink, page_url
from tests.conftest import xcom_of


def ti_key(task_id: str = "submit", map_index: int = -1) -> Any:
    from airflow.models.taskinstancekey import TaskInstanceKey

    return TaskInstanceKey(
        dag_id="reviews",
        task_id=task_id,
        run_id="manual__2025-01-01T00:00:00+00:00",
        try_number=1,
        map_index=map_index,
    )


def test_link_opens_the_page_inside_airflow_filtered_to_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example:8080/")
    url = GeminiBatchJobLink().get_link(None, ti_key=ti_key("wait"))  # type: ignore[arg-type]
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        "http://airflow.example:8080/plugin/gemini-batches/gemini-batch/ui/"
    )
    assert parse_qs(parts.query) == {
        "dag_id": ["reviews"],
        "run_id": ["manual__2025-01-01T00:00:00+00:00"],
        "task_id": ["wait"],
    }
    assert GeminiBatchJobLink().name == "Gemini batch jobs"


def test_link_under_a_sub_path_and_to_one_job(monkeypatch: pytest.MonkeyPatch) -> None:
    # Airflow served under /airflow: the UI route and the iframe's own path both carry the prefix.
    assert page_url(job_id="abc", base_url="https://corp.example/airflow/") == (
        "https://corp.example/airflow/plugin/gemini-batches/airflow/gemini-batch/ui/jobs/abc"
    )
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "")
    assert page_url(dag_id="d").startswith("/plugin/gemini-batches/gemini-batch/ui/?dag_id=d")


def test_real_operators_store_the_link_for_the_ui(
    airflow_db: Path,
    gemini_conn: str,
    emulator: Any,
    sqlite_warehouse: Any,
    register_dag: Any,
    tmp_path: Path,
) -> None:
    """Airflow evaluates ``get_link`` on the worker and stores the URL in XCom ``_link_<class>``: for each of
    our three operators, in a real ``dag.test()`` run against the emulator."""
    from airflow.sdk import DAG

    from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
    from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
    from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor

    with DAG(dag_id="links_e2e", schedule=None, start_date=datetime(2025, 1, 1, tzinfo=timezone.utc)) as dag:
        submit = GeminiBatchSubmitOperator(
            task_id="submit",
            requests=["Name a colour.", "Name a fruit."],
            staging_path=str(tmp_path / "staging"),
            gemini_conn_id=gemini_conn,
        )
        wait = GeminiBatchJobSensor(
            task_id="wait", manifest=submit.output, deferrable=True, poll_interval=0.2
        )
        load = GeminiBatchLoadResultsOperator(
            task_id="load",
            manifest=submit.output,
            destination_conn_id=sqlite_warehouse.conn_id,
            destination_table=sqlite_warehouse.table("links_results"),
            key_column_type="INTEGER",
        )
        submit >> wait >> load

    register_dag(dag)
    dag_run = dag.test()
    assert dag_run.state == "success"
    assert len(emulator.control.jobs()) == 1

    key = GeminiBatchJobLink().xcom_key
    assert key == "_link_GeminiBatchJobLink"
    for task_id in ("submit", "wait", "load"):
        url = xcom_of(dag_run, task_id, key)
        assert url, f"task {task_id} stored no {key} XCom"
        parts = urlsplit(url)
        assert parts.path.endswith("/plugin/gemini-batches/gemini-batch/ui/")
        assert parse_qs(parts.query) == {
            "dag_id": ["links_e2e"],
            "run_id": [dag_run.run_id],
            "task_id": [task_id],
        }
