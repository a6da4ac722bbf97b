"""Job behaviours set through the control API: terminal states, stuck jobs, late output, per-key failures and
every output-corruption mode, each checked through the real SDK plus the raw wire where the SDK hides it."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from emulator_test_helpers import MODEL, gen_line, wait_done, write_jsonl
from google.genai import types

from tests.polling import wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from google import genai

    from airflow_gemini_batch.emulator import EmulatorServer


def _raw_op(emu: EmulatorServer, name: str) -> dict[str, Any]:
    with httpx.Client(base_url=emu.base_url, headers={"x-goog-api-key": "k"}) as http:
        return http.get(f"/v1beta/{name}").json()


def _file_job(client: genai.Client, tmp_path: Path, keys: list[str], display_name: str) -> types.BatchJob:
    lines = [gen_line(k, f"prompt for {k}") for k in keys]
    uploaded = client.files.upload(
        file=str(write_jsonl(tmp_path / "in.jsonl", lines)), config={"mime_type": "jsonl"}
    )
    assert uploaded.name
    job = client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": display_name})
    assert job.name
    return wait_done(client, job.name)


@pytest.mark.parametrize(
    ("final_state", "job_state", "rpc_code"),
    [("FAILED", types.JobState.JOB_STATE_FAILED, 13), ("EXPIRED", types.JobState.JOB_STATE_EXPIRED, 4)],
)
def test_terminal_failure_states(
    emu: EmulatorServer, client: genai.Client, final_state: str, job_state: types.JobState, rpc_code: int
) -> None:
    emu.control.set_job_behaviour(match="doomed", final_state=final_state)
    doomed = client.batches.create(
        model=MODEL, src=[{"contents": "x"}], config={"display_name": "a doomed job"}
    )
    fine = client.batches.create(model=MODEL, src=[{"contents": "x"}], config={"display_name": "fine job"})
    assert doomed.name and fine.name
    done = wait_done(client, doomed.name)
    assert done.state == job_state and done.dest is None
    op = _raw_op(emu, doomed.name)
    assert op["done"] is True and op["error"]["code"] == rpc_code and "output" not in op["metadata"]
    assert wait_done(client, fine.name).state == types.JobState.JOB_STATE_SUCCEEDED


def test_behaviour_count_limits_matching_jobs(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.set_job_behaviour(final_state="FAILED", count=1)
    first = client.batches.create(model=MODEL, src=[{"contents": "x"}])
    second = client.batches.create(model=MODEL, src=[{"contents": "x"}])
    assert first.name and second.name
    assert wait_done(client, first.name).state == types.JobState.JOB_STATE_FAILED
    assert wait_done(client, second.name).state == types.JobState.JOB_STATE_SUCCEEDED


def test_stay_pending(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.set_job_behaviour(stay_pending=True)
    job = client.batches.create(model=MODEL, src=[{"contents": "x"}, {"contents": "y"}])
    assert job.name
    time.sleep(0.3)
    again = client.batches.get(name=job.name)
    assert again.state == types.JobState.JOB_STATE_PENDING and not again.done
    assert _raw_op(emu, job.name)["metadata"]["batchStats"] == {
        "requestCount": "2",
        "pendingRequestCount": "2",
    }


def test_output_delay(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.configure(output_delay_seconds=3.0)  # the first SUCCEEDED read comes well within it
    job = client.batches.create(model=MODEL, src=[{"contents": "late"}])
    assert job.name
    done = wait_done(client, job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.dest is None  # SUCCEEDED, no output yet
    later = wait_until(lambda: (got := client.batches.get(name=job.name)).dest and got, what="output shown")
    assert later.dest and later.dest.inlined_responses and later.dest.inlined_responses[0].response
    assert later.dest.inlined_responses[0].response.text == "echo: late"


def test_fail_keys(emu: EmulatorServer, client: genai.Client, tmp_path: Path) -> None:
    emu.control.set_job_behaviour(fail_keys=["k1", "k3"])
    done = _file_job(client, tmp_path, ["k0", "k1", "k2", "k3"], "fk")
    assert done.dest and done.dest.file_name
    out = [json.loads(line) for line in client.files.download(file=done.dest.file_name).decode().splitlines()]
    assert [("error" in o, o["key"]) for o in out] == [
        (False, "k0"),
        (True, "k1"),
        (False, "k2"),
        (True, "k3"),
    ]
    assert out[1]["error"]["code"] == 500
    assert done.name
    stats = _raw_op(emu, done.name)["metadata"]["batchStats"]
    assert stats == {"requestCount": "4", "successfulRequestCount": "2", "failedRequestCount": "2"}


def test_fail_keys_inline(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.set_job_behaviour(fail_keys=["b"])
    src = [{"contents": "x", "metadata": {"key": "a"}}, {"contents": "y", "metadata": {"key": "b"}}]
    done = wait_done(client, client.batches.create(model=MODEL, src=src).name or "")
    assert done.dest and done.dest.inlined_responses
    a, b = done.dest.inlined_responses
    assert a.response and a.error is None and b.error and b.error.code == 500 and b.metadata == {"key": "b"}


KEYS = ["k0", "k1", "k2", "k3"]


def _lines(raw: bytes) -> list[str]:
    return raw.decode().split("\n")


@pytest.mark.parametrize("mode", ["truncate", "malformed", "drop_key", "unknown_key", "duplicate_key"])
def test_corrupt_output_file(emu: EmulatorServer, client: genai.Client, tmp_path: Path, mode: str) -> None:
    emu.control.set_job_behaviour(match="corrupt", corrupt_output=mode)
    done = _file_job(client, tmp_path, KEYS, f"corrupt-{mode}")
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.dest and done.dest.file_name
    raw = client.files.download(file=done.dest.file_name)
    parsed: list[dict[str, Any]] = []
    bad: list[str] = []
    for line in _lines(raw):
        if not line:
            continue
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append(line)
    keys = [p["key"] for p in parsed]
    if mode == "truncate":
        assert not raw.endswith(b"\n") and len(bad) == 1 and keys == KEYS[:-1]
    elif mode == "malformed":
        assert len(bad) == 1 and keys == KEYS[1:]
    elif mode == "drop_key":
        assert not bad and keys == KEYS[1:]
    elif mode == "unknown_key":
        assert not bad and keys[:4] == KEYS and len(keys) == 5 and keys[4] not in KEYS
    else:
        assert not bad and keys == [KEYS[0], *KEYS]


@pytest.mark.parametrize("mode", ["truncate", "malformed", "drop_key", "unknown_key", "duplicate_key"])
def test_corrupt_output_inline(emu: EmulatorServer, client: genai.Client, mode: str) -> None:
    emu.control.set_job_behaviour(corrupt_output=mode)
    src = [{"contents": k, "metadata": {"key": k}} for k in KEYS]
    done = wait_done(client, client.batches.create(model=MODEL, src=src).name or "")
    assert done.dest and done.dest.inlined_responses
    items = done.dest.inlined_responses
    keys = [(i.metadata or {}).get("key") for i in items]
    if mode == "truncate":
        assert keys == KEYS[:-1]
    elif mode == "malformed":
        assert keys == KEYS and items[0].response is None and items[0].error is None
    elif mode == "drop_key":
        assert keys == KEYS[1:]
    elif mode == "unknown_key":
        assert keys[:4] == KEYS and len(keys) == 5 and keys[4] not in KEYS
    else:
        assert keys == [KEYS[0], *KEYS]


def test_fail_fraction_with_a_status_and_the_requests_per_key(
    emu: EmulatorServer, client: genai.Client, tmp_path: Path
) -> None:
    from airflow_gemini_batch.emulator.faults import fails_by_fraction

    keys = [f"k{i}" for i in range(200)]
    doomed = {k for k in keys if fails_by_fraction(k, 0.05)}
    assert 3 <= len(doomed) <= 20  # about 5 %, the same keys in every process
    emu.control.set_job_behaviour(match="first", fail_fraction=0.05, fail_status=503, count=1)
    done = _file_job(client, tmp_path, keys, "first round")
    assert done.dest and done.dest.file_name
    out = [json.loads(line) for line in client.files.download(file=done.dest.file_name).decode().splitlines()]
    failed = {o["key"]: o["error"] for o in out if "error" in o}
    assert set(failed) == doomed
    assert {e["code"] for e in failed.values()} == {503}
    assert all("UNAVAILABLE" in e["message"] for e in failed.values())
    # The rule was for one job: the same keys sent again are answered; every key counted per processing.
    again = _file_job(client, tmp_path, sorted(doomed), "first round again")
    assert again.dest and again.dest.file_name
    assert all(
        "response" in json.loads(x) for x in client.files.download(file=again.dest.file_name).splitlines()
    )
    counts = emu.control.request_counts()
    assert counts == {k: (2 if k in doomed else 1) for k in keys}


def test_fail_fraction_and_status_are_validated(emu: EmulatorServer) -> None:
    for bad in ({"fail_fraction": 1.5}, {"fail_fraction": "half"}, {"fail_status": 200}):
        with pytest.raises(httpx.HTTPStatusError):
            emu.control.set_job_behaviour(**bad)
