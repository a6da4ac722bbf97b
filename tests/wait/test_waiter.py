"""JobWaiter, the blocking wait the submit operator's ``wait_for_completion`` runs: its timeout is the same
``AirflowSensorTimeout`` the sensor raises (the jobs are held PENDING forever, so only the deadline ends it)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import pytest
from airflow.sdk.exceptions import AirflowSensorTimeout

from airflow_gemini_batch.exceptions import GeminiBatchTimeoutError
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.wait.verdict import WaitPolicy
from airflow_gemini_batch.wait.waiter import JobWaiter

if TYPE_CHECKING:
    from collections.abc import Callable


def test_the_blocking_wait_times_out_with_a_sensor_timeout(
    emulator: Any, make_jobs: Callable[..., list[str]], gemini_conn: str
) -> None:
    emulator.control.set_job_behaviour(stay_pending=True)
    names = make_jobs(["blocking-a", "blocking-b"])
    waiter = JobWaiter(
        GeminiBatchHook(gemini_conn), names, WaitPolicy(), logging.getLogger(__name__), time.time() + 1
    )
    with pytest.raises(GeminiBatchTimeoutError) as info:
        waiter.wait(poll_interval=0.1)
    assert isinstance(info.value, AirflowSensorTimeout)
    assert all(name in str(info.value) for name in names)
    assert {j["state"] for j in emulator.control.jobs()} == {"BATCH_STATE_PENDING"}  # nothing cancelled
