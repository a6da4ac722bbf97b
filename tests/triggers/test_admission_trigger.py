"""GeminiBatchAdmissionTrigger against the emulator: real google-genai async client over HTTP, real asyncio."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import time
from typing import Any

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchError
from airflow_gemini_batch.submit.admission import AdmissionState
from airflow_gemini_batch.triggers.admission import GeminiBatchAdmissionTrigger
from tests.polling import await_until

CLASSPATH = "airflow_gemini_batch.triggers.admission.GeminiBatchAdmissionTrigger"


async def first_event(trigger: GeminiBatchAdmissionTrigger, limit: float = 60) -> dict[str, Any]:
    gen = trigger.run()
    try:
        return (await asyncio.wait_for(anext(gen), limit)).payload
    finally:
        await gen.aclose()


def _trigger(names: list[str], conn_id: str, **kw: Any) -> GeminiBatchAdmissionTrigger:
    kw.setdefault("job_tokens", [10] * len(names))
    kw.setdefault("waiting_tokens", [10])
    kw.setdefault("max_concurrent_jobs", len(names))
    kw.setdefault("poll_interval", 0.05)
    return GeminiBatchAdmissionTrigger(job_names=names, gemini_conn_id=conn_id, **kw)


def test_serialize_round_trip_without_secret(gemini_conn: str) -> None:
    api_key = json.loads(os.environ["AIRFLOW_CONN_GEMINI_BATCH_DEFAULT"])["password"]
    rounds = {"rounds": [{"round": 1, "created": 2, "attached": 0, "waiting": 1, "reason": "quota"}]}
    trigger = _trigger(
        ["batches/a", "batches/b"], gemini_conn, max_enqueued_tokens=25, admission=rounds, resume_at=1.9e9
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert set(kwargs) == set(inspect.signature(GeminiBatchAdmissionTrigger.__init__).parameters) - {
        "self",
        "kwargs",
    }
    dumped = json.dumps(kwargs)
    assert api_key not in dumped and "password" not in dumped
    assert GeminiBatchAdmissionTrigger(**json.loads(dumped)).serialize() == (classpath, kwargs)
    assert kwargs["admission"] == {**rounds, "rate_limited": 0} and kwargs["resume_at"] == 1.9e9


def test_fires_when_a_job_ends_with_the_states_and_rounds(
    gemini_conn: str, emulator: Any, make_jobs: Any
) -> None:
    emulator.control.hold_state("PENDING")
    names = make_jobs(["a", "b"])
    trigger = _trigger(names, gemini_conn, waiting_tokens=[10, 10])

    async def scenario() -> dict[str, Any]:
        task = asyncio.ensure_future(first_event(trigger))
        await await_until(lambda: all(j["reads"] for j in emulator.control.jobs()), what="both read")
        assert not task.done()  # no headroom while both are PENDING
        emulator.control.release(names[0])
        return await task

    event = asyncio.run(scenario())
    assert event["status"] == "admit" and event["states"][names[1]] == "PENDING"
    assert event["states"][names[0]] in ("RUNNING", "SUCCEEDED")
    state = AdmissionState.from_event(event)
    assert state.known_states == event["states"] and state.rounds == []
    emulator.control.release()


def test_resume_at_fires_with_no_job_to_watch(gemini_conn: str, emulator: Any) -> None:
    trigger = _trigger([], gemini_conn, max_concurrent_jobs=1, resume_at=time.time() + 0.1)
    event = asyncio.run(first_event(trigger))
    assert event["status"] == "admit" and event["states"] == {}


def test_a_permanent_read_error_is_an_error_event(gemini_conn: str, emulator: Any) -> None:
    event = asyncio.run(first_event(_trigger(["batches/gone"], gemini_conn)))
    assert event["status"] == "error" and "batches/gone" in event["message"] and "404" in event["message"]
    with pytest.raises(GeminiBatchError, match="batches/gone"):
        AdmissionState.from_event(event)


def test_on_kill_cancels_the_unfinished_jobs(gemini_conn: str, emulator: Any, make_jobs: Any) -> None:
    emulator.control.hold_state("PENDING")
    names = make_jobs(["a"])
    asyncio.run(_trigger(names, gemini_conn).on_kill())
    assert emulator.control.job(names[0])["state"] == "BATCH_STATE_CANCELLED"
