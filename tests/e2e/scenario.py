"""The scenario both executors run: trigger → success with a real deferral, one job per shard; clear the submit
task with its downstream → success again, no new job, one destination row per key.

Deferral, with no clock involved: the emulator holds every job RUNNING (``hold_state``) until the test
releases it, so the sensor's first poke in the worker cannot see a finished job and must defer. The test then
sees, through the REST API, the task instance ``deferred`` and the trigger's own log lines (Airflow 3 files
them under the task's try), and in the emulator the trigger's reads of every job; only then does it release
the jobs, and the trigger fires.

One more condition before the release, because of an Airflow race: 3.3.2's scheduler fails a resumed task
when the executor's event for the worker's exit after ``defer()`` is processed after the task was queued
again ("Executor ... reported that the task instance ... finished with state success, but the task
instance's state attribute is queued" → FAILED; apache/airflow#67287, fixed after 3.3.2 for ``queued``;
#72716 for ``running``, open). So the jobs are released only once the scheduler's log shows it has received
that event — the order a real job of minutes gives, made certain here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.e2e.conftest import ROWS, SHARDS, Emulator
from tests.e2e.deployment import Deployment, poll

#: In the wait task's log (REST API): the worker's deferral, then our trigger's lines from the triggerer.
DEFERRAL_EVIDENCE = (
    "Pausing task as DEFERRED",
    "airflow_gemini_batch.triggers.job.GeminiBatchJobTrigger",
    "Trigger fired event",
)


@dataclass
class Outcome:
    run_id: str
    first_tis: dict[str, dict[str, Any]]
    second_tis: dict[str, dict[str, Any]]
    jobs: list[dict[str, Any]]
    seen_states: dict[str, set[str]]
    wait_log: str


def run_and_rerun(
    dep: Deployment,
    emulator: Emulator,
    dag_id: str,
    destination: Callable[[], tuple[int, int, dict[str, int]]],
    run_id: str = "e2e_run",
) -> Outcome:
    control = emulator.control
    control.reset()
    control.hold_state("RUNNING")  # every job, until released
    dep.wait_dag_parsed(dag_id)

    # ---- the first run: the sensor defers while the jobs are held ----
    dep.trigger(dag_id, run_id)
    seen: dict[str, set[str]] = {}

    def deferred() -> bool:
        dep.check_alive()
        tis = dep.api.task_instances(dag_id, run_id)
        for task_id, ti in tis.items():
            seen.setdefault(task_id, set()).add(str(ti["state"]))
        if {tis[t]["state"] for t in ("submit", "load")} & {"failed", "upstream_failed"}:
            raise AssertionError(dep.failure_report(dag_id, run_id))
        return tis["wait"]["state"] == "deferred"

    poll("the sensor to be deferred", deferred, on_timeout=lambda: f"states seen: {seen}\n{dep.log_tails()}")

    def trigger_polling() -> bool:
        """The triggerer runs our trigger: its lines are in the task's log and it reads every job."""
        log = dep.api.task_log(dag_id, run_id, "wait", 1)
        jobs = control.jobs()
        return "GeminiBatchJobTrigger" in log and len(jobs) == SHARDS and all(j["reads"] >= 2 for j in jobs)

    poll("the trigger to poll the held jobs", trigger_polling, on_timeout=dep.log_tails)
    event = (
        f"Received executor event with state success for task instance TaskInstanceKey(dag_id='{dag_id}', "
        f"task_id='wait', run_id='{run_id}', try_number=1"
    )
    dep.wait_log_line("scheduler", event)
    assert sorted(control.release()) == sorted(j["name"] for j in control.jobs())

    run, tis = dep.wait_run_finished(dag_id, run_id, seen_states=seen)
    assert run["state"] == "success", dep.failure_report(dag_id, run_id)
    assert {t: ti["state"] for t, ti in tis.items()} == {
        "submit": "success",
        "wait": "success",
        "load": "success",
    }
    wait_log = dep.api.task_log(dag_id, run_id, "wait", tis["wait"]["try_number"])
    missing = [m for m in DEFERRAL_EVIDENCE if m not in wait_log]
    assert not missing, f"no sign of {missing} in the wait task's log:\n{wait_log[-4000:]}"
    assert "deferred" in seen["wait"], seen

    jobs = control.jobs()
    assert len(jobs) == SHARDS, jobs
    assert len({j["display_name"] for j in jobs}) == SHARDS, jobs
    assert sum(j["request_count"] for j in jobs) == ROWS, jobs
    assert all(j["state"] == "BATCH_STATE_SUCCEEDED" for j in jobs), jobs
    assert control.calls().get("batches.create") == SHARDS, control.calls()

    total, distinct, outcomes = destination()
    assert (total, distinct, outcomes) == (ROWS, ROWS, {"succeeded": ROWS})

    # ---- clear submit with downstream: the run succeeds again, re-attached, nothing created ----
    first_submit_try = tis["submit"]["try_number"]
    cleared = dep.api.post(
        f"dags/{dag_id}/clearTaskInstances",
        {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": ["submit"],
            "include_downstream": True,
            "include_upstream": False,
            "only_failed": False,
            "reset_dag_runs": True,
        },
    )
    assert sorted(ti["task_id"] for ti in cleared["task_instances"]) == ["load", "submit", "wait"], cleared

    def rerun_done(run: dict[str, Any], tis: dict[str, dict[str, Any]]) -> bool:
        return all(ti["try_number"] > first_submit_try for ti in tis.values()) and all(
            ti["state"] in ("success", "failed", "upstream_failed") for ti in tis.values()
        )

    run2, tis2 = dep.wait_run_finished(dag_id, run_id, done=rerun_done)
    assert run2["state"] == "success", dep.failure_report(dag_id, run_id)
    assert all(ti["state"] == "success" for ti in tis2.values()), dep.failure_report(dag_id, run_id)

    assert control.calls().get("batches.create") == SHARDS, control.calls()
    assert len(control.jobs()) == SHARDS
    submit_log = dep.api.task_log(dag_id, run_id, "submit", tis2["submit"]["try_number"])
    assert submit_log.count("re-attaching to recorded job") == SHARDS, submit_log[-4000:]

    total, distinct, outcomes = destination()
    assert (total, distinct, outcomes) == (ROWS, ROWS, {"succeeded": ROWS})
    return Outcome(run_id, tis, tis2, jobs, seen, wait_log)
