"""Reliability: Airflow's own faults — a worker killed at the worst moment, retries, clears, a triggerer
restart, a rerun of the whole DAG, and a load that dies halfway.

The invariant under test is architecture invariant 3 (a paid job is created at most once per shard per task
instance, whatever fails and whenever) and invariant 5 (every input row ends in exactly one outcome): each
test ends by counting the jobs in the emulator and the rows in the destination.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.manifest import job_names
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor
from airflow_gemini_batch.triggers.job import GeminiBatchJobTrigger
from tests.conftest import xcom_of
from tests.polling import await_until
from tests.reliability.helpers import (
    StateStore,
    context,
    load_op,
    outcome_counts,
    pipeline,
    rerun_task,
    sigkill_worker_when,
    submit_op,
    ti_states,
    try_numbers,
    unique_dag_id,
)
from tests.reliability.kill_target import FileStateStore

N = 30
PER_SHARD = 10
SHARDS = 3
SQL = "SELECT id, name, category FROM {table}"


def _dag(tables: tuple[Any, str, str], tmp_path: Path, **kw: Any) -> Any:
    wh, src, dst = tables
    kw.setdefault("submit", {})
    kw["submit"].setdefault("max_requests_per_job", PER_SHARD)
    return pipeline(
        unique_dag_id(kw.pop("name", "af")),
        source_conn_id=wh.conn_id,
        sql=SQL.format(table=src),
        destination_table=dst,
        staging=tmp_path / "staging",
        **kw,
    )


def assert_one_row_per_key(wh: Any, dst: str) -> None:
    assert wh.query(f'SELECT COUNT(*), COUNT(DISTINCT "key") FROM {dst}') == [(N, N)]
    assert outcome_counts(wh, dst) == {"succeeded": N}


def test_R10_worker_sigkilled_after_create_before_the_name_is_saved(tables, gemini_conn, emulator, tmp_path):
    """A real process, really killed (SIGKILL: no finally, no on_kill) between create and saving the name."""
    wh, src, dst = tables
    store_path = tmp_path / "task_state_store.json"
    args = {
        "conn_id": wh.conn_id,
        "sql": SQL.format(table=src),
        "staging": str(tmp_path / "staging"),
        "store": str(store_path),
        "slow_key": "gemini_batch_submit.shard.1",
        "submit": {"max_requests_per_job": PER_SHARD},
    }
    sigkill_worker_when(emulator, args, "batches.create", 2, "created shard 1's job")

    # The kill landed in the window: shard 1's job exists, its record holds only the intent.
    assert len(emulator.control.jobs()) == 2
    store = FileStateStore(store_path)
    shard1 = store.get("gemini_batch_submit.shard.1")
    assert shard1["intent"] is True and "job_name" not in shard1
    assert store.get("gemini_batch_submit.shard.0")["job_name"]

    # The retry (same task instance, same durable store) finds the orphan and creates only shard 2.
    rerun_op = submit_op(
        wh.conn_id, SQL.format(table=src), tmp_path / "staging", max_requests_per_job=PER_SHARD
    )
    manifest = rerun_op.execute(context(store))  # type: ignore[arg-type]
    jobs = emulator.control.jobs()
    assert len(jobs) == SHARDS and sorted(j["name"] for j in jobs) == sorted(job_names(manifest))
    assert emulator.control.calls()["batches.create"] == SHARDS
    assert store.get("gemini_batch_submit.shard.1")["job_name"] == manifest["shards"][1]["job_name"]

    GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05, timeout=60).execute({})
    load_op(wh.conn_id, dst, manifest).execute(context(task_id="load"))
    assert_one_row_per_key(wh, dst)


def test_R11_airflow_retry_after_a_failed_create_submits_only_the_rest(
    tables, gemini_conn, emulator, run_dag, tmp_path, monkeypatch
):
    """Try 1 creates shard 0, then shard 1's create fails through every retry (a 500 burst; a 429 would
    wait for the next admission round instead, R52); Airflow retries; try 2 finishes the job."""
    real_create = GeminiBatchHook.create_job
    calls = {"n": 0}

    def fail_after_first(self: GeminiBatchHook, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            emulator.control.inject_fault("batches.create", status=500, count=2)
        return real_create(self, **kw)

    monkeypatch.setattr(GeminiBatchHook, "create_job", fail_after_first)
    dag = _dag(
        tables,
        tmp_path,
        name="retry",
        submit={"create_retry_attempts": 2},
        default_args={"retries": 1, "retry_delay": datetime.timedelta(0)},
    )
    run = run_dag(dag)
    assert run.state == "success"
    assert try_numbers(run)["submit"] == 2
    jobs = emulator.control.jobs()
    assert len(jobs) == SHARDS == len({j["display_name"] for j in jobs})
    calls_now = emulator.control.calls()
    assert calls_now["batches.create"] == 1 + 2 + 2  # shard 0; two 500s; shards 1 and 2
    assert calls_now["files.upload_start"] == SHARDS  # shard 1's upload was reused from the state store
    assert sorted(job_names(xcom_of(run, "submit"))) == sorted(j["name"] for j in jobs)
    assert_one_row_per_key(tables[0], tables[2])


def test_R12_clearing_finished_tasks_creates_nothing_and_loads_nothing_twice(
    tables, gemini_conn, emulator, run_dag, tmp_path
):
    dag = _dag(tables, tmp_path, name="clear")
    run = run_dag(dag)
    assert run.state == "success"
    first = xcom_of(run, "submit")
    before = emulator.control.calls()

    # The user clears submit, wait and load of the same run; each runs again with a new try number.
    assert rerun_task(dag, run, "submit") == "success"
    assert rerun_task(dag, run, "wait") == "success"
    assert rerun_task(dag, run, "load") == "success"
    assert try_numbers(run) == {"submit": 2, "wait": 2, "load": 2}

    after = emulator.control.calls()
    assert after["batches.create"] == before["batches.create"] == SHARDS
    assert after["files.upload_start"] == before["files.upload_start"] == SHARDS
    assert after["batches.list"] == before["batches.list"]  # re-attached from records, no scan
    assert job_names(xcom_of(run, "submit")) == job_names(first)
    assert len(emulator.control.jobs()) == SHARDS
    assert_one_row_per_key(tables[0], tables[2])


def test_R13_triggerer_restart_mid_wait_resumes_with_the_same_deadline(
    tables, gemini_conn, emulator, tmp_path
):
    """The triggerer dies mid-wait; a new one rebuilds the trigger from its serialized kwargs and finishes."""
    wh, src, dst = tables
    emulator.control.hold_state("PENDING")  # until released below: the sensor defers, the first trigger waits
    manifest = submit_op(
        wh.conn_id, SQL.format(table=src), tmp_path / "st", max_requests_per_job=PER_SHARD
    ).execute(context(StateStore()))  # type: ignore[arg-type]
    sensor = GeminiBatchJobSensor(
        task_id="wait", manifest=manifest, deferrable=True, poll_interval=0.2, timeout=120
    )
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context(task_id="wait"))  # type: ignore[arg-type]
    first: GeminiBatchJobTrigger = deferred.value.trigger
    classpath, kwargs = first.serialize()

    async def restart() -> dict[str, Any]:
        gen = first.run()
        task = asyncio.ensure_future(anext(gen))
        # Mid-wait: the first trigger has read every job (the sensor's poke was the first read of each).
        await await_until(lambda: all(j["reads"] >= 2 for j in emulator.control.jobs()), what="polled")
        task.cancel()  # the triggerer process goes away mid-wait
        with pytest.raises(asyncio.CancelledError):
            await task
        await gen.aclose()
        module, _, name = classpath.rpartition(".")
        cls = getattr(__import__(module, fromlist=[name]), name)
        second = cls(**json.loads(json.dumps(kwargs)))  # what the new triggerer does with the DB row
        assert second.deadline == first.deadline and second.job_names == first.job_names
        emulator.control.release()
        gen2 = second.run()
        try:
            return (await asyncio.wait_for(anext(gen2), 60)).payload
        finally:
            await gen2.aclose()

    event = asyncio.run(restart())
    assert event["status"] == "success", event
    summary = sensor.execute_complete(context(task_id="wait"), event)  # type: ignore[arg-type]
    assert summary["succeeded_count"] == N
    jobs = emulator.control.jobs()
    assert len(jobs) == SHARDS and not any(j["cancel_requested"] for j in jobs)  # a restart is not a kill
    load_op(wh.conn_id, dst, manifest).execute(context(task_id="load"))  # type: ignore[arg-type]
    assert_one_row_per_key(wh, dst)


def test_R14_rerunning_the_whole_dag_for_the_same_date_reattaches(
    tables, gemini_conn, emulator, run_dag, tmp_path
):
    """dag.test() for the same logical date deletes and re-creates the run (and its task state): the
    submit finds its jobs by display name, and the load upserts instead of appending."""
    dag = _dag(tables, tmp_path, name="rerun")
    when = datetime.datetime(2026, 3, 1, tzinfo=datetime.timezone.utc)
    first = run_dag(dag, logical_date=when)
    assert first.state == "success"
    names = job_names(xcom_of(first, "submit"))
    second = run_dag(dag, logical_date=when)
    assert second.state == "success" and second.run_id == first.run_id
    assert job_names(xcom_of(second, "submit")) == names
    calls = emulator.control.calls()
    assert calls["batches.create"] == SHARDS and calls["files.upload_start"] == SHARDS
    assert len(emulator.control.jobs()) == SHARDS
    assert_one_row_per_key(tables[0], tables[2])


def test_R15_load_dies_halfway_then_the_retry_leaves_one_row_per_key(
    tables, gemini_conn, emulator, run_dag, tmp_path, monkeypatch
):
    """The 2nd job's download fails permanently on try 1 (after job 1's rows were written); try 2 loads all."""
    real_download = GeminiBatchHook.download_file
    calls = {"n": 0}

    def fail_second(self: GeminiBatchHook, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            emulator.control.inject_fault("files.download", status=403)
        return real_download(self, *a, **kw)

    monkeypatch.setattr(GeminiBatchHook, "download_file", fail_second)
    dag = _dag(tables, tmp_path, name="partial", load={"retries": 1, "retry_delay": datetime.timedelta(0)})
    run = run_dag(dag)
    assert run.state == "success"
    assert try_numbers(run)["load"] == 2
    assert ti_states(run) == {"submit": "success", "wait": "success", "load": "success"}
    assert emulator.control.calls()["files.download"] == 2 + SHARDS
    summary = xcom_of(run, "load")
    assert summary["counts"] == {"succeeded": N, "failed": 0, "invalid_output": 0, "missing": 0, "reused": 0}
    assert_one_row_per_key(tables[0], tables[2])
    assert tables[0].query(f"SELECT COUNT(*) FROM {tables[2]}_errors") == [(0,)]
