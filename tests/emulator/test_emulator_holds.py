"""Holds: a job really stays in PENDING or RUNNING until it has been read N times in that state, or until it is
released through the control API; then its lifecycle goes on as configured. Checked through the real SDK
(``batches.get`` / ``batches.list``) and the control API's job view, with no clock margin anywhere."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from emulator_test_helpers import MODEL, make_client, wait_done
from google.genai import types

from airflow_gemini_batch.emulator import EmulatorServer
from tests.polling import wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from google import genai

PENDING, RUNNING = types.JobState.JOB_STATE_PENDING, types.JobState.JOB_STATE_RUNNING
SUCCEEDED, FAILED = types.JobState.JOB_STATE_SUCCEEDED, types.JobState.JOB_STATE_FAILED


def _create(client: genai.Client, display_name: str = "job") -> str:
    job = client.batches.create(model=MODEL, src=[{"contents": "x"}], config={"display_name": display_name})
    assert job.name
    return job.name


def test_pending_for_n_reads_then_the_lifecycle_goes_on(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.hold_state("PENDING", reads=3)
    name = _create(client)
    assert emu.control.job(name)["hold"] == {"state": "PENDING", "reads": 3}
    states = [client.batches.get(name=name).state for _ in range(3)]
    assert states == [PENDING, PENDING, PENDING]  # the third read still shows the hold, then it lets go
    view = emu.control.job(name)
    assert view["hold"] is None and view["reads"] == 3
    done = wait_done(client, name, timeout=60)
    assert done.state == SUCCEEDED and done.dest and done.dest.inlined_responses


def test_list_reads_do_not_use_the_hold_up(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.hold_state("PENDING", reads=1)
    name = _create(client)
    for _ in range(5):
        assert [j.state for j in client.batches.list()] == [PENDING]
    assert emu.control.job(name)["hold"] == {"state": "PENDING", "reads": 1}
    assert client.batches.get(name=name).state == PENDING
    assert wait_done(client, name, timeout=60).state == SUCCEEDED


def _listed_stats(emu: EmulatorServer) -> dict[str, str]:
    """The first listed job's raw ``batchStats`` (a list read: it uses no hold up)."""
    with httpx.Client(base_url=emu.base_url, headers={"x-goog-api-key": "k"}) as http:
        return http.get("/v1beta/batches").json()["operations"][0]["metadata"]["batchStats"]


