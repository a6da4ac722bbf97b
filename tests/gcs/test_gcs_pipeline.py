"""GCS end to end: a real ``dag.test()`` run with the input file, the staging folder and the results on ``gs://``.

Everything Google goes through the ``google_cloud_platform`` connection ``google_cloud_default`` and the Google
provider's parts - ObjectStoragePath's ``gs://`` file system (the provider's gcsfs ``get_fs``) for our reads and
writes, ``GCSHook`` to check what landed - against ``gcp-storage-emulator`` (``tests/gcp_emulators.py``). The
Gemini side is the project's emulator, as everywhere.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import orjson

from airflow_gemini_batch.manifest import RESULTS_SUMMARY_KIND
from tests.conftest import xcom_of
from tests.gcp_emulators import BUCKET


def gcs_names(conn_id: str, prefix: str) -> list[str]:
    """Object names under ``prefix``, read with the provider's GCSHook (not the file system we write with)."""
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    return sorted(
        name.removeprefix(prefix) for name in GCSHook(gcp_conn_id=conn_id).list(BUCKET, prefix=prefix)
    )


def gcs_bytes(conn_id: str, name: str) -> bytes:
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    return GCSHook(gcp_conn_id=conn_id).download(BUCKET, name)


def test_input_staging_and_results_on_gcs_in_a_real_dag_run(gcs_conn, gemini_conn, emulator, register_dag):
    """input_path, staging_path and destination_path on gs://: one row per key, twice (a rerun replaces the
    files, leaves no temporary object); the key lists and skipped keys are in the bucket, nowhere else."""
    from airflow.providers.google.cloud.hooks.gcs import GCSHook
    from airflow.sdk import DAG

    from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
    from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
    from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor

    prefix = f"e2e-{uuid.uuid4().hex[:8]}/"
    lines = [
        orjson.dumps({"key": i, "request": {"contents": [{"parts": [{"text": f"describe item {i}"}]}]}})
        for i in range(23)
    ]
    lines.insert(7, b'{"key": 99, "no_request": true}')  # skipped, and listed in the bucket
    GCSHook(gcp_conn_id=gcs_conn).upload(
        BUCKET, f"{prefix}input/requests.jsonl", data=b"\n".join(lines) + b"\n"
    )
    base = f"gs://{gcs_conn}@{BUCKET}/{prefix}"

    with DAG("gcs_pipeline", schedule=None, start_date=datetime.datetime(2026, 1, 1)) as dag:
        submit = GeminiBatchSubmitOperator(
            task_id="submit",
            input_path=f"{base}input/requests.jsonl",
            staging_path=f"{base}staging",
            max_requests_per_job=10,
            on_invalid_row="skip",
            create_retry_base_seconds=0.01,
        )
        wait = GeminiBatchJobSensor(
            task_id="wait", manifest=submit.output, deferrable=True, poll_interval=0.2, timeout=120
        )
        load = GeminiBatchLoadResultsOperator(
            task_id="load",
            manifest=submit.output,
            destination_path=f"{base}results",
            output_format="parquet",
            key_column_type="INTEGER",
        )
        submit >> wait >> load
    register_dag(dag)

    first: dict[str, Any] | None = None
    for _ in range(2):  # a rerun (a new DAG run) replaces the files
        run = dag.test()
        assert run.state == "success"
        summary = xcom_of(run, "load")
        assert summary["kind"] == RESULTS_SUMMARY_KIND and summary["counts"]["succeeded"] == 23
        assert summary["destination"]["path"] == f"{base}results/results.parquet"
        first = first or xcom_of(run, "submit")

    assert first is not None and first["skipped_count"] == 1
    assert [s["keys_path"] for s in first["shards"]] == [
        f"{base}staging/keys-0000{i}.jsonl" for i in range(3)
    ]
    staged = gcs_names(gcs_conn, f"{prefix}staging/")
    markers = [name for name in staged if name.startswith("creates-")]  # one create marker per task instance
    assert len(markers) == 2 and [name for name in staged if name not in markers] == [
        "fingerprints-00000.txt", "fingerprints-00001.txt", "fingerprints-00002.txt",
        "keys-00000.jsonl", "keys-00001.jsonl", "keys-00002.jsonl", "skipped_keys.jsonl",
    ]  # fmt: skip
    assert orjson.loads(gcs_bytes(gcs_conn, f"{prefix}staging/skipped_keys.jsonl"))["reason"] == "malformed"
    assert gcs_names(gcs_conn, f"{prefix}results/") == [
        "errors.jsonl",
        "results.parquet",
    ]  # no temporary object

    import io

    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(gcs_bytes(gcs_conn, f"{prefix}results/results.parquet")))
    assert sorted(table.column("key").to_pylist()) == list(range(23))
    assert set(table.column("outcome").to_pylist()) == {"succeeded"}
    assert len(emulator.control.jobs()) == 6  # 3 shards, each run its own jobs (a new run is a new identity)
