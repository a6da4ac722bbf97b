"""Reliability: shard-level recovery — a shard whose job ended EXPIRED, FAILED or CANCELLED is resubmitted
alone on the next try (its next generation, ``-r<n>``), while the shards whose jobs may still succeed or
have succeeded are re-attached; and the orphan lookup reads only the last 48 h of ``batches.list``.

End state asserted every time: the emulator's jobs and call counts (one create per shard generation, nothing
paid twice) and the destination rows (one per key, all succeeded).
"""

from __future__ import annotations

import datetime
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchJobExpiredError
from airflow_gemini_batch.hooks.gemini import LIST_WINDOW_SECONDS, GeminiBatchHook, within_window
from airflow_gemini_batch.hooks.job_status import JobStatus
from airflow_gemini_batch.manifest import job_names
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor
from airflow_gemini_batch.submit.ledger import SubmissionLedger
from airflow_gemini_batch.submit.submission import find_existing_jobs
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


def _submit(tables: tuple[Any, str, str], tmp_path: Any, **kw: Any) -> Any:
    wh, src, _ = tables
    sql = f"SELECT id, name, category FROM {src}"
    return submit_op(wh.conn_id, sql, tmp_path / "staging", max_requests_per_job=PER_SHARD, **kw)


def _wait(manifest: Any) -> Any:
    sensor = GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05, timeout=60)
    return sensor.execute(context(task_id="wait"))


def test_R48_an_expired_shard_is_resubmitted_alone_on_a_clear(tables, gemini_conn, emulator, tmp_path):
    wh, _, dst = tables
    emulator.control.set_job_behaviour(match="-00001", final_state="EXPIRED", count=1)
    store = StateStore()  # the task instance's task_state_store, kept across its tries and clears
    first = _submit(tables, tmp_path).execute(context(store))
    with pytest.raises(GeminiBatchJobExpiredError):
        _wait(first)

    # The user clears the run: the submit task runs again with the same task state store.
    second = _submit(tables, tmp_path).execute(context(store))
    old, new = job_names(first), job_names(second)
    assert new[0] == old[0] and new[2] == old[2] and new[1] != old[1]  # two re-attached, one new
    shard = second["shards"][1]
    assert shard["display_name"] == first["shards"][1]["display_name"].replace("-00001", "-r1-00001")
    assert shard["recovery"] == 1 and shard["previous_jobs"] == [old[1]]
    assert "recovery" not in second["shards"][0]
    jobs = {j["name"]: j for j in emulator.control.jobs()}
    assert len(jobs) == SHARDS + 1 and jobs[old[1]]["state"] == "BATCH_STATE_EXPIRED"
    calls = emulator.control.calls()
    # One create per shard generation; the new one from a fresh upload (the first file may be gone).
    assert calls["batches.create"] == SHARDS + 1 and calls["files.upload_start"] == SHARDS + 1
    # No scan at all: the first try had no records and no create marker (no create ever attempted), and the
    # clear's records made any lookup by name unnecessary.
    assert calls.get("batches.list", 0) == 0

    _wait(second)
    summary = load_op(wh.conn_id, dst, second).execute(context(task_id="load"))
    assert sorted(rows(wh, dst)) == list(range(N)) and outcome_counts(wh, dst) == {"succeeded": N}
    assert summary["status"] == "ok"

    # A further clear re-attaches to all three (the new generation succeeded): nothing is created again.
    third = _submit(tables, tmp_path).execute(context(store))
    assert job_names(third) == new and emulator.control.calls()["batches.create"] == SHARDS + 1


def test_R48_dag_test_fail_then_rerun_makes_one_new_job(tables, gemini_conn, emulator, run_dag, tmp_path):
    """As a user runs it: ``dag.test()`` fails on the EXPIRED shard; the same run again (``dag.test()``
    re-creates the run, so its task state is gone and the one 48 h ``batches.list`` scan finds the jobs)
    re-attaches two jobs and resubmits the third alone; the destination holds one row per key."""
    wh, src, dst = tables
    emulator.control.set_job_behaviour(match="-00001", final_state="EXPIRED", count=1)
    dag = pipeline(
        unique_dag_id("recover"),
        source_conn_id=wh.conn_id,
        sql=f"SELECT id, name, category FROM {src}",
        destination_table=dst,
        staging=tmp_path / "staging",
        submit={"max_requests_per_job": PER_SHARD},
    )
    when = datetime.datetime(2026, 1, 3, tzinfo=datetime.timezone.utc)
    run = run_dag(dag, logical_date=when)
    assert run.state == "failed"
    assert ti_states(run) == {"submit": "success", "wait": "failed", "load": "upstream_failed"}
    assert len(emulator.control.jobs()) == SHARDS

    again = run_dag(dag, logical_date=when)
    assert again.state == "success"
    jobs = emulator.control.jobs()
    assert len(jobs) == SHARDS + 1 and emulator.control.calls()["batches.create"] == SHARDS + 1
    assert sorted(j["state"] for j in jobs) == ["BATCH_STATE_EXPIRED"] + ["BATCH_STATE_SUCCEEDED"] * SHARDS
    assert sorted(rows(wh, dst)) == list(range(N)) and outcome_counts(wh, dst) == {"succeeded": N}


