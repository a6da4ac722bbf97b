"""Live job state for the UI page (``plugins/live.py``) against the emulator, through the real hook and SDK."""

from __future__ import annotations

import threading
import time
from typing import Any

from airflow_gemini_batch.plugins.live import LiveStates


def test_a_viewer_does_not_queue_behind_a_refresh_stuck_on_a_slow_api(
    gemini_conn: str, emulator: Any, make_jobs: Any
) -> None:
    """While one request's refresh waits on a slow API, another answers from the cache after
    ``wait_seconds`` (stale jobs flagged deferred, no call of its own); the refresh then fills the cache."""
    (name,) = make_jobs(["slow-ui"])
    live = LiveStates(ttl=60.0, wait_seconds=0.2)
    emulator.control.configure(reply_delay_seconds=3)  # far beyond wait_seconds, even on a busy machine
    first: dict[str, Any] = {}
    refreshing = threading.Thread(target=lambda: first.update(live.lookup([(gemini_conn, name)])))
    refreshing.start()
    deadline = time.monotonic() + 30
    while live.calls == 0:  # the refresh has started its (slow) read
        assert time.monotonic() < deadline, "the refresh never started"
        time.sleep(0.01)
    second = live.lookup([(gemini_conn, name)])
    assert refreshing.is_alive(), "the second viewer waited for the whole slow refresh"
    assert second[name].deferred and second[name].status is None
    assert live.calls == 1  # the second viewer made no call of its own
    refreshing.join()
    assert first[name].status["state"] == "SUCCEEDED" and not first[name].deferred

    emulator.control.configure(reply_delay_seconds=0)
    third = live.lookup([(gemini_conn, name)])  # fresh in the cache now: no call, not deferred
    assert third[name].status == first[name].status and not third[name].deferred
    assert live.calls == 1


def test_a_cancel_does_not_wait_for_a_slow_refresh_nor_see_its_older_read(
    gemini_conn: str, emulator: Any, make_jobs: Any
) -> None:
    """``invalidate`` (after a cancel) returns at once during a refresh stuck on a slow API, and that refresh,
    which read the job before the cancel, does not store its read: the next view reads the job again."""
    (name,) = make_jobs(["cancel-ui"])
    live = LiveStates(ttl=60.0, wait_seconds=0.2)
    emulator.control.configure(reply_delay_seconds=3)  # far beyond an invalidate, even on a busy machine
    refreshing = threading.Thread(target=lambda: live.lookup([(gemini_conn, name)]))
    refreshing.start()
    deadline = time.monotonic() + 30
    while live.calls == 0:
        assert time.monotonic() < deadline, "the refresh never started"
        time.sleep(0.01)
    live.invalidate(name)
    assert refreshing.is_alive(), "invalidate waited for the whole slow refresh"
    refreshing.join()
    emulator.control.configure(reply_delay_seconds=0)
    after = live.lookup([(gemini_conn, name)])
    assert live.calls == 2  # the read from before the cancel was not kept
    assert after[name].status["state"] == "SUCCEEDED" and not after[name].deferred


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
