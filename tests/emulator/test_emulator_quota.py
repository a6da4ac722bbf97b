"""Quotas: the emulator refuses a create past the concurrent-job limit or the enqueued-token quota with 429
RESOURCE_EXHAUSTED, as the service does, through the real SDK; a job reaching a terminal state (held jobs
released, a cancel) frees its share; the high-water marks say how many jobs were ever unfinished at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from emulator_test_helpers import MODEL, gen_line, wait_done, write_jsonl
from google.genai import errors

from airflow_gemini_batch.emulator.cli import parse_args
from airflow_gemini_batch.emulator.quota import estimate_tokens

if TYPE_CHECKING:
    from pathlib import Path

    from google import genai

    from airflow_gemini_batch.emulator import EmulatorServer


def _create(client: genai.Client, name: str, model: str = MODEL) -> str:
    job = client.batches.create(model=model, src=[{"contents": "x"}], config={"display_name": name})
    assert job.name
    return job.name


def test_concurrent_job_limit_429_until_a_job_ends(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.set_quota(max_concurrent_jobs=2)
    emu.control.hold_state("PENDING")
    first, _ = _create(client, "a"), _create(client, "b")
    with pytest.raises(errors.ClientError) as caught:
        _create(client, "c")
    assert caught.value.code == 429 and caught.value.status == "RESOURCE_EXHAUSTED"
    assert "limit of concurrent batch jobs is 2" in str(caught.value.message)
    assert len(emu.control.jobs()) == 2  # the rejected create made no job
    client.batches.cancel(name=first)  # a terminal job frees its slot
    third = _create(client, "c")
    quota = emu.control.quota()
    assert quota["active_jobs"] == 2 and quota["high_water_jobs"] == 2 and quota["rejected_creates"] == 1
    emu.control.release()
    assert wait_done(client, third).state.name == "JOB_STATE_SUCCEEDED"
    assert emu.control.quota()["active_jobs"] == 0


def test_a_rejected_create_uses_up_no_hold_rule(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.set_quota(max_concurrent_jobs=1)
    emu.control.hold_state("PENDING", count=1)  # meant for the job that is accepted, whichever it is
    emu.control.hold_state("PENDING", count=1)
    held = _create(client, "a")
    with pytest.raises(errors.ClientError):
        _create(client, "b")
    client.batches.cancel(name=held)
    later = _create(client, "c")
    assert emu.control.job(later)["hold"] == {"state": "PENDING", "reads": None}
    emu.control.release()


def test_enqueued_tokens_per_model_from_request_bytes(
    emu: EmulatorServer, client: genai.Client, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [gen_line(f"k{i}", "hello " * 50) for i in range(4)])
    tokens = estimate_tokens(path.stat().st_size)
    emu.control.set_quota(max_enqueued_tokens=tokens * 2)
    emu.control.hold_state("RUNNING")
    uploaded = client.files.upload(file=path, config={"mime_type": "jsonl"})
    names = [
        client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": f"f{i}"}).name
        for i in range(2)
    ]
    with pytest.raises(errors.ClientError) as caught:
        client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "f2"})
    assert caught.value.code == 429 and f"over the quota of {tokens * 2:,}" in str(caught.value.message)
    # Another model has its own quota.
    client.batches.create(model="gemini-2.5-pro", src=uploaded.name, config={"display_name": "pro"})
    quota = emu.control.quota()
    assert quota["enqueued_tokens"] == {f"models/{MODEL}": tokens * 2, "models/gemini-2.5-pro": tokens}
    assert quota["high_water_tokens"][f"models/{MODEL}"] == tokens * 2 and quota["rejected_creates"] == 1
    assert [emu.control.job(n)["estimated_tokens"] for n in names] == [tokens, tokens]
    emu.control.release()


def test_quota_off_by_default_and_reset_restores_the_cli_flags(emu: EmulatorServer) -> None:
    assert emu.control.quota()["max_concurrent_jobs"] == 0
    emu.control.set_quota(max_concurrent_jobs=5)
    emu.control.reset()
    assert emu.control.quota()["max_concurrent_jobs"] == 0
    args = parse_args(["--max-concurrent-jobs", "100", "--max-enqueued-tokens", "3000000"])
    assert (args.max_concurrent_jobs, args.max_enqueued_tokens) == (100, 3_000_000)
