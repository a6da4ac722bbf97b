"""Shared builders for the reliability suite: the real three-task pipeline, run by real Airflow.

Every reliability test names its id in the function name (``test_R07_...``); RELIABILITY.md cites those
functions, and ``tests/test_reliability_table.py`` keeps the table and the tests in step.

The pipeline is the product as a user wires it: ``GeminiBatchSubmitOperator`` → ``GeminiBatchJobSensor``
(deferrable; ``dag.test()`` runs its trigger inline) → ``GeminiBatchLoadResultsOperator`` into a real SQLite
table. Helpers read the end state back from the places a user would look: the metadata DB (task states,
XCom), the emulator's job list and the destination table.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson

from airflow_gemini_batch.operators.results import GeminiBatchLoadResultsOperator
from airflow_gemini_batch.operators.submit import GeminiBatchSubmitOperator
from airflow_gemini_batch.sensors.job import GeminiBatchJobSensor
from tests.polling import wait_until

#: Fast enough for a suite that runs on 2 cores in minutes, slow enough that a wait really polls.
POLL = 0.2
REPO = Path(__file__).resolve().parents[2]
START = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


class StateStore:
    """``context["task_state_store"]`` for operator-level runs: JSON round-tripped, kept across "tries"."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(self.data[key]) if key in self.data else default

    def set(self, key: str, value: Any) -> None:
        self.data[key] = json.dumps(value)


class RunTI:
    """The identity fields and ``xcom_push`` of a running task instance (operator-level runs)."""

    def __init__(self, task_id: str = "submit", run_id: str = "manual__2026-01-01") -> None:
        self.dag_id, self.task_id, self.run_id, self.map_index, self.try_number = (
            "reliability", task_id, run_id, -1, 1
        )  # fmt: skip
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = orjson.loads(orjson.dumps(value))  # XCom values must be JSON


def context(store: StateStore | None = None, task_id: str = "submit") -> dict[str, Any]:
    ctx: dict[str, Any] = {"ti": RunTI(task_id)}
    if store is not None:
        ctx["task_state_store"] = store
    return ctx


def submit_op(conn_id: str, sql: str, staging: Path, **kw: Any) -> GeminiBatchSubmitOperator:
    kw.setdefault("prompt_template", "Describe {name} ({category}).")
    kw.setdefault("create_retry_base_seconds", 0.01)
    kw.setdefault("task_id", "submit")
    return GeminiBatchSubmitOperator(sql=sql, source_conn_id=conn_id, staging_path=str(staging), **kw)


def load_op(conn_id: str, table: str, manifest: Any, **kw: Any) -> GeminiBatchLoadResultsOperator:
    kw.setdefault("task_id", "load")
    kw.setdefault("key_column_type", "INTEGER")
    return GeminiBatchLoadResultsOperator(
        manifest=manifest, destination_conn_id=conn_id, destination_table=table, **kw
    )


def pipeline(
    dag_id: str,
    *,
    source_conn_id: str,
    sql: str,
    destination_table: str,
    staging: Path,
    submit: dict[str, Any] | None = None,
    wait: dict[str, Any] | None = None,
    load: dict[str, Any] | None = None,
    default_args: dict[str, Any] | None = None,
) -> Any:
    """submit → wait (deferrable sensor) → load, as a user writes it."""
    from airflow.sdk import DAG

    with DAG(
        dag_id=dag_id, schedule=None, start_date=START, default_args=default_args or {}, catchup=False
    ) as dag:
        s = submit_op(source_conn_id, sql, staging, **(submit or {}))
        w = GeminiBatchJobSensor(
            task_id="wait",
            manifest=s.output,
            **{"deferrable": True, "poll_interval": POLL, "timeout": 120, **(wait or {})},
        )
        lo = load_op(source_conn_id, destination_table, s.output, **(load or {}))
        s >> w >> lo
    return dag


def unique_dag_id(base: str) -> str:
    return f"rel_{base}_{uuid.uuid4().hex[:6]}"


