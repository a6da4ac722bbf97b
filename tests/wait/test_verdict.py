"""The shared wait verdict (waiting.evaluate), the trigger event schema and the error classification."""

from __future__ import annotations

import json

import pytest
from google.genai.errors import APIError

from airflow_gemini_batch.exceptions import (
    GeminiBatchError,
    GeminiBatchJobCancelledError,
    GeminiBatchJobExpiredError,
    GeminiBatchJobFailedError,
    GeminiBatchTimeoutError,
    GeminiBatchTriggerEventError,
)
from airflow_gemini_batch.hooks.job_status import JobStatus
from airflow_gemini_batch.hooks.transport_errors import http_code, is_transient
from airflow_gemini_batch.manifest import WAIT_SUMMARY_KIND
from airflow_gemini_batch.wait.events import build_event, parse_event
from airflow_gemini_batch.wait.progress import ProgressLog
from airflow_gemini_batch.wait.verdict import WaitPolicy, evaluate

NOW = 1_800_000_000.0
END = "2027-01-15T08:00:00Z"  # = NOW
POLICY = WaitPolicy()


def job(name: str, state: str, **kw: object) -> JobStatus:
    base: dict[str, object] = {"request_count": 10}
    if state == "SUCCEEDED":
        base.update(succeeded_count=9, failed_count=1, responses_file=f"files/{name}-out", end_time=END)
    if state in ("FAILED", "EXPIRED", "CANCELLED"):
        base["error"] = {"code": 13, "message": f"{state.lower()} by the service"}
    base.update(kw)
    return JobStatus(name=f"batches/{name}", state=state, display_name=name, **base)  # type: ignore[arg-type]


