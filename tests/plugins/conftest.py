"""Fixtures for the UI plugin tests: real DAG runs of our real operators, whose XComs the page then reads.

``record_run`` runs a DAG with ``dag.test()``: ``GeminiBatchSubmitOperator`` (a ``requests=[...]`` list, split
into shards of ``max_requests_per_job``) creates real jobs in the emulator over the real SDK, then
``GeminiBatchJobSensor`` (deferrable; its trigger runs inline in ``dag.test()``) and
``GeminiBatchLoadResultsOperator`` (into a SQLite table) record their summaries. The page is thus tested
against exactly the metadata-DB rows a production run leaves behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.conftest import Warehouse

MODEL = "gemini-2.5-flash"
DEFAULT_CONN_ENV = "AIRFLOW_CONN_GEMINI_BATCH_DEFAULT"


def prompts(n: int, failing: Collection[int] = ()) -> list[str]:
    """``n`` prompts (key = position); the emulator answers those at ``failing`` positions with an error line."""
    return [f"PLEASE_FAIL item {k}" if k in failing else f"Describe item {k} in one line." for k in range(n)]


@pytest.fixture
def record_run(
    airflow_db: Path,
    gemini_conn: str,
    emulator: Any,
    sqlite_warehouse: Warehouse,
    register_dag: Callable[[Any], Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Any]:
    """Run a DAG of our operators and return its (successful) DagRun. See the module docstring.

    :param dag_id: the DAG id.
    :param n_requests: prompts submitted (keys ``0 .. n_requests - 1``).
    :param max_requests_per_job: shard size: ``ceil(n_requests / max_requests_per_job)`` jobs.
    :param failing: positions whose prompt makes the emulator answer with an error line.
    :param wait: ``"sensor"`` (a ``GeminiBatchJobSensor`` task ``wait``), ``"submit"`` (the submit task
        waits itself: ``wait_for_completion=True``) or None (no wait summary).
    :param load: add the ``GeminiBatchLoadResultsOperator`` task ``load`` (needs a wait).
    :param pending: hold this run's jobs in PENDING (an emulator hold on exactly as many jobs as it creates),
        so they stay PENDING (only with ``wait=None``); later jobs have the emulator's usual lifecycle.
    :param conn_id: run the operators on this connection id, defined for the run as a copy of the emulator
        connection; a test may then point it elsewhere or delete it, as an admin might.
    :param model: the model of the jobs (one without a known price has no cost).
    :param logical_date: the run's logical date (the same one again re-creates the run, as a user's rerun).
    :param state: the state the run must end in.
    """

    def run(
        dag_id: str,
        *,
        n_requests: int = 3,
        max_requests_per_job: int | None = None,
        failing: Collection[int] = (),
        wait: str | None = "sensor",
        load: bool = True,
        pending: bool = False,
        conn_id: str | None = None,
        model: str = MODEL,
        logical_date: datetime | None = None,
        state: str = "success",
    ) -> Any:
        from airflow.sdk import DAG

        from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
        from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
        from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor

        assert wait in ("sensor", "submit", None)
        assert not (pending and wait), "pending jobs cannot be waited for"
        assert not (load and not wait), "the load task needs finished jobs"
        if conn_id is not None:
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", os.environ[DEFAULT_CONN_ENV])
        conn = conn_id or gemini_conn

        with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2025, 1, 1, tzinfo=timezone.utc)) as dag:
            submit = GeminiBatchSubmitOperator(
                task_id="submit",
                requests=prompts(n_requests, failing),
                model=model,
                gemini_conn_id=conn,
                max_requests_per_job=max_requests_per_job or n_requests,
                staging_path=str(tmp_path / "staging" / dag_id),
                wait_for_completion=wait == "submit",
                deferrable=True,
                poll_interval=0.2,
            )
            last: Any = submit
            if wait == "sensor":
                last = GeminiBatchJobSensor(
                    task_id="wait", manifest=submit.output, deferrable=True, poll_interval=0.2
                )
                submit >> last
            if load:
                loader = GeminiBatchLoadResultsOperator(
                    task_id="load",
                    manifest=submit.output,
                    destination_conn_id=sqlite_warehouse.conn_id,
                    destination_table=sqlite_warehouse.table(f"{dag_id}_results"),
                    key_column_type="INTEGER",
                    max_failed_fraction=1.0,  # failing prompts are part of the scenario, not a failed run
                )
                last >> loader

        register_dag(dag)
        if pending:
            jobs = -(-n_requests // (max_requests_per_job or n_requests))
            emulator.control.hold_state("PENDING", count=jobs)
        dag_run = (
            dag.test()
            if logical_date is None
            else dag.test(logical_date=logical_date, run_after=logical_date)
        )
        assert dag_run.state == state, f"DAG {dag_id} ended {dag_run.state}, not {state}"
        return dag_run

    return run
