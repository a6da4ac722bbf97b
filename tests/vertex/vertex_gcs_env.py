"""What the Vertex AI gs:// tests share: the emulator started over the GCS emulator, and the connection.

The connection ``vertex_emu`` is an ordinary ``google_cloud_platform`` one (anonymous, project
``test-project``), with ``vertex_base_url`` pointing google-genai at the project's emulator and ``gcs.endpoint``
pointing ObjectStoragePath at ``gcp-storage-emulator``; the emulator's Vertex worker reads the shards and
writes ``predictions.jsonl`` through that same storage emulator.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from tests.gcp_emulators import BUCKET, connection_extras
from tests.reliability.helpers import pipeline, unique_dag_id

if TYPE_CHECKING:
    import pytest

    from airflow_gemini_batch.emulator import EmulatorServer
    from tests.gcp_emulators import StorageEmulator

VERTEX_CONN_ID = "vertex_emu"


def set_vertex_conn(monkeypatch: pytest.MonkeyPatch, server: EmulatorServer, storage: StorageEmulator) -> str:
    extra = {**connection_extras(storage), "vertex_base_url": server.base_url}
    conn = {"conn_type": "google_cloud_platform", "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{VERTEX_CONN_ID.upper()}", json.dumps(conn))
    return VERTEX_CONN_ID


def gcs_pipeline(
    wh: Any, gcs_conn: str, src: str, dst: str, load: dict[str, Any] | None = None, **submit: Any
) -> Any:
    """submit (SQLite/PostgreSQL source, gs:// staging, the Vertex connection) → wait → load into ``dst``."""
    staging = f"gs://{gcs_conn}@{BUCKET}/vx-{uuid.uuid4().hex[:8]}/staging"
    return pipeline(
        unique_dag_id("vertex_gcs"),
        source_conn_id=wh.conn_id,
        sql=f"SELECT id, name, category FROM {src}",
        destination_table=dst,
        staging=staging,  # type: ignore[arg-type]
        submit={"gemini_conn_id": VERTEX_CONN_ID, "model": "gemini-2.5-flash", **submit},
        wait={"gemini_conn_id": VERTEX_CONN_ID},
        load={"gemini_conn_id": VERTEX_CONN_ID, **(load or {})},
    )


def vertex_gcs_server(data_dir: Any, storage: StorageEmulator) -> EmulatorServer:
    """The emulator with its Vertex worker on the GCS emulator (no BigQuery needed for gs:// jobs)."""
    from airflow_gemini_batch.emulator import EmulatorServer

    return EmulatorServer(data_dir=data_dir, storage_endpoint=storage.base_url)
