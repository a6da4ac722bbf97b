"""WaitTracker: a job nearing the 48 h expiry (by its create_time, not the wait's start) is logged loudly,
once per wait; a young or finished job is not. (The emulator cannot back-date a job, so statuses are built.)"""

from __future__ import annotations

import datetime
import logging

import pytest

from airflow_gemini_batch.hooks.job_status import JobStatus
from airflow_gemini_batch.wait.tracker import WaitTracker
from airflow_gemini_batch.wait.verdict import WaitPolicy


def _job(name: str, state: str, age_hours: float) -> JobStatus:
    created = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=age_hours)
    return JobStatus(name=name, state=state, display_name=f"agb-{name[-1]}", create_time=created.isoformat())


def test_near_expiry_is_logged_once_per_job(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.tracker")
    tracker = WaitTracker(WaitPolicy(), deadline=None)
    statuses = [
        _job("batches/a", "PENDING", 43),
        _job("batches/b", "RUNNING", 41),
        _job("batches/c", "SUCCEEDED", 47),
    ]
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    with caplog.at_level(logging.WARNING, logger="test.tracker"):
        tracker.assess(statuses, now, log)
        tracker.assess(statuses, now + 1, log)
    loud = [r.getMessage() for r in caplog.records if "NEAR EXPIRY" in r.getMessage()]
    assert len(loud) == 1 and "batches/a" in loud[0] and "PENDING 43.0 h" in loud[0]
    assert "(in 5.0 h)" in loud[0]


def test_a_vertex_job_is_near_expiry_only_near_its_72_hours(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.tracker.vertex")
    tracker = WaitTracker(WaitPolicy(), deadline=None)
    vertex = "projects/p/locations/us-central1/batchPredictionJobs/"
    statuses = [_job(f"{vertex}1", "PENDING", 43), _job(f"{vertex}2", "PENDING", 67)]
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    with caplog.at_level(logging.WARNING, logger="test.tracker.vertex"):
        tracker.assess(statuses, now, log)
    loud = [r.getMessage() for r in caplog.records if "NEAR EXPIRY" in r.getMessage()]
    assert len(loud) == 1 and f"{vertex}2" in loud[0]
    assert "expires it at 72 h" in loud[0] and "(in 5.0 h)" in loud[0]
