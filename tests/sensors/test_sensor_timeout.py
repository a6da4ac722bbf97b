"""The wait's timeout is an ``AirflowSensorTimeout`` in every mode: never retried, and a skip with ``soft_fail``.

The jobs are held PENDING forever by the emulator (``stay_pending``), so the wait can only end at its deadline:
no wall-clock margin decides the outcome, the short timeout only keeps the test quick.
"""

from __future__ import annotations

import datetime
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException

from airflow_gemini_batch.exceptions import GeminiBatchTimeoutError
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor

if TYPE_CHECKING:
    from collections.abc import Callable

MODES = ["poke", "reschedule", "deferrable"]
START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def _sensor(mode: str, names: list[str], **kw: Any) -> GeminiBatchJobSensor:
    return GeminiBatchJobSensor(
        task_id="wait",
        job_names=names,
        mode="reschedule" if mode == "reschedule" else "poke",
        deferrable=mode == "deferrable",
        poll_interval=0.2,
        timeout=1,
        **kw,
    )


def _run(register_dag: Callable[[Any], Any], mode: str, names: list[str], **kw: Any) -> tuple[str, int]:
    """``dag.test()`` a DAG of one sensor; its task's final state and try number, read from the metadata DB."""
    from airflow.models import TaskInstance
    from airflow.sdk import DAG
    from airflow.utils.session import create_session
    from sqlalchemy import select

    dag_id = f"sensor_timeout_{mode}_{uuid.uuid4().hex[:6]}"
    with DAG(dag_id=dag_id, schedule=None, start_date=START) as dag:
        _sensor(mode, names, **kw)
    register_dag(dag)
    run = dag.test()
    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)
        ).one()
        return str(ti.state), ti.try_number


@pytest.fixture
def pending_jobs(emulator: Any, make_jobs: Callable[..., list[str]]) -> list[str]:
    emulator.control.set_job_behaviour(stay_pending=True)
    return make_jobs(["held-a", "held-b"])


def test_poke_mode_timeout_is_a_typed_sensor_timeout(pending_jobs: list[str], gemini_conn: str) -> None:
    with pytest.raises(GeminiBatchTimeoutError) as info:
        _sensor("poke", pending_jobs).execute({})
    assert isinstance(info.value, AirflowSensorTimeout)
    assert all(name in str(info.value) for name in pending_jobs)


def test_poke_mode_soft_fail_skips(pending_jobs: list[str], gemini_conn: str) -> None:
    with pytest.raises(AirflowSkipException):
        _sensor("poke", pending_jobs, soft_fail=True).execute({})


@pytest.mark.parametrize("mode", MODES)
def test_soft_fail_turns_the_timeout_into_a_skip(
    mode: str, pending_jobs: list[str], gemini_conn: str, register_dag: Callable[[Any], Any], emulator: Any
) -> None:
    assert _run(register_dag, mode, pending_jobs, soft_fail=True) == ("skipped", 1)
    # A timeout is not a kill: the jobs are left alone.
    assert {j["state"] for j in emulator.control.jobs()} == {"BATCH_STATE_PENDING"}


@pytest.mark.parametrize("mode", MODES)
def test_the_timeout_fails_without_retries(
    mode: str, pending_jobs: list[str], gemini_conn: str, register_dag: Callable[[Any], Any]
) -> None:
    retry_now = {"retries": 2, "retry_delay": datetime.timedelta(0)}
    assert _run(register_dag, mode, pending_jobs, **retry_now) == ("failed", 1)
