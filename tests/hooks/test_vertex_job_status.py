"""Vertex AI job reads map onto the same JobStatus semantics as the Developer API's (states, progress, output)."""

from __future__ import annotations

import pytest
from google.genai import types

from airflow_gemini_batch.hooks.job_status import (
    PENDING,
    RUNNING,
    SUCCEEDED,
    JobStatus,
    check_job_name,
    is_vertex_job_name,
)

NAME = "projects/p/locations/us-central1/batchPredictionJobs/123"


def _status(**fields) -> JobStatus:
    job = types.BatchJob.model_validate({"name": NAME, "display_name": "agb-x", **fields})
    return JobStatus.from_vertex_job(job.model_dump(mode="json"))


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("JOB_STATE_QUEUED", PENDING),
        ("JOB_STATE_PENDING", PENDING),
        ("JOB_STATE_PAUSED", PENDING),
        ("JOB_STATE_RUNNING", RUNNING),
        ("JOB_STATE_CANCELLING", RUNNING),
        ("JOB_STATE_UPDATING", RUNNING),
        ("JOB_STATE_SUCCEEDED", SUCCEEDED),
        ("JOB_STATE_PARTIALLY_SUCCEEDED", SUCCEEDED),
        ("JOB_STATE_FAILED", "FAILED"),
        ("JOB_STATE_CANCELLED", "CANCELLED"),
        ("JOB_STATE_EXPIRED", "EXPIRED"),
    ],
)
def test_vertex_states_map_onto_ours(state, expected):
    assert _status(state=state).state == expected


def test_progress_output_and_error():
    s = _status(
        state="JOB_STATE_SUCCEEDED",
        completion_stats={"successful_count": 7, "failed_count": 2, "incomplete_count": 1},
        dest={"format": "bigquery", "bigquery_uri": "bq://p.d.preds"},
        output_info={"bigquery_output_table": "predictions_2026"},
        src={"format": "bigquery", "bigquery_uri": "bq://p.d.req"},
    )
    assert (s.request_count, s.succeeded_count, s.failed_count, s.pending_count) == (10, 7, 2, 1)
    assert s.output_uri == "bq://p.d.preds" and s.output_ready and s.settled
    assert s.input_file == "bq://p.d.req"
    failed = _status(state="JOB_STATE_FAILED", error={"code": 13, "message": "internal"})
    assert failed.error == {"code": 13, "message": "internal"} and failed.done


def test_succeeded_without_output_info_is_not_ready():
    assert not _status(state="JOB_STATE_SUCCEEDED").output_ready


def test_job_names_of_both_backends():
    assert is_vertex_job_name(NAME) and not is_vertex_job_name("batches/abc")
    assert check_job_name(NAME) == NAME and check_job_name("batches/abc") == "batches/abc"
    with pytest.raises(ValueError, match="batchPredictionJobs"):
        check_job_name("projects/p/jobs/1")
