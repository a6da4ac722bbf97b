"""Shared fixtures: an isolated Airflow home, the Gemini emulator, and the two warehouses (SQLite, PostgreSQL).

Real parts only: the emulator is a real HTTP server the real google-genai SDK talks to; the warehouses are a
real SQLite file and the real PostgreSQL server at 127.0.0.1:5432 (database ``test``).

PostgreSQL policy: in CI (``GEMINI_BATCH_REQUIRE_POSTGRES=1``, set by ``.ci/run``) a missing server FAILS the
PostgreSQL tests; elsewhere they are skipped and the session ends with a plain line saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

# The Google Cloud emulators' fixtures (bigquery_emulator, storage_emulator, gcp_conn, gcs_conn, bq_dataset).
pytest_plugins = ("tests.gcp_emulators", "tests.vertex_emulator")

# Airflow reads its home at import time: point it at a throw-away folder before anything imports airflow.
# Guarded, because a test module importing ``tests.conftest`` runs this module a second time.
if "GEMINI_BATCH_TEST_AIRFLOW_HOME" not in os.environ:
    os.environ["GEMINI_BATCH_TEST_AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="gemini-batch-tests-airflow-")
_AIRFLOW_HOME = Path(os.environ["GEMINI_BATCH_TEST_AIRFLOW_HOME"])
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ.setdefault("AIRFLOW__CORE__ALLOWED_DESERIALIZATION_CLASSES_REGEXP", r"airflow\..*")
os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")

PG_DSN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
REQUIRE_POSTGRES = os.environ.get("GEMINI_BATCH_REQUIRE_POSTGRES") == "1"
_pg_skips: list[str] = []


# ---- Airflow metadata DB ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """``airflow db migrate`` once per session (~5 s); needed by dag.test(), XCom, task_state_store, the UI."""
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return _AIRFLOW_HOME


def write_dag_to_db(dag: Any) -> Any:
    """Write a DAG built inside a test to the metadata DB, as the DAG processor would.

    ``dag.test()`` in Airflow 3.3 refuses a DAG that has no serialized version, and only finds DAGs through
    bundles; a DAG defined in a test function is in no bundle, so it is written here under the default one.
    """
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    with create_session() as session:
        DagBundlesManager().sync_bundles_to_db(session=session)
        session.flush()
        update_dag_parsing_results_in_db(
            "dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(), session=session
        )
    return dag


@pytest.fixture
def register_dag(airflow_db: Path) -> Any:
    """``register_dag(dag)``: :func:`write_dag_to_db`, after the metadata DB is migrated."""
    return write_dag_to_db


def uploaded_lines(emulator: Any, file_name: str) -> list[bytes]:
    """The lines of a file uploaded to the emulator, as the service received them (the local shard file is
    deleted once its job exists)."""
    return (emulator.data_dir / "files" / file_name.removeprefix("files/")).read_bytes().splitlines()


def uploaded_files(emulator: Any) -> list[str]:
    """Names of the files uploaded to the emulator that still exist (responses files not counted)."""
    from google import genai

    client = genai.Client(api_key="any", http_options={"base_url": emulator.base_url})
    return [f.name for f in client.files.list() if str(f.source).endswith("UPLOADED") and f.name]


def xcom_of(dag_run: Any, task_id: str, key: str = "return_value") -> Any:
    """The XCom value a task of a finished ``dag.test()`` run pushed under ``key``."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter(
                XComModel.dag_id == dag_run.dag_id,
                XComModel.run_id == dag_run.run_id,
                XComModel.task_id == task_id,
                XComModel.key == key,
            )
            .first()
        )
        return XComModel.deserialize_value(row) if row else None


# ---- Gemini emulator ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[Any]:
    from airflow_gemini_batch.emulator import EmulatorServer

    with EmulatorServer(data_dir=tempfile.mkdtemp(prefix="gemini-emulator-")) as server:
        yield server


@pytest.fixture
def emulator(emulator_server: Any) -> Any:
    """The session's emulator, reset to a clean state (no files, jobs, faults; instant lifecycle)."""
    emulator_server.control.reset()
    return emulator_server


TEST_API_KEY = "test-key-not-a-secret"


