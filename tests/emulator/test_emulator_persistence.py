"""Persistence in ``--data-dir``: a new emulator on the same dir shows the same files and jobs through the real
SDK (names, states, timestamps, outputs), finishes jobs that were interrupted mid-way, forgets everything after
``/_emulator/reset``, and the CLI persists and exits 0 on SIGTERM and Ctrl-C.

Each test runs its own servers (not the shared module server): restarting is the point.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from emulator_test_helpers import MODEL, gen_line, make_client, parse_jsonl, wait_done, write_jsonl
from google.genai import types

from airflow_gemini_batch.emulator import EmulatorServer
from airflow_gemini_batch.emulator.process import start_emulator_process
from airflow_gemini_batch.emulator.responder import expected_text
from tests.polling import wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from google import genai


def _listing(client: genai.Client) -> dict[str, Any]:
    """Everything a client can see, as plain data (SDK objects dumped), for before/after comparison."""
    files = [f.model_dump() for f in client.files.list(config={"page_size": 2})]
    jobs = [j.model_dump() for j in client.batches.list(config={"page_size": 2})]
    gets = [client.batches.get(name=j["name"]).model_dump() for j in jobs]
    outputs = {
        j["dest"]["file_name"]: client.files.download(file=j["dest"]["file_name"])
        for j in jobs
        if j["dest"] and j["dest"]["file_name"]
    }
    return {"files": files, "jobs": jobs, "gets": gets, "outputs": outputs}


def test_restart_keeps_files_jobs_and_outputs(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    lines = [gen_line(f"k{i}", f"persist {i}") for i in range(7)]
    with EmulatorServer(data_dir=data_dir) as first:
        client = make_client(first)
        uploaded = client.files.upload(
            file=str(write_jsonl(tmp_path / "in.jsonl", lines)),
            config={"mime_type": "jsonl", "display_name": "shard-0"},
        )
        assert uploaded.name
        file_job = client.batches.create(
            model=MODEL, src=uploaded.name, config={"display_name": "run-1 shard-0"}
        )
        inline_job = client.batches.create(
            model=MODEL,
            src=[{"contents": "inline hi", "metadata": {"key": "i1"}}],
            config={"display_name": "run-1 inline"},
        )
        assert file_job.name and inline_job.name
        wait_done(client, file_job.name)
        wait_done(client, inline_job.name)
        first.control.hold_state("PENDING")
        cancelled = client.batches.create(model=MODEL, src=[{"contents": "x"}], config={"display_name": "c"})
        assert cancelled.name
        client.batches.cancel(name=cancelled.name)
        deleted = client.batches.create(model=MODEL, src=[{"contents": "y"}], config={"display_name": "d"})
        assert deleted.name
        client.batches.delete(name=deleted.name)
        before = _listing(client)
        jobs_before = first.control.jobs()
        client.close()

    assert [j["display_name"] for j in before["jobs"]] == ["c", "run-1 inline", "run-1 shard-0"]
    with EmulatorServer(data_dir=data_dir) as second:
        client = make_client(second)
        after = _listing(client)
        assert after == before  # same names, states, timestamps, stats, inline results and output bytes
        # The deleted job too, flagged; only the read counters moved (the listing above read each job again).
        assert [j | {"reads": 0} for j in second.control.jobs()] == [j | {"reads": 0} for j in jobs_before]
        by_name = {j.display_name: j for j in client.batches.list()}
        assert by_name["run-1 shard-0"].state == types.JobState.JOB_STATE_SUCCEEDED
        assert by_name["c"].state == types.JobState.JOB_STATE_CANCELLED
        out = parse_jsonl(after["outputs"][f"files/batch-{file_job.name.split('/')[1]}"])
        assert [o["key"] for o in out] == [f"k{i}" for i in range(7)]

        # New items sort after the restored ones (sequence numbers continue, never reused).
        newer = client.batches.create(model=MODEL, src=[{"contents": "z"}], config={"display_name": "run-2"})
        assert next(j.name for j in client.batches.list()) == newer.name
        client.files.delete(name=uploaded.name)
        client.close()

    with EmulatorServer(data_dir=data_dir) as third:  # deletes and new jobs persisted as well
        client = make_client(third)
        assert uploaded.name not in [f.name for f in client.files.list()]
        assert [j.display_name for j in client.batches.list()][:2] == ["run-2", "c"]
        client.close()


def test_interrupted_job_finishes_after_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    lines = [gen_line(f"k{i}", f"slow {i}") for i in range(40)]
    with EmulatorServer(data_dir=data_dir, running_seconds=4.0) as first:
        client = make_client(first)
        uploaded = client.files.upload(
            file=str(write_jsonl(tmp_path / "in.jsonl", lines)), config={"mime_type": "jsonl"}
        )
        first.control.hold_state("RUNNING")  # RUNNING however slow the machine, until released below
        job = client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "long"})
        assert job.name
        engine_job = first.emulator.engine.get(job.name.split("/")[1])
        assert engine_job is not None
        wait_until(lambda: engine_job.processed >= 5, what="five requests processed")
        assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_RUNNING
        client.close()

    assert not list((data_dir / "files").glob("*.part"))  # the partial output was discarded
    with EmulatorServer(data_dir=data_dir, running_seconds=4.0) as second:
        client = make_client(second)
        assert second.control.job(job.name)["hold"] == {"state": "RUNNING", "reads": None}
        second.control.release(job.name)
        done = wait_done(client, job.name, timeout=60)
        assert done.state == types.JobState.JOB_STATE_SUCCEEDED and done.dest and done.dest.file_name
        out = parse_jsonl(client.files.download(file=done.dest.file_name))
        assert [o["key"] for o in out] == [f"k{i}" for i in range(40)]
        assert all(o["response"]["candidates"][0]["content"]["parts"][0]["text"] for o in out)
        for line, result in zip(lines, out, strict=True):
            text = result["response"]["candidates"][0]["content"]["parts"][0]["text"]
            assert text == expected_text(line["request"])
        with httpx.Client(base_url=second.base_url, headers={"x-goog-api-key": "k"}) as http:
            stats = http.get(f"/v1beta/{job.name}").json()["metadata"]["batchStats"]
        assert stats == {"requestCount": "40", "successfulRequestCount": "40"}  # counted once, not twice
        client.close()


def test_reset_clears_persisted_state(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EmulatorServer(data_dir=data_dir) as first:
        client = make_client(first)
        wait_done(client, client.batches.create(model=MODEL, src=[{"contents": "x"}]).name or "")
        first.control.reset()
        client.close()
    with EmulatorServer(data_dir=data_dir) as second:
        client = make_client(second)
        assert list(client.batches.list()) == [] and list(client.files.list()) == []
        assert second.control.jobs() == []
        client.close()


def test_unreadable_state_file_is_set_aside(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "state.json").write_bytes(b"{not json")
    with EmulatorServer(data_dir=data_dir) as server:
        assert server.control.jobs() == []
    assert (data_dir / "state.json.corrupt").read_bytes() == b"{not json"
    assert orjson.loads((data_dir / "state.json").read_bytes())["jobs"] == []


def test_no_data_dir_means_no_state_file() -> None:
    with EmulatorServer() as server:
        client = make_client(server)
        wait_done(client, client.batches.create(model=MODEL, src=[{"contents": "x"}]).name or "")
        client.close()
        assert not (server.data_dir / "state.json").exists()


def test_cli_persists_and_exits_cleanly_on_sigterm_and_ctrl_c(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    names: list[str] = []
    for number, sig in enumerate((signal.SIGTERM, signal.SIGINT)):
        log = tmp_path / f"emulator-{number}.log"
        proc, base_url = start_emulator_process(log, "--data-dir", str(data_dir))
        try:
            client = genai_client(base_url)
            assert [j.name for j in client.batches.list()] == list(reversed(names))
            job = client.batches.create(model=MODEL, src=[{"contents": f"run {number}"}])
            assert job.name
            names.append(job.name)
            assert wait_done(client, job.name).state == types.JobState.JOB_STATE_SUCCEEDED
            client.close()
        finally:
            proc.send_signal(sig)
            code = proc.wait(timeout=30)
        assert code == 0, log.read_text(errors="replace")
        assert "Traceback" not in log.read_text(errors="replace")
    state = orjson.loads((data_dir / "state.json").read_bytes())
    assert [f"batches/{j['id']}" for j in state["jobs"]] == names


def genai_client(base_url: str) -> genai.Client:
    from google import genai

    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=base_url))
