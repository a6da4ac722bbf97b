"""Live job state for the UI page (``plugins/live.py``) against the emulator, through the real hook and SDK."""

from __future__ import annotations

import threading
from typing import Any

from airflow_gemini_batch.plugins.live import LiveStates


def test_a_viewer_does_not_queue_behind_a_refresh_stuck_on_a_slow_api(
    gemini_conn: str, emulator: Any, make_jobs: Any
) -> None:
    """While one request's refresh waits on a hanging API (the emulator holds its read's reply), another
    answers from the cache after ``wait_seconds`` (stale jobs flagged deferred, no call of its own); once the
    API answers, the refresh fills the cache."""
    emulator.control.hold_state("PENDING", match="slow-ui")  # one state for every read of the job
    (name,) = make_jobs(["slow-ui"])
    live = LiveStates(ttl=3600.0, wait_seconds=0.2)
    first: dict[str, Any] = {}
    with emulator.control.hold_replies("GET", name, count=1) as hold:
        refreshing = threading.Thread(target=lambda: first.update(live.lookup([(gemini_conn, name)])))
        refreshing.start()
        hold.wait(held=1)  # the refresh's read has reached the API; its reply waits for the release
        second = live.lookup([(gemini_conn, name)])
        assert second[name].deferred and second[name].status is None
        assert live.calls == 1  # the second viewer made no call of its own
        assert refreshing.is_alive() and not first, "the second viewer waited for the refresh"
    refreshing.join()
    assert first[name].status["state"] == "PENDING" and not first[name].deferred

    third = live.lookup([(gemini_conn, name)])  # fresh in the cache now: no call, not deferred
    assert third[name].status == first[name].status and not third[name].deferred
    assert live.calls == 1


def test_a_cancel_does_not_wait_for_a_slow_refresh_nor_see_its_older_read(
    gemini_conn: str, emulator: Any, make_jobs: Any
) -> None:
    """A cancel and its ``invalidate`` go through during a refresh stuck on a hanging API, and that refresh,
    which read the job before the cancel, does not store its read: the next view reads the cancelled job."""
    emulator.control.hold_state("PENDING", match="cancel-ui")  # PENDING until the cancel
    (name,) = make_jobs(["cancel-ui"])
    live = LiveStates(ttl=3600.0, wait_seconds=0.2)
    refreshed: dict[str, Any] = {}
    with emulator.control.hold_replies("GET", name, count=1) as hold:
        refreshing = threading.Thread(target=lambda: refreshed.update(live.lookup([(gemini_conn, name)])))
        refreshing.start()
        hold.wait(held=1)  # the refresh has read the job (PENDING); its reply waits for the release
        live.hook(gemini_conn).cancel_job(name)  # as the page's cancel does, then its invalidate
        live.invalidate(name)
        assert refreshing.is_alive() and not refreshed, "the cancel waited for the refresh"
    refreshing.join()
    # Not even that refresh's own viewer is shown its read from before the cancel.
    assert refreshed[name].status is None and refreshed[name].deferred
    after = live.lookup([(gemini_conn, name)])
    assert live.calls == 2  # the read from before the cancel was not kept
    assert after[name].status["state"] == "CANCELLED" and not after[name].deferred


def test_the_page_reads_vertex_jobs_through_the_vertex_hook(
    vertex_conn, vertex_emulator, bq_client, bq_dataset
):
    """A google_cloud_platform connection (Vertex AI) gets the Vertex hook, with the page's bounded timeout."""
    from airflow_gemini_batch.hooks.vertex import GeminiVertexBatchHook
    from airflow_gemini_batch.plugins.live import UI_TIMEOUT_SECONDS, _default_hook

    hook = _default_hook(vertex_conn)
    assert isinstance(hook, GeminiVertexBatchHook)
    assert hook.vertex_kwargs()["http_options"].timeout == int(UI_TIMEOUT_SECONDS * 1000)
    table = f"{bq_client.project}.{bq_dataset}.requests"
    bq_client.query(
        f"CREATE TABLE `{table}` AS SELECT 1 AS id, "
        """'{"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}' AS request"""
    ).result()
    job = hook.create_job(model="gemini-2.5-flash", display_name="agb-page", src=f"bq://{table}", dest=None)
    state = LiveStates().lookup([(vertex_conn, job.name)])[job.name]
    assert state.error is None and state.status is not None and state.status["name"] == job.name


def test_the_expiry_flag_follows_the_jobs_backend() -> None:
    """The Developer API ends a job at 48 h, Vertex AI lets one queue for 72 h: the flag comes 8 h before each."""
    from datetime import datetime, timedelta, timezone

    from airflow_gemini_batch.plugins.live import expiry_view

    now = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
    created = (now - timedelta(hours=41)).isoformat()
    vertex = "projects/p/locations/us-central1/batchPredictionJobs/7"
    assert expiry_view("batches/7", created, "PENDING", now) == {
        "age_hours": 41.0,
        "nearing_expiry": True,
        "expires_in_hours": 7.0,
        "expiry_hours": 48.0,
    }
    assert expiry_view(vertex, created, "PENDING", now)["nearing_expiry"] is False
    late = (now - timedelta(hours=65)).isoformat()
    assert expiry_view(vertex, late, "RUNNING", now)["expires_in_hours"] == 7.0
    assert expiry_view(vertex, late, "SUCCEEDED", now)["nearing_expiry"] is False
