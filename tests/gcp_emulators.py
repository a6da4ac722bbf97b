"""The Google Cloud emulators as processes, and the pytest fixtures that start them (a plugin of tests/conftest.py).

Real wire protocols, offline: ``bqemulator`` (DuckDB behind the BigQuery REST and Storage Read gRPC APIs) and
``gcp-storage-emulator`` (the GCS JSON API), installed into a TOOL environment of their own
(``.venv-gcp-emulators``, from ``requirements/gcp-emulators.lock``; ``make test`` builds it), never into the
product's environment. Each emulator is started once per session on free ports, waited for by polling its
health endpoint (bounded), and stopped by PID at the end (also at exit or on SIGTERM: tests/e2e/deployment.py).

Policy, like PostgreSQL's: in CI (``GEMINI_BATCH_REQUIRE_GCP=1``, set by ``.ci/run``) an emulator that cannot
run FAILS the tests that need it; elsewhere they are skipped and the session ends with a line saying so.

Per test, :func:`gcp_conn` sets the variables the clients read (``BIGQUERY_EMULATOR_HOST`` for
google-cloud-bigquery, ``BIGQUERY_STORAGE_EMULATOR_HOST`` for the product's Storage Read client,
``STORAGE_EMULATOR_HOST`` for google-cloud-storage, ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` so gcsfs does
not first retry a TLS gRPC bucket-type probe for 60 s) and the ``google_cloud_default`` connection (type
``google_cloud_platform``, anonymous, project ``test-project``, ``gcs.endpoint`` for ObjectStoragePath).
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.deployment import free_port, poll, spawn, stop_process

REPO = Path(__file__).resolve().parent.parent
TOOL_VENV = REPO / ".venv-gcp-emulators"
PROJECT = "test-project"
BUCKET = "test-bucket"
GCP_CONN_ID = "google_cloud_default"
REQUIRE_GCP = os.environ.get("GEMINI_BATCH_REQUIRE_GCP") == "1"
#: bqemulator answers /healthz after ~5-6 s on an idle machine; generous for two busy cores.
START_TIMEOUT = 120.0

_gcp_skips: list[str] = []


class EmulatorUnavailable(RuntimeError):
    """The tool environment is missing or an emulator did not come up; the message says which and why."""


@dataclass
class BigQueryEmulator:
    rest_url: str  # http://127.0.0.1:P (BIGQUERY_EMULATOR_HOST wants the scheme)
    grpc_target: str  # 127.0.0.1:G (the Storage Read API)
    project: str = PROJECT


@dataclass
class StorageEmulator:
    base_url: str  # http://127.0.0.1:P
    data_dir: Path
    bucket: str = BUCKET


def _tool(name: str) -> Path:
    path = TOOL_VENV / "bin" / name
    if not path.exists():
        raise EmulatorUnavailable(
            f"{path.relative_to(REPO)} is missing: the GCP emulators' tool environment is not built "
            "(`make test` builds it from requirements/gcp-emulators.lock; bqemulator needs Python 3.11+)"
        )
    return path


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_healthy(what: str, url: str, proc: Any, log: Path) -> None:
    def probe() -> bool:
        if proc.poll() is not None:
            raise EmulatorUnavailable(f"{what} exited with {proc.returncode}:\n{_log_tail(log)}")
        return httpx.get(url, timeout=2.0).status_code < 500

    try:
        poll(f"{what} at {url}", probe, timeout=START_TIMEOUT, interval=0.2)
    except EmulatorUnavailable:
        raise
    except AssertionError as e:
        raise EmulatorUnavailable(f"{what} did not answer {url}: {e}\n{_log_tail(log)}") from e


def start_bigquery_emulator(
    workdir: Path, gcs_local_root: Path | None = None
) -> tuple[Any, BigQueryEmulator]:
    """``bqemulator start`` on free ports with the HOME the tool environment's setup INSTALLed DuckDB's
    spatial/avro extensions into (offline it would otherwise try to download them and exit)."""
    exe = _tool("bqemulator")
    rest, grpc = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIGQUERY_", "STORAGE_EMULATOR"))}
    env["HOME"] = str(TOOL_VENV / "home")
    if gcs_local_root is not None:
        env["BQEMU_GCS_LOCAL_ROOT"] = str(gcs_local_root)
    argv = [str(exe), "start", "--rest-port", str(rest), "--grpc-port", str(grpc), "--project", PROJECT]
    log = workdir / "bqemulator.log"
    proc = spawn([*argv, "--log-level", "warning"], log, env, workdir)
    try:
        _wait_healthy("bqemulator", f"http://127.0.0.1:{rest}/healthz", proc, log)
    except BaseException:
        stop_process(proc, grace=5.0)
        raise
    return proc, BigQueryEmulator(f"http://127.0.0.1:{rest}", f"127.0.0.1:{grpc}")


def start_storage_emulator(workdir: Path) -> tuple[Any, StorageEmulator]:
    """``gcp-storage-emulator`` on disk (so BigQuery load jobs could read its objects) with ``test-bucket``."""
    exe = _tool("gcp-storage-emulator")
    port = free_port()
    data = workdir / "gcs-data"
    data.mkdir(parents=True, exist_ok=True)
    argv = [str(exe), "-d", str(data), "start", "--host", "127.0.0.1", "--port", str(port)]
    log = workdir / "gcs-emulator.log"
    proc = spawn([*argv, "--default-bucket", BUCKET, "-q"], log, dict(os.environ), workdir)
    try:
        _wait_healthy("gcp-storage-emulator", f"http://127.0.0.1:{port}/storage/v1/b", proc, log)
    except BaseException:
        stop_process(proc, grace=5.0)
        raise
    return proc, StorageEmulator(f"http://127.0.0.1:{port}", data)


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
        proc, emulator = start_storage_emulator(gcp_workdir)
    except EmulatorUnavailable as e:
        _unavailable(str(e))
    try:
        yield emulator
    finally:
        stop_process(proc, grace=10.0)


@pytest.fixture(scope="session")
def bigquery_emulator(gcp_workdir: Path) -> Iterator[BigQueryEmulator]:
    try:
        proc, emulator = start_bigquery_emulator(gcp_workdir, gcp_workdir / "gcs-data" / ".cloudstorage")
    except EmulatorUnavailable as e:
        _unavailable(str(e))
    try:
        yield emulator
    finally:
        stop_process(proc, grace=10.0)


def connection_extras(storage: StorageEmulator | None) -> dict[str, Any]:
    extras: dict[str, Any] = {
        "project": PROJECT,
        "is_anonymous": True,
        "use_legacy_sql": False,
        "location": "US",
    }
    if storage is not None:
        extras["gcs.endpoint"] = storage.base_url
    return extras


def emulator_env(bigquery: BigQueryEmulator | None, storage: StorageEmulator | None) -> dict[str, str]:
    """The environment variables the official clients (and the product's Storage Read seam) read."""
    env = {"GOOGLE_CLOUD_PROJECT": PROJECT, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    if bigquery is not None:
        env["BIGQUERY_EMULATOR_HOST"] = bigquery.rest_url
        env["BIGQUERY_STORAGE_EMULATOR_HOST"] = bigquery.grpc_target
    if storage is not None:
        env["STORAGE_EMULATOR_HOST"] = storage.base_url
    return env


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
