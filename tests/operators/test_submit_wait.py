"""``GeminiBatchSubmitOperator(wait_for_completion=True)``: the sensor's machinery inside the submit task."""

from __future__ import annotations

import datetime

import pytest
from airflow.sdk import DAG

from airflow_gemini_batch.exceptions import GeminiBatchJobFailedError
from airflow_gemini_batch.manifest import MANIFEST_KIND, WAIT_SUMMARY_XCOM_KEY
from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
from tests.conftest import xcom_of


def test_submit_waits_deferred_then_load(sqlite_warehouse, gemini_conn, emulator, register_dag, tmp_path):
    """submit (wait, deferred; trigger inline) → load: one task instead of two, same outcome."""
    emulator.control.hold_state("PENDING", reads=1)  # PENDING at the first read: the wait really defers
    table = sqlite_warehouse.table("items")
    sqlite_warehouse.create_prompts_table(table, 50)
    with DAG(dag_id="submit_wait_e2e", schedule=None, start_date=datetime.datetime(2026, 1, 1)) as dag:
        submit = GeminiBatchSubmitOperator(
            task_id="submit",
            source_conn_id=sqlite_warehouse.conn_id,
            sql=f"SELECT id, name FROM {table}",
            prompt_template="Describe {name}",
            max_requests_per_job=20,
            staging_path=str(tmp_path / "staging"),
            wait_for_completion=True,
            deferrable=True,
            poll_interval=0.5,
        )
        GeminiBatchLoadResultsOperator(
            task_id="load",
            manifest=submit.output,
            destination_conn_id=sqlite_warehouse.conn_id,
            destination_table=f"{table}_out",
        )
    register_dag(dag)
    run = dag.test()
    assert run.state == "success"

    manifest = xcom_of(run, "submit")
    assert manifest["kind"] == MANIFEST_KIND and len(manifest["shards"]) == 3
    summary = xcom_of(run, "submit", WAIT_SUMMARY_XCOM_KEY)
    assert summary["status"] == "success"
    assert [j["state"] for j in summary["jobs"]] == ["SUCCEEDED"] * 3
    assert summary["succeeded_count"] == 50
    assert sqlite_warehouse.query(
        f"SELECT COUNT(*), COUNT(DISTINCT key) FROM {table}_out WHERE outcome = 'succeeded'"
    ) == [(50, 50)]
    assert len(emulator.control.jobs()) == 3


def test_submit_wait_fails_on_a_failed_job_in_blocking_mode(
    sqlite_warehouse, gemini_conn, emulator, tmp_path
):
    """Non-deferrable waits fail exactly like deferred ones (the Google provider let this pass: #73029)."""
    emulator.control.set_job_behaviour(match="*", final_state="FAILED")
    table = sqlite_warehouse.table("items")
    sqlite_warehouse.create_prompts_table(table, 5)
    op = GeminiBatchSubmitOperator(
        task_id="submit",
        source_conn_id=sqlite_warehouse.conn_id,
        sql=f"SELECT id, name FROM {table}",
        prompt_template="Describe {name}",
        staging_path=str(tmp_path / "staging"),
        wait_for_completion=True,
        deferrable=False,
        poll_interval=0.05,
    )

    class _TI:
        dag_id, task_id, run_id, map_index, try_number = "d", "submit", "r", -1, 1
        pushed: dict = {}

        def xcom_push(self, key, value):
            self.pushed[key] = value

    with pytest.raises(GeminiBatchJobFailedError, match="FAILED"):
        op.execute({"ti": _TI(), "run_id": "r", "dag_run": None})
    assert len(emulator.control.jobs()) == 1
