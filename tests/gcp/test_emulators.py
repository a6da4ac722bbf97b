"""Smoke tests of the GCP emulators through the official clients and the provider's hooks: each wire protocol
the product relies on answers as the real service does (a failure here says the tool environment is broken,
not the product)."""

from __future__ import annotations

import io
import uuid
from typing import Any

import orjson
import pytest

from tests.gcp_emulators import BUCKET, PROJECT, bq_read_client

pytestmark = pytest.mark.timeout(300)


def test_bigquery_load_query_and_storage_read(
    bq_client: Any, bq_dataset: str, bigquery_emulator: Any
) -> None:
    from google.cloud import bigquery

    table = f"{PROJECT}.{bq_dataset}.prompts"
    schema = [bigquery.SchemaField("id", "INT64"), bigquery.SchemaField("name", "STRING")]
    data = b"".join(orjson.dumps({"id": i, "name": f"p{i}"}) + b"\n" for i in range(50))
    config = bigquery.LoadJobConfig(schema=schema, source_format="NEWLINE_DELIMITED_JSON")
    bq_client.load_table_from_file(io.BytesIO(data), table, job_config=config).result(timeout=60)

    rows = list(bq_client.query(f"SELECT COUNT(*) AS n, SUM(id) AS s FROM `{table}`").result(timeout=60))
    assert (rows[0]["n"], rows[0]["s"]) == (50, sum(range(50)))

    arrow = bq_client.list_rows(table).to_arrow(bqstorage_client=bq_read_client(bigquery_emulator))
    assert sorted(arrow.column("id").to_pylist()) == list(range(50))


def test_gcs_through_the_client_the_hook_and_object_storage_path(gcs_conn: str) -> None:
    from airflow.providers.google.cloud.hooks.gcs import GCSHook
    from airflow.sdk import ObjectStoragePath

    name = f"smoke/{uuid.uuid4().hex}.txt"
    hook = GCSHook(gcp_conn_id=gcs_conn)
    hook.upload(BUCKET, name, data=b"hello")
    assert hook.download(BUCKET, name) == b"hello"

    path = ObjectStoragePath(f"gs://{BUCKET}/{name}", conn_id=gcs_conn)
    assert path.read_bytes() == b"hello"
    other = ObjectStoragePath(f"gs://{BUCKET}/{name}.copy", conn_id=gcs_conn)
    other.write_bytes(b"world")
    assert hook.download(BUCKET, f"{name}.copy") == b"world"
