"""Reliability: context caching of a shared prefix (``shared_context``) — one cache per run, referenced by every
request, deleted after the load; re-used by a retry and after a SIGKILL; refused before any paid call when too
small; cleaned up on a kill.

End state asserted every time: the emulator's caches (created, live, deleted, requests answered with each),
the request lines it stored for each job, its call counts, and the destination rows with their cached tokens.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchInputError
from airflow_gemini_batch.manifest import job_names
from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor
from tests.conftest import xcom_of
from tests.reliability.helpers import (
    StateStore,
    context,
    load_op,
    outcome_counts,
    pipeline,
    sigkill_worker_when,
    submit_op,
    ti_states,
    try_numbers,
    unique_dag_id,
)
from tests.reliability.kill_target import FileStateStore

N = 12
PER_SHARD = 4
SHARDS = N // PER_SHARD
SQL = "SELECT id, name, category FROM {table}"
DOCUMENT = "The catalogue's style guide: plain words, no superlatives, two sentences. " * 60
INSTRUCTION = "You write product descriptions."
#: the emulator's count: ~4 characters a token over the system instruction and the contents
CACHE_TOKENS = math.ceil((len(INSTRUCTION) + 1 + len(DOCUMENT)) / 4)
#: keep_uploaded_files: the emulator keeps the request lines it stored, for the assertions on every line
CACHED = {
    "shared_context": DOCUMENT,
    "system_instruction": INSTRUCTION,
    "max_requests_per_job": PER_SHARD,
    "keep_uploaded_files": True,
}


def _dag(tables: tuple[Any, str, str], tmp_path: Path, name: str, **kw: Any) -> Any:
    wh, src, dst = tables
    return pipeline(
        unique_dag_id(name),
        source_conn_id=wh.conn_id,
        sql=SQL.format(table=src),
        destination_table=dst,
        staging=tmp_path / "staging",
        **kw,
    )


def assert_cached_run(emulator: Any, tables: tuple[Any, str, str], manifest: dict[str, Any]) -> None:
    """One cache, named by every stored request line of every job, deleted; every row carries its tokens."""
    wh, _, dst = tables
    caches = emulator.control.caches()
    assert len(caches) == 1 and emulator.control.calls()["caches.create"] == 1
    cache = caches[0]
    assert manifest["context_cache"]["name"] == cache["name"]
    assert cache["deleted"] is True and cache["live"] is False  # deleted after the load
    assert cache["usageMetadata"]["totalTokenCount"] == CACHE_TOKENS
    lines = [line for name in job_names(manifest) for line in emulator.control.job_requests(name)]
    assert len(lines) == N
    assert {line["request"]["cachedContent"] for line in lines} == {cache["name"]}
    assert not any("systemInstruction" in line["request"] for line in lines)  # it lives in the cache
    assert cache["hits"] == N
    assert outcome_counts(wh, dst) == {"succeeded": N}
    assert wh.query(f"SELECT DISTINCT cached_tokens FROM {dst}") == [(CACHE_TOKENS,)]
    prompt_floor = wh.query(f"SELECT MIN(prompt_tokens) FROM {dst}")[0][0]
    assert prompt_floor > CACHE_TOKENS  # the prompt count includes the cached prefix, as on the service


def test_R69_a_cached_run_makes_one_cache_every_request_uses_and_the_load_deletes(
    tables, gemini_conn, emulator, run_dag, tmp_path
):
    run = run_dag(_dag(tables, tmp_path, "cache", submit=CACHED))
    assert run.state == "success"
    manifest = xcom_of(run, "submit")
    assert_cached_run(emulator, tables, manifest)
    summary = xcom_of(run, "load")
    assert summary["tokens"]["cached"] == N * CACHE_TOKENS
    calls = emulator.control.calls()
    assert (calls["batches.create"], calls["caches.delete"]) == (SHARDS, 1)


def test_R69_cached_tokens_reach_the_object_store_output(gemini_conn, emulator, tmp_path, sqlite_warehouse):
    wh = sqlite_warehouse
    src = wh.table("src")
    wh.create_prompts_table(src, N)
    manifest = submit_op(wh.conn_id, SQL.format(table=src), tmp_path / "staging", **CACHED).execute(
        context(StateStore())
    )
    GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05, timeout=60).execute({})
    out = tmp_path / "out"
    GeminiBatchLoadResultsOperator(task_id="load", manifest=manifest, destination_path=str(out)).execute(
        context(task_id="load")  # type: ignore[arg-type]
    )
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == N and {r["cached_tokens"] for r in rows} == {CACHE_TOKENS}
    assert [c["deleted"] for c in emulator.control.caches()] == [True]


def test_R70_an_airflow_retry_reuses_the_cache(tables, gemini_conn, emulator, run_dag, tmp_path):
    """Try 1 makes the cache, then its first create fails with 500 through every retry (a 429 would wait for
    the next admission round instead, R52) and the task fails; try 2 re-uses the cache."""
    emulator.control.inject_fault("batches.create", status=500, count=2)
    dag = _dag(
        tables,
        tmp_path,
        "cache_retry",
        submit={**CACHED, "create_retry_attempts": 2},
        default_args={"retries": 1, "retry_delay": datetime.timedelta(0)},
    )
    run = run_dag(dag)
    assert run.state == "success" and try_numbers(run)["submit"] == 2
    assert_cached_run(emulator, tables, xcom_of(run, "submit"))
    assert emulator.control.calls()["caches.update"] == 1  # try 2 renewed the recorded cache's TTL


def test_R70_sigkill_between_cache_create_and_record_then_the_retry_finds_it(
    tables, gemini_conn, emulator, tmp_path
):
    """A real process, SIGKILLed (no finally, no on_kill) after ``caches.create`` returned, before its name
    was saved. The retry finds the cache by its display name (``caches.list``), creates no second one, and the
    load deletes it: none is left."""
    wh, src, dst = tables
    store_path = tmp_path / "task_state_store.json"
    args = {
        "conn_id": wh.conn_id,
        "sql": SQL.format(table=src),
        "staging": str(tmp_path / "staging"),
        "store": str(store_path),
        "slow_key": "gemini_batch_submit.cache",
        "submit": CACHED,
    }
    sigkill_worker_when(emulator, args, "caches.create", 1, "created the cache")
    store = FileStateStore(store_path)
    record = store.get("gemini_batch_submit.cache")
    assert record["intent"] is True and "name" not in record  # the kill landed in the window
    assert emulator.control.calls()["files.upload_start"] == 0 and emulator.control.jobs() == []

    manifest = submit_op(wh.conn_id, SQL.format(table=src), tmp_path / "staging", **CACHED).execute(
        context(store)  # type: ignore[arg-type]
    )
    GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05, timeout=60).execute({})
    load_op(wh.conn_id, dst, manifest).execute(context(task_id="load"))
    assert_cached_run(emulator, tables, manifest)
    assert [c for c in emulator.control.caches() if c["live"]] == []


def test_R71_a_prefix_below_the_minimum_is_refused_before_any_call(
    tables, gemini_conn, emulator, run_dag, tmp_path
):
    run = run_dag(_dag(tables, tmp_path, "cache_small", submit={"shared_context": "Too short to cache."}))
    assert ti_states(run)["submit"] == "failed"
    calls = emulator.control.calls()
    assert sum(calls.values()) == 0  # no cache, no upload, no job: not even a read
    with pytest.raises(GeminiBatchInputError) as err:
        submit_op(
            tables[0].conn_id,
            SQL.format(table=tables[1]),
            tmp_path / "s",
            shared_context="Too short to cache.",
        ).execute(context(StateStore()))
    message = str(err.value)
    assert "about 5 tokens" in message and "gemini-2.5-flash (1,024 tokens)" in message and "Fix:" in message


def test_R71_killing_the_submit_cancels_its_jobs_and_deletes_the_cache(
    tables, gemini_conn, emulator, tmp_path
):
    """``on_kill`` (what Airflow calls on SIGTERM) after the jobs were made: they are cancelled, and the cache
    no job needs any more is deleted. A later failure that is final deletes it as well."""
    wh, src, _ = tables
    emulator.control.hold_state("PENDING")  # until released: the jobs are still pending at the kill
    op = submit_op(wh.conn_id, SQL.format(table=src), tmp_path / "staging", **CACHED)
    op.execute(context(StateStore()))
    op.on_kill()
    assert {j["state"] for j in emulator.control.jobs()} == {"BATCH_STATE_CANCELLED"}
    assert [(c["deleted"], c["live"]) for c in emulator.control.caches()] == [(True, False)]


def test_R71_a_final_submit_failure_deletes_the_cache_a_retried_one_keeps_it(
    tables, gemini_conn, emulator, tmp_path
):
    wh, src, _ = tables
    emulator.control.inject_fault("files.upload_start", status=400, count=1)
    store = StateStore()
    op = submit_op(wh.conn_id, SQL.format(table=src), tmp_path / "staging", retries=1, **CACHED)
    ctx = context(store)
    ctx["task"], ctx["ti"].max_tries = op, 1  # try 1 of 2: a retry will follow
    with pytest.raises(Exception, match="400"):
        op.execute(ctx)
    assert [c["live"] for c in emulator.control.caches()] == [True]
    emulator.control.inject_fault("files.upload_start", status=400, count=1)
    ctx["ti"].try_number = 2  # the last try
    with pytest.raises(Exception, match="400"):
        op.execute(ctx)
    assert [(c["live"], c["deleted"]) for c in emulator.control.caches()] == [(False, True)]
    assert emulator.control.calls()["caches.create"] == 1


@pytest.mark.parametrize("deferrable", [False, True])
def test_R69_the_wait_renews_the_cache_while_jobs_run(tables, gemini_conn, emulator, tmp_path, deferrable):
    """The first read sees the jobs PENDING (held for one read) with less than half the TTL left: the wait
    (poke mode through the sync hook, the trigger through the async client) renews the cache once."""
    wh, src, _ = tables
    emulator.control.hold_state("PENDING", reads=1)
    manifest = submit_op(wh.conn_id, SQL.format(table=src), tmp_path / "staging", **CACHED).execute(
        context(StateStore())
    )
    before = emulator.control.caches()[0]["expireTime"]
    manifest["context_cache"]["expire_time"] = time.time()  # as if the TTL had nearly run out
    sensor = GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05, timeout=60)
    if deferrable:
        trigger = sensor.waiter(deadline=time.time() + 60).trigger(gemini_conn, 0.05, cancel_on_kill=True)
        assert trigger.serialize()[1]["cache_name"] == manifest["context_cache"]["name"]
        assert asyncio.run(_first_event(trigger))["status"] == "success"
    else:
        sensor.execute(context(task_id="wait"))  # type: ignore[arg-type]
    assert emulator.control.calls()["caches.update"] == 1
    assert emulator.control.caches()[0]["expireTime"] > before


async def _first_event(trigger: Any) -> dict[str, Any]:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger fired nothing")


@pytest.mark.parametrize("deferrable", [False, True])
def test_R71_killing_the_wait_cancels_the_jobs_and_deletes_the_cache(
    tables, gemini_conn, emulator, tmp_path, deferrable
):
    """A kill while waiting: the sensor's ``on_kill`` (worker phase) or the trigger's (deferred) cancels the
    jobs still running and deletes the run's cache."""
    wh, src, _ = tables
    emulator.control.hold_state("PENDING")  # until released: the jobs are running at the kill
    manifest = submit_op(wh.conn_id, SQL.format(table=src), tmp_path / "staging", **CACHED).execute(
        context(StateStore())
    )
    sensor = GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05, timeout=60)
    waiter = sensor.waiter(deadline=time.time() + 60)
    if deferrable:
        asyncio.run(waiter.trigger(gemini_conn, 0.05, cancel_on_kill=True).on_kill())
    else:
        assert not waiter.poll().done
        sensor.on_kill()
    assert {j["state"] for j in emulator.control.jobs()} == {"BATCH_STATE_CANCELLED"}
    assert [(c["deleted"], c["live"]) for c in emulator.control.caches()] == [(True, False)]
