"""E2E on a real LocalExecutor deployment: api-server, scheduler, dag-processor and triggerer as processes.

One deployment for the module (SQLite metadata DB — Airflow 3.3 allows LocalExecutor on SQLite); the Gemini
emulator is a process too; the tests drive Airflow only through the REST API and look at the emulator through
its control API and at the warehouse through SQLite.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ROWS, SHARDS, Emulator, create_sqlite_source, emulator_process
from tests.e2e.deployment import Deployment
from tests.e2e.scenario import run_and_rerun

pytestmark = pytest.mark.timeout(900)

DAG_ID = "e2e_gemini_batch_local"


@dataclass
class LocalSetup:
    deployment: Deployment
    emulator: Emulator
    warehouse: Path


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSetup]:
    root = tmp_path_factory.mktemp("e2e-local")
    warehouse = root / "warehouse.db"
    create_sqlite_source(warehouse)
    with emulator_process(root / "emulator") as emulator:
        deployment = Deployment(
            root,
            executor="LocalExecutor",
            sql_alchemy_conn=f"sqlite:///{root / 'airflow.db'}",
            extra_env={
                "AIRFLOW_CONN_GEMINI_BATCH_DEFAULT": json.dumps(
                    {"conn_type": "gemini_batch", "host": emulator.base_url, "password": "e2e-key"}
                ),
                "AIRFLOW_CONN_E2E_WAREHOUSE": json.dumps({"conn_type": "sqlite", "host": str(warehouse)}),
            },
        )
        with deployment:
            deployment.migrate()
            deployment.start_core()
            deployment.wait_healthy()
            yield LocalSetup(deployment, emulator, warehouse)


def _destination_rows(warehouse: Path) -> tuple[int, int, dict[str, int]]:
    db = sqlite3.connect(warehouse)
    try:
        total, distinct = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT product_id) FROM e2e_descriptions"
        ).fetchone()
        outcomes = dict(db.execute("SELECT outcome, COUNT(*) FROM e2e_descriptions GROUP BY outcome"))
        return total, distinct, outcomes
    finally:
        db.close()


def test_local_executor_run_defers_shards_once_and_a_clear_reattaches(local: LocalSetup) -> None:
    outcome = run_and_rerun(
        local.deployment, local.emulator, DAG_ID, lambda: _destination_rows(local.warehouse)
    )
    assert outcome.first_tis["wait"]["state"] == "success"
    # Every key once, and the text is the emulator's answer to that key's own prompt.
    db = sqlite3.connect(local.warehouse)
    try:
        text = db.execute("SELECT text FROM e2e_descriptions WHERE product_id = 7").fetchone()[0]
    finally:
        db.close()
    assert "product 7" in text and "garden" in text, text
    assert len(outcome.jobs) == SHARDS and sum(j["request_count"] for j in outcome.jobs) == ROWS


def test_the_ui_plugin_is_served_by_the_real_api_server(local: LocalSetup) -> None:
    """The package's plugin (Browse → Gemini Batches) is mounted by a real api-server and needs a login."""
    dep = local.deployment
    anonymous = httpx.get(f"{dep.base_url}/gemini-batch/api/jobs", timeout=30)
    assert anonymous.status_code == 401, anonymous.text
    token = dep.api.token()
    authed = httpx.get(
        f"{dep.base_url}/gemini-batch/api/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert authed.status_code == 200, authed.text
    plugins = dep.api.get("plugins")
    assert any(p["name"] == "gemini_batch" for p in plugins["plugins"]), plugins
