"""Fixtures of the e2e suite: the Gemini emulator as a process, the warehouses, and the service checks.

Redis / PostgreSQL policy (as in ``tests/conftest.py``): on a user's machine a missing server SKIPS the tests
that need it, with a plain reason and a line at the end of the session; in CI
(``GEMINI_BATCH_REQUIRE_REDIS=1`` / ``GEMINI_BATCH_REQUIRE_POSTGRES=1``, set by ``.ci/run``) it FAILS them.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_gemini_batch.emulator import EmulatorControl
from airflow_gemini_batch.emulator.process import start_emulator_process
from tests.e2e.deployment import add_cleanup, register, remove_cleanup, stop_process

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
_REQUIRE_VARS = {"Redis": "GEMINI_BATCH_REQUIRE_REDIS", "PostgreSQL": "GEMINI_BATCH_REQUIRE_POSTGRES"}
_skips: list[str] = []

#: Rows of the source table: 3 shards of 1000 (``max_requests_per_job`` in the e2e DAGs).
ROWS = 3000
SHARDS = 3


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def require_service(name: str, where: str, check: Callable[[], None]) -> None:
    """Skip (locally) or fail (CI) when ``check()`` raises: the server ``name`` is not reachable."""
    try:
        check()
    except Exception as exc:
        reason = f"{name} not reachable at {where} ({type(exc).__name__}: {str(exc).strip()[:200]})"
        var = _REQUIRE_VARS[name]
        if os.environ.get(var) == "1":
            pytest.fail(f"{reason}; {var}=1 makes this a failure (CI).")
        _skips.append(reason)
        pytest.skip(reason)


def _redis_ping() -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    finally:
        client.close()


def pg_connect(dbname: str = PG["dbname"]) -> Any:
    import psycopg2

    return psycopg2.connect(
        connect_timeout=3, host=PG["host"], port=PG["port"], user=PG["user"], dbname=dbname
    )


@pytest.fixture(scope="session")
def redis_available() -> None:
    require_service("Redis", f"{REDIS_HOST}:{REDIS_PORT}", _redis_ping)


@pytest.fixture(scope="session")
def postgres_available() -> None:
    require_service("PostgreSQL", f"{PG['host']}:{PG['port']}", lambda: pg_connect().close())


@contextlib.contextmanager
def fresh_postgres_database(prefix: str = "e2e") -> Iterator[str]:
    """``CREATE DATABASE <prefix>_<random>``; dropped afterwards (open connections are ended), also when the
    session is interrupted or killed with SIGTERM (see ``deployment.add_cleanup``)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    def drop() -> None:
        admin = pg_connect()
        admin.autocommit = True
        try:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin.close()

    admin = pg_connect()
    admin.autocommit = True
    try:
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
    finally:
        admin.close()
    add_cleanup(drop)
    try:
        yield name
    finally:
        remove_cleanup(drop)
        drop()


@dataclass
class Emulator:
    base_url: str
    control: EmulatorControl
    log: Path


@contextlib.contextmanager
def emulator_process(folder: Path) -> Iterator[Emulator]:
    """The Gemini emulator as a process of its own (as ``make demo`` runs it), with short job lifetimes."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "emulator.log"
    proc, base_url = start_emulator_process(
        log, "--data-dir", str(folder / "data"), "--pending-seconds", "1", "--running-seconds", "2"
    )
    register(proc)
    try:
        yield Emulator(base_url, EmulatorControl(base_url), log)
    finally:
        stop_process(proc)


def product_rows(n: int = ROWS) -> list[tuple[int, str, str]]:
    return [(i, f"product {i}", ("tools", "garden", "kitchen")[i % 3]) for i in range(1, n + 1)]


def create_sqlite_source(path: Path, n: int = ROWS) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute(
            "CREATE TABLE e2e_products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL)"
        )
        db.executemany("INSERT INTO e2e_products VALUES (?, ?, ?)", product_rows(n))
        db.commit()
    finally:
        db.close()


def create_postgres_source(dbname: str, n: int = ROWS) -> None:
    conn = pg_connect(dbname)
    try:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE e2e_products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL)"
        )
        cur.executemany("INSERT INTO e2e_products VALUES (%s, %s, %s)", product_rows(n))
        conn.commit()
    finally:
        conn.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skips:
        terminalreporter.write_line(
            f"NOTE: e2e deployment test(s) were SKIPPED: {'; '.join(sorted(set(_skips)))}. Start Redis on "
            "127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (trust auth) to run them.",
            yellow=True,
            bold=True,
        )
