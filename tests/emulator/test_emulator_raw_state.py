"""The raw state knob (``set_job_behaviour(report_state=..., report_state_reads=N)``): matching jobs report that
exact ``metadata.state`` on their first N ``batches.get`` reads, then their true state; seen through the real
SDK, which maps an unknown state to a pseudo ``JobState`` member with a warning."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx
import pytest
from emulator_test_helpers import MODEL
from google.genai import types

if TYPE_CHECKING:
    from google import genai

    from airflow_gemini_batch.emulator import EmulatorServer

WEIRD = "BATCH_STATE_WEIRD"


def _get_weird(client: genai.Client, name: str) -> types.BatchJob:
    with pytest.warns(UserWarning, match=f"{WEIRD} is not a valid JobState"):
        return client.batches.get(name=name)


def test_raw_state_for_first_reads_then_normal(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.set_job_behaviour(match="odd", report_state=WEIRD, report_state_reads=2)
    odd = client.batches.create(model=MODEL, src=[{"contents": "x"}], config={"display_name": "odd one"})
    assert odd.state != WEIRD  # the create reply shows the true state
    plain = client.batches.create(model=MODEL, src=[{"contents": "x"}], config={"display_name": "plain"})
    assert odd.name and plain.name

    # Listing shows the raw state without using up reads (creation did not use one either).
    with pytest.warns(UserWarning, match=WEIRD):
        listed = {j.name: j.state for j in client.batches.list()}
    assert listed[odd.name] == WEIRD and listed[plain.name] != WEIRD
    for _ in range(2):
        job = _get_weird(client, odd.name)
        assert job.state is not None and job.state.value == WEIRD and job.state not in types.JobState
    # The lifecycle went on underneath: the third read shows the true, terminal state with its output.
    job = client.batches.get(name=odd.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED and job.done and job.dest
    assert client.batches.get(name=plain.name).state == types.JobState.JOB_STATE_SUCCEEDED
    [odd_view] = [j for j in emu.control.jobs() if j["name"] == odd.name]
    assert odd_view["behaviour"]["report_state"] == WEIRD and odd_view["state"] == "BATCH_STATE_SUCCEEDED"


def test_raw_state_only_changes_metadata_state(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.hold_state("PENDING")
    emu.control.set_job_behaviour(report_state="BATCH_STATE_PAUSED_FOR_TEST", report_state_reads=1)
    job = client.batches.create(model=MODEL, src=[{"contents": "x"}, {"contents": "y"}])
    assert job.name
    with httpx.Client(base_url=emu.base_url, headers={"x-goog-api-key": "k"}) as http:
        first = http.get(f"/v1beta/{job.name}").json()
        second = http.get(f"/v1beta/{job.name}").json()
    assert first["metadata"]["state"] == "BATCH_STATE_PAUSED_FOR_TEST"
    assert second["metadata"]["state"] == "BATCH_STATE_PENDING"
    first["metadata"].pop("state")
    second["metadata"].pop("state")
    assert first == second  # done, batchStats, timestamps: all from the true lifecycle


async def test_raw_state_every_read_async(emu: EmulatorServer, client: genai.Client) -> None:
    emu.control.set_job_behaviour(report_state=WEIRD, report_state_reads=None)
    job = await client.aio.batches.create(model=MODEL, src=[{"contents": "x"}])
    assert job.name
    for _ in range(5):
        with pytest.warns(UserWarning, match=WEIRD):
            seen = await client.aio.batches.get(name=job.name)
        assert seen.state is not None and seen.state.value == WEIRD
        await asyncio.sleep(0.01)
    # Finished underneath (output present), yet the SDK's ``done`` (derived from the state) says False.
    assert seen.dest is not None and seen.dest.inlined_responses and not seen.done


@pytest.mark.parametrize(
    "body",
    [{"report_state": ""}, {"report_state": 3}, {"report_state": WEIRD, "report_state_reads": -1}],
)
def test_raw_state_validation(emu: EmulatorServer, body: dict[str, object]) -> None:
    with pytest.raises(httpx.HTTPStatusError) as info:
        emu.control.set_job_behaviour(**body)
    assert info.value.response.status_code == 400
