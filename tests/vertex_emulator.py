"""The emulator's Vertex AI side on top of the BigQuery and GCS emulators, and the connection the product uses
for it (a plugin of tests/conftest.py).

:func:`vertex_conn` is ``google_cloud_default`` (type ``google_cloud_platform``, anonymous, project
``test-project``) with ``vertex_base_url`` pointing at the emulator and ``vertex_location`` us-central1: the
same connection serves BigQuery (through ``BIGQUERY_EMULATOR_HOST``) and Vertex AI, as in a deployment.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from tests.gcp_emulators import GCP_CONN_ID, connection_extras

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.gcp_emulators import BigQueryEmulator, StorageEmulator

VERTEX_LOCATION = "us-central1"


@pytest.fixture(scope="session")
def vertex_emulator_server(
    tmp_path_factory: pytest.TempPathFactory,
    bigquery_emulator: BigQueryEmulator,
    storage_emulator: StorageEmulator,
) -> Iterator[Any]:
    from airflow_gemini_batch.emulator import EmulatorServer

    server = EmulatorServer(
        data_dir=tmp_path_factory.mktemp("vertex-emulator"),
        bigquery_endpoint=bigquery_emulator.rest_url,
        storage_endpoint=storage_emulator.base_url,
    )
    with server:
        yield server


@pytest.fixture
def vertex_emulator(vertex_emulator_server: Any) -> Any:
    """The session's Vertex-capable emulator, reset (no jobs, faults, holds)."""
    vertex_emulator_server.control.reset()
    return vertex_emulator_server


@pytest.fixture
def vertex_conn(
    vertex_emulator: Any, gcp_conn: str, storage_emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> str:
    """``google_cloud_default`` for BigQuery and Vertex AI on the emulators."""
    extras = connection_extras(storage_emulator)
    extras.update(vertex_base_url=vertex_emulator.base_url, vertex_location=VERTEX_LOCATION)
    conn = {"conn_type": "google_cloud_platform", "extra": extras}
    monkeypatch.setenv(f"AIRFLOW_CONN_{GCP_CONN_ID.upper()}", json.dumps(conn))
    return gcp_conn


@pytest.fixture(scope="session")
def vertex_gcs_emulator_server(
    tmp_path_factory: pytest.TempPathFactory, storage_emulator: StorageEmulator
) -> Iterator[Any]:
    """The emulator with its Vertex worker on the GCS emulator only (gs:// jobs need no BigQuery)."""
    from tests.vertex.vertex_gcs_env import vertex_gcs_server

    with vertex_gcs_server(tmp_path_factory.mktemp("vertex-gcs"), storage_emulator) as server:
        yield server


@pytest.fixture
def vertex_gcs_emulator(
    vertex_gcs_emulator_server: Any, storage_emulator: Any, gcs_conn: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """That emulator, reset, with the Vertex AI connection pointing at it."""
    from tests.vertex.vertex_gcs_env import set_vertex_conn

    vertex_gcs_emulator_server.control.reset()
    set_vertex_conn(monkeypatch, vertex_gcs_emulator_server, storage_emulator)
    return vertex_gcs_emulator_server