def _task_instances(dag_run: Any) -> list[Any]:
    """The task instances of a finished run, read from the metadata DB (detached)."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
            )
        ).all()
        session.expunge_all()
        return list(tis)


def ti_states(dag_run: Any) -> dict[str, str]:
    """``{task_id: state}`` of a finished run."""
    return {
        ti.task_id: str(ti.state.value if hasattr(ti.state, "value") else ti.state)
        for ti in _task_instances(dag_run)
    }


def try_numbers(dag_run: Any) -> dict[str, int]:
    return {ti.task_id: ti.try_number for ti in _task_instances(dag_run)}


class LogCapture(logging.Handler):
    """Everything the process logged while a test ran: stdlib log records and the captured stdout/stderr.

    ``dag.test()`` runs tasks in-process; the task runner writes its logs (including a failed task's
    traceback and exception text) through structlog to stdout, and our code and the SDK log through the
    stdlib root logger. Both end up in :attr:`text`, which is where error texts and secrets are looked for.
    """

    def __init__(self, capfd: Any = None) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.capfd = capfd
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a broken record must not break the run under test
            self.lines.append(repr(record.__dict__))

    @property
    def text(self) -> str:
        if self.capfd is not None:
            out, err = self.capfd.readouterr()
            self.lines += [out, err]
        return "\n".join(self.lines)


def rows(wh: Any, table: str) -> dict[Any, tuple[str, str | None, str | None]]:
    """``{key: (outcome, text, error_message)}`` of a destination table."""
    return {r[0]: r[1:] for r in wh.query(f'SELECT "key", outcome, text, error_message FROM {table}')}


def outcome_counts(wh: Any, table: str) -> dict[str, int]:
    return dict(wh.query(f"SELECT outcome, COUNT(*) FROM {table} GROUP BY outcome"))


def run_inline(
    wh: Any,
    src: str,
    dst: str,
    staging: Path,
    store: StateStore | None = None,
    submit: dict | None = None,
    load: dict | None = None,
    wait: dict | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """submit → wait (poke mode) → load, by calling the operators directly: (manifest, wait, load summary)."""
    store = store if store is not None else StateStore()
    manifest = submit_op(
        wh.conn_id, f"SELECT id, name, category FROM {src}", staging, **(submit or {})
    ).execute(context(store))
    sensor = GeminiBatchJobSensor(
        task_id="wait", manifest=manifest, **{"poll_interval": 0.05, "timeout": 60, **(wait or {})}
    )
    waited = sensor.execute(context(task_id="wait"))
    summary = load_op(wh.conn_id, dst, manifest, **(load or {})).execute(context(task_id="load"))
    return manifest, waited, summary


def rerun_task(dag: Any, dag_run: Any, task_id: str) -> str:
    """Clear one finished task instance of ``dag_run`` and run it again, as a user's "Clear" does.

    The same DAG run (so the same task state store rows), a new try number, the real task runner; the
    trigger of a deferring task runs inline as in ``dag.test()``. Returns the task's new state.
    """
    from airflow.models import TaskInstance
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_run.dag_id,
                TaskInstance.run_id == dag_run.run_id,
                TaskInstance.task_id == task_id,
            )
        ).one()
        ti.try_number += 1
        ti.state = TaskInstanceState.SCHEDULED
        session.commit()
        session.refresh(ti)
        session.expunge(ti)
    _run_task(ti=ti, task=dag.task_dict[task_id], run_triggerer=True)
    return ti_states(dag_run)[task_id]


def sigkill_worker_when(emulator: Any, args: dict[str, Any], call: str, count: int, what: str) -> None:
    """Run ``tests.reliability.kill_target`` with ``args`` in a real process and SIGKILL it (no finally, no
    on_kill) as soon as the emulator has counted ``count`` calls of ``call``: the kill lands at an outcome
    the emulator saw, never after a wall-clock margin. ``what`` names the awaited step in the failure."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.kill_target", json.dumps(args)],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def reached() -> bool:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        return emulator.control.calls()[call] >= count

    try:
        wait_until(reached, timeout=90, what=f"the worker {what}")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def batch_dag(wh: Any, src: str, dst: str, staging: Path, **kw: Any) -> Any:
    """One ``GeminiBatchOperator`` task from the ``id, name, category`` prompts table ``src`` into ``dst``."""
    from airflow.sdk import DAG

    from airflow_gemini_batch.operators.batch import GeminiBatchOperator

    with DAG(dag_id=unique_dag_id("batch"), schedule=None, start_date=START, catchup=False) as dag:
        GeminiBatchOperator(
            task_id="batch",
            sql=f"SELECT id, name, category FROM {src}",
            source_conn_id=wh.conn_id,
            prompt_template="Describe {name} ({category}).",
            destination_conn_id=wh.conn_id,
            destination_table=dst,
            key_column_type="INTEGER",
            staging_path=str(staging),
            create_retry_base_seconds=0.01,
            deferrable=True,
            poll_interval=POLL,
            **kw,
        )
    return dag