def test_running_hold_keeps_a_finished_worker_running(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.hold_state("RUNNING", reads=2)
    name = _create(client)
    # The worker finishes the request meanwhile; the job still reports RUNNING (no output, not done).
    wait_until(lambda: _listed_stats(emu).get("successfulRequestCount") == "1", what="the worker done")
    first, second = client.batches.get(name=name), client.batches.get(name=name)
    assert first.state == second.state == RUNNING and not second.done and second.dest is None
    assert emu.control.job(name)["hold"] is None
    done = wait_done(client, name, timeout=60)
    assert done.state == SUCCEEDED and done.dest and done.dest.inlined_responses


def test_running_hold_then_the_behaviours_final_state(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.set_job_behaviour(final_state="FAILED")
    emu.control.hold_state("RUNNING", reads=1)
    name = _create(client)
    assert client.batches.get(name=name).state == RUNNING
    assert wait_done(client, name, timeout=60).state == FAILED


def test_succeeded_hold_keeps_the_output_back(emu: EmulatorServer, client: genai.Client) -> None:
    """Held at SUCCEEDED: done, but no output until the last held read; reads while RUNNING do not count."""
    emu.control.hold_state("SUCCEEDED", reads=2)
    name = _create(client)
    first = wait_done(client, name, timeout=60)  # the first SUCCEEDED read is the first that counts
    second = client.batches.get(name=name)
    assert first.state == second.state == SUCCEEDED and first.dest is None and second.dest is None
    third = client.batches.get(name=name)
    assert third.state == SUCCEEDED and third.dest and third.dest.inlined_responses


def test_reads_in_another_state_do_not_count(emu: EmulatorServer, client: genai.Client) -> None:
    """A RUNNING hold counts RUNNING reads only: reads while the job is still (held) PENDING are not used."""
    emu.control.hold_state("RUNNING", reads=1, match="r-")
    emu.control.hold_state("PENDING", match="p-")
    held_pending = _create(client, "p-1")
    for _ in range(3):
        assert client.batches.get(name=held_pending).state == PENDING
    assert emu.control.job(held_pending)["hold"] == {"state": "PENDING", "reads": None}
    emu.control.configure(pending_seconds=3600)
    running_later = _create(client, "r-1")
    assert [client.batches.get(name=running_later).state for _ in range(3)] == [PENDING] * 3
    assert emu.control.job(running_later)["hold"] == {"state": "RUNNING", "reads": 1}


def test_until_released(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.hold_state("PENDING")
    name, other = _create(client, "a"), _create(client, "b")
    assert [client.batches.get(name=name).state for _ in range(10)] == [PENDING] * 10
    assert emu.control.release(name) == [name]
    assert emu.control.release(name) == []  # no longer held
    assert wait_done(client, name, timeout=60).state == SUCCEEDED
    assert client.batches.get(name=other).state == PENDING
    assert emu.control.release() == [other]  # every held job, and the rule is gone
    assert wait_done(client, other, timeout=60).state == SUCCEEDED
    assert emu.control.job(_create(client, "c"))["hold"] is None


def test_release_keeps_the_configured_timing(emu: EmulatorServer, client: genai.Client) -> None:
    """Released early, a job still waits out its ``pending_seconds``: release ends the hold, not the wait."""
    emu.control.configure(pending_seconds=3600)
    emu.control.hold_state("PENDING")
    name = _create(client)
    emu.control.release(name)
    assert client.batches.get(name=name).state == PENDING


def test_prefix_and_count_choose_the_held_jobs(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.hold_state("PENDING", match="held-", count=2)
    jobs = {d: _create(client, d) for d in ("held-1", "other held-", "held-2", "held-3")}
    held = {d for d, name in jobs.items() if emu.control.job(name)["hold"] is not None}
    assert held == {"held-1", "held-2"}
    assert wait_done(client, jobs["held-3"], timeout=60).state == SUCCEEDED
    assert client.batches.get(name=jobs["held-1"]).state == PENDING


def test_cancel_ends_a_held_job(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.hold_state("PENDING")
    name = _create(client)
    client.batches.cancel(name=name)
    assert client.batches.get(name=name).state == types.JobState.JOB_STATE_CANCELLED


def test_reset_forgets_holds(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.hold_state("PENDING")
    emu.control.reset()
    assert wait_done(client, _create(client), timeout=60).state == SUCCEEDED


@pytest.mark.parametrize(
    "body",
    [
        {"state": "FAILED"},
        {"state": "PENDING", "reads": 0},
        {"state": "PENDING", "count": "2"},
        {"state": "PENDING", "match": ""},
        {"state": "PENDING", "for": 3},
    ],
)
def test_bad_holds_are_rejected(emu: EmulatorServer, body: dict[str, object]) -> None:
    with httpx.Client(base_url=emu.base_url) as http:
        assert http.post("/_emulator/hold", json=body).status_code == 400


def test_release_of_an_unknown_job_is_rejected(emu: EmulatorServer) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        emu.control.release("batches/nope")


def test_a_held_job_stays_held_across_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EmulatorServer(data_dir=data_dir) as first:
        first.control.hold_state("PENDING", reads=2)
        client = make_client(first)
        name = _create(client)
        assert client.batches.get(name=name).state == PENDING
        client.close()
    with EmulatorServer(data_dir=data_dir) as second:
        client = make_client(second)
        assert second.control.job(name)["hold"] == {"state": "PENDING", "reads": 1}
        assert client.batches.get(name=name).state == PENDING
        assert wait_done(client, name, timeout=60).state == SUCCEEDED
        client.close()
