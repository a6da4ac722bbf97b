"""Reliability: the API key never leaves the Airflow connection (architecture invariant 7).

One module-scoped world: a distinctive canary key is put in the ``gemini_batch`` connection, then three real
DAG runs go through every code path that talks to the API or reports on it — a run that succeeds (with a
deferred wait and a row the model refuses), a run whose job FAILS (deferred wait → typed error), and a run
whose ``create`` is rejected with 403 — plus direct calls that raise the API's and the transport's errors.
Afterwards every place a key could leak to is searched for the canary and for its random part alone:
process output and task logs, XCom, trigger kwargs (decrypted), rendered template fields, the UI plugin's
API, exception texts, the destination tables and the staging files.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sqlite3
import sys
import tempfile
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_gemini_batch.hooks.gemini import GeminiBatchHook
from tests.conftest import write_dag_to_db
from tests.reliability.helpers import (
    LogCapture,
    context,
    pipeline,
    submit_op,
    ti_states,
    unique_dag_id,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

CANARY_PART = uuid.uuid4().hex
CANARY = f"AIza-RELIABILITY-CANARY-{CANARY_PART}"


def leaks(text: str) -> list[str]:
    """The fragments of the key found in ``text`` (the whole key, or its random part on its own)."""
    return [f for f in (CANARY, CANARY_PART) if f in text]


@dataclass
class CanaryWorld:
    runs: dict[str, Any] = field(default_factory=dict)
    output: str = ""
    trigger_rows: list[tuple[str, str]] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    warehouse: str = ""
    staging: Path | None = None
    home: Path | None = None
    conn: str = ""


class _FdCapture:
    """Captures fds 1 and 2 and ``sys.stdout``/``sys.stderr`` (where the task runner's structlog writes) into
    one file, for a module-scoped fixture (pytest's ``capfd`` is per test)."""

    def __enter__(self) -> _FdCapture:
        self.file = tempfile.TemporaryFile()
        self.saved = [os.dup(1), os.dup(2)]
        for fd in (1, 2):
            os.dup2(self.file.fileno(), fd)
        self.stream = open(self.file.fileno(), "w", buffering=1, closefd=False, errors="replace")
        self.saved_sys = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = self.stream
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.flush()
        sys.stdout, sys.stderr = self.saved_sys
        for fd, saved in zip((1, 2), self.saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self.file.seek(0)
        self.text = self.file.read().decode("utf-8", "replace")
        self.file.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def world(airflow_db: Path, emulator_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import logging

    from airflow.models.trigger import Trigger
    from sqlalchemy import event

    tmp = tmp_path_factory.mktemp("canary")
    emulator = emulator_server
    emulator.control.reset()
    # The sensors really defer (a trigger row is written): each job is PENDING for the sensor's first poke.
    emulator.control.hold_state("PENDING", reads=1)
    mp = pytest.MonkeyPatch()
    conn = {"conn_type": "gemini_batch", "host": emulator.base_url, "password": CANARY}
    mp.setenv("AIRFLOW_CONN_GEMINI_BATCH_DEFAULT", json.dumps(conn))
    down = {"conn_type": "gemini_batch", "host": f"http://127.0.0.1:{_closed_port()}", "password": CANARY}
    mp.setenv("AIRFLOW_CONN_GEMINI_CANARY_DOWN", json.dumps(down))
    db = tmp / "warehouse.db"
    mp.setenv("AIRFLOW_CONN_WAREHOUSE_CANARY", json.dumps({"conn_type": "sqlite", "host": str(db)}))
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE src (id INTEGER PRIMARY KEY, name TEXT, category TEXT)")
        c.executemany(
            "INSERT INTO src VALUES (?, ?, ?)",
            [
                (1, "lamp", "home"),
                (2, "saw PLEASE_FAIL", "tools"),
                (3, "rake", "garden"),
                (4, "pan", "kitchen"),
            ],
        )

    w = CanaryWorld(warehouse=str(db), staging=tmp / "staging", home=airflow_db, conn=json.dumps(conn))

    def on_trigger(_mapper: Any, _conn: Any, target: Any) -> None:
        w.trigger_rows.append((target.classpath, target.encrypted_kwargs))

    event.listen(Trigger, "after_insert", on_trigger)
    handler = LogCapture()
    root = logging.getLogger()
    root.addHandler(handler)
    old_level, root.level = root.level, logging.DEBUG
    try:
        with _FdCapture() as fds:
            common = {"source_conn_id": "warehouse_canary", "sql": "SELECT id, name, category FROM src"}
            ok = pipeline(
                unique_dag_id("canary_ok"),
                destination_table="answers_ok",
                staging=w.staging / "ok",
                load={"max_failed_fraction": 0.5},
                **common,
            )
            w.runs["ok"] = write_dag_to_db(ok).test()
            emulator.control.set_job_behaviour(final_state="FAILED", count=1)
            failed = pipeline(
                unique_dag_id("canary_failed"),
                destination_table="answers_failed",
                staging=w.staging / "failed",
                **common,
            )
            w.runs["failed"] = write_dag_to_db(failed).test()
            emulator.control.inject_fault("batches.create", status=403)
            rejected = pipeline(
                unique_dag_id("canary_rejected"),
                destination_table="answers_rejected",
                staging=w.staging / "rejected",
                **common,
            )
            w.runs["rejected"] = write_dag_to_db(rejected).test()
            w.exceptions += _direct_exceptions(emulator, tmp)
        w.output = fds.text + "\n" + handler.text
    finally:
        root.removeHandler(handler)
        root.level = old_level
        event.remove(Trigger, "after_insert", on_trigger)
        mp.undo()
    yield w
    emulator.control.reset()


def _direct_exceptions(emulator: Any, tmp: Path) -> list[str]:
    """Errors raised straight at the caller: str, repr and the whole formatted traceback of each."""
    texts: list[str] = []

    def capture(fn: Any) -> None:
        try:
            fn()
        except BaseException as e:
            texts.extend([str(e), repr(e), "".join(traceback.format_exception(e))])
        else:
            raise AssertionError(f"{fn} was expected to raise")

    hook = GeminiBatchHook("gemini_batch_default")
    capture(lambda: hook.get_job("batches/does-not-exist"))  # 404 from the API
    emulator.control.inject_fault("files.download", status=401)
    capture(lambda: hook.download_file("files/whatever", tmp / "x.jsonl"))
    down = GeminiBatchHook("gemini_canary_down", retry_attempts=1)
    capture(lambda: down.get_job("batches/x"))  # transport error (connection refused)
    ok, message = down.test_connection()
    assert not ok
    texts.append(message)
    emulator.control.inject_fault("batches.create", status=400)
    op = submit_op("warehouse_canary", "SELECT id, name, category FROM src", tmp / "direct")
    capture(lambda: op.execute(context()))  # type: ignore[arg-type]
    return texts


def _dag_ids(world: CanaryWorld) -> list[str]:
    return [r.dag_id for r in world.runs.values()]


def test_R40_the_runs_really_happened(world):
    """The positive control: the searched surfaces hold what the three runs produced."""
    assert world.runs["ok"].state == "success"
    assert ti_states(world.runs["failed"])["wait"] == "failed"
    assert ti_states(world.runs["rejected"])["submit"] == "failed"
    assert "GeminiBatchJobFailedError" in world.output and "GeminiBatchSubmitError" in world.output
    assert "403" in world.output and len(world.trigger_rows) >= 2
    assert any("404" in t for t in world.exceptions) and any("Connect" in t for t in world.exceptions)


def test_R41_task_logs_and_process_output_never_contain_the_key(world):
    assert leaks(world.output) == []
    log_dir = world.home / "logs"
    for path in log_dir.rglob("*") if log_dir.exists() else []:
        if path.is_file():
            assert leaks(path.read_text(errors="replace")) == [], path


def test_R42_xcom_values_never_contain_the_key(world):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        xcoms = session.scalars(select(XComModel).where(XComModel.dag_id.in_(_dag_ids(world)))).all()
        assert len(xcoms) >= 4
        for row in xcoms:
            assert leaks(json.dumps(row.value, default=str)) == [], (row.task_id, row.key)
            assert leaks(json.dumps(XComModel.deserialize_value(row), default=str)) == []


def test_R43_trigger_kwargs_and_events_never_contain_the_key(world):
    from airflow.models import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from sqlalchemy import select

    assert world.trigger_rows
    for classpath, encrypted in world.trigger_rows:
        kwargs = Trigger._decrypt_kwargs(encrypted)
        assert classpath == "airflow_gemini_batch.triggers.job.GeminiBatchJobTrigger"
        assert kwargs["gemini_conn_id"] == "gemini_batch_default" and kwargs["job_names"]
        assert leaks(json.dumps(kwargs, default=str)) == []
    with create_session() as session:
        for t in session.scalars(select(Trigger)).all():
            assert leaks(json.dumps(t.kwargs, default=str)) == []
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id.in_(_dag_ids(world)))).all()
        for ti in tis:
            assert leaks(json.dumps(ti.next_kwargs, default=str)) == [], ti.task_id


def test_R44_rendered_template_fields_never_contain_the_key(world):
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rendered = session.scalars(select(RTIF).where(RTIF.dag_id.in_(_dag_ids(world)))).all()
        assert rendered
        for row in rendered:
            assert leaks(json.dumps(row.rendered_fields, default=str)) == [], row.task_id


def test_R45_the_ui_api_never_returns_the_key(world):
    os.environ.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,viewer:viewer,op:op")
    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.configuration import conf
    from fastapi.testclient import TestClient

    if not conf.get("api_auth", "jwt_secret", fallback=""):
        os.environ["AIRFLOW__API_AUTH__JWT_SECRET"] = secrets.token_urlsafe(32)
    mp = pytest.MonkeyPatch()
    mp.setenv("AIRFLOW_CONN_GEMINI_BATCH_DEFAULT", world.conn)  # live states are read with the canary key
    try:
        with TestClient(create_app()) as client:
            jwt = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
            headers = {"Authorization": f"Bearer {jwt}"}
            responses = []
            for dag_id in _dag_ids(world):
                r = client.get("/gemini-batch/api/jobs", params={"dag_id": dag_id}, headers=headers)
                assert r.status_code == 200, r.text
                responses.append(r.text)
                for job in r.json()["jobs"]:
                    detail = client.get(f"/gemini-batch/api/jobs/{job['job_id']}", headers=headers)
                    responses.append(detail.text)
            responses.append(client.get("/gemini-batch/ui/", headers=headers).text)
    finally:
        mp.undo()
    assert len(responses) >= 4
    # The live state really came from the API, read with the canary connection.
    assert any('"state_source":"live"' in t and '"live_error":null' in t for t in responses), responses[0]
    for text in responses:
        assert leaks(text) == []


def test_R46_exception_texts_and_loaded_error_messages_never_contain_the_key(world):
    assert len(world.exceptions) >= 10
    for text in world.exceptions:
        assert leaks(text) == [], text[:500]
    with sqlite3.connect(world.warehouse) as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in c.execute(f'SELECT * FROM "{table}"'):
                assert leaks(json.dumps(row, default=str)) == [], table
    for path in world.staging.rglob("*"):
        if path.is_file():
            assert leaks(path.read_text(errors="replace")) == [], path
