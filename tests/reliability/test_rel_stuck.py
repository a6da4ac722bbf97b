"""Reliability: stuck jobs (issue 13 item 4, scenario e) in real DAG runs of ``GeminiBatchOperator`` — a job
still PENDING ``max_pending_seconds`` after its creation is cancelled and its shard alone resubmitted, at
most ``max_stuck_resubmits`` times per shard.

No clock: the emulator holds the job PENDING and dates its ``createTime`` 13 h back (``hold_state(...,
age_seconds=...)``), past the default ``max_pending_seconds`` of 12 h. End state asserted every time: the
emulator's jobs, creates and cancels, and the destination rows (one per key, all succeeded).
"""

from __future__ import annotations

from typing import Any

from airflow_gemini_batch.manifest import MANIFEST_XCOM_KEY
from airflow_gemini_batch.operators.batch import GeminiBatchOperator
from tests.conftest import xcom_of
from tests.reliability.helpers import (
    batch_dag,
    context,
    outcome_counts,
    rerun_task,
    sigkill_worker_when,
    ti_states,
)
from tests.reliability.kill_target import FileStateStore

N = 12
PER_SHARD = 4
SHARDS = N // PER_SHARD
THIRTEEN_HOURS = 13 * 3600


def _dag(tables: tuple[Any, str, str], tmp_path: Any, **kw: Any) -> Any:
    wh, src, dst = tables
    return batch_dag(
        wh, src, dst, tmp_path / "staging", max_requests_per_job=PER_SHARD, max_row_retries=0, **kw
    )


def _keys(wh: Any, dst: str) -> list[int]:
    return sorted(k for (k,) in wh.query(f"SELECT id FROM {dst}"))


def test_R53_a_job_stuck_pending_is_cancelled_and_its_shard_resubmitted_once(
    tables, gemini_conn, emulator, run_dag, tmp_path
):
    wh, _, dst = tables
    # Every job is held PENDING for one read (so the task really defers to the triggerer); the first job
    # created (shard 0) is held PENDING until cancelled, its createTime 13 h back: stuck.
    emulator.control.hold_state("PENDING", reads=1)
    emulator.control.hold_state("PENDING", count=1, age_seconds=THIRTEEN_HOURS)
    dag = _dag(tables, tmp_path)
    run = run_dag(dag)
    assert run.state == "success" and ti_states(run) == {"batch": "success"}

    jobs = sorted(emulator.control.jobs(), key=lambda j: j["create_time"])
    assert len(jobs) == SHARDS + 1
    calls = emulator.control.calls()
    assert calls["batches.create"] == SHARDS + 1 and calls["batches.cancel"] == 1
    stuck = jobs[0]
    assert stuck["state"] == "BATCH_STATE_CANCELLED" and stuck["display_name"].endswith("-00000")
    assert [j["state"] for j in jobs[1:]] == ["BATCH_STATE_SUCCEEDED"] * SHARDS
    manifest = xcom_of(run, "batch", MANIFEST_XCOM_KEY)
    shard = manifest["shards"][0]
    assert shard["display_name"] == stuck["display_name"].replace("-00000", "-r1-00000")
    assert shard["stuck_resubmits"] == 1 and shard["recovery"] == 1
    assert shard["previous_jobs"] == [stuck["name"]]
    assert all("stuck_resubmits" not in s for s in manifest["shards"][1:])
    assert _keys(wh, dst) == list(range(N)) and outcome_counts(wh, dst) == {"succeeded": N}
    # Each key was answered once: the cancelled job processed nothing.
    assert emulator.control.request_counts() == {str(k): 1 for k in range(N)}

    # The user clears the task: every shard re-attaches (the new generation succeeded), nothing is
    # cancelled or created again.
    assert rerun_task(dag, run, "batch") == "success"
    calls = emulator.control.calls()
    assert calls["batches.create"] == SHARDS + 1 and calls["batches.cancel"] == 1
    assert _keys(wh, dst) == list(range(N)) and outcome_counts(wh, dst) == {"succeeded": N}


