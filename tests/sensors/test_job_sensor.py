"""GeminiBatchJobSensor: the same outcome in poke mode and deferrable mode, and a real dag.test() run.

The deferrable path is the real one minus the triggerer process: ``execute`` raises ``TaskDeferred``, the
trigger it carries runs on asyncio against the emulator, and its event goes to ``execute_complete``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_gemini_batch.exceptions import (
    GeminiBatchInputError,
    GeminiBatchJobCancelledError,
    GeminiBatchJobExpiredError,
    GeminiBatchJobFailedError,
    GeminiBatchTimeoutError,
)
from airflow_gemini_batch.manifest import MANIFEST_KIND, WAIT_SUMMARY_KIND, WAIT_SUMMARY_XCOM_KEY
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor
from airflow_gemini_batch.triggers.job import GeminiBatchJobTrigger
from airflow_gemini_batch.wait.verdict import DEFER_TIMEOUT_SLACK_SECONDS
from tests.polling import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

MODEL = "models/gemini-2.5-flash"
MODES = ["poke", "deferrable"]


def run_trigger(trigger: GeminiBatchJobTrigger) -> dict[str, Any]:
    async def first() -> dict[str, Any]:
        gen = trigger.run()
        try:
            return (await asyncio.wait_for(anext(gen), 60)).payload
        finally:
            await gen.aclose()

    return asyncio.run(first())


def sensor_for(mode: str, names: list[str], **kw: Any) -> GeminiBatchJobSensor:
    kw.setdefault("poll_interval", 0.05)
    kw.setdefault("timeout", 60)
    return GeminiBatchJobSensor(
        task_id=f"wait_{mode}", job_names=names, deferrable=mode == "deferrable", **kw
    )


def wait(mode: str, names: list[str], **kw: Any) -> Any:
    """Run the sensor to its outcome in ``mode``; the deferrable path must really defer."""
    sensor = sensor_for(mode, names, **kw)
    if mode == "poke":
        return sensor.execute({})
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    assert deferred.value.method_name == "execute_complete"
    return sensor.execute_complete({}, run_trigger(deferred.value.trigger))


@pytest.mark.parametrize("mode", MODES)
def test_success_summary(
    mode: str, emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    emulator.control.hold_state("PENDING", reads=1)  # PENDING for the first poke: the deferrable path defers
    emulator.control.configure(running_seconds=0.2, output_delay_seconds=0.3)
    names = make_jobs(["ok-a", "ok-b"], requests=3)
    summary = wait(mode, names)
    assert summary["kind"] == WAIT_SUMMARY_KIND and summary["status"] == "success"
    assert [(j["name"], j["state"], j["request_count"], j["succeeded_count"]) for j in summary["jobs"]] == [
        (n, "SUCCEEDED", 3, 3) for n in names
    ]
    assert summary["request_count"] == 6 and summary["bad_jobs"] == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("final_state", "exc", "service_message"),
    [
        ("FAILED", GeminiBatchJobFailedError, "internal error"),
        ("EXPIRED", GeminiBatchJobExpiredError, "more than 48 hours"),
        ("CANCELLED", GeminiBatchJobCancelledError, "cancelled"),
    ],
)
def test_bad_final_state_fails_with_typed_error(
    mode: str,
    final_state: str,
    exc: type[Exception],
    service_message: str,
    emulator: Any,
    make_jobs: Callable[..., list[str]],
    gemini_conn: str,
) -> None:
    emulator.control.hold_state("PENDING", reads=1)  # PENDING for the first poke: the deferrable path defers
    emulator.control.configure(running_seconds=0.2)
    emulator.control.set_job_behaviour(match="doomed", final_state=final_state)
    names = make_jobs(["fine", "doomed"])
    with pytest.raises(exc) as info:
        wait(mode, names)
    assert type(info.value) is exc
    text = str(info.value)
    assert f"{names[1]} (doomed): {final_state}" in text
    assert service_message in text
    assert names[0] not in text.split("Still running")[0]  # the good job is not blamed


@pytest.mark.parametrize("mode", MODES)
def test_deadline_fails_with_timeout_error(
    mode: str, emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    emulator.control.set_job_behaviour(stay_pending=True)
    names = make_jobs(["slow-a", "slow-b"])
    with pytest.raises(GeminiBatchTimeoutError) as info:
        # Long enough for the first poke to end before the deadline on a busy machine (deferrable defers first).
        wait(mode, names, timeout=3)
    for name in names:
        assert name in str(info.value)
    assert "PENDING" in str(info.value)
    # Timing out never cancels anything: a retry can re-attach to the same paid jobs.
    assert {j["state"] for j in emulator.control.jobs()} == {"BATCH_STATE_PENDING"}


@pytest.mark.parametrize("mode", MODES)
def test_allow_partial_lists_bad_jobs(
    mode: str, emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    emulator.control.hold_state("PENDING", reads=1)  # PENDING for the first poke: the deferrable path defers
    emulator.control.set_job_behaviour(match="broken", final_state="FAILED")
    names = make_jobs(["good", "broken"])
    summary = wait(mode, names, allow_partial=True)
    assert [b["name"] for b in summary["bad_jobs"]] == [names[1]]
    assert summary["bad_jobs"][0]["state"] == "FAILED"
    assert [j["state"] for j in summary["jobs"]] == ["SUCCEEDED", "FAILED"]


@pytest.mark.parametrize("mode", MODES)
def test_allow_partial_fails_when_all_jobs_are_bad(
    mode: str, emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    emulator.control.hold_state("PENDING", reads=1)  # PENDING for the first poke: the deferrable path defers
    emulator.control.set_job_behaviour(final_state="EXPIRED")
    names = make_jobs(["x", "y"])
    with pytest.raises(GeminiBatchJobExpiredError, match="All 2"):
        wait(mode, names, allow_partial=True)


def test_deferrable_does_not_defer_when_already_done(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    names = make_jobs(["instant"])
    wait_until(lambda: emulator.control.job(names[0])["state"] == "BATCH_STATE_SUCCEEDED", what="job done")
    summary = sensor_for("deferrable", names).execute({})
    assert summary["jobs"][0]["state"] == "SUCCEEDED"


def test_defer_carries_deadline_manifest_conn_and_safety_timeout(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    emulator.control.set_job_behaviour(stay_pending=True)
    names = make_jobs(["defer-me"])
    manifest = {
        "kind": MANIFEST_KIND,
        "gemini_conn_id": gemini_conn,
        "shards": [{"index": 0, "job_name": names[0]}],
    }
    sensor = GeminiBatchJobSensor(
        task_id="w", manifest=manifest, deferrable=True, timeout=3600, poll_interval=7
    )
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, GeminiBatchJobTrigger)
    assert trigger.job_names == names and trigger.gemini_conn_id == gemini_conn and trigger.poll_interval == 7
    assert before + 3600 <= trigger.deadline <= time.time() + 3600
    timeout = deferred.value.timeout
    assert timeout is not None
    one_hour, slack = timedelta(hours=1), timedelta(seconds=DEFER_TIMEOUT_SLACK_SECONDS)
    assert one_hour < timeout <= one_hour + slack  # the configured timeout plus the safety slack


def test_connection_falls_back_to_the_manifest() -> None:
    manifest = {"gemini_conn_id": "from_manifest", "shards": [{"index": 0, "job_name": "batches/a"}]}
    assert GeminiBatchJobSensor(task_id="a", manifest=manifest).conn_id == "from_manifest"
    assert (
        GeminiBatchJobSensor(task_id="b", manifest=manifest, gemini_conn_id="explicit").conn_id == "explicit"
    )
    assert GeminiBatchJobSensor(task_id="c", job_names=["batches/a"]).conn_id == "gemini_batch_default"


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(GeminiBatchInputError, match="exactly one"):
        GeminiBatchJobSensor(task_id="a")
    with pytest.raises(ValueError, match="no job name"):
        GeminiBatchJobSensor(task_id="b", manifest={"shards": [{"index": 0}]}).resolved_job_names()


def test_on_kill_in_poke_mode_cancels_the_jobs(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    emulator.control.set_job_behaviour(stay_pending=True)
    names = make_jobs(["kill-a", "kill-b"])
    sensor = sensor_for("poke", names, timeout=30)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            sensor.execute({})
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    wait_until(lambda: all(j["reads"] for j in emulator.control.jobs()), what="every job poked")
    sensor.on_kill()
    worker.join(30)
    assert {j["state"] for j in emulator.control.jobs()} == {"BATCH_STATE_CANCELLED"}
    # The sensor itself then sees the cancel and fails with the typed error.
    assert len(outcome) == 1 and isinstance(outcome[0], GeminiBatchJobCancelledError)


# ---- end to end: real Airflow ---------------------------------------------------------------------------


def test_dag_with_deferrable_sensor_end_to_end(
    airflow_db: Path,
    register_dag: Callable[[Any], None],
    emulator: Any,
    gemini_conn: str,
    tmp_path: Path,
) -> None:
    from airflow.models.xcom import XComModel
    from airflow.sdk import DAG, task
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook

    emulator.control.hold_state("PENDING", reads=1)  # PENDING for the first poke: the sensor really defers
    emulator.control.configure(running_seconds=1)
    jsonl = tmp_path / "requests.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"key": f"row-{i}", "request": {"contents": [{"parts": [{"text": f"hello {i}"}]}]}})
            + "\n"
            for i in range(3)
        )
    )
    dag_id = f"gemini_wait_e2e_{uuid.uuid4().hex[:8]}"

    with DAG(dag_id=dag_id, schedule=None, start_date=datetime(2026, 1, 1, tzinfo=timezone.utc)) as dag:

        @task
        def submit() -> dict[str, Any]:
            hook = GeminiBatchHook(gemini_conn)
            file_name = hook.upload_jsonl(jsonl, display_name="e2e-file")
            from_file = hook.create_job(model=MODEL, display_name="e2e-0", file_name=file_name)
            inline = hook.create_job(
                model=MODEL,
                display_name="e2e-1",
                inline_requests=[
                    {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "metadata": {"key": "k0"}},
                    {"contents": [{"role": "user", "parts": [{"text": "ho"}]}], "metadata": {"key": "k1"}},
                ],
            )
            return {
                "kind": MANIFEST_KIND,
                "gemini_conn_id": gemini_conn,
                "shards": [
                    {"index": 0, "job_name": from_file.name, "request_count": 3},
                    {"index": 1, "job_name": inline.name, "request_count": 2},
                ],
            }

        GeminiBatchJobSensor(task_id="wait", manifest=submit(), deferrable=True, poll_interval=1)

    register_dag(dag)
    dag_run = dag.test()
    assert dag_run.state == "success"

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_id, XComModel.run_id == dag_run.run_id, XComModel.task_id == "wait"
            )
        ).all()
        values = {row.key: XComModel.deserialize_value(row) for row in rows}
    summary = values["return_value"]
    assert values[WAIT_SUMMARY_XCOM_KEY] == summary
    assert summary["kind"] == WAIT_SUMMARY_KIND
    assert [(j["state"], j["request_count"], j["succeeded_count"]) for j in summary["jobs"]] == [
        ("SUCCEEDED", 3, 3),
        ("SUCCEEDED", 2, 2),
    ]
    assert summary["jobs"][0]["responses_file"]  # the file job's output is findable by the results stage
    assert summary["jobs"][1]["has_inline_responses"] is True
    assert len(emulator.control.jobs()) == 2
