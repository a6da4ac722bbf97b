"""Reliability: row-level retry rounds (issue 13 item 2, scenario b) with ``GeminiBatchOperator`` in real DAG
runs — rows that failed with a retryable error are answered by a follow-up batch; rows that succeeded, or
failed for good, are never sent again; the counts add up per round and in total.

End state asserted every time: destination rows (outcome, ``attempts``), the emulator's jobs, creates and the
requests it processed per key, the task state and the summary's per-round and total counts.
"""

from __future__ import annotations

import datetime
from typing import Any

from airflow_gemini_batch.emulator.faults import fails_by_fraction
from airflow_gemini_batch.manifest import RESULTS_SUMMARY_XCOM_KEY
from tests.conftest import xcom_of
from tests.reliability.helpers import batch_dag, rerun_task, ti_states

N = 100
DOOMED = sorted(
    k for k in range(N) if fails_by_fraction(k, 0.05)
)  # a 5 % rule by key hash: 2 of these 100 keys


def _dag(tables: tuple[Any, str, str], tmp_path: Any, **kw: Any) -> Any:
    wh, src, dst = tables
    return batch_dag(wh, src, dst, tmp_path / "staging", **kw)


def _rows(wh: Any, dst: str) -> dict[int, tuple[str, int, int | None]]:
    return {k: (o, a, c) for k, o, a, c in wh.query(f"SELECT id, outcome, attempts, error_code FROM {dst}")}


def test_R57_five_percent_503_are_answered_by_a_second_round_and_a_clear_pays_nothing(
    tables, gemini_conn, emulator, run_dag, tmp_path
):
    wh, _, dst = tables
    assert 2 <= len(DOOMED) <= 10
    # The first round's job only (count=1) fails 5 % of its rows with 503 UNAVAILABLE; each round's job is
    # held PENDING for one read, so both rounds really defer to the triggerer (no worker held meanwhile).
    emulator.control.set_job_behaviour(fail_fraction=0.05, fail_status=503, count=1)
    emulator.control.hold_state("PENDING", reads=1)
    dag = _dag(tables, tmp_path)
    run = run_dag(dag)
    assert run.state == "success" and ti_states(run) == {"batch": "success"}

    assert _rows(wh, dst) == {k: ("succeeded", 2 if k in DOOMED else 1, None) for k in range(N)}
    # No succeeded row was sent again: the emulator processed each key once, the 503 ones twice.
    assert emulator.control.request_counts() == {str(k): 2 if k in DOOMED else 1 for k in range(N)}
    jobs = sorted(emulator.control.jobs(), key=lambda j: j["create_time"])
    assert len(jobs) == 2 and emulator.control.calls()["batches.create"] == 2
    assert "-a2-" in jobs[1]["display_name"] and "-a2-" not in jobs[0]["display_name"]
    assert [j["request_count"] for j in jobs] == [N, len(DOOMED)]

    summary = xcom_of(run, "batch", RESULTS_SUMMARY_XCOM_KEY)
    first, second = summary["rounds"]
    # Per round: its keys add up to its outcomes; what it resent is the next round's input.
    assert first["request_count"] == sum(first["counts"].values()) == N
    assert first["counts"] == {  # a round's load counts reused keys too: none here (no incremental)
        "succeeded": N - len(DOOMED),
        "failed": len(DOOMED),
        "invalid_output": 0,
        "missing": 0,
        "reused": 0,
    }
    assert first["resent"] == len(DOOMED) == second["request_count"] == sum(second["counts"].values())
    assert second["counts"]["succeeded"] == len(DOOMED) and second["resent"] == 0
    # In total: every key settled once, in the round that answered it.
    assert summary["counts"] == {"succeeded": N, "failed": 0, "invalid_output": 0, "missing": 0, "reused": 0}
    assert (
        summary["request_count"] == N and summary["reconciled"] and summary["rows_loaded"] == N + len(DOOMED)
    )
    assert summary["tokens"]["total"] == first["tokens"]["total"] + second["tokens"]["total"] > 0

    # The user clears the task (same DAG run, same task state store): both rounds re-attach, nothing is
    # created or processed again, the rows stay as they were.
    assert rerun_task(dag, run, "batch") == "success"
    assert emulator.control.calls()["batches.create"] == 2
    assert emulator.control.request_counts() == {str(k): 2 if k in DOOMED else 1 for k in range(N)}
    assert _rows(wh, dst) == {k: ("succeeded", 2 if k in DOOMED else 1, None) for k in range(N)}


