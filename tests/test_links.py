"""``GeminiBatchJobLink``: the URL it builds, and that a real task run stores it where the UI reads it."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_gemini_batch.links import GeminiBatchJobLink, page_url


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


def test_a_task_run_stores_the_link_for_the_ui(airflow_db: Path) -> None:
    """Airflow evaluates ``get_link`` on the worker and stores the URL in XCom ``_link_<class>``."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.models.xcom import XComModel
    from airflow.sdk import DAG, BaseOperator
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session
    from sqlalchemy import select

    class LinkedOperator(BaseOperator):
        operator_extra_links = (GeminiBatchJobLink(),)

        def execute(self, context: Any) -> None:
            return None

    with DAG(dag_id="links_e2e", schedule=None, start_date=datetime(2025, 1, 1, tzinfo=timezone.utc)) as dag:
        LinkedOperator(task_id="submit")

    # dag.test() in 3.3.2 only runs DAGs it finds serialized; write this in-test DAG as the dag-processor would.
    DagBundlesManager().sync_bundles_to_db()
    with create_session() as session:
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
        )
    dag_run = dag.test()
    assert dag_run.state == "success"

    with create_session() as session:
        row = session.execute(
            select(XComModel).where(
                XComModel.dag_id == "links_e2e",
                XComModel.run_id == dag_run.run_id,
                XComModel.key == GeminiBatchJobLink().xcom_key,
            )
        ).scalar_one()
        url = XComModel.deserialize_value(row)
    assert "/plugin/gemini-batches/gemini-batch/ui/?" in url
    assert parse_qs(urlsplit(url).query)["task_id"] == ["submit"]
    assert parse_qs(urlsplit(url).query)["run_id"] == [dag_run.run_id]
