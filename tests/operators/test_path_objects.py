"""``input_path``, ``staging_path`` and ``destination_path`` given as ``ObjectStoragePath`` objects (with their
connection), not only as strings: a real ``dag.test()`` run on ``file://`` and on ``gs://`` (the GCS emulator),
the operators' templated fields rendered and the DAG serialised with those non-string values."""

from __future__ import annotations

import datetime
import io
import json
import uuid
from typing import Any

import orjson
import pyarrow.parquet as pq

from airflow_gemini_batch.manifest import RESULTS_SUMMARY_KIND
from tests.conftest import xcom_of

N = 12


def request_lines() -> bytes:
    lines = [
        orjson.dumps({"key": i, "request": {"contents": [{"parts": [{"text": f"describe item {i}"}]}]}})
        for i in range(N)
    ]
    return b"\n".join(lines) + b"\n"


def run_pipeline(base: Any, register_dag: Any, dag_id: str) -> tuple[Any, Any]:
    """The three places as ObjectStoragePath objects under ``base``; the DAG serialised, then run."""
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
    from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
    from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor

    with DAG(dag_id, schedule=None, start_date=datetime.datetime(2026, 1, 1)) as dag:
        submit = GeminiBatchSubmitOperator(
            task_id="submit",
            input_path=base / "input" / "requests.jsonl",
            staging_path=base / "staging",
            max_requests_per_job=5,
            create_retry_base_seconds=0.01,
        )
        wait = GeminiBatchJobSensor(
            task_id="wait", manifest=submit.output, deferrable=True, poll_interval=0.2, timeout=120
        )
        load = GeminiBatchLoadResultsOperator(
            task_id="load",
            manifest=submit.output,
            destination_path=base / "results",
            output_format="parquet",
            key_column_type="INTEGER",
        )
        submit >> wait >> load
    # The serialised DAG (what the scheduler and the UI read; a worker parses the DAG file) keeps each one with
    # its connection (ObjectStoragePath's serialised form, or its URI).
    serialized = DagSerialization.to_dict(dag)
    tasks = {t["__var"]["task_id"]: t["__var"] for t in serialized["dag"]["tasks"]}
    for task_id, field in (
        ("submit", "staging_path"),
        ("submit", "input_path"),
        ("load", "destination_path"),
    ):
        text = json.dumps(tasks[task_id][field])
        assert str(base.conn_id) in text if base.conn_id else text.startswith('"file://') or "file://" in text
    register_dag(dag)
    run = dag.test()
    assert run.state == "success"
    return run, xcom_of(run, "submit")


def check_results(run: Any, manifest: dict[str, Any], base: Any, data: bytes) -> None:
    summary = xcom_of(run, "load")
    assert summary["kind"] == RESULTS_SUMMARY_KIND and summary["counts"]["succeeded"] == N
    assert summary["destination"]["path"] == str(base / "results" / "results.parquet")
    assert manifest["staging_path"] == str(base / "staging"), "the manifest holds the URI (with its conn)"
    assert [s["keys_path"] for s in manifest["shards"]] == [
        str(base / "staging" / f"keys-0000{i}.jsonl") for i in range(3)
    ]
    table = pq.read_table(io.BytesIO(data))
    assert sorted(table.column("key").to_pylist()) == list(range(N))
    assert set(table.column("outcome").to_pylist()) == {"succeeded"}


def test_object_storage_paths_on_file(gemini_conn, emulator, register_dag, tmp_path):
    from airflow.sdk import ObjectStoragePath

    base = ObjectStoragePath(f"file://{tmp_path}")
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "requests.jsonl").write_bytes(request_lines())
    run, manifest = run_pipeline(base, register_dag, "path_objects_file")
    check_results(run, manifest, base, (tmp_path / "results" / "results.parquet").read_bytes())
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["errors.jsonl", "results.parquet"]


def test_object_storage_paths_on_gcs_carry_their_connection(gcs_conn, gemini_conn, emulator, register_dag):
    from airflow.providers.google.cloud.hooks.gcs import GCSHook
    from airflow.sdk import ObjectStoragePath

    from tests.gcp_emulators import BUCKET

    prefix = f"objs-{uuid.uuid4().hex[:8]}"
    hook = GCSHook(gcp_conn_id=gcs_conn)
    hook.upload(BUCKET, f"{prefix}/input/requests.jsonl", data=request_lines())
    base = ObjectStoragePath(f"gs://{BUCKET}/{prefix}", conn_id=gcs_conn)  # the connection as an argument
    run, manifest = run_pipeline(base, register_dag, "path_objects_gcs")
    assert str(base).startswith(f"gs://{gcs_conn}@{BUCKET}/")
    check_results(run, manifest, base, hook.download(BUCKET, f"{prefix}/results/results.parquet"))
    assert sorted(hook.list(BUCKET, prefix=f"{prefix}/results/")) == [
        f"{prefix}/results/errors.jsonl",
        f"{prefix}/results/results.parquet",
    ]
