"""Reliability: the Gemini API misbehaving on the wire — 429 / 500 / 503 bursts on every endpoint the product
calls, and a connection cut in the middle of a results download.

End state asserted every time: exactly one batch job per shard in the emulator, and every input row in the
destination table exactly once with the answer the model gave to *its* prompt.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_gemini_batch.emulator.responder import expected_text
from tests.reliability.helpers import (
    outcome_counts,
    pipeline,
    rows,
    run_inline,
    ti_states,
    unique_dag_id,
)

N = 30
PER_SHARD = 10
SHARDS = N // PER_SHARD


def _prompt(i: int) -> str:
    return f"Describe product {i} ({('tools', 'garden', 'kitchen')[i % 3]})."


def assert_clean_end_state(wh: Any, dst: str, emulator: Any) -> None:
    """One job per shard, one row per key, every answer the echo of that key's own prompt."""
    jobs = emulator.control.jobs()
    assert len(jobs) == SHARDS, [j["display_name"] for j in jobs]
    assert len({j["display_name"] for j in jobs}) == SHARDS
    got = rows(wh, dst)
    assert sorted(got) == list(range(N))
    for key, (outcome, text, error) in got.items():
        request = {"contents": [{"role": "user", "parts": [{"text": _prompt(key)}]}]}
        assert (outcome, text, error) == ("succeeded", expected_text(request), None), key
    assert wh.query(f'SELECT COUNT(*), COUNT(DISTINCT "key") FROM {dst}') == [(N, N)]


def _run(tables: tuple[Any, str, str], tmp_path: Any, **submit: Any) -> dict[str, Any]:
    wh, src, dst = tables
    _, _, summary = run_inline(
        wh,
        src,
        dst,
        tmp_path / "staging",
        submit={
            "max_requests_per_job": PER_SHARD,
            "prompt_template": "Describe product {id} ({category}).",
            **submit,
        },
    )
    return summary


def test_R01_upload_start_429_503_burst(tables, gemini_conn, emulator, tmp_path):
    emulator.control.inject_fault("files.upload_start", status=429)
    emulator.control.inject_fault("files.upload_start", status=503)
    _run(tables, tmp_path)
    assert_clean_end_state(tables[0], tables[2], emulator)
    assert emulator.control.calls()["files.upload_start"] == SHARDS + 2


@pytest.mark.parametrize("status", [429, 500, 503])
def test_R02_upload_chunk_burst(tables, gemini_conn, emulator, tmp_path, status):
    # The SDK ends the resumable session on a failed chunk; the submit retries the whole upload.
    emulator.control.inject_fault("files.upload_chunk", status=status, count=2)
    _run(tables, tmp_path)
    assert_clean_end_state(tables[0], tables[2], emulator)
    assert emulator.control.calls()["files.upload_chunk"] >= SHARDS + 2


def test_R03_create_429_burst_backs_off_and_creates_once(tables, gemini_conn, emulator, tmp_path):
    emulator.control.inject_fault("batches.create", status=429, count=3)
    _run(tables, tmp_path)
    assert_clean_end_state(tables[0], tables[2], emulator)
    assert emulator.control.calls()["batches.create"] == SHARDS + 3


@pytest.mark.parametrize("status", [500, 503])
def test_R04_create_5xx_is_ambiguous_and_looked_up_before_retrying(
    tables, gemini_conn, emulator, tmp_path, status
):
    emulator.control.inject_fault("batches.create", status=status, count=2)
    _run(tables, tmp_path)
    assert_clean_end_state(tables[0], tables[2], emulator)
    calls = emulator.control.calls()
    assert calls["batches.create"] == SHARDS + 2
    # Before each retry of an ambiguous create, the job is searched by its display name (and nothing else
    # lists: no create had been attempted before this first try, so there was no orphan scan).
    assert calls["batches.list"] >= 2


