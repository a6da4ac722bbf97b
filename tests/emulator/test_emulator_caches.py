"""cachedContents through the real google-genai SDK: create / get / list / update (TTL) / delete, expiry, the
minimum size, and batch answers that report ``cachedContentTokenCount`` (or fail on a missing cache)."""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING

import pytest
from emulator_test_helpers import MODEL, gen_line, parse_jsonl, wait_done, write_jsonl
from google.genai import errors, types

from airflow_gemini_batch.emulator import EmulatorServer
from airflow_gemini_batch.emulator.responder import usage_for

if TYPE_CHECKING:
    from pathlib import Path

    from google import genai

DOCUMENT = "A long shared document. " * 200  # 4 800 characters: 1 200 tokens at ~4 characters a token
DOC_TOKENS = math.ceil((len("be terse\n") + len(DOCUMENT)) / 4)


def _create(
    client: genai.Client, ttl: str = "600s", model: str = MODEL, text: str = DOCUMENT
) -> types.CachedContent:
    return client.caches.create(
        model=model,
        config=types.CreateCachedContentConfig(
            contents=[types.Content(role="user", parts=[types.Part(text=text)])],
            system_instruction="be terse",
            ttl=ttl,
            display_name="agb-test-cache",
        ),
    )


def test_create_get_list_update_delete(emu: EmulatorServer, client: genai.Client) -> None:
    cache = _create(client)
    assert cache.name and cache.name.startswith("cachedContents/")
    assert cache.display_name == "agb-test-cache"
    assert cache.model == f"models/{MODEL}"
    assert cache.usage_metadata and cache.usage_metadata.total_token_count == DOC_TOKENS
    assert cache.expire_time and cache.create_time
    assert round((cache.expire_time - cache.create_time).total_seconds(), 3) == 600  # create + ttl, exactly

    got = client.caches.get(name=cache.name)
    assert got.name == cache.name and got.expire_time == cache.expire_time
    assert [c.name for c in client.caches.list(config={"page_size": 1})] == [cache.name]

    updated = client.caches.update(name=cache.name, config=types.UpdateCachedContentConfig(ttl="7200s"))
    assert updated.expire_time and updated.expire_time > cache.expire_time + dt.timedelta(seconds=6000)

    client.caches.delete(name=cache.name)
    with pytest.raises(errors.ClientError) as err:
        client.caches.get(name=cache.name)
    assert err.value.code == 403
    assert list(client.caches.list()) == []
    calls = emu.control.calls()
    assert (calls["caches.create"], calls["caches.get"], calls["caches.update"], calls["caches.delete"]) == (
        1,
        2,
        1,
        1,
    )
    assert [(c["name"], c["deleted"], c["live"]) for c in emu.control.caches()] == [(cache.name, True, False)]


def test_a_cache_expires_by_its_ttl(client: genai.Client) -> None:
    cache = _create(client)
    assert cache.name
    # A TTL of 0 s ends the cache at the update: no wall-clock margin involved.
    client.caches.update(name=cache.name, config=types.UpdateCachedContentConfig(ttl="0s"))
    with pytest.raises(errors.ClientError) as err:
        client.caches.get(name=cache.name)
    assert err.value.code == 403 and "not found" in str(err.value.message)
    assert list(client.caches.list()) == []


@pytest.mark.parametrize(("model", "minimum"), [("gemini-2.5-flash", 1024), ("gemini-2.5-pro", 4096)])
def test_create_refuses_a_prefix_below_the_model_minimum(
    emu: EmulatorServer, client: genai.Client, model: str, minimum: int
) -> None:
    with pytest.raises(errors.ClientError) as err:
        _create(client, model=model, text="short")
    assert err.value.code == 400
    assert f"min_total_token_count={minimum}" in str(err.value.message)
    assert emu.control.caches() == []


def test_batch_answers_report_cached_tokens_and_fail_on_a_missing_cache(
    emu: EmulatorServer, client: genai.Client, tmp_path: Path
) -> None:
    cache = _create(client)
    gone = _create(client)
    assert cache.name and gone.name
    client.caches.delete(name=gone.name)
    lines = [
        gen_line("hit", "question one", cachedContent=cache.name),
        gen_line("gone", "question two", cachedContent=gone.name),
        gen_line(
            "both", "question three", cachedContent=cache.name, systemInstruction={"parts": [{"text": "x"}]}
        ),
        gen_line("plain", "question four"),
    ]
    uploaded = client.files.upload(
        file=str(write_jsonl(tmp_path / "in.jsonl", lines)), config={"mime_type": "jsonl"}
    )
    assert uploaded.name
    job = client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "cached"})
    assert job.name
    done = wait_done(client, job.name)
    assert done.dest and done.dest.file_name
    out = {o["key"]: o for o in parse_jsonl(client.files.download(file=done.dest.file_name))}

    usage = out["hit"]["response"]["usageMetadata"]
    plain = usage_for(lines[0]["request"], "echo: question one")
    assert usage["cachedContentTokenCount"] == DOC_TOKENS
    assert usage["promptTokenCount"] == plain["promptTokenCount"] + DOC_TOKENS
    assert usage["totalTokenCount"] == plain["totalTokenCount"] + DOC_TOKENS
    assert out["gone"]["error"]["code"] == 403
    assert out["both"]["error"]["code"] == 400 and "system_instruction" in out["both"]["error"]["message"]
    assert "cachedContentTokenCount" not in out["plain"]["response"]["usageMetadata"]
    assert [c["hits"] for c in emu.control.caches() if c["name"] == cache.name] == [1]
    assert [line["key"] for line in emu.control.job_requests(job.name)] == ["hit", "gone", "both", "plain"]


def test_caches_survive_a_restart(tmp_path: Path) -> None:
    from emulator_test_helpers import make_client

    with EmulatorServer(data_dir=tmp_path / "data") as first:
        cache = _create(make_client(first))
    with EmulatorServer(data_dir=tmp_path / "data") as second:
        client = make_client(second)
        assert cache.name
        assert client.caches.get(name=cache.name).expire_time == cache.expire_time
        assert _create(client).name != cache.name  # sequence and ids move on
