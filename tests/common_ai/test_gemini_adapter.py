"""The Gemini adapter's own decisions: dispatch, request lines, state mapping, orphan lookup, limits.

The flow through common-ai's operator is in ``test_llm_batch_dag.py``; here each decision is pinned on its own,
against the emulator through the real SDK where the service is involved.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

pytest.importorskip(
    "airflow.providers.common.ai.batch.base",
    reason="apache-airflow-providers-common-ai is not installed (it needs Python 3.11+)",
)

from airflow.providers.common.ai.batch import dispatch
from airflow.providers.common.ai.batch.output_schema import build_output_spec
from airflow.providers.common.ai.exceptions import (
    BatchProviderNotYetSupportedError,
    LLMBatchLimitExceededError,
    LLMBatchModelMismatchError,
)
from pydantic import BaseModel

from airflow_gemini_batch.common_ai.adapter import (
    GeminiBatchAdapter,
    GeminiBatchNotFoundError,
    GeminiPrefixBatchAdapter,
    batch_state,
    display_name,
)
from airflow_gemini_batch.common_ai.request_lines import index_of_key, iter_request_lines
from airflow_gemini_batch.hooks.job_status import JobStatus
from tests.conftest import TEST_API_KEY

KEY16 = "0123456789abcdef"
FINGERPRINT = "f" * 64


@pytest.fixture
def adapter(emulator: Any) -> Any:
    a = GeminiBatchAdapter(api_key=TEST_API_KEY, base_url=emulator.base_url)
    yield a
    a.close()


# ---- dispatch -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "expected"),
    [("google:gemini-2.5-flash", GeminiBatchAdapter), ("gemini:gemini-2.5-flash", GeminiPrefixBatchAdapter)],
)
@pytest.mark.parametrize("conn_type", ["gemini_batch", "pydanticai"])
def test_entry_point_serves_the_gemini_prefixes(model_id, expected, conn_type):
    assert dispatch.get_adapter_class(conn_type, model_id) is expected
    assert dispatch.split_model_id(model_id)[1] == "gemini-2.5-flash"


def test_other_connection_types_are_refused():
    with pytest.raises(BatchProviderNotYetSupportedError):
        dispatch.get_adapter_class("google_cloud_platform", "google:gemini-2.5-flash")


def test_a_connection_without_key_is_refused_without_echoing_anything():
    with pytest.raises(ValueError, match="no API key"):
        GeminiBatchAdapter(api_key=None, base_url="http://127.0.0.1:1")


# ---- request lines ------------------------------------------------------------------------------------------


def test_request_lines_carry_system_prompt_token_cap_params_and_schema():
    class Copy(BaseModel):
        headline: str

    spec = build_output_spec(Copy)
    requests = [
        {"prompt": "kettle"},
        {"prompt": "spade", "system_prompt": "Be terse.", "max_tokens": 8, "params": {"top_p": 0.5}},
    ]
    lines = [
        json.loads(line)
        for line in iter_request_lines(
            requests,
            key16=KEY16,
            system_prompt="You write copy.",
            max_tokens=64,
            request_params={"temperature": 0.2},
            response_schema=spec.json_schema,
        )
    ]
    assert [line["key"] for line in lines] == [f"{KEY16}-0", f"{KEY16}-1"]
    first, second = (line["request"] for line in lines)
    assert first["contents"] == [{"role": "user", "parts": [{"text": "kettle"}]}]
    assert first["systemInstruction"] == {"parts": [{"text": "You write copy."}]}
    assert first["generationConfig"] == {
        "temperature": 0.2,
        "maxOutputTokens": 64,
        "responseMimeType": "application/json",
        "responseJsonSchema": spec.json_schema,
    }
    assert second["systemInstruction"] == {"parts": [{"text": "Be terse."}]}
    assert second["generationConfig"]["maxOutputTokens"] == 8
    assert second["generationConfig"]["topP"] == 0.5 and second["generationConfig"]["temperature"] == 0.2


@pytest.mark.parametrize(
    ("key", "index"),
    [(f"{KEY16}-7", 7), (f"{KEY16}-x", None), ("fedcba9876543210-7", None), ("7", None), (7, None)],
)
def test_result_keys_rejoin_only_this_batch(key, index):
    assert index_of_key(key, KEY16) == index


def test_one_model_per_job_and_request_limit(adapter):
    spec = build_output_spec(str)
    with pytest.raises(LLMBatchModelMismatchError):
        adapter.validate_requests(
            [{"prompt": "a"}, {"prompt": "b", "model": "google:gemini-2.5-pro"}],
            model="gemini-2.5-flash",
            output_spec=spec,
            idempotency_key=KEY16,
        )
    with pytest.raises(LLMBatchModelMismatchError):  # another provider's model is refused by common-ai's rule
        adapter.validate_requests(
            [{"prompt": "a", "model": "openai:gpt-5"}],
            model="gemini-2.5-flash",
            output_spec=spec,
            idempotency_key=KEY16,
        )
    adapter.max_requests = 2
    with pytest.raises(LLMBatchLimitExceededError, match="GeminiBatchSubmitOperator"):
        adapter.validate_requests(
            [{"prompt": "a"}] * 3, model="gemini-2.5-flash", output_spec=spec, idempotency_key=KEY16
        )


# ---- job states ---------------------------------------------------------------------------------------------


def _job(state: str, **kw: Any) -> JobStatus:
    return JobStatus(name="batches/1", state=state, **kw)


@pytest.mark.parametrize(
    ("job", "status", "counts"),
    [
        (_job("PENDING", request_count=4, pending_count=4), "in_progress", None),
        (_job("QUEUED"), "in_progress", None),
        (_job("PAUSED"), "in_progress", None),
        (_job("SOMETHING_NEW"), "in_progress", None),
        # SUCCEEDED before its responses file shows is not finished yet.
        (_job("SUCCEEDED", request_count=4, succeeded_count=4), "in_progress", None),
        (
            _job("SUCCEEDED", request_count=4, succeeded_count=3, failed_count=1, responses_file="files/o"),
            "completed",
            {"succeeded": 3, "errored": 1, "expired": 0, "cancelled": 0},
        ),
        (
            _job("PARTIALLY_SUCCEEDED", request_count=2, succeeded_count=1, responses_file="files/o"),
            "completed",
            None,
        ),
        (_job("FAILED", error={"code": 13, "message": "boom"}), "failed", None),
        # EXPIRED has no results at all: every request expired, whatever batchStats said about progress.
        (
            _job("EXPIRED", request_count=4, succeeded_count=2),
            "expired",
            {"succeeded": 2, "errored": 0, "expired": 4, "cancelled": 0},
        ),
        (
            _job("CANCELLED", request_count=4, succeeded_count=1, responses_file="files/o"),
            "cancelled",
            {"succeeded": 1, "errored": 0, "expired": 0, "cancelled": 3},
        ),
    ],
)
def test_gemini_states_collapse_onto_common_ai_statuses(job, status, counts):
    state = batch_state(job)
    assert state.status == status
    if counts is not None:
        assert state.counts == counts
    if status == "failed":
        assert state.error_message == "Gemini batch batches/1 ended FAILED: boom."


def test_a_job_the_service_forgot_reads_as_not_found(adapter):
    with pytest.raises(GeminiBatchNotFoundError) as info:
        adapter.get_batch("batches/does-not-exist")
    assert info.value.status_code == 404  # what common-ai checks before it resubmits


def test_unknown_states_on_the_wire_keep_polling(adapter, make_jobs, emulator):
    emulator.control.set_job_behaviour(report_state="BATCH_STATE_WHATEVER", report_state_reads=1)
    (name,) = make_jobs(["odd"])
    assert adapter.get_batch(name).status == "in_progress"


# ---- orphans ------------------------------------------------------------------------------------------------


def test_orphan_lookup_matches_key_fingerprint_and_time(adapter, make_jobs):
    (name,) = make_jobs([display_name(KEY16, FINGERPRINT)])
    make_jobs([display_name(KEY16, "0" * 64)])  # same task instance, other input: never re-attached
    long_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    assert adapter.find_orphaned_batch(KEY16, FINGERPRINT, long_ago) == name
    assert adapter.find_orphaned_batch("fedcba9876543210", FINGERPRINT, long_ago) is None
    # A job made before the intent record (beyond clock skew) is an older submission, not this one's orphan.
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert adapter.find_orphaned_batch(KEY16, FINGERPRINT, later) is None
