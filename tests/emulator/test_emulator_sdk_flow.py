"""End-to-end: the real google-genai SDK (sync and async) uploads, creates, polls and downloads over HTTP.

Checks real outcomes: every key answered exactly once, texts equal ``expected_text``, inline metadata echoed,
multi-chunk (> 8 MiB) uploads intact (sha256 matches), both v1beta and v1 prefixes served.
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING

import pytest
from emulator_test_helpers import MODEL, gen_line, parse_jsonl, wait_done, wait_done_async, write_jsonl
from google.genai import types

from airflow_gemini_batch.emulator.responder import expected_text, usage_for

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from google import genai

    from airflow_gemini_batch.emulator import EmulatorServer


def _check_output(data: bytes, lines: list[dict]) -> None:
    out = parse_jsonl(data)
    assert sorted(o["key"] for o in out) == sorted(line["key"] for line in lines)  # each key exactly once
    by_key = {o["key"]: o for o in out}
    for line in lines:
        response = by_key[line["key"]]["response"]
        text = response["candidates"][0]["content"]["parts"][0]["text"]
        assert text == expected_text(line["request"])
        assert response["usageMetadata"] == usage_for(line["request"], text)
        assert response["modelVersion"] == MODEL


@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
def test_file_batch_roundtrip_multichunk(
    emu: EmulatorServer, client_factory: Callable[..., genai.Client], tmp_path: Path, api_version: str
) -> None:
    client = client_factory(api_version=api_version)
    big = "x" * 300_000
    lines = [gen_line(f"k{i}", f"prompt {i} {big}") for i in range(30)]  # ~9 MB: two 8 MiB chunks
    lines.append(gen_line("small", "what is 2+2?", systemInstruction={"parts": [{"text": "be terse"}]}))
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    assert path.stat().st_size > 8 * 1024 * 1024

    uploaded = client.files.upload(file=str(path), config={"mime_type": "jsonl", "display_name": "big-in"})
    assert uploaded.size_bytes == path.stat().st_size
    assert uploaded.sha256_hash == base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()
    assert uploaded.uri and uploaded.uri.startswith("https://generativelanguage.googleapis.com/")
    assert emu.control.calls()["files.upload_chunk"] == 2

    job = client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "file-job"})
    assert job.name and job.name.startswith("batches/")
    assert job.display_name == "file-job"
    done = wait_done(client, job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.file_name == f"files/batch-{job.name.split('/')[1]}"

    out_file = client.files.get(name=done.dest.file_name)
    assert out_file.source == types.FileSource.GENERATED and out_file.download_uri
    _check_output(client.files.download(file=out_file), lines)  # File object: needs download_uri
    [emu_job] = emu.control.jobs()
    assert emu_job["request_count"] == len(lines) and emu_job["input"] == "file"


def test_download_to_destination_streams(client: genai.Client, tmp_path: Path) -> None:
    lines = [gen_line(f"k{i}", f"hello {i}") for i in range(5)]
    uploaded = client.files.upload(
        file=str(write_jsonl(tmp_path / "in.jsonl", lines)), config={"mime_type": "jsonl"}
    )
    job = wait_done(client, client.batches.create(model=MODEL, src=uploaded.name).name)
    assert job.dest is not None and job.dest.file_name
    target = tmp_path / "out.jsonl"
    client.files.download(file=job.dest.file_name, destination=str(target))
    _check_output(target.read_bytes(), lines)


def test_per_line_failure_marker(client: genai.Client, tmp_path: Path) -> None:
    lines = [gen_line("ok", "fine"), gen_line("bad", "please PLEASE_FAIL now"), gen_line("ok2", "fine too")]
    uploaded = client.files.upload(
        file=str(write_jsonl(tmp_path / "in.jsonl", lines)), config={"mime_type": "jsonl"}
    )
    job = wait_done(client, client.batches.create(model=MODEL, src=uploaded.name).name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED and job.dest and job.dest.file_name
    out = {o["key"]: o for o in parse_jsonl(client.files.download(file=job.dest.file_name))}
    assert [o for o in out] == ["ok", "bad", "ok2"]  # input order
    assert out["bad"]["error"]["code"] == 400 and isinstance(out["bad"]["error"]["message"], str)
    assert "response" not in out["bad"] and "error" not in out["ok"]


def test_inline_batch_echoes_metadata(client: genai.Client) -> None:
    src = [
        {"contents": "hello 1", "metadata": {"key": "k1"}},
        {
            "contents": [{"parts": [{"text": "long " * 50}], "role": "user"}],
            "config": {"system_instruction": "be terse", "max_output_tokens": 5},
            "metadata": {"key": "k2", "row": "7"},
        },
        {"contents": "PLEASE_FAIL", "metadata": {"key": "k3"}},
    ]
    job = wait_done(
        client, client.batches.create(model=MODEL, src=src, config={"display_name": "inline"}).name
    )
    assert job.dest is not None and job.dest.inlined_responses is not None
    r1, r2, r3 = job.dest.inlined_responses
    assert r1.metadata == {"key": "k1"} and r1.response and r1.response.text == "echo: hello 1"
    assert r2.metadata == {"key": "k2", "row": "7"} and r2.response is not None
    assert r2.response.text == ("echo: " + "long " * 50)[:20]  # 5 tokens * 4 chars
    assert r2.response.candidates and r2.response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert r2.response.usage_metadata and r2.response.usage_metadata.prompt_token_count == -(
        -len("be terse\n" + "long " * 50) // 4
    )
    assert r3.metadata == {"key": "k3"} and r3.response is None and r3.error and r3.error.code == 400


async def test_async_file_and_inline(client: genai.Client, tmp_path: Path) -> None:
    lines = [gen_line(f"a{i}", f"async {i} " + "y" * 200_000) for i in range(45)]  # ~9 MB, 2 chunks
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    uploaded = await client.aio.files.upload(file=str(path), config={"mime_type": "jsonl"})
    assert uploaded.size_bytes == path.stat().st_size and uploaded.name
    job = await client.aio.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "aio"})
    assert job.name
    done = await wait_done_async(client, job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.dest and done.dest.file_name
    _check_output(await client.aio.files.download(file=done.dest.file_name), lines)

    inline = await client.aio.batches.create(model=MODEL, src=[{"contents": "hi", "metadata": {"key": "i1"}}])
    assert inline.name
    finished = await wait_done_async(client, inline.name)
    assert finished.dest and finished.dest.inlined_responses
    assert finished.dest.inlined_responses[0].response and finished.dest.inlined_responses[
        0
    ].response.text == ("echo: hi")
    seen = [j.name async for j in await client.aio.batches.list(config={"page_size": 1})]
    assert sorted(seen) == sorted([job.name, inline.name])


def test_list_paging_files_and_batches(client: genai.Client, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [gen_line("k", "x")])
    names = [client.files.upload(file=str(path), config={"mime_type": "jsonl"}).name for _ in range(5)]
    pager = client.files.list(config={"page_size": 2})
    assert len(pager.page) == 2
    listed = [f.name for f in pager]
    assert listed == list(reversed(names))  # newest first, each exactly once

    jobs = [client.batches.create(model=MODEL, src=[{"contents": f"p{i}"}]).name for i in range(5)]
    seen = [j.name for j in client.batches.list(config={"page_size": 2})]
    assert seen == list(reversed(jobs))


def test_cancel_and_delete(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.hold_state("PENDING")
    job = client.batches.create(model=MODEL, src=[{"contents": "slow"}], config={"display_name": "to-cancel"})
    assert job.name and job.state == types.JobState.JOB_STATE_PENDING
    client.batches.cancel(name=job.name)
    cancelled = client.batches.get(name=job.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED and cancelled.done and cancelled.dest is None
    assert emu.control.jobs()[0]["cancel_requested"] is True

    client.batches.delete(name=job.name)
    assert job.name not in [j.name for j in client.batches.list()]
    from google.genai import errors

    with pytest.raises(errors.ClientError) as info:
        client.batches.get(name=job.name)
    assert info.value.code == 404
    assert emu.control.jobs()[0]["deleted"] is True

    uploaded_name = "files/doesnotexist"
    with pytest.raises(errors.ClientError) as info:
        client.files.get(name=uploaded_name)
    assert info.value.code == 404


def test_file_delete(client: genai.Client, tmp_path: Path) -> None:
    from google.genai import errors

    f = client.files.upload(
        file=str(write_jsonl(tmp_path / "a.jsonl", [gen_line("k", "x")])), config={"mime_type": "jsonl"}
    )
    assert f.name
    client.files.delete(name=f.name)
    assert [x.name for x in client.files.list()] == []
    with pytest.raises(errors.ClientError) as info:
        client.files.get(name=f.name)
    assert info.value.code == 404


def test_running_progress_stats(emu: EmulatorServer, client: genai.Client) -> None:
    """While RUNNING, raw batchStats show requestCount and a shrinking pendingRequestCount."""
    import httpx

    emu.control.configure(running_seconds=2.0)  # ~100 ms a request: many reads see each count, even when busy
    job = client.batches.create(model=MODEL, src=[{"contents": f"p{i}"} for i in range(20)])
    assert job.name
    seen_pending: list[int] = []
    with httpx.Client(base_url=emu.base_url, headers={"x-goog-api-key": "k"}) as http:
        while True:
            op = http.get(f"/v1beta/{job.name}").json()
            stats = op["metadata"]["batchStats"]
            assert stats["requestCount"] == "20"
            if op["done"]:
                break
            seen_pending.append(int(stats.get("pendingRequestCount", "0")))
    assert stats == {"requestCount": "20", "successfulRequestCount": "20"}
    assert op["response"]["inlinedResponses"]["inlinedResponses"]
    assert len(set(seen_pending)) > 2 and seen_pending == sorted(seen_pending, reverse=True)
