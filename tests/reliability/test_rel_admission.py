"""Reliability: admission under the quotas — a run needing more jobs than fit is submitted in rounds, the
task deferred between them; a 429 storm on create defers instead of failing; a triggerer restart between
rounds makes no second job.

End state asserted every time: the emulator's jobs, its call counts and its quota high-water mark (the
emulator enforces the same limit, so a run that overshot would have been refused), and the destination rows.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_gemini_batch.manifest import job_names
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor
from airflow_gemini_batch.triggers.admission import GeminiBatchAdmissionTrigger
from tests.conftest import xcom_of
from tests.polling import await_until
from tests.reliability.helpers import (
    POLL,
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

if TYPE_CHECKING:
    from pathlib import Path

N = 250


def _dag(tables: tuple[Any, str, str], tmp_path: Path, **submit: Any) -> Any:
    wh, src, dst = tables
    return pipeline(
        unique_dag_id("admit"),
        source_conn_id=wh.conn_id,
        sql=f"SELECT id, name, category FROM {src}",
        destination_table=dst,
        staging=tmp_path / "staging",
        submit={"deferrable": True, "poll_interval": POLL, **submit},
    )


def _assert_all_rows(wh: Any, dst: str, n: int) -> None:
    assert sorted(rows(wh, dst)) == list(range(n)) and outcome_counts(wh, dst) == {"succeeded": n}


def test_R51_250_shards_under_max_concurrent_jobs_100(
    tables, gemini_conn, emulator, run_dag, tmp_path, all_logs
):
    """250 one-row shards, ``max_concurrent_jobs=100``; the emulator enforces 100 too and holds every job
    PENDING until its first read, so the first round's 100 jobs are all unfinished at once."""
    wh, _, dst = tables
    emulator.control.set_quota(max_concurrent_jobs=100)
    emulator.control.hold_state("PENDING", reads=1)
    dag = _dag(tables, tmp_path, max_requests_per_job=1, max_jobs=N, max_concurrent_jobs=100)
    run = run_dag(dag)
    assert run.state == "success", ti_states(run)
    quota = emulator.control.quota()
    assert quota["high_water_jobs"] == 100 and quota["rejected_creates"] == 0
    jobs = emulator.control.jobs()
    assert len(jobs) == N == len({j["display_name"] for j in jobs})
    assert emulator.control.calls()["batches.create"] == N
    manifest = xcom_of(run, "submit")
    admission = manifest["admission"]
    assert admission["rounds"][0] == {
        "round": 1,
        "created": 100,
        "attached": 0,
        "waiting": 150,
        "reason": "quota",
    }
    assert sum(r["created"] for r in admission["rounds"]) == N and admission["rounds"][-1]["reason"] == "done"
    assert len(admission["rounds"]) >= 3 and admission["deferrals"] == len(admission["rounds"]) - 1
    assert admission["rate_limited"] == 0
    assert sorted(job_names(manifest)) == sorted(j["name"] for j in jobs)
    # Between rounds the task was deferred: the admission trigger ran (in the triggerer, not a worker).
    assert all_logs.text.count("Waiting for quota headroom") >= 2
    _assert_all_rows(wh, dst, N)


def test_R52_a_429_storm_longer_than_the_create_retries_defers_then_succeeds(
    sqlite_warehouse, gemini_conn, emulator, run_dag, tmp_path
):
    wh = sqlite_warehouse
    src, dst = wh.table("src"), wh.table("dst")
    wh.create_prompts_table(src, 12)
    # 15 refusals: more than two rounds of the default 6 create attempts (the old budget failed the task).
    emulator.control.inject_fault("batches.create", status=429, count=15)
    dag = _dag((wh, src, dst), tmp_path, max_requests_per_job=4)
    run = run_dag(dag)
    assert run.state == "success", ti_states(run)
    jobs = emulator.control.jobs()
    assert len(jobs) == 3 == len({j["display_name"] for j in jobs})  # exactly one job per shard
    calls = emulator.control.calls()
    assert calls["batches.create"] == 15 + 3
    # No lookup by display name at all: the first round's records prove no earlier create, and a refused
    # create clears its intent, so the later rounds have nothing to look for either.
    assert calls.get("batches.list", 0) == 0
    admission = xcom_of(run, "submit")["admission"]
    assert [r["reason"] for r in admission["rounds"]] == ["rate_limited", "rate_limited", "done"]
    assert admission["rate_limited"] == 2 and [r["created"] for r in admission["rounds"]] == [0, 0, 3]
    _assert_all_rows(wh, dst, 12)