@pytest.fixture
def gemini_conn(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """``gemini_batch_default`` pointing at the emulator, as a user would set it (AIRFLOW_CONN_ JSON)."""
    conn = {"conn_type": "gemini_batch", "host": emulator.base_url, "password": TEST_API_KEY}
    monkeypatch.setenv("AIRFLOW_CONN_GEMINI_BATCH_DEFAULT", json.dumps(conn))
    return "gemini_batch_default"


def inline_requests(n: int, prefix: str = "k") -> list[dict[str, Any]]:
    """``n`` tiny inline GenerateContent requests keyed ``<prefix>0..``."""
    return [
        {
            "contents": [{"role": "user", "parts": [{"text": f"say {prefix}{i}"}]}],
            "metadata": {"key": f"{prefix}{i}"},
        }
        for i in range(n)
    ]


@pytest.fixture
def make_jobs(gemini_conn: str) -> Any:
    """``make_jobs(["a", "b"], requests=3)`` → job names, one inline job per display name (real SDK)."""
    from airflow_gemini_batch.hooks.gemini import GeminiBatchHook

    def _make(display_names: list[str], requests: int = 2) -> list[str]:
        hook = GeminiBatchHook(gemini_conn)
        return [
            hook.create_job(
                model="gemini-2.5-flash", display_name=d, inline_requests=inline_requests(requests, d)
            ).name
            for d in display_names
        ]

    return _make


# ---- warehouses ---------------------------------------------------------------------------------------------


class Warehouse:
    """A real database reached through an Airflow connection id, plus helpers for arranging and asserting."""

    def __init__(self, kind: str, conn_id: str, connect: Any, placeholder: str) -> None:
        self.kind = kind
        self.conn_id = conn_id
        self._connect = connect
        self.ph = placeholder
        self._tables: list[str] = []

    def table(self, base: str) -> str:
        """A fresh table name (unique per test, dropped afterwards)."""
        name = f"{base}_{uuid.uuid4().hex[:8]}"
        self._tables.append(name)
        return name

    def execute(self, sql: str, params: Any = None, many: bool = False) -> None:
        conn = self._connect()
        try:
            cur = conn.cursor()
            if many:
                cur.executemany(sql, params)
            else:
                cur.execute(sql, params or ())
            conn.commit()
        finally:
            conn.close()

    def query(self, sql: str, params: Any = None) -> list[tuple]:
        conn = self._connect()
        try:
            cur = conn.cursor()
            cur.execute(sql, params or ())
            return [tuple(r) for r in cur.fetchall()]
        finally:
            conn.close()

    def create_prompts_table(self, table: str, n: int, start: int = 0) -> None:
        """``(id INTEGER PRIMARY KEY, name TEXT, category TEXT)`` with ``n`` deterministic rows."""
        self.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, name TEXT, category TEXT)")
        rows = [(i, f"product {i}", ("tools", "garden", "kitchen")[i % 3]) for i in range(start, start + n)]
        self.execute(f"INSERT INTO {table} VALUES ({self.ph}, {self.ph}, {self.ph})", rows, many=True)

    def drop_all(self) -> None:
        for t in self._tables:
            with contextlib.suppress(Exception):
                self.execute(f"DROP TABLE IF EXISTS {t}")


@pytest.fixture
def sqlite_warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Warehouse]:
    path = tmp_path / "warehouse.db"
    monkeypatch.setenv(
        "AIRFLOW_CONN_WAREHOUSE_SQLITE", json.dumps({"conn_type": "sqlite", "host": str(path)})
    )
    yield Warehouse("sqlite", "warehouse_sqlite", lambda: sqlite3.connect(path), "?")


def _pg_connect() -> Any:
    import psycopg2

    return psycopg2.connect(connect_timeout=3, **PG_DSN)


@pytest.fixture
def postgres_warehouse(monkeypatch: pytest.MonkeyPatch) -> Iterator[Warehouse]:
    try:
        _pg_connect().close()
    except Exception as e:
        reason = f"PostgreSQL not reachable at {PG_DSN['host']}:{PG_DSN['port']} ({type(e).__name__})"
        if REQUIRE_POSTGRES:
            pytest.fail(f"{reason}; GEMINI_BATCH_REQUIRE_POSTGRES=1 makes this a failure (CI).")
        _pg_skips.append(reason)
        pytest.skip(reason)
    conn = {
        "conn_type": "postgres",
        "host": PG_DSN["host"],
        "port": PG_DSN["port"],
        "login": PG_DSN["user"],
        "schema": PG_DSN["dbname"],
    }
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_PG", json.dumps(conn))
    wh = Warehouse("postgres", "warehouse_pg", _pg_connect, "%s")
    yield wh
    wh.drop_all()


@pytest.fixture(params=["sqlite", "postgres"])
def warehouse(request: pytest.FixtureRequest) -> Warehouse:
    """Run the test once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_warehouse")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _pg_skips:
        terminalreporter.write_line(
            f"NOTE: {len(_pg_skips)} PostgreSQL warehouse test(s) were SKIPPED: {_pg_skips[0]}. "
            "Start PostgreSQL on 127.0.0.1:5432 (trust auth, database 'test') to run them.",
            yellow=True,
            bold=True,
        )