def test_R56_past_the_cap_a_stuck_job_is_left_to_run(tables, gemini_conn, emulator, run_dag, tmp_path):
    """Every job is stuck (held PENDING, 13 h old) for two reads: each shard's first job is cancelled and
    resubmitted once; the new ones are as stuck, but their shards used up ``max_stuck_resubmits=1``: left to
    run (the hold lets go), never a second cancel or a ``-r2`` generation."""
    wh, _, dst = tables
    emulator.control.hold_state("PENDING", reads=2, age_seconds=THIRTEEN_HOURS)
    run = run_dag(_dag(tables, tmp_path, max_stuck_resubmits=1))
    assert run.state == "success" and ti_states(run) == {"batch": "success"}

    jobs = emulator.control.jobs()
    calls = emulator.control.calls()
    assert len(jobs) == 2 * SHARDS and calls["batches.create"] == 2 * SHARDS
    assert calls["batches.cancel"] == SHARDS
    states = sorted(j["state"] for j in jobs)
    assert states == ["BATCH_STATE_CANCELLED"] * SHARDS + ["BATCH_STATE_SUCCEEDED"] * SHARDS
    assert not any("-r2-" in j["display_name"] for j in jobs)
    manifest = xcom_of(run, "batch", MANIFEST_XCOM_KEY)
    assert [s["stuck_resubmits"] for s in manifest["shards"]] == [1] * SHARDS
    assert _keys(wh, dst) == list(range(N)) and outcome_counts(wh, dst) == {"succeeded": N}


def test_R55_worker_killed_between_the_cancel_and_the_create_then_the_retry(
    tables, gemini_conn, emulator, tmp_path
):
    """A real worker process runs the operator (not deferrable), cancels the stuck job and is SIGKILLed
    before its shard's next generation is recorded or created (it blocks on that record until killed). The
    retry (same durable task state) reads the recorded job CANCELLED and resubmits that shard alone: one
    new job, no second cancel, no two live jobs, no shard lost."""
    wh, src, dst = tables
    emulator.control.hold_state("PENDING", count=1, age_seconds=THIRTEEN_HOURS)
    store_path = tmp_path / "task_state_store.json"
    batch = {
        "task_id": "batch",
        "sql": f"SELECT id, name, category FROM {src}",
        "source_conn_id": wh.conn_id,
        "prompt_template": "Describe {name} ({category}).",
        "destination_conn_id": wh.conn_id,
        "destination_table": dst,
        "key_column_type": "INTEGER",
        "staging_path": str(tmp_path / "staging"),
        "create_retry_base_seconds": 0.01,
        "deferrable": False,
        "poll_interval": 0.05,
        "max_requests_per_job": PER_SHARD,
        "max_row_retries": 0,
    }
    args = {
        "batch": batch,
        "store": str(store_path),
        "slow_key": "gemini_batch_submit.shard.0",
        "slow_field": "recovery",  # the next generation's record: after the cancel, before upload and create
    }
    sigkill_worker_when(emulator, args, "batches.cancel", 1, "cancelled the stuck job")

    jobs = sorted(emulator.control.jobs(), key=lambda j: j["create_time"])
    assert len(jobs) == SHARDS and emulator.control.calls()["batches.create"] == SHARDS
    assert jobs[0]["state"] == "BATCH_STATE_CANCELLED"
    store = FileStateStore(store_path)
    shard0 = store.get("gemini_batch_submit.shard.0")
    assert shard0["job_name"] == jobs[0]["name"] and shard0["stuck_resubmits"] == 1

    summary = GeminiBatchOperator(**batch).execute(context(store, task_id="batch"))  # type: ignore[arg-type]
    jobs = emulator.control.jobs()
    calls = emulator.control.calls()
    assert len(jobs) == SHARDS + 1 and calls["batches.create"] == SHARDS + 1
    assert calls["batches.cancel"] == 1
    live = [j for j in jobs if j["state"] not in ("BATCH_STATE_CANCELLED", "BATCH_STATE_SUCCEEDED")]
    assert live == []
    assert sum(j["state"] == "BATCH_STATE_CANCELLED" for j in jobs) == 1
    assert any(j["display_name"].endswith("-r1-00000") for j in jobs)
    assert store.get("gemini_batch_submit.shard.0")["stuck_resubmits"] == 1
    assert summary["counts"]["succeeded"] == N
    assert _keys(wh, dst) == list(range(N)) and outcome_counts(wh, dst) == {"succeeded": N}
