"""GeminiBatchJobTrigger against the emulator: real google-genai async client over HTTP, real asyncio."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import time
from typing import TYPE_CHECKING, Any

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchError, GeminiBatchJobCancelledError
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor
from airflow_gemini_batch.triggers.job import GeminiBatchJobTrigger
from airflow_gemini_batch.wait.verdict import WaitPolicy
from airflow_gemini_batch.wait.waiter import JobWaiter
from tests.polling import await_until

if TYPE_CHECKING:
    from collections.abc import Callable

CLASSPATH = "airflow_gemini_batch.triggers.job.GeminiBatchJobTrigger"


async def first_event(trigger: GeminiBatchJobTrigger, limit: float = 60) -> dict[str, Any]:
    gen = trigger.run()
    try:
        event = await asyncio.wait_for(anext(gen), limit)
    finally:
        await gen.aclose()
    return event.payload


def trigger_for(names: list[str], conn_id: str, **kw: Any) -> GeminiBatchJobTrigger:
    kw.setdefault("deadline", time.time() + 60)
    kw.setdefault("poll_interval", 0.05)
    return GeminiBatchJobTrigger(job_names=names, gemini_conn_id=conn_id, **kw)


async def every_job_read(emulator: Any) -> None:
    """Until the trigger has read every job at least once (the event loop keeps running meanwhile)."""
    await await_until(
        lambda: all(j["reads"] for j in emulator.control.jobs()), what="every job read by the trigger"
    )


def states(emulator: Any) -> dict[str, str]:
    return {j["name"]: j["state"] for j in emulator.control.jobs()}


def test_serialize_round_trip_without_secret(gemini_conn: str) -> None:
    api_key = json.loads(os.environ["AIRFLOW_CONN_GEMINI_BATCH_DEFAULT"])["password"]
    trigger = trigger_for(
        ["batches/a", "batches/b"], gemini_conn, deadline=1_900_000_000.5, allow_partial=True
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    # Exactly the named parameters of __init__ (unknown kwargs are accepted but never written back).
    assert set(kwargs) == set(inspect.signature(GeminiBatchJobTrigger.__init__).parameters) - {
        "self",
        "kwargs",
    }
    dumped = json.dumps(kwargs)  # JSON-only kwargs
    assert api_key not in dumped
    assert "password" not in dumped
    rebuilt = GeminiBatchJobTrigger(**json.loads(dumped))
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["deadline"] == 1_900_000_000.5
    assert kwargs["job_names"] == ["batches/a", "batches/b"]


def test_invalid_job_name_is_rejected_at_build_time() -> None:
    with pytest.raises(ValueError, match="batches/<id>"):
        GeminiBatchJobTrigger(job_names=["projects/x/batchPredictionJobs/1"], deadline=0)


def test_waits_for_all_jobs_with_latency(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    emulator.control.hold_state("PENDING", reads=1)  # not done at the first round, however busy the machine
    emulator.control.configure(running_seconds=0.3)
    names = make_jobs(["lat-a", "lat-b"], requests=3)
    event = asyncio.run(first_event(trigger_for(names, gemini_conn)))
    assert event["status"] == "success", event
    assert {j["name"]: j["state"] for j in event["jobs"]} == dict.fromkeys(names, "SUCCEEDED")
    assert all(j["request_count"] == 3 and j["succeeded_count"] == 3 for j in event["jobs"])
    assert all(v is not None for j in event["jobs"] for v in j.values())  # compact: no nulls
    # Several rounds happened (the jobs were not done at first), yet terminal jobs were not re-read forever.
    assert emulator.control.calls()["batches.get"] >= 4
    summary = GeminiBatchJobSensor(task_id="s", job_names=names).execute_complete({}, event)
    assert [j["state"] for j in summary["jobs"]] == ["SUCCEEDED", "SUCCEEDED"]


def test_rebuilt_trigger_keeps_deadline_and_jobs(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    emulator.control.set_job_behaviour(stay_pending=True)
    names = make_jobs(["restart-a", "restart-b"])
    deadline = time.time() + 5  # far enough for the first trigger to read the jobs first, on a busy machine
    first = trigger_for(names, gemini_conn, deadline=deadline)

    async def restart() -> dict[str, Any]:
        task = asyncio.ensure_future(first_event(first))
        await every_job_read(emulator)
        task.cancel()  # the triggerer goes away mid-wait
        with pytest.raises(asyncio.CancelledError):
            await task
        classpath, kwargs = first.serialize()
        assert classpath == CLASSPATH
        second = GeminiBatchJobTrigger(**json.loads(json.dumps(kwargs)))
        assert second.deadline == deadline and second.job_names == names
        return await first_event(second)

    event = asyncio.run(restart())
    assert event["status"] == "timeout"
    assert event["deadline"] == deadline  # not restarted from zero
    assert event["checked_at"] >= deadline
    assert sorted(j["name"] for j in event["jobs"]) == sorted(names)
    # A restart is not a kill: nothing was cancelled.
    assert set(states(emulator).values()) == {"BATCH_STATE_PENDING"}


def test_survives_429_and_503_bursts(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    names = make_jobs(["burst-a", "burst-b"])
    emulator.control.inject_fault("batches.get", status=429, count=5)
    emulator.control.inject_fault("batches.get", status=503, count=5)
    # One SDK attempt per read, so the bursts reach the trigger's own backoff.
    event = asyncio.run(first_event(trigger_for(names, gemini_conn, retry_attempts=1, poll_interval=0.02)))
    assert event["status"] == "success", event
    assert emulator.control.calls()["batches.get"] >= 12  # 10 failed reads + the 2 that finally worked


def test_transient_bursts_absorbed_by_sdk_retries(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    names = make_jobs(["sdk-retry"])
    emulator.control.inject_fault("batches.get", status=503, count=1)
    event = asyncio.run(first_event(trigger_for(names, gemini_conn)))
    assert event["status"] == "success", event


@pytest.mark.parametrize("target", ["missing", "forbidden"])
def test_permanent_error_ends_wait_naming_job_and_code(
    target: str, emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    if target == "missing":
        names, code = ["batches/doesnotexist"], 404
    else:
        names, code = make_jobs(["forbidden"]), 403
        emulator.control.inject_fault("batches.get", status=403, count=1)
    event = asyncio.run(first_event(trigger_for(names, gemini_conn)))
    assert event["status"] == "error"
    assert event["job_name"] == names[0] and event["code"] == code
    assert names[0] in event["message"] and str(code) in event["message"]
    with pytest.raises(GeminiBatchError, match=f"{names[0]}.*{code}"):
        GeminiBatchJobSensor(task_id="s", job_names=names).execute_complete({}, event)


def test_job_cancelled_through_the_sdk_while_waiting(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    emulator.control.set_job_behaviour(stay_pending=True)
    names = make_jobs(["cancel-me"])

    async def scenario() -> dict[str, Any]:
        task = asyncio.ensure_future(first_event(trigger_for(names, gemini_conn)))
        await every_job_read(emulator)
        assert not task.done()
        await asyncio.to_thread(GeminiBatchHook(gemini_conn).cancel_job, names[0])
        return await task

    event = asyncio.run(scenario())
    assert event["status"] == "failed"
    with pytest.raises(GeminiBatchJobCancelledError, match=f"{names[0]} \\(cancel-me\\): CANCELLED"):
        GeminiBatchJobSensor(task_id="s", job_names=names).execute_complete({}, event)


@pytest.mark.parametrize("cancel_on_kill", [True, False])
def test_on_kill_cancels_running_jobs(
    cancel_on_kill: bool, emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    emulator.control.set_job_behaviour(stay_pending=True)
    names = make_jobs(["kill-a", "kill-b"])
    trigger = trigger_for(names, gemini_conn, cancel_on_kill=cancel_on_kill)

    async def scenario() -> None:
        task = asyncio.ensure_future(first_event(trigger))
        await every_job_read(emulator)
        task.cancel()  # what the triggerer does to the run before calling on_kill
        with pytest.raises(asyncio.CancelledError):
            await task
        await trigger.on_kill()

    asyncio.run(scenario())
    expected = "BATCH_STATE_CANCELLED" if cancel_on_kill else "BATCH_STATE_PENDING"
    assert states(emulator) == dict.fromkeys(names, expected)
    assert all(j["cancel_requested"] is cancel_on_kill for j in emulator.control.jobs())


def test_on_kill_leaves_finished_jobs_alone(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    done = make_jobs(["done-first"])
    trigger = trigger_for(done, gemini_conn)
    assert asyncio.run(first_event(trigger))["status"] == "success"
    asyncio.run(trigger.on_kill())
    assert emulator.control.calls().get("batches.cancel", 0) == 0


def test_succeeded_before_output_visible_keeps_polling(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    emulator.control.hold_state("SUCCEEDED", reads=2)  # reported SUCCEEDED twice before the output shows
    names = make_jobs(["late-output"])
    event = asyncio.run(first_event(trigger_for(names, gemini_conn)))
    assert event["status"] == "success", event
    job = event["jobs"][0]
    assert job["state"] == "SUCCEEDED" and job["has_inline_responses"] is True
    # SUCCEEDED with no output for two reads: the trigger must have read the job again until it showed.
    assert emulator.control.calls()["batches.get"] >= 3


def test_output_never_visible_fails_after_grace(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    emulator.control.configure(output_delay_seconds=60)
    names = make_jobs(["no-output"])
    event = asyncio.run(first_event(trigger_for(names, gemini_conn, output_grace_seconds=0.3)))
    assert event["status"] == "failed"
    assert "responses are still not visible" in event["message"]
    assert names[0] in event["message"]


def test_a_job_pending_past_max_pending_seconds_fires_stuck(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    """The emulator holds both jobs PENDING with their createTime 13 h back; the second is exempt (its shard
    used up its stuck resubmits). The trigger fires ``stuck`` naming the first, cancels nothing, and the
    kwargs that carry it survive a JSON round trip (a triggerer restart)."""
    emulator.control.hold_state("PENDING", age_seconds=13 * 3600)
    stuck, exempt = make_jobs(["stuck-a", "stuck-b"])
    trigger = trigger_for([stuck, exempt], gemini_conn, max_pending_seconds=12 * 3600, stuck_exempt=[exempt])
    rebuilt = GeminiBatchJobTrigger(**json.loads(json.dumps(trigger.serialize()[1])))
    assert rebuilt.max_pending_seconds == 12 * 3600 and rebuilt.stuck_exempt == [exempt]
    event = asyncio.run(first_event(rebuilt))
    assert event["status"] == "stuck" and stuck in event["message"] and exempt not in event["message"]
    assert set(states(emulator).values()) == {"BATCH_STATE_PENDING"}  # the worker cancels, not the trigger
    # The worker's check of the event reaches the same verdict with the same policy...
    policy = WaitPolicy(max_pending_seconds=12 * 3600, stuck_exempt=frozenset([exempt]))
    hook = GeminiBatchHook(gemini_conn_id=gemini_conn)
    decision = JobWaiter(hook, [stuck, exempt], policy, hook.log).decide(event)
    assert decision.stuck == [stuck]
    # ...and a sensor, which never cancels, refuses a stuck event instead of passing or failing on it.
    with pytest.raises(GeminiBatchError, match="stuck"):
        GeminiBatchJobSensor(task_id="s", job_names=[stuck, exempt]).execute_complete({}, event)


def test_a_young_pending_job_is_never_stuck(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    """A job PENDING for less than max_pending_seconds (created now) keeps the wait going: the deadline ends it."""
    emulator.control.hold_state("PENDING")
    names = make_jobs(["young-a"])
    event = asyncio.run(
        first_event(trigger_for(names, gemini_conn, max_pending_seconds=3600, deadline=time.time() + 1))
    )
    assert event["status"] == "timeout"
