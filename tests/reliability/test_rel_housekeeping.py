"""Reliability: housekeeping — nothing a run leaves behind fills a disk or the project's 20 GB of Files API
storage, and nothing is deleted that a job may still read.

End state asserted every time: the uploaded files the emulator still holds (listed through the real SDK),
its ``files.delete`` / ``batches.list`` call counts, the shard files left in the staging folder, and the
destination rows (one per key, all succeeded).
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from airflow_gemini_batch.exceptions import (
    GeminiBatchError,
    GeminiBatchJobExpiredError,
    GeminiBatchSubmitError,
)
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor
from tests.conftest import uploaded_files
from tests.reliability.helpers import (
    StateStore,
    context,
    load_op,
    outcome_counts,
    pipeline,
    rows,
    submit_op,
    ti_states,
    unique_dag_id,
)

N = 12
PER_SHARD = 4
SHARDS = N // PER_SHARD


def _submit(tables: tuple[Any, str, str], staging: Any, **kw: Any) -> Any:
    wh, src, _ = tables
    return submit_op(
        wh.conn_id, f"SELECT id, name, category FROM {src}", staging, max_requests_per_job=PER_SHARD, **kw
    )


def _wait(manifest: Any) -> Any:
    sensor = GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05, timeout=60)
    return sensor.execute(context(task_id="wait"))


def _shard_files(staging: Any) -> list[str]:
    return sorted(p.name for p in staging.glob("shard-*.jsonl"))


def _dag(tables: tuple[Any, str, str], staging: Any, **submit: Any) -> Any:
    wh, src, dst = tables
    return pipeline(
        unique_dag_id("housekeeping"),
        source_conn_id=wh.conn_id,
        sql=f"SELECT id, name, category FROM {src}",
        destination_table=dst,
        staging=staging,
        submit={"max_requests_per_job": PER_SHARD, **submit},
    )


def test_R60_a_run_leaves_no_uploaded_files_no_shard_files_and_lists_nothing(
    tables, gemini_conn, emulator, run_dag, tmp_path
):
    """A real DAG run (submit → deferrable sensor → load): the load deletes each finished job's uploaded
    file, the submit each shard file once its job exists; the first try, with no intent recorded anywhere,
    makes no ``batches.list`` call. The key lists the load reconciled against stay."""
    wh, _, dst = tables
    staging = tmp_path / "staging"
    run = run_dag(_dag(tables, staging))
    assert run.state == "success"
    calls = emulator.control.calls()
    assert calls["files.upload_start"] == SHARDS and calls["files.delete"] == SHARDS
    assert uploaded_files(emulator) == []
    assert calls.get("batches.list", 0) == 0  # no records, no create marker: no orphan possible
    assert _shard_files(staging) == [] and len(list(staging.glob("keys-*.jsonl"))) == SHARDS
    assert sorted(rows(wh, dst)) == list(range(N)) and outcome_counts(wh, dst) == {"succeeded": N}


def test_R60_keep_uploaded_files_keeps_them(tables, gemini_conn, emulator, run_dag, tmp_path):
    staging = tmp_path / "staging"
    run = run_dag(_dag(tables, staging, keep_uploaded_files=True))
    assert run.state == "success"
    assert len(uploaded_files(emulator)) == SHARDS
    assert emulator.control.calls().get("files.delete", 0) == 0
    assert _shard_files(staging) == []  # local shard files go anyway: a retry rebuilds them


def test_R60_a_failed_submit_leaves_no_shard_files(tables, gemini_conn, emulator, tmp_path):
    """A create refused for good (403) fails the submit; its shard files go too, as the retry rebuilds
    them from the input, and re-uses the recorded upload by name."""
    staging = tmp_path / "staging"
    emulator.control.inject_fault("batches.create", status=403, count=1)
    store = StateStore()
    with pytest.raises(GeminiBatchSubmitError):
        _submit(tables, staging).execute(context(store))
    assert _shard_files(staging) == []
    manifest = _submit(tables, staging).execute(context(store))
    calls = emulator.control.calls()
    assert calls["files.upload_start"] == SHARDS  # shard 0's upload reused after the retry's rebuild
    assert calls["batches.create"] == SHARDS + 1 and len(manifest["shards"]) == SHARDS
    assert _shard_files(staging) == []


def test_R61_a_job_that_is_not_finished_keeps_its_file(tables, gemini_conn, emulator, tmp_path):
    """Only a finished job's file is deleted: a PENDING job may still be cancelled and created again from
    it. A load that finds a job unfinished refuses before deleting anything of that shard."""
    wh, _, dst = tables
    emulator.control.hold_state("PENDING", match=None)
    manifest = _submit(tables, tmp_path / "staging").execute(context(StateStore()))
    with pytest.raises(GeminiBatchError, match="not finished"):
        load_op(wh.conn_id, dst, manifest).execute(context(task_id="load"))
    assert len(uploaded_files(emulator)) == SHARDS
    assert emulator.control.calls().get("files.delete", 0) == 0
    emulator.control.release()
    _wait(manifest)
    load_op(wh.conn_id, dst, manifest).execute(context(task_id="load"))
    assert uploaded_files(emulator) == []


def test_R61_deleting_is_idempotent_and_never_fails_the_load(tables, gemini_conn, emulator, tmp_path):
    """A file already gone (deleted by hand, by an earlier try of the load, or expired) is a 404: fine. A
    delete that fails (403) is a warning, never a failed load; a clear of the load deletes the rest."""
    wh, _, dst = tables
    manifest = _submit(tables, tmp_path / "staging").execute(context(StateStore()))
    _wait(manifest)
    GeminiBatchHook(gemini_conn).delete_file(manifest["shards"][2]["file_name"])  # gone before the load
    emulator.control.inject_fault("files.delete", status=403, count=1)  # shard 0's delete refused
    summary = load_op(wh.conn_id, dst, manifest).execute(context(task_id="load"))
    assert summary["status"] == "ok" and outcome_counts(wh, dst) == {"succeeded": N}
    assert uploaded_files(emulator) == [manifest["shards"][0]["file_name"]]
    load_op(wh.conn_id, dst, manifest).execute(context(task_id="load"))  # a clear of the load
    assert uploaded_files(emulator) == [] and outcome_counts(wh, dst) == {"succeeded": N}


def test_R61_a_recovered_shard_s_earlier_file_goes_with_the_load(tables, gemini_conn, emulator, tmp_path):
    """3 shards, one EXPIRED, the user clears: the expired job's file is kept while the new generation runs
    (recorded in the manifest's ``previous_files``), and deleted by the load, like the three current ones."""
    wh, _, dst = tables
    emulator.control.set_job_behaviour(match="-00001", final_state="EXPIRED", count=1)
    store, staging = StateStore(), tmp_path / "staging"
    first = _submit(tables, staging).execute(context(store))
    with pytest.raises(GeminiBatchJobExpiredError):
        _wait(first)
    second = _submit(tables, staging).execute(context(store))
    expired = first["shards"][1]
    assert second["shards"][1]["previous_files"] == {expired["job_name"]: expired["file_name"]}
    assert len(uploaded_files(emulator)) == SHARDS + 1 and _shard_files(staging) == []
    _wait(second)
    load_op(wh.conn_id, dst, second).execute(context(task_id="load"))
    assert uploaded_files(emulator) == [] and emulator.control.calls()["files.delete"] == SHARDS + 1
    assert sorted(rows(wh, dst)) == list(range(N)) and outcome_counts(wh, dst) == {"succeeded": N}


def test_R62_the_orphan_scan_runs_only_when_a_create_may_have_happened(
    tables, gemini_conn, emulator, run_dag, tmp_path
):
    """The first run of a logical date lists nothing (no records, no create marker). The same run
    re-created (``dag.test()`` again: its task state is gone, the staging folder's create marker is not)
    scans the last 48 h once and re-attaches to every job instead of paying again."""
    wh, _, dst = tables
    dag = _dag(tables, tmp_path / "staging")
    when = datetime.datetime(2026, 1, 5, tzinfo=datetime.timezone.utc)
    assert run_dag(dag, logical_date=when).state == "success"
    assert emulator.control.calls().get("batches.list", 0) == 0
    again = run_dag(dag, logical_date=when)
    assert again.state == "success" and ti_states(again)["load"] == "success"
    calls = emulator.control.calls()
    assert calls["batches.list"] == 1 and calls["batches.create"] == SHARDS
    assert len(emulator.control.jobs()) == SHARDS
    assert sorted(rows(wh, dst)) == list(range(N)) and outcome_counts(wh, dst) == {"succeeded": N}


def test_R62_without_a_task_state_store_the_scan_still_runs(tables, gemini_conn, emulator, tmp_path):
    """Nothing durable proves no create happened without a store: the one scan runs, as before."""
    _submit(tables, tmp_path / "staging").execute(context(None))
    assert emulator.control.calls()["batches.list"] == 1