def test_R47_create_reply_lost_while_the_list_lags(tables, gemini_conn, emulator, tmp_path):
    """The service makes the job but its reply is a 503 (twice), and ``batches.list`` shows new jobs only
    after a lag: the lookup before the next attempt waits the settle time (five backoff bases) and finds
    each job, so none is created twice."""
    emulator.control.configure(list_lag_seconds=0.3)
    emulator.control.inject_fault("batches.create", status=503, count=2, after=True)
    _run(tables, tmp_path, create_retry_base_seconds=0.1)  # settles 0.5 s, longer than the lag
    assert_clean_end_state(tables[0], tables[2], emulator)
    assert emulator.control.calls()["batches.create"] == SHARDS  # both lost replies found, not re-sent


def test_R05_get_burst_while_waiting_and_loading(tables, gemini_conn, emulator, tmp_path):
    emulator.control.inject_fault("batches.get", status=429)
    emulator.control.inject_fault("batches.get", status=503)
    _run(tables, tmp_path)
    assert_clean_end_state(tables[0], tables[2], emulator)


def test_R06_list_500_burst_during_the_orphan_scan(tables, gemini_conn, emulator, tmp_path):
    """The scan runs when a create may have happened unrecorded: here the run is re-created (a fresh task
    state store, the same staging folder with its create marker) and finds its jobs through the burst."""
    _run(tables, tmp_path)
    emulator.control.inject_fault("batches.list", status=500, count=2)
    _run(tables, tmp_path)  # run_inline gives every run a fresh task state store: the records are gone
    assert_clean_end_state(tables[0], tables[2], emulator)
    calls = emulator.control.calls()
    assert calls["batches.list"] == 1 + 2 and calls["batches.create"] == SHARDS


def test_R07_download_burst(tables, gemini_conn, emulator, tmp_path):
    # The SDK does not retry downloads; the hook does, each time from the start into a ``.part`` file.
    emulator.control.inject_fault("files.download", status=429)
    emulator.control.inject_fault("files.download", status=503)
    summary = _run(tables, tmp_path)
    assert_clean_end_state(tables[0], tables[2], emulator)
    assert summary["counts"]["succeeded"] == N
    assert emulator.control.calls()["files.download"] == SHARDS + 2


def test_R08_connection_reset_mid_download(tables, gemini_conn, emulator, tmp_path):
    emulator.control.inject_fault("files.download", reset_after_bytes=300, count=2)
    summary = _run(tables, tmp_path)
    assert_clean_end_state(tables[0], tables[2], emulator)
    assert summary["malformed_lines"] == 0 and summary["counts"]["missing"] == 0
    assert emulator.control.calls()["files.download"] == SHARDS + 2


def test_R09_every_endpoint_faulting_in_one_real_dag_run(tables, gemini_conn, emulator, run_dag, tmp_path):
    """A real DAG (submit → deferrable sensor → load) while every endpoint it calls fails once. It makes no
    ``batches.list`` call (a first try with no create marker has nothing to look up; a 429 on create is a
    certain rejection, retried without a lookup), so a list fault is R06's, not this run's."""
    wh, src, dst = tables
    for endpoint, status in [
        ("files.upload_start", 503),
        ("files.upload_chunk", 500),
        ("batches.create", 429),
        ("batches.get", 503),
        ("files.download", 500),
    ]:
        emulator.control.inject_fault(endpoint, status=status)
    emulator.control.inject_fault("files.download", reset_after_bytes=200)
    dag = pipeline(
        unique_dag_id("faults"),
        source_conn_id=wh.conn_id,
        sql=f"SELECT id, name, category FROM {src}",
        destination_table=dst,
        staging=tmp_path / "staging",
        submit={"max_requests_per_job": PER_SHARD, "prompt_template": "Describe product {id} ({category})."},
    )
    run = run_dag(dag)
    assert run.state == "success"
    assert ti_states(run) == {"submit": "success", "wait": "success", "load": "success"}
    assert_clean_end_state(wh, dst, emulator)
    assert outcome_counts(wh, dst) == {"succeeded": N}
    calls = emulator.control.calls()
    assert calls.get("batches.list", 0) == 0
    # The injected faults were used: one create more than shards (the 429), two upload starts more (the
    # failed start, and the restart after the failed chunk: the SDK gives up on a failed chunk).
    assert calls["batches.create"] == SHARDS + 1 and calls["files.upload_start"] == SHARDS + 2