def test_R54_triggerer_restart_between_admission_rounds_makes_no_second_job(
    sqlite_warehouse, gemini_conn, emulator, tmp_path
):
    """Three shards, one at a time (``max_concurrent_jobs=1``). The triggerer dies while the admission
    trigger waits; a new one rebuilds it from ``serialize()``; the next round runs on "another worker"
    (the local shard files gone) and is even delivered twice: one job per shard all the same."""
    wh = sqlite_warehouse
    src, dst = wh.table("src"), wh.table("dst")
    wh.create_prompts_table(src, 12)
    staging = tmp_path / "staging"
    emulator.control.hold_state("PENDING")  # until released: the first trigger has to wait

    def op() -> Any:
        return submit_op(
            wh.conn_id,
            f"SELECT id, name, category FROM {src}",
            staging,
            max_requests_per_job=4,
            max_concurrent_jobs=1,
            deferrable=True,
            poll_interval=POLL,
        )

    store = StateStore()
    with pytest.raises(TaskDeferred) as deferred:
        op().execute(context(store))
    first: GeminiBatchAdmissionTrigger = deferred.value.trigger
    assert deferred.value.method_name == "execute_admitted" and len(emulator.control.jobs()) == 1
    classpath, kwargs = first.serialize()

    async def restart() -> dict[str, Any]:
        gen = first.run()
        task = asyncio.ensure_future(anext(gen))
        await await_until(lambda: emulator.control.jobs()[0]["reads"] >= 1, what="polled")
        task.cancel()  # the triggerer process goes away mid-wait
        with pytest.raises(asyncio.CancelledError):
            await task
        await gen.aclose()
        module, _, name = classpath.rpartition(".")
        cls = getattr(__import__(module, fromlist=[name]), name)
        second = cls(**json.loads(json.dumps(kwargs)))  # what the new triggerer does with the DB row
        assert second.serialize() == (classpath, kwargs)
        emulator.control.release()
        # From now on each job is PENDING until its first read: a resumed round always finds the job it
        # just created unfinished, so the replayed event below defers too.
        emulator.control.hold_state("PENDING", reads=1)
        gen2 = second.run()
        try:
            return (await asyncio.wait_for(anext(gen2), 60)).payload
        finally:
            await gen2.aclose()

    event = asyncio.run(restart())
    assert event["status"] == "admit", event
    manifest = None
    for _ in range(5):  # bounded: three shards need two more rounds
        shutil.rmtree(staging)  # resumed on another worker: the shard files of the last round are gone
        try:
            manifest = op().execute_admitted(context(store), event)
            break
        except TaskDeferred as more:
            creates = emulator.control.calls()["batches.create"]
            # The same event delivered twice (a resumed task that died and resumed again): nothing more.
            with pytest.raises(TaskDeferred):
                op().execute_admitted(context(store), event)
            assert emulator.control.calls()["batches.create"] == creates
            event = asyncio.run(_fire(more.trigger))
    assert manifest is not None
    jobs = emulator.control.jobs()
    assert len(jobs) == 3 == len({j["display_name"] for j in jobs})
    assert emulator.control.calls()["batches.create"] == 3
    assert sorted(job_names(manifest)) == sorted(j["name"] for j in jobs)
    again = op().execute_admitted(context(store), event)  # the last event once more: all re-attached
    assert job_names(again) == job_names(manifest) and emulator.control.calls()["batches.create"] == 3
    GeminiBatchJobSensor(task_id="wait", manifest=manifest, poll_interval=0.05, timeout=60).execute(
        context(task_id="wait")
    )
    load_op(wh.conn_id, dst, manifest).execute(context(task_id="load"))
    _assert_all_rows(wh, dst, 12)


async def _fire(trigger: Any) -> dict[str, Any]:
    gen = trigger.run()
    try:
        return (await asyncio.wait_for(anext(gen), 60)).payload
    finally:
        await gen.aclose()


def test_R78_geminibatchoperator_defers_between_admission_rounds_of_every_row_round(
    sqlite_warehouse, gemini_conn, emulator, run_dag, tmp_path, all_logs
):
    """``GeminiBatchOperator`` with ``max_concurrent_jobs=1`` (the emulator enforces 1 too): 24 rows in 6
    shards of 4; the first 6 jobs fail 20 % of their rows with 503, so round 2 sends those 5 keys in 2
    shards, again one at a time. Every admission round ends in a deferral to the admission trigger (no
    worker slot held meanwhile), and resumes the same row round."""
    from airflow_gemini_batch.emulator.faults import fails_by_fraction
    from airflow_gemini_batch.manifest import RESULTS_SUMMARY_XCOM_KEY
    from tests.reliability.helpers import batch_dag

    wh = sqlite_warehouse
    src, dst = wh.table("src"), wh.table("dst")
    wh.create_prompts_table(src, 24)
    doomed = [k for k in range(24) if fails_by_fraction(k, 0.2)]
    assert len(doomed) == 5
    emulator.control.set_quota(max_concurrent_jobs=1)
    emulator.control.set_job_behaviour(fail_fraction=0.2, fail_status=503, count=6)  # round 1's jobs
    emulator.control.hold_state("PENDING", reads=1)
    dag = batch_dag(wh, src, dst, tmp_path / "staging", max_requests_per_job=4, max_concurrent_jobs=1)
    run = run_dag(dag)
    assert run.state == "success", ti_states(run)

    quota = emulator.control.quota()
    assert quota["high_water_jobs"] == 1 and quota["rejected_creates"] == 0  # never two unfinished at once
    jobs = emulator.control.jobs()
    assert len(jobs) == 6 + 2 == len({j["display_name"] for j in jobs})
    assert emulator.control.calls()["batches.create"] == 8
    assert sum("-a2-" in j["display_name"] for j in jobs) == 2
    assert emulator.control.request_counts() == {str(k): 2 if k in doomed else 1 for k in range(24)}
    got = {k: (o, a) for k, o, a in wh.query(f"SELECT id, outcome, attempts FROM {dst}")}
    assert got == {k: ("succeeded", 2 if k in doomed else 1) for k in range(24)}

    summary = xcom_of(run, "batch", RESULTS_SUMMARY_XCOM_KEY)
    assert [r["request_count"] for r in summary["rounds"]] == [24, 5]
    assert [r["admission"]["rounds"] for r in summary["rounds"]] == [6, 2]
    assert summary["counts"]["succeeded"] == 24 and summary["reconciled"]
    # Deferred between admission rounds: 5 waits for headroom in round 1, 1 in round 2, each in the
    # admission trigger; none on the worker.
    logs = all_logs.text
    assert logs.count("Waiting for quota headroom") == 6
    assert "Waiting on the worker for quota headroom" not in logs
