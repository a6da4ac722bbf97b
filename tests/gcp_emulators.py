"""The pytest fixtures that start the Google Cloud emulators (a plugin of tests/conftest.py).

The processes themselves (tool environment, free ports, health wait, stop) are
``airflow_gemini_batch.emulator.gcp_processes``, shared with ``make demo-bigquery`` and the benchmarks. Each
emulator is started once per session and registered with the tests' process bookkeeping as soon as it exists
(tests/e2e/deployment.py: stopped by PID at the end, also at exit or on SIGTERM).

Policy, like PostgreSQL's: in CI (``GEMINI_BATCH_REQUIRE_GCP=1``, set by ``.ci/run``) an emulator that cannot
run FAILS the tests that need it; elsewhere they are skipped and the session ends with a line saying so.

Per test, :func:`gcp_conn` sets the variables the clients read (``emulator_env``: ``BIGQUERY_EMULATOR_HOST``,
``BIGQUERY_STORAGE_EMULATOR_HOST``, ``STORAGE_EMULATOR_HOST``, ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``) and
the ``google_cloud_default`` connection (type ``google_cloud_platform``, anonymous, project ``test-project``,
``gcs.endpoint`` for ObjectStoragePath).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_gemini_batch.emulator.gcp_processes import (
    BUCKET,
    GCP_CONN_ID,
    PROJECT,
    BigQueryEmulator,
    EmulatorUnavailable,
    StorageEmulator,
    connection_extras,
    emulator_env,
    start_bigquery_emulator,
    start_storage_emulator,
)
from tests.e2e.deployment import register, stop_process

__all__ = [
    "BUCKET",
    "GCP_CONN_ID",
    "PROJECT",
    "BigQueryEmulator",
    "StorageEmulator",
    "bq_read_client",
    "connection_extras",
    "emulator_env",
]

REQUIRE_GCP = os.environ.get("GEMINI_BATCH_REQUIRE_GCP") == "1"

_gcp_skips: list[str] = []


def _unavailable(reason: str) -> None:
    if REQUIRE_GCP:
        pytest.fail(f"{reason}\nGEMINI_BATCH_REQUIRE_GCP=1 makes this a failure (CI).", pytrace=False)
    _gcp_skips.append(reason.splitlines()[0])
    pytest.skip(reason.splitlines()[0])


@pytest.fixture(scope="session")
def gcp_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="gcp-emulators-"))


@pytest.fixture(scope="session")
def storage_emulator(gcp_workdir: Path) -> Iterator[StorageEmulator]:
    try:
        proc, emulator = start_storage_emulator(gcp_workdir, on_start=register)
    except EmulatorUnavailable as e:
        _unavailable(str(e))
    try:
        yield emulator
    finally:
        stop_process(proc, grace=10.0)


@pytest.fixture(scope="session")
def bigquery_emulator(gcp_workdir: Path) -> Iterator[BigQueryEmulator]:
    try:
        proc, emulator = start_bigquery_emulator(
            gcp_workdir, gcp_workdir / "gcs-data" / ".cloudstorage", on_start=register
        )
    except EmulatorUnavailable as e:
        _unavailable(str(e))
    try:
        yield emulator
    finally:
        stop_process(proc, grace=10.0)


def _set_gcp_conn(monkeypatch: pytest.MonkeyPatch, bigquery: Any, storage: Any) -> str:
    for name, value in emulator_env(bigquery, storage).items():
        monkeypatch.setenv(name, value)
    conn = {"conn_type": "google_cloud_platform", "extra": connection_extras(storage)}
    monkeypatch.setenv(f"AIRFLOW_CONN_{GCP_CONN_ID.upper()}", json.dumps(conn))
    return GCP_CONN_ID


@pytest.fixture
def gcs_conn(storage_emulator: StorageEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """``google_cloud_default`` and the variables for the GCS emulator only (no BigQuery emulator started)."""
    return _set_gcp_conn(monkeypatch, None, storage_emulator)


@pytest.fixture
def gcp_conn(
    bigquery_emulator: BigQueryEmulator, storage_emulator: StorageEmulator, monkeypatch: pytest.MonkeyPatch
) -> str:
    """``google_cloud_default`` and the variables for both emulators."""
    return _set_gcp_conn(monkeypatch, bigquery_emulator, storage_emulator)


@pytest.fixture
def bq_client(gcp_conn: str) -> Any:
    """A google-cloud-bigquery client on the emulator, through the provider's hook (as the product gets one)."""
    from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook

    return BigQueryHook(gcp_conn_id=gcp_conn).get_client(project_id=PROJECT)


@pytest.fixture
def bq_dataset(bq_client: Any) -> Iterator[str]:
    """A fresh dataset (``test-project.t_<hex>``), deleted with its tables afterwards."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    bq_client.create_dataset(name)
    yield name
    bq_client.delete_dataset(name, delete_contents=True, not_found_ok=True)


def bq_read_client(emulator: BigQueryEmulator) -> Any:
    """A bare Storage Read client on the emulator's gRPC port (for tests and benches, not the product)."""
    import grpc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.bigquery_storage_v1 import BigQueryReadClient
    from google.cloud.bigquery_storage_v1.services.big_query_read.transports import BigQueryReadGrpcTransport

    channel = grpc.insecure_channel(emulator.grpc_target, options=[("grpc.max_receive_message_length", -1)])
    return BigQueryReadClient(
        transport=BigQueryReadGrpcTransport(channel=channel, credentials=AnonymousCredentials())
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _gcp_skips:
        terminalreporter.write_line(
            f"NOTE: the Google Cloud emulator tests were SKIPPED: {_gcp_skips[0]}. "
            "Build the tool environment with `make setup-gcp-emulators` (Python 3.11+) to run them.",
            yellow=True,
            bold=True,
        )
