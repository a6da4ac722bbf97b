"""Reply holds: the emulator keeps back the replies to matching requests until released, counts what it holds so
a test can wait until a request IS held (the server answers the wait, no polling), and lets every held reply
go on release, reset and shutdown. Checked through the real SDK and plain HTTP, with no clock margin."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from emulator_test_helpers import MODEL, make_client
from google.genai import types

from airflow_gemini_batch.emulator import EmulatorServer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from google import genai

PENDING, CANCELLED = types.JobState.JOB_STATE_PENDING, types.JobState.JOB_STATE_CANCELLED


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def _create(client: genai.Client, display_name: str = "job") -> str:
    job = client.batches.create(model=MODEL, src=[{"contents": "x"}], config={"display_name": display_name})
    assert job.name
    return job.name


def test_a_held_get_waits_for_its_release_with_the_read_from_its_arrival(
    emu: EmulatorServer, client: genai.Client, pool: ThreadPoolExecutor
) -> None:
    emu.control.hold_state("PENDING")  # until released: the job's state changes only by the cancel below
    name = _create(client)
    with emu.control.hold_replies("GET", name) as hold:
        held_get = pool.submit(client.batches.get, name=name)
        view = hold.wait(held=1)
        assert (view["method"], view["path"], view["held"], view["waiting"]) == ("GET", name, 1, 1)
        assert not held_get.done()
        # Other requests are answered meanwhile: a list, and a cancel of the very job.
        assert [job.state for job in client.batches.list()] == [PENDING]
        client.batches.cancel(name=name)
        assert emu.control.job(name)["state"] == "BATCH_STATE_CANCELLED"
        assert not held_get.done()
        released = hold.release()
        assert (released["let_go"], released["released"], released["waiting"]) == (1, True, 0)
    assert held_get.result(timeout=60).state == PENDING  # read on arrival, before the cancel
    assert client.batches.get(name=name).state == CANCELLED  # the hold is retired: answered at once
    assert emu.control.calls()["batches.get"] == 2
    (listed,) = emu.control.reply_holds()
    assert (listed["id"], listed["held"], listed["released"]) == (hold.id, 1, True)


def test_count_holds_only_the_next_requests_and_a_glob_matches_every_job(
    emu: EmulatorServer, client: genai.Client, pool: ThreadPoolExecutor
) -> None:
    first, second = _create(client, "a"), _create(client, "b")
    with emu.control.hold_replies("GET", "batches/*", count=1) as hold:
        held_get = pool.submit(client.batches.get, name=first)
        hold.wait(held=1)
        assert client.batches.get(name=second).name == second  # the rule's one use is taken: not held
        assert client.batches.get(name=first).name == first
        assert not held_get.done()
        assert hold.view()["held"] == 1
    assert held_get.result(timeout=60).name == first


def test_a_wait_short_of_its_number_says_how_many_were_held(
    emu: EmulatorServer, client: genai.Client, pool: ThreadPoolExecutor
) -> None:
    name = _create(client)
    hold = emu.control.hold_replies("GET", name)
    with pytest.raises(httpx.HTTPStatusError) as timed_out:
        hold.wait(held=1, timeout=0.05)  # nothing is ever sent: the wait can only time out
    assert timed_out.value.response.status_code == 408
    assert "held 0 of 1 requests within 0.05 s" in timed_out.value.response.json()["error"]["message"]
    held_get = pool.submit(client.batches.get, name=name)
    hold.wait(held=1)
    waiting_for_two = pool.submit(hold.wait, held=2)
    hold.release()  # before or after that wait began: either way it reports the release
    with pytest.raises(httpx.HTTPStatusError) as short:
        waiting_for_two.result(timeout=60)
    assert short.value.response.status_code == 412
    assert "released after holding 1 of 2 requests" in short.value.response.json()["error"]["message"]
    assert held_get.result(timeout=60).name == name


def test_a_reset_lets_held_replies_go_and_forgets_the_holds(
    emu: EmulatorServer, client: genai.Client, pool: ThreadPoolExecutor
) -> None:
    name = _create(client)
    hold = emu.control.hold_replies("*", name)
    held_get = pool.submit(client.batches.get, name=name)
    hold.wait(held=1)
    emu.control.reset()
    assert held_get.result(timeout=60).name == name  # its read came before the reset
    assert emu.control.reply_holds() == []
    with pytest.raises(LookupError, match="no reply hold"):
        hold.view()
    with pytest.raises(httpx.HTTPStatusError) as unknown:
        hold.wait()
    assert unknown.value.response.status_code == 400


def test_shutdown_answers_held_replies_instead_of_dropping_them(
    tmp_path: Any, pool: ThreadPoolExecutor
) -> None:
    server = EmulatorServer(data_dir=tmp_path).start()
    try:
        client = make_client(server)
        name = _create(client)
        hold = server.control.hold_replies("GET", name)

        def get() -> httpx.Response:
            with httpx.Client(base_url=server.base_url, headers={"x-goog-api-key": "k"}, timeout=60) as http:
                return http.get(f"/v1beta/{name}")

        held_get = pool.submit(get)
        hold.wait(held=1)
    finally:
        server.stop()
    reply = held_get.result(timeout=60)
    assert reply.status_code == 200 and reply.json()["name"] == name


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"method": "FETCH", "path": "batches/x"}, "method must be one of"),
        ({"method": "GET", "path": "/"}, "path must be a non-empty glob"),
        ({"method": "GET", "path": "batches/x", "count": 0}, "count must be an integer >= 1"),
        ({"method": "GET", "path": "batches/x", "reads": 1}, "unknown reply hold keys: ['reads']"),
    ],
)
def test_a_bad_reply_hold_is_a_400(emu: EmulatorServer, body: dict[str, Any], error: str) -> None:
    with httpx.Client(base_url=emu.base_url) as http:
        reply = http.post("/_emulator/reply_holds", json=body)
    assert reply.status_code == 400 and error in reply.json()["error"]["message"]
    assert emu.control.reply_holds() == []


def test_a_bad_wait_is_a_400(emu: EmulatorServer) -> None:
    hold = emu.control.hold_replies("GET", "batches/x")
    with httpx.Client(base_url=emu.base_url) as http:
        for body, error in [
            ({"id": hold.id, "held": 0}, "held must be an integer >= 1"),
            ({"id": hold.id, "timeout_seconds": 0}, "timeout_seconds must be a number within"),
            ({"id": hold.id + 1}, f"no reply hold {hold.id + 1}"),
        ]:
            reply = http.post("/_emulator/reply_holds/wait", json=body)
            assert reply.status_code == 400 and error in reply.json()["error"]["message"], body