def test_all_succeeded_gives_summary() -> None:
    decision = evaluate([job("a", "SUCCEEDED"), job("b", "SUCCEEDED")], POLICY, now=NOW, deadline=NOW + 10)
    summary = decision.raise_for_outcome()
    assert decision.event_status == "success"
    assert summary["kind"] == WAIT_SUMMARY_KIND
    assert summary["status"] == "success"
    assert (summary["job_count"], summary["request_count"], summary["succeeded_count"]) == (2, 20, 18)
    assert summary["failed_count"] == 2
    assert [j["state"] for j in summary["jobs"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert summary["jobs"][0]["responses_file"] == "files/a-out"
    assert summary["bad_jobs"] == []
    json.dumps(summary)  # XCom-able


@pytest.mark.parametrize("state", ["PENDING", "RUNNING"])
def test_running_jobs_keep_waiting(state: str) -> None:
    decision = evaluate([job("a", "SUCCEEDED"), job("b", state)], POLICY, now=NOW, deadline=NOW + 10)
    assert not decision.done
    assert decision.unknown == []


@pytest.mark.parametrize("state", ["UNSPECIFIED", "WEIRD", "PARTIALLY_SUCCEEDED"])
def test_unknown_state_keeps_waiting_and_is_reported(state: str) -> None:
    decision = evaluate([job("a", "SUCCEEDED"), job("b", state)], POLICY, now=NOW, deadline=NOW + 10)
    assert not decision.done
    assert decision.unknown == [f"batches/b ({state})"]


def test_unknown_state_still_times_out_at_deadline() -> None:
    decision = evaluate([job("b", "WEIRD")], POLICY, now=NOW, deadline=NOW)
    assert isinstance(decision.error, GeminiBatchTimeoutError)
    assert "batches/b" in str(decision.error) and "WEIRD" in str(decision.error)


@pytest.mark.parametrize(
    ("state", "exc"),
    [
        ("FAILED", GeminiBatchJobFailedError),
        ("CANCELLED", GeminiBatchJobCancelledError),
        ("EXPIRED", GeminiBatchJobExpiredError),
    ],
)
def test_bad_state_fails_fast_with_typed_error(state: str, exc: type[Exception]) -> None:
    decision = evaluate([job("a", state), job("b", "RUNNING")], POLICY, now=NOW, deadline=NOW + 10)
    assert decision.done and decision.event_status == "failed"
    with pytest.raises(exc) as info:
        decision.raise_for_outcome()
    assert type(info.value) is exc
    text = str(info.value)
    assert f"batches/a (a): {state}" in text
    assert f"{state.lower()} by the service" in text
    assert "Still running (not cancelled): batches/b" in text


def test_mixed_bad_states_raise_the_common_base() -> None:
    decision = evaluate([job("a", "CANCELLED"), job("b", "EXPIRED")], POLICY, now=NOW)
    assert type(decision.error) is GeminiBatchJobFailedError
    assert "batches/a (a): CANCELLED" in str(decision.error)
    assert "batches/b (b): EXPIRED" in str(decision.error)


def test_allow_partial_waits_for_all_then_lists_bad_jobs() -> None:
    policy = WaitPolicy(allow_partial=True)
    assert not evaluate([job("a", "FAILED"), job("b", "RUNNING")], policy, now=NOW).done
    summary = evaluate([job("a", "FAILED"), job("b", "SUCCEEDED")], policy, now=NOW).raise_for_outcome()
    assert summary["bad_jobs"] == [
        {"name": "batches/a", "state": "FAILED", "error": {"code": 13, "message": "failed by the service"}}
    ]
    assert [j["state"] for j in summary["jobs"]] == ["FAILED", "SUCCEEDED"]


def test_allow_partial_still_fails_when_every_job_is_bad() -> None:
    decision = evaluate([job("a", "EXPIRED"), job("b", "EXPIRED")], WaitPolicy(allow_partial=True), now=NOW)
    assert type(decision.error) is GeminiBatchJobExpiredError
    assert "All 2" in str(decision.error)


def test_succeeded_without_output_waits_within_grace_then_fails() -> None:
    no_output = job("a", "SUCCEEDED", responses_file=None)
    policy = WaitPolicy(output_grace_seconds=60)
    assert not evaluate([no_output], policy, now=NOW + 30).done
    late = evaluate([no_output], policy, now=NOW + 61)
    assert type(late.error) is GeminiBatchJobFailedError
    assert "batches/a is SUCCEEDED but its responses are still not visible" in str(late.error)


def test_output_grace_falls_back_to_first_seen_without_end_time() -> None:
    no_output = job("a", "SUCCEEDED", responses_file=None, end_time=None)
    policy = WaitPolicy(output_grace_seconds=60)
    assert not evaluate([no_output], policy, now=NOW, output_pending_since={"batches/a": NOW - 59}).done
    assert evaluate([no_output], policy, now=NOW, output_pending_since={"batches/a": NOW - 61}).error


def test_inline_output_counts_as_visible() -> None:
    inline = job("a", "SUCCEEDED", responses_file=None, has_inline_responses=True)
    assert evaluate([inline], POLICY, now=NOW).summary is not None


def test_deadline_gives_timeout_listing_pending_jobs() -> None:
    decision = evaluate(
        [job("a", "SUCCEEDED"), job("b", "PENDING", pending_count=10)], POLICY, now=NOW, deadline=NOW
    )
    assert decision.event_status == "timeout"
    text = str(decision.error)
    assert "1 of 2 job(s) not done" in text and "batches/b (b): PENDING" in text
    assert "overall 9/20 succeeded" in text


def test_no_jobs_is_an_error() -> None:
    assert isinstance(evaluate([], POLICY, now=NOW).error, GeminiBatchError)


def test_progress_log_reports_only_changes() -> None:
    progress = ProgressLog()
    first = progress.changed([job("a", "RUNNING", succeeded_count=3, pending_count=7)])
    assert first == (
        "overall 3/10 succeeded, 0 failed, 7 pending | batches/a RUNNING 3/10 ok 0 failed 7 pending"
    )
    assert progress.changed([job("a", "RUNNING", succeeded_count=3, pending_count=7)]) is None
    assert progress.changed([job("a", "RUNNING", succeeded_count=4, pending_count=6)]) is not None


# ---- event schema -----------------------------------------------------------------------------------------


def test_event_round_trip_gives_the_same_verdict() -> None:
    statuses = [job("a", "SUCCEEDED"), job("b", "RUNNING")]
    event = build_event("failed", statuses, checked_at=NOW, deadline=NOW + 5, message="m")
    assert all(v is not None for j in event["jobs"] for v in j.values())
    parsed = parse_event(json.loads(json.dumps(event)), expected_jobs=["batches/b", "batches/a"])
    assert parsed.statuses == statuses
    assert (parsed.checked_at, parsed.deadline, parsed.status) == (NOW, NOW + 5, "failed")


@pytest.mark.parametrize(
    "event",
    [
        None,
        "success",
        {},
        {"status": "done", "message": "", "jobs": [], "checked_at": 1, "deadline": 2},
        {"status": "success", "jobs": [], "checked_at": 1, "deadline": 2},
        {"status": "success", "message": "", "jobs": "x", "checked_at": 1, "deadline": 2},
        {"status": "success", "message": "", "jobs": [{"state": "X"}], "checked_at": 1, "deadline": 2},
        {"status": "success", "message": "", "jobs": [], "deadline": 2},
        {"status": "success", "message": "", "jobs": [], "checked_at": "soon", "deadline": 2},
        {"status": "success", "message": "", "jobs": [{"name": "n", "state": "S", "request_count": []}]},
    ],
)
def test_malformed_events_are_rejected(event: object) -> None:
    with pytest.raises(GeminiBatchTriggerEventError):
        parse_event(event)


def test_event_for_other_jobs_is_rejected() -> None:
    event = build_event("success", [job("a", "SUCCEEDED")], checked_at=NOW, deadline=NOW, message="m")
    with pytest.raises(GeminiBatchTriggerEventError, match="expected"):
        parse_event(event, expected_jobs=["batches/zzz"])


# ---- error classification ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "transient"), [(429, True), (503, True), (500, True), (408, True)])
def test_transient_api_codes(code: int, transient: bool) -> None:
    assert is_transient(APIError(code, {"error": {"code": code, "message": "x"}})) is transient


@pytest.mark.parametrize("code", [400, 401, 403, 404])
def test_permanent_api_codes(code: int) -> None:
    error = APIError(code, {"error": {"code": code, "message": "x"}})
    assert not is_transient(error)
    assert http_code(error) == code


def test_programming_errors_are_not_transient() -> None:
    assert not is_transient(ValueError("bug"))
