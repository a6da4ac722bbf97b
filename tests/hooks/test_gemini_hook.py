"""GeminiBatchHook against the emulator, through the real google-genai SDK (run on SDK 2.x and 3.x)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest
from google.genai import errors

from airflow_gemini_batch.emulator.responder import expected_text
from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from airflow_gemini_batch.hooks.job_status import JobStatus, normalize_state
from tests.conftest import TEST_API_KEY


def _write_jsonl(path: Path, n: int) -> list[dict]:
    lines = [
        {"key": f"k{i}", "request": {"contents": [{"parts": [{"text": f"prompt {i}"}]}]}} for i in range(n)
    ]
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return lines


def _wait_done(hook: GeminiBatchHook, name: str, timeout: float = 30) -> JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = hook.get_job(name)
        if status.output_ready or (status.done and status.state != "SUCCEEDED"):
            return status
        assert time.monotonic() < deadline, f"job {name} still {status.state}"
        time.sleep(0.05)


def test_file_round_trip_with_batch_stats(gemini_conn, emulator, tmp_path):
    hook = GeminiBatchHook(gemini_conn)
    lines = _write_jsonl(tmp_path / "in.jsonl", 7)
    file_name = hook.upload_jsonl(tmp_path / "in.jsonl", display_name="hook-test-input")
    created = hook.create_job(model="gemini-2.5-flash", display_name="hook-test", file_name=file_name)
    assert created.name.startswith("batches/")

    status = _wait_done(hook, created.name)
    assert status.state == "SUCCEEDED"
    assert status.display_name == "hook-test"
    assert (status.request_count, status.succeeded_count, status.failed_count) == (7, 7, 0)
    assert status.responses_file

    out = hook.download_file(status.responses_file, tmp_path / "out" / "responses.jsonl")
    answers = {}
    for raw in out.read_bytes().splitlines():
        line = orjson.loads(raw)
        assert line["key"] not in answers, "a key answered twice"
        answers[line["key"]] = line["response"]["candidates"][0]["content"]["parts"][0]["text"]
    assert answers == {line["key"]: expected_text(line["request"]) for line in lines}


def test_batch_stats_show_pending_then_counts(gemini_conn, emulator, tmp_path):
    emulator.control.hold_state("PENDING")
    hook = GeminiBatchHook(gemini_conn)
    _write_jsonl(tmp_path / "in.jsonl", 3)
    job = hook.create_job(
        model="gemini-2.5-flash",
        display_name="pending",
        file_name=hook.upload_jsonl(tmp_path / "in.jsonl", "pending"),
    )
    status = hook.get_job(job.name)
    assert status.state == "PENDING"
    assert not status.done and not status.output_ready
    assert status.request_count == 3
    assert status.pending_count == 3


def test_list_find_cancel_delete(gemini_conn, emulator):
    emulator.control.hold_state("PENDING")
    hook = GeminiBatchHook(gemini_conn)
    inline = [{"contents": [{"parts": [{"text": "hi"}]}], "metadata": {"key": "a"}}]
    names = [
        hook.create_job(model="gemini-2.5-flash", display_name=f"job-{i}", inline_requests=inline).name
        for i in range(5)
    ]
    listed = [j.name for j in hook.list_jobs(page_size=2)]
    assert sorted(listed) == sorted(names)

    found = hook.find_job_by_display_name("job-3")
    assert found is not None and found.name == names[3]
    assert hook.find_job_by_display_name("job-99") is None

    hook.cancel_job(names[0])
    assert hook.get_job(names[0]).state == "CANCELLED"

    hook.delete_job(names[1])
    with pytest.raises(errors.ClientError) as err:
        hook.get_job(names[1])
    assert err.value.code == 404
    assert names[1] not in [j.name for j in hook.list_jobs()]


def test_idempotent_calls_retry_transient_errors_but_create_does_not(gemini_conn, emulator):
    hook = GeminiBatchHook(gemini_conn)
    inline = [{"contents": [{"parts": [{"text": "hi"}]}], "metadata": {"key": "a"}}]
    job = hook.create_job(model="gemini-2.5-flash", display_name="retry", inline_requests=inline)

    emulator.control.inject_fault("batches.get", status=503, count=2)
    assert hook.get_job(job.name).name == job.name  # survived two 503s inside the SDK's retry

    emulator.control.inject_fault("batches.create", status=500, count=1)
    with pytest.raises(errors.ServerError):
        hook.create_job(model="gemini-2.5-flash", display_name="retry-2", inline_requests=inline)
    # exactly one create attempt reached the emulator: an ambiguous 5xx is never blindly retried
    assert [j["display_name"] for j in emulator.control.jobs()] == ["retry"]


async def test_async_client_reads_the_same_status(gemini_conn, emulator):
    hook = GeminiBatchHook(gemini_conn)
    inline = [{"contents": [{"parts": [{"text": "hi"}]}], "metadata": {"key": "a"}}]
    job = hook.create_job(model="gemini-2.5-flash", display_name="async", inline_requests=inline)
    client = await hook.aget_client()
    try:
        status = await GeminiBatchHook.aget_job(client, job.name)
        assert status.name == job.name
        assert status.state in {"PENDING", "RUNNING", "SUCCEEDED"}
        await GeminiBatchHook.acancel_job(client, job.name)
    finally:
        await client.aclose()


def test_test_connection_reports_without_leaking_the_key(gemini_conn, emulator, monkeypatch):
    ok, message = GeminiBatchHook(gemini_conn).test_connection()
    assert ok, message
    emulator.control.inject_fault("batches.list", status=403, count=10)
    ok, message = GeminiBatchHook(gemini_conn).test_connection()
    assert not ok
    assert "403" in message or "PERMISSION" in message.upper()
    assert TEST_API_KEY not in message


def test_missing_api_key_is_a_clear_error(emulator, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_NO_KEY", json.dumps({"conn_type": "gemini_batch", "host": emulator.base_url})
    )
    with pytest.raises(ValueError, match="no API key"):
        GeminiBatchHook("no_key").get_conn()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("BATCH_STATE_RUNNING", "RUNNING"),
        ("JOB_STATE_SUCCEEDED", "SUCCEEDED"),
        (None, "UNSPECIFIED"),
        ("WEIRD", "WEIRD"),
    ],
)
def test_normalize_state(raw, expected):
    assert normalize_state(raw) == expected


def test_api_version_from_connection_extra(emulator, monkeypatch):
    for version in ("v1", "v1beta"):
        monkeypatch.setenv(
            "AIRFLOW_CONN_VERSIONED",
            json.dumps(
                {
                    "conn_type": "gemini_batch",
                    "host": emulator.base_url,
                    "password": "k",
                    "extra": {"api_version": version},
                }
            ),
        )
        hook = GeminiBatchHook("versioned")
        job = hook.create_job(
            model="gemini-2.5-flash",
            display_name=f"v-{version}",
            inline_requests=[{"contents": [{"parts": [{"text": "x"}]}], "metadata": {"key": "a"}}],
        )
        assert hook.get_job(job.name).display_name == f"v-{version}"


def test_download_survives_a_connection_reset_mid_body(gemini_conn, emulator, tmp_path):
    hook = GeminiBatchHook(gemini_conn)
    lines = [
        {"key": f"k{i}", "request": {"contents": [{"parts": [{"text": "z" * 3000}]}]}} for i in range(40)
    ]
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    job = hook.create_job(
        model="gemini-2.5-flash", display_name="dl", file_name=hook.upload_jsonl(tmp_path / "in.jsonl", "dl")
    )
    status = _wait_done(hook, job.name)
    emulator.control.inject_fault("files.download", reset_after_bytes=2000, count=2)
    out = hook.download_file(status.responses_file, tmp_path / "responses.jsonl", backoff_seconds=0.01)
    keys = [orjson.loads(raw)["key"] for raw in out.read_bytes().splitlines()]
    assert sorted(keys) == sorted(line["key"] for line in lines)
    assert not (tmp_path / "responses.jsonl.part").exists()
    assert emulator.control.calls()["files.download"] == 3


def test_download_gives_up_on_a_permanent_error(gemini_conn, emulator, tmp_path):
    hook = GeminiBatchHook(gemini_conn)
    with pytest.raises(errors.ClientError) as err:
        hook.download_file("files/does-not-exist", tmp_path / "x.jsonl", backoff_seconds=0.01)
    assert err.value.code in (403, 404)
    assert not (tmp_path / "x.jsonl").exists()
    assert not (tmp_path / "x.jsonl.part").exists()