def test_R58_retries_run_out_the_rows_end_failed_and_the_task_fails_after_loading(
    tables, gemini_conn, emulator, run_dag, all_logs, tmp_path
):
    wh, _, dst = tables
    emulator.control.set_job_behaviour(fail_fraction=0.05, fail_status=503)  # every round's job
    run = run_dag(_dag(tables, tmp_path, max_row_retries=2))
    assert run.state == "failed" and ti_states(run) == {"batch": "failed"}
    # Sent 1 + max_row_retries times, then left failed; every other row loaded once, in round 1.
    assert _rows(wh, dst) == {
        k: ("failed", 3, 503) if k in DOOMED else ("succeeded", 1, None) for k in range(N)
    }
    assert emulator.control.request_counts() == {str(k): 3 if k in DOOMED else 1 for k in range(N)}
    assert emulator.control.calls()["batches.create"] == 3
    # The errors table lists exactly those keys, with their attempts too.
    errors = wh.query(f"SELECT id, outcome, attempts, error_code FROM {dst}_errors ORDER BY id")
    assert errors == [(k, "failed", 3, 503) for k in DOOMED]
    summary = xcom_of(run, "batch", RESULTS_SUMMARY_XCOM_KEY)
    assert [r["request_count"] for r in summary["rounds"]] == [N, len(DOOMED), len(DOOMED)]
    assert summary["rounds"][-1]["exhausted"] == len(DOOMED) and summary["rounds"][-1]["resent"] == 0
    assert summary["counts"] == {
        "succeeded": N - len(DOOMED),
        "failed": len(DOOMED),
        "invalid_output": 0,
        "missing": 0,
        "reused": 0,
    }
    assert summary["status"] == "too_many_failures" and summary["reconciled"]
    assert f"GeminiBatchResultsError: {len(DOOMED)} of {N} keys did not succeed" in all_logs.text


def test_R59_invalid_argument_and_safety_blocked_rows_are_never_resent(
    tables, gemini_conn, emulator, run_dag, tmp_path
):
    wh, src, dst = tables
    invalid, blocked = (
        [k for k in range(N) if k not in DOOMED][:3],
        [k for k in range(N) if k not in DOOMED][3:6],
    )
    wh.execute(f"UPDATE {src} SET name = 'PLEASE_FAIL' WHERE id IN ({', '.join(map(str, invalid))})")
    wh.execute(f"UPDATE {src} SET name = 'PLEASE_BLOCK' WHERE id IN ({', '.join(map(str, blocked))})")
    emulator.control.set_job_behaviour(fail_fraction=0.05, fail_status=503, count=1)
    run = run_dag(_dag(tables, tmp_path, max_failed_fraction=0.1))
    assert run.state == "success"
    rows = _rows(wh, dst)
    assert {k: rows[k] for k in invalid} == dict.fromkeys(invalid, ("failed", 1, 400))
    assert {k: rows[k][:2] for k in blocked} == dict.fromkeys(blocked, ("failed", 1))
    assert {k: rows[k] for k in DOOMED} == dict.fromkeys(DOOMED, ("succeeded", 2, None))
    counts = emulator.control.request_counts()
    assert {counts[str(k)] for k in invalid + blocked} == {1} and {counts[str(k)] for k in DOOMED} == {2}
    summary = xcom_of(run, "batch", RESULTS_SUMMARY_XCOM_KEY)
    assert summary["rounds"][0]["resent"] == len(DOOMED) and len(summary["rounds"]) == 2
    assert summary["counts"]["failed"] == 6 and summary["counts"]["succeeded"] == N - 6
    assert sorted(summary["first_failed_keys"], key=int) == [str(k) for k in sorted(invalid + blocked)]