def test_R49_on_failed_job_fail_keeps_the_expired_job(tables, gemini_conn, emulator, tmp_path):
    emulator.control.set_job_behaviour(match="-00001", final_state="EXPIRED", count=1)
    store = StateStore()
    first = _submit(tables, tmp_path, on_failed_job="fail").execute(context(store))
    again = _submit(tables, tmp_path, on_failed_job="fail").execute(context(store))
    assert job_names(again) == job_names(first)
    assert emulator.control.calls()["batches.create"] == SHARDS
    with pytest.raises(GeminiBatchJobExpiredError):
        _wait(again)


def test_R49_running_and_succeeded_jobs_are_never_replaced(tables, gemini_conn, emulator, tmp_path):
    """Invariant 3: a job that may still succeed (held PENDING) or has succeeded is re-attached."""
    emulator.control.hold_state("PENDING", match=None)
    store = StateStore()
    first = _submit(tables, tmp_path).execute(context(store))
    again = _submit(tables, tmp_path).execute(context(store))
    assert job_names(again) == job_names(first)
    assert {j["state"] for j in emulator.control.jobs()} == {"BATCH_STATE_PENDING"}
    assert emulator.control.calls()["batches.create"] == SHARDS
    emulator.control.release()


def test_R50_no_orphan_lookup_when_the_ledger_shows_no_create_was_attempted(
    tables, gemini_conn, emulator, tmp_path, monkeypatch
):
    """The worker dies after shard 1's upload, before its intent: the retry looks nothing up by name."""
    store = StateStore()
    real = SubmissionLedger.record_intent

    def die_at_shard_1(self: SubmissionLedger, index: int, rec: dict[str, Any]) -> None:
        if index == 1:
            raise SystemExit("worker killed before shard 1's create")
        real(self, index, rec)

    monkeypatch.setattr(SubmissionLedger, "record_intent", die_at_shard_1)
    with pytest.raises(SystemExit):
        _submit(tables, tmp_path).execute(context(store))
    monkeypatch.setattr(SubmissionLedger, "record_intent", real)
    lists_before = emulator.control.calls().get("batches.list", 0)  # the first try's scan (no records)
    manifest = _submit(tables, tmp_path).execute(context(store))
    calls = emulator.control.calls()
    assert calls.get("batches.list", 0) == lists_before and calls["batches.create"] == SHARDS
    assert sorted(j["name"] for j in emulator.control.jobs()) == sorted(job_names(manifest))


def _job(name: str, age_hours: float, display_name: str | None = None) -> JobStatus:
    created = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=age_hours)
    return JobStatus(
        name=name, state="SUCCEEDED", display_name=display_name or name, create_time=created.isoformat()
    )


class _Pager:
    """A ``batches.list`` result, newest first, counting how many jobs (and so pages) were read."""

    def __init__(self, ages: list[float]) -> None:
        self.ages, self.read = ages, 0

    def __iter__(self) -> Any:
        for i, age in enumerate(self.ages):
            self.read += 1
            created = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=age)
            yield SimpleNamespace(
                name=f"batches/{i}", state=None, display_name=f"d{i}", model="m", create_time=created
            )


def test_R50_the_orphan_scan_stops_at_48_hours(gemini_conn, emulator, make_jobs, monkeypatch):
    # The emulator lists newest first, as the service does: the stop rule relies on it.
    names = make_jobs(["first", "second", "third"])
    hook = GeminiBatchHook(gemini_conn)
    assert [j.name for j in hook.list_jobs(page_size=1, window_seconds=LIST_WINDOW_SECONDS)] == names[::-1]

    # The emulator cannot back-date a job, so the stop rule is shown over a listing with old create times.
    pager = _Pager([1, 20, 47.9, 48.1, 100, 200])
    client = SimpleNamespace(batches=SimpleNamespace(list=lambda config: pager))
    monkeypatch.setattr(GeminiBatchHook, "get_conn", lambda self: client)
    assert [j.name for j in hook.list_jobs(window_seconds=LIST_WINDOW_SECONDS)] == [
        "batches/0",
        "batches/1",
        "batches/2",
    ]
    assert pager.read == 4  # stopped at the first job past 48 h: no further page read
    assert hook.find_job_by_display_name("d4") is None  # older than 48 h: not looked at
    assert len(list(hook.list_jobs())) == 6  # without a window: the whole history


def test_R50_find_existing_jobs_takes_each_shards_newest_generation():
    jobs = [_job("batches/3", 1, "agb-x-f-r1-00001"), _job("batches/2", 2, "agb-x-f-00001"),
            _job("batches/1", 3, "agb-x-f-00000"), _job("batches/0", 49, "agb-x-f-00002")]  # fmt: skip
    hook = SimpleNamespace(list_jobs=lambda window_seconds=None: within_window(jobs, window_seconds))
    found = find_existing_jobs(hook, {"agb-x-f-00000", "agb-x-f-00001", "agb-x-f-00002"})  # type: ignore[arg-type]
    assert {k: v.name for k, v in found.items()} == {
        "agb-x-f-00001": "batches/3",
        "agb-x-f-00000": "batches/1",
    }
