"""Reliability: jobs that end badly, late or strangely — FAILED, EXPIRED, CANCELLED by someone else, stuck in
PENDING past the deadline, SUCCEEDED before the output is visible, and outputs that are cut off, broken or
carry the wrong keys.

All through a real DAG (submit → deferrable sensor → load). End state asserted: task states, the typed error
in the failed task's log, the emulator's jobs, and the destination rows (every key exactly once, with an
outcome that says what happened, and counts that add up).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from google import genai

from airflow_gemini_batch.manifest import RESULTS_SUMMARY_XCOM_KEY
from tests.conftest import TEST_API_KEY, xcom_of
from tests.reliability.helpers import pipeline, rows, ti_states, unique_dag_id

N = 12
PER_SHARD = 6
SHARDS = 2


def _dag(tables: tuple[Any, str, str], tmp_path: Any, name: str, **kw: Any) -> Any:
    wh, src, dst = tables
    kw.setdefault("submit", {})
    kw["submit"].setdefault("max_requests_per_job", PER_SHARD)
    return pipeline(
        unique_dag_id(name),
        source_conn_id=wh.conn_id,
        sql=f"SELECT id, name, category FROM {src}",
        destination_table=dst,
        staging=tmp_path / "staging",
        **kw,
    )


def table_exists(wh: Any, table: str) -> bool:
    return bool(wh.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)))


@pytest.mark.parametrize(
    ("final_state", "error"),
    [
        ("FAILED", "GeminiBatchJobFailedError"),
        ("EXPIRED", "GeminiBatchJobExpiredError"),
    ],
)
def test_R20_R21_job_failed_or_expired_fails_the_wait_naming_the_job(
    tables, gemini_conn, emulator, run_dag, all_logs, tmp_path, final_state, error
):
    emulator.control.set_job_behaviour(final_state=final_state)
    run = run_dag(_dag(tables, tmp_path, final_state.lower()))
    assert run.state == "failed"
    assert ti_states(run) == {"submit": "success", "wait": "failed", "load": "upstream_failed"}
    jobs = emulator.control.jobs()
    assert len(jobs) == SHARDS and {j["state"] for j in jobs} == {f"BATCH_STATE_{final_state}"}
    assert error in all_logs.text
    assert all(j["name"] in all_logs.text for j in jobs)  # the error names the jobs
    assert not table_exists(tables[0], tables[2])  # nothing half-loaded


def test_R22_job_cancelled_by_someone_else_while_the_sensor_waits(
    tables, gemini_conn, emulator, run_dag, all_logs, tmp_path
):
    emulator.control.hold_state("PENDING")  # until the cancel: it lands while the trigger waits
    client = genai.Client(api_key=TEST_API_KEY, http_options={"base_url": emulator.base_url})

    def cancel_when_waiting() -> None:
        # Another person (or script) cancels one job through the SDK while the trigger polls.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if emulator.control.calls()["batches.get"] >= 1 and len(emulator.control.jobs()) == SHARDS:
                client.batches.cancel(name=emulator.control.jobs()[0]["name"])
                emulator.control.release()  # the other job goes on (and succeeds)
                return
            time.sleep(0.05)

    canceller = threading.Thread(target=cancel_when_waiting, daemon=True)
    canceller.start()
    run = run_dag(_dag(tables, tmp_path, "cancelled", wait={"timeout": 60}))
    canceller.join(5)
    assert run.state == "failed"
    assert ti_states(run)["wait"] == "failed"
    assert "GeminiBatchJobCancelledError" in all_logs.text
    states = sorted(j["state"] for j in emulator.control.jobs())
    assert states[0] == "BATCH_STATE_CANCELLED" and len(states) == SHARDS


def test_R23_stuck_pending_past_the_deadline_times_out_without_cancelling(
    tables, gemini_conn, emulator, run_dag, all_logs, tmp_path
):
    emulator.control.set_job_behaviour(stay_pending=True)
    run = run_dag(_dag(tables, tmp_path, "stuck", wait={"timeout": 1.5}))
    assert run.state == "failed"
    assert ti_states(run) == {"submit": "success", "wait": "failed", "load": "upstream_failed"}
    assert "GeminiBatchTimeoutError" in all_logs.text
    assert "reached its deadline with 2 of 2 job(s) not done" in all_logs.text
    jobs = emulator.control.jobs()
    # A timeout is not a kill: the jobs are left for the user (they may still finish and be loaded).
    assert len(jobs) == SHARDS and not any(j["cancel_requested"] for j in jobs)
    assert {j["state"] for j in jobs} == {"BATCH_STATE_PENDING"}


def test_R24_succeeded_before_the_output_file_is_visible(
    tables, gemini_conn, emulator, run_dag, all_logs, tmp_path
):
    emulator.control.hold_state("SUCCEEDED", reads=3)  # three reads say SUCCEEDED before the file shows
    run = run_dag(_dag(tables, tmp_path, "late_output"))
    assert run.state == "success"
    got = rows(tables[0], tables[2])
    assert len(got) == N and {o for o, _, _ in got.values()} == {"succeeded"}
    assert len(emulator.control.jobs()) == SHARDS
    # The wait kept reading the SUCCEEDED jobs until their files appeared, instead of passing them on to a
    # load that would find nothing.
    assert all(j["hold"] is None and j["reads"] > 3 for j in emulator.control.jobs())


@pytest.mark.parametrize(
    ("mode", "missing", "report"),
    [
        ("truncate", 1, {"malformed_lines": 1}),
        ("malformed", 1, {"malformed_lines": 1}),
        ("drop_key", 1, {}),
        ("unknown_key", 0, {"unknown_keys": 1}),
        ("duplicate_key", 0, {"duplicate_keys": 1}),
    ],
)
def test_R25_R26_R27_corrupt_output_every_key_still_ends_in_one_outcome(
    tables, gemini_conn, emulator, run_dag, all_logs, tmp_path, mode, missing, report
):
    """Truncated / malformed output (R25, R26); result keys missing, unknown or duplicated (R27)."""
    wh, _, dst = tables
    emulator.control.set_job_behaviour(corrupt_output=mode, count=1)  # only the first job's output
    run = run_dag(_dag(tables, tmp_path, mode))
    summary = xcom_of(run, "load", RESULTS_SUMMARY_XCOM_KEY)
    counts = summary["counts"]
    assert sum(counts.values()) == N == summary["request_count"]
    assert counts["missing"] == missing and counts["succeeded"] == N - missing
    for name, value in report.items():
        assert summary[name] == value, (name, summary[name])
    got = rows(wh, dst)
    assert len(got) == N  # unknown keys are never loaded, duplicates once, missing keys as 'missing'
    assert sum(1 for o, _, _ in got.values() if o == "missing") == missing
    if missing:
        # Everything was written first; then the task fails because a key has no answer.
        assert run.state == "failed" and ti_states(run)["load"] == "failed"
        assert "GeminiBatchResultsError" in all_logs.text and "1 missing" in all_logs.text
        assert wh.query(f"SELECT outcome FROM {dst}_errors") == [("missing",)]
    else:
        assert run.state == "success"