def test_R57_a_rerun_with_the_task_state_lost_finds_both_rounds_by_name(
    tables, gemini_conn, emulator, run_dag, tmp_path
):
    """``dag.test()`` again for the same logical date re-creates the run (task state gone): the 48 h
    display-name scan finds round 1's job, its reload yields the same remainder, and round 2's job too."""
    wh, _, dst = tables
    emulator.control.set_job_behaviour(fail_fraction=0.05, fail_status=503, count=1)
    dag = _dag(tables, tmp_path)
    when = datetime.datetime(2026, 1, 7, tzinfo=datetime.timezone.utc)
    assert run_dag(dag, logical_date=when).state == "success"
    assert run_dag(dag, logical_date=when).state == "success"
    assert emulator.control.calls()["batches.create"] == 2
    assert emulator.control.request_counts() == {str(k): 2 if k in DOOMED else 1 for k in range(N)}
    assert _rows(wh, dst) == {k: ("succeeded", 2 if k in DOOMED else 1, None) for k in range(N)}


def test_R79_incremental_runs_skip_answered_rows_in_round_1_and_resend_only_the_remainder(
    sqlite_warehouse, gemini_conn, emulator, run_dag, tmp_path
):
    """``GeminiBatchOperator(incremental=True)`` over 20 rows: run 1 answers 4 of them in round 2 (503 in
    round 1); a clear of run 1 pays nothing; run 2 over the unchanged rows sends nothing; after 3 prompts
    change, run 3 sends exactly those 3."""
    wh = sqlite_warehouse
    src, dst = wh.table("src"), wh.table("dst")
    n = 20
    wh.create_prompts_table(src, n)
    doomed = [k for k in range(n) if fails_by_fraction(k, 0.2)]
    assert 2 <= len(doomed) <= 8
    emulator.control.set_job_behaviour(fail_fraction=0.2, fail_status=503, count=1)
    emulator.control.hold_state("PENDING", reads=1)
    dag = batch_dag(wh, src, dst, tmp_path / "staging", incremental=True)

    def day(d: int) -> datetime.datetime:
        return datetime.datetime(2026, 2, d, tzinfo=datetime.timezone.utc)

    first = run_dag(dag, logical_date=day(1))
    assert first.state == "success", ti_states(first)
    assert emulator.control.calls()["batches.create"] == 2
    summary = xcom_of(first, "batch", RESULTS_SUMMARY_XCOM_KEY)
    assert summary["counts"]["succeeded"] == n and summary["reused"] == 0 and summary["reconciled"]

    # A clear of run 1: its own jobs' answers are not "reused" by it, so round 1 builds the same shards,
    # re-attaches both rounds and pays nothing (and loads the same rows again).
    assert rerun_task(dag, first, "batch") == "success"
    assert emulator.control.calls()["batches.create"] == 2
    stored = {r[0]: r[1:] for r in wh.query(f"SELECT id, outcome, attempts, loaded_at, job_name FROM {dst}")}
    assert {k: v[:2] for k, v in stored.items()} == {
        k: ("succeeded", 2 if k in doomed else 1) for k in range(n)
    }

    second = run_dag(dag, logical_date=day(2))
    assert second.state == "success", ti_states(second)
    calls = emulator.control.calls()
    assert calls["batches.create"] == 2 and calls.get("files.upload_start", 0) == 2  # nothing new sent
    summary = xcom_of(second, "batch", RESULTS_SUMMARY_XCOM_KEY)
    assert summary["counts"] == {"succeeded": 0, "failed": 0, "invalid_output": 0, "missing": 0, "reused": n}
    assert summary["reused"] == n and summary["request_count"] == n and summary["reconciled"]
    assert len(summary["rounds"]) == 1 and summary["rounds"][0]["request_count"] == 0
    assert summary["status"] == "ok"
    assert {
        r[0]: r[1:] for r in wh.query(f"SELECT id, outcome, attempts, loaded_at, job_name FROM {dst}")
    } == (stored)  # reused rows stay as they are

    changed = [k for k in range(n) if k not in doomed][:3]
    wh.execute(f"UPDATE {src} SET name = name || ' v2' WHERE id IN ({', '.join(map(str, changed))})")
    third = run_dag(dag, logical_date=day(3))
    assert third.state == "success", ti_states(third)
    assert emulator.control.calls()["batches.create"] == 3
    newest = max(emulator.control.jobs(), key=lambda j: j["create_time"])
    assert newest["request_count"] == 3
    assert emulator.control.request_counts() == {
        str(k): 2 if k in doomed or k in changed else 1 for k in range(n)
    }
    summary = xcom_of(third, "batch", RESULTS_SUMMARY_XCOM_KEY)
    assert summary["counts"]["succeeded"] == 3 and summary["counts"]["reused"] == n - 3
    assert summary["request_count"] == n and summary["reconciled"]
