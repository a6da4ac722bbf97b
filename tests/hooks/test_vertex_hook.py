"""GeminiVertexBatchHook against the emulator's Vertex AI side, through the real google-genai SDK
(``vertexai=True``) and a ``google_cloud_platform`` connection: create from bq://, get with completionStats and
outputInfo, the FAILED state, orphan lookup by display name, cancel, the async read the trigger uses."""

from __future__ import annotations

import asyncio

import pytest

from airflow_gemini_batch.hooks.backend import batch_hook
from airflow_gemini_batch.hooks.vertex import GeminiVertexBatchHook, VertexUnsupportedError
from tests.gcp_emulators import PROJECT
from tests.polling import wait_until

pytestmark = pytest.mark.timeout(300)


def _requests(bq_client, dataset: str, n: int = 3) -> str:
    from google.cloud import bigquery

    table = f"{PROJECT}.{dataset}.requests"
    schema = [bigquery.SchemaField("id", "INT64"), bigquery.SchemaField("request", "STRING")]
    bq_client.create_table(bigquery.Table(table, schema=schema))
    req = '{"contents": [{"role": "user", "parts": [{"text": "hi %d"}]}]}'
    bq_client.insert_rows_json(table, [{"id": i, "request": req % i} for i in range(n)])
    return table


def test_the_connection_type_picks_vertex(vertex_conn, gemini_conn):
    assert type(batch_hook(vertex_conn)) is GeminiVertexBatchHook
    assert type(batch_hook(gemini_conn)) is not GeminiVertexBatchHook
    name = "projects/p/locations/l/batchPredictionJobs/1"
    assert type(batch_hook("unread", [name])) is GeminiVertexBatchHook  # no connection read


def test_create_get_succeeded_with_stats_and_output(vertex_conn, vertex_emulator, bq_client, bq_dataset):
    hook = GeminiVertexBatchHook(vertex_conn)
    table = _requests(bq_client, bq_dataset)
    job = hook.create_job(
        model="gemini-2.5-flash",
        display_name="agb-test-1",
        src=f"bq://{table}",
        dest=f"bq://{PROJECT}.{bq_dataset}.predictions",
    )
    assert job.name.startswith(f"projects/{PROJECT}/locations/us-central1/batchPredictionJobs/")
    done = wait_until(lambda: (s := hook.get_job(job.name)).settled and s, what="job settled")
    assert done.state == "SUCCEEDED" and done.output_ready
    assert (done.request_count, done.succeeded_count, done.failed_count) == (3, 3, 0)
    assert done.output_uri == f"bq://{PROJECT}.{bq_dataset}.predictions"
    assert hook.find_job_by_display_name("agb-test-1").name == job.name
    assert hook.find_job_by_display_name("agb-other") is None

    async def read():
        client = await hook.aget_client()
        try:
            return await type(hook).aget_job(client, job.name)
        finally:
            await client.aclose()

    assert asyncio.run(read()).state == "SUCCEEDED"


def test_failed_job_and_cancel(vertex_conn, vertex_emulator, bq_client, bq_dataset):
    hook = GeminiVertexBatchHook(vertex_conn)
    table = _requests(bq_client, bq_dataset)
    vertex_emulator.control.set_job_behaviour("agb-fail", final_state="FAILED")
    failed = hook.create_job(
        model="gemini-2.5-flash", display_name="agb-fail-1", src=f"bq://{table}", dest=None
    )
    status = wait_until(lambda: (s := hook.get_job(failed.name)).done and s, what="failed")
    assert status.state == "FAILED" and status.error and status.error.get("message")
    vertex_emulator.control.hold_state("RUNNING", reads=None)
    running = hook.create_job(
        model="gemini-2.5-flash", display_name="agb-run-1", src=f"bq://{table}", dest=None
    )
    hook.cancel_job(running.name)
    vertex_emulator.control.release()
    assert (
        wait_until(lambda: (s := hook.get_job(running.name)).done and s, what="cancelled").state
        == "CANCELLED"
    )


def test_developer_api_only_features_are_refused(vertex_conn):
    hook = GeminiVertexBatchHook(vertex_conn)
    with pytest.raises(VertexUnsupportedError, match=r"embeddings batch.*gemini_batch connection"):
        hook.create_job(model="m", display_name="d", src="bq://p.d.t", embeddings=True)
    with pytest.raises(VertexUnsupportedError, match="Files API"):
        hook.upload_jsonl("/dev/null", "x")
