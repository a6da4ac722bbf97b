"""Admission's decisions, as pure functions: what fits, when a round is worth starting, the rounds' record."""

from __future__ import annotations

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchTriggerEventError
from airflow_gemini_batch.submit.admission import (
    AdmissionGate,
    AdmissionLimits,
    AdmissionPending,
    AdmissionState,
    rate_limit_pause,
)


def test_fits_counts_jobs_and_tokens_in_order() -> None:
    limits = AdmissionLimits(max_concurrent_jobs=3, max_enqueued_tokens=100)
    assert limits.fits([], [40, 40, 40]) == 2  # the third would make 120 tokens
    assert limits.fits([10, 10], [10, 10]) == 1  # the job limit
    assert limits.fits([], [120, 1]) == 0  # in order: a small shard never overtakes a big one
    assert AdmissionLimits(max_concurrent_jobs=100).fits([5] * 99, [10**9, 1]) == 1  # no token limit


def test_round_size_is_a_tenth_of_the_limit_or_what_can_ever_fit() -> None:
    assert AdmissionLimits(100).round_size([1] * 500) == 10
    assert AdmissionLimits(100).round_size([1] * 3) == 3
    assert AdmissionLimits(5).round_size([1] * 50) == 1
    assert AdmissionLimits(100, max_enqueued_tokens=100).round_size([60] * 50) == 1


def test_gate_is_fifo_and_counts_only_unfinished_jobs() -> None:
    gate = AdmissionGate(AdmissionLimits(max_concurrent_jobs=2))
    gate.note("SUCCEEDED", 5)
    gate.note("NOT_FOUND", 5)
    gate.note("RUNNING", 5)
    assert gate.admit(5) and not gate.admit(5)
    assert not gate.admit(0)  # once one waits, every later shard waits


def test_ready_on_headroom_on_resume_at_and_on_an_ended_job_after_a_429() -> None:
    names = [f"batches/{i}" for i in range(100)]
    busy = AdmissionPending(AdmissionLimits(100), AdmissionState(), names, [1] * 100, [1] * 150)
    assert not busy.ready({n: "SUCCEEDED" for n in names[:9]}, now=0)  # a round needs a tenth free
    assert busy.ready({n: "SUCCEEDED" for n in names[:10]}, now=0)
    full = AdmissionPending(AdmissionLimits(2), AdmissionState(), ["batches/a", "batches/b"], [1, 1], [1] * 5)
    assert not full.ready({}, now=0) and full.ready({"batches/a": "FAILED"}, now=0)
    assert full.ready({"batches/a": "SUCCEEDED", "batches/b": "CANCELLED"}, now=0)
    limited = AdmissionPending(AdmissionLimits(2), AdmissionState(), ["batches/a"], [1], [1], resume_at=50)
    assert not limited.ready({}, now=49) and limited.ready({}, now=50)
    assert limited.ready({"batches/a": "SUCCEEDED"}, now=0)


def test_rate_limit_pause_doubles_per_rate_limited_round_in_a_row() -> None:
    state = AdmissionState()
    pauses = []
    for reason in ["rate_limited"] * 7:
        state.record(created=0, attached=0, waiting=3, reason=reason)
        pauses.append(rate_limit_pause(state, 10))
    assert pauses == [10, 20, 40, 80, 160, 160, 160] and state.rate_limited == 7
    state.record(created=1, attached=0, waiting=2, reason="quota")
    state.record(created=0, attached=1, waiting=2, reason="rate_limited")
    assert rate_limit_pause(state, 10) == 10


def test_events_that_cannot_be_read_are_refused() -> None:
    for event in (
        None,
        {},
        {"status": "admit", "admission": {"rounds": "x"}},
        {"status": "?", "admission": {}},
    ):
        with pytest.raises(GeminiBatchTriggerEventError):
            AdmissionState.from_event(event)
