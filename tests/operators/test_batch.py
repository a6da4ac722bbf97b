"""GeminiBatchOperator: the all-in-one task over the real SDK, the emulator, real SQLite and real Airflow.

Each test asserts the end state: destination rows (outcome, attempts), emulator jobs, creates and the requests
processed per key (no answered row is ever sent again), and the per-round and total counts of the summary.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from airflow_gemini_batch.emulator.faults import fails_by_fraction
from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.manifest import RESULTS_SUMMARY_XCOM_KEY
from airflow_gemini_batch.operators.batch import GeminiBatchOperator
from tests.conftest import xcom_of
from tests.reliability.helpers import batch_dag

N = 40


@pytest.fixture
def source(sqlite_warehouse: Any) -> tuple[Any, str, str]:
    wh = sqlite_warehouse
    src = wh.table("src")
    wh.create_prompts_table(src, N)
    return wh, src, wh.table("dst")


def _rows(wh: Any, dst: str) -> dict[int, tuple[str, int]]:
    return {k: (o, a) for k, o, a in wh.query(f"SELECT id, outcome, attempts FROM {dst}")}


def test_a_second_round_answers_the_rows_that_failed_with_503(
    register_dag, source, gemini_conn, emulator, tmp_path
):
    wh, src, dst = source
    doomed = {k for k in range(N) if fails_by_fraction(k, 0.1)}
    assert doomed  # some keys fail in round 1, the rest succeed
    # Only the first round's job (count=1) fails those rows; every job is held PENDING for one read, so
    # each round really defers to the trigger.
    emulator.control.set_job_behaviour(fail_fraction=0.1, fail_status=503, count=1)
    emulator.control.hold_state("PENDING", reads=1)
    dag = batch_dag(wh, src, dst, tmp_path / "staging")
    register_dag(dag)
    run = dag.test()
    assert run.state == "success"

    rows = _rows(wh, dst)
    assert rows == {k: ("succeeded", 2 if k in doomed else 1) for k in range(N)}
    assert emulator.control.request_counts() == {str(k): 2 if k in doomed else 1 for k in range(N)}
    jobs = emulator.control.jobs()
    assert len(jobs) == 2 and emulator.control.calls()["batches.create"] == 2
    assert [j["display_name"].split("-")[2] for j in sorted(jobs, key=lambda j: j["create_time"])][1] == "a2"

    summary = xcom_of(run, "batch", RESULTS_SUMMARY_XCOM_KEY)
    assert summary["counts"] == {"succeeded": N, "failed": 0, "invalid_output": 0, "missing": 0, "reused": 0}
    assert summary["request_count"] == N and summary["reconciled"] and summary["status"] == "ok"
    first, second = summary["rounds"]
    assert first["request_count"] == N and first["counts"]["failed"] == len(doomed)
    assert first["resent"] == len(doomed) and first["settled"]["succeeded"] == N - len(doomed)
    assert second["request_count"] == len(doomed) and second["counts"]["succeeded"] == len(doomed)
    assert sum(r["settled"]["succeeded"] for r in summary["rounds"]) == N
    assert len(summary["jobs"]) == 2


def test_retries_run_out_and_the_task_fails_after_loading_everything(
    register_dag, source, gemini_conn, emulator, tmp_path
):
    wh, src, dst = source
    doomed = {k for k in range(N) if fails_by_fraction(k, 0.1)}
    emulator.control.set_job_behaviour(fail_fraction=0.1, fail_status=503)  # every round's job
    dag = batch_dag(wh, src, dst, tmp_path / "staging", max_row_retries=1)
    register_dag(dag)
    run = dag.test()
    assert run.state == "failed"
    rows = _rows(wh, dst)
    assert rows == {k: ("failed", 2) if k in doomed else ("succeeded", 1) for k in range(N)}
    assert emulator.control.request_counts() == {str(k): 2 if k in doomed else 1 for k in range(N)}
    summary = xcom_of(run, "batch", RESULTS_SUMMARY_XCOM_KEY)
    assert summary["status"] == "too_many_failures" and summary["counts"]["failed"] == len(doomed)
    assert summary["rounds"][-1]["exhausted"] == len(doomed) and summary["reconciled"]
    assert sorted(summary["first_failed_keys"], key=int) == [str(k) for k in sorted(doomed)][:10]


def test_with_enough_tolerance_exhausted_rows_pass(register_dag, source, gemini_conn, emulator, tmp_path):
    wh, src, dst = source
    emulator.control.set_job_behaviour(fail_fraction=0.1, fail_status=429)
    dag = batch_dag(wh, src, dst, tmp_path / "staging", max_row_retries=2, max_failed_fraction=0.5)
    register_dag(dag)
    assert dag.test().state == "success"
    assert {a for o, a in _rows(wh, dst).values() if o == "failed"} == {3}


def test_non_retryable_failures_are_never_resent(register_dag, source, gemini_conn, emulator, tmp_path):
    wh, src, dst = source
    emulator.control.set_job_behaviour(fail_fraction=0.1, fail_status=400)
    dag = batch_dag(wh, src, dst, tmp_path / "staging", max_failed_fraction=1.0)
    register_dag(dag)
    run = dag.test()
    assert run.state == "success"
    assert len(emulator.control.jobs()) == 1
    assert set(emulator.control.request_counts().values()) == {1}
    summary = xcom_of(run, "batch", RESULTS_SUMMARY_XCOM_KEY)
    assert len(summary["rounds"]) == 1 and summary["rounds"][0]["resent"] == 0


def test_a_rerun_re_attaches_every_round_and_pays_nothing(
    register_dag, source, gemini_conn, emulator, tmp_path
):
    """The same run again (``dag.test()`` re-creates it: the task state is gone): round 1 finds its job by
    display name, its load gives the same remainder, round 2 finds its job too: no create, no request."""
    wh, src, dst = source
    emulator.control.set_job_behaviour(fail_fraction=0.1, fail_status=503, count=1)
    dag = batch_dag(wh, src, dst, tmp_path / "staging")
    register_dag(dag)
    when = datetime.datetime(2026, 1, 5, tzinfo=datetime.timezone.utc)
    assert dag.test(logical_date=when, run_after=when).state == "success"
    counts, creates = emulator.control.request_counts(), emulator.control.calls()["batches.create"]
    again = dag.test(logical_date=when, run_after=when)
    assert again.state == "success"
    assert emulator.control.calls()["batches.create"] == creates == 2
    assert emulator.control.request_counts() == counts
    assert {o for o, _ in _rows(wh, dst).values()} == {"succeeded"}


def test_arguments_are_checked_when_the_dag_is_built(sqlite_warehouse, tmp_path):
    common = {"task_id": "b", "requests": ["a"], "destination_conn_id": sqlite_warehouse.conn_id}
    with pytest.raises(
        GeminiBatchInputError, match=r"rewrites an object-store folder whole.*max_row_retries=0"
    ):
        GeminiBatchOperator(destination_path=str(tmp_path), **{**common, "destination_conn_id": None})
    with pytest.raises(GeminiBatchInputError, match="max_row_retries"):
        GeminiBatchOperator(destination_table="t", max_row_retries=-1, **common)
    with pytest.raises(ValueError, match="exactly one"):
        GeminiBatchOperator(destination_table="t", sql="SELECT 1", **common)
    with pytest.raises(GeminiBatchInputError, match="give key_column, not destination_key_column"):
        GeminiBatchOperator(destination_table="t", destination_key_column="k", **common)
    with pytest.raises(GeminiBatchInputError, match="incremental=True needs a table destination"):
        GeminiBatchOperator(
            destination_path=str(tmp_path), max_row_retries=0, incremental=True, task_id="i", requests=["a"]
        )
    incremental = GeminiBatchOperator(destination_table="t", key_column="sku", incremental=True, **common)
    assert incremental.destination_key_column == "sku"  # the lookup keys the destination like the load
    op = GeminiBatchOperator(destination_path=str(tmp_path), max_row_retries=0, task_id="p", requests=["a"])
    assert op.key_column == "id" and "sql" in op.template_fields and "destination_table" in op.template_fields
