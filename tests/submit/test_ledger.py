"""The submit run's identity, display names and records (:mod:`airflow_gemini_batch.submit.ledger`)."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_gemini_batch.exceptions import GeminiBatchChangedInputError
from airflow_gemini_batch.submit.ledger import (
    HEADER_KEY,
    RunIdentity,
    SubmissionLedger,
    display_name,
    split_recovery,
)
from tests.task_state import DictStateStore

IDENTITY = RunIdentity("dag", "submit", "manual__2026-01-01", -1)


def test_display_name_deterministic():
    name = display_name(IDENTITY.hash, "f" * 64, 3)
    assert name == display_name(RunIdentity("dag", "submit", "manual__2026-01-01", -1).hash, "f" * 64, 3)
    assert name == f"agb-{IDENTITY.hash}-ffffffff-00003" and len(name) <= 128
    assert display_name(IDENTITY.hash, "f" * 64, 3, generation=2).endswith("-g2-00003")
    assert RunIdentity("dag", "submit", "manual__2026-01-01", 0).hash != IDENTITY.hash


def test_recovered_generations_name_the_same_shard():
    first = display_name(IDENTITY.hash, "f" * 64, 3, generation=2)
    recovered = display_name(IDENTITY.hash, "f" * 64, 3, generation=2, recovery=4)
    assert recovered == first.replace("-00003", "-r4-00003") and len(recovered) <= 128
    assert split_recovery(recovered) == (first, 4) and split_recovery(first) == (first, 0)


def test_identity_names_the_run_by_its_logical_date():
    """A DAG run re-created for the same logical date is the same work: same identity, whatever its run id."""
    a = RunIdentity("dag", "t", "manual__x", -1, "2026-01-01T00:00:00+00:00")
    b = RunIdentity("dag", "t", "scheduled__y", -1, "2026-01-01T00:00:00+00:00")
    assert a.hash == b.hash and a.text == "dag/t/logical:2026-01-01T00:00:00+00:00/-1"
    assert RunIdentity("dag", "t", "manual__x", -1).text == "dag/t/manual__x/-1"


def _begin(ledger: SubmissionLedger, fingerprint: str = "a" * 64, **kw: Any) -> int:
    kw.setdefault("on_changed_input", "fail")
    kw.setdefault("force_resubmit", False)
    return ledger.begin(identity=IDENTITY, fingerprint=fingerprint, shard_count=1, **kw)


def test_generations_force_and_the_retry_of_a_forced_run():
    store = DictStateStore()
    ledger = SubmissionLedger(store)
    assert _begin(ledger) == 0
    assert _begin(ledger, force_resubmit=True, force_token=2) == 1  # a deliberate re-run: fresh names
    assert _begin(ledger, force_resubmit=True, force_token=2) == 1  # its automatic retry re-attaches
    assert _begin(ledger, force_resubmit=True, force_token=3) == 2  # cleared again: fresh names again
    assert store.get(HEADER_KEY)["generation"] == 2


def test_changed_input_with_recorded_jobs_is_refused_before_anything_is_recorded():
    store = DictStateStore()
    ledger = SubmissionLedger(store)
    _begin(ledger)
    rec = {"fingerprint": "a" * 64, "generation": 0, "display_name": display_name(IDENTITY.hash, "a" * 64, 0)}
    ledger.record_job(0, rec, "batches/1")
    with pytest.raises(GeminiBatchChangedInputError, match="batches/1"):
        _begin(ledger, fingerprint="b" * 64)
    assert store.get(HEADER_KEY)["fingerprint"] == "a" * 64  # the header still names the recorded input
    assert _begin(ledger, fingerprint="b" * 64, on_changed_input="resubmit") == 0
    assert store.get(HEADER_KEY)["fingerprint"] == "b" * 64


def test_a_retry_round_writes_only_its_own_shard_records():
    """A refused create (429) in round 2 clears round 2's intent; round 1's record of the same index stays."""
    store = DictStateStore()
    first, second = SubmissionLedger(store, 1), SubmissionLedger(store, 2)
    first.record_job(0, {"fingerprint": "f1"}, "batches/round1")
    rec: dict[str, Any] = {"fingerprint": "f2"}
    second.record_intent(0, rec)
    second.clear_intent(0, rec)
    second.record_upload(1, {"fingerprint": "f2", "job_name": None}, "files/x")
    assert second.forget_uploads(2) == [1]
    assert first.shard(0) == {"fingerprint": "f1", "job_name": "batches/round1"}
    assert second.shard(0) == {"fingerprint": "f2", "intent": False}
    assert first.shard(1) == {} and second.shard(1) == {"fingerprint": "f2", "job_name": None}
