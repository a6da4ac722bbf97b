"""Vertex AI batch prediction on the emulator, driven by the real google-genai SDK with ``vertexai=True`` over
HTTP, with bq:// input and output in the real BigQuery emulator and gs:// in the real GCS emulator.

Credentials: a static OAuth token (``google.oauth2.credentials.Credentials(token=...)``), which the SDK never
refreshes; ``AnonymousCredentials`` cannot be used (the SDK refreshes token-less credentials and anonymous
ones raise on refresh).
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from google import genai
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery, storage
from google.genai import errors, types
from google.oauth2.credentials import Credentials

from airflow_gemini_batch.emulator import EmulatorControl, EmulatorServer, responder
from airflow_gemini_batch.emulator.process import start_emulator_process
from tests.gcp_emulators import PROJECT
from tests.polling import await_until, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.gcp_emulators import BigQueryEmulator, StorageEmulator

LOCATION = "us-central1"
MODEL = "gemini-2.5-flash"


@pytest.fixture
def vclient(vertex_emulator: EmulatorServer) -> Iterator[genai.Client]:
    client = _client(vertex_emulator.base_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def bq(bigquery_emulator: BigQueryEmulator) -> bigquery.Client:
    return bigquery.Client(
        project=PROJECT,
        client_options=ClientOptions(api_endpoint=bigquery_emulator.rest_url),
        credentials=AnonymousCredentials(),
    )


@pytest.fixture
def dataset(bq: bigquery.Client) -> Iterator[str]:
    name = f"v_{uuid.uuid4().hex[:10]}"
    bq.create_dataset(name)
    yield name
    bq.delete_dataset(name, delete_contents=True, not_found_ok=True)


@pytest.fixture(scope="module")
def gcs(storage_emulator: StorageEmulator) -> storage.Client:
    return storage.Client(
        project=PROJECT,
        client_options=ClientOptions(api_endpoint=storage_emulator.base_url),
        credentials=AnonymousCredentials(),
    )


def _request(text: str) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def _input_table(bq: bigquery.Client, dataset: str, prompts: dict[int, str], name: str = "requests") -> str:
    table = f"{PROJECT}.{dataset}.{name}"
    schema = [
        bigquery.SchemaField("id", "INT64"),
        bigquery.SchemaField("request", "JSON"),
        bigquery.SchemaField("tags", "STRING", mode="REPEATED"),
    ]
    bq.create_table(bigquery.Table(table, schema=schema))
    rows = [{"id": k, "request": json.dumps(_request(v)), "tags": ["x"]} for k, v in prompts.items()]
    assert bq.insert_rows_json(table, rows) == []
    return table


def _wait_done(client: genai.Client, name: str) -> types.BatchJob:
    return wait_until(lambda: (job := client.batches.get(name=name)).done and job, what=f"{name} done")


def _predictions(bq: bigquery.Client, job: types.BatchJob) -> list[dict[str, Any]]:
    """The job's predictions table: its ``dest`` names the dataset (and table); the SDK drops the wire's
    ``outputInfo.bigqueryOutputDataset`` and keeps ``bigquery_output_table`` (the table's id)."""
    assert job.output_info is not None and job.output_info.bigquery_output_table
    assert job.dest is not None and job.dest.bigquery_uri
    project, dataset = job.dest.bigquery_uri.removeprefix("bq://").split(".")[:2]
    table = f"{project}.{dataset}.{job.output_info.bigquery_output_table}"
    sql = f"SELECT id, TO_JSON_STRING(request) AS request, TO_JSON_STRING(response) AS response, status, processed_time FROM `{table}` ORDER BY id"
    return [dict(row) for row in bq.query(sql).result()]


def test_bq_to_bq_succeeds_with_one_prediction_row_per_input_row(
    vertex_emulator: EmulatorServer, vclient: genai.Client, bq: bigquery.Client, dataset: str
) -> None:
    prompts = {1: "kettle", 2: "spade", 3: "rake"}
    source = _input_table(bq, dataset, prompts)
    job = vclient.batches.create(
        model=MODEL,
        src=f"bq://{source}",
        config={"dest": f"bq://{PROJECT}.{dataset}.predictions", "display_name": "vx-bq"},
    )
    assert job.name is not None
    assert job.name.startswith(f"projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs/")
    done = _wait_done(vclient, job.name)

    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.completion_stats is not None and done.completion_stats.successful_count == 3
    assert done.completion_stats.failed_count is None  # zero counts are omitted, as proto3 JSON does
    assert done.output_info is not None
    assert done.output_info.bigquery_output_table == "predictions"
    rows = _predictions(bq, done)
    assert [row["id"] for row in rows] == [1, 2, 3]
    for row in rows:
        request = json.loads(row["request"])
        assert request == _request(prompts[row["id"]])
        assert row["status"] == ""
        assert row["processed_time"] is not None
        response = types.GenerateContentResponse.model_validate(json.loads(row["response"]))
        assert response.text == responder.expected_text(request)
    # The pass-through columns are the input's but ARRAY ones (Vertex passes no ARRAY/STRUCT columns).
    out = bq.get_table(f"{PROJECT}.{dataset}.predictions")
    assert [f.name for f in out.schema] == ["id", "request", "response", "status", "processed_time"]
    assert vertex_emulator.control.request_counts() == {"1": 1, "2": 1, "3": 1}
    assert vertex_emulator.control.calls()["batchPredictionJobs.create"] == 1


def test_get_list_cancel_delete_and_the_sdk_default_destination(
    vertex_emulator: EmulatorServer, vclient: genai.Client, bq: bigquery.Client, dataset: str
) -> None:
    source = _input_table(bq, dataset, {1: "a"})
    vertex_emulator.control.hold_state("PENDING", match="vx-held")
    held = vclient.batches.create(model=MODEL, src=f"bq://{source}", config={"display_name": "vx-held"})
    assert held.name is not None and held.dest is not None
    # The SDK picks a sibling table with a timestamp when no dest is given.
    assert str(held.dest.bigquery_uri).startswith(f"bq://{source}_dest_")
    assert vclient.batches.get(name=held.name).state == types.JobState.JOB_STATE_PENDING
    listed = list(vclient.batches.list(config={"page_size": 10}))
    assert [job.name for job in listed] == [held.name]
    with pytest.raises(errors.ClientError) as refused:
        vclient.batches.delete(name=held.name)  # unfinished: cancel it first
    assert refused.value.code == 400
    vclient.batches.cancel(name=held.name)
    cancelled = vclient.batches.get(name=held.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    assert cancelled.error is not None and cancelled.error.code == 1
    vclient.batches.delete(name=held.name)
    with pytest.raises(errors.ClientError) as gone:
        vclient.batches.get(name=held.name)
    assert gone.value.code == 404
    assert vertex_emulator.control.job(held.name)["deleted"] is True


@pytest.mark.parametrize("final_state", ["FAILED", "EXPIRED", "CANCELLED"])
def test_a_job_ends_in_the_final_state_its_behaviour_sets(
    vertex_emulator: EmulatorServer,
    vclient: genai.Client,
    bq: bigquery.Client,
    dataset: str,
    final_state: str,
) -> None:
    source = _input_table(bq, dataset, {1: "a"})
    vertex_emulator.control.set_job_behaviour("vx-doomed", final_state=final_state)
    job = vclient.batches.create(model=MODEL, src=f"bq://{source}", config={"display_name": "vx-doomed"})
    assert job.name is not None
    done = _wait_done(vclient, job.name)
    assert done.state == types.JobState(f"JOB_STATE_{final_state}")
    assert (
        done.error is not None
        and done.error.code == {"FAILED": 13, "EXPIRED": 4, "CANCELLED": 1}[final_state]
    )
    assert done.output_info is None


def test_per_row_errors_land_in_status_and_completion_stats(
    vertex_emulator: EmulatorServer, vclient: genai.Client, bq: bigquery.Client, dataset: str
) -> None:
    source = _input_table(bq, dataset, {1: "a", 2: "b PLEASE_FAIL", 3: "c"})
    vertex_emulator.control.set_job_behaviour("vx-rows", fail_keys=["3"], fail_status=503, key_column="id")
    job = vclient.batches.create(
        model=MODEL,
        src=f"bq://{source}",
        config={"dest": f"bq://{PROJECT}.{dataset}.out", "display_name": "vx-rows"},
    )
    assert job.name is not None
    done = _wait_done(vclient, job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.completion_stats is not None
    assert (done.completion_stats.successful_count, done.completion_stats.failed_count) == (1, 2)
    rows = {row["id"]: row for row in _predictions(bq, done)}
    assert rows[1]["status"] == "" and rows[1]["response"] is not None
    for key, code, status in ((2, 400, "INVALID_ARGUMENT"), (3, 503, "UNAVAILABLE")):
        reason, _, detail = rows[key]["status"].partition(": ")
        assert reason in ("Bad Request", "Service Unavailable")
        assert json.loads(detail)["error"]["code"] == code
        assert json.loads(detail)["error"]["status"] == status
        assert rows[key]["response"] in (None, "null")


def test_an_existing_destination_table_or_a_missing_input_fails_the_job(
    vertex_emulator: EmulatorServer, vclient: genai.Client, bq: bigquery.Client, dataset: str
) -> None:
    source = _input_table(bq, dataset, {1: "a"})
    taken = vclient.batches.create(
        model=MODEL, src=f"bq://{source}", config={"dest": f"bq://{source}", "display_name": "vx-taken"}
    )
    missing = vclient.batches.create(
        model=MODEL,
        src=f"bq://{PROJECT}.{dataset}.nope",
        config={"dest": f"bq://{PROJECT}.{dataset}.o2", "display_name": "vx-missing"},
    )
    for job, text in ((taken, "already exists"), (missing, "nope")):
        assert job.name is not None
        done = _wait_done(vclient, job.name)
        assert done.state == types.JobState.JOB_STATE_FAILED
        assert done.error is not None and text in str(done.error.message)


def test_http_faults_on_create_and_get(
    vertex_emulator: EmulatorServer, vclient: genai.Client, bq: bigquery.Client, dataset: str
) -> None:
    source = _input_table(bq, dataset, {1: "a"})
    vertex_emulator.control.inject_fault("batchPredictionJobs.create", status=429)
    with pytest.raises(errors.ClientError) as limited:
        vclient.batches.create(model=MODEL, src=f"bq://{source}", config={"display_name": "vx-429"})
    assert limited.value.code == 429
    assert vertex_emulator.control.jobs() == []  # a refused create makes no job
    vertex_emulator.control.inject_fault("batchPredictionJobs.create", status=503, after=True)
    with pytest.raises(errors.ServerError):
        vclient.batches.create(model=MODEL, src=f"bq://{source}", config={"display_name": "vx-lost"})
    [lost] = vertex_emulator.control.jobs()  # the create took effect; only its reply was lost
    assert lost["display_name"] == "vx-lost"
    # ... and a lookup by display name finds it (what an orphan lookup does).
    found = list(vclient.batches.list(config={"filter": 'display_name="vx-lost"'}))
    assert [job.name for job in found] == [lost["name"]]
    assert list(vclient.batches.list(config={"filter": 'display_name="vx-other"'})) == []
    vertex_emulator.control.inject_fault("batchPredictionJobs.get", status=500)
    with pytest.raises(errors.ServerError):
        vclient.batches.get(name=lost["name"])
    assert _wait_done(vclient, lost["name"]).state == types.JobState.JOB_STATE_SUCCEEDED


def test_hold_in_running_then_release(
    vertex_emulator: EmulatorServer, vclient: genai.Client, bq: bigquery.Client, dataset: str
) -> None:
    source = _input_table(bq, dataset, {1: "a"})
    vertex_emulator.control.hold_state("RUNNING", reads=2, match="vx-run")
    job = vclient.batches.create(model=MODEL, src=f"bq://{source}", config={"display_name": "vx-run"})
    assert job.name is not None
    states = [vclient.batches.get(name=job.name).state for _ in range(2)]
    assert states == [types.JobState.JOB_STATE_RUNNING] * 2
    assert _wait_done(vclient, job.name).state == types.JobState.JOB_STATE_SUCCEEDED


def test_calls_need_a_bearer_token(vertex_emulator: EmulatorServer) -> None:
    import httpx

    url = f"{vertex_emulator.base_url}/v1beta1/projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer t"}).status_code == 200
    # A Developer-API key is no Vertex credential, and a Vertex job is no Developer-API batch.
    assert httpx.get(url, headers={"x-goog-api-key": "k"}).status_code == 401


def test_gcs_jsonl_in_and_predictions_jsonl_out(
    vertex_emulator: EmulatorServer,
    vclient: genai.Client,
    gcs: storage.Client,
    storage_emulator: StorageEmulator,
) -> None:
    run = uuid.uuid4().hex[:8]
    bucket = gcs.bucket(storage_emulator.bucket)
    lines = [{"request": _request(f"p{i}") | {"labels": {"key": f"k{i}"}}} for i in range(3)]
    bucket.blob(f"{run}/in/part-0.jsonl").upload_from_string("".join(json.dumps(x) + "\n" for x in lines[:2]))
    bucket.blob(f"{run}/in/part-1.jsonl").upload_from_string(json.dumps(lines[2]) + "\n")
    vertex_emulator.control.set_job_behaviour("vx-gcs", fail_keys=["k1"])
    job = vclient.batches.create(
        model=MODEL,
        src=f"gs://{storage_emulator.bucket}/{run}/in/*.jsonl",
        config={"dest": f"gs://{storage_emulator.bucket}/{run}/out", "display_name": "vx-gcs"},
    )
    assert job.name is not None
    done = _wait_done(vclient, job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.output_info is not None and done.output_info.gcs_output_directory
    directory = done.output_info.gcs_output_directory
    assert directory.startswith(f"gs://{storage_emulator.bucket}/{run}/out/prediction-")
    path = directory.removeprefix(f"gs://{storage_emulator.bucket}/") + "/predictions.jsonl"
    out = [json.loads(line) for line in bucket.blob(path).download_as_bytes().splitlines()]
    assert [line["request"]["labels"]["key"] for line in out] == ["k0", "k1", "k2"]
    assert [line["status"] == "" for line in out] == [True, False, True]
    assert out[0]["response"]["candidates"][0]["content"]["parts"][0]["text"] == "echo: p0"
    assert "response" not in out[1] or out[1]["response"] is None
    assert all(line["processed_time"] for line in out)


def _client(base_url: str) -> genai.Client:
    return genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=Credentials(token="emulator-token"),  # type: ignore[no-untyped-call]
        http_options=types.HttpOptions(base_url=base_url),
    )


def test_a_dropped_prediction_row_is_missing_from_the_table(
    vertex_emulator: EmulatorServer, vclient: genai.Client, bq: bigquery.Client, dataset: str
) -> None:
    source = _input_table(bq, dataset, {1: "a", 2: "b", 3: "c"})
    vertex_emulator.control.set_job_behaviour("vx-drop", corrupt_output="drop_key")
    job = vclient.batches.create(
        model=MODEL,
        src=f"bq://{source}",
        config={"dest": f"bq://{PROJECT}.{dataset}.dropped", "display_name": "vx-drop"},
    )
    assert job.name is not None
    done = _wait_done(vclient, job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert [row["id"] for row in _predictions(bq, done)] == [2, 3]


def test_the_cli_process_with_endpoints_persists_vertex_jobs_across_a_restart(
    tmp_path: Any,
    bigquery_emulator: BigQueryEmulator,
    storage_emulator: StorageEmulator,
    bq: bigquery.Client,
    dataset: str,
) -> None:
    """``--bigquery-endpoint`` / ``--gcs-endpoint`` on the command line; a job held in PENDING survives a
    restart on the same data dir and then finishes there."""
    source = _input_table(bq, dataset, {1: "a", 2: "b"})
    args = (
        "--data-dir",
        str(tmp_path / "data"),
        "--bigquery-endpoint",
        bigquery_emulator.rest_url,
        "--gcs-endpoint",
        storage_emulator.base_url,
    )
    proc, url = start_emulator_process(tmp_path / "first.log", *args)
    try:
        EmulatorControl(url).hold_state("PENDING", match="vx-cli")
        client = _client(url)
        job = client.batches.create(
            model=MODEL,
            src=f"bq://{source}",
            config={"dest": f"bq://{PROJECT}.{dataset}.cli_out", "display_name": "vx-cli"},
        )
        assert job.name is not None and job.state == types.JobState.JOB_STATE_PENDING
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    proc, url = start_emulator_process(tmp_path / "second.log", *args)
    try:
        control, client = EmulatorControl(url), _client(url)
        assert client.batches.get(name=job.name).state == types.JobState.JOB_STATE_PENDING
        assert control.release(job.name) == [job.name]
        done = _wait_done(client, job.name)
        assert done.state == types.JobState.JOB_STATE_SUCCEEDED
        assert [row["id"] for row in _predictions(bq, done)] == [1, 2]
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_the_async_client_polls_a_vertex_job_and_the_developer_api_does_not_see_it(
    vertex_emulator: EmulatorServer, vclient: genai.Client, bq: bigquery.Client, dataset: str
) -> None:
    """What a triggerer does (``client.aio``), with the same static-token credentials; a Developer-API
    client on the same process lists none of the Vertex jobs."""
    source = _input_table(bq, dataset, {1: "a"})
    vertex_emulator.control.hold_state("PENDING", reads=1, match="vx-aio")
    job = await vclient.aio.batches.create(
        model=MODEL, src=f"bq://{source}", config={"display_name": "vx-aio"}
    )
    assert job.name is not None
    first = await vclient.aio.batches.get(name=job.name)
    assert first.state == types.JobState.JOB_STATE_PENDING
    done = await await_until(
        lambda: vertex_emulator.control.job(str(job.name))["state"] == "JOB_STATE_SUCCEEDED"
    )
    assert done
    final = await vclient.aio.batches.get(name=job.name)
    assert final.state == types.JobState.JOB_STATE_SUCCEEDED and final.output_info is not None
    developer = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=vertex_emulator.base_url))
    assert list(developer.batches.list()) == []
    developer.close()
