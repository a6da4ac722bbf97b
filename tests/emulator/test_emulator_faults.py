"""Injected HTTP faults as the real SDK experiences them: exception classes and codes, SDK retries,
upload-chunk errors that end the upload at once, a download cut mid-body, auth and unknown resources,
slow replies."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx
import pytest
from emulator_test_helpers import MODEL, gen_line, wait_done, write_jsonl
from google.genai import errors, types

from tests.polling import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from google import genai

    from airflow_gemini_batch.emulator import EmulatorServer


def test_429_on_create_without_retries_raises(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.inject_fault("batches.create", status=429, count=1)
    with pytest.raises(errors.ClientError) as info:
        client.batches.create(model=MODEL, src=[{"contents": "x"}])
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
    assert emu.control.jobs() == []
    client.batches.create(model=MODEL, src=[{"contents": "x"}])  # fault used up
    assert len(emu.control.jobs()) == 1


def test_429_on_create_with_sdk_retries_creates_exactly_one_job(
    emu: EmulatorServer, client_factory: Callable[..., genai.Client]
) -> None:
    client = client_factory(
        retry_options=types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.05)
    )
    emu.control.inject_fault("batches.create", status=429, count=2)
    job = client.batches.create(model=MODEL, src=[{"contents": "x"}], config={"display_name": "retried"})
    assert job.name
    assert [j["name"] for j in emu.control.jobs()] == [job.name]
    assert emu.control.calls()["batches.create"] == 3


def test_fault_after_the_call_took_effect_and_a_lagging_list(
    emu: EmulatorServer, client: genai.Client
) -> None:
    """The ambiguous create: the job exists although the reply was a 503; with a list lag it shows in
    ``batches.list`` only after the lag, while ``batches.get`` of its name works at once."""
    emu.control.configure(list_lag_seconds=3)  # the list right after the create comes well within it
    emu.control.inject_fault("batches.create", status=503, after=True)
    with pytest.raises(errors.ServerError):
        client.batches.create(model=MODEL, src=[{"contents": "x"}], config={"display_name": "lost-reply"})
    (made,) = emu.control.jobs()
    assert made["display_name"] == "lost-reply"
    assert [j.name for j in client.batches.list()] == []
    assert client.batches.get(name=made["name"]).display_name == "lost-reply"
    wait_until(lambda: [j.display_name for j in client.batches.list()] == ["lost-reply"], what="listed")


async def test_503_on_get_async_raises_server_error(emu: EmulatorServer, client: genai.Client) -> None:
    job = await client.aio.batches.create(model=MODEL, src=[{"contents": "x"}])
    assert job.name
    emu.control.inject_fault("batches.get", status=503)
    with pytest.raises(errors.ServerError) as info:
        await client.aio.batches.get(name=job.name)
    assert info.value.code == 503
    assert (await client.aio.batches.get(name=job.name)).name == job.name


@pytest.mark.parametrize("endpoint", ["files.upload_start", "files.upload_chunk"])
def test_upload_faults_fail_fast(
    emu: EmulatorServer, client: genai.Client, tmp_path: Path, endpoint: str
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [gen_line("k", "x")])
    emu.control.inject_fault(endpoint, status=500)
    started = time.monotonic()
    with pytest.raises(errors.ServerError) as info:
        client.files.upload(file=str(path), config={"mime_type": "jsonl"})
    assert info.value.code == 500
    assert time.monotonic() - started < 3.0  # x-goog-upload-status: final => no 7 s SDK retry loop
    assert client.files.upload(file=str(path), config={"mime_type": "jsonl"}).name


@pytest.mark.parametrize(
    ("endpoint", "call"),
    [
        ("files.list", lambda c: list(c.files.list())),
        ("files.get", lambda c: c.files.get(name="files/x")),
        ("files.delete", lambda c: c.files.delete(name="files/x")),
        ("batches.list", lambda c: list(c.batches.list())),
        ("batches.cancel", lambda c: c.batches.cancel(name="batches/x")),
        ("batches.delete", lambda c: c.batches.delete(name="batches/x")),
    ],
)
def test_fault_on_every_endpoint(
    emu: EmulatorServer, client: genai.Client, endpoint: str, call: Callable
) -> None:
    emu.control.inject_fault(endpoint, status=403)
    with pytest.raises(errors.ClientError) as info:
        call(client)
    assert info.value.code == 403 and info.value.status == "PERMISSION_DENIED"
    assert emu.control.calls()[endpoint] == 1


# google-genai 2.x uses httpx; 3.x uses httpx2, whose exceptions are its own classes.
try:
    import httpx2

    _REMOTE_PROTOCOL_ERRORS: tuple[type[Exception], ...] = (
        httpx.RemoteProtocolError,
        httpx2.RemoteProtocolError,
    )
except ImportError:
    _REMOTE_PROTOCOL_ERRORS = (httpx.RemoteProtocolError,)


def test_download_connection_reset_mid_body(
    emu: EmulatorServer, client: genai.Client, tmp_path: Path
) -> None:
    lines = [gen_line(f"k{i}", "z" * 5000) for i in range(50)]
    uploaded = client.files.upload(
        file=str(write_jsonl(tmp_path / "in.jsonl", lines)), config={"mime_type": "jsonl"}
    )
    job = wait_done(client, client.batches.create(model=MODEL, src=uploaded.name).name)
    assert job.dest and job.dest.file_name
    full = client.files.download(file=job.dest.file_name)
    emu.control.inject_fault("files.download", reset_after_bytes=1000)
    with pytest.raises(_REMOTE_PROTOCOL_ERRORS):
        client.files.download(file=job.dest.file_name)
    assert client.files.download(file=job.dest.file_name) == full  # next attempt is clean


async def test_download_reset_async(emu: EmulatorServer, client: genai.Client) -> None:
    import aiohttp

    job = await client.aio.batches.create(model=MODEL, src=[{"contents": "x"}])
    assert job.name
    emu.control.inject_fault("files.download", reset_after_bytes=10)
    uploaded = client.files.upload(
        file=__file__, config={"mime_type": "text/plain"}
    )  # any file: the emulator serves uploaded bytes too
    assert uploaded.name
    with pytest.raises(aiohttp.ClientPayloadError):
        await client.aio.files.download(file=uploaded.name)


def test_missing_api_key_and_unknown_routes(emu: EmulatorServer) -> None:
    with httpx.Client(base_url=emu.base_url) as http:
        r = http.get("/v1beta/batches")
        assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
        assert r.headers["content-type"] == "application/json"
        r = http.get("/v1beta/nope", headers={"x-goog-api-key": "k"})
        assert r.status_code == 404 and r.json()["error"]["code"] == 404
        r = http.get("/v1alpha/batches/missing", headers={"x-goog-api-key": "k"})
        assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
        r = http.post("/v1/batches/x:cancel", headers={"x-goog-api-key": "k"})
        assert r.status_code == 404 and r.headers["content-length"]


def test_reply_delay(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.configure(reply_delay_seconds=0.3)
    started = time.monotonic()
    list(client.batches.list())
    assert time.monotonic() - started >= 0.3


def test_control_rejects_bad_input(emu: EmulatorServer) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        emu.control.inject_fault("batches.nope", status=500)
    with pytest.raises(httpx.HTTPStatusError):
        emu.control.set_job_behaviour(final_state="WEIRD")
    with pytest.raises(httpx.HTTPStatusError):
        emu.control.configure(nonsense=1)
