"""``make demo`` on three dates: the example DAG is incremental, so the emulator is asked for 3000 requests, then
none (3000 reused, $0.00 spent), then - after ``make demo-change-rows N=30`` - exactly 30.

Drives the demo's DAG with ``dag.test(logical_date=...)`` (what ``airflow dags test`` runs) and the demo script's
own functions for the date, the row change and the report line.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import sqlite3
import sys

import pytest

from tests.conftest import REPO, xcom_of

DAG_ID = "gemini_batch_product_descriptions"


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo_script", REPO / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def warehouse_db(airflow_db, gemini_conn, monkeypatch, tmp_path):
    monkeypatch.setenv(
        "AIRFLOW_CONN_GEMINI_BATCH_WAREHOUSE",
        json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "warehouse.db")}),
    )
    monkeypatch.setenv("GEMINI_BATCH_POLL_INTERVAL", "0.2")
    monkeypatch.setenv("GEMINI_BATCH_RETRIES", "0")
    return tmp_path / "warehouse.db"


def _run_on(day: str, register_dag, demo):
    from airflow.dag_processing.dagbag import BundleDagBag

    sys.modules.pop("_gemini_batch_example_settings", None)  # reads the environment at import
    dag = BundleDagBag(dag_folder=str(REPO / "dags"), bundle_path=REPO / "dags").get_dag(DAG_ID)
    register_dag(dag)
    logical_date = datetime.datetime.fromisoformat(demo.logical_date_of(day))
    run = dag.test(logical_date=logical_date, run_after=logical_date)
    assert run.state == "success"
    return xcom_of(run, "load", "gemini_batch_results_summary"), xcom_of(run, "submit")


def _sent(emulator) -> tuple[int, int, int]:
    calls = emulator.control.calls()
    requests = sum(j.get("request_count", 0) for j in emulator.control.jobs())
    return calls.get("batches.create", 0), calls.get("files.upload_start", 0), requests


def test_demo_dates_send_3000_then_0_then_the_30_changed_rows(warehouse_db, emulator, register_dag):
    demo = _demo_module()
    first, _ = _run_on("2026-03-01", register_dag, demo)
    assert first["request_count"] == 3000 and first["reused"] == 0
    assert _sent(emulator) == (1, 1, 3000)

    second, manifest = _run_on("2026-03-02", register_dag, demo)
    assert manifest["shards"] == [] and manifest["reused"] == 3000
    assert second["request_count"] == 0 and second["reused"] == 3000 and second["cost"]["batch"] == 0
    assert second["reused_cost_usd"] == pytest.approx(first["cost"]["batch"], rel=1e-3)
    assert _sent(emulator) == (1, 1, 3000)  # nothing created, nothing uploaded
    line = demo.incremental_line(second)
    assert (
        "requests sent: 0, reused: 3000, spent: $0.00 (re-sending the reused rows would have cost $" in line
    )

    changed = demo.change_rows(warehouse_db, 30)
    third, _ = _run_on("2026-03-03", register_dag, demo)
    assert third["request_count"] == 30 and third["reused"] == 2970
    assert third["counts"]["succeeded"] == 30
    assert _sent(emulator) == (2, 2, 3030)
    with sqlite3.connect(warehouse_db) as conn:
        revised = conn.execute(
            "SELECT product_id FROM product_descriptions WHERE text LIKE '%(revised)%' ORDER BY 1"
        ).fetchall()
    assert [r[0] for r in revised] == changed


def test_a_bad_date_is_refused_before_anything_starts():
    with pytest.raises(SystemExit, match="YYYY-MM-DD"):
        _demo_module().logical_date_of("03/01/2026")
